"""Reproduction check: the article's own loop against the examples' default path.

Trains the article's autoencoder and VAE two ways, for the same epochs and seeds, and compares
what they reach on the 10000 MNIST test images:

- ``article``: the tutorial's code as written out in ``benchmarks/article.py``: ``ArticleAE`` /
  ``ArticleVAE``, ``DataLoader(MNIST(root, transform=ToTensor()), batch_size=32, shuffle=True)``,
  ``Adam(lr=1e-3)``, ``nn.MSELoss()`` (+ the article's KL / (b * 784)), after
  ``torch.manual_seed(seed)``.
- ``autoenc``: what ``examples/mnist_ae.py`` / ``examples/mnist_vae.py`` run by default:
  :func:`autoenc.recipes.article_autoencoder` / :func:`~autoenc.recipes.article_vae` trained by
  ``autoenc.fit(model, train_images_uint8, epochs=E, batch_size=32, lr=1e-3, seed=seed)``, the
  model built after ``torch.manual_seed(seed)``.

With the same seed both paths start from the same weights (the layers are built in the same
order); they differ in the data order (the ``DataLoader`` shuffles with the global RNG, ``fit``
with its own seeded permutation) and therefore in the noise draws. Those are run-to-run noise,
not a bias, so the two paths must agree within the spread over seeds.

Metrics, computed by the same function for both paths (the article model's weights are copied
into the recipe's model, whose parameters map 1:1 by position; the copy is checked to give the
same outputs):

- ``mse``: test per-pixel MSE of the reconstruction; for the VAE, of the decoded posterior mean.
- ``mse_sampled`` (VAE): the same with ``z = mu + sigma * eps`` as the article's forward draws it,
  with ``eps`` fixed by ``--noise-seed``, the same for every model.
- ``kl_nats`` (VAE): test KL(q(z|x) || N(0, I)) in nats per image (summed over the 10 latent
  dimensions, averaged over images), with the article's ``log(1e-8 + sigma^2)``.
- ``kl_article`` (VAE): the same divided by 784, the scale the article adds to its loss.
- ``loss_article`` (VAE): ``mse_sampled + kl_article``, the article's loss on the test set.
- ``active_dims`` (VAE): latent dimensions whose posterior mean varies over the test set
  (``Var_x(mu_d) > 0.01``, Burda et al. 2016). The article's mu and sigma both come out of a
  ReLU, so a dimension whose mu unit dies stays at the prior for good; how many survive is a
  discrete outcome of each run, and it sets most of the KL.

Agreement rule: for each model, epoch count and metric, with n >= 3 seeds per path,
``|mean_article - mean_autoenc| <= 3 * sqrt(sd_article**2 / n + sd_autoenc**2 / n)`` (a
Welch-style bound at three standard errors of the difference); fewer seeds give no verdict.

Before training, a lock-step check feeds ``fit`` the article's own ``DataLoader`` (so the data
order and the noise are the same) and compares the weights after the same steps: this shows
that the example's computation *is* the article's, up to float rounding.

Run (``--threads 1`` is best on a shared machine; the published numbers ran the AE and the
VAE in two processes and merged the reports)::

    export AUTOENC_DATA=/path/that/holds/MNIST
    python benchmarks/reproduce_article.py --epochs 1,5 --seeds 0,1,2 \\
        --json benchmarks/results/reproduce.json --grids benchmarks/results/grids
    python benchmarks/reproduce_article.py --models ae --json ae.json    # in parallel:
    python benchmarks/reproduce_article.py --models vae --json vae.json
    python benchmarks/reproduce_article.py --merge ae.json vae.json --json reproduce.json
    python benchmarks/reproduce_article.py --quick      # < 1 min smoke run on an idle machine

Results and pictures: ``docs/guide/article.rst``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/article.py

from article import (  # noqa: E402
    ArticleAE,
    ArticleVAE,
    article_epoch,
    article_loader,
    article_optimizer,
)

from autoenc.functional import gaussian_kl_from_std  # noqa: E402
from autoenc.recipes import article_autoencoder, article_vae  # noqa: E402
from autoenc.training import fit  # noqa: E402
from autoenc.training.callbacks import Callback, State  # noqa: E402

KINDS = ("ae", "vae")
PATHS = ("article", "autoenc")
METRICS = {
    "ae": ("mse",),
    "vae": ("mse", "mse_sampled", "kl_nats", "kl_article", "loss_article", "active_dims"),
}
BATCH_SIZE, LR = 32, 1e-3
SE_FACTOR = 3.0  # agreement bound, in standard errors of the difference of the means
MIN_SEEDS = 3  # runs per path needed for a verdict
ACTIVE_VAR = 0.01  # a latent dimension is active when Var_x(mu_d) exceeds this
GRID_IMAGES = 32  # the article's Visdom grid: one batch of 32 test images


# ---------------------------------------------------------------------------------------------
# models


def article_model(kind: str) -> nn.Module:
    """The article's hand-written network (``benchmarks/article.py``)."""
    return ArticleAE() if kind == "ae" else ArticleVAE()


