"""``Autoencoder`` and ``GaussianVAE``: shapes, loss convention, the article's losses, errors."""

from __future__ import annotations

import pytest
import torch
from article import ArticleAE, ArticleVAE
from torch import distributions as D
from torch import nn

from autoenc import (
    AEOutput,
    Autoencoder,
    Decoder,
    Encoder,
    Gaussian,
    GaussianVAE,
    LossOutput,
    Posterior,
    VAEOutput,
)

SHAPE = (1, 4, 4)  # one small image
D_IN = 16
LATENT = 3


def small_vae(**kwargs) -> GaussianVAE:
    kwargs.setdefault("likelihood", "bernoulli")
    dec_final = "sigmoid" if kwargs["likelihood"] == "mse" else None
    return GaussianVAE(
        Encoder(SHAPE, [8], 2 * LATENT),
        Decoder(LATENT, [8], SHAPE, final_activation=dec_final),
        LATENT,
        **kwargs,
    )


def small_ae(**kwargs) -> Autoencoder:
    return Autoencoder(
        Encoder(SHAPE, [8], LATENT),
        Decoder(LATENT, [8], SHAPE, final_activation="sigmoid"),
        **kwargs,
    )


# --- the article's models (benchmarks/article.py); ArticleVAE takes its noise ``eps``
# as an argument so both implementations see the same draw.


def _copy_article_weights(theirs: nn.Module, ours: nn.Module) -> None:
    ours.encoder.net.load_state_dict(theirs.encoder.state_dict())
    ours.decoder.net.load_state_dict(theirs.decoder.state_dict())


def _assert_same_grads(theirs: nn.Module, ours: nn.Module) -> None:
    pairs = [(theirs.encoder, ours.encoder.net), (theirs.decoder, ours.decoder.net)]
    n = 0
    for their_net, our_net in pairs:
        ours_by_name = dict(our_net.named_parameters())
        for name, p in their_net.named_parameters():
            assert p.grad is not None and ours_by_name[name].grad is not None, name
            torch.testing.assert_close(ours_by_name[name].grad, p.grad, msg=name)
            n += 1
    assert n == 12  # 6 Linear layers, weight and bias each


def _mnist_like(b: int) -> torch.Tensor:
    """Images in [0, 1] with many exact zeros, like MNIST after ToTensor()."""
    return torch.relu(torch.rand(b, 1, 28, 28) * 1.6 - 0.6).clamp(max=1.0)


def test_article_vae_loss_kl_and_gradients_are_reproduced() -> None:
    theirs = ArticleVAE()
    ours = GaussianVAE(
        Encoder((1, 28, 28), [256, 64], 20, final_activation="relu"),
        Decoder(10, [64, 256], (1, 28, 28), final_activation="sigmoid"),
        10,
        likelihood="mse",
        posterior="sigma",
        reduction="mean",
    )
    _copy_article_weights(theirs, ours)
    x, eps = _mnist_like(32), torch.randn(32, 10)

    x_hat, kld = theirs(x, eps)
    mse = nn.MSELoss()(x_hat, x)
    their_loss = mse + 1.0 * kld
    out = ours.loss(x, eps=eps)

    torch.testing.assert_close(out.loss, their_loss)
    torch.testing.assert_close(out.kl, kld.detach())
    torch.testing.assert_close(out.recon, mse.detach())
    torch.testing.assert_close(ours(x, eps=eps).x_hat, x_hat)
    their_loss.backward()
    out.loss.backward()
    _assert_same_grads(theirs, ours)


def test_article_ae_loss_and_gradients_are_reproduced() -> None:
    theirs = ArticleAE()
    ours = Autoencoder(
        Encoder((1, 28, 28), [256, 64], 20, final_activation="relu"),
        Decoder(20, [64, 256], (1, 28, 28), final_activation="sigmoid"),
        likelihood="mse",
        reduction="mean",
    )
    _copy_article_weights(theirs, ours)
    x = _mnist_like(32)

    their_x_hat, _ = theirs(x)
    their_loss = nn.MSELoss()(their_x_hat, x)
    out = ours.loss(x)

    torch.testing.assert_close(out.loss, their_loss)
    assert out.kl is None
    torch.testing.assert_close(ours(x).x_hat, their_x_hat)
    their_loss.backward()
    out.loss.backward()
    _assert_same_grads(theirs, ours)


