"""What the two MNIST examples share: command line, data, pictures and the final report.

Kept beside the examples (not in the library) so each example still reads top to bottom.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from autoenc import save
from autoenc.data import DatasetNotFoundError, mnist, mnist_or_sample
from autoenc.pictures.dashboards import ImageSnapshots, VisdomDashboard
from autoenc.training import fit

SECONDS_PER_EPOCH = "about 7-15 s per epoch at batch 32 on a 2-core CPU"


def is_main_process() -> bool:
    """Whether this process prints and writes files (rank 0 under torchrun, else always)."""
    return int(os.environ.get("RANK", "0")) == 0


def parser(description: str, *, out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--epochs",
        type=int,
        default=10,
        help=f"epochs to train (the article used 1000; {SECONDS_PER_EPOCH})",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--lr", type=float, default=None, help="default: the preset's")
    p.add_argument(
        "--data-root",
        default=None,
        help="folder that holds MNIST/raw (default: $AUTOENC_DATA, then the cache; "
        "without either, the MNIST sample shipped with autoenc)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--out", default=out, help="folder for PNGs, the model and metrics")
    p.add_argument("--every", type=int, default=1, help="save pictures every N epochs")
    p.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="use only the first N batches of the training set (quick runs)",
    )
    p.add_argument(
        "--visdom",
        action="store_true",
        help="also post x, x_hat and samples to a Visdom server, as the article does",
    )
    p.add_argument("--visdom-server", default="http://localhost")
    p.add_argument("--visdom-port", type=int, default=8097)
    p.add_argument("--visdom-env", default="main")
    return p


def load_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 train and test images; an explicit --data-root must hold MNIST (no fallback)."""
    if args.data_root is not None:
        try:
            return mnist(args.data_root).images, mnist(args.data_root, train=False).images
        except DatasetNotFoundError as err:
            sys.exit(f"--data-root {args.data_root!r}: {err}")
    train, _ = mnist_or_sample(train=True)
    test, _ = mnist_or_sample(train=False)
    return train.images, test.images


def limit(images: torch.Tensor, args: argparse.Namespace, batch_size: int) -> torch.Tensor:
    if args.max_batches is None:
        return images
    if args.max_batches <= 0:
        sys.exit(f"--max-batches must be positive, got {args.max_batches}")
    return images[: args.max_batches * batch_size]


def picture_callbacks(args: argparse.Namespace, x_show: torch.Tensor) -> list:
    """PNG grids every --every epochs, and the article's Visdom windows with --visdom."""
    callbacks = [ImageSnapshots(args.out, x_show, every_n_epochs=args.every)]
    if args.visdom:
        callbacks.append(
            VisdomDashboard(
                x_show,
                server=args.visdom_server,
                port=args.visdom_port,
                env=args.visdom_env,
                every_n_epochs=args.every,
            )
        )
    return callbacks


def train(model, train_x, test_x, args, *, batch_size, lr, val_data=None, callbacks=(), **fit_kw):
    """fit() with the examples' settings (pictures of the first 32 test images, --seed,
    --device; validation on ``val_data``, by default the test images); returns the FitResult.
    Further keyword arguments go to fit()."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    x_show = test_x[:32].float() / 255
    start = time.perf_counter()
    result = fit(
        model,
        train_x,
        val_data=test_x if val_data is None else val_data,
        epochs=args.epochs,
        batch_size=batch_size,
        lr=lr,
        seed=args.seed,
        device=args.device,
        callbacks=[*picture_callbacks(args, x_show), *callbacks],
        **fit_kw,
    )
    seconds = time.perf_counter() - start
    if result.state.is_main_process:
        in_epochs = sum(result.history.get("time", []))
        print(
            f"trained to epoch {result.epochs_completed} in {seconds:.1f} s "
            f"({in_epochs:.1f} s in epochs over the whole run, resumes included)"
        )
    return result


def finish(model, result, test_x, args, extra: dict | None = None) -> dict:
    """Save the model, the loss curve and a metrics JSON; print the test metrics.

    Under torchrun only rank 0 does this; the other processes return an empty dict.
    """
    if not result.state.is_main_process:
        return {}
    out = Path(args.out)
    save(model.cpu(), out / "model.pt")
    x = test_x.float() / 255
    recon_mse = (
        torch.cat([(model.reconstruct(b) - b).pow(2).flatten(1).mean(1) for b in x.split(1000)])
        .mean()
        .item()
    )
    metrics = {"test/recon_mse_per_pixel": recon_mse, **(extra or {})}
    for key, value in metrics.items():
        print(f"{key}: {value:.6g}")
    (out / "metrics.json").write_text(
        json.dumps({"test": metrics, "history": result.history}, indent=1)
    )
    try:
        from autoenc.pictures import plot_history

        plot_history(result.history).savefig(out / "loss.png", dpi=100)
    except ImportError as err:
        print(f"no loss curve: {err}")
    print(f"pictures, model and metrics are in {out}/")
    return metrics
