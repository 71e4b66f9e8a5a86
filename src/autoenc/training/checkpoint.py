"""Training checkpoints: everything :func:`autoenc.fit` needs to continue a run exactly.

A checkpoint is one ``torch.save`` file of plain containers, numbers, strings and tensors (read
back with ``weights_only=True``, so loading never runs code from the file) holding the model's
kind, config and weights, the optimizer and LR scheduler (class and state), every RNG state the
run draws from (torch CPU and CUDA, Python's ``random``, NumPy's when it is loaded), the run's
seed (which fixes the data order), the position (epoch and batch), the history, each
callback's ``state_dict`` and the KL schedules' settings. It is written atomically: a crash or
``kill -9`` mid-write leaves the previous file.

:class:`ModelCheckpoint` writes ``last.pt`` and ``best.pt``; ``fit(..., resume=path)`` continues
from either (:mod:`autoenc.training.resume` checks that the run fits it); :func:`load_checkpoint`
reads one (and can load its weights into a model).
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoenc._utils import (
    __version__,
    atomic_save,
    check_writable_folder,
    config_json,
    improved,
    renamed_arguments,
    weights_are_finite,
)
from autoenc.files import read_archive
from autoenc.training.callbacks import Callback, State, check_monitor, monitored_value
from autoenc.training.distributed import all_gather_objects, any_rank
from autoenc.training.schedules import KLCyclical, KLWarmup

__all__ = ["ModelCheckpoint", "save_checkpoint", "load_checkpoint", "make_checkpoint"]

FORMAT = "autoenc.training.checkpoint"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------
# random number generators


def capture_rng(epoch_start: torch.Tensor | None = None) -> dict[str, Any]:
    """The state of every random number generator a training run draws from.

    Args:
        epoch_start: Mid-epoch, torch's CPU generator state when the epoch's data iteration
            began (see :attr:`~autoenc.training.State.epoch_rng`), stored as
            ``"torch_epoch_start"`` so that a ``DataLoader`` resumed mid-epoch draws the same
            order and worker seeds.
    """
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if epoch_start is not None:
        rng["torch_epoch_start"] = epoch_start
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    np = sys.modules.get("numpy")
    if np is not None:
        _, keys, pos, has_gauss, cached = np.random.get_state()
        rng["numpy"] = {
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    """Put back what ``capture_rng()`` returned."""
    torch.set_rng_state(rng["torch"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = rng.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(
                f"the checkpoint holds the CUDA RNG of {len(cuda)} devices but "
                f"{torch.cuda.device_count()} are visible; the CUDA RNG is not restored",
                stacklevel=3,
            )
    saved_np, np = rng.get("numpy"), sys.modules.get("numpy")
    if saved_np is not None and np is not None:
        np.random.set_state(
            (
                "MT19937",
                saved_np["keys"].numpy().astype(np.uint32),
                saved_np["pos"],
                saved_np["has_gauss"],
                saved_np["cached_gaussian"],
            )
        )


# ---------------------------------------------------------------------------------------------
# building, writing and reading checkpoints


def callback_keys(callbacks: Sequence[Callback]) -> list[str]:
    """Keys for callbacks' states in a checkpoint: the class name, then ``#1``, ``#2``..."""
    keys, seen = [], {}
    for cb in callbacks:
        name = type(cb).__name__
        n = seen.get(name, 0)
        seen[name] = n + 1
        keys.append(name if n == 0 else f"{name}#{n}")
    return keys


#: The keys every checkpoint holds (later versions add others, read with ``.get``).
REQUIRED_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "epoch",
    "batch",
    "epochs_completed",
    "step",
    "running",
    "history",
    "metrics",
    "seed",
    "rng",
    "callbacks",
)

#: The settings of a KL schedule that a checkpoint stores, to notice a changed schedule.
SCHEDULE_SETTINGS = ("unit", "length", "start", "end", "ratio", "cycles")


def run_rng(state: State) -> dict[str, Any]:
    """This process's generator states for a checkpoint of ``state``."""
    mid_epoch = state.epochs_completed <= state.epoch
    return capture_rng(state.epoch_rng if mid_epoch else None)