# --- shapes and outputs


def test_vae_shapes(images: torch.Tensor) -> None:
    vae = small_vae()
    b = images.shape[0]
    q = vae.encode(images)
    assert isinstance(q, Posterior)
    assert q.mu.shape == q.logvar.shape == q.std.shape == (b, LATENT)
    torch.testing.assert_close(q.std, torch.exp(0.5 * q.logvar))

    x_hat = vae.decode(torch.randn(b, LATENT))
    assert x_hat.shape == (b, *SHAPE) and ((x_hat > 0) & (x_hat < 1)).all()

    out = vae(images)
    assert isinstance(out, VAEOutput)
    assert out.x_hat.shape == out.params.shape == images.shape
    assert out.z.shape == out.mu.shape == out.logvar.shape == out.std.shape == (b, LATENT)
    torch.testing.assert_close(out.x_hat, torch.sigmoid(out.params))  # Bernoulli: mean of logits

    loss = vae.loss(images)
    assert isinstance(loss, LossOutput)
    assert loss.loss.shape == loss.recon.shape == loss.kl.shape == ()
    assert loss.loss.requires_grad
    assert not loss.recon.requires_grad and not loss.kl.requires_grad
    terms = loss.terms()
    assert sorted(terms) == ["kl", "loss", "recon"]
    assert not any(t.requires_grad for t in terms.values())

    assert vae.reconstruct(images).shape == images.shape
    assert vae.sample(5).shape == (5, *SHAPE)


def test_ae_shapes(images: torch.Tensor) -> None:
    ae = small_ae()
    b = images.shape[0]
    z = ae.encode(images)
    assert z.shape == (b, LATENT)
    assert ae.decode(z).shape == images.shape
    out = ae(images)
    assert isinstance(out, AEOutput)
    assert out.x_hat.shape == images.shape and out.z.shape == (b, LATENT)
    loss = ae.loss(images)
    assert loss.kl is None and sorted(loss.terms()) == ["loss", "recon"]
    assert loss.loss.requires_grad and not loss.recon.requires_grad
    torch.testing.assert_close(loss.recon, loss.loss.detach())
    assert ae.reconstruct(images).shape == images.shape


def test_flat_input_works_with_flat_shapes() -> None:
    vae = GaussianVAE(Encoder(D_IN, [8], 2 * LATENT), Decoder(LATENT, [8], D_IN), LATENT)
    x = torch.rand(4, D_IN)
    assert vae(x).x_hat.shape == (4, D_IN)
    assert torch.isfinite(vae.loss(x).loss)


# --- the loss convention


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("posterior", ["logvar", "sigma"])
def test_loss_is_recon_plus_beta_times_kl_exactly(
    images: torch.Tensor, reduction: str, posterior: str
) -> None:
    for beta in (0.0, 0.5, 1.0, 4.0):
        vae = small_vae(beta=beta, reduction=reduction, posterior=posterior)
        out = vae.loss(images)
        assert torch.equal(out.loss.detach(), out.recon + beta * out.kl)
    vae.beta = 0.25  # a plain attribute: schedules set it between steps
    out = vae.loss(images)
    assert torch.equal(out.loss.detach(), out.recon + 0.25 * out.kl)


