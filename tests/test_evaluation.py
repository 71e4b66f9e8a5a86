"""Tests for autoenc.evaluation against exact marginal likelihoods (quadrature, closed form)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from autoenc import Autoencoder, Bernoulli, Decoder, Encoder, Gaussian, GaussianVAE, Likelihood
from autoenc.evaluation import (
    LatentDiagnostics,
    PosteriorCollapseWarning,
    latent_diagnostics,
    log_likelihood,
)
from autoenc.functional import bernoulli_nll, gaussian_kl, gaussian_log_prob
from autoenc.models import iwae_bound, iwae_terms
from autoenc.networks import fused_inference

# ---------------------------------------------------------------------------------------------
# Tiny models whose marginal likelihood we can compute exactly.


class Affine(nn.Module):
    """``x @ weight.T + bias`` in float64 with given values: a user-defined encoder or decoder."""

    def __init__(self, weight: list, bias: list) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(weight, dtype=torch.float64))
        self.bias = nn.Parameter(torch.tensor(bias, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight.T + self.bias


class Recording(nn.Module):
    """Wraps a decoder and records the batch sizes it sees and the mode it runs in."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows, self.modes = inner, [], []

    def forward(self, z: Tensor) -> Tensor:
        self.rows.append(z.shape[0])
        self.modes.append(self.training)
        return self.inner(z)


def binary_data(n: int = 8, d: int = 5, seed: int = 1) -> Tensor:
    return torch.randint(0, 2, (n, d), generator=torch.Generator().manual_seed(seed)).double()


def vae_1d(posterior: str = "logvar") -> GaussianVAE:
    """A 1-D latent Bernoulli VAE whose encoder is deliberately off the true posterior."""
    spread = [0.3] if posterior == "logvar" else [1.2]  # over-dispersed: sd 1.16 or 1.2
    enc = Affine([[0.6, -0.4, 0.3, 0.2, -0.5], [0.0] * 5], [0.1, *spread])
    dec = Affine([[2.0], [-1.5], [1.0], [0.5], [-2.5]], [0.2, -0.1, 0.3, 0.0, -0.2])
    return GaussianVAE(enc, dec, latent_dim=1, posterior=posterior)


def vae_2d() -> GaussianVAE:
    enc = Affine(
        [[0.5, -0.3, 0.2, 0.0, 0.4], [0.1, 0.4, -0.3, 0.5, 0.0], [0.0] * 5, [0.0] * 5],
        [0.0, 0.2, 0.3, -0.2],
    )
    dec = Affine(
        [[1.5, 0.5], [-1.0, 1.2], [0.3, -1.4], [1.1, 0.9], [-0.6, -0.8]],
        [0.1, -0.2, 0.0, 0.3, -0.1],
    )
    return GaussianVAE(enc, dec, latent_dim=2)


def exact_log_px(vae: GaussianVAE, x: Tensor, half_width: float, points: int) -> Tensor:
    """log p(x) = log of the integral of p(x|z) p(z) over a grid (rectangle rule), ``(n,)``."""
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    axes = torch.meshgrid(*[axis] * vae.latent_dim, indexing="ij")
    z = torch.stack([a.reshape(-1) for a in axes], dim=1)  # (m, latent)
    with torch.no_grad():
        logits = vae.decoder(z)  # (m, d)
        log_px_z = -bernoulli_nll(logits[:, None].expand(-1, len(x), -1), x.expand(len(z), -1, -1))
        log_joint = log_px_z.sum(-1) + gaussian_log_prob(z).sum(-1)[:, None]  # (m, n)
    return torch.logsumexp(log_joint, dim=0) + vae.latent_dim * math.log(axis[1] - axis[0])


@pytest.fixture(scope="module")
def model_1d():
    vae, x = vae_1d(), binary_data()
    return vae, x, exact_log_px(vae, x, 10.0, 20001)


# ---------------------------------------------------------------------------------------------
# log_likelihood against exact values


def test_quadrature_reference_is_converged(model_1d):
    vae, x, exact = model_1d
    coarse = exact_log_px(vae, x, 10.0, 5001)
    assert torch.allclose(coarse, exact, atol=1e-8)
    assert (exact < 0).all()  # probabilities of binary vectors


