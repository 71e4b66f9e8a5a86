"""Training: :func:`fit`, its loop, callbacks, checkpoints, schedules and several processes."""

from __future__ import annotations

from autoenc.training.callbacks import Callback, CSVLogger, EarlyStopping, ProgressBar, State
from autoenc.training.checkpoint import ModelCheckpoint, load_checkpoint
from autoenc.training.distributed import DistributedError
from autoenc.training.loop import NonFiniteLossError
from autoenc.training.schedules import FreeBits, KLCyclical, KLWarmup
from autoenc.training.trainer import FitResult, fit

__all__ = [
    "fit",
    "FitResult",
    "NonFiniteLossError",
    "DistributedError",
    "Callback",
    "State",
    "ProgressBar",
    "CSVLogger",
    "EarlyStopping",
    "ModelCheckpoint",
    "load_checkpoint",
    "KLWarmup",
    "KLCyclical",
    "FreeBits",
]
