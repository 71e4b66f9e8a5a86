"""Time to quality: wall time until the test loss reaches the article loop's 10-epoch value.

The target is what the article's loop (batch 32, Adam 1e-3, ``DataLoader`` over ``ToTensor``
images) reaches after 10 epochs on the 10,000 test images, by default in its own objective, the
test loss (``nn.MSELoss()`` plus the KL / 784, ``z`` drawn with a fixed seed);
``--metric mse`` uses the reconstruction MSE of the decoded posterior mean instead (it is not
monotone in training: the KL term trades it away after the first epochs). That run takes
minutes, so it is measured once and cached in ``results/article_quality.json``
(``--remeasure-article`` measures it again, in this run). ``fit`` then trains the same network
with the library's fast settings (a larger batch with a scaled learning rate, in-memory uint8
data) and stops as soon as the metric is at or below the target. Only training time counts:
the per-epoch test evaluation is timed and left out, for both. Wall and CPU seconds are both
reported: on a shared machine the CPU time is the steadier of the two.

Run::

    python benchmarks/bench_quality.py --threads 1 --json benchmarks/results/quality.json
    python benchmarks/bench_quality.py --quick   # a smoke run: cached target, one short fit
    python benchmarks/bench_quality.py --remeasure-article   # ~5 min more on a quiet machine
"""

from __future__ import annotations

import json
import math
import time

import torch
from article import ArticleVAE, article_epoch, article_loader, article_optimizer
from harness import (
    HERE,
    library_vae,
    machine,
    median,
    mnist,
    parser,
    same_weights,
    setup,
    table,
    write_json,
)
from torch import nn

from autoenc import fit
from autoenc.training.callbacks import Callback

CACHE = HERE / "results" / "article_quality.json"


@torch.no_grad()
def article_metrics(model: ArticleVAE, x: torch.Tensor) -> dict[str, float]:
    """The article model's test loss (its objective, ``z`` drawn with a fixed seed) and its
    reconstruction MSE with the posterior mean decoded."""
    model.eval()
    loss = mse = 0.0
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for xb in x.split(1000):
            x_hat, kld = model(xb)
            loss += float(nn.functional.mse_loss(x_hat, xb) + kld) * xb.shape[0]
            mu = model.encoder(xb.reshape(xb.shape[0], -1)).chunk(2, dim=1)[0]
            mse += float((model.decoder(mu).reshape(xb.shape) - xb).pow(2).sum())
    model.train()
    return {"test_loss": loss / x.shape[0], "test_mse": mse / x.numel()}


@torch.no_grad()
def library_metrics(model, x: torch.Tensor) -> dict[str, float]:
    """The same two numbers for an autoenc model (same seed, so the same draws of ``z``)."""
    loss = mse = 0.0
    with torch.random.fork_rng():
        torch.manual_seed(0)
        was_training = model.training
        model.eval()
        for xb in x.split(1000):
            loss += float(model.loss(xb).loss) * xb.shape[0]
            mse += float((model.reconstruct(xb) - xb).pow(2).sum())
        model.train(was_training)
    return {"test_loss": loss / x.shape[0], "test_mse": mse / x.numel()}


def measure_article(root: str, test: torch.Tensor, epochs: int) -> dict:
    """The article's loop for ``epochs`` epochs: per-epoch training time and test MSE."""
    torch.manual_seed(0)
    model = ArticleVAE()
    optimizer = article_optimizer(model)
    loader = article_loader(mnist(root), 32)
    elapsed, cpu, curve = 0.0, 0.0, []
    for epoch in range(epochs):
        start, start_cpu = time.perf_counter(), time.process_time()
        article_epoch(model, loader, optimizer)
        elapsed += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        metrics = article_metrics(model, test)
        curve.append({"epoch": epoch + 1, "seconds": elapsed, "cpu_seconds": cpu, **metrics})
        print(
            f"  article epoch {epoch + 1}: {elapsed:7.1f} s ({cpu:.1f} s CPU), test loss "
            f"{metrics['test_loss']:.5f}, test MSE {metrics['test_mse']:.5f}",
            flush=True,
        )
    return {"epochs": epochs, "curve": curve, "machine": machine()}


class StopAtTarget(Callback):
    """Evaluates the test MSE after every epoch, stops at the target, and keeps the time spent
    evaluating so that it can be left out."""

    def __init__(self, test: torch.Tensor, metric: str, target: float) -> None:
        self.test, self.metric, self.target = test, metric, target
        self.eval_seconds, self.eval_cpu_seconds, self.curve = 0.0, 0.0, []

    def on_epoch_end(self, state) -> None:
        start, start_cpu = time.perf_counter(), time.process_time()
        metrics = library_metrics(state.model, self.test)
        self.eval_seconds += time.perf_counter() - start
        self.eval_cpu_seconds += time.process_time() - start_cpu
        self.curve.append({"epoch": state.epoch + 1, **metrics})
        if metrics[self.metric] <= self.target:
            state.should_stop = True


