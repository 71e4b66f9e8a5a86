"""One process of the distributed tests, started by tests/test_distributed.py (not a test).

The test starts ``WORLD_SIZE`` copies with the variables ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR=127.0.0.1``, ``MASTER_PORT``)::

    python tests/_ddp_worker.py main OUT PORT2   # every check below; results in OUT/rank<r>.pt
    python tests/_ddp_worker.py die OUT          # rank 1 kills itself at step 3
    python tests/_ddp_worker.py hang OUT         # rank 1 stops answering at step 3

``main`` first lets ``fit`` create the process group from the environment (the equivalence
run: its result is compared with one process by the test), then creates a group itself on
``PORT2`` and runs the other checks in it: resume, a stop or a NaN on one rank only, and the
set-ups ``fit`` must reject.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from autoenc import Autoencoder, Decoder, Encoder, GaussianVAE, LossOutput
from autoenc.training import NonFiniteLossError, fit
from autoenc.training.callbacks import Callback, CSVLogger, State
from autoenc.training.checkpoint import ModelCheckpoint
from autoenc.training.schedules import KLWarmup

N_TRAIN, N_VAL, BATCH, EPOCHS, LR = 21, 7, 8, 3, 0.05


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Training and validation data; 21 = 2 * 8 + 5, so the last global batch splits 3 + 2."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(N_TRAIN, 6, generator=g), torch.rand(N_VAL, 6, generator=g)


def autoencoder() -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(Encoder(6, [16], 3), Decoder(3, [16], 6))


def vae() -> GaussianVAE:
    torch.manual_seed(0)
    return GaussianVAE(Encoder(6, [8], 4), Decoder(2, [8], 6), latent_dim=2, likelihood="mse")


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class StepLosses(Callback):
    """Records every step's ``state.batch_terms['loss']``."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_batch_end(self, state: State) -> None:
        self.losses.append(state.batch_terms["loss"])


class StopOn(Callback):
    """Sets ``should_stop`` on one rank only, after a step or an epoch."""

    def __init__(self, rank: int, *, step: int | None = None, epoch: int | None = None) -> None:
        self.rank, self.step, self.epoch = rank, step, epoch

    def on_batch_end(self, state: State) -> None:
        if state.rank == self.rank and state.step == self.step:
            state.should_stop = True

    def on_epoch_end(self, state: State) -> None:
        if state.rank == self.rank and state.epoch == self.epoch:
            state.should_stop = True


class NaNOnRank(nn.Module):
    """A model whose loss is NaN on one rank at one training call (counted from 1)."""

    def __init__(self, rank: int, at: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(6, 6)
        self.rank, self.at, self.calls = rank, at, 0

    def loss(self, x: torch.Tensor) -> LossOutput:
        recon = (self.net(x) - x).pow(2).sum(1).mean()
        kl = self.net.weight.pow(2).sum()
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if dist.get_rank() == self.rank and self.calls == self.at:
                kl = kl * float("nan")
        return LossOutput(loss=recon + kl, recon=recon.detach(), kl=kl.detach())


class FailAt(Callback):
    """On one rank, once ``step`` steps are done: kill this process (SIGKILL, no clean-up) or
    hang (sleep until killed)."""

    def __init__(self, rank: int, step: int, how: str) -> None:
        self.rank, self.step, self.how = rank, step, how

    def on_batch_end(self, state: State) -> None:
        if state.rank == self.rank and state.step == self.step:
            print(f"{self.how.upper()} {state.rank}", flush=True)
            if self.how == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            while True:
                time.sleep(1)


def equivalence(out: Path, rank: int) -> dict:
    """fit creates the process group from the environment and destroys it."""
    x, val = data()
    model, losses = autoencoder(), StepLosses()
    own = out / f"files{rank}"
    result = fit(
        model,
        x,
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=LR,
        val_data=val,
        seed=0,
        callbacks=[losses, CSVLogger(own, filename="log.csv"), ModelCheckpoint(own / "ckpt")],
    )
    return {
        "weights": weights(model),
        "history": result.history,
        "losses": losses.losses,
        "steps": result.steps,
        "group_left": dist.is_initialized(),
    }


def resume_is_exact(out: Path, rank: int) -> dict:
    """A VAE run stopped by rank 0 alone after 2 of 4 epochs, then resumed, against one run."""
    x, val = data()

    def run(callbacks: list[Callback], resume: Path | None = None) -> tuple[nn.Module, object]:
        model = vae()
        result = fit(
            model,
            x,
            epochs=4,
            batch_size=BATCH,
            lr=LR,
            val_data=val,
            seed=3,
            callbacks=[KLWarmup(steps=6), *callbacks],
            resume=resume,
            verbose=False,
        )
        return model, result

    whole, _ = run([])
    ckpt = out / "resume"
    _, first = run([StopOn(0, epoch=1), ModelCheckpoint(ckpt, every_n_epochs=3)])
    resumed, _ = run([], resume=ckpt / "last.pt")
    return {
        "first_epochs": first.epochs_completed,
        "resumed_equal": all(
            torch.equal(a, b)
            for a, b in zip(weights(whole).values(), weights(resumed).values(), strict=True)
        ),
    }


def stops_and_nans(rank: int) -> dict:
    x, _ = data()
    stopped = fit(
        autoencoder(),
        x,
        epochs=5,
        batch_size=4,
        callbacks=[StopOn(1, step=3)],
        verbose=False,
    )
    try:
        fit(NaNOnRank(rank=1, at=4), x, epochs=3, batch_size=4, verbose=False)
        nan = None
    except NonFiniteLossError as err:
        nan = (err.term, err.step)
    return {"stopped_steps": stopped.steps, "nan": nan}


def rejected(rank: int) -> dict:
    """Set-ups fit must reject on every process, before any collective can hang."""
    x, _ = data()
    errors = {}
    cases = {
        "indivisible": dict(data=x, batch_size=7),
        "unsharded_loader": dict(data=DataLoader(TensorDataset(x), batch_size=4)),
    }
    for name, kwargs in cases.items():
        try:
            fit(autoencoder(), epochs=1, verbose=False, **kwargs)
            errors[name] = None
        except ValueError as err:
            errors[name] = str(err)
    sampler = DistributedSampler(TensorDataset(x), shuffle=True, seed=0)
    sharded = fit(
        autoencoder(),
        DataLoader(TensorDataset(x), batch_size=4, sampler=sampler),
        epochs=2,
        verbose=False,
    )
    errors["sharded_loader_steps"] = sharded.steps
    return errors


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    if mode in ("die", "hang"):
        x, _ = data()
        fit(
            autoencoder(),
            x.repeat(20, 1),
            epochs=50,
            batch_size=4,
            callbacks=[FailAt(1, step=3, how=mode)],
            verbose=False,
            distributed_timeout=5 if mode == "hang" else 30,
        )
        print("FINISHED", flush=True)
        return
    results = {"equivalence": equivalence(out, rank)}
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{sys.argv[3]}",
        rank=rank,
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=datetime.timedelta(seconds=60),
    )
    results["resume"] = resume_is_exact(out, rank)
    results["stops"] = stops_and_nans(rank)
    results["rejected"] = rejected(rank)
    results["user_group_kept"] = dist.is_initialized()
    dist.destroy_process_group()
    torch.save(results, out / f"rank{rank}.pt")
    print(f"DONE {rank}", flush=True)


if __name__ == "__main__":
    main()
