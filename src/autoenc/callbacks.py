"""Callbacks for :func:`autoenc.fit` and the :class:`State` they all receive.

A callback overrides any of the five hooks. Every hook gets the same :class:`State` object;
setting ``state.should_stop = True`` ends training after the current batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["State", "Callback"]


@dataclass
class State:
    """Everything a callback may read (and ``should_stop``, which it may set).

    Attributes:
        model: The model being trained (the unwrapped module, never a DDP wrapper).
        optimizer: The optimizer.
        scheduler: The LR scheduler, or ``None``.
        epochs: The number of epochs asked for.
        epoch: Index of the current epoch, from 0.
        step: Number of optimizer steps taken so far, over the whole run.
        batch_terms: The last batch's loss terms as floats (``loss``, ``recon``, ``kl``, ...);
            filled only on batches where a callback or the progress bar needs them.
        metrics: The last finished epoch's metrics, keyed ``train/loss``, ``val/loss``, ...
        history: Per-epoch metrics so far: a dict of lists, keyed like ``metrics``.
        should_stop: Set to ``True`` to stop after the current batch.
        device: The training device.
        is_main_process: ``True`` on the process that should print and write files (rank 0).
        data: Extra per-run objects callbacks may share (e.g. a fixed batch for pictures).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    epochs: int = 0
    epoch: int = 0
    step: int = 0
    batch_terms: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    should_stop: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    is_main_process: bool = True
    data: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Base class for callbacks: override the hooks you need; the rest do nothing.

    A callback that holds state which must survive a resume (a best value, a counter)
    returns it from :meth:`state_dict` and takes it back in :meth:`load_state_dict`; the
    checkpoint stores it.
    """

    def on_fit_start(self, state: State) -> None:
        """Called once before the first epoch (also when resuming)."""

    def on_epoch_start(self, state: State) -> None:
        """Called at the start of every epoch."""

    def on_batch_end(self, state: State) -> None:
        """Called after every optimizer step."""

    def on_epoch_end(self, state: State) -> None:
        """Called after every epoch, once ``state.metrics`` holds its train and val metrics."""

    def on_fit_end(self, state: State) -> None:
        """Called once when training ends, also when it raised or was interrupted."""

    def state_dict(self) -> dict[str, Any]:
        """State to store in a checkpoint (JSON-able values or tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
