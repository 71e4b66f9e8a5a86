"""What the MNIST examples share that is not about autoenc: the command line, the data flags,
the run folder, row labels on the pictures and the list of files written.

Model building, training, evaluation and pictures stay in each example, so that it reads top to
bottom.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from autoenc import Callback, State
from autoenc.data import DatasetNotFoundError, mnist_or_sample

# What an example writes into its folder: removed from an --out folder before a new run.
EXAMPLE_FILES = (
    "recon_epoch*.png",
    "classes_epoch*.png",
    "class_grid.png",
    "codebook_usage.png",
    "prior_samples.png",
    "history.csv",
    "samples_epoch*.png",
    "reconstructions.png",
    "loss.png",
    "model.pt",
    "metrics.json",
    "checkpoints/last.pt",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show every default; an option whose default is ``None`` says in its help what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parser(doc: str, *, runs: str, epochs: int | None, every: int = 1) -> argparse.ArgumentParser:
    """The options every example has; ``runs`` is the parent folder of its run folders.

    ``epochs=None`` leaves the default to the example (its preset's epochs).
    """
    p = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
    more = " (default: the preset's)" if epochs is None else ""
    p.add_argument("--epochs", type=int, default=epochs, metavar="N", help="epochs to train" + more)
    p.add_argument(
        "--max-batches",
        type=int,
        default=None,
        metavar="N",
        help="train on the first N batches of the training set only, for a quick run "
        "(default: all of them)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="folder with MNIST/raw, downloaded there when missing, never the sample (default: "
        "$AUTOENC_DATA, else ~/.cache/autoenc; offline without either, the MNIST sample "
        "shipped with autoenc, with a warning)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="write the files here, first removing the ones an earlier run of an example left "
        f"(default: a new folder {runs}/version_N)",
    )
    p.add_argument(
        "--every",
        type=int,
        default=every,
        metavar="N",
        help="draw pictures every N epochs and after the last",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the initial weights, data order and noise"
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when available, else cpu), cpu, cuda:1, ..."
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads torch may use; 1 keeps small models fast on a busy machine "
        "(default: torch's choice, one per core)",
    )
    return p


def parse(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line, check the counts and apply ``--threads``."""
    args = p.parse_args()
    for name in ("epochs", "max_batches", "every", "threads", "iw_samples", "seed"):
        value = getattr(args, name, None)
        minimum = 0 if name in ("iw_samples", "seed") else 1
        if value is not None and value < minimum:
            p.error(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args


def is_main_process() -> bool:
    """Whether this process prints and writes files (rank 0 under torchrun, else always)."""
    return int(os.environ.get("RANK", "0")) == 0


def run_folder(out: str | os.PathLike[str] | None, runs: str, *, keep: bool = False) -> Path:
    """The folder a run writes to: ``out``, or else a new ``runs/version_N`` (N one more than
    the highest there, as TensorBoard and Lightning number runs).

    From ``out`` the files an earlier run of an example left (:data:`EXAMPLE_FILES`) are
    removed first, unless ``keep`` (a resumed run), so that every file there is from this
    run; other files stay. Only the main process creates or cleans the folder.
    """
    if out is not None:
        folder = Path(out)
        if is_main_process():
            folder.mkdir(parents=True, exist_ok=True)
        if is_main_process() and not keep:
            old = [path for pattern in EXAMPLE_FILES for path in folder.glob(pattern)]
            for path in old:
                path.unlink()
            if old:
                print(f"removed {len(old)} files of an earlier run from {folder}")
        return folder
    root = Path(runs)
    numbers = [
        int(m[1]) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))
    ]
    n = max(numbers, default=-1) + 1
    while is_main_process():
        try:
            (root / f"version_{n}").mkdir(parents=True)
            break
        except FileExistsError:  # another run took this number meanwhile
            n += 1
    return root / f"version_{n}"


def load_mnist(args: argparse.Namespace, *, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 training and test images, the training set cut to ``--max-batches`` batches."""
    train, test = load_mnist_with_labels(args, batch_size=batch_size)
    return train.images, test.images


def load_mnist_with_labels(args: argparse.Namespace, *, batch_size: int) -> tuple[Any, Any]:
    """The training and test ``MNISTData`` (images and labels), the training set cut to
    ``--max-batches`` batches."""
    # Only the default cache folder falls back to the shipped sample (with one warning); a
    # --data-root or AUTOENC_DATA that holds no MNIST is an error.
    try:
        (train, test), _ = mnist_or_sample(args.data_root, hint="--data-root DIR")
    except DatasetNotFoundError as err:
        sys.exit(str(err))
    if args.max_batches is not None:
        n = args.max_batches * batch_size
        train = type(train)(train.images[:n], train.labels[:n])
    return train, test


class SlowEpochHint(Callback):
    """Say once, when an epoch on the CPU takes over ``factor`` times as long as the fastest
    before it, what usually gets the speed back."""

    def __init__(self, factor: float = 2.0) -> None:
        self.factor, self.shown = factor, False

    def on_epoch_end(self, state: State) -> None:
        times = state.history.get("time", [])
        if self.shown or len(times) < 2 or not state.is_main_process:
            return
        fastest = min(times[:-1])
        if state.device.type == "cpu" and times[-1] > self.factor * fastest:
            self.shown = True
            advice = (
                " On a shared machine --threads 1 (torch.set_num_threads(1)) usually makes small "
                "models fast again."
                if torch.get_num_threads() > 1
                else ""
            )
            print(
                f"note: epoch {state.epoch + 1} took {times[-1]:.0f} s, "
                f"{times[-1] / fastest:.1f}x the fastest before it; other programs are probably "
                f"using the CPU.{advice}"
            )


def label_rows(path: Path, labels: Sequence[str], *, cell: int = 28, padding: int = 2) -> Path:
    """Write ``labels`` left of the rows of an image grid saved at ``path``, in turn down the
    grid (``cell`` and ``padding`` as the grid was drawn)."""
    from PIL import Image, ImageDraw, ImageFont  # torchvision's dependency

    grid = Image.open(path).convert("RGB")
    font = ImageFont.load_default(size=11)
    width = 8 + max(round(ImageDraw.Draw(grid).textlength(t, font=font)) for t in labels)
    labelled = Image.new("RGB", (width + grid.width, grid.height), "white")
    labelled.paste(grid, (width, 0))
    draw = ImageDraw.Draw(labelled)
    for row in range((grid.height - padding) // (cell + padding)):
        y = padding + row * (cell + padding) + cell // 2
        draw.text((4, y), labels[row % len(labels)], fill="black", font=font, anchor="lm")
    labelled.save(path)
    return path


def print_files(folder: Path) -> None:
    """List what the run wrote, numbered series (``recon_epoch001..010.png``) on one line."""
    series: dict[tuple[str, str], list[str]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        m = re.fullmatch(r"(.*?)(\d+)(\.\w+)", name)
        series.setdefault((m[1], m[3]) if m else (name, ""), []).append(m[2] if m else "")
    names = [
        f"{a}{n[0]}..{n[-1]}{b}" if len(n) > 1 else f"{a}{n[0]}{b}" for (a, b), n in series.items()
    ]
    print(f"files in {folder}/: {', '.join(names)}")
