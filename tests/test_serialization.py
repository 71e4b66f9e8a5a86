"""Saving and loading models: one weights-only file with a JSON config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import autoenc
from autoenc import Autoencoder, Decoder, Encoder, Gaussian, GaussianVAE, load, save

SHAPE = (1, 4, 4)
LATENT = 3


def _vae(likelihood="bernoulli", **kwargs) -> GaussianVAE:
    final = "sigmoid" if likelihood == "mse" else None
    return GaussianVAE(
        Encoder(SHAPE, [8], 2 * LATENT, norm="batch"),
        Decoder(LATENT, [8], SHAPE, final_activation=final),
        LATENT,
        likelihood=likelihood,
        **kwargs,
    )


def _ae() -> Autoencoder:
    return Autoencoder(
        Encoder(SHAPE, [8], LATENT, dropout=0.1),
        Decoder(LATENT, [8], SHAPE, final_activation="sigmoid"),
        likelihood="mse",
        reduction="mean",
    )


def _trained(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A few Adam steps, so weights, learned scales and BatchNorm statistics leave their init."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        loss = model.loss(x).loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
    return model.eval()


def _assert_same_model(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    assert type(a) is type(b)
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    a.eval()
    b.eval()
    if isinstance(a, GaussianVAE):
        eps = torch.randn(x.shape[0], LATENT)
        assert torch.equal(a.loss(x, eps=eps).loss, b.loss(x, eps=eps).loss)
        assert torch.equal(a(x, eps=eps).x_hat, b(x, eps=eps).x_hat)
    else:
        assert torch.equal(a.loss(x).loss, b.loss(x).loss)
    assert torch.equal(a.reconstruct(x), b.reconstruct(x))


LIKELIHOODS = {
    "mse": lambda: "mse",
    "bernoulli": lambda: "bernoulli",
    "continuous_bernoulli": lambda: "continuous_bernoulli",
    "gaussian": lambda: Gaussian(0.2),
    "gaussian_global": lambda: Gaussian(0.5, learn_scale="global"),
    "gaussian_pixel": lambda: Gaussian(0.5, learn_scale="pixel", shape=SHAPE),
}


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_vae_round_trip(tmp_path: Path, images: torch.Tensor, name: str) -> None:
    model = _vae(LIKELIHOODS[name](), beta=0.5, posterior="logvar", free_bits=0.1)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    model = _trained(model, images)
    path = save(model, tmp_path / "vae.pt")
    loaded = load(path)
    assert loaded.config == model.config
    assert not loaded.training
    _assert_same_model(model, loaded, images)
    if name.startswith("gaussian_"):
        log_scale = loaded.likelihood.log_scale
        assert isinstance(log_scale, nn.Parameter) and log_scale.requires_grad
        assert not torch.equal(log_scale, initial["likelihood.log_scale"])  # trained value kept


def test_ae_round_trip_with_the_method_api(tmp_path: Path, images: torch.Tensor) -> None:
    model = _trained(_ae(), images)
    autoenc.save(model, tmp_path / "ae.pt")
    loaded = autoenc.load(tmp_path / "ae.pt", kind=Autoencoder)
    _assert_same_model(model, loaded, images)


def test_article_settings_round_trip(tmp_path: Path, images: torch.Tensor) -> None:
    model = GaussianVAE(
        Encoder(SHAPE, [8], 2 * LATENT, final_activation="relu"),
        Decoder(LATENT, [8], SHAPE, final_activation="sigmoid"),
        LATENT,
        likelihood="mse",
        posterior="sigma",
        reduction="mean",
    )
    autoenc.save(model, tmp_path / "vae.pt")
    loaded = autoenc.load(tmp_path / "vae.pt", kind=GaussianVAE)
    assert loaded.posterior == "sigma" and loaded.reduction == "mean"
    _assert_same_model(model, loaded, images)


def test_file_is_weights_only_with_a_json_config(tmp_path: Path) -> None:
    model = _vae()
    save(model, tmp_path / "vae.pt")
    payload = torch.load(tmp_path / "vae.pt", weights_only=True)
    assert payload["kind"] == "GaussianVAE"
    assert payload["autoenc_version"] == autoenc.__version__
    assert isinstance(payload["config"], str)
    assert json.loads(payload["config"]) == model.config
    assert set(payload["state_dict"]) == set(model.state_dict())


def test_save_is_atomic_and_creates_directories(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "a" / "vae.pt"
    save(_vae(), path)
    first = path.read_bytes()
    save(_vae(beta=2.0), path)  # overwrite
    assert path.read_bytes() != first
    assert load(path).beta == 2.0
    assert [p.name for p in path.parent.iterdir()] == ["vae.pt"]  # no temporary files left


@pytest.mark.parametrize("content", ["truncated", "garbage", "empty"])
def test_unreadable_files_raise_a_clear_value_error(tmp_path: Path, content: str) -> None:
    good = tmp_path / "good.pt"
    save(_vae(), good)
    bad = tmp_path / "bad.pt"
    data = good.read_bytes()
    bad.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not a model" * 50, "empty": b""}[content]
    )
    with pytest.raises(
        ValueError, match=r"could not read the model file .*bad.pt.*truncated, corrupted"
    ):
        load(bad)


@pytest.mark.parametrize("obj", [{"weights": torch.zeros(2)}, [1, 2, 3]], ids=["dict", "list"])
def test_other_torch_files_are_not_models(tmp_path: Path, obj: object) -> None:
    torch.save(obj, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"is not an autoenc model file"):
        load(tmp_path / "other.pt")


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no model file at .*missing.pt"):
        load(tmp_path / "missing.pt")


def test_kind_mismatch_is_rejected(tmp_path: Path) -> None:
    path = save(_vae(), tmp_path / "vae.pt")
    with pytest.raises(ValueError, match=r"holds a GaussianVAE, not a Autoencoder"):
        autoenc.load(path, kind=Autoencoder)
    with pytest.raises(ValueError, match=r"holds a GaussianVAE, not a Autoencoder"):
        load(path, kind="Autoencoder")
    with pytest.raises(ValueError, match=r"holds a GaussianVAE, not a Autoencoder"):
        load(path, model=_ae())
    assert isinstance(autoenc.load(path, kind=GaussianVAE), GaussianVAE)


def _user_vae() -> GaussianVAE:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2 * LATENT))
    decoder = nn.Sequential(nn.Linear(LATENT, 16), nn.Unflatten(1, SHAPE))
    return GaussianVAE(encoder, decoder, LATENT)


def test_user_modules_save_and_load_into_a_model_built_in_code(
    tmp_path: Path, images: torch.Tensor
) -> None:
    model = _trained(_user_vae(), images)
    with pytest.raises(TypeError, match=r"cannot describe the encoder \(Sequential\) as a config"):
        model.config  # noqa: B018
    path = save(model, tmp_path / "user.pt")
    with pytest.raises(
        ValueError, match=r"networks of your own and no config.*load\(path, model=\.\.\.\)"
    ):
        load(path)
    fresh = _user_vae()
    loaded = load(path, model=fresh)
    assert loaded is fresh
    _assert_same_model(model, loaded, images)


def test_weights_that_do_not_fit_the_given_model(tmp_path: Path) -> None:
    path = save(_vae(), tmp_path / "vae.pt")
    other = GaussianVAE(Encoder(SHAPE, [9], 2 * LATENT), Decoder(LATENT, [8], SHAPE), LATENT)
    with pytest.raises(ValueError, match=r"the weights in .*vae.pt.* do not fit the model"):
        load(path, model=other)


def test_from_config_builds_the_same_architecture() -> None:
    model = _vae("continuous_bernoulli", beta=3.0, reduction="mean")
    rebuilt = GaussianVAE.from_config(json.loads(json.dumps(model.config)))
    assert rebuilt.config == model.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
