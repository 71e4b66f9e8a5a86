"""Training speed: ``autoenc.fit`` against the article's hand-written loop, on real MNIST.

Both train the article's VAE (784-256-64-20 encoder ending in ReLU, sigma posterior, 10-64-256-784
decoder ending in a sigmoid, ``nn.MSELoss()`` plus the article's KL divided by ``b * 784``, Adam
1e-3) for one epoch, in this process, interleaved (the order alternates between repeats), at
each batch size. The article's loop is the tutorial's code: ``DataLoader(MNIST(root,
transform=ToTensor()), batch_size=b, shuffle=True)``. ``fit`` gets the same images as a uint8
tensor and takes its in-memory fast path. Each figure is the wall time of the whole call (for
``fit``: argument checks, the dry run of ``model.loss`` and optimizer set-up included).

Run::

    python benchmarks/bench_fit.py --batch-sizes 32,128,512 --repeats 3
    python benchmarks/bench_fit.py --max-batches 200 --repeats 2 --json out.json  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from torch import nn, optim
from torch.utils.data import DataLoader

from autoenc import Decoder, Encoder, GaussianVAE
from autoenc.training import fit


class ArticleVAE(nn.Module):
    """The article's VAE, as printed there (forward returns the reconstruction and the KL)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(784, 256),
            nn.ReLU(),
            nn.Linear(256, 64),
            nn.ReLU(),
            nn.Linear(64, 20),
            nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Linear(10, 64),
            nn.ReLU(),
            nn.Linear(64, 256),
            nn.ReLU(),
            nn.Linear(256, 784),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batchsz = x.size(0)
        x = x.view(batchsz, -1)
        q = self.encoder(x)
        mu, sigma = q.chunk(2, dim=1)
        q = mu + sigma * torch.randn_like(sigma)
        x_hat = self.decoder(q).view(batchsz, 1, 28, 28)
        kld = (
            0.5
            * torch.sum(
                torch.pow(mu, 2) + torch.pow(sigma, 2) - torch.log(1e-8 + torch.pow(sigma, 2)) - 1
            )
            / (batchsz * 28 * 28)
        )
        return x_hat, kld


def article_epoch(dataset, batch_size: int, max_batches: int | None) -> tuple[int, float]:
    """The article's training loop for one epoch: (examples seen, seconds)."""
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
    model = ArticleVAE()
    criteon = nn.MSELoss()
    optimizer = optim.Adam(model.parameters(), lr=1e-3)
    seen = 0
    for batchidx, (x, _) in enumerate(loader):
        if max_batches is not None and batchidx >= max_batches:
            break
        x_hat, kld = model(x)
        loss = criteon(x_hat, x) + 1.0 * kld
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += x.shape[0]
    return seen, time.perf_counter() - start


def fit_epoch(images: torch.Tensor, batch_size: int, max_batches: int | None) -> tuple[int, float]:
    """One epoch of ``autoenc.fit`` on the article's VAE: (examples seen, seconds)."""
    x = images if max_batches is None else images[: max_batches * batch_size]
    start = time.perf_counter()
    model = GaussianVAE(
        Encoder((1, 28, 28), [256, 64], 20, final_activation="relu"),
        Decoder(10, [64, 256], (1, 28, 28), final_activation="sigmoid"),
        latent_dim=10,
        likelihood="mse",
        posterior="sigma",
        reduction="mean",
    )
    fit(model, x, epochs=1, batch_size=batch_size, device="cpu", verbose=False)
    return x.shape[0], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-root",
        default=os.environ.get("AUTOENC_DATA", "/work/shared/data"),
        help="folder holding MNIST/raw (default: $AUTOENC_DATA or /work/shared/data)",
    )
    parser.add_argument("--batch-sizes", default="32,128,512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batches", type=int, default=None, help="cap batches per epoch")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", default=None, help="write the measurements to this file")
    args = parser.parse_args()

    from torchvision import datasets, transforms

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dataset = datasets.MNIST(
        args.data_root, train=True, transform=transforms.ToTensor(), download=False
    )
    images = dataset.data.unsqueeze(1)  # (60000, 1, 28, 28) uint8, what the dataset holds
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, one MNIST epoch"
        + (f" capped at {args.max_batches} batches" if args.max_batches else "")
    )

    runs = []
    for repeat in range(args.repeats):
        for b in sizes:
            order = ("article", "fit") if repeat % 2 == 0 else ("fit", "article")
            for name in order:
                torch.manual_seed(repeat)
                if name == "article":
                    n, seconds = article_epoch(dataset, b, args.max_batches)
                else:
                    n, seconds = fit_epoch(images, b, args.max_batches)
                runs.append(
                    {
                        "loop": name,
                        "batch_size": b,
                        "repeat": repeat,
                        "examples": n,
                        "seconds": seconds,
                        "samples_per_s": n / seconds,
                    }
                )

    print(f"\n{'batch':>6} {'article samples/s':>18} {'fit samples/s':>15} {'ratio':>7}")
    summary = []
    for b in sizes:
        med = {
            name: statistics.median(
                r["samples_per_s"] for r in runs if r["loop"] == name and r["batch_size"] == b
            )
            for name in ("article", "fit")
        }
        ratio = med["fit"] / med["article"]
        summary.append(
            {"batch_size": b, **{f"{k}_samples_per_s": v for k, v in med.items()}, "ratio": ratio}
        )
        print(f"{b:>6} {med['article']:>18,.0f} {med['fit']:>15,.0f} {ratio:>6.2f}x")
    print(f"(median of {args.repeats} repeats; ratio = fit / article)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "max_batches": args.max_batches,
                    "runs": runs,
                    "summary": summary,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