def test_converges_to_quadrature_1d(model_1d):
    vae, x, exact = model_1d
    err_small = (log_likelihood(vae, x, k=10).log_px - exact).abs().max()
    err_large = (log_likelihood(vae, x, k=5000).log_px - exact).abs().max()
    assert err_large < 0.05
    assert err_large < err_small / 4


def test_converges_to_quadrature_2d():
    vae, x = vae_2d(), binary_data(seed=3)
    exact = exact_log_px(vae, x, 8.0, 401)
    est = log_likelihood(vae, x, k=5000, seed=2).log_px
    assert (est - exact).abs().max() < 0.05


def test_sigma_posterior_converges(model_1d):
    _, x, exact = model_1d
    vae = vae_1d(posterior="sigma")
    est = log_likelihood(vae, x, k=5000).log_px
    assert (est - exact).abs().max() < 0.05


def test_sigma_posterior_with_zero_sigma_stays_finite(model_1d):
    # An article-style ReLU encoder can emit sigma = 0; the proposal is then N(mu, 1e-8).
    _, x, exact = model_1d
    vae = vae_1d(posterior="sigma")
    with torch.no_grad():
        vae.encoder.weight[1] = 0.0
        vae.encoder.bias[1] = 0.0
    est = log_likelihood(vae, x, k=100).log_px
    assert torch.isfinite(est).all()
    assert (est < exact - 1.0).all()  # a point-mass proposal is a terrible, but valid, bound


def test_rises_with_k_and_stays_below_exact_on_average(model_1d):
    vae, x, exact = model_1d
    copies = 400  # each copy draws its own samples: an average over 400 seeds in one call
    xr, exact_r = x.repeat(copies, 1), exact.repeat(copies)
    gaps, stderrs = [], []
    for k in (1, 10, 100):
        diff = log_likelihood(vae, xr, k=k, batch_size=800).log_px - exact_r
        gaps.append(diff.mean().item())
        stderrs.append(diff.std().item() / math.sqrt(len(diff)))
    for k_index in range(2):
        margin = 3 * math.hypot(stderrs[k_index], stderrs[k_index + 1])
        assert gaps[k_index] + margin < gaps[k_index + 1]
    # Below the truth in expectation: the imperfect encoder leaves a visible gap at K = 1.
    assert gaps[0] < -0.3
    assert gaps[1] + 3 * stderrs[1] < 0


