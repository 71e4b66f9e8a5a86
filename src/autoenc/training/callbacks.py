"""Callbacks for :func:`autoenc.fit` and the :class:`State` they all receive.

A callback overrides any of the five hooks. Every hook gets the same :class:`State` object;
setting ``state.should_stop = True`` ends training after the current batch (the epoch is then
finished early: its metrics cover the batches done).

Built in: :class:`ProgressBar` (added by ``fit`` unless ``verbose=False``), :class:`CSVLogger`
and :class:`EarlyStopping`; :class:`~autoenc.training.ModelCheckpoint` lives in
:mod:`autoenc.training.checkpoint` and the KL schedules in :mod:`autoenc.training.schedules`.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from autoenc._utils import (
    atomic_write,
    check_choice,
    check_int,
    check_number,
    improved,
    renamed_arguments,
)
from autoenc.evaluation.loss import RunningMean

__all__ = [
    "State",
    "Callback",
    "TermsView",
    "ProgressBar",
    "CSVLogger",
    "EarlyStopping",
]


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
        batch_terms: The last batch's loss terms as floats (``loss``, ``recon``, ``kl``, ...):
            a read-only mapping that copies them from the device only when it is read.
        metrics: The last finished epoch's metrics, keyed ``train/loss``, ``val/loss``, ...
        history: Per-epoch metrics so far: a dict of lists, keyed like ``metrics``.
        should_stop: Set to ``True`` to stop after the current batch (in a distributed run,
            set on any process, it stops all of them at the same step).
        device: The training device.
        is_main_process: ``True`` on the process that should print and write files (rank 0).
        rank: This process's rank in a distributed run, from 0 (0 in a single process).
        world_size: Number of processes training together (1 in a single process). In a
            distributed run every process calls the hooks with the same counters and the
            same metrics (averaged over all processes), so a callback that decides from them
            (early stopping, a schedule) decides the same everywhere.
        data: Extra per-run objects callbacks may share (e.g. a fixed batch for pictures).
        batch: Batches done in the current epoch.
        batches_per_epoch: Batches in one epoch (``None`` when the data cannot tell).
        epochs_completed: Epochs finished so far (their metrics are in ``history``).
        running: The current epoch's running mean of every loss term (read it sparingly on
            an accelerator: every read waits for the device).
        callbacks: All callbacks of the run, in the order their hooks are called.
        seed: The run's seed: it fixes the data order of every epoch and the validation noise.
        has_val_data: Whether validation data was given (``val/...`` metrics will exist).
        interrupted: ``True`` once Ctrl-C asked training to stop after the current batch.
        exception: The exception that is ending training, seen by ``on_fit_end``; else ``None``.
        epoch_rng: Torch's CPU generator state when the current epoch's data iteration began
            (a mid-epoch checkpoint stores it: a ``DataLoader`` resumed there re-creates its
            iterator from it, so it draws the same order and worker seeds).
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
    rank: int = 0
    world_size: int = 1
    data: dict[str, Any] = field(default_factory=dict)
    batch: int = 0
    batches_per_epoch: int | None = None
    epochs_completed: int = 0
    running: RunningMean = field(default_factory=lambda: RunningMean())
    callbacks: list[Callback] = field(default_factory=list)
    seed: int | None = None
    has_val_data: bool = False
    interrupted: bool = False
    exception: BaseException | None = None
    epoch_rng: Tensor | None = None


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


# ---------------------------------------------------------------------------------------------
# running values, read without a host sync until someone looks


class TermsView(Mapping[str, float]):
    """A read-only mapping of term names to floats over one device vector of values.

    The vector is copied to the host once, on the first read, so a loop that never looks at
    ``state.batch_terms`` never waits for the device.
    """

    __slots__ = ("_keys", "_values", "_floats")

    def __init__(self, keys: tuple[str, ...], values: Tensor) -> None:
        self._keys, self._values, self._floats = keys, values, None

    def _read(self) -> dict[str, float]:
        if self._floats is None:
            self._floats = dict(zip(self._keys, self._values.tolist(), strict=True))
        return self._floats

    def __getitem__(self, key: str) -> float:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return repr(self._read())


# ---------------------------------------------------------------------------------------------
# built-in callbacks


def _format_metrics(metrics: Mapping[str, float], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


class ProgressBar(Callback):
    """Show progress: a tqdm bar per epoch on a terminal, one summary line per epoch elsewhere.

    The bar shows the epoch's running loss, refreshed at most every ``refresh_seconds``. When
    the stream is not a terminal (CI logs, files) or tqdm is not installed, it prints one line
    per epoch instead: epoch, ``train/loss``, ``train/kl``, the model's further terms (a VQ-VAE's
    ``train/perplexity`` and ``train/usage``, ...), ``val/loss``, ``val/kl`` and time.
    :func:`autoenc.fit` adds one unless ``verbose=False``. Only the main process prints.

    Args:
        refresh_seconds: Least time between two updates of the running loss.
        stream: Where to write; ``sys.stderr`` for the bar, ``sys.stdout`` for lines.
        bar: ``True``/``False`` forces the bar on/off; ``None`` picks it on a terminal.
    """

    SUMMARY_KEYS = ("train/loss", "train/kl", "val/loss", "val/kl")

    def __init__(
        self,
        *,
        refresh_seconds: float = 0.5,
        stream: IO[str] | None = None,
        bar: bool | None = None,
    ) -> None:
        self.refresh_seconds, self.stream, self.bar = refresh_seconds, stream, bar
        self._tqdm: Any = None
        self._use_bar = False

    def on_fit_start(self, state: State) -> None:
        use_bar = self.bar
        if use_bar is None:
            stream = self.stream or sys.stderr
            use_bar = bool(getattr(stream, "isatty", lambda: False)())
        if use_bar:
            try:
                import tqdm  # noqa: F401
            except ImportError:
                use_bar = False
        self._use_bar = use_bar and state.is_main_process

    def on_epoch_start(self, state: State) -> None:
        self._start, self._last = time.monotonic(), 0.0
        if not self._use_bar:
            return
        from tqdm.auto import tqdm

        self._tqdm = tqdm(
            total=state.batches_per_epoch,
            initial=state.batch,
            desc=f"epoch {state.epoch + 1}/{state.epochs}",
            file=self.stream or sys.stderr,
            dynamic_ncols=True,
            leave=True,
        )

    def on_batch_end(self, state: State) -> None:
        if self._tqdm is None:
            return
        self._tqdm.update(1)
        now = time.monotonic()
        if now - self._last >= self.refresh_seconds:
            self._last = now
            running = state.running.means()
            self._tqdm.set_postfix({k: f"{v:.4g}" for k, v in running.items()}, refresh=False)

    def on_epoch_end(self, state: State) -> None:
        if not state.is_main_process:
            return
        seconds = time.monotonic() - self._start
        own = ("train/loss", "train/recon", "train/kl")
        extra = tuple(k for k in state.metrics if k.startswith("train/") and k not in own)
        keys = self.SUMMARY_KEYS[:2] + extra + self.SUMMARY_KEYS[2:]
        summary = _format_metrics(state.metrics, keys)
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(summary, refresh=True)
            self._tqdm.close()
            self._tqdm = None
            return
        line = f"epoch {state.epoch + 1}/{state.epochs}  {summary}  {seconds:.1f}s"
        print(line, file=self.stream or sys.stdout, flush=True)

    def on_fit_end(self, state: State) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        if state.interrupted and state.is_main_process:
            print(
                f"interrupted in epoch {state.epoch + 1} after {state.batch} batches",
                file=self.stream or sys.stdout,
                flush=True,
            )


class CSVLogger(Callback):
    """Write the history to a CSV file after every epoch: a column ``epoch`` and one per metric.

    The file is rewritten atomically from ``state.history`` each time, so it always matches the
    run, also after a resume. Like every callback that writes files, it takes the folder first,
    so one run folder can hold ``history.csv``, the checkpoints and the pictures side by side.

    Args:
        directory: Folder of the file (created when needed). A path ending in ``.csv`` is read
            as the file itself, as the old ``CSVLogger(path)`` took it, with a ``FutureWarning``.
        filename: Name of the file.

    Example:
        >>> import tempfile
        >>> from autoenc.training import State, CSVLogger
        >>> state = State(model=None, optimizer=None, history={"train/loss": [0.5, 0.25]})
        >>> logger = CSVLogger(tempfile.mkdtemp())
        >>> logger.on_epoch_end(state)
        >>> print(logger.path.read_text().strip())
        epoch,train/loss
        1,0.5
        2,0.25
    """

    @renamed_arguments(path="directory")
    def __init__(self, directory: str | os.PathLike[str], *, filename: str = "history.csv") -> None:
        directory = Path(directory)
        if directory.suffix == ".csv":
            warnings.warn(
                "CSVLogger takes a folder now, CSVLogger(directory, filename=...); the file path "
                f"{str(directory)!r} is read as directory={str(directory.parent)!r}, "
                f"filename={directory.name!r} until the next release",
                FutureWarning,
                stacklevel=3,
            )
            directory, filename = directory.parent, directory.name
        if not (isinstance(filename, str) and filename and Path(filename).name == filename):
            raise ValueError(f"filename must be a file name without a folder, got {filename!r}")
        self.directory, self.filename = directory, filename
        self.path = directory / filename

    def on_epoch_end(self, state: State) -> None:
        if not state.is_main_process:
            return
        keys = list(state.history)
        rows = zip(*(state.history[k] for k in keys), strict=True)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["epoch", *keys])
        writer.writerows([i + 1, *map(repr, row)] for i, row in enumerate(rows))
        atomic_write(self.path, lambda f: f.write(out.getvalue().encode("utf-8")))


_MODES = ("min", "max")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    The instance resets in :meth:`on_fit_start`, so it can serve several fits; its counters are
    saved in checkpoints, so a resumed run stops where the uninterrupted one would.

    Args:
        monitor: The metric to watch (a key of ``state.metrics``).
        patience: Epochs without improvement before stopping.
        min_delta: The least change that counts as an improvement.
        mode: ``"min"`` or ``"max"``: whether lower or higher is better.
        restore_best_weights: When training ends normally (stopped or not), load the weights of
            the best epoch back into the model. Not done when training was interrupted or
            raised, so a checkpoint written then holds the latest weights.

    Raises:
        ValueError: (at the start of fit) ``monitor`` is a ``val/`` metric but there is no
            validation data; (at the end of an epoch) ``monitor`` is not among the metrics.
    """

    def __init__(
        self,
        monitor: str = "val/loss",
        *,
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "min",
        restore_best_weights: bool = False,
    ) -> None:
        check_choice(mode, _MODES, "mode")
        patience = check_int(patience, "patience")
        min_delta = check_number(min_delta, "min_delta", low=0)
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.restore_best_weights = restore_best_weights
        self._reset()

    def _reset(self) -> None:
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, Tensor] | None = None

    def on_fit_start(self, state: State) -> None:
        self._reset()
        check_monitor(self.monitor, state, type(self).__name__)

    def improved(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``."""
        return improved(value, self.best, self.mode, self.min_delta)

    def on_epoch_end(self, state: State) -> None:
        value = monitored_value(self.monitor, state, type(self).__name__)
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, state.epoch, 0
            if self.restore_best_weights:
                self.best_weights = {
                    k: v.detach().clone() for k, v in state.model.state_dict().items()
                }
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = state.epoch
            state.should_stop = True

    def on_fit_end(self, state: State) -> None:
        finished = not state.interrupted and state.exception is None
        if self.restore_best_weights and self.best_weights is not None and finished:
            state.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self.best_weights = state["best_weights"]


def check_monitor(monitor: str, state: State, owner: str) -> None:
    """Fail before training when ``monitor`` is a validation metric and there is no val data."""
    if monitor.startswith("val/") and not state.has_val_data:
        raise ValueError(
            f"{owner} monitors {monitor!r} but fit() got no val_data; pass val_data or "
            f"monitor a training metric such as {'train/' + monitor[4:]!r}"
        )


def monitored_value(monitor: str, state: State, owner: str) -> float:
    """``state.metrics[monitor]`` with an error naming the metrics there are."""
    try:
        return float(state.metrics[monitor])
    except KeyError:
        raise ValueError(
            f"{owner} monitors {monitor!r}, which is not among the metrics {sorted(state.metrics)}"
        ) from None
