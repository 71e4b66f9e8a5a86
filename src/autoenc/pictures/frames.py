"""What the picture callbacks draw and when: one set of checks and one schedule for all three
(every ``every_n_epochs`` epochs and after the last, on the main process only, in eval mode and
without touching the training RNG)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from autoenc._utils import check_int, fork_rng, model_device
from autoenc.pictures.grids import prior_grid, reconstruction_grid, reconstructions
from autoenc.pictures.images import float_batch, image_grid
from autoenc.training.callbacks import State

__all__ = ["Frames", "scalar_metrics"]


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics that are real numbers (floats, ints, one-element tensors), as floats."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class Frames:
    """The arguments the picture callbacks share (same names, same meaning), checked once, and
    the frames they draw."""

    def __init__(
        self,
        x: Any,
        every_n_epochs: int,
        n_samples: int,
        seed: int,
        nrow: int,
        image_shape: Sequence[int] | None,
    ) -> None:
        # kept on the CPU as floats; reconstructions cast them to the model's device and dtype
        self.x = None if x is None else float_batch(x, "x").cpu().clone()
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs")
        self.n_samples = check_int(n_samples, "n_samples", minimum=0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed, self.nrow = seed, check_int(nrow, "nrow")
        self.image_shape = None if image_shape is None else tuple(image_shape)
        self.last = 0  # number of the epoch drawn last in this run

    def due(self, state: State) -> int | None:
        """After an epoch: its number when pictures are due, else ``None``."""
        n = state.epoch + 1
        if state.is_main_process and (n % self.every_n_epochs == 0 or n == state.epochs):
            return n
        return None

    def due_at_end(self, state: State) -> int | None:
        """When training ends: the last finished epoch's number if it was not drawn (training
        stopped early), else ``None``. Nothing after an error or an interrupt."""
        n = state.epochs_completed
        if state.exception is not None or state.interrupted or not state.is_main_process:
            return None
        return n if n > self.last else None

    def samples_from(self, model: nn.Module) -> bool:
        # a VQ-VAE samples only once a prior over its codes is fitted (has_prior)
        can_sample = callable(getattr(model, "sample", None)) and getattr(model, "has_prior", True)
        return self.n_samples > 0 and can_sample

    def check(self, model: nn.Module, owner: str) -> None:
        if self.x is not None and getattr(model, "conditional", False) is True:
            raise ValueError(
                f"{owner} reconstructs x without its labels, which a conditional model "
                f"({type(model).__name__}) needs: leave x=None to draw samples of every class, "
                "or draw autoenc.pictures.class_grid in a callback of your own"
            )
        if self.x is None and not self.samples_from(model):
            raise ValueError(
                f"{owner} has nothing to draw: give it a batch x to reconstruct, or train a model "
                f"with a sample() method and n_samples > 0 (got {type(model).__name__}, "
                f"n_samples={self.n_samples})"
            )

    def draw(self, model: nn.Module, n: int, *, paired: bool = False) -> dict[str, Tensor]:
        """The grids of epoch ``n``, ``(3, H, W)`` in [0, 1]: ``x`` and ``x_hat`` (or, paired,
        ``recon``: each row of inputs over its reconstructions) and ``samples``, those that apply.
        """
        self.last = n
        kw = {"nrow": self.nrow, "image_shape": self.image_shape}
        out = {}
        with fork_rng(model_device(model)):
            if self.x is not None and paired:
                out["recon"] = reconstruction_grid(model, self.x, **kw)
            elif self.x is not None:
                out["x"] = image_grid(self.x, model=model, **kw)
                out["x_hat"] = image_grid(reconstructions(model, self.x), model=model, **kw)
            if self.samples_from(model):
                out["samples"] = prior_grid(model, self.n_samples, seed=self.seed, **kw)
        return out
