"""Make the pictures of the user guide from a real (short) training run on full MNIST.

    AUTOENC_DATA=/path/that/holds/MNIST python docs/make_figures.py

Trains :func:`autoenc.recipes.recommended_vae` (784-512-512 encoder, 32 latents, Bernoulli
likelihood) briefly with :func:`autoenc.fit`: 4 epochs over the first 12000 MNIST training digits,
dynamically binarized, batch 128 (376 steps; the pictures are meant to show what the helpers
draw, not a converged model). Then it writes into ``docs/_static/figures/``:

- ``recon.png``: test digits over their reconstructions, as written by ``ImageSnapshots``
- ``prior_grid.png``, ``interpolate.png``, ``traverse.png``: :mod:`autoenc.pictures` grids
  (``prior_grid.png`` is also the ``samples_epoch004.png`` that ``ImageSnapshots`` would write
  with its default ``n_samples=64``)
- ``latent_scatter.png``, ``history.png``: matplotlib figures (needs the ``plot`` extra)
- ``figures.json``: the settings and final metrics of the run

Everything is seeded, so a rerun on the same machine and versions draws the same pictures.
A few minutes on a 2-core CPU. It needs real MNIST (``download=False``: the MNIST folder must
be there), never the shipped sample.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

import autoenc
from autoenc.data import binarize, dynamic_binarize, mnist
from autoenc.evaluation import latent_diagnostics
from autoenc.pictures import (
    interpolate,
    latent_scatter,
    plot_history,
    prior_grid,
    save_image,
    traverse,
)
from autoenc.pictures.dashboards import ImageSnapshots
from autoenc.recipes import recommended_vae

OUT = Path(__file__).resolve().parent / "_static" / "figures"
SEED = 0


def save_small_png(source: Path | io.BytesIO, path: Path) -> None:
    """Write a PNG with a 256-colour palette: a third of the size, no visible change for plots."""
    from PIL import Image

    with Image.open(source) as image:
        image.convert("RGB").quantize(colors=256).save(path, format="PNG", optimize=True)


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure at 72 dpi as a small palette PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    buffer.seek(0)
    save_small_png(buffer, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-size", type=int, default=12000, help="first N training digits")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()

    train, test = mnist(download=False), mnist(train=False, download=False)
    torch.manual_seed(SEED)
    vae = recommended_vae()
    x_show = test.images[:32].float() / 255  # the same 32 test digits in every picture
    test_bin = binarize(test.images)  # one fixed binarization: val/loss comparable across epochs

    with tempfile.TemporaryDirectory() as tmp:
        snapshots = ImageSnapshots(tmp, x_show, every_n_epochs=args.epochs, n_samples=0)
        start = time.perf_counter()
        result = autoenc.fit(
            vae,
            train.images[: args.train_size],
            val_data=test_bin,
            epochs=args.epochs,
            batch_size=args.batch_size,
            transform=dynamic_binarize,
            seed=SEED,
            callbacks=[snapshots],
        )
        seconds = time.perf_counter() - start
        args.out.mkdir(parents=True, exist_ok=True)
        last = f"epoch{args.epochs:03d}"
        shutil.copy(Path(tmp) / f"recon_{last}.png", args.out / "recon.png")

    x = test.images.float() / 255
    save_image(prior_grid(vae, 64, seed=SEED, nrow=8), args.out / "prior_grid.png")
    # Rows: a 1 into a 7, a 0 into a 6, a 4 into a 9, a 3 into an 8 (first such test digits).
    firsts = {d: int((test.labels == d).nonzero()[0]) for d in range(10)}
    starts = x[[firsts[d] for d in (1, 0, 4, 3)]]
    ends = x[[firsts[d] for d in (7, 6, 9, 8)]]
    save_image(interpolate(vae, starts, ends, steps=10), args.out / "interpolate.png")
    # Traverse the six latent dimensions that carry the most information (KL), from -3 to 3.
    diag = latent_diagnostics(vae, test_bin)
    dims = diag.kl_per_dim.argsort(descending=True)[:6].tolist()
    save_image(traverse(vae, x[firsts[2]], dims=dims, steps=9), args.out / "traverse.png")
    fig = latent_scatter(vae, x[:2000], test.labels[:2000])
    save_figure(fig, args.out / "latent_scatter.png")
    save_figure(plot_history(result.history), args.out / "history.png")

    record = {
        "command": "AUTOENC_DATA=/path/that/holds/MNIST python docs/make_figures.py",
        "model": "autoenc.recipes.recommended_vae()",
        "epochs": args.epochs,
        "train_size": args.train_size,
        "batch_size": args.batch_size,
        "seed": SEED,
        "train_seconds": round(seconds, 1),
        "metrics": {k: round(v, 3) for k, v in result.metrics.items() if "/" in k},
        "active_units": diag.n_active,
        "traversed_dims": dims,
        "torch": torch.__version__,
        "autoenc": autoenc.__version__,
    }
    (args.out / "figures.json").write_text(json.dumps(record, indent=1) + "\n")
    for path in sorted(args.out.glob("*.png")):
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KB")
    print(json.dumps(record["metrics"]))


if __name__ == "__main__":
    main()