@pytest.mark.parametrize(
    ("likelihood", "dist"),
    [
        ("bernoulli", lambda p: D.Bernoulli(logits=p, validate_args=False)),
        ("continuous_bernoulli", lambda p: D.ContinuousBernoulli(logits=p)),
        ("gaussian", lambda p: D.Normal(p, 1.0)),
        (Gaussian(0.3, learn_scale="global"), lambda p: D.Normal(p, 0.3)),
    ],
    ids=["bernoulli", "continuous_bernoulli", "gaussian", "gaussian_learned"],
)
def test_loss_is_the_negative_elbo(images: torch.Tensor, likelihood, dist) -> None:
    vae = small_vae(likelihood=likelihood)
    eps = torch.randn(images.shape[0], LATENT)
    out = vae.loss(images, eps=eps)

    mu, logvar = vae.encoder(images).chunk(2, dim=1)
    q = D.Normal(mu, torch.exp(0.5 * logvar))
    z = mu + q.scale * eps
    log_px = dist(vae.decoder(z)).log_prob(images).sum(dim=(1, 2, 3))
    kl = D.kl_divergence(q, D.Normal(0.0, 1.0)).sum(dim=1)
    torch.testing.assert_close(out.loss, (kl - log_px).mean())
    torch.testing.assert_close(out.recon, -log_px.mean().detach())
    torch.testing.assert_close(out.kl, kl.mean().detach())


def test_mean_reduction_divides_by_the_elements_of_one_datum(images: torch.Tensor) -> None:
    eps = torch.randn(images.shape[0], LATENT)
    vae_sum = small_vae(reduction="sum")
    vae_mean = small_vae(reduction="mean")
    vae_mean.load_state_dict(vae_sum.state_dict())
    a, b = vae_sum.loss(images, eps=eps), vae_mean.loss(images, eps=eps)
    n = images[0].numel()
    torch.testing.assert_close(b.loss, a.loss / n)
    torch.testing.assert_close(b.recon, a.recon / n)
    torch.testing.assert_close(b.kl, a.kl / n)


def test_ae_sum_reduction_sums_pixels_and_averages_the_batch(images: torch.Tensor) -> None:
    ae = small_ae()
    x_hat = ae(images).x_hat
    torch.testing.assert_close(ae.loss(images).loss, ((x_hat - images) ** 2).sum((1, 2, 3)).mean())


def test_eps_makes_the_loss_deterministic(images: torch.Tensor) -> None:
    vae = small_vae()
    eps = torch.randn(images.shape[0], LATENT)
    assert torch.equal(vae.loss(images, eps=eps).loss, vae.loss(images, eps=eps).loss)
    assert not torch.equal(vae.loss(images).loss, vae.loss(images).loss)


# --- user networks


@pytest.mark.parametrize("reshape", [False, True], ids=["flat_output", "image_output"])
def test_plain_sequentials_work_as_vae_encoder_and_decoder(
    images: torch.Tensor, reshape: bool
) -> None:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(D_IN, 8), nn.Tanh(), nn.Linear(8, 2 * LATENT))
    decoder = nn.Sequential(nn.Linear(LATENT, 8), nn.Tanh(), nn.Linear(8, D_IN))
    if reshape:
        decoder.append(nn.Unflatten(1, SHAPE))
    vae = GaussianVAE(encoder, decoder, LATENT)
    out = vae.loss(images)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in vae.parameters())
    assert vae(images).x_hat.shape == images.shape
    assert vae.reconstruct(images).shape == images.shape
    assert vae.sample(2).shape == ((2, *SHAPE) if reshape else (2, D_IN))


@pytest.mark.parametrize("reshape", [False, True], ids=["flat_output", "image_output"])
def test_plain_sequentials_work_as_ae_encoder_and_decoder(
    images: torch.Tensor, reshape: bool
) -> None:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(D_IN, LATENT))
    decoder = nn.Sequential(nn.Linear(LATENT, D_IN), nn.Sigmoid())
    if reshape:
        decoder.append(nn.Unflatten(1, SHAPE))
    ae = Autoencoder(encoder, decoder)
    x_hat = decoder(encoder(images)).reshape(images.shape)
    torch.testing.assert_close(ae.loss(images).loss, ((x_hat - images) ** 2).sum((1, 2, 3)).mean())
    assert ae(images).x_hat.shape == ae.reconstruct(images).shape == images.shape


# --- reconstruct, sample


