"""Reconstruction likelihoods, checked against ``torch.distributions``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import distributions as D

from autoenc import (
    Bernoulli,
    ContinuousBernoulli,
    Gaussian,
    Likelihood,
    SquaredError,
    get_likelihood,
)

# Logits across the range, dense near 0 (the continuous Bernoulli's Taylor bands) and up to the
# point where torch's float64 reference, which works on probabilities, is still accurate.
LOGITS = torch.tensor(
    [0.0, 1e-6, -1e-4, 2e-3, -0.01, 0.03, -0.05, 0.2, -0.49, 0.51, -1.0, 2.0, -5.0, 9.0, -15.0],
    dtype=torch.float64,
)


def _unit(shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(shape, dtype=dtype)


# --- squared error, Gaussian


def test_squared_error_is_twice_the_unit_gaussian_nll_minus_log_2pi() -> None:
    params, x = torch.randn(4, 5, dtype=torch.float64), _unit((4, 5))
    nll = SquaredError().nll(params, x)
    torch.testing.assert_close(nll, (x - params) ** 2)
    torch.testing.assert_close(nll, -2 * D.Normal(params, 1.0).log_prob(x) - math.log(2 * math.pi))
    assert SquaredError().mean(params) is params and SquaredError().sample(params) is params


def test_gaussian_with_fixed_scale_matches_torch_and_has_no_parameters() -> None:
    lik = Gaussian(0.3)
    params, x = torch.randn(4, 5), torch.randn(4, 5)
    torch.testing.assert_close(lik.nll(params, x), -D.Normal(params, 0.3).log_prob(x))
    assert list(lik.parameters()) == []
    assert "log_scale" in lik.state_dict()  # a buffer: saved, moved with .to(), not trained
    assert lik.mean(params) is params


def test_gaussian_with_a_learned_global_scale() -> None:
    lik = Gaussian(0.5, learn_scale="global")
    (param,) = list(lik.parameters())
    assert param is lik.log_scale and param.shape == () and param.requires_grad
    torch.testing.assert_close(param.detach(), torch.tensor(math.log(0.5)))
    with torch.no_grad():
        param.fill_(math.log(2.0))
    params, x = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    nll = lik.nll(params, x)
    torch.testing.assert_close(nll, -D.Normal(params, 2.0).log_prob(x))
    nll.sum().backward()
    assert param.grad is not None and param.grad.abs() > 0


def test_gaussian_with_a_learned_per_pixel_scale() -> None:
    lik = Gaussian(1.0, learn_scale="pixel", shape=(1, 2, 3))
    (param,) = list(lik.parameters())
    assert param.shape == (1, 2, 3) and param.requires_grad
    with torch.no_grad():
        param.copy_(torch.randn(1, 2, 3))
    params, x = torch.randn(4, 1, 2, 3), torch.randn(4, 1, 2, 3)
    nll = lik.nll(params, x)
    torch.testing.assert_close(nll, -D.Normal(params, param.detach().exp()).log_prob(x))
    nll.sum().backward()
    assert param.grad.shape == (1, 2, 3) and (param.grad != 0).all()


def test_gaussian_sample_has_the_right_spread() -> None:
    params = torch.full((200_000,), 3.0)
    draws = Gaussian(0.5).sample(params)
    assert abs(draws.mean().item() - 3.0) < 5e-3
    assert abs(draws.std().item() - 0.5) < 5e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": 0.0}, r"scale must be a positive finite float, got 0.0"),
        ({"scale": -1.0}, r"scale must be a positive finite float, got -1.0"),
        ({"scale": math.inf}, r"scale must be a positive finite float, got inf"),
        ({"learn_scale": "layer"}, r"learn_scale must be None, 'global' or 'pixel', got 'layer'"),
        ({"learn_scale": "pixel"}, r"learn_scale='pixel' needs shape="),
    ],
)
def test_gaussian_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Gaussian(**kwargs)


# --- Bernoulli


def _bernoulli_nll_reference(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """max(l, 0) - l x + log(1 + exp(-|l|)) per element, in Python floats: another formula than
    the one torch's binary cross-entropy kernel uses."""
    values = [
        max(lv, 0.0) - lv * xv + math.log1p(math.exp(-abs(lv)))
        for lv, xv in zip(logits.flatten().tolist(), x.flatten().tolist(), strict=True)
    ]
    return torch.tensor(values, dtype=torch.float64).reshape(logits.shape)


