"""The reproduction check: the examples' default path computes the article's training.

``benchmarks/reproduce_article.py`` trains the article's hand-written loop
(``benchmarks/article.py``) and ``autoenc.fit`` on the recipes' models and compares test
metrics over seeds. These tests pin down the part that must be exact: with the same weights,
batches and noise, the two give the same updates (bit for bit for the autoencoder, to float64
rounding for the VAE), and its real-MNIST smoke run agrees within a loose bound.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "reproduce_article", BENCHMARKS / "reproduce_article.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reproduce_article", module)
    spec.loader.exec_module(module)
    return module


repro = _load_script()


def _images(n: int, dtype: torch.dtype = torch.float32) -> TensorDataset:
    """``n`` random images in [0, 1] with dummy labels, as the article's loop unpacks (x, _)."""
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(3), dtype=dtype)
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize("kind", ["ae", "vae"])
def test_article_weights_give_the_recipe_models_outputs(kind: str) -> None:
    x = torch.rand(16, 1, 28, 28)
    article = repro.article_model(kind)
    model = repro.to_recipe(article, kind)
    torch.manual_seed(5)
    x_hat, kld = article(x)
    torch.manual_seed(5)
    out = model.loss(x)
    torch.manual_seed(5)
    assert torch.equal(model(x).x_hat, x_hat)
    if kind == "vae":
        # the article's sum / (b * 784) against the recipe's per-image sum / 784, batch mean
        torch.testing.assert_close(out.kl, kld, rtol=1e-6, atol=0)
    assert repro.check_mapping(kind, x) <= 1e-6


def test_to_recipe_rejects_a_model_of_the_other_kind() -> None:
    with pytest.raises(ValueError, match="parameters differ"):
        repro.to_recipe(repro.article_model("ae"), "vae")


def test_lockstep_autoencoder_is_bit_identical() -> None:
    """fit reading the article's DataLoader with the article's Adam = the article's loop."""
    r = repro.lockstep("ae", _images(8 * 32), optimizer="article")
    assert r["steps"] == 8
    assert r["max_abs_diff"] == 0.0


@pytest.mark.parametrize("optimizer", ["article", "default"])
def test_lockstep_vae_matches_to_float64_rounding(optimizer: str) -> None:
    """In float64 the two VAE trainings stay equal to ~1e-15 after 8 Adam steps.

    In float32 they drift apart by up to ~lr per step: the article sums the KL over the whole
    batch before dividing by b * 784, the recipe per image; the last-bit differences flip the
    sign of near-zero gradients, which Adam turns into steps of size ~lr. In float64 those
    differences are 1e-16 and the weights agree to ~1e-15; a real difference in the loss (a
    missing 1/784, another KL, other noise) moves some weight by ~lr = 1e-3 in the first step.
    """
    r = repro.lockstep(
        "vae", _images(8 * 32, torch.float64), optimizer=optimizer, dtype=torch.float64
    )
    assert r["steps"] == 8
    assert r["max_abs_diff"] < 1e-12


def test_lockstep_notices_a_different_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock-step check is sharp: a VAE trained with beta = 2 is visibly different."""
    real = repro.to_recipe

    def beta_two(article, kind):
        model = real(article, kind)
        model.beta = 2.0
        return model

    monkeypatch.setattr(repro, "to_recipe", beta_two)
    r = repro.lockstep("vae", _images(4 * 32, torch.float64), dtype=torch.float64)
    assert r["max_abs_diff"] > 1e-6


def test_compare_applies_the_three_standard_error_rule() -> None:
    same = repro.compare([1.0, 1.1, 0.9], [1.05, 0.95, 1.0])
    assert same["agree"] is True
    se = (0.1**2 / 3 + 0.05**2 / 3) ** 0.5
    assert same["se"] == pytest.approx(se)
    apart = repro.compare([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert apart["agree"] is False and apart["rel_diff"] == pytest.approx(1.0)
    assert repro.compare([1.0], [1.0])["agree"] is None  # one seed: no spread, no verdict


def _mnist_root() -> str:
    root = os.environ.get("AUTOENC_DATA")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip("real MNIST not found (set AUTOENC_DATA to the folder that holds MNIST/raw)")
    return root


@pytest.mark.slow
def test_quick_reproduction_on_real_mnist() -> None:
    """Real MNIST: the lock-step equalities, and the reconstruction errors of both paths trained
    on the same 100 batches from the same initial weights agree within 5 %.

    At this length the seed-to-seed spread of the test MSE is about 1 % (measured with
    ``--quick``); 5 % is several times that, yet far below what a wrong loss scale would give.
    The KL is not compared here: after 100 batches it is quantized by ReLU sigma units that
    died (each costs ~8.7 nats per image), so one seed can differ by 8.7 nats between two
    equally correct runs; the 3-seed runs of the script compare it.
    """
    torch.set_num_threads(1)
    report = repro.reproduce(
        root=_mnist_root(),
        epochs=(1,),
        seeds=(0,),
        n_train=100 * 32,
        n_test=1000,
        lockstep_batches=10,
        log=lambda line: None,
    )
    assert report["mapping"] == {"ae": 0.0, "vae": pytest.approx(0.0, abs=1e-6)}
    lock = {
        (k, r["dtype"], r["optimizer"]): r for k, rows in report["lockstep"].items() for r in rows
    }
    assert lock["ae", "float32", "article"]["max_abs_diff"] == 0.0
    assert lock["vae", "float64", "article"]["max_abs_diff"] < 1e-12
    assert lock["vae", "float64", "default"]["max_abs_diff"] < 1e-12
    rows = {(r["kind"], r["metric"]): r for r in report["comparison"]}
    assert set(rows) == {("ae", "mse"), *(("vae", m) for m in repro.METRICS["vae"])}
    for key in [("ae", "mse"), ("vae", "mse"), ("vae", "mse_sampled")]:
        assert abs(rows[key]["rel_diff"]) < 0.05, rows[key]
    assert all(row["agree"] is None for row in rows.values())  # one seed: no verdict
    for run in report["runs"]:
        test = run["test"]["1"]
        assert 0.02 < test["mse"] < 0.12  # a trained model, not a blank one
        if run["kind"] == "vae":
            assert 0.0 <= test["kl_nats"] < 100.0 and 0 <= test["active_dims"] <= 10
