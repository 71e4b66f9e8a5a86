"""Kill -9 during checkpoint writes, again and again, and check that nothing was lost.

A worker process trains a small VAE on tiny data with a :class:`~autoenc.ModelCheckpoint`
every epoch (an epoch is a few steps, so the process spends much of its time writing), resuming
from ``last.pt`` when there is one. The script kills it with ``SIGKILL`` at a random moment,
``--kills`` times, each time starting the next worker on the same folder, then lets a last one
finish. It reports three figures:

1. **checkpoints that load**: after every kill, each ``*.pt`` file in the folder must be read
   by :func:`~autoenc.load_checkpoint` (checksums included);
2. **stale temporaries**: how many temporary files the killed writers left, and whether the
   next write removed them once they were old: before each restart the leftovers' modification
   time is set two hours back, and once the next worker has written a checkpoint they must be
   gone;
3. **bit-exact resume**: the final weights of the killed-and-resumed chain against one
   uninterrupted run with the same seed (largest absolute difference; 0 on the CPU).

Run::

    python benchmarks/fault_kill.py --kills 30
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
AGE_S = 2 * 3600.0  # older than the hour after which a temporary counts as stale


# ---------------------------------------------------------------------------------------------
# the worker


def build():
    """The model (same initial weights every time) and the data."""
    import torch

    from autoenc import Decoder, Encoder, GaussianVAE

    torch.manual_seed(0)
    model = GaussianVAE(Encoder(16, [64], 8), Decoder(4, [64], 16), latent_dim=4, likelihood="mse")
    return model, torch.rand(64, 16, generator=torch.Generator().manual_seed(1))


def train(folder: Path | None, epochs: int, resume: Path | None):
    """The run: 4 steps an epoch and, when ``folder`` is given, a checkpoint after each (the
    write, with its ``fsync``, takes most of the time)."""
    import torch

    from autoenc import Callback, ModelCheckpoint, fit

    class Ready(Callback):
        def on_fit_start(self, state) -> None:
            print(f"READY {state.epochs_completed}", flush=True)

    model, x = build()
    callbacks = [] if folder is None else [Ready(), ModelCheckpoint(folder)]
    fit(
        model,
        x,
        epochs=epochs,
        batch_size=16,
        lr=1e-3,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.9),
        seed=123,
        callbacks=callbacks,
        resume=resume,
        device="cpu",
        verbose=False,
    )
    return model


def worker(folder: Path, epochs: int) -> None:
    last = folder / "last.pt"
    train(folder, epochs, last if last.exists() else None)
    print("FINISHED", flush=True)


# ---------------------------------------------------------------------------------------------
# the killer


def _start(folder: Path, epochs: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", str(folder), "--epochs", str(epochs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def _check_loads(folder: Path) -> tuple[int, list[str]]:
    from autoenc import load_checkpoint

    files, failures = sorted(folder.glob("*.pt")), []
    for path in files:
        try:
            load_checkpoint(path)
        except Exception as err:  # every failure is a finding to report, whatever its kind
            failures.append(f"{path.name}: {type(err).__name__}: {err}")
    return len(files), failures


def _epochs_done(folder: Path) -> int:
    from autoenc import load_checkpoint

    last = folder / "last.pt"
    return load_checkpoint(last)["epochs_completed"] if last.exists() else 0


def _target(tmp: Path) -> Path:
    """The file a temporary was written for: ``.last.pt.k2j3.tmp`` -> ``last.pt``."""
    return tmp.with_name(tmp.name[1:].rsplit(".", 2)[0])


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else -1


def main() -> None:
    args = _parser().parse_args()
    if args.worker:
        worker(Path(args.worker), args.epochs)
        return
    sys.path.insert(0, str(SRC))
    import torch

    from autoenc import load_checkpoint

    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="fault_kill_"))
    loaded = landed = left = cleaned = missed = 0
    failures: list[str] = []
    aged: dict[Path, int] = {}  # aged temporary -> its file's mtime when it was aged

    def settle() -> None:
        """Once a temporary's file has been rewritten, the write must have removed it."""
        nonlocal cleaned, missed
        for tmp, mtime in list(aged.items()):
            if _mtime(_target(tmp)) != mtime:
                cleaned += not tmp.exists()
                missed += tmp.exists()
                del aged[tmp]

    start = time.perf_counter()
    for i in range(args.kills):
        proc = _start(folder, args.epochs)
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            proc.kill()
            raise SystemExit(f"the worker did not start: {line!r} {proc.stderr.read()}")
        time.sleep(rng.uniform(0.0, args.max_delay))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        landed += proc.returncode == -signal.SIGKILL
        n, bad = _check_loads(folder)
        loaded += n - len(bad)
        failures += [f"kill {i + 1}: {b}" for b in bad]
        settle()
        new = [p for p in _temporaries(folder) if p not in aged]
        left += len(new)
        old = time.time() - AGE_S  # as if the next worker started hours later
        for tmp in new:
            os.utime(tmp, (old, old))
            aged[tmp] = _mtime(_target(tmp))
        print(
            f"kill {i + 1:2d}: {_epochs_done(folder):5d} epochs done, {n - len(bad)} of {n} "
            f"checkpoint(s) load, {len(new)} temporaries left",
            flush=True,
        )
    proc = _start(folder, args.epochs)  # the last worker runs to the end
    out, err = proc.communicate()
    if proc.returncode != 0 or "FINISHED" not in out:
        raise SystemExit(f"the last worker failed ({proc.returncode}): {err[-2000:]}")
    settle()
    resumed, _ = build()
    load_checkpoint(folder / "last.pt", model=resumed)
    uninterrupted = train(None, args.epochs, None)
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(
            resumed.state_dict().values(), uninterrupted.state_dict().values(), strict=True
        )
    )
    print(
        f"\ntorch {torch.__version__}; {args.kills} kills ({landed} while training), "
        f"{args.epochs} epochs, {time.perf_counter() - start:.0f} s"
    )
    print(f"1. checkpoints that load after a kill: {loaded} of {loaded + len(failures)}")
    for failure in failures:
        print(f"   {failure}")
    print(
        f"2. temporaries left by killed writers: {left}; removed by the next write of their "
        f"file once aged: {cleaned}, not removed: {missed}, file not written again: {len(aged)}"
    )
    verdict = "bit-exact" if diff == 0 else "NOT bit-exact"
    print(f"3. resumed chain vs uninterrupted run: max |dw| = {diff:g} ({verdict})")
    if failures or missed or diff != 0:
        raise SystemExit(1)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=30, help="SIGKILLs (default 30)")
    p.add_argument("--epochs", type=int, default=300, help="epochs of the whole run")
    p.add_argument(
        "--max-delay",
        type=float,
        default=0.5,
        help="seconds after the worker starts training within which it is killed (uniform)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    main()
