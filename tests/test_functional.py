"""The maths in ``autoenc.functional``, checked against ``torch.distributions``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import ContinuousBernoulli, Normal, kl_divergence

from autoenc import functional
from autoenc.functional import (
    bernoulli_event_nll,
    bernoulli_nll,
    bernoulli_nll_sum,
    continuous_bernoulli_log_norm,
    gaussian_kl,
    gaussian_kl_from_std,
    gaussian_log_prob,
    reparameterize,
    sum_except_batch,
)

PROPERTY = settings(max_examples=40, deadline=None)

# --- strategies


@st.composite
def tensors(draw, n: int, *, low: float, high: float) -> list[torch.Tensor]:
    """``n`` float64 tensors of one random shape (1 to 3 dims), values in [low, high]."""
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    numel = math.prod(shape)
    values = st.floats(low, high, allow_nan=False, allow_infinity=False)
    return [
        torch.tensor(
            draw(st.lists(values, min_size=numel, max_size=numel)), dtype=torch.float64
        ).reshape(shape)
        for _ in range(n)
    ]


def _normal(mu: torch.Tensor, logvar: torch.Tensor) -> Normal:
    return Normal(mu, torch.exp(0.5 * logvar))


# --- reparameterize


def test_reparameterize_is_deterministic_given_eps() -> None:
    mu, logvar, eps = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    z = reparameterize(mu, logvar, eps)
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps)
    torch.testing.assert_close(reparameterize(mu, logvar, eps), z, rtol=0, atol=0)


def test_reparameterize_gradients_flow_to_mu_and_logvar() -> None:
    mu = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    eps = torch.randn(4, 3)
    reparameterize(mu, logvar, eps).sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)


def test_reparameterize_random_draws_have_the_posterior_moments() -> None:
    n = 200_000
    mu = torch.full((n,), 2.0)
    logvar = torch.full((n,), math.log(0.25))  # std 0.5
    z = reparameterize(mu, logvar)
    # Standard errors: mean 0.5 / sqrt(n) ~ 1e-3, std ~ 8e-4; 5e-3 is > 5 standard errors.
    assert abs(z.mean().item() - 2.0) < 5e-3
    assert abs(z.std().item() - 0.5) < 5e-3
    assert not torch.equal(
        reparameterize(mu[:10], logvar[:10]), reparameterize(mu[:10], logvar[:10])
    )


def test_reparameterize_rejects_mismatched_shapes() -> None:
    with pytest.raises(
        ValueError, match=r"mu and logvar must have the same shape.*\(2, 3\).*\(3, 2\)"
    ):
        reparameterize(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="mu and eps must have the same shape"):
        reparameterize(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4))


# --- KL


@PROPERTY
@given(tensors(2, low=-10.0, high=10.0))
def test_gaussian_kl_to_standard_normal_matches_torch(params: list[torch.Tensor]) -> None:
    mu, logvar = params[0], params[1].clamp(-8, 8)
    expected = kl_divergence(_normal(mu, logvar), Normal(0.0, 1.0))
    actual = gaussian_kl(mu, logvar)
    assert actual.shape == mu.shape
    torch.testing.assert_close(actual, expected, rtol=1e-8, atol=1e-9)


@PROPERTY
@given(tensors(4, low=-6.0, high=6.0))
def test_gaussian_kl_between_diagonal_gaussians_matches_torch(params: list[torch.Tensor]) -> None:
    mu, logvar, mu_p, logvar_p = params
    expected = kl_divergence(_normal(mu, logvar), _normal(mu_p, logvar_p))
    torch.testing.assert_close(
        gaussian_kl(mu, logvar, mu_p, logvar_p), expected, rtol=1e-8, atol=1e-9
    )


def test_gaussian_kl_with_only_one_prior_argument_defaults_the_other() -> None:
    mu, logvar = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    mu_p = torch.randn(4, dtype=torch.float64)  # broadcast over the batch
    expected = kl_divergence(_normal(mu, logvar), Normal(mu_p, torch.ones_like(mu_p)))
    torch.testing.assert_close(gaussian_kl(mu, logvar, mu_p=mu_p), expected)
    logvar_p = torch.randn(4, dtype=torch.float64)
    expected = kl_divergence(
        _normal(mu, logvar), _normal(torch.zeros(4, dtype=torch.float64), logvar_p)
    )
    torch.testing.assert_close(gaussian_kl(mu, logvar, logvar_p=logvar_p), expected)


def test_gaussian_kl_is_zero_at_the_prior_and_rejects_mismatched_shapes() -> None:
    assert torch.equal(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="same shape"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 2))


def _article_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The article's KL, elementwise (before its sum and division)."""
    return 0.5 * (
        torch.pow(mu, 2) + torch.pow(sigma, 2) - torch.log(1e-8 + torch.pow(sigma, 2)) - 1
    )