def run_fit(
    images,
    test,
    metric: str,
    target: float,
    *,
    batch_size: int,
    lr: float,
    max_epochs: int,
    seed: int,
):
    torch.manual_seed(seed)
    start_from = ArticleVAE()  # seed 0: the initial weights of the cached article run
    model = same_weights(library_vae(), start_from)
    stop = StopAtTarget(test, metric, target)
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fit(
        model,
        images,
        epochs=max_epochs,
        batch_size=batch_size,
        lr=lr,
        device="cpu",
        callbacks=[stop],
        verbose=False,
        seed=seed,
    )
    seconds = time.perf_counter() - start - stop.eval_seconds
    cpu_seconds = time.process_time() - start_cpu - stop.eval_cpu_seconds
    reached = stop.curve[-1][metric] <= target
    return {
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "epochs": result.epochs_completed,
        "reached": reached,
        "final": stop.curve[-1][metric],
        "curve": stop.curve,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument(
        "--remeasure-article", action="store_true", help="re-run the article's 10 epochs"
    )
    p.add_argument("--article-epochs", type=int, default=10)
    p.add_argument(
        "--settings",
        default="128:2e-3,32:1e-3",
        help="fit settings to try, batch:lr pairs (default: 128:2e-3,32:1e-3)",
    )
    p.add_argument("--repeats", type=int, default=3, help="fit runs per setting (seeds)")
    p.add_argument("--max-epochs", type=int, default=30)
    p.add_argument(
        "--metric",
        choices=("loss", "mse"),
        default="loss",
        help="the quality to reach: the test loss (the article's objective) or the test MSE",
    )
    args = p.parse_args()
    info = setup(args)

    test = mnist(args.data_root, train=False).data.unsqueeze(1).float() / 255  # (10000, 1, 28, 28)
    images = mnist(args.data_root).data.unsqueeze(1)
    settings = [(int(b), float(lr)) for b, lr in (s.split(":") for s in args.settings.split(","))]
    seeds = list(range(args.repeats))
    if args.quick:  # one setting, one seed that is not the article's initial weights, 5 epochs
        settings, seeds, args.max_epochs = settings[:1], [1], min(args.max_epochs, 5)

    if args.remeasure_article or not CACHE.exists():
        if args.quick and not CACHE.exists():
            print(f"no cached target in {CACHE}: --quick measures 1 article epoch instead of 10")
            args.article_epochs = 1
        print(f"measuring the article's loop for {args.article_epochs} epochs", flush=True)
        article = measure_article(args.data_root, test, args.article_epochs)
        if args.article_epochs == 10:
            write_json(str(CACHE), article)
    else:
        article = json.loads(CACHE.read_text())
        print(f"article target from {CACHE} (measured {article['machine']['date']})")
    metric = f"test_{args.metric}"
    target = article["curve"][-1][metric]
    first = next(c for c in article["curve"] if c[metric] <= target)
    article_seconds, article_cpu = first["seconds"], first.get("cpu_seconds", math.nan)
    print(
        f"target {metric} {target:.5f} (the article's after {article['epochs']} epochs), "
        f"reached by the article's loop in {article_seconds:.1f} s "
        f"({article_cpu:.1f} s CPU)"
    )

    runs = []
    for seed in seeds:
        for b, lr in settings:
            run = run_fit(
                images,
                test,
                metric,
                target,
                batch_size=b,
                lr=lr,
                max_epochs=args.max_epochs,
                seed=seed,
            )
            runs.append(run)
            print(
                f"  fit batch {b} lr {lr:g} seed {seed}: {run['seconds']:.1f} s, "
                f"{run['epochs']} epochs, {metric} {run['final']:.5f}"
                + ("" if run["reached"] else " (target NOT reached)"),
                flush=True,
            )

    rows = [
        [
            "article loop (batch 32, lr 1e-3)",
            f"{article_seconds:.1f}",
            f"{article_cpu:.1f}",
            article["epochs"],
            "1/1",
            "1.0x",
            "1.0x",
        ]
    ]
    summary = []
    for b, lr in settings:
        mine = [r for r in runs if r["batch_size"] == b and r["lr"] == lr]
        # a seed that missed the target counts as infinitely slow
        seconds = median([r["seconds"] if r["reached"] else math.inf for r in mine])
        cpu = median([r["cpu_seconds"] if r["reached"] else math.inf for r in mine])
        reached = sum(r["reached"] for r in mine)
        epochs = median([r["epochs"] for r in mine])
        entry = {
            "batch_size": b,
            "lr": lr,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "epochs": epochs,
            "seeds_reached": reached,
            "speedup": article_seconds / seconds,
            "cpu_speedup": article_cpu / cpu,
        }
        summary.append(entry)
        rows.append(
            [
                f"fit (batch {b}, lr {lr:g})",
                f"{seconds:.1f}",
                f"{cpu:.1f}",
                f"{epochs:g}",
                f"{reached}/{len(mine)}",
                f"{entry['speedup']:.1f}x",
                f"{entry['cpu_speedup']:.1f}x",
            ]
        )
    print()
    print(table(["run", "wall s", "CPU s", "epochs", "reached", "speed-up (wall)", "(CPU)"], rows))
    print(
        f"(time until {metric} <= {target:.5f}, evaluation excluded; fit: median of "
        f"{len(seeds)} seeds, a seed that missed the target in {args.max_epochs} epochs counting "
        "as infinitely slow; the "
        "article's time is cached unless --remeasure-article)"
    )
    write_json(
        args.json,
        {
            "machine": info,
            "metric": metric,
            "target": target,
            "article_seconds": article_seconds,
            "article_cpu_seconds": article_cpu,
            "article": article,
            "runs": runs,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