def test_bernoulli_nll_matches_a_reference() -> None:
    logits = LOGITS.repeat(3, 1)
    x_binary = torch.bernoulli(torch.full_like(logits, 0.5))
    expected = _bernoulli_nll_reference(logits, x_binary)
    torch.testing.assert_close(Bernoulli().nll(logits, x_binary).double(), expected)
    x_soft = _unit(logits.shape)  # binary cross-entropy on grey levels, as MNIST training does
    expected = _bernoulli_nll_reference(logits, x_soft)
    torch.testing.assert_close(Bernoulli().nll(logits, x_soft).double(), expected)


def test_bernoulli_is_finite_on_extreme_logits() -> None:
    logits = torch.tensor([-100.0, 100.0, -100.0, 100.0], requires_grad=True)
    x = torch.tensor([1.0, 0.0, 0.0, 1.0])
    nll = Bernoulli().nll(logits, x)
    assert torch.isfinite(nll).all()
    torch.testing.assert_close(nll.detach(), torch.tensor([100.0, 100.0, 0.0, 0.0]))
    nll.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_bernoulli_mean_and_sample() -> None:
    logits = torch.randn(1000, 8)
    torch.testing.assert_close(Bernoulli().mean(logits), torch.sigmoid(logits))
    draws = Bernoulli().sample(logits)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert abs(draws.mean().item() - torch.sigmoid(logits).mean().item()) < 0.02


# --- continuous Bernoulli


def test_continuous_bernoulli_nll_matches_torch() -> None:
    logits = LOGITS.repeat(4, 1)
    x = _unit(logits.shape)
    x[0] = 0.0  # the closed ends of the support
    x[1] = 1.0
    expected = -D.ContinuousBernoulli(logits=logits).log_prob(x)
    torch.testing.assert_close(ContinuousBernoulli().nll(logits, x), expected, rtol=0, atol=1e-8)


def test_continuous_bernoulli_nll_in_float32_is_close_to_float64() -> None:
    logits, x = LOGITS.repeat(4, 1), _unit((4, len(LOGITS)))
    expected = -D.ContinuousBernoulli(logits=logits).log_prob(x)
    actual = ContinuousBernoulli().nll(logits.float(), x.float()).double()
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_continuous_bernoulli_mean_matches_torch() -> None:
    expected = D.ContinuousBernoulli(logits=LOGITS).mean
    torch.testing.assert_close(ContinuousBernoulli().mean(LOGITS), expected, rtol=0, atol=1e-10)
    # float32 keeps float32 accuracy near logits 0, where the exact formula cancels.
    torch.testing.assert_close(
        ContinuousBernoulli().mean(LOGITS.float()).double(), expected, rtol=0, atol=1e-6
    )
    assert ContinuousBernoulli().mean(torch.tensor(0.0)) == 0.5


def test_continuous_bernoulli_mean_at_extreme_logits() -> None:
    logits = torch.tensor([-100.0, -30.0, 30.0, 100.0])
    mean = ContinuousBernoulli().mean(logits)
    assert torch.isfinite(mean).all()
    # mean = 1 / (1 - e^-l) - 1 / l, so 1 - 1/l for large l and -1/l for very negative l.
    torch.testing.assert_close(mean, torch.tensor([0.01, 1 / 30, 1 - 1 / 30, 0.99]))


def test_continuous_bernoulli_mean_has_finite_gradients_near_zero() -> None:
    logits = torch.tensor([0.0, 1e-6, -0.3, 0.5, -0.7, 3.0], requires_grad=True)
    ContinuousBernoulli().mean(logits).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert 0.08 < logits.grad[0].item() < 0.09  # d mean / d l at 0 is 1/12


def test_continuous_bernoulli_sample_lies_in_the_unit_interval() -> None:
    draws = ContinuousBernoulli().sample(torch.randn(500))
    assert ((draws >= 0) & (draws <= 1)).all()


