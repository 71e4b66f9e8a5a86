"""A training run for the resume tests, in its own process so a test can ``kill -9`` it.

``python tests/_resume_worker.py DIR HANG_AFTER`` trains :func:`build` with a
:class:`~autoenc.ModelCheckpoint` in ``DIR``. Once ``HANG_AFTER`` epochs are done and their
checkpoint is on disk, it prints ``CHECKPOINTED <n>`` and sleeps until it is killed.
The test imports :func:`build` and :func:`train` to run the same training in-process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from autoenc import Decoder, Encoder, GaussianVAE
from autoenc.training import FitResult, fit
from autoenc.training.callbacks import Callback, EarlyStopping
from autoenc.training.checkpoint import ModelCheckpoint
from autoenc.training.schedules import KLWarmup

EPOCHS = 4


def build() -> tuple[GaussianVAE, torch.Tensor, torch.Tensor]:
    """The model (same initial weights every time) and training and validation data."""
    torch.manual_seed(0)
    model = GaussianVAE(Encoder(6, [8], 4), Decoder(2, [8], 6), latent_dim=2, likelihood="mse")
    g = torch.Generator().manual_seed(1)
    return model, torch.rand(50, 6, generator=g), torch.rand(10, 6, generator=g)


def train(
    model: GaussianVAE,
    x: torch.Tensor,
    val: torch.Tensor,
    *,
    callbacks: list[Callback] = (),
    resume: str | Path | None = None,
) -> FitResult:
    """The run under test: shuffling, a VAE's noise, a KL warm-up, an LR schedule, early
    stopping state and validation, all of which a resume must restore."""
    return fit(
        model,
        x,
        epochs=EPOCHS,
        batch_size=8,
        val_data=val,
        lr=0.01,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7),
        callbacks=[KLWarmup(steps=15), EarlyStopping(patience=50), *callbacks],
        seed=123,
        resume=resume,
        verbose=False,
    )


class HangAfter(Callback):
    """Announces the checkpoint of epoch ``n`` and then sleeps forever (it runs at the start of
    the next epoch, after ModelCheckpoint has written that checkpoint)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def on_epoch_start(self, state) -> None:
        if state.epochs_completed == self.n:
            print(f"CHECKPOINTED {self.n}", flush=True)
            while True:
                time.sleep(1)


if __name__ == "__main__":
    folder, hang_after = Path(sys.argv[1]), int(sys.argv[2])
    model, x, val = build()
    train(model, x, val, callbacks=[ModelCheckpoint(folder), HangAfter(hang_after)])
    print("FINISHED", flush=True)