def recipe_model(kind: str) -> nn.Module:
    """The examples' model: :func:`article_autoencoder` or :func:`article_vae`."""
    return article_autoencoder() if kind == "ae" else article_vae()


def to_recipe(article: nn.Module, kind: str) -> nn.Module:
    """A recipe model holding the article model's weights (the parameters map 1:1 in order)."""
    model = recipe_model(kind)
    src, dst = list(article.state_dict().values()), model.state_dict()
    shapes = [tuple(t.shape) for t in src], [tuple(t.shape) for t in dst.values()]
    if shapes[0] != shapes[1]:
        raise ValueError(f"the article's and the recipe's parameters differ: {shapes}")
    model.load_state_dict(dict(zip(dst.keys(), src, strict=True)))
    return model


@torch.no_grad()
def check_mapping(kind: str, x: Tensor, *, seed: int = 0) -> float:
    """Largest difference between the article model's and its copy's outputs on ``x``.

    For the VAE both forwards draw their noise after ``torch.manual_seed(seed)``; the KL is
    compared too (the article's ``kld`` against the recipe's ``kl`` term).
    """
    torch.manual_seed(seed + 1000)
    article = article_model(kind)
    model = to_recipe(article, kind)
    torch.manual_seed(seed)
    x_hat, kld = article(x)
    torch.manual_seed(seed)
    if kind == "ae":
        return (model(x).x_hat - x_hat).abs().max().item()
    out = model.loss(x)
    torch.manual_seed(seed)
    x_hat_recipe = model(x).x_hat
    return max((x_hat_recipe - x_hat).abs().max().item(), abs(out.kl.item() - kld.item()))


# ---------------------------------------------------------------------------------------------
# the metric, one function for both paths


