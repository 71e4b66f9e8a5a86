"""The VQ-VAE: gradients, tokens, the loss terms, files, shape checks, training and its prior."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import autoenc
from autoenc import VQVAE, ConvDecoder, ConvEncoder, VectorQuantizer
from autoenc.pictures import ImageSnapshots, prior_grid, prior_samples

SHAPE = (1, 8, 8)  # one stride-2 stage: a 4x4 grid of tokens
D, K = 3, 16


def _vqvae(*, ema: bool = True, likelihood: str = "bernoulli", **kwargs) -> VQVAE:
    return VQVAE(
        ConvEncoder(SHAPE, [4], out_channels=D),
        VectorQuantizer(K, D, ema=ema, restart_after=kwargs.pop("restart_after", None)),
        ConvDecoder(None, [4], SHAPE, in_channels=D),
        likelihood=likelihood,
        **kwargs,
    )


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def _trained(n: int = 32, *, ema: bool = True) -> tuple[VQVAE, torch.Tensor]:
    torch.manual_seed(0)
    model, x = _vqvae(ema=ema), _images(n)
    autoenc.fit(model, x, epochs=2, batch_size=8, lr=1e-2, seed=0, verbose=False)
    return model.eval(), x


# --- gradients and the loss terms


def test_the_straight_through_gradient_reaches_the_encoder() -> None:
    model, x = _vqvae(), _images()
    z = model.encode(x)
    z.retain_grad()
    q = model.quantize(z)
    q.z_q.retain_grad()
    model.recon(model.decoder(q.z_q), x).backward()
    assert torch.equal(z.grad, q.z_q.grad)  # the lookup passes the decoder's gradient unchanged
    model.zero_grad()
    model.loss(x).loss.backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_the_loss_is_recon_plus_the_quantizer_loss_and_logs_its_statistics() -> None:
    for ema in (True, False):
        model, x = _vqvae(ema=ema).eval(), _images()
        out = model.loss(x)
        q = model.quantize(model.encode(x))
        recon = model.recon(model.decoder(q.z_q), x)
        torch.testing.assert_close(out.loss, recon + q.loss)
        terms = out.terms()
        assert ("codebook" in terms) == (not ema)
        torch.testing.assert_close(terms["commitment"], q.commitment)
        torch.testing.assert_close(terms["perplexity"], q.perplexity)
        torch.testing.assert_close(terms["usage"], q.usage)


def test_reduction_mean_divides_every_term_by_the_elements_of_a_datum() -> None:
    x = _images()
    torch.manual_seed(0)
    summed = _vqvae(ema=False).eval()
    mean = _vqvae(ema=False, reduction="mean").eval()
    mean.load_state_dict(summed.state_dict())
    a, b = summed.loss(x).terms(), mean.loss(x).terms()
    n = math.prod(SHAPE)
    for key in ("loss", "recon", "commitment", "codebook"):
        torch.testing.assert_close(b[key], a[key] / n)
    assert b["perplexity"] == a["perplexity"]


# --- tokens


def test_decoding_the_tokens_gives_the_quantized_reconstruction() -> None:
    model, x = _trained()
    tokens = model.encode_indices(x)
    assert tokens.shape == (x.shape[0], 4, 4) and tokens.dtype == torch.long
    with torch.no_grad():
        expected = model.decode(model.quantize(model.encode(x)).z_q)
        # the straight-through z + (code - z) may differ from the code in the last bit
        torch.testing.assert_close(model.decode_indices(tokens), expected)
        torch.testing.assert_close(model.reconstruct(x), expected)
        torch.testing.assert_close(model.decode(model.embed(x)), expected)  # the flat form


def test_tokens_and_embeddings_leave_the_codebook_alone_in_training_mode() -> None:
    model, x = _trained()
    model.train()
    state = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    model.encode_indices(x)
    model.embed(x)
    for key, value in model.quantizer.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.training and model.quantizer.training


# --- files


@pytest.mark.parametrize("with_prior", [False, True])
def test_save_and_load_round_trip_gives_identical_outputs(tmp_path, with_prior) -> None:
    model, x = _trained()
    if with_prior:
        model.fit_prior(x)
    loaded = autoenc.load(autoenc.save(model, tmp_path / "vq.pt"))
    assert isinstance(loaded, VQVAE) and loaded.config == model.config
    assert loaded.has_prior == with_prior
    assert torch.equal(loaded.encode_indices(x), model.encode_indices(x))
    assert torch.equal(loaded.reconstruct(x), model.reconstruct(x))
    if with_prior:
        assert torch.equal(loaded.prior_probs, model.prior_probs)
        draw = [m.sample(5, generator=torch.Generator().manual_seed(1)) for m in (model, loaded)]
        assert torch.equal(*draw)


def test_config_is_json_and_rebuilds_the_quantizer() -> None:
    model = _vqvae(ema=False, restart_after=7)
    config = json.loads(json.dumps(model.config))
    assert config["quantizer"]["type"] == "VectorQuantizer"
    rebuilt = VQVAE.from_config(config)
    assert rebuilt.quantizer.config == model.quantizer.config
    assert [type(m) for m in rebuilt.modules()] == [type(m) for m in model.modules()]


# --- shape checks


def test_networks_that_do_not_fit_the_quantizer_are_refused() -> None:
    enc, dec = ConvEncoder(SHAPE, [4], out_channels=D), ConvDecoder(None, [4], SHAPE, in_channels=D)
    with pytest.raises(ValueError, match=r"encoder emits \(5, 4, 4\).*= 3.*out_channels=3"):
        VQVAE(ConvEncoder(SHAPE, [4], out_channels=5), VectorQuantizer(K, D), dec)
    with pytest.raises(ValueError, match=r"decoder takes \(2, 4, 4\).*in_channels=3"):
        VQVAE(enc, VectorQuantizer(K, D), ConvDecoder(None, [4], SHAPE, in_channels=2))
    with pytest.raises(ValueError, match=r"encoder emits grids of \(3, 4, 4\).*takes \(3, 2, 2\)"):
        VQVAE(enc, VectorQuantizer(K, D), ConvDecoder(None, [4, 4], SHAPE, in_channels=D))
    with pytest.raises(ValueError, match=r"encoder emits \(6,\)"):
        VQVAE(ConvEncoder(SHAPE, [4], 6), VectorQuantizer(K, D), dec)
    with pytest.raises(TypeError, match="quantizer must be a VectorQuantizer, got Linear"):
        VQVAE(enc, nn.Linear(2, 2), dec)


def test_an_encoder_that_says_nothing_is_checked_on_its_output() -> None:
    dec = ConvDecoder(None, [4], SHAPE, in_channels=D)
    model = VQVAE(nn.Conv2d(1, 2, 3, 2, 1), VectorQuantizer(K, D), dec)
    with pytest.raises(ValueError, match=r"encoder must emit \(b, code_dim=3, \*grid\), got"):
        model.loss(_images())


def test_bad_tokens_are_clear_errors() -> None:
    model = _vqvae().eval()
    with pytest.raises(ValueError, match=r"indices must be in \[0, 16\), got values in \[16, 16\]"):
        model.decode_indices(torch.full((2, 4, 4), 16))
    with pytest.raises(ValueError, match=r"\[-1, 0\]"):
        model.decode_indices(-torch.eye(4, dtype=torch.long)[None])
    with pytest.raises(ValueError, match=r"shape \(b, \*grid\) = \(b, 4, 4\), got \(2, 3, 4\)"):
        model.decode_indices(torch.zeros(2, 3, 4, dtype=torch.long))
    for bad in (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool)):
        with pytest.raises(TypeError, match="indices must be an integer tensor"):
            model.decode_indices(bad)


# --- training


def test_fit_trains_it_and_logs_the_codebook_statistics() -> None:
    for ema in (True, False):
        torch.manual_seed(0)
        model, x = _vqvae(ema=ema, restart_after=2), _images(32)
        before = model.eval().loss(x).recon.item()
        result = autoenc.fit(model, x, epochs=3, batch_size=8, lr=1e-2, seed=0, verbose=False)
        h = result.history
        assert model.eval().loss(x).recon.item() < before
        assert all(1 <= p <= K for p in h["train/perplexity"])
        assert all(0 < u <= 1 for u in h["train/usage"])
        assert ("train/codebook" in h) == (not ema) and "train/commitment" in h


# --- the prior


def test_sampling_without_a_prior_says_to_fit_one() -> None:
    model = _vqvae()
    for draw in (lambda: model.sample(2), lambda: prior_samples(model, 2)):
        with pytest.raises(RuntimeError, match=r"call model.fit_prior\(train_data\)"):
            draw()


def test_the_prior_is_the_smoothed_frequency_of_each_code_at_each_position() -> None:
    model, x = _trained()
    counts = model.fit_prior(x, smoothing=0.5)
    tokens = model.encode_indices(x)  # (n, 4, 4)
    expected = torch.nn.functional.one_hot(tokens, K).sum(0)  # (4, 4, K)
    assert torch.equal(counts, expected)
    torch.testing.assert_close(model.prior_probs, (expected + 0.5) / (x.shape[0] + K * 0.5))
    bits = -torch.log2(model.prior_probs[torch.arange(4)[:, None], torch.arange(4), tokens])
    assert model.prior_bits_per_token(x) == pytest.approx(bits.mean().item())
    assert model.prior_bits_per_token(x) < math.log2(K)


def test_prior_samples_have_the_image_shape_and_use_the_codes_seen() -> None:
    model, x = _trained()
    model.fit_prior(x, smoothing=1e-9)  # all but no mass on codes the data never used
    tokens = model.sample_indices(200, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (200, 4, 4)
    seen = torch.nn.functional.one_hot(model.encode_indices(x), K).sum(0) > 0  # (4, 4, K)
    assert seen[torch.arange(4)[:, None], torch.arange(4), tokens].all()
    assert model.sample(3).shape == (3, *SHAPE)
    assert torch.equal(prior_samples(model, 4, seed=2), prior_samples(model, 4, seed=2))
    assert prior_grid(model, 4, nrow=2).shape[0] == 3


def test_image_snapshots_draw_prior_samples_once_a_prior_is_fitted(tmp_path) -> None:
    model, x = _trained()
    model.fit_prior(x)
    pictures = ImageSnapshots(tmp_path, x[:4], n_samples=4)
    autoenc.fit(model, x, epochs=1, batch_size=8, callbacks=[pictures], verbose=False)
    names = sorted(p.name for p in pictures.written)
    assert names == ["recon_epoch001.png", "samples_epoch001.png"]


@pytest.mark.slow
def test_the_example_runs_on_the_shipped_sample(tmp_path) -> None:
    import gzip
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        packed = root / "src" / "autoenc" / "assets" / f"mnist-sample-{name}-ubyte.gz"
        (raw / f"{name}-ubyte").write_bytes(gzip.decompress(packed.read_bytes()))
    out = tmp_path / "out"
    cmd = [sys.executable, str(root / "examples" / "mnist_vqvae.py"), "--epochs", "1"]
    cmd += ["--max-batches", "2", "--codes", "32", "--device", "cpu"]
    cmd += ["--data-root", str(tmp_path / "data"), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["test_mse_per_pixel"] < 1 and metrics["uniform_bits_per_token"] == 5
    assert metrics["prior_bits_per_test_token"] < 5
    written = {p.name for p in out.iterdir()}
    assert {"prior_samples.png", "model.pt", "history.csv", "recon_epoch001.png"} <= written