def test_gaussian_kl_from_std_is_the_articles_formula() -> None:
    mu = torch.randn(5, 10)
    sigma = torch.relu(torch.randn(5, 10))  # the article's sigma comes out of a ReLU: zeros occur
    assert (sigma == 0).any()
    actual = gaussian_kl_from_std(mu, sigma)
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual, _article_kl(mu, sigma), rtol=0, atol=0)


@PROPERTY
@given(tensors(2, low=-5.0, high=5.0))
def test_gaussian_kl_from_std_without_eps_equals_gaussian_kl(params: list[torch.Tensor]) -> None:
    mu, log_std = params
    std = torch.exp(log_std)
    torch.testing.assert_close(
        gaussian_kl_from_std(mu, std, eps=0.0),
        gaussian_kl(mu, torch.log(std**2)),
        rtol=1e-8,
        atol=1e-9,
    )


def test_gaussian_kl_from_std_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="mu and std must have the same shape"):
        gaussian_kl_from_std(torch.zeros(2, 3), torch.ones(3))


# --- log-densities


@PROPERTY
@given(tensors(3, low=-5.0, high=5.0))
def test_gaussian_log_prob_matches_torch(params: list[torch.Tensor]) -> None:
    x, mu, logvar = params
    torch.testing.assert_close(
        gaussian_log_prob(x, mu, logvar), _normal(mu, logvar).log_prob(x), rtol=1e-8, atol=1e-9
    )


def test_gaussian_log_prob_defaults_and_broadcasting() -> None:
    x = torch.randn(3, 4)
    torch.testing.assert_close(gaussian_log_prob(x), Normal(0.0, 1.0).log_prob(x))
    torch.testing.assert_close(
        gaussian_log_prob(x, 1.5, math.log(4.0)), Normal(1.5, 2.0).log_prob(x)
    )
    mu, logvar = torch.randn(4), torch.randn(4)  # one Gaussian per column
    torch.testing.assert_close(gaussian_log_prob(x, mu, logvar), _normal(mu, logvar).log_prob(x))


def test_sum_except_batch() -> None:
    t = torch.randn(3, 2, 4, 5)
    out = sum_except_batch(t)
    assert out.shape == (3,)
    torch.testing.assert_close(out, t.sum(dim=(1, 2, 3)))
    torch.testing.assert_close(sum_except_batch(torch.arange(3.0)), torch.arange(3.0))
    assert sum_except_batch(torch.zeros(0, 4)).shape == (0,)
    with pytest.raises(ValueError, match="batch dimension.*scalar"):
        sum_except_batch(torch.tensor(1.0))


def test_bernoulli_nll_matches_a_reference_and_stays_finite() -> None:
    logits = torch.tensor([-100.0, -20.0, -1.0, 0.0, 0.5, 20.0, 100.0])
    x = torch.tensor([1.0, 0.0, 1.0, 0.3, 0.0, 1.0, 0.0])
    # max(l, 0) - l x + log(1 + exp(-|l|)), element by element in Python floats
    expected = torch.tensor(
        [
            max(lv, 0.0) - lv * xv + math.log1p(math.exp(-abs(lv)))
            for lv, xv in zip(logits.tolist(), x.tolist(), strict=True)
        ],
        dtype=torch.float64,
    )
    actual = bernoulli_nll(logits, x)
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("d", [784, 13, 1, 130])  # 13 is prime: one element per product group
def test_bernoulli_event_nll_is_the_summed_nll_for_draws_sharing_a_batch(d: int) -> None:
    g = torch.Generator().manual_seed(d)
    logits = torch.randn(5, 3, d, generator=g) * 30  # far into both tails
    x = torch.rand(3, d, generator=g)
    x[0] = x[0].round()  # binary and fractional targets
    expected = bernoulli_nll(logits.double(), x.double().expand(5, 3, d)).sum(-1)
    actual = bernoulli_event_nll(logits, x)
    assert actual.shape == (5, 3) and actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-6, atol=1e-3)
    # all of a thousand factors near 2: the grouped products must not overflow
    torch.testing.assert_close(
        bernoulli_event_nll(torch.zeros(1000), torch.ones(1000)), torch.tensor(1000 * math.log(2))
    )