@torch.no_grad()
def test_metrics(model: nn.Module, kind: str, x: Tensor, *, noise_seed: int) -> dict[str, float]:
    """Test metrics of a recipe model on float images ``x`` in [0, 1]; see the module docstring.

    Uses no global RNG state: the VAE's ``eps`` comes from its own generator.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}

    def add(key: str, value: Tensor) -> None:
        sums[key] = sums.get(key, 0.0) + value.double().sum().item()

    eps_all, mus = None, []
    if kind == "vae":
        gen = torch.Generator().manual_seed(noise_seed)
        eps_all = torch.randn(x.shape[0], model.latent_dim, generator=gen)
    try:
        for start in range(0, x.shape[0], 1000):
            xb = x[start : start + 1000]
            add("mse", (model.reconstruct(xb) - xb).pow(2).flatten(1).mean(1))
            if kind == "vae":
                out = model(xb, eps=eps_all[start : start + 1000])
                add("mse_sampled", (out.x_hat - xb).pow(2).flatten(1).mean(1))
                add("kl_nats", gaussian_kl_from_std(out.mu, out.std).sum(1))
                mus.append(out.mu.double())
    finally:
        model.train(was_training)
    metrics = {k: v / x.shape[0] for k, v in sums.items()}
    if kind == "vae":
        metrics["kl_article"] = metrics["kl_nats"] / x[0].numel()
        metrics["loss_article"] = metrics["mse_sampled"] + metrics["kl_article"]
        # Burda et al. (2016): dimension d is active when Var_x(E_q[z_d]) > 0.01
        metrics["active_dims"] = float((torch.cat(mus).var(0) > ACTIVE_VAR).sum())
    return metrics


@torch.no_grad()
def _save_grid(model: nn.Module, x: Tensor, path: Path, *, noise_seed: int) -> None:
    """Test images over their reconstructions, rows of 8.

    For the VAE every row of inputs is followed by two rows: the decoded posterior mean, then
    a decoded draw ``z = mu + sigma * eps`` (``eps`` fixed by ``noise_seed``), which is what the
    article's Visdom window ``x_hat`` shows (its forward always samples).
    """
    from einops import rearrange

    from autoenc.pictures import image_grid, reconstruction_grid, save_image

    x = x[:GRID_IMAGES]
    if not hasattr(model, "latent_dim"):
        save_image(reconstruction_grid(model, x, nrow=8), path)
        return
    eps = torch.randn(
        x.shape[0], model.latent_dim, generator=torch.Generator().manual_seed(noise_seed)
    )
    was_training = model.training
    model.eval()
    try:
        rows = [x, model.reconstruct(x), model(x, eps=eps).x_hat]
    finally:
        model.train(was_training)
    stacked = rearrange(rows, "k (r n) c h w -> (r k n) c h w", n=8)
    save_image(image_grid(stacked, nrow=8), path)


# ---------------------------------------------------------------------------------------------
# the two training paths


def run_article(
    kind: str,
    seed: int,
    epochs: Sequence[int],
    train_set: Dataset,
    x_test: Tensor,
    *,
    noise_seed: int,
    grids: Path | None = None,
) -> tuple[dict[int, dict[str, float]], list[float]]:
    """The article's loop; test metrics after each epoch count in ``epochs``, epoch seconds."""
    torch.manual_seed(seed)
    model = article_model(kind)
    loader = article_loader(train_set, BATCH_SIZE)
    optimizer = article_optimizer(model)
    results, seconds = {}, []
    for epoch in range(1, max(epochs) + 1):
        start = time.perf_counter()
        article_epoch(model, loader, optimizer)
        seconds.append(time.perf_counter() - start)
        if epoch in epochs:
            with torch.random.fork_rng():  # building the copy draws init weights
                copy = to_recipe(model, kind)
                results[epoch] = test_metrics(copy, kind, x_test, noise_seed=noise_seed)
                if grids is not None:
                    name = f"{kind}_article_epoch{epoch:03d}.png"
                    _save_grid(copy, x_test, grids / name, noise_seed=noise_seed)
    return results, seconds


class _TestAt(Callback):
    """Test metrics (and a grid) after the chosen epochs, leaving the training RNG alone."""

    def __init__(
        self,
        kind: str,
        epochs: Sequence[int],
        x_test: Tensor,
        *,
        noise_seed: int,
        grids: Path | None,
    ) -> None:
        self.kind, self.epochs, self.x_test = kind, set(epochs), x_test
        self.noise_seed, self.grids = noise_seed, grids
        self.results: dict[int, dict[str, float]] = {}

    def on_epoch_end(self, state: State) -> None:
        epoch = state.epoch + 1
        if epoch not in self.epochs:
            return
        with torch.random.fork_rng():
            self.results[epoch] = test_metrics(
                state.model, self.kind, self.x_test, noise_seed=self.noise_seed
            )
            if self.grids is not None:
                name = f"{self.kind}_autoenc_epoch{epoch:03d}.png"
                _save_grid(state.model, self.x_test, self.grids / name, noise_seed=self.noise_seed)


