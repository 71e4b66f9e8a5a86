"""The mean loss terms of a model over a data set: :func:`evaluate` and its accumulator."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from autoenc._utils import (
    autocast,
    check_int,
    check_model,
    check_precision,
    eval_mode,
    fork_rng,
    loss_terms,
    model_device,
    model_dtype,
    term_vector,
)
from autoenc.data.batching import make_batches

__all__ = ["RunningMean", "evaluate", "accumulate"]


class RunningMean:
    """Batch-size-weighted sums of named loss terms, accumulated on the device.

    ``update`` adds a vector of per-batch means times the batch size; :meth:`means` divides
    by the number of examples (one host sync), so a smaller last batch weighs what it should.
    """

    def __init__(self) -> None:
        self.keys: tuple[str, ...] = ()
        self.sums: Tensor | None = None
        self.count = 0

    def reset(self) -> None:
        """Forget everything (start of an epoch)."""
        self.keys, self.sums, self.count = (), None, 0

    def update(self, keys: tuple[str, ...], values: Tensor, n: int) -> None:
        """Add one batch: ``values`` are the batch's mean terms (1-D, aligned with ``keys``)."""
        if self.sums is None:
            dtype = torch.float32 if values.device.type == "mps" else torch.float64
            self.keys, self.sums = keys, values.detach().to(dtype) * n
        elif keys != self.keys:
            raise ValueError(
                f"model.loss returned the terms {list(keys)} after {list(self.keys)}; the terms "
                "must be the same on every batch"
            )
        else:
            self.sums.add_(values.detach(), alpha=n)
        self.count += n

    def means(self) -> dict[str, float]:
        """The mean of every term over the examples seen (an empty dict before any)."""
        if self.sums is None or self.count == 0:
            return {}
        return dict(zip(self.keys, (self.sums / self.count).tolist(), strict=True))

    def state_dict(self) -> dict[str, Any]:
        """Sums, keys and count, on the CPU."""
        sums = None if self.sums is None else self.sums.detach().cpu()
        return {"keys": list(self.keys), "sums": sums, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], *, device: torch.device | None = None) -> None:
        """Restore :meth:`state_dict`, moving the sums to ``device``."""
        self.keys, self.count = tuple(state["keys"]), int(state["count"])
        sums = state["sums"]
        self.sums = None if sums is None else sums.to(device or sums.device)


def accumulate(
    model: nn.Module,
    batches: Iterable[Tensor | tuple[Tensor, Tensor]],
    *,
    precision: str,
    seed: int | None,
) -> RunningMean:
    """The loss terms of ``model`` summed over ``batches`` in eval mode, without gradients.

    An ``(x, y)`` batch is given to ``model.loss(x, y)``. The model's noise comes from a forked
    generator, seeded with ``seed`` when given, so the caller's random state is untouched.
    """
    device = getattr(batches, "device", torch.device("cpu"))
    meter = RunningMean()
    with eval_mode(model), fork_rng(device, seed), torch.no_grad():
        for batch in batches:
            args = batch if isinstance(batch, tuple) else (batch,)
            with autocast(precision, device):
                loss, terms = loss_terms(model.loss(*args))
            meter.update(tuple(terms), term_vector(terms, loss), args[0].shape[0])
    return meter


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    precision: str = "fp32",
    seed: int | None = None,
) -> dict[str, float]:
    """Mean loss terms of ``model`` over a data set, without gradients.

    Every batch is weighted by its size, so the result is the mean over examples. The model
    runs in eval mode; its mode is restored.

    Args:
        model: Any module with ``loss(x)``, or ``loss(x, y)`` when its class sets
            ``conditional = True`` (a :class:`~autoenc.ConditionalVAE`).
        data: Anything :func:`autoenc.data.make_batches` accepts (labels are ignored, or fed
            to a conditional model); floating-point data is cast to the model's dtype.
        batch_size: Examples per batch.
        device: Where to evaluate; the model moves there. ``None``: where the model is.
        transform: A callable applied to every float batch on the device.
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        seed: Seed the model's noise (e.g. a VAE's ``z`` draws) for a repeatable result,
            without touching the global RNG state; ``None`` draws from it.

    Returns:
        The mean of every term ``model.loss`` reports: ``loss``, ``recon``, ``kl``, ...

    Example:
        >>> from autoenc import Autoencoder, Decoder, Encoder
        >>> ae = Autoencoder(Encoder(4, [8], 2), Decoder(2, [8], 4))
        >>> sorted(evaluate(ae, torch.rand(10, 4), batch_size=3))
        ['loss', 'recon']
    """
    check_model(model)
    check_int(batch_size, "batch_size")
    dev = model_device(model, device)
    precision = check_precision(precision, dev)
    model.to(dev)
    batches = make_batches(
        data,
        batch_size=batch_size,
        device=dev,
        transform=transform,
        dtype=model_dtype(model),
        labels=getattr(model, "conditional", False) is True,
    )
    return accumulate(model, batches, precision=precision, seed=seed).means()