def schedule_settings(callbacks: Sequence[Callback]) -> dict[str, dict[str, Any]]:
    """The settings of the run's KL schedules, keyed like their states."""
    return {
        key: {name: getattr(cb, name) for name in SCHEDULE_SETTINGS if hasattr(cb, name)}
        for key, cb in zip(callback_keys(callbacks), callbacks, strict=True)
        if isinstance(cb, (KLWarmup, KLCyclical))
    }


def make_checkpoint(
    state: State, *, rng_ranks: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The checkpoint of a run as it stands (an epoch boundary or mid-epoch).

    Args:
        state: The run.
        rng_ranks: In a distributed run, every process's :func:`run_rng` in rank order
            (this process's RNGs are stored otherwise).
    """
    mid_epoch = state.epochs_completed <= state.epoch
    model, scheduler = state.model, state.scheduler
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "autoenc_version": __version__,
        "kind": type(model).__name__,
        "config": config_json(model),
        "model": model.state_dict(),
        "optimizer_class": type(state.optimizer).__name__,
        "optimizer": state.optimizer.state_dict(),
        "scheduler_class": None if scheduler is None else type(scheduler).__name__,
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "epoch": state.epoch if mid_epoch else state.epochs_completed,
        "batch": state.batch if mid_epoch else 0,
        "epochs_completed": state.epochs_completed,
        "step": state.step,
        "running": state.running.state_dict() if mid_epoch else None,
        "history": {k: list(v) for k, v in state.history.items()},
        "metrics": dict(state.metrics),
        "seed": state.seed,
        "rng": run_rng(state) if rng_ranks is None else rng_ranks[0],
        "rng_ranks": rng_ranks,
        "world_size": state.world_size,
        "batches_per_epoch": state.batches_per_epoch,
        "callbacks": {
            key: cb.state_dict()
            for key, cb in zip(callback_keys(state.callbacks), state.callbacks, strict=True)
        },
        "schedules": schedule_settings(state.callbacks),
    }


def save_checkpoint(state: State, path: str | os.PathLike[str]) -> Path:
    """Write :func:`make_checkpoint` of ``state`` to ``path`` atomically.

    Raises:
        ValueError: If the model holds NaN or Inf weights (nothing is written).
    """
    if not weights_are_finite(state.model):
        raise ValueError(f"the model has non-finite weights; {str(path)!r} was not written")
    return atomic_save(make_checkpoint(state), path)


def check_weights_fit(weights: dict[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Raise a ``ValueError`` naming missing, unexpected and mis-shaped keys, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k}: {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if shapes:
        problems.append(f"shape mismatches (saved vs model) {shapes[:5]}")
    if problems:
        raise ValueError(
            f"{source} holds weights of a different model than {type(model).__name__}: "
            + "; ".join(problems)
        )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    map_location: Any = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint written by :class:`ModelCheckpoint` (or ``save_checkpoint``).

    Args:
        path: The file.
        model: When given, the checkpoint's weights are loaded into it.
        map_location: Passed to :func:`torch.load`.

    Returns:
        The checkpoint: a dict with ``model`` (the state dict), ``config`` (JSON text or
        ``None``), ``kind``, ``optimizer``, ``optimizer_class``, ``scheduler``,
        ``scheduler_class``, ``epoch``, ``batch``, ``epochs_completed``, ``step``,
        ``history``, ``metrics``, ``seed``, ``rng``, ``callbacks`` and ``schedules``.
        Rebuild an autoenc model with ``GaussianVAE.from_config(json.loads(ckpt["config"]))``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is corrupted, not an autoenc checkpoint or lacks a part, or
            its weights do not fit ``model``.
    """
    payload = read_archive(path, what="checkpoint", map_location=map_location)
    if payload.get("format") != FORMAT:
        hint = " (a model file: load it with autoenc.load)" if "state_dict" in payload else ""
        raise ValueError(f"{str(path)!r} is not an autoenc training checkpoint{hint}")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} was written by a newer autoenc ({payload.get('autoenc_version')}); "
            "upgrade autoenc to read it"
        )
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise ValueError(
            f"the checkpoint {str(path)!r} lacks {', '.join(map(repr, missing))}: it was not "
            "written by ModelCheckpoint or save_checkpoint, or was edited; it cannot resume a run"
        )
    if model is not None:
        check_weights_fit(payload["model"], model, repr(str(path)))
        model.load_state_dict(payload["model"])
    return payload


# ---------------------------------------------------------------------------------------------