def test_vae_reconstruct_decodes_the_posterior_mean_in_eval_mode(images: torch.Tensor) -> None:
    vae = GaussianVAE(
        Encoder(SHAPE, [8], 2 * LATENT, dropout=0.5),
        Decoder(LATENT, [8], SHAPE, norm="batch"),
        LATENT,
    )
    vae.train()
    vae.decoder.net[1].eval()  # a submodule the user froze must stay frozen
    x_hat = vae.reconstruct(images)
    assert vae.training and vae.encoder.training and not vae.decoder.net[1].training
    assert not x_hat.requires_grad
    vae.eval()
    with torch.no_grad():
        expected = torch.sigmoid(vae.decoder(vae.encode(images).mu))
    torch.testing.assert_close(x_hat, expected, rtol=0, atol=0)


def test_ae_reconstruct_runs_in_eval_mode_without_grad(images: torch.Tensor) -> None:
    ae = Autoencoder(
        Encoder(SHAPE, [8], LATENT, dropout=0.5),
        Decoder(LATENT, [8], SHAPE, final_activation="sigmoid"),
    )
    ae.train()
    first, second = ae.reconstruct(images), ae.reconstruct(images)
    assert torch.equal(first, second)  # no dropout: eval mode
    assert ae.training and not first.requires_grad


def test_sample_is_reproducible_with_a_generator() -> None:
    vae = small_vae()
    vae.train()
    a = vae.sample(5, generator=torch.Generator().manual_seed(3))
    b = vae.sample(5, generator=torch.Generator().manual_seed(3))
    c = vae.sample(5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert vae.training and not a.requires_grad
    z = torch.randn(5, LATENT, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(a, vae.eval().decode(z))


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_sample_rejects_a_bad_count(n: object) -> None:
    with pytest.raises(ValueError, match="n must be a positive int"):
        small_vae().sample(n)


# --- logvar clamp, free bits


def _constant_encoder(values: list[float]) -> nn.Module:
    """A user encoder that emits ``values`` for every input (weights zero, bias ``values``)."""
    linear = nn.Linear(D_IN, len(values))
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor(values))
    return nn.Sequential(nn.Flatten(), linear)


def test_logvar_is_clamped(images: torch.Tensor) -> None:
    enc = _constant_encoder([0.0, 0.0, 0.0, 1000.0, -1000.0, 5.0])
    vae = GaussianVAE(enc, Decoder(LATENT, [8], SHAPE), LATENT)
    q = vae.encode(images)
    assert torch.equal(q.logvar[0], torch.tensor([20.0, -30.0, 5.0]))
    assert torch.isfinite(q.std).all() and torch.isfinite(vae.loss(images).loss)
    vae = GaussianVAE(enc, Decoder(LATENT, [8], SHAPE), LATENT, logvar_clamp=(-4.0, 4.0))
    assert torch.equal(vae.encode(images).logvar[0], torch.tensor([4.0, -4.0, 4.0]))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_free_bits_lifts_the_training_kl_but_not_the_logged_kl(
    images: torch.Tensor, reduction: str
) -> None:
    enc = _constant_encoder([0.0] * (2 * LATENT))  # the posterior is the prior: KL = 0
    vae = GaussianVAE(
        enc, Decoder(LATENT, [8], SHAPE), LATENT, beta=2.0, free_bits=0.5, reduction=reduction
    )
    out = vae.loss(images)
    per_datum = 1.0 if reduction == "sum" else images[0].numel()
    assert out.kl.item() == 0.0
    torch.testing.assert_close(out.loss - out.recon, torch.tensor(2.0 * 0.5 * LATENT / per_datum))


def test_free_bits_leaves_a_kl_above_the_floor_alone(images: torch.Tensor) -> None:
    enc = _constant_encoder([3.0] * LATENT + [0.0] * LATENT)  # KL = 4.5 nats per dimension
    vae = GaussianVAE(enc, Decoder(LATENT, [8], SHAPE), LATENT, free_bits=0.5)
    out = vae.loss(images)
    torch.testing.assert_close(out.kl, torch.tensor(4.5 * LATENT))
    torch.testing.assert_close(out.loss.detach(), out.recon + out.kl)


# --- bad input


def test_input_that_does_not_fit_the_encoder(images: torch.Tensor) -> None:
    with pytest.raises(
        ValueError, match=r"Encoder expects input of shape \(b, 1, 4, 4\) or \(b, 16\)"
    ):
        small_vae().loss(torch.rand(6, 1, 5, 5))
    with pytest.raises(ValueError, match=r"Encoder expects input"):
        small_ae().loss(torch.rand(6, 15))


def test_encoder_width_must_be_twice_latent_dim_at_construction() -> None:
    match = (
        r"the encoder must emit 2 \* latent_dim = 6 features \(mean and logvar\).*out_features is 3"
    )
    with pytest.raises(ValueError, match=match):
        GaussianVAE(Encoder(SHAPE, [8], LATENT), Decoder(LATENT, [8], SHAPE), LATENT)
    with pytest.raises(ValueError, match=r"the decoder must take latent_dim = 3 features.*is 6"):
        GaussianVAE(Encoder(SHAPE, [8], 2 * LATENT), Decoder(2 * LATENT, [8], SHAPE), LATENT)


def test_user_encoder_width_is_checked_at_first_call(images: torch.Tensor) -> None:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(D_IN, 5))
    vae = GaussianVAE(encoder, nn.Linear(LATENT, D_IN), LATENT)  # construction cannot know
    match = r"the encoder must emit \(b, 2 \* latent_dim\) = \(b, 6\) features, got \(6, 5\)"
    with pytest.raises(ValueError, match=match):
        vae.loss(images)