def test_linear_gaussian_matches_closed_form():
    # z ~ N(0, I_2), x = W z + b + s * noise, so p(x) = N(b, W W^T + s^2 I).
    w = torch.tensor([[1.0, 0.5], [-0.7, 1.2], [0.3, -0.9]], dtype=torch.float64)
    bias, s = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64), 0.5
    post_cov = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w.T @ w / s**2)
    gain = post_cov @ w.T / s**2  # true posterior mean = gain @ (x - b)
    # An imperfect encoder: a shrunk mean and an over-dispersed, diagonal variance.
    enc_w = torch.cat([0.8 * gain, torch.zeros(2, 3, dtype=torch.float64)])
    enc_b = torch.cat([-0.8 * gain @ bias, post_cov.diagonal().log() + 0.7])
    vae = GaussianVAE(
        Affine(enc_w.tolist(), enc_b.tolist()),
        Affine(w.tolist(), bias.tolist()),
        latent_dim=2,
        likelihood=Gaussian(scale=s),
    )
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 2, generator=g, dtype=torch.float64) @ w.T + bias
    x = x + s * torch.randn(8, 3, generator=g, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(
        bias, w @ w.T + s**2 * torch.eye(3, dtype=torch.float64)
    ).log_prob(x)
    est = log_likelihood(vae, x, k=5000).log_px
    assert (est - exact).abs().max() < 0.05
    assert (log_likelihood(vae, x, k=1).log_px - exact).abs().max() > 0.1  # the gap is visible


# ---------------------------------------------------------------------------------------------
# log_likelihood mechanics


def test_chunking_does_not_change_the_result(model_1d):
    vae, x, _ = model_1d
    whole = log_likelihood(vae, x, k=12, batch_size=3, chunk_size=12, seed=5).log_px
    for chunk in (1, 5, None):
        part = log_likelihood(vae, x, k=12, batch_size=3, chunk_size=chunk, seed=5).log_px
        assert torch.allclose(part, whole, atol=1e-12, rtol=0)


def test_memory_is_bounded_by_chunk_and_batch(model_1d):
    vae, x, _ = model_1d
    vae.decoder = Recording(vae.decoder)
    log_likelihood(vae, x, k=100, batch_size=3, chunk_size=7)
    assert max(vae.decoder.rows) == 7 * 3
    assert len(vae.decoder.rows) == math.ceil(8 / 3) * math.ceil(100 / 7)
    vae.decoder.rows.clear()
    log_likelihood(vae, x, k=10_000, batch_size=8)  # default chunk: bounded whatever k
    assert max(vae.decoder.rows) <= 8192 and len(vae.decoder.rows) > 1


def test_eval_mode_inside_and_mode_restored(model_1d):
    vae, x, _ = model_1d
    vae.decoder = Recording(vae.decoder)
    vae.train()
    log_likelihood(vae, x, k=3)
    assert vae.training and vae.decoder.training
    assert not any(vae.decoder.modes)
    vae.eval()
    latent_diagnostics(vae, x, min_active=0)
    assert not vae.training


def test_deterministic_given_seed_or_generator(model_1d):
    vae, x, _ = model_1d
    a = log_likelihood(vae, x, k=20, seed=7).log_px
    assert torch.equal(a, log_likelihood(vae, x, k=20, seed=7).log_px)
    assert not torch.equal(a, log_likelihood(vae, x, k=20, seed=8).log_px)
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(a, log_likelihood(vae, x, k=20, generator=gen).log_px)
    assert torch.equal(log_likelihood(vae, x, k=20).log_px, log_likelihood(vae, x, k=20).log_px)


def test_result_summaries(model_1d):
    vae, x, _ = model_1d
    result = log_likelihood(vae, x, k=10)
    assert result.k == 10 and result.dims == 5 and result.log_px.shape == (8,)
    assert result.nll == pytest.approx(-result.log_px.mean().item())
    assert result.stderr == pytest.approx(result.log_px.std().item() / math.sqrt(8))
    assert result.bits_per_dim == pytest.approx(result.nll / (5 * math.log(2)))
    assert not result.log_px.requires_grad


def test_accepts_pairs_datasets_and_transforms(model_1d):
    vae, x, _ = model_1d
    ref = log_likelihood(vae, x, k=10, batch_size=3).log_px
    labels = torch.arange(8)
    for data in ((x, labels), TensorDataset(x, labels)):
        assert torch.equal(log_likelihood(vae, data, k=10, batch_size=3).log_px, ref)
    flipped = log_likelihood(vae, 1 - x, k=10, batch_size=3).log_px
    via_transform = log_likelihood(vae, x, k=10, batch_size=3, transform=lambda t: 1 - t)
    assert torch.equal(via_transform.log_px, flipped)


def test_accepts_a_dataloader_and_shows_progress(model_1d, capsys):
    vae, x, _ = model_1d
    ref = log_likelihood(vae, x, k=10, batch_size=3).log_px
    loader = DataLoader(TensorDataset(x, torch.arange(8)), batch_size=3)
    assert torch.equal(log_likelihood(vae, loader, k=10).log_px, ref)
    assert torch.equal(log_likelihood(vae, x, k=10, batch_size=3, progress=True).log_px, ref)
    assert "3/3" in capsys.readouterr().err


def test_warns_on_non_binary_data_under_bernoulli(model_1d):
    vae, x, _ = model_1d
    with pytest.warns(UserWarning, match="only for binary data"):
        log_likelihood(vae, x * 0.9 + 0.05, k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        log_likelihood(vae, x, k=2)


def test_likelihood_override_and_mse_refusal():
    torch.manual_seed(0)
    x = torch.rand(6, 4)

    def build(likelihood):
        torch.manual_seed(1)
        return GaussianVAE(Encoder(4, [8], 4), Decoder(2, [8], 4), 2, likelihood=likelihood)

    mse = build("mse")
    with pytest.raises(ValueError, match="likelihood='gaussian'"):
        log_likelihood(mse, x, k=5)
    scale = 0.5**0.5
    overridden = log_likelihood(mse, x, k=5, likelihood=Gaussian(scale=scale)).log_px
    native = log_likelihood(build(Gaussian(scale=scale)), x, k=5).log_px
    assert torch.allclose(overridden, native)


def test_bad_arguments(model_1d):
    vae, x, _ = model_1d
    with pytest.raises(TypeError, match="GaussianVAE"):
        log_likelihood(Autoencoder(Encoder(5, [4], 2), Decoder(2, [4], 5)), x)
    for kwargs, arg in (
        ({"k": 0}, "k"),
        ({"batch_size": -1}, "batch_size"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"seed": 1, "generator": torch.Generator()}, "seed or generator"),
    ):
        with pytest.raises(ValueError, match=arg):
            log_likelihood(vae, x, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        log_likelihood(vae, x[:0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        log_likelihood(vae, x + 2)


# ---------------------------------------------------------------------------------------------
# The IWAE bound


def test_iwae_k1_is_the_elbo_when_the_sampled_kl_is_exact():
    # With q(z|x) = p(z) for every x the sampled and analytic KL are both exactly zero.
    torch.manual_seed(0)
    enc = Affine([[0.0] * 5] * 4, [0.0] * 4)
    vae = GaussianVAE(enc, Decoder(2, [6], 5).double(), latent_dim=2)
    x, eps = binary_data(), torch.randn(1, 8, 2, dtype=torch.float64)
    bound = iwae_bound(vae, x, 1, eps=eps)
    assert torch.allclose(bound.mean(), -vae.loss(x, eps=eps[0]).loss)


def test_iwae_k1_terms_match_the_elbo(model_1d):
    vae, x, _ = model_1d
    n = 4000
    xr = x.repeat(n // 8, 1)
    eps = torch.randn(1, n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    terms = iwae_terms(vae, xr, 1, eps=eps)
    out = vae.loss(xr, eps=eps[0])
    # Same z, same reconstruction; the logged KL is the loss's closed form.
    assert torch.allclose(terms.recon.mean(), out.recon)
    assert torch.allclose(terms.kl.mean(), out.kl)
    # At K = 1 the bound uses a sampled KL, unbiased for the closed form.
    gap = -terms.loss + terms.recon + terms.kl  # (n,), zero in expectation
    assert abs(gap.mean().item()) < 4 * gap.std().item() / math.sqrt(n)
    assert gap.abs().max() > 0.1  # ... but not zero per example
    assert abs(terms.loss.mean().item() - out.loss.item()) < 4 * gap.std().item() / math.sqrt(n)


def test_iwae_bound_rises_above_the_elbo(model_1d):
    vae, x, exact = model_1d
    xr = x.repeat(100, 1)
    terms = iwae_terms(vae, xr, 50)
    gain = -terms.loss + terms.recon + terms.kl  # (800,), positive in expectation
    assert gain.mean() > 4 * gain.std() / math.sqrt(len(gain))
    big = iwae_bound(vae, x, 5000)
    assert (big - exact).abs().max() < 0.05


def test_iwae_bound_is_differentiable(model_1d):
    vae, x, _ = model_1d
    eps = torch.randn(7, 8, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vae.zero_grad()
    iwae_bound(vae, x, 7, eps=eps).mean().backward()
    # Check every parameter's gradient against central differences.
    h = 1e-6
    for p in vae.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
        flat, grad = p.data.view(-1), p.grad.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            with torch.no_grad():
                flat[i] = old + h
                up = iwae_bound(vae, x, 7, eps=eps).mean()
                flat[i] = old - h
                down = iwae_bound(vae, x, 7, eps=eps).mean()
                flat[i] = old
            assert grad[i].item() == pytest.approx(((up - down) / (2 * h)).item(), abs=1e-6)


def test_iwae_bad_arguments(model_1d):
    vae, x, _ = model_1d
    with pytest.raises(ValueError, match="eps must have shape"):
        iwae_bound(vae, x, 3, eps=torch.randn(2, 8, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="k must be"):
        iwae_bound(vae, x, 0)
    with pytest.raises(TypeError, match="floating-point"):
        iwae_bound(vae, x.long(), 2)


# ---------------------------------------------------------------------------------------------
# Latent diagnostics


def dead_dims_vae(n_live: int, latent: int = 4) -> GaussianVAE:
    """The first ``n_live`` posterior means read the input; the rest are constants."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(2 * latent, 5, generator=g, dtype=torch.float64)
    weight[n_live:] = 0.0  # dead means and input-independent log-variances
    bias = torch.randn(2 * latent, generator=g, dtype=torch.float64)
    dec = Affine(torch.randn(5, latent, generator=g).tolist(), [0.0] * 5)
    return GaussianVAE(Affine(weight.tolist(), bias.tolist()), dec, latent_dim=latent)


def test_active_units_and_kl_per_dim():
    vae = dead_dims_vae(2)
    x = torch.rand(50, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    diag = latent_diagnostics(vae, x, batch_size=7)  # batches merge into the full-data moments
    assert isinstance(diag, LatentDiagnostics)
    assert diag.active.tolist() == [True, True, False, False] and diag.n_active == 2
    with torch.no_grad():
        q = vae.encode(x)
        kl = gaussian_kl(q.mu, q.logvar)
    assert torch.allclose(diag.variances, q.mu.var(dim=0), atol=1e-12)
    assert torch.allclose(diag.kl_per_dim, kl.mean(dim=0))
    assert diag.kl == pytest.approx(kl.sum(dim=1).mean().item())
    assert (diag.variances[2:] < 1e-20).all()


def test_threshold_decides_activity():
    vae = dead_dims_vae(4)
    x = torch.rand(50, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    diag = latent_diagnostics(vae, x)
    cut = diag.variances.sort().values[1].item()
    strict = latent_diagnostics(vae, x, threshold=cut, min_active=0)
    assert strict.n_active == 2 and strict.active.tolist() == (diag.variances > cut).tolist()


def test_collapse_warning():
    x = torch.rand(50, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.warns(PosteriorCollapseWarning, match="only 1 of 4"):
        latent_diagnostics(dead_dims_vae(1), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        latent_diagnostics(dead_dims_vae(1), x, min_active=1)
        latent_diagnostics(dead_dims_vae(2), x)  # half active is not a collapse by default
    with pytest.warns(PosteriorCollapseWarning):
        latent_diagnostics(dead_dims_vae(3), x, min_active=4)


def test_diagnostics_bad_arguments():
    vae, x = dead_dims_vae(2), torch.rand(10, 5, dtype=torch.float64)
    for kwargs, arg in (({"threshold": -1.0}, "threshold"), ({"min_active": 9}, "min_active")):
        with pytest.raises(ValueError, match=arg):
            latent_diagnostics(vae, x, **kwargs)
    with pytest.raises(ValueError, match="at least two"):
        latent_diagnostics(vae, x[:1])


def test_bf16_decoder_passes_give_a_float_estimate_close_to_fp32():
    """precision="bf16" runs only the decoder in bfloat16: the estimates stay in the model's
    dtype and within bf16 rounding of the fp32 ones."""
    torch.manual_seed(0)
    vae = GaussianVAE(Encoder(12, [16], 4), Decoder(2, [16], 12), latent_dim=2)
    x = torch.rand(20, 12).round()
    fp32 = log_likelihood(vae, x, k=8, seed=0, precision="fp32")
    bf16 = log_likelihood(vae, x, k=8, seed=0, precision="bf16")
    assert bf16.log_px.dtype == torch.float32
    torch.testing.assert_close(bf16.log_px, fp32.log_px, rtol=0.02, atol=0.1)


@pytest.mark.skipif(
    not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="no oneDNN bf16 kernels here",
)
def test_bf16_estimate_decodes_through_the_fused_layers(monkeypatch):
    """With precision="bf16" on a CPU the decoder runs through fused_inference (built once per
    call, then used for every pass), and the estimate agrees with the autocast pass's."""
    import autoenc.evaluation.likelihood as likelihood_module

    torch.manual_seed(0)
    vae = GaussianVAE(Encoder(12, [16], 4), Decoder(2, [16, 16], 12, activation="silu"), 2)
    x = torch.rand(20, 12).round()
    built, passes = [], []

    def counting(decoder):
        fused = fused_inference(decoder)
        built.append(decoder)
        return lambda z: passes.append(len(z)) or fused(z)

    monkeypatch.setattr(likelihood_module, "fused_inference", counting)
    fused = log_likelihood(vae, x, k=8, seed=0, precision="bf16", batch_size=10, chunk_size=4)
    assert built == [vae.decoder] and passes == [40] * 4
    monkeypatch.setattr(likelihood_module, "fused_inference", lambda decoder: None)
    plain = log_likelihood(vae, x, k=8, seed=0, precision="bf16", batch_size=10, chunk_size=4)
    fp32 = log_likelihood(vae, x, k=8, seed=0, precision="fp32", batch_size=10, chunk_size=4)
    torch.testing.assert_close(fused.log_px, plain.log_px, rtol=0.02, atol=0.1)
    torch.testing.assert_close(fused.log_px, fp32.log_px, rtol=0.02, atol=0.1)


def test_the_bernoulli_estimate_matches_the_elementwise_one_and_iwae_still_trains():
    """log_likelihood sums a Bernoulli decoder's NLL by the fast evaluation form; it must equal
    the elementwise NLL summed (a custom likelihood's path), and the IWAE objective, which
    trains through the same weights, must still get gradients."""
    torch.manual_seed(0)
    vae = GaussianVAE(Encoder(12, [16], 4), Decoder(2, [16], 12), latent_dim=2)
    x = torch.rand(20, 12).round()

    class Elementwise(Bernoulli):  # the base class's event_nll: nll summed
        event_nll = Likelihood.event_nll

    fast = log_likelihood(vae, x, k=16, seed=0, precision="fp32")
    slow = log_likelihood(vae, x, k=16, seed=0, precision="fp32", likelihood=Elementwise())
    torch.testing.assert_close(fast.log_px, slow.log_px, rtol=1e-6, atol=1e-4)
    iwae = GaussianVAE(Encoder(12, [16], 4), Decoder(2, [16], 12), 2, objective="iwae", k=4)
    iwae.loss(x).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in iwae.decoder.parameters())


def test_a_likelihood_with_per_pixel_parameters_is_summed_over_image_shaped_data():
    """A Gaussian with a learned scale per pixel of (1, 4, 4) images: with k = 1 the estimate is
    log p(x|z) + log p(z) - log q(z|x) for the seed's z, computed here with torch.distributions."""
    from torch.distributions import Normal

    torch.manual_seed(0)
    lik = Gaussian(learn_scale="pixel", shape=(1, 4, 4))
    with torch.no_grad():
        lik.log_scale.copy_(torch.randn(1, 4, 4) * 0.3)
    vae = GaussianVAE(Encoder((1, 4, 4), [8], 4), Decoder(2, [8], (1, 4, 4)), 2, likelihood=lik)
    x = torch.rand(5, 1, 4, 4)
    got = log_likelihood(vae, x, k=1, seed=3, precision="fp32").log_px
    vae.eval()
    with torch.no_grad():
        q = vae.encode(x)
        eps = torch.randn(q.mu.shape, generator=torch.Generator().manual_seed(3))
        std = torch.exp(0.5 * q.logvar)
        z = q.mu + std * eps
        mean = vae.decoder(z)
        log_px_z = Normal(mean, lik.log_scale.exp()).log_prob(x).sum((1, 2, 3))
        log_pz = Normal(0.0, 1.0).log_prob(z).sum(1)
        log_qz = Normal(q.mu, std).log_prob(z).sum(1)
    torch.testing.assert_close(got, log_px_z + log_pz - log_qz, rtol=1e-5, atol=1e-4)
