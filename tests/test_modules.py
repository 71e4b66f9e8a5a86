"""The MLP builders: ``mlp``, ``Encoder`` and ``Decoder``."""

from __future__ import annotations

import json

import pytest
import torch
from article import article_decoder, article_encoder
from torch import nn

from autoenc import Decoder, Encoder, mlp
from autoenc.networks import ACTIVATIONS, fused_inference


def _types(module: nn.Module) -> list[type[nn.Module]]:
    return [type(m) for m in module]


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- the article's networks (benchmarks/article.py)


def test_articles_encoder_is_expressible_exactly() -> None:
    theirs = article_encoder()
    ours = Encoder((1, 28, 28), [256, 64], 20, final_activation="relu")
    assert _types(ours.net) == _types(theirs)
    assert _n_params(ours) == _n_params(theirs)
    ours.net.load_state_dict(theirs.state_dict())
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(ours(x), theirs(x.view(5, -1)), rtol=0, atol=0)


@pytest.mark.parametrize("latent", [20, 10], ids=["ae", "vae"])
def test_articles_decoder_is_expressible_exactly(latent: int) -> None:
    theirs = article_decoder(latent)
    ours = Decoder(latent, [64, 256], (1, 28, 28), final_activation="sigmoid")
    assert _types(ours.net) == _types(theirs)
    assert _n_params(ours) == _n_params(theirs)
    ours.net.load_state_dict(theirs.state_dict())
    z = torch.randn(5, latent)
    torch.testing.assert_close(ours(z), theirs(z).view(5, 1, 28, 28), rtol=0, atol=0)


# --- mlp


def test_mlp_structure_and_shapes() -> None:
    net = mlp(6, [8, 4], 3)
    assert _types(net) == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    widths = [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)]
    assert widths == [(6, 8), (8, 4), (4, 3)]
    assert net(torch.randn(2, 6)).shape == (2, 3)


def test_mlp_without_hidden_layers_is_one_linear() -> None:
    net = mlp(5, [], 2, final_activation="tanh")
    assert _types(net) == [nn.Linear, nn.Tanh]


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_mlp_activation_names(name: str) -> None:
    net = mlp(3, [4, 4], 2, activation=name, final_activation=name)
    assert [type(m) for m in net if not isinstance(m, nn.Linear)] == [ACTIVATIONS[name]] * 3


def test_mlp_activation_none_means_linear_hidden_layers() -> None:
    assert _types(mlp(3, [4], 2, activation=None)) == [nn.Linear, nn.Linear]


@pytest.mark.parametrize(("norm", "cls"), [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm)])
def test_mlp_norm_and_dropout_order(norm: str, cls: type[nn.Module]) -> None:
    net = mlp(3, [8, 4], 2, activation="gelu", norm=norm, dropout=0.25)
    block = [nn.Linear, cls, nn.GELU, nn.Dropout]
    assert _types(net) == block + block + [nn.Linear]
    assert all(m.p == 0.25 for m in net if isinstance(m, nn.Dropout))
    assert [
        m.normalized_shape[0] if norm == "layer" else m.num_features
        for m in net
        if isinstance(m, cls)
    ] == [8, 4]
    net.train()
    assert net(torch.randn(5, 3)).shape == (5, 2)


def test_mlp_dropout_zero_adds_no_layer() -> None:
    assert not any(isinstance(m, nn.Dropout) for m in mlp(3, [4], 2, dropout=0.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_features": 0}, r"in_features must be a positive int, got 0"),
        ({"out_features": -3}, r"out_features must be a positive int, got -3"),
        ({"out_features": 2.5}, r"out_features must be a positive int, got 2.5"),
        ({"hidden": [8, 0]}, r"hidden widths must be positive ints, got \[8, 0\]"),
        ({"hidden": [8, True]}, r"hidden widths must be positive ints"),
        ({"hidden": 8}, r"hidden must be a list of positive ints .*got 8"),
        ({"activation": "swish"}, r"activation must be one of \[.*'relu'.*\] or None, got 'swish'"),
        ({"final_activation": "Sigmoid"}, r"final_activation must be one of .* got 'Sigmoid'"),
        ({"norm": "group"}, r"norm must be one of \('batch', 'layer'\) or None, got 'group'"),
        ({"dropout": 1.0}, r"dropout must be a float in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be a float in \[0, 1\), got -0.1"),
        ({"dropout": "0.5"}, r"dropout must be a float in \[0, 1\), got '0.5'"),
    ],
)
def test_mlp_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"in_features": 4, "hidden": [8], "out_features": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        mlp(**args)


