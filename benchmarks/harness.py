"""What the benchmark scripts share: the machine's description, MNIST, the models, timing.

Each ``bench_*.py`` script is a plain script (not pytest) that prints a table and can write its
measurements as JSON. The article's networks and loop come from :mod:`article`; the library's
equivalent VAE is :func:`library_vae`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoenc import Decoder, Encoder, GaussianVAE

HERE = Path(__file__).resolve().parent
# The shared MNIST copy beside a checkout of the repository, unless AUTOENC_DATA says otherwise.
DEFAULT_DATA = os.environ.get(
    "AUTOENC_DATA", str((HERE.parent.parent / "shared" / "data").resolve())
)


# ---------------------------------------------------------------------------------------------
# the machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (what ``uptime`` prints), where the OS has them."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine() -> dict[str, Any]:
    """Everything a reader needs to weigh the figures: CPU, cores, threads, versions, load."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": load_average(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def describe(info: dict[str, Any]) -> str:
    load = info.get("load_average")
    return (
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} with "
        f"{info['torch_threads']} threads, load average {load} at {info['date']}"
    )


# ---------------------------------------------------------------------------------------------
# command line and output


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--data-root",
        default=DEFAULT_DATA,
        help="folder holding MNIST/raw (default: $AUTOENC_DATA or ../shared/data)",
    )
    p.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the whole run (default: torch's own choice)",
    )
    p.add_argument("--json", default=None, help="write the measurements to this file")
    return p


def setup(args: argparse.Namespace) -> dict[str, Any]:
    """Apply ``--threads``, print the machine line and return the machine's description."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    info = machine()
    print(describe(info), flush=True)
    return info


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    payload = {**payload, "load_average_at_end": load_average()}
    print(f"load average at the end: {payload['load_average_at_end']}")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, right-aligned, numbers formatted by the caller."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------------------------------------
# data and models


@contextlib.contextmanager
def revision_src(revision: str) -> Iterator[Path]:
    """Check ``revision`` out into a temporary ``git worktree`` and yield its ``src`` folder
    (put it on ``PYTHONPATH`` to import that revision's autoenc); the worktree is removed after."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        git = ["git", "-C", str(HERE.parent), "worktree"]
        subprocess.run(
            [*git, "add", "--detach", str(tree), revision], check=True, capture_output=True
        )
        try:
            yield tree / "src"
        finally:
            subprocess.run([*git, "remove", "--force", str(tree)], check=True)


def quiet_pythae() -> None:
    """Import pythae's trainers (which create loggers that print to stdout) and set those
    loggers to errors only, so that its progress lines do not fill the benchmark's output."""
    import pythae.trainers  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.ERROR)


def mnist(root: str, *, train: bool = True):
    """torchvision's MNIST with the article's ``ToTensor`` transform; exits with a message when
    the files are missing."""
    from torchvision import datasets, transforms

    try:
        return datasets.MNIST(root, train=train, transform=transforms.ToTensor(), download=False)
    except RuntimeError as err:
        sys.exit(f"MNIST not found under {root!r} ({err}); pass --data-root or set AUTOENC_DATA")


def mnist_uint8(root: str, *, train: bool = True) -> torch.Tensor:
    """MNIST images as the ``(n, 1, 28, 28)`` uint8 tensor the dataset holds."""
    return mnist(root, train=train).data.unsqueeze(1)


def binarized_test_images(root: str, n: int | None = None) -> torch.Tensor:
    """The first ``n`` (default: all) MNIST test images binarized once with seed 0, the test set
    every NLL in the docs' results page is measured on."""
    from autoenc.data import dynamic_binarize

    x = mnist_uint8(root, train=False)[:n]
    return dynamic_binarize(x, generator=torch.Generator().manual_seed(0))


def library_vae(*, likelihood: str = "mse") -> GaussianVAE:
    """The article's VAE built from autoenc's parts: same layers, same loss (``nn.MSELoss()``
    plus the article's KL / (b * 784)) with ``likelihood="mse"``."""
    logits = likelihood != "mse"
    return GaussianVAE(
        Encoder((1, 28, 28), [256, 64], 20, final_activation="relu"),
        Decoder(10, [64, 256], (1, 28, 28), final_activation=None if logits else "sigmoid"),
        latent_dim=10,
        likelihood=likelihood,
        posterior="sigma",
        reduction="mean",
    )


def same_weights(model: nn.Module, like: nn.Module) -> nn.Module:
    """Copy the weights of ``like``'s linear layers into ``model``'s, in order (e.g. an article
    VAE's initial weights into :func:`library_vae`), so both start from the same point."""
    src = [m for m in like.modules() if isinstance(m, nn.Linear)]
    dst = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if [tuple(m.weight.shape) for m in src] != [tuple(m.weight.shape) for m in dst]:
        raise ValueError("the two models' linear layers differ")
    for a, b in zip(src, dst, strict=True):
        b.load_state_dict(a.state_dict())
    return model


LAYERS = [(784, 256), (256, 64), (64, 20), (10, 64), (64, 256), (256, 784)]
"""The (in, out) widths of the article VAE's six linear layers."""


def flops_per_example() -> int:
    """Matmul FLOPs of one training example: forward, the weight gradients, and the input
    gradients of every layer but the first (the data needs none)."""
    per_layer = [2 * i * o for i, o in LAYERS]
    return 3 * sum(per_layer) - per_layer[0]


def matmul_peak(
    *, n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> dict[str, float]:
    """Measured matmul GFLOP/s of this process (its thread setting) in ``dtype``, per wall-clock
    and per CPU second (what a shared machine leaves to it), medians of ``repeats``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        a @ b
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": 2 * n**3 / median(wall) / 1e9, "cpu": 2 * n**3 / median(cpu) / 1e9}