class ModelCheckpoint(Callback):
    """Save training checkpoints: the latest (``last.pt``) and the best so far (``best.pt``).

    Checkpoints are written at the end of every ``every_n_epochs``-th epoch and of the last
    one, atomically, and hold everything ``fit(..., resume=path)`` needs to continue exactly.
    When Ctrl-C interrupts training, ``last.pt`` is written at the batch where it stopped. A
    run that fails (e.g. a NaN loss) never overwrites a checkpoint, and no checkpoint is ever
    written from non-finite weights. :func:`autoenc.fit` calls this callback after all others,
    so it stores what they changed. Only the main process writes; in a distributed run every
    process must have the callback (it collects their RNG states for an exact resume).

    Args:
        directory: Folder for the files (created when needed).
        monitor: The metric that decides "best"; ``None`` means ``val/loss`` when there is
            validation data, else ``train/loss``.
        mode: ``"min"`` or ``"max"``.
        save_last: Write ``last.pt``.
        save_best: Write ``best.pt`` whenever ``monitor`` improves.
        every_n_epochs: Consider writing every this many epochs.

    Example:
        >>> import tempfile
        >>> from autoenc import Decoder, Encoder, GaussianVAE
        >>> from autoenc.training import fit
        >>> vae = GaussianVAE(Encoder(4, [8], 4), Decoder(2, [8], 4), latent_dim=2,
        ...                   likelihood="mse")
        >>> ckpt = ModelCheckpoint(tempfile.mkdtemp())
        >>> _ = fit(vae, torch.rand(64, 4), epochs=2, callbacks=[ckpt], verbose=False)
        >>> load_checkpoint(ckpt.last_path)["epochs_completed"]
        2
    """

    @renamed_arguments(dirpath="directory")
    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        monitor: str | None = None,
        mode: str = "min",
        save_last: bool = True,
        save_best: bool = True,
        every_n_epochs: int = 1,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not (isinstance(every_n_epochs, int) and every_n_epochs >= 1):
            raise ValueError(f"every_n_epochs must be a positive int, got {every_n_epochs!r}")
        self.directory, self.monitor, self.mode = Path(directory), monitor, mode
        self.save_last, self.save_best, self.every_n_epochs = save_last, save_best, every_n_epochs
        self.best: float | None = None
        self.best_epoch: int | None = None
        self._monitor = monitor or "val/loss"

    @property
    def last_path(self) -> Path:
        """Where the latest checkpoint goes."""
        return self.directory / "last.pt"

    @property
    def best_path(self) -> Path:
        """Where the best checkpoint goes."""
        return self.directory / "best.pt"

    def on_fit_start(self, state: State) -> None:
        self.best, self.best_epoch = None, None
        self._monitor = self.monitor or ("val/loss" if state.has_val_data else "train/loss")
        if self.save_best:
            check_monitor(self._monitor, state, type(self).__name__)
        if state.is_main_process:  # fail now, not after the first epoch
            check_writable_folder(self.directory, type(self).__name__)

    def on_epoch_end(self, state: State) -> None:
        stop = state.should_stop
        if state.world_size > 1:  # a stop set by one process: all must write, or none
            stop = any_rank([stop], state.device)[0]
        final = stop or state.epoch + 1 >= state.epochs
        if not (final or (state.epoch + 1) % self.every_n_epochs == 0):
            return
        best = False
        if self.save_best:
            value = monitored_value(self._monitor, state, type(self).__name__)
            best = improved(value, self.best, self.mode)
            if best:
                self.best, self.best_epoch = value, state.epoch
        paths = ([self.best_path] if best else []) + ([self.last_path] if self.save_last else [])
        self._write(state, paths)

    def on_fit_end(self, state: State) -> None:
        if state.interrupted and state.exception is None and self.save_last:
            self._write(state, [self.last_path])

    def _write(self, state: State, paths: list[Path]) -> None:
        if not paths:
            return
        # every process's RNGs, for an exact resume: all processes get here together, since
        # they decide from the same metrics and flags
        rngs = all_gather_objects(run_rng(state)) if state.world_size > 1 else None
        if not state.is_main_process:
            return
        if not weights_are_finite(state.model):
            warnings.warn(
                "the model has non-finite weights: no checkpoint written, the previous ones "
                "are kept",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        payload = make_checkpoint(state, rng_ranks=rngs)
        for path in paths:
            atomic_save(payload, path)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
