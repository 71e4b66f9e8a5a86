"""The training loop: :func:`fit`, :func:`evaluate` and the :class:`FitResult` fit returns.

``fit`` trains any ``nn.Module`` with a ``loss(x)`` method (autoenc's models or a user's) and
drives the callbacks of :mod:`autoenc.callbacks`. The step itself stays lean: loss terms are
accumulated on the device, and the host waits for the device only for the NaN/Inf guard and
when a callback reads a value.

Distributed training (issue 8) will plug in at three places only: :func:`_process_group`
(rank and world size), :func:`_unwrap` (the module under a ``DistributedDataParallel``
wrapper) and :func:`_reduce` (summing metric accumulators over ranks).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from autoenc.batching import Batches, make_batches
from autoenc.callbacks import Callback, ProgressBar, RunningMean, State, TermsView
from autoenc.checkpoint import (
    ModelCheckpoint,
    check_weights_fit,
    load_checkpoint,
    restore_callbacks,
    restore_rng,
    restore_training,
)

__all__ = ["fit", "evaluate", "FitResult", "NonFiniteLossError"]

DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = 1e-3
_PRECISIONS = ("fp32", "bf16")
_INTERVALS = ("epoch", "step")
_SEED_BOUND = 2**62


class NonFiniteLossError(FloatingPointError, ValueError):
    """A loss term became NaN or Inf; raised before the optimizer step, so weights stay finite.

    Attributes:
        term: The first non-finite term (``kl``, ``recon``, ... or ``loss``).
        value: Its value.
        epoch: The epoch index, from 0.
        batch: The batch index within the epoch, from 0.
        step: Optimizer steps taken before this batch.
    """

    def __init__(self, term: str, value: float, *, epoch: int, batch: int, step: int) -> None:
        self.term, self.value, self.epoch, self.batch, self.step = term, value, epoch, batch, step
        super().__init__(
            f"the {term!r} term of the loss is {value} at epoch {epoch}, step {step} (batch "
            f"{batch} of the epoch; all counted from 0). Training stopped before the optimizer "
            "step, so the weights are still finite and no checkpoint was overwritten. Try a "
            "lower learning rate, gradient clipping (grad_clip=) or look for bad data."
        )

    def __reduce__(self) -> tuple:  # picklable despite keyword-only arguments
        rebuild = functools.partial(
            NonFiniteLossError, epoch=self.epoch, batch=self.batch, step=self.step
        )
        return (rebuild, (self.term, self.value))


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: Per-epoch metrics: ``train/loss``, ``train/recon``, ``train/kl``,
            ``val/...``, ``lr`` and ``time`` (seconds), each a list with one value per epoch.
        metrics: The last epoch's metrics.
        state: The final :class:`~autoenc.callbacks.State`.
        interrupted: Whether Ctrl-C stopped training.
        stopped_early: Whether a callback (e.g. early stopping) stopped training.
    """

    history: dict[str, list[float]]
    metrics: dict[str, float]
    state: State
    interrupted: bool = False
    stopped_early: bool = False

    @property
    def model(self) -> nn.Module:
        """The trained model."""
        return self.state.model

    @property
    def epochs_completed(self) -> int:
        """Epochs finished, counting those of a resumed run."""
        return self.state.epochs_completed

    @property
    def steps(self) -> int:
        """Optimizer steps taken, counting those of a resumed run."""
        return self.state.step


# ---------------------------------------------------------------------------------------------
# the three places distributed training will change


def _process_group() -> tuple[int, int]:
    """``(rank, world_size)``; single-process until DistributedDataParallel support lands."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise NotImplementedError("fit() does not support distributed training yet")
    return 0, 1


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module under a DataParallel/DistributedDataParallel wrapper."""
    return getattr(model, "module", model) if hasattr(model, "device_ids") else model


def _reduce(meter: RunningMean) -> dict[str, float]:
    """Means of an accumulator over all processes (one process for now)."""
    return meter.means()


# ---------------------------------------------------------------------------------------------
# checking and preparing the arguments