@pytest.mark.parametrize("x_shape", [(3, 7), (1, 3, 7), (5, 3, 7)])  # shared, or one per draw
def test_bernoulli_event_nll_summed_in_blocks_matches_the_reference(
    monkeypatch: pytest.MonkeyPatch, x_shape: tuple[int, ...]
) -> None:
    monkeypatch.setattr(functional, "_EVENT_BLOCK", 2 * 3 * 7)  # two draws a block, one left over
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 3, 7, generator=g) * 10
    x = torch.randint(0, 2, x_shape, generator=g).float()
    expected = bernoulli_nll(logits.double(), x.double().expand(5, 3, 7)).sum(-1)
    actual = bernoulli_event_nll(logits, x)
    assert actual.shape == (5, 3)
    torch.testing.assert_close(actual.double(), expected, rtol=1e-6, atol=1e-4)


def test_bernoulli_event_nll_sums_bf16_logits_in_float32_and_leaves_them_alone() -> None:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(4, 2, 784, generator=g) * 8).bfloat16()  # a bf16 decoder pass
    x = torch.randint(0, 2, (2, 784), generator=g).float()
    before = logits.clone()
    actual = bernoulli_event_nll(logits, x)
    expected = bernoulli_nll(logits.double(), x.double().expand(4, 2, 784)).sum(-1)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-6, atol=1e-3)
    assert torch.equal(logits, before)
    fp32 = before.float()
    bernoulli_event_nll(fp32, x)
    assert torch.equal(fp32, before.float())


def test_bernoulli_nll_sum_and_its_gradients_match_torch_in_float64() -> None:
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(3, 1, 4, 5, generator=g, dtype=torch.float64) * 20).requires_grad_()
    x = torch.rand(3, 1, 4, 5, generator=g, dtype=torch.float64).requires_grad_()
    ours = bernoulli_nll_sum(logits, x)
    ours_grads = torch.autograd.grad(ours, (logits, x))
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    ref_grads = torch.autograd.grad(ref, (logits, x))
    torch.testing.assert_close(ours, ref)
    for a, b in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_bernoulli_nll_sum_under_bf16_autocast_gives_float32_loss_and_bf16_gradients() -> None:
    logits = (torch.randn(4, 784) * 5).bfloat16().requires_grad_()
    x = torch.randint(0, 2, (4, 784)).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = bernoulli_nll_sum(logits, x)
    loss.backward()
    expected = bernoulli_nll(logits.detach().double(), x.double()).sum()
    assert loss.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-3)
    ref_grad = torch.sigmoid(logits.detach().float()) - x
    torch.testing.assert_close(logits.grad.float(), ref_grad, atol=4e-3, rtol=0)


def test_bernoulli_nll_sum_of_nothing_is_zero_and_shapes_must_match() -> None:
    empty = torch.zeros(0, 3, requires_grad=True)
    total = bernoulli_nll_sum(empty, torch.zeros(0, 3))
    total.backward()
    assert total.item() == 0 and empty.grad.shape == (0, 3)
    with pytest.raises(ValueError, match="logits and x must have the same shape"):
        bernoulli_nll_sum(torch.zeros(2, 3), torch.zeros(3, 2))


# --- continuous Bernoulli

# Logits where torch's float64 reference is accurate (it works on probabilities, which lose
# digits as |logits| grows), dense around 0 where the Taylor band (|logits| < ~0.04) sits.
_NEAR_ZERO = [0.0, 1e-7, -1e-7, 1e-4, -1e-4, 1e-3, -2e-3, 0.01, -0.02, 0.039, -0.041, 0.05]
_LOGITS = torch.tensor(
    _NEAR_ZERO + torch.linspace(-0.2, 0.2, 81).tolist() + [-20, -5, -1, 0.3, 1, 3, 7, 15, 20],
    dtype=torch.float64,
)