def run_autoenc(
    kind: str,
    seed: int,
    epochs: Sequence[int],
    train_images: Tensor,
    x_test: Tensor,
    *,
    noise_seed: int,
    grids: Path | None = None,
) -> tuple[dict[int, dict[str, float]], list[float]]:
    """The examples' default path; test metrics after each epoch count in ``epochs``."""
    torch.manual_seed(seed)
    model = recipe_model(kind)
    probe = _TestAt(kind, epochs, x_test, noise_seed=noise_seed, grids=grids)
    result = fit(
        model,
        train_images,
        epochs=max(epochs),
        batch_size=BATCH_SIZE,
        lr=LR,
        seed=seed,
        device="cpu",
        verbose=False,
        callbacks=[probe],
    )
    return probe.results, result.history["time"]


# ---------------------------------------------------------------------------------------------
# lock step: the same data order and noise for both


def lockstep(
    kind: str,
    train_set: Dataset,
    *,
    seed: int = 0,
    optimizer: str = "article",
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """One epoch over ``train_set`` both ways, with ``fit`` reading the article's DataLoader.

    Both start from the same weights and see the same batches in the same order and the same
    noise (``fit(seed=s)`` seeds the global RNG as ``torch.manual_seed(s)`` does, and its dry
    run of ``model.loss`` leaves no trace). ``optimizer="article"`` gives ``fit`` the article's
    ``Adam(lr=1e-3)``; ``"default"`` keeps fit's own (fused) Adam. ``dtype`` is the models'
    (``train_set`` must hold images of that dtype): in float64 the rounding differences of the
    two ways of summing the loss shrink to ~1e-16 per step, which shows they are the only ones.

    Returns:
        ``max_abs_diff`` (largest weight difference), ``max_abs_weight`` and ``steps``.
    """
    torch.manual_seed(seed + 1000)
    article = article_model(kind).to(dtype)
    model = to_recipe(article, kind).to(dtype)
    torch.manual_seed(seed)
    seen, _, _ = article_epoch(
        article, article_loader(train_set, BATCH_SIZE), article_optimizer(article)
    )
    fit(
        model,
        article_loader(train_set, BATCH_SIZE),
        epochs=1,
        optimizer=(lambda params: torch.optim.Adam(params, lr=LR))
        if optimizer == "article"
        else None,
        lr=None if optimizer == "article" else LR,
        seed=seed,
        device="cpu",
        verbose=False,
    )
    pairs = list(zip(article.state_dict().values(), model.state_dict().values(), strict=True))
    return {
        "optimizer": optimizer,
        "steps": math.ceil(seen / BATCH_SIZE),
        "max_abs_diff": max((a - b).abs().max().item() for a, b in pairs),
        "max_abs_weight": max(a.abs().max().item() for a, _ in pairs),
    }


# ---------------------------------------------------------------------------------------------
# statistics


def summarize(values: Sequence[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return {"mean": statistics.fmean(values), "sd": sd, "n": len(values)}


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """The agreement rule of the module docstring, ``a`` the article's runs, ``b`` autoenc's."""
    sa, sb = summarize(a), summarize(b)
    diff = sb["mean"] - sa["mean"]
    se = math.sqrt(sa["sd"] ** 2 / sa["n"] + sb["sd"] ** 2 / sb["n"])
    bound = SE_FACTOR * se
    return {
        "article": sa,
        "autoenc": sb,
        "diff": diff,
        "rel_diff": diff / sa["mean"] if sa["mean"] else float("nan"),
        "se": se,
        "bound": bound,
        "z": diff / se if se > 0 else float("nan"),
        # with fewer than MIN_SEEDS runs a side the spread itself is too uncertain for a verdict
        "agree": bool(abs(diff) <= bound) if min(sa["n"], sb["n"]) >= MIN_SEEDS else None,
    }


# ---------------------------------------------------------------------------------------------
# data and the driver


def load_data(root: str, n_train: int | None) -> tuple[Dataset, Tensor, Tensor]:
    """The article's torchvision train set, the same images as uint8, and float test images."""
    from torchvision import datasets, transforms

    from autoenc.data import mnist

    train_set = datasets.MNIST(root, train=True, transform=transforms.ToTensor(), download=False)
    train_images = mnist(root, train=True, download=False).images
    x_test = mnist(root, train=False, download=False).images.float() / 255
    if n_train is not None:
        train_set, train_images = Subset(train_set, range(n_train)), train_images[:n_train]
    first = train_set[0][0]
    if not torch.equal(first, train_images[0].float() / 255):
        raise RuntimeError("torchvision's ToTensor image differs from autoenc's uint8 / 255")
    return train_set, train_images, x_test


def check_lockstep(
    kind: str, train_set: Dataset, train_images: Tensor, batches: int, *, log: Any = print
) -> list[dict[str, Any]]:
    """:func:`lockstep` on the first ``batches`` batches of real MNIST: in float32 through the
    article's own torchvision data set, and in float64 (the same images as a tensor data set)."""
    n = min(batches * BATCH_SIZE, len(train_images))
    x64 = train_images[:n].double() / 255
    sets = {
        torch.float32: Subset(train_set, range(n)),
        torch.float64: TensorDataset(x64, torch.zeros(n, dtype=torch.long)),
    }
    rows = []
    for dtype, data in sets.items():
        for optimizer in ("article", "default"):
            row = lockstep(kind, data, optimizer=optimizer, dtype=dtype)
            row["dtype"] = str(dtype).removeprefix("torch.")
            rows.append(row)
            log(
                f"{kind}: lock step, {row['steps']} steps, {row['dtype']}, {optimizer} Adam: "
                f"largest weight difference {row['max_abs_diff']:.2e} "
                f"(weights up to {row['max_abs_weight']:.2f})"
            )
    return rows


def compare_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`compare` for every (kind, epoch count, metric) found in ``runs``."""
    rows = []
    for kind in KINDS:
        mine = [r for r in runs if r["kind"] == kind]
        epochs = sorted({int(e) for r in mine for e in r["test"]})
        for epoch in epochs:
            for metric in METRICS[kind]:
                if any(metric not in r["test"].get(str(epoch), {metric: 0}) for r in mine):
                    continue  # a metric that older reports lack
                values = {
                    path: [
                        r["test"][str(epoch)][metric]
                        for r in mine
                        if r["path"] == path and str(epoch) in r["test"]
                    ]
                    for path in PATHS
                }
                if not all(values.values()):
                    continue
                row = compare(values["article"], values["autoenc"])
                row.update(kind=kind, epochs=epoch, metric=metric)
                rows.append(row)
    return rows


def seconds_per_epoch(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean training seconds per epoch of each (kind, path) in ``runs``."""
    out = {}
    for kind in KINDS:
        for path in PATHS:
            times = [
                s
                for r in runs
                if r["kind"] == kind and r["path"] == path
                for s in r["epoch_seconds"]
            ]
            if times:
                out[f"{kind}/{path}"] = statistics.fmean(times)
    return out


def merge(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report from several (e.g. the AE and the VAE run in two processes)."""
    merged = dict(reports[0])
    merged["parts"] = [{k: r[k] for k in ("config", "started", "finished")} for r in reports]
    for key in ("mapping", "lockstep"):
        merged[key] = {k: v for r in reports for k, v in r[key].items()}
    merged["runs"] = [run for r in reports for run in r["runs"]]
    merged["comparison"] = compare_runs(merged["runs"])
    merged["seconds_per_epoch"] = seconds_per_epoch(merged["runs"])
    return merged


def reproduce(
    *,
    root: str,
    kinds: Sequence[str] = KINDS,
    epochs: Sequence[int] = (1, 5),
    seeds: Sequence[int] = (0, 1, 2),
    n_train: int | None = None,
    n_test: int | None = None,
    noise_seed: int = 1234,
    grids: Path | None = None,
    lockstep_batches: int = 50,
    paths: Sequence[str] = PATHS,
    log: Any = print,
) -> dict[str, Any]:
    """Train every (kind, path, seed) and compare the paths; returns the JSON-able report.

    Args:
        root: Folder that holds ``MNIST/raw``.
        kinds: ``"ae"`` and/or ``"vae"``.
        epochs: Epoch counts at which to measure (one run per seed up to the largest).
        seeds: Seeds; each path runs once per seed.
        n_train: Train on the first ``n_train`` images only (quick runs); ``None``: all 60000.
        n_test: Test on the first ``n_test`` test images; ``None``: all 10000.
        noise_seed: Seed of the fixed ``eps`` for ``mse_sampled``.
        grids: Folder for reconstruction grids of the first seed's runs; ``None``: none.
        lockstep_batches: Batches of the lock-step check (0: skip it).
        paths: ``"article"`` and/or ``"autoenc"``: which ways to train.
        log: Where progress lines go.
    """
    epochs = sorted(set(epochs))
    train_set, train_images, x_test = load_data(root, n_train)
    if n_test is not None:
        x_test = x_test[:n_test]
    if grids is not None:
        grids.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "config": {
            "epochs": epochs,
            "seeds": list(seeds),
            "n_train": len(train_images),
            "n_test": len(x_test),
            "batch_size": BATCH_SIZE,
            "lr": LR,
            "noise_seed": noise_seed,
            "se_factor": SE_FACTOR,
            "paths": list(paths),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mapping": {},
        "lockstep": {},
        "runs": [],
        "comparison": [],
    }
    for kind in kinds:
        report["mapping"][kind] = check_mapping(kind, x_test[:64])
        log(
            f"{kind}: article weights in the recipe model, largest output difference "
            f"{report['mapping'][kind]:.2e}"
        )
        if lockstep_batches:
            report["lockstep"][kind] = check_lockstep(
                kind, train_set, train_images, lockstep_batches, log=log
            )
    for kind in kinds:
        for seed in seeds:
            for path in paths:
                run = run_article if path == "article" else run_autoenc
                data = train_set if path == "article" else train_images
                start = time.perf_counter()
                results, seconds = run(
                    kind,
                    seed,
                    epochs,
                    data,
                    x_test,
                    noise_seed=noise_seed,
                    grids=grids if seed == seeds[0] else None,
                )
                report["runs"].append(
                    {
                        "kind": kind,
                        "path": path,
                        "seed": seed,
                        "epoch_seconds": seconds,
                        "wall_seconds": time.perf_counter() - start,
                        "test": {str(e): m for e, m in results.items()},
                    }
                )
                last = results[epochs[-1]]
                log(
                    f"{kind} {path:8s} seed {seed}: {statistics.fmean(seconds):5.1f} s/epoch, "
                    + ", ".join(f"{k} {v:.5g}" for k, v in last.items())
                    + f" after {epochs[-1]} epochs"
                )
    report["comparison"] = compare_runs(report["runs"])
    report["seconds_per_epoch"] = seconds_per_epoch(report["runs"])
    report["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return report


def format_table(report: dict[str, Any]) -> str:
    """The comparison as a plain-text table."""
    head = (
        f"{'model':5s} {'epochs':>6s} {'metric':12s} {'n':>2s} {'article mean ± sd':>22s} "
        f"{'autoenc mean ± sd':>22s} {'rel diff':>9s} {'z':>6s}  verdict"
    )
    lines = [head, "-" * len(head)]
    for row in report["comparison"]:
        a, b = row["article"], row["autoenc"]
        verdict = {True: "agree", False: "DIFFER", None: f"n/a (< {MIN_SEEDS} seeds)"}[row["agree"]]
        lines.append(
            f"{row['kind']:5s} {row['epochs']:6d} {row['metric']:12s} {a['n']:2d} "
            f"{a['mean']:11.5g} ± {a['sd']:8.2g} {b['mean']:11.5g} ± {b['sd']:8.2g} "
            f"{row['rel_diff']:+9.2%} {row['z']:+6.2f}  {verdict}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", default="1,5", help="comma-separated epoch counts to measure at")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--models", default="ae,vae", help="ae, vae or ae,vae")
    p.add_argument(
        "--paths",
        default="article,autoenc",
        help="article, autoenc or both: which ways to train (one alone gives no comparison)",
    )
    p.add_argument(
        "--data-root",
        default=os.environ.get("AUTOENC_DATA"),
        help="folder that holds MNIST/raw (default: $AUTOENC_DATA)",
    )
    p.add_argument("--max-batches", type=int, default=None, help="train on the first N batches")
    p.add_argument("--noise-seed", type=int, default=1234)
    p.add_argument("--lockstep-batches", type=int, default=50, help="0 skips the lock-step check")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 is best on a busy machine",
    )
    p.add_argument("--json", default=None, help="write the full report here")
    p.add_argument("--grids", default=None, help="folder for the first seed's PNG grids")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 epoch of 100 batches, seeds 0, 1, 2, 2000 test images",
    )
    p.add_argument(
        "--lockstep-only",
        action="store_true",
        help="only check the weight mapping and the lock-step equality (no seeds, ~1 min)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="merge reports written by earlier runs (e.g. --models ae and --models vae run in "
        "two processes), print the table and write --json; trains nothing",
    )
    args = p.parse_args(argv)
    if args.merge:
        report = merge([json.loads(Path(f).read_text()) for f in args.merge])
        _print_and_save(report, args.json)
        return
    if args.data_root is None:
        p.error("real MNIST is needed: pass --data-root or set AUTOENC_DATA")
    kinds = [k.strip() for k in args.models.split(",")]
    if any(k not in KINDS for k in kinds):
        p.error(f"--models must name ae and/or vae, got {args.models!r}")
    paths = [k.strip() for k in args.paths.split(",")]
    if any(k not in PATHS for k in paths):
        p.error(f"--paths must name article and/or autoenc, got {args.paths!r}")
    try:
        epochs = [int(e) for e in args.epochs.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(
            f"--epochs and --seeds take comma-separated ints, got {args.epochs!r}, {args.seeds!r}"
        )
    if args.lockstep_only:
        seeds = []
    n_test, lock = None, args.lockstep_batches
    if args.quick:
        epochs, seeds, args.max_batches, n_test, lock = [1], [0, 1, 2], 100, 2000, min(lock, 20)
    if min(epochs) < 1 or (args.max_batches is not None and args.max_batches < 1):
        p.error("--epochs and --max-batches must be positive")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n_train = None if args.max_batches is None else args.max_batches * BATCH_SIZE
    report = reproduce(
        root=args.data_root,
        kinds=kinds,
        epochs=epochs,
        seeds=seeds,
        n_train=n_train,
        n_test=n_test,
        noise_seed=args.noise_seed,
        grids=None if args.grids is None else Path(args.grids),
        lockstep_batches=lock,
        paths=paths,
        log=lambda line: print(line, flush=True),
    )
    _print_and_save(report, args.json)


def _print_and_save(report: dict[str, Any], path: str | None) -> None:
    if report["comparison"]:
        print()
        print(format_table(report))
        print()
    for key, s in report["seconds_per_epoch"].items():
        print(f"{key}: {s:.1f} s per epoch")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1) + "\n")
        print(f"report written to {path}")


if __name__ == "__main__":
    main()