def _check_int(value: Any, name: str, minimum: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_choice(value: Any, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(getattr(model, "loss", None)):
        raise TypeError(
            f"model ({type(model).__name__}) has no loss(x) method; fit() trains any module whose "
            "loss(x) returns a scalar tensor, a LossOutput or a dict with a 'loss' key"
        )


def resolve_device(device: Any) -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU) or a device that exists here."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'"
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(0, device=dev)
        except RuntimeError as err:
            raise ValueError(f"device {device!r} is not usable here: {err}") from err
    return dev


def _check_precision(precision: str, device: torch.device) -> None:
    _check_choice(precision, _PRECISIONS, "precision")
    if precision == "bf16":
        supported = torch.amp.is_autocast_available(device.type)
        if device.type == "cuda":
            supported = supported and torch.cuda.is_bf16_supported()
        if not supported:
            raise ValueError(f"precision='bf16' is not supported on {device}; use 'fp32'")


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel where this torch and device have one (on the CPU it is ~5x
    faster per step), else the multi-tensor one."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def _build_optimizer(model: nn.Module, optimizer: Any, lr: float | None) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"the model ({type(model).__name__}) has no trainable parameters")
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if optimizer is None:
        return _adam(params, DEFAULT_LR if lr is None else lr)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer(params) if lr is None else optimizer(params, lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        if lr is not None:
            raise ValueError("lr= cannot change an optimizer instance; set lr when you build it")
        own = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not any(id(p) in own for p in params):
            raise ValueError("the optimizer holds none of the model's parameters")
        return optimizer
    if callable(optimizer):
        if lr is not None:
            raise ValueError("lr= applies to the default Adam or an optimizer class, not a factory")
        built = optimizer(params)
        if not isinstance(built, torch.optim.Optimizer):
            raise TypeError(
                f"the optimizer factory must return a torch.optim.Optimizer, got "
                f"{type(built).__name__}"
            )
        return built
    raise TypeError(
        "optimizer must be None, a torch.optim.Optimizer, an optimizer class or a callable "
        f"params -> optimizer, got {type(optimizer).__name__}"
    )


def _is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _build_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer, interval: str) -> Any:
    if scheduler is None:
        return None
    built = scheduler
    if not (hasattr(scheduler, "step") and hasattr(scheduler, "state_dict")):
        if not callable(scheduler):
            raise TypeError(
                "scheduler must be an LR scheduler or a callable optimizer -> scheduler, got "
                f"{type(scheduler).__name__}"
            )
        built = scheduler(optimizer)
        if not (hasattr(built, "step") and hasattr(built, "state_dict")):
            raise TypeError(f"the scheduler factory returned a {type(built).__name__}")
    if getattr(built, "optimizer", optimizer) is not optimizer:
        raise ValueError(
            "the scheduler was built for another optimizer; pass a factory "
            "(e.g. lambda opt: StepLR(opt, 10)) so fit() attaches it to its optimizer"
        )
    if _is_plateau(built) and interval == "step":
        raise ValueError("ReduceLROnPlateau needs an epoch metric: use scheduler_interval='epoch'")
    return built


def _batches(data: Any, name: str, **kwargs: Any) -> Batches:
    try:
        return make_batches(data, **kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from err


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % 2**32)


# ---------------------------------------------------------------------------------------------
# one step


def _loss_terms(out: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss to backpropagate and the detached scalar terms to log, from ``model.loss(x)``."""
    if isinstance(out, Tensor):
        return out, {"loss": out.detach()}
    if hasattr(out, "terms") and hasattr(out, "loss"):
        return out.loss, dict(out.terms())
    if isinstance(out, Mapping) and "loss" in out:
        terms = {k: v.detach() for k, v in out.items() if isinstance(v, Tensor) and v.numel() == 1}
        return out["loss"], terms
    raise TypeError(
        "model.loss(x) must return a scalar tensor, a LossOutput or a dict with a 'loss' key, "
        f"got {type(out).__name__}"
    )


def _term_vector(terms: dict[str, Tensor], dtype: torch.dtype) -> Tensor:
    return torch.stack([(v if v.dim() == 0 else v.reshape(())).to(dtype) for v in terms.values()])


def _nonfinite(keys: tuple[str, ...], values: Tensor, state: State) -> NonFiniteLossError:
    floats = dict(zip(keys, values.tolist(), strict=True))
    bad = [k for k, v in floats.items() if not math.isfinite(v)]
    term = next((k for k in bad if k != "loss"), bad[0])
    return NonFiniteLossError(
        term, floats[term], epoch=state.epoch, batch=state.batch, step=state.step
    )


def _probe(model: nn.Module, batches: Batches, name: str, precision: str) -> None:
    """Run ``model.loss`` on two examples of ``batches``, leaving no trace (RNG, mode, stats)."""
    device = batches.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            x = next(iter(batches))[:2]
        except StopIteration:
            raise ValueError(f"{name} is empty: it yields no batches") from None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), _autocast(precision, device):
                out = model.loss(x)
        except Exception as err:
            raise ValueError(
                f"model.loss failed on a batch from {name} of shape {tuple(x.shape)} "
                f"({x.dtype}): {type(err).__name__}: {err}"
            ) from err
        finally:
            model.train(was_training)
    loss, terms = _loss_terms(out)
    if not (isinstance(loss, Tensor) and loss.numel() == 1 and loss.is_floating_point()):
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"model.loss must return a floating-point scalar loss, got {shape}")


def _evaluate_batches(
    model: nn.Module, batches: Iterable[Tensor], *, precision: str, seed: int | None
) -> dict[str, float]:
    device = getattr(batches, "device", torch.device("cpu"))
    meter = RunningMean()
    was_training = model.training
    model.eval()
    try:
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            torch.no_grad(),
        ):
            if seed is not None:
                torch.default_generator.manual_seed(seed)
                if device.type == "cuda":
                    with torch.cuda.device(device):
                        torch.cuda.manual_seed(seed)
            for x in batches:
                with _autocast(precision, device):
                    loss, terms = _loss_terms(model.loss(x))
                dtype = torch.float64 if loss.dtype == torch.float64 else torch.float32
                meter.update(tuple(terms), _term_vector(terms, dtype), x.shape[0])
    finally:
        model.train(was_training)
    return _reduce(meter)


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

    Every batch is weighted by its size, so the result is the mean over examples (a smaller
    last batch counts for what it holds). The model runs in eval mode; its mode is restored.

    Args:
        model: Any module with ``loss(x)``.
        data: Anything :func:`autoenc.batching.make_batches` accepts (labels are ignored).
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
    _check_model(model)
    _check_int(batch_size, "batch_size", 1)
    _check_choice(precision, _PRECISIONS, "precision")
    if device is None:
        first = next(model.parameters(), None)
        dev = first.device if first is not None else torch.device("cpu")
    else:
        dev = resolve_device(device)
        model.to(dev)
    _check_precision(precision, dev)
    batches = make_batches(data, batch_size=batch_size, device=dev, transform=transform)
    return _evaluate_batches(model, batches, precision=precision, seed=seed)


# ---------------------------------------------------------------------------------------------
# Ctrl-C


class _Interrupt:
    """While active, the first Ctrl-C asks training to stop after the current batch; the second
    raises ``KeyboardInterrupt`` at once. The previous handler comes back on exit."""

    def __init__(self, state: State, enabled: bool) -> None:
        self.state = state
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.state.interrupted:
            raise KeyboardInterrupt
        self.state.interrupted = self.state.should_stop = True
        if self.state.is_main_process:
            print(
                "\nCtrl-C: stopping after this batch (press Ctrl-C again to abort at once)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> _Interrupt:
        if self.enabled:
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(
                signal.SIGINT, self.previous if self.previous is not None else signal.SIG_DFL
            )


# ---------------------------------------------------------------------------------------------


def fit(
    model: nn.Module,
    data: Any,
    *,
    epochs: int,
    batch_size: int | None = None,
    optimizer: Any = None,
    lr: float | None = None,
    scheduler: Any = None,
    scheduler_interval: str = "epoch",
    val_data: Any = None,
    val_batch_size: int | None = None,
    callbacks: Sequence[Callback] = (),
    device: torch.device | str = "auto",
    precision: str = "fp32",
    grad_clip: float | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    seed: int | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    resume: str | os.PathLike[str] | None = None,
    nan_guard: bool = True,
    verbose: bool = True,
    handle_interrupt: bool = True,
) -> FitResult:
    """Train ``model`` by minimizing ``model.loss(x)`` over ``data``.

    Tensors and tensor datasets take the fast path of :mod:`autoenc.batching` (the whole set in
    memory, one seeded permutation per epoch, no ``DataLoader``); any map-style ``Dataset`` or
    a ``DataLoader`` works too. Every argument is checked, and ``model.loss`` is run on two
    examples, before the first step, so a mistake fails at once with a clear message.

    Hooks run in this order: ``on_fit_start``; per epoch ``on_epoch_start``, ``on_batch_end``
    after every step, ``on_epoch_end`` (after validation and the per-epoch scheduler step);
    ``on_fit_end`` always, also when training raised or was interrupted.
    :class:`~autoenc.ModelCheckpoint` callbacks run after all others. When resuming, each
    callback's saved state is loaded after its ``on_fit_start`` (which may reset it).

    Args:
        model: Any ``nn.Module`` with ``loss(x)`` returning a scalar tensor, a
            :class:`~autoenc.LossOutput` or a dict with a ``"loss"`` key (other scalar entries
            are logged). It is moved to ``device`` and stays there.
        data: A tensor ``(n, ...)``, an ``(x, y)`` pair (labels ignored), a ``TensorDataset``,
            a map-style ``Dataset`` or a ``DataLoader``. ``uint8`` is scaled by 1/255.
        epochs: Total number of epochs (a resumed run counts the epochs already done).
        batch_size: Examples per step (default 32, the article's); ignored for a DataLoader.
        optimizer: ``None`` (Adam, fused where available), an optimizer instance over the
            model's parameters, an optimizer class, or a callable ``params -> optimizer``.
        lr: Learning rate for the default Adam (1e-3) or an optimizer class.
        scheduler: An LR scheduler for this optimizer, or a callable ``optimizer -> scheduler``
            (needed with the default optimizer). ``ReduceLROnPlateau`` steps on ``val/loss``
            when there is validation data, else on ``train/loss``.
        scheduler_interval: Step the scheduler every ``"epoch"`` or every ``"step"``.
        val_data: Data for ``val/...`` metrics after every epoch (same kinds as ``data``).
        val_batch_size: Batch size for validation (default ``batch_size``).
        callbacks: :class:`~autoenc.callbacks.Callback` instances.
        device: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda:1"``, ...
        precision: ``"fp32"``, or ``"bf16"`` for bfloat16 autocast (weights stay fp32).
        grad_clip: Clip the gradients' global norm to this value.
        transform: A callable applied to every float batch on the device, e.g.
            :func:`autoenc.data.dynamic_binarize`; also applied to ``val_data``.
        seed: Seeds Python's ``random``, torch (and NumPy when loaded) and fixes the data order
            and the validation noise, so two runs from the same initial model are identical.
            Build the model after ``torch.manual_seed`` for identical initial weights too.
        shuffle: Shuffle the training data every epoch (ignored for a DataLoader).
        drop_last: Drop each epoch's last, smaller batch.
        resume: A checkpoint written by :class:`~autoenc.ModelCheckpoint`: continue that run
            (model, optimizer, scheduler, RNGs, data order, history, callback states) so that
            the result equals the uninterrupted run's, bit for bit on the CPU. The run's seed
            comes from the checkpoint. From a mid-epoch (Ctrl-C) checkpoint the rest of the
            epoch is exact for tensors and datasets; a ``DataLoader`` is re-read from the
            start of the epoch and its first batches skipped, in a new order if it shuffles.
        nan_guard: Check every batch's loss terms before the optimizer step and raise
            :class:`NonFiniteLossError` naming the term when one is NaN or Inf. Costs one host
            sync per step on an accelerator.
        verbose: Add a :class:`~autoenc.ProgressBar` when ``callbacks`` holds none.
        handle_interrupt: Catch Ctrl-C (in the main thread): stop after the current batch,
            write the ``ModelCheckpoint`` callbacks' ``last.pt`` and return with
            ``interrupted=True``; a second Ctrl-C raises ``KeyboardInterrupt`` at once.

    Returns:
        A :class:`FitResult` with the per-epoch ``history`` and the final ``state``.

    Raises:
        TypeError: A model without ``loss``, data or arguments of the wrong kind.
        ValueError: Empty data, ``batch_size`` <= 0, ``epochs`` < 0, data that ``model.loss``
            rejects, a bad device or precision, or a ``resume`` checkpoint that is corrupted
            or holds another model.
        NonFiniteLossError: A loss term became NaN/Inf (also a ``ValueError``).

    Example:
        >>> from autoenc import Decoder, Encoder, GaussianVAE
        >>> vae = GaussianVAE(Encoder(4, [8], 4), Decoder(2, [8], 4), latent_dim=2,
        ...                   likelihood="mse")
        >>> result = fit(vae, torch.rand(64, 4), epochs=3, batch_size=16, seed=0,
        ...              verbose=False)
        >>> len(result.history["train/loss"]), sorted(result.metrics)
        (3, ['lr', 'time', 'train/kl', 'train/loss', 'train/recon'])
    """
    # 1. arguments, checked before anything changes
    _check_model(model)
    _check_int(epochs, "epochs", 0)
    for_loader = isinstance(data, torch.utils.data.DataLoader)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    _check_int(batch_size, "batch_size", 1)
    val_batch_size = batch_size if val_batch_size is None else val_batch_size
    _check_int(val_batch_size, "val_batch_size", 1)
    _check_choice(scheduler_interval, _INTERVALS, "scheduler_interval")
    if grad_clip is not None and not (
        isinstance(grad_clip, (int, float)) and grad_clip > 0 and math.isfinite(grad_clip)
    ):
        raise ValueError(f"grad_clip must be a positive finite number or None, got {grad_clip!r}")
    if seed is not None:
        _check_int(seed, "seed", 0)
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
    dev = resolve_device(device)
    _check_precision(precision, dev)
    rank, world_size = _process_group()
    target = _unwrap(model)
    payload = None
    if resume is not None:
        payload = load_checkpoint(resume)
        check_weights_fit(payload["model"], target, f"the resume checkpoint {str(resume)!r}")

    # 2. seeds and data
    if seed is not None:
        _seed_everything(seed)
    if payload is not None:
        run_seed = payload["seed"]
    elif seed is not None:
        run_seed = seed
    else:
        run_seed = int(torch.randint(_SEED_BOUND, ()))
    common = dict(device=dev, transform=transform, rank=rank, world_size=world_size)
    train_batches = _batches(
        data,
        "data",
        batch_size=batch_size,
        shuffle=shuffle and not for_loader,
        generator=torch.Generator().manual_seed(run_seed),
        drop_last=drop_last,
        **common,
    )
    val_batches = None
    if val_data is not None:
        val_batches = _batches(val_data, "val_data", batch_size=val_batch_size, **common)

    # 3. model, optimizer, scheduler; a dry run of model.loss
    model.to(dev)
    opt = _build_optimizer(target, optimizer, lr)
    sched = _build_scheduler(scheduler, opt, scheduler_interval)
    _probe(model, train_batches, "data", precision)
    if val_batches is not None:
        _probe(model, val_batches, "val_data", precision)

    callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)] + [
        c for c in callbacks if isinstance(c, ModelCheckpoint)
    ]
    if verbose and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.insert(0, ProgressBar())
    try:
        per_epoch = len(train_batches)
    except TypeError:
        per_epoch = None
    state = State(
        model=target,
        optimizer=opt,
        scheduler=sched,
        epochs=epochs,
        device=dev,
        is_main_process=rank == 0,
        batches_per_epoch=per_epoch,
        callbacks=callbacks,
        seed=run_seed,
        has_val_data=val_batches is not None,
    )
    if payload is not None:
        restore_training(payload, state, source=repr(str(resume)))

    # 4. the loop
    loop = _Loop(
        model,
        state,
        train_batches,
        val_batches,
        precision=precision,
        grad_clip=grad_clip,
        nan_guard=nan_guard,
        scheduler_interval=scheduler_interval,
    )
    was_training = model.training
    try:
        with _Interrupt(state, handle_interrupt):
            loop.run(payload)
    finally:
        model.train(was_training)
    return FitResult(
        history=state.history,
        metrics=state.metrics,
        state=state,
        interrupted=state.interrupted,
        stopped_early=state.should_stop and not state.interrupted,
    )


class _Loop:
    """The epoch and batch loops of :func:`fit`, with the state they share."""

    def __init__(
        self,
        model: nn.Module,
        state: State,
        train: Batches,
        val: Batches | None,
        *,
        precision: str,
        grad_clip: float | None,
        nan_guard: bool,
        scheduler_interval: str,
    ) -> None:
        self.model, self.state, self.train, self.val = model, state, train, val
        self.precision, self.grad_clip, self.nan_guard = precision, grad_clip, nan_guard
        self.scheduler_interval = scheduler_interval
        self.params = [p for p in state.model.parameters() if p.requires_grad]

    def _hook(self, name: str) -> None:
        for cb in self.state.callbacks:
            getattr(cb, name)(self.state)

    def run(self, payload: dict[str, Any] | None) -> None:
        state = self.state
        try:
            self._hook("on_fit_start")
            if payload is not None:
                restore_callbacks(payload, state)
                restore_rng(payload["rng"])
            self._epochs()
        except BaseException as err:
            state.exception = err
            raise
        finally:
            self._fit_end()

    def _fit_end(self) -> None:
        first_error = None
        for cb in self.state.callbacks:
            try:
                cb.on_fit_end(self.state)
            except Exception as err:
                if self.state.exception is None and first_error is None:
                    first_error = err
        if first_error is not None:
            raise first_error

    def _epochs(self) -> None:
        state = self.state
        resumed_mid_epoch = state.batch > 0
        for epoch in range(state.epoch, state.epochs):
            if state.should_stop:
                return
            if epoch != state.epoch or not resumed_mid_epoch:
                state.batch = 0
                state.running.reset()
            state.epoch = epoch
            resumed_mid_epoch = False
            start = time.perf_counter()
            self.train.set_epoch(epoch, skip=state.batch)
            self._hook("on_epoch_start")
            self.model.train()
            # should_stop is checked before fetching the next batch: after Ctrl-C, DataLoader
            # workers may already be gone
            if not state.should_stop:
                for x in self.train:
                    self._step(x)
                    self._hook("on_batch_end")
                    if state.should_stop:
                        break
            if state.interrupted or state.running.count == 0:
                return
            self._end_epoch(start)

    def _step(self, x: Tensor) -> None:
        state, opt = self.state, self.state.optimizer
        with _autocast(self.precision, x.device):
            out = self.model.loss(x)
        loss, terms = _loss_terms(out)
        keys = tuple(terms)
        values = _term_vector(
            terms, torch.float64 if loss.dtype == torch.float64 else torch.float32
        )
        if self.nan_guard and not bool(torch.isfinite(values).all()):
            raise _nonfinite(keys, values, state)
        if not loss.requires_grad:
            raise ValueError("model.loss(x) returned a loss that does not require gradients")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        opt.step()
        if state.scheduler is not None and self.scheduler_interval == "step":
            state.scheduler.step()
        state.running.update(keys, values, x.shape[0])
        state.batch_terms = TermsView(keys, values)
        state.batch += 1
        state.step += 1

    def _end_epoch(self, start: float) -> None:
        state = self.state
        metrics = {f"train/{k}": v for k, v in _reduce(state.running).items()}
        if self.val is not None:
            val = _evaluate_batches(self.model, self.val, precision=self.precision, seed=state.seed)
            metrics.update({f"val/{k}": v for k, v in val.items()})
        metrics["lr"] = float(state.optimizer.param_groups[0]["lr"])
        metrics["time"] = time.perf_counter() - start
        if state.scheduler is not None and self.scheduler_interval == "epoch":
            if _is_plateau(state.scheduler):
                state.scheduler.step(metrics.get("val/loss", metrics["train/loss"]))
            else:
                state.scheduler.step()
        state.metrics = metrics
        for key, value in metrics.items():
            state.history.setdefault(key, []).append(value)
        state.epochs_completed = state.epoch + 1
        self._hook("on_epoch_end")