def test_decoder_output_must_match_the_input(images: torch.Tensor) -> None:
    vae = GaussianVAE(Encoder(SHAPE, [8], 2 * LATENT), nn.Linear(LATENT, 15), LATENT)
    match = r"decoder output has shape \(6, 15\), which does not match the input x of shape \(6, 1"
    with pytest.raises(ValueError, match=match):
        vae.loss(images)
    ae = Autoencoder(Encoder(SHAPE, [8], LATENT), nn.Linear(LATENT, 15))
    with pytest.raises(ValueError, match=match):
        ae.loss(images)


def test_eps_must_have_the_posterior_shape(images: torch.Tensor) -> None:
    for posterior in ("logvar", "sigma"):
        with pytest.raises(
            ValueError, match=r"eps must have the posterior's shape .*\(6, 3\), got \(3,\)"
        ):
            small_vae(posterior=posterior).loss(images, eps=torch.randn(LATENT))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("build", [small_vae, small_ae], ids=["vae", "ae"])
def test_non_finite_input_is_rejected(images: torch.Tensor, bad: float, build) -> None:
    images[2, 0, 1, 1] = bad
    with pytest.raises(ValueError, match="x contains NaN or Inf values"):
        build().loss(images)
    assert not torch.isfinite(build(validate=False).loss(images).loss)  # opt-out skips the check


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
def test_targets_outside_0_1_are_rejected_for_bernoulli(likelihood: str) -> None:
    x = torch.rand(4, *SHAPE) * 2  # forgot to normalize
    with pytest.raises(
        ValueError, match=r"likelihood needs targets in \[0, 1\], got values in \[0"
    ):
        small_vae(likelihood=likelihood).loss(x)