# --- targets, configs


@pytest.mark.parametrize("lik", [Bernoulli(), ContinuousBernoulli()], ids=lambda lik: lik.name)
@pytest.mark.parametrize("bad", [-0.5, 1.5, 255.0])
def test_unit_interval_likelihoods_reject_targets_outside_0_1(lik: Likelihood, bad: float) -> None:
    x = torch.rand(2, 3)
    x[1, 2] = bad
    match = (
        rf"{type(lik).__name__} likelihood needs targets in \[0, 1\].*divide uint8 pixels by 255"
    )
    with pytest.raises(ValueError, match=match):
        lik.check_target(x)
    lik.check_target(torch.rand(2, 3))  # in range: no error


@pytest.mark.parametrize("lik", [SquaredError(), Gaussian()], ids=lambda lik: lik.name)
def test_real_valued_likelihoods_train_on_any_target(lik: Likelihood) -> None:
    """A model with a real-valued likelihood checks its input and still takes large values."""
    from autoenc import Autoencoder, Decoder, Encoder

    model = Autoencoder(Encoder(3, [4], 2), Decoder(2, [4], 3), likelihood=lik)
    x = torch.randn(2, 3) * 100
    assert torch.isfinite(model.loss(x).loss)
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.loss(torch.full((2, 3), math.inf))


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("mse", SquaredError),
        ("gaussian", Gaussian),
        ("bernoulli", Bernoulli),
        ("continuous_bernoulli", ContinuousBernoulli),
    ],
)
def test_get_likelihood_by_name(name: str, cls: type[Likelihood]) -> None:
    lik = get_likelihood(name)
    assert type(lik) is cls and lik.name == name


@pytest.mark.parametrize(
    "lik",
    [
        SquaredError(),
        Bernoulli(),
        ContinuousBernoulli(),
        Gaussian(0.2),
        Gaussian(0.7, learn_scale="global"),
        Gaussian(1.5, learn_scale="pixel", shape=(1, 3, 2)),
    ],
    ids=lambda lik: json.dumps(lik.config),
)
def test_get_likelihood_from_config_rebuilds_the_same_likelihood(lik: Likelihood) -> None:
    config = json.loads(json.dumps(lik.config))
    rebuilt = get_likelihood(config)
    assert type(rebuilt) is type(lik) and rebuilt.config == lik.config
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in lik.parameters()]
    params, x = torch.randn(2, 1, 3, 2), torch.rand(2, 1, 3, 2)
    torch.testing.assert_close(rebuilt.nll(params, x), lik.nll(params, x))