# --- Encoder / Decoder


def test_encoder_flattens_image_input_row_major() -> None:
    enc = Encoder((2, 3, 4), [5], 6)
    x = torch.randn(7, 2, 3, 4)
    out = enc(x)
    assert out.shape == (7, 6)
    torch.testing.assert_close(out, enc.net(x.reshape(7, -1)), rtol=0, atol=0)
    torch.testing.assert_close(enc(x.reshape(7, 24)), out, rtol=0, atol=0)  # flat input too
    assert enc.in_shape == (2, 3, 4) and enc.in_features == 24 and enc.out_features == 6


def test_encoder_with_flat_input_shape() -> None:
    enc = Encoder(10, [4], 3, norm="layer", dropout=0.1)
    assert enc(torch.randn(2, 10)).shape == (2, 3)


@pytest.mark.parametrize("shape", [(3, 28, 28), (3, 1, 28), (3, 783), (784,), (3, 2, 1, 28, 28)])
def test_encoder_rejects_input_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    enc = Encoder((1, 28, 28), [8], 4)
    match = rf"Encoder expects input of shape \(b, 1, 28, 28\) or \(b, 784\), got \({shape[0]}"
    with pytest.raises(ValueError, match=match):
        enc(torch.zeros(shape))


def test_decoder_unflattens_output_row_major() -> None:
    dec = Decoder(3, [5], (2, 3, 4), final_activation="sigmoid")
    z = torch.randn(7, 3)
    out = dec(z)
    assert out.shape == (7, 2, 3, 4)
    torch.testing.assert_close(out, dec.net(z).view(7, 2, 3, 4), rtol=0, atol=0)
    assert ((out > 0) & (out < 1)).all()
    assert Decoder(3, [5], 12)(z).shape == (7, 12)


@pytest.mark.parametrize("shape", [(4, 2), (4,), (4, 3, 1)])
def test_decoder_rejects_input_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"Decoder expects input of shape \(b, 3\), got"):
        Decoder(3, [5], 12)(torch.zeros(shape))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: Encoder((1, 0, 28), [8], 4),
            r"in_shape must be a positive int or a tuple .*\(1, 0, 28\)",
        ),
        (lambda: Encoder((), [8], 4), r"in_shape must be a positive int or a tuple"),
        (lambda: Encoder(-784, [8], 4), r"in_shape .* got -784"),
        (lambda: Decoder(4, [8], (1, 28.0, 28)), r"out_shape must be a positive int or a tuple"),
        (lambda: Encoder(784, [8], 0), r"out_features must be a positive int, got 0"),
        (lambda: Decoder(0, [8], 784), r"in_features must be a positive int, got 0"),
        (lambda: Encoder(784, [8, -1], 4), r"hidden widths must be positive ints"),
        (lambda: Decoder(4, [8], 784, activation="sigmoidd"), r"activation must be one of"),
        (lambda: Decoder(4, [8], 784, norm="instance"), r"norm must be one of"),
        (lambda: Encoder(784, [8], 4, dropout=1.5), r"dropout must be a float in \[0, 1\)"),
    ],
)
def test_builders_reject_bad_arguments(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "module",
    [
        Encoder((1, 4, 4), [8, 6], 5, activation="elu", norm="batch", dropout=0.1),
        Decoder(5, [6, 8], (1, 4, 4), norm="layer", final_activation="sigmoid"),
    ],
    ids=["encoder", "decoder"],
)
def test_config_is_json_and_rebuilds_the_same_network(module: nn.Module) -> None:
    config = json.loads(json.dumps(module.config))
    rebuilt = type(module)(**config)
    assert rebuilt.config == module.config
    rebuilt.load_state_dict(module.state_dict())  # same parameter names and shapes
    module.eval()
    rebuilt.eval()
    x = torch.randn(3, 1, 4, 4) if isinstance(module, Encoder) else torch.randn(3, 5)
    torch.testing.assert_close(rebuilt(x), module(x), rtol=0, atol=0)


needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"
)


@needs_onednn
@pytest.mark.parametrize("activation", ["relu", "silu", "gelu", "tanh", "sigmoid"])
@pytest.mark.parametrize("final", [None, "sigmoid"])
def test_fused_inference_computes_the_decoder_in_eval_mode(activation, final) -> None:
    """fp32: the module's eval output to float rounding (dropout skipped, unflattened); bf16:
    within bf16 rounding of a float64 forward, no further from it than autocast's pass."""
    torch.manual_seed(0)
    dec = Decoder(
        6, [16, 32], (2, 3, 4), activation=activation, dropout=0.3, final_activation=final
    )
    dec.eval()
    z = torch.randn(40, 6)
    with torch.no_grad():
        exact = dec.double()(z.double()).float()
        dec.float()
        fused32 = fused_inference(dec, torch.float32)
        torch.testing.assert_close(fused32(z), dec(z), rtol=1e-5, atol=1e-5)
        fused16 = fused_inference(dec)
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            assert fused16 is None
            return
        out = fused16(z)
        with torch.autocast("cpu", torch.bfloat16):
            autocast_error = (dec(z).float() - exact).abs().max()
    assert out.dtype == torch.bfloat16 and out.shape == (40, 2, 3, 4)
    error = (out.float() - exact).abs().max()
    assert error <= max(autocast_error, 2**-7 * exact.abs().max())


@needs_onednn
def test_fused_inference_of_a_sequential_and_its_input_check() -> None:
    net = nn.Sequential(nn.Linear(3, 8), nn.GELU(approximate="tanh"), nn.Linear(8, 2, bias=False))
    x = torch.randn(5, 3)
    fused = fused_inference(net, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"expected input of shape \(b, 3\), got \(5, 4\)"):
        fused(torch.randn(5, 4))


@pytest.mark.parametrize(
    "module",
    [
        Decoder(4, [8], 6, activation="leaky_relu"),  # no fused form for its slope
        Decoder(4, [8], 6, norm="batch"),
        nn.Sequential(nn.ReLU(), nn.Linear(4, 2)),
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.ReLU(), nn.Linear(8, 2)),
        nn.Sequential(),
        nn.Linear(4, 2),
        Encoder(6, [8], 4),
        Decoder(4, [8], 6).double(),
    ],
    ids=["leaky", "batchnorm", "leading-act", "two-acts", "empty", "bare-linear", "encoder", "f64"],
)
def test_fused_inference_declines_what_it_cannot_fuse(module: nn.Module) -> None:
    assert fused_inference(module, torch.float32) is None


def test_fused_inference_declines_a_forward_or_hook_it_would_skip() -> None:
    class Shifted(Decoder):
        def forward(self, z):
            return super().forward(z) + 1

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    assert fused_inference(Shifted(4, [8], 6), torch.float32) is None
    assert fused_inference(nn.Sequential(Scaled(4, 2)), torch.float32) is None
    dec = Decoder(4, [8], 6)
    handle = dec.net[1].register_forward_hook(lambda module, args, out: out * 0)
    assert fused_inference(dec, torch.float32) is None
    handle.remove()
    assert (fused_inference(dec, torch.float32) is None) == (
        not torch.backends.mkldnn.is_available()
    )