@pytest.mark.parametrize("build", [small_vae, small_ae], ids=["vae", "ae"])
def test_integer_and_non_tensor_input_is_rejected(build) -> None:
    x = torch.randint(0, 256, (4, *SHAPE), dtype=torch.uint8)
    with pytest.raises(
        TypeError, match=r"floating-point tensor, got dtype torch.uint8.*x.float\(\) / 255"
    ):
        build().loss(x)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        build().loss([[0.0] * D_IN])
    with pytest.raises(ValueError, match=r"x must have a batch dimension, got shape \(16,\)"):
        build().loss(torch.rand(D_IN))


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
@pytest.mark.parametrize(
    "decoder",
    [
        lambda: Decoder(LATENT, [8], SHAPE, final_activation="sigmoid"),
        lambda: nn.Sequential(nn.Linear(LATENT, D_IN), nn.Sigmoid()),
        lambda: nn.Sequential(nn.Linear(LATENT, D_IN), nn.Sigmoid(), nn.Unflatten(1, SHAPE)),
    ],
    ids=["Decoder", "Sequential", "Sequential_reshape"],
)
def test_sigmoid_decoder_with_a_logits_likelihood_is_rejected(likelihood: str, decoder) -> None:
    match = rf"the '{likelihood}' likelihood expects the decoder to emit logits.*ends in a sigmoid"
    with pytest.raises(ValueError, match=match):
        GaussianVAE(Encoder(SHAPE, [8], 2 * LATENT), decoder(), LATENT, likelihood=likelihood)
    with pytest.raises(ValueError, match=match):
        Autoencoder(Encoder(SHAPE, [8], LATENT), decoder(), likelihood=likelihood)
    GaussianVAE(Encoder(SHAPE, [8], 2 * LATENT), decoder(), LATENT, likelihood="mse")  # fine


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"latent_dim": 0}, ValueError, r"latent_dim must be a positive int, got 0"),
        ({"latent_dim": 2.5}, ValueError, r"latent_dim must be a positive int, got 2.5"),
        ({"latent_dim": True}, ValueError, r"latent_dim must be a positive int, got True"),
        ({"beta": -1.0}, ValueError, r"beta must be a non-negative finite number, got -1.0"),
        ({"beta": float("nan")}, ValueError, r"beta must be a non-negative finite number, got nan"),
        ({"beta": "1"}, ValueError, r"beta must be a non-negative finite number, got '1'"),
        (
            {"reduction": "none"},
            ValueError,
            r"reduction must be one of \('sum', 'mean'\), got 'none'",
        ),
        (
            {"posterior": "std"},
            ValueError,
            r"posterior must be one of \('logvar', 'sigma'\), got 'std'",
        ),
        ({"free_bits": -0.1}, ValueError, r"free_bits must be a non-negative finite number"),
        (
            {"free_bits": float("inf")},
            ValueError,
            r"free_bits must be a non-negative finite number",
        ),
        (
            {"logvar_clamp": (5.0, -5.0)},
            ValueError,
            r"logvar_clamp must be \(low, high\) with low < high",
        ),
        ({"logvar_clamp": (1.0,)}, ValueError, r"logvar_clamp must be \(low, high\)"),
        ({"likelihood": "bce"}, ValueError, r"likelihood must be one of"),
        ({"likelihood": 3}, TypeError, r"likelihood must be a name, a config dict or a Likelihood"),
        ({"encoder": lambda x: x}, TypeError, r"encoder must be a torch.nn.Module, got function"),
    ],
)
def test_vae_rejects_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {
        "encoder": Encoder(SHAPE, [8], 2 * LATENT),
        "decoder": nn.Linear(LATENT, D_IN),
        "latent_dim": LATENT,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        GaussianVAE(**args)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"reduction": "batchmean"}, ValueError, r"reduction must be one of \('sum', 'mean'\)"),
        ({"likelihood": "l1"}, ValueError, r"likelihood must be one of"),
        ({"decoder": "decoder"}, TypeError, r"decoder must be a torch.nn.Module, got str"),
    ],
)
def test_ae_rejects_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"encoder": Encoder(SHAPE, [8], LATENT), "decoder": nn.Linear(LATENT, D_IN), **kwargs}
    with pytest.raises(error, match=match):
        Autoencoder(**args)


def test_iwae_objective_is_the_negative_mean_iwae_bound():
    from autoenc.models import iwae_bound

    enc, dec = Encoder(12, [16], 2 * 3), Decoder(3, [16], 12)
    vae = GaussianVAE(enc, dec, 3, objective="iwae", k=4)
    x = torch.rand(5, 12).round()
    eps = torch.randn(4, 5, 3)
    out = vae.loss(x, eps=eps)
    torch.testing.assert_close(out.loss, -iwae_bound(vae, x, 4, eps=eps).mean())
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.encoder.parameters())
    # The logged terms keep their ELBO meaning: the closed-form KL equals the ELBO model's.
    elbo_vae = GaussianVAE(enc, dec, 3)
    torch.testing.assert_close(out.kl, elbo_vae.loss(x, eps=eps[0]).kl)