def _torch_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C from torch: log_prob(x) = -BCE(logits, x) + log C, at any x."""
    x = torch.full_like(logits, 0.3)
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return ContinuousBernoulli(logits=logits).log_prob(x) + bce


def test_continuous_bernoulli_log_norm_matches_torch_in_float64() -> None:
    torch.testing.assert_close(
        continuous_bernoulli_log_norm(_LOGITS), _torch_log_norm(_LOGITS), rtol=0, atol=1e-8
    )


def test_continuous_bernoulli_log_norm_is_accurate_in_float32() -> None:
    actual = continuous_bernoulli_log_norm(_LOGITS.float()).double()
    torch.testing.assert_close(actual, _torch_log_norm(_LOGITS), rtol=0, atol=2e-6)


def test_continuous_bernoulli_log_norm_at_large_logits() -> None:
    logits = torch.tensor([-1e4, -100.0, -50.0, 50.0, 100.0, 1e4])
    actual = continuous_bernoulli_log_norm(logits)
    assert torch.isfinite(actual).all()
    # C = |l| / tanh(|l| / 2) -> |l| as |l| grows.
    torch.testing.assert_close(actual, torch.log(logits.abs()), rtol=1e-6, atol=0)


def test_continuous_bernoulli_log_norm_gradients_are_finite_and_right_near_zero() -> None:
    logits = torch.tensor(_NEAR_ZERO + [-0.5, 0.7, 4.0, -30.0], dtype=torch.float64)
    logits.requires_grad_(True)
    continuous_bernoulli_log_norm(logits).sum().backward()
    grad = logits.grad
    assert torch.isfinite(grad).all()
    # d/dl log(l / tanh(l/2)) = 1/l - 1/sinh(l), which is l/6 + O(l^3) near 0.
    lg = logits.detach()
    expected = torch.where(lg.abs() < 1e-3, lg / 6, 1 / lg - 1 / torch.sinh(lg))
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)
    # float32 too: the exact branch must not leak a NaN gradient through torch.where.
    logits32 = torch.tensor(_NEAR_ZERO, requires_grad=True)
    continuous_bernoulli_log_norm(logits32).sum().backward()
    assert torch.isfinite(logits32.grad).all()


# --- precision at the edges (pinned by mutation testing: benchmarks/mutation.py)


def test_gaussian_log_prob_keeps_float64_with_python_float_parameters() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    mu, logvar = 0.7, math.log(0.3)  # not representable in float32: a float32 detour shows
    actual = gaussian_log_prob(x, mu, logvar)
    assert actual.dtype == torch.float64
    expected = Normal(torch.tensor(mu, dtype=torch.float64), math.sqrt(0.3)).log_prob(x)
    torch.testing.assert_close(actual, expected, rtol=1e-14, atol=1e-14)


def _mp_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C at every logit, in 40-digit arithmetic: log(|l| / tanh(|l| / 2)), log 2 at 0."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(40):
        values = [
            mpmath.log(abs(v) / mpmath.tanh(abs(v) / 2)) if v else mpmath.log(2)
            for v in map(mpmath.mpf, logits.double().tolist())
        ]
        return torch.tensor([float(v) for v in values], dtype=torch.float64)


# The series is used for |sigmoid(l) - 1/2| < 1e-2, that is |l| < 2 artanh(0.02) ~ 0.0400053.
_BAND_EDGE = 2 * math.atanh(0.02)
_EDGE_LOGITS = [_BAND_EDGE + d for d in (-1e-3, -1e-5, -1e-8, 1e-8, 1e-5, 1e-3)] + [
    0.02,
    0.03,
    0.035,
    0.045,
    0.05,
]


def test_continuous_bernoulli_log_norm_is_exact_on_both_sides_of_the_band_edge() -> None:
    # Inside the band the series must match the closed form to float64 rounding, so the value
    # does not jump at the edge and every series coefficient matters.
    logits = torch.tensor(_EDGE_LOGITS, dtype=torch.float64)
    logits = torch.cat([logits, -logits])
    torch.testing.assert_close(
        continuous_bernoulli_log_norm(logits), _mp_log_norm(logits), rtol=0, atol=5e-15
    )


def test_continuous_bernoulli_log_norm_near_the_band_edge_in_float32() -> None:
    logits = torch.tensor(_EDGE_LOGITS + [0.1, 0.3, 1.2], dtype=torch.float32)
    logits = torch.cat([logits, -logits])
    actual = continuous_bernoulli_log_norm(logits)
    assert actual.dtype == torch.float32
    # The reference is taken at the float32 inputs, so only the function's own error counts.
    torch.testing.assert_close(actual.double(), _mp_log_norm(logits), rtol=0, atol=2.5e-7)