def test_get_likelihood_returns_an_instance_as_is() -> None:
    lik = Gaussian(0.1, learn_scale="global")
    assert get_likelihood(lik) is lik


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("bce", ValueError, r"likelihood must be one of \['bernoulli', .*'mse'\], got 'bce'"),
        ({"scale": 1.0}, ValueError, r"likelihood must be one of .* got None"),
        ({"name": "poisson"}, ValueError, r"got 'poisson'"),
        (3, TypeError, r"likelihood must be a name, a config dict or a Likelihood, got int"),
        (None, TypeError, r"got NoneType"),
    ],
)
def test_get_likelihood_errors(spec: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        get_likelihood(spec)


# --- precision, dtypes and empty data (pinned by mutation testing: benchmarks/mutation.py)


def _mp_mean(logits: torch.Tensor) -> torch.Tensor:
    """The continuous Bernoulli mean 1 / (1 - e^-l) - 1 / l in 40-digit arithmetic."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(40):
        values = [
            1 / (1 - mpmath.exp(-v)) - 1 / v if v else mpmath.mpf(0.5)
            for v in map(mpmath.mpf, logits.double().tolist())
        ]
        return torch.tensor([float(v) for v in values], dtype=torch.float64)


@pytest.mark.parametrize(
    ("dtype", "logits", "atol"),
    [
        # The series band is |l| < 0.05 in float64 and |l| < 0.5 in float32. Points on both
        # sides of each edge, and far enough out that a moved edge or a wrong coefficient shows.
        (
            torch.float64,
            [0.01, 0.03, 0.04, 0.045, 0.047, 0.049, 0.0499, 0.0501, 0.051, 0.055, 0.07, 0.09],
            1e-14,
        ),
        (
            torch.float32,
            [0.06, 0.1, 0.2, 0.45, 0.47, 0.49, 0.499, 0.501, 0.51, 0.55, 0.7, 0.9, 1.0, 1.1, 1.2],
            3e-7,
        ),
    ],
    ids=["float64", "float32"],
)
def test_continuous_bernoulli_mean_near_its_band_edges(
    dtype: torch.dtype, logits: list[float], atol: float
) -> None:
    logits = torch.tensor(logits, dtype=dtype)
    logits = torch.cat([logits, -logits])
    actual = ContinuousBernoulli().mean(logits)
    assert actual.dtype == dtype
    # The reference is taken at the rounded inputs, so only the method's own error counts.
    torch.testing.assert_close(actual.double(), _mp_mean(logits), rtol=0, atol=atol)


@pytest.mark.parametrize(
    ("dtype", "rtol"),
    [(torch.float16, 4e-3), (torch.bfloat16, 3e-2), (torch.float64, 1e-12)],
    ids=str,
)
@pytest.mark.parametrize("learn_scale", [None, "global", "pixel"])
def test_gaussian_keeps_the_dtype_of_its_input(
    dtype: torch.dtype, rtol: float, learn_scale: str | None
) -> None:
    lik = Gaussian(0.8, learn_scale=learn_scale, shape=(1, 2, 3))
    with torch.no_grad():
        lik.log_scale.copy_(torch.randn(lik.log_scale.shape) * 0.3)
    params, x = torch.randn(4, 1, 2, 3).to(dtype), torch.rand(4, 1, 2, 3).to(dtype)
    nll = lik.nll(params, x)
    assert nll.dtype == lik.nll_sum(params, x).dtype == lik.sample(params).dtype == dtype
    scale = lik.log_scale.detach().double().exp()
    expected = -D.Normal(params.double(), scale).log_prob(x.double())
    torch.testing.assert_close(nll.double(), expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("lik", [Bernoulli(), ContinuousBernoulli()], ids=lambda lik: lik.name)
def test_unit_interval_likelihoods_accept_an_empty_batch(lik: Likelihood) -> None:
    assert lik.check_target(torch.empty(0, 3)) is None  # nothing lies outside [0, 1]


@pytest.mark.parametrize("lik", [Bernoulli(), ContinuousBernoulli()], ids=lambda lik: lik.name)
def test_unit_interval_likelihoods_accept_the_ends_of_the_interval(lik: Likelihood) -> None:
    assert lik.check_target(torch.tensor([[0.0, 1.0], [1.0, 0.0]])) is None  # binary data


def test_gaussian_defaults_to_unit_variance() -> None:
    params, x = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    for lik in (Gaussian(), get_likelihood("gaussian")):
        torch.testing.assert_close(lik.nll(params, x), -D.Normal(params, 1.0).log_prob(x))


class _OnlyNLL(Likelihood):
    """A user likelihood that implements nothing but ``nll``."""

    name = "laplace"

    def nll(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x - params).abs() + math.log(2.0)


@pytest.mark.parametrize(
    "lik",
    [
        SquaredError(),
        Gaussian(0.4),
        Gaussian(0.4, learn_scale="pixel", shape=(1, 3, 2)),
        Bernoulli(),
        ContinuousBernoulli(),
        _OnlyNLL(),
    ],
    ids=lambda lik: (
        type(lik).__name__ + (f"-{lik.learn_scale}" if isinstance(lik, Gaussian) else "")
    ),
)
def test_nll_sum_is_the_sum_of_the_elementwise_nll(lik: Likelihood) -> None:
    params, x = torch.randn(2, 1, 3, 2, dtype=torch.float64), _unit((2, 1, 3, 2))
    total = lik.nll_sum(params, x)
    assert total.shape == ()
    torch.testing.assert_close(total, lik.nll(params, x).sum())