def test_iwae_objective_rejects_beta_and_bad_k():
    enc, dec = Encoder(12, [16], 2 * 3), Decoder(3, [16], 12)
    with pytest.raises(ValueError, match="beta=1"):
        GaussianVAE(enc, dec, 3, objective="iwae", beta=0.5)
    with pytest.raises(ValueError, match="k must be a positive int"):
        GaussianVAE(enc, dec, 3, objective="iwae", k=0)
    with pytest.warns(FutureWarning, match="k="):  # the old name still works, with a warning
        assert GaussianVAE(enc, dec, 3, objective="iwae", iwae_k=7).k == 7
    with pytest.raises(ValueError, match="objective"):
        GaussianVAE(enc, dec, 3, objective="vimco")


# --- pinned by mutation testing (benchmarks/mutation.py)


def _iwae_reference(
    vae: GaussianVAE, x: torch.Tensor, eps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per example, from torch.distributions: the negative IWAE bound, the reconstruction NLL
    averaged over the draws, and the closed-form KL (Bernoulli likelihood, flat data)."""
    k, b, _ = eps.shape
    mu, logvar = vae.encoder(x).chunk(2, dim=1)  # (b, latent) each
    q = D.Normal(mu, torch.exp(0.5 * logvar))
    z = mu + q.scale * eps  # (k, b, latent)
    logits = vae.decoder(z.flatten(0, 1)).reshape(k, b, -1)  # (k, b, d)
    log_px_z = D.Bernoulli(logits=logits).log_prob(x).sum(dim=2)  # (k, b)
    log_w = log_px_z + D.Normal(0.0, 1.0).log_prob(z).sum(dim=2) - q.log_prob(z).sum(dim=2)
    bound = torch.logsumexp(log_w, dim=0) - torch.tensor(k, dtype=x.dtype).log()
    kl = D.kl_divergence(q, D.Normal(0.0, 1.0)).sum(dim=1)
    return -bound, -log_px_z.mean(dim=0), kl


@pytest.mark.parametrize("b", [1, 5])
def test_iwae_objective_matches_a_hand_written_bound_in_both_reductions(b: int) -> None:
    k, d = 4, 12
    vae_sum = GaussianVAE(
        Encoder(d, [16], 2 * LATENT), Decoder(LATENT, [16], d), LATENT, objective="iwae", k=k
    ).double()
    vae_mean = GaussianVAE(
        vae_sum.encoder, vae_sum.decoder, LATENT, objective="iwae", k=k, reduction="mean"
    )
    x = torch.rand(b, d, dtype=torch.float64).round()
    eps = torch.randn(k, b, LATENT, dtype=torch.float64)
    neg_bound, recon, kl = _iwae_reference(vae_sum, x, eps)
    out_sum, out_mean = vae_sum.loss(x, eps=eps), vae_mean.loss(x, eps=eps)
    for out, per_example in ((out_sum, 1), (out_mean, d)):
        torch.testing.assert_close(out.loss, neg_bound.mean() / per_example)
        # The logged terms: averaged over the batch (and the draws), detached, never None.
        assert out.recon is not None and out.kl is not None
        assert out.loss.requires_grad
        assert not out.recon.requires_grad and not out.kl.requires_grad
        torch.testing.assert_close(out.recon, recon.mean().detach() / per_example)
        torch.testing.assert_close(out.kl, kl.mean().detach() / per_example)
    torch.testing.assert_close(out_mean.loss, out_sum.loss / d)


def test_logvar_posterior_kl_is_exact_at_tiny_variances(images: torch.Tensor) -> None:
    # logvar -20 and -30 (the clamp's floor): a 1e-8 floor on the variance, as the "sigma"
    # posterior's KL has, would give 8.7 nats instead of 14.5 at -30.
    values = [0.0, 0.5, -1.0, -20.0, -30.0, -25.0]  # mu, then logvar
    vae = GaussianVAE(_constant_encoder(values), Decoder(LATENT, [8], SHAPE), LATENT).double()
    x = images.double()
    mu, logvar = torch.tensor(values, dtype=torch.float64).chunk(2)
    expected = D.kl_divergence(D.Normal(mu, torch.exp(0.5 * logvar)), D.Normal(0.0, 1.0))
    kl = vae.kl_elementwise(vae(x))
    torch.testing.assert_close(kl, expected.expand_as(kl), rtol=1e-12, atol=0)
    torch.testing.assert_close(vae.loss(x).kl, expected.sum(), rtol=1e-12, atol=0)


def test_sigma_posterior_log_variance_is_the_log_of_floor_plus_sigma_squared(
    images: torch.Tensor,
) -> None:
    sigma = [0.5, -2.0, 0.0]  # the raw second half; a linear encoder can emit negative values
    vae = GaussianVAE(
        _constant_encoder([0.0] * LATENT + sigma),
        Decoder(LATENT, [8], SHAPE),
        LATENT,
        posterior="sigma",
    ).double()
    q = vae.encode(images.double())
    expected = torch.tensor([0.25 + 1e-8, 4.0 + 1e-8, 1e-8], dtype=torch.float64).log()
    torch.testing.assert_close(q.logvar, expected.expand_as(q.logvar), rtol=1e-12, atol=0)
    assert torch.equal(q.std[0], torch.tensor(sigma, dtype=torch.float64))  # kept as emitted


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reduction": "sum"},
        {"reduction": "mean"},
        {"reduction": "mean", "free_bits": 0.5},
        {"objective": "iwae"},
        {"objective": "iwae", "reduction": "mean"},
    ],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()),
)
def test_an_empty_batch_gives_a_nan_loss(kwargs: dict) -> None:
    # NaN, the mean of nothing, as the module docstring says: no ZeroDivisionError, no IndexError.
    x = torch.empty(0, *SHAPE)
    out = small_vae(**kwargs).loss(x)
    assert out.loss.isnan() and out.recon.isnan() and out.kl.isnan()
    for reduction in ("sum", "mean"):
        out = small_ae(reduction=reduction).loss(x)
        assert out.loss.isnan() and out.recon.isnan()


def test_sigma_posterior_kl_is_the_articles_formula_in_float64(images: torch.Tensor) -> None:
    # KL = (mu^2 + sigma^2 - log(1e-8 + sigma^2) - 1) / 2: the floor sits only inside the log, so
    # the KL is not the Gaussian one at logvar = log(1e-8 + sigma^2) (that adds 5e-9 nats).
    mu, sigma = [0.3, -1.0, 2.0], [0.5, -2.0, 0.0]
    vae = GaussianVAE(
        _constant_encoder(mu + sigma), Decoder(LATENT, [8], SHAPE), LATENT, posterior="sigma"
    ).double()
    m, s = torch.tensor(mu).double(), torch.tensor(sigma).double()  # the encoder's float32 bias
    expected = 0.5 * (m**2 + s**2 - torch.log(1e-8 + s**2) - 1)
    kl = vae.kl_elementwise(vae(images.double()))
    torch.testing.assert_close(kl, expected.expand_as(kl), rtol=1e-13, atol=0)


def test_free_bits_with_mean_reduction_divides_by_the_elements_of_flat_data() -> None:
    enc = _constant_encoder([0.0] * (2 * LATENT))  # the posterior is the prior: KL = 0
    vae = GaussianVAE(
        enc, Decoder(LATENT, [8], D_IN), LATENT, beta=2.0, free_bits=0.5, reduction="mean"
    )
    out = vae.loss(torch.rand(6, D_IN))
    torch.testing.assert_close(out.loss - out.recon, torch.tensor(2.0 * 0.5 * LATENT / D_IN))
