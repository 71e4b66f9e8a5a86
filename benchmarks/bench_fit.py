"""Training throughput: ``autoenc.fit`` against the article's loop and pythae's trainer.

All three train the article's VAE (784-256-64-20 encoder ending in a ReLU, 10-64-256-784
decoder ending in a sigmoid, Adam 1e-3) for one MNIST epoch at each batch size, in this process,
interleaved (the order rotates between repeats), and the table shows medians. Every figure is
the wall time of the whole call, set-up included:

* ``article``: the tutorial's code from ``article.py``: ``DataLoader(MNIST(transform=ToTensor()),
  batch_size=b, shuffle=True)``, ``nn.MSELoss()`` plus the KL / (b * 784), plain Adam.
* ``fit``: :func:`autoenc.fit` on the same images as the uint8 tensor the dataset holds (its
  in-memory path), the same network and loss (``likelihood="mse"``, ``posterior="sigma"``,
  ``reduction="mean"``), default Adam (fused).
* ``pythae`` (when ``pythae`` is installed): ``BaseTrainer`` on a pythae ``VAE`` with the same
  layers (``reconstruction_loss="mse"``), given the images already as floats.

The GFLOP/s columns count the matmul FLOPs of a training step (see
``harness.flops_per_example``) and compare them with a large fp32 matmul measured in the same
process, with the same threads.

Run::

    python benchmarks/bench_fit.py --threads 1 --json benchmarks/results/fit.json
    python benchmarks/bench_fit.py --quick          # about a minute
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import tempfile
import time

import torch
from article import ArticleVAE, article_epoch, article_loader, article_optimizer
from harness import (
    flops_per_example,
    library_vae,
    matmul_peak,
    median,
    mnist,
    parser,
    quiet_pythae,
    setup,
    table,
    write_json,
)

from autoenc import fit

# ---------------------------------------------------------------------------------------------
# the contenders: each trains one epoch and returns the examples it saw


def run_article(dataset, batch_size: int, max_batches: int | None) -> int:
    model = ArticleVAE()
    optimizer = article_optimizer(model)
    seen, _, _ = article_epoch(
        model, article_loader(dataset, batch_size), optimizer, max_batches=max_batches
    )
    return seen


def run_fit(images: torch.Tensor, batch_size: int) -> int:
    fit(library_vae(), images, epochs=1, batch_size=batch_size, device="cpu", verbose=False)
    return images.shape[0]


def _pythae_vae():
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Enc(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = ArticleVAE().encoder[:-1]  # 784-256-64-20; no ReLU on the log-variance

        def forward(self, x: torch.Tensor) -> ModelOutput:
            mu, logvar = self.net(x.reshape(x.shape[0], -1)).chunk(2, dim=1)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Dec(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = ArticleVAE().decoder

        def forward(self, z: torch.Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=self.net(z).reshape(-1, 1, 28, 28))

    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=10, reconstruction_loss="mse")
    return VAE(config, encoder=Enc(), decoder=Dec())


def run_pythae(images: torch.Tensor, batch_size: int) -> int:
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    data = BaseDataset(images, torch.zeros(images.shape[0]))
    with (
        tempfile.TemporaryDirectory() as out,
        contextlib.redirect_stderr(io.StringIO()),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        config = BaseTrainerConfig(
            output_dir=out,
            num_epochs=1,
            learning_rate=1e-3,
            per_device_train_batch_size=batch_size,
            steps_saving=None,
            no_cuda=True,
            keep_best_on_train=True,
        )
        BaseTrainer(model=_pythae_vae(), train_dataset=data, training_config=config).train()
        return images.shape[0]


# ---------------------------------------------------------------------------------------------


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="32,128,512")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-batches", type=int, default=None, help="cap the batches of an epoch")
    p.add_argument("--no-pythae", action="store_true", help="leave pythae out")
    args = p.parse_args()
    if args.quick:
        args.max_batches = args.max_batches or 40
    info = setup(args)

    dataset = mnist(args.data_root)
    images = dataset.data.unsqueeze(1)  # (60000, 1, 28, 28) uint8, what the dataset holds
    has_pythae = importlib.util.find_spec("pythae") is not None and not args.no_pythae
    if not has_pythae:
        print("pythae is not installed (or --no-pythae): its column is skipped")
    else:
        quiet_pythae()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    peaks = [matmul_peak()]
    print(f"matmul peak {peaks[0]['wall']:.1f} GFLOP/s", flush=True)

    runs = []
    for repeat in range(args.repeats):
        for b in sizes:
            n = images.shape[0] if args.max_batches is None else args.max_batches * b
            x = images[:n]
            contenders = {
                "article": lambda b=b: run_article(dataset, b, args.max_batches),
                "fit": lambda b=b, x=x: run_fit(x, b),
            }
            if has_pythae:
                floats = x.float() / 255
                contenders["pythae"] = lambda b=b, f=floats: run_pythae(f, b)
            names = list(contenders)
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                torch.manual_seed(repeat)
                start, start_cpu = time.perf_counter(), time.process_time()
                seen = contenders[name]()
                seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
                runs.append(
                    {
                        "loop": name,
                        "batch_size": b,
                        "repeat": repeat,
                        "examples": seen,
                        "seconds": seconds,
                        "cpu_seconds": cpu,
                        "samples_per_s": seen / seconds,
                        "samples_per_cpu_s": seen / cpu,
                    }
                )
                print(
                    f"  repeat {repeat} batch {b:>4} {name:>7}: {seen / seconds:>9,.0f} samples/s"
                    f" ({seen / cpu:,.0f} per CPU second)",
                    flush=True,
                )
    peaks.append(matmul_peak())
    flops = flops_per_example()

    loops = ["article", "fit"] + (["pythae"] if has_pythae else [])
    summary = []
    for basis, key in (("wall", "samples_per_s"), ("cpu", "samples_per_cpu_s")):
        peak = median([pk[basis] for pk in peaks])
        rows = []
        for b in sizes:
            med = {
                loop: median([r[key] for r in runs if r["loop"] == loop and r["batch_size"] == b])
                for loop in loops
            }
            gflops = med["fit"] * flops / 1e9
            entry = {
                "basis": basis,
                "batch_size": b,
                **{f"{k}_{key}": v for k, v in med.items()},
                "fit_over_article": med["fit"] / med["article"],
                "fit_gflops": gflops,
                "matmul_peak_gflops": peak,
                "fit_fraction_of_peak": gflops / peak,
            }
            if has_pythae:
                entry["fit_over_pythae"] = med["fit"] / med["pythae"]
            summary.append(entry)
            rows.append(
                [b]
                + [f"{med[k]:,.0f}" for k in loops]
                + [f"{entry['fit_over_article']:.2f}x"]
                + ([f"{entry['fit_over_pythae']:.2f}x"] if has_pythae else [])
                + [f"{gflops:.1f}", f"{100 * entry['fit_fraction_of_peak']:.0f}%"]
            )
        unit = "samples/s" if basis == "wall" else "samples/CPU s"
        header = (
            ["batch"]
            + [f"{k} {unit}" for k in loops]
            + ["fit/article"]
            + (["fit/pythae"] if has_pythae else [])
            + ["fit GFLOP/s", "of peak"]
        )
        print(
            f"\n{'wall-clock' if basis == 'wall' else 'per CPU second'} "
            f"(matmul peak {peak:.1f} GFLOP/s):"
        )
        print(table(header, rows))
    print(
        f"(medians of {args.repeats} interleaved repeats"
        + (f", epochs capped at {args.max_batches} batches" if args.max_batches else "")
        + f"; {flops / 1e6:.2f} MFLOP per training example)"
    )
    write_json(
        args.json,
        {
            "machine": info,
            "max_batches": args.max_batches,
            "repeats": args.repeats,
            "flops_per_example": flops,
            "matmul_peak_gflops": peaks,
            "runs": runs,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
