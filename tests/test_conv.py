"""The convolutional builders: ``ConvEncoder`` and ``ConvDecoder``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import autoenc
from autoenc import GaussianVAE
from autoenc.networks.conv import ConvDecoder, ConvEncoder
from autoenc.pictures import prior_grid, reconstruction_grid

# (shape, the most stride-2 stages it allows): each stage needs 2 pixels on each side.
SHAPES = [
    ((1, 28, 28), 5),  # 28 -> 14 -> 7 -> 4 -> 2 -> 1
    ((3, 32, 32), 5),
    ((3, 64, 64), 6),
    ((1, 20, 30), 5),  # 20x30 -> 10x15 -> 5x8 -> 3x4 -> 2x2 -> 1x1
    ((3, 27, 19), 5),  # 27x19 -> 14x10 -> 7x5 -> 4x3 -> 2x2 -> 1x1
    ((2, 2, 30), 1),  # a thin strip: 2x30 -> 1x15, then the height cannot halve
]
IDS = ["x".join(map(str, s)) for s, _ in SHAPES]
LATENT = 3


def _vae(shape: tuple[int, ...], channels: list[int], **options) -> GaussianVAE:
    enc = ConvEncoder(shape, channels, 2 * LATENT, **options)
    dec = ConvDecoder(LATENT, channels[::-1], shape, **options)
    return GaussianVAE(enc, dec, LATENT)


def _binary(shape: tuple[int, ...], b: int = 4) -> torch.Tensor:
    return torch.randint(0, 2, (b, *shape)).float()


def _ceil_halvings(n: int, stages: int) -> list[int]:
    sizes = [n]
    for _ in range(stages):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


# --- shapes


@pytest.mark.parametrize(("shape", "most"), SHAPES, ids=IDS)
def test_every_depth_the_shape_allows_round_trips_exactly(shape, most) -> None:
    c, h, w = shape
    for stages in range(1, most + 1):
        channels = [2] * stages
        enc = ConvEncoder(shape, channels, 5)
        dec = ConvDecoder(4, channels, shape)
        assert enc(torch.rand(3, *shape)).shape == (3, 5)
        assert dec(torch.randn(3, 4)).shape == (3, c, h, w)
        expected = list(zip(_ceil_halvings(h, stages), _ceil_halvings(w, stages), strict=True))
        assert enc.sizes == expected
        assert dec.sizes == expected[::-1]


@settings(max_examples=40, deadline=None)
@given(
    c=st.integers(1, 3),
    h=st.integers(2, 70),
    w=st.integers(2, 70),
    depth=st.floats(0, 1),
    k=st.sampled_from([1, 3, 5]),
)
def test_any_image_size_round_trips_exactly(c, h, w, depth, k) -> None:
    most = min(math.ceil(math.log2(h)), math.ceil(math.log2(w)))  # halvings until a side is 1
    stages = max(1, round(depth * most))
    enc = ConvEncoder((c, h, w), [2] * stages, 3, kernel_size=k)
    dec = ConvDecoder(3, [2] * stages, (c, h, w), kernel_size=k)
    assert dec(enc(torch.rand(2, c, h, w))).shape == (2, c, h, w)
    with pytest.raises(ValueError, match=f"allows at most {most}"):
        ConvEncoder((c, h, w), [2] * (most + 1), 3)


@pytest.mark.parametrize(("shape", "most"), SHAPES, ids=IDS)
def test_each_encoder_stage_emits_the_announced_grid(shape, most) -> None:
    enc = ConvEncoder(shape, [2] * most, 4)
    grids: list[tuple[int, int]] = []
    for m in enc.net:
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(lambda _m, _i, out: grids.append(tuple(out.shape[2:])))
    enc(torch.rand(2, *shape))
    assert grids == enc.sizes[1:]


@pytest.mark.parametrize(("shape", "most"), SHAPES, ids=IDS)
def test_too_many_stages_is_a_clear_error(shape, most) -> None:
    for cls, args in (
        (ConvEncoder, (shape, [2] * (most + 1), 4)),
        (ConvDecoder, (4, [2] * (most + 1), shape)),
    ):
        with pytest.raises(
            ValueError, match=f"channels has {most + 1} entries .* allows at most {most}"
        ):
            cls(*args)


def test_the_depth_error_shows_the_sizes_and_the_way_out() -> None:
    with pytest.raises(
        ValueError, match=r"28x28 -> 14x14 -> 7x7 -> 4x4 -> 2x2 -> 1x1.*use at most 5"
    ):
        ConvEncoder((1, 28, 28), [8] * 6, 4)


def test_flat_input_gives_the_same_output_as_images() -> None:
    enc = ConvEncoder((3, 27, 19), [4, 8], 6)
    x = torch.rand(5, 3, 27, 19)
    torch.testing.assert_close(enc(x.flatten(1)), enc(x), rtol=0, atol=0)


def test_a_vae_loss_on_flat_data_equals_the_loss_on_images() -> None:
    vae = _vae((1, 20, 30), [4, 8])
    x = _binary((1, 20, 30))
    eps = torch.randn(4, LATENT)
    flat, images = vae(x.flatten(1), eps=eps), vae(x, eps=eps)
    torch.testing.assert_close(flat.params, images.params, rtol=0, atol=0)
    torch.manual_seed(1)
    loss_flat = vae.loss(x.flatten(1)).loss
    torch.manual_seed(1)
    torch.testing.assert_close(loss_flat, vae.loss(x).loss)


# --- gradients and variants

VARIANTS = {
    "plain": {},
    "batch": {"norm": "batch"},
    "group": {"norm": "group", "groups": 2},
    "residual": {"blocks_per_stage": 2},
    "group+residual+k5": {"norm": "group", "groups": 4, "blocks_per_stage": 1, "kernel_size": 5},
}


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize(("shape", "most"), SHAPES[:5], ids=IDS[:5])
def test_gradients_reach_every_parameter_through_the_vae_loss(shape, most, options) -> None:
    vae = _vae(shape, [4, 8], **options)
    vae.loss(_binary(shape)).loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_norms_and_residual_blocks_are_where_announced() -> None:
    batch = ConvEncoder((1, 28, 28), [4, 8], 6, norm="batch", blocks_per_stage=2)
    assert [m.num_features for m in batch.modules() if isinstance(m, nn.BatchNorm2d)] == (
        [4] + [4] * 4 + [8] + [8] * 4  # after each stage's conv, twice in each residual block
    )
    group = ConvDecoder(3, [8, 4], (1, 28, 28), norm="group", groups=4)
    assert [
        (m.num_groups, m.num_channels) for m in group.modules() if isinstance(m, nn.GroupNorm)
    ] == [
        (4, 4),
        (4, 4),
    ]
    assert not any(
        isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))
        for m in ConvEncoder((1, 8, 8), [4], 2).modules()
    )


def test_a_residual_block_with_a_silent_branch_is_the_identity() -> None:
    enc = ConvEncoder((1, 12, 12), [4], 6, blocks_per_stage=1)
    block = enc.net[2]
    nn.init.zeros_(block.net[-1].weight)
    nn.init.zeros_(block.net[-1].bias)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    with torch.no_grad():
        block.net[-1].bias.fill_(0.5)
    torch.testing.assert_close(block(x), x + 0.5)


def test_batch_norm_networks_train_and_evaluate_differently() -> None:
    vae = _vae((1, 16, 16), [4, 8], norm="batch")
    x, eps = _binary((1, 16, 16)), torch.randn(4, LATENT)
    train_out = vae.train()(x, eps=eps).params
    eval_out = vae.eval()(x, eps=eps).params
    assert not torch.allclose(train_out, eval_out)


# --- saving and loading


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_save_and_load_round_trip_gives_identical_outputs(tmp_path, options) -> None:
    vae = _vae((3, 27, 19), [4, 8], **options)
    x = _binary((3, 27, 19))
    vae.loss(x).loss.backward()  # moves the batch-norm running statistics off their start
    path = autoenc.save(vae.eval(), tmp_path / "conv.pt")
    loaded = autoenc.load(path)
    assert isinstance(loaded.encoder, ConvEncoder) and isinstance(loaded.decoder, ConvDecoder)
    assert loaded.config == vae.config
    eps = torch.randn(4, LATENT)
    torch.testing.assert_close(loaded(x, eps=eps).params, vae(x, eps=eps).params, rtol=0, atol=0)


def test_config_is_json_and_names_the_type() -> None:
    vae = _vae((1, 20, 30), [4, 8], norm="group", groups=2, final_activation=None)
    config = json.loads(json.dumps(vae.config))
    assert config["encoder"]["type"] == "ConvEncoder"
    assert config["decoder"]["type"] == "ConvDecoder"
    assert config["encoder"]["channels"] == [4, 8] and config["decoder"]["channels"] == [8, 4]
    rebuilt = GaussianVAE.from_config(config)
    assert [type(m) for m in rebuilt.modules()] == [type(m) for m in vae.modules()]


# --- training and pictures


def test_fit_trains_a_conv_vae_and_the_pictures_have_the_image_shape() -> None:
    shape = (1, 12, 10)
    vae = _vae(shape, [4, 8], norm="batch")
    x = _binary(shape, 24)
    before = vae.eval().loss(x).loss.item()
    result = autoenc.fit(vae, x, epochs=3, batch_size=8, lr=1e-2, seed=0, verbose=False)
    assert all(math.isfinite(v) for v in result.history["train/loss"])
    assert vae.eval().loss(x).loss.item() < before
    grid = reconstruction_grid(vae, x[:4], nrow=4, pad_value=0.0)
    assert grid.shape[1:] == (2 + 2 * (12 + 2), 2 + 4 * (10 + 2))
    assert prior_grid(vae, 4, nrow=2).shape[1:] == (2 + 2 * (12 + 2), 2 + 2 * (10 + 2))


# --- the models' checks


def test_bernoulli_refuses_a_conv_decoder_ending_in_a_sigmoid() -> None:
    enc = ConvEncoder((1, 28, 28), [4, 8], 2 * LATENT)
    dec = ConvDecoder(LATENT, [8, 4], (1, 28, 28), final_activation="sigmoid")
    assert isinstance(dec.net[-1], nn.Sigmoid)
    with pytest.raises(ValueError, match="ends in a sigmoid; build it with final_activation=None"):
        GaussianVAE(enc, dec, LATENT, likelihood="bernoulli")
    GaussianVAE(enc, dec, LATENT, likelihood="mse")  # a sigmoid is right for intensities


# --- bad arguments


def test_a_wrong_input_shape_is_a_clear_error() -> None:
    enc = ConvEncoder((3, 27, 19), [4], 6)
    for bad in (torch.rand(2, 3, 19, 27), torch.rand(2, 27, 19), torch.rand(2, 100), torch.rand(5)):
        with pytest.raises(
            ValueError, match=r"expects input of shape \(b, 3, 27, 19\) or \(b, 1539\)"
        ):
            enc(bad)
    dec = ConvDecoder(4, [4], (3, 27, 19))
    for bad in (torch.rand(2, 5), torch.rand(2, 4, 1)):
        with pytest.raises(ValueError, match=r"ConvDecoder expects input of shape \(b, 4\)"):
            dec(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": []}, "channels must be a non-empty list of positive ints"),
        ({"channels": [8, 0]}, r"channels must be .* got \[8, 0\]"),
        ({"channels": 8}, "channels must be a non-empty list"),
        ({"channels": [8, True]}, "channels must be a non-empty list"),
        ({"shape": (28, 28)}, r"must be \(channels, height, width\) .* got \(28, 28\)"),
        ({"shape": (1, 0, 28)}, r"must be \(channels, height, width\)"),
        ({"norm": "layer"}, r"norm must be one of \('batch', 'group'\) or None, got 'layer'"),
        ({"norm": "group", "groups": 3}, r"multiple of it, got channels=\[8, 16\]"),
        ({"groups": 0}, "groups must be a positive int, got 0"),
        ({"kernel_size": 4}, "kernel_size must be an odd positive int"),
        ({"kernel_size": -1}, "kernel_size must be an odd positive int"),
        ({"activation": "swish"}, "activation must be one of .*, got 'swish'"),
        ({"activation": None}, "activation must be one of"),
        ({"final_activation": "soft"}, r"final_activation must be one of .* or None, got 'soft'"),
        ({"blocks_per_stage": -1}, "blocks_per_stage must be an int >= 0, got -1"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match) -> None:
    kwargs = dict(kwargs)
    shape = kwargs.pop("shape", (1, 28, 28))
    channels = kwargs.pop("channels", [8, 16])
    with pytest.raises(ValueError, match=match):
        ConvEncoder(shape, channels, 4, **kwargs)
    with pytest.raises(ValueError, match=match):
        ConvDecoder(4, channels, shape, **kwargs)


def test_shape_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"^in_shape must be \(channels, height, width\)"):
        ConvEncoder(784, [4], 2)
    with pytest.raises(ValueError, match=r"^out_shape must be \(channels, height, width\)"):
        ConvDecoder(2, [4], "1x28x28")


def test_widths_must_be_positive_ints() -> None:
    with pytest.raises(ValueError, match="out_features must be a positive int, got 0"):
        ConvEncoder((1, 8, 8), [4], 0)
    with pytest.raises(ValueError, match="in_features must be a positive int, got 2.0"):
        ConvDecoder(2.0, [4], (1, 8, 8))


# --- grid heads (for a VQ-VAE)


@pytest.mark.parametrize(("shape", "most"), SHAPES, ids=IDS)
def test_grid_heads_emit_and_take_the_last_grid(shape, most) -> None:
    enc = ConvEncoder(shape, [2] * most, out_channels=5)
    dec = ConvDecoder(None, [2] * most, shape, in_channels=5)
    h, w = enc.sizes[-1]
    assert enc.out_shape == dec.in_shape == (5, h, w)
    z = enc(torch.rand(3, *shape))
    assert z.shape == (3, 5, h, w)
    assert dec(z).shape == (3, *shape)
    assert enc.out_features is None and dec.in_features is None


def test_a_grid_head_is_a_1x1_convolution_and_a_grid_input_a_convolution() -> None:
    enc = ConvEncoder((1, 8, 8), [4], out_channels=3, final_activation="tanh")
    head = enc.net[-2]
    assert isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and head.out_channels == 3
    assert isinstance(enc.net[-1], nn.Tanh)
    dec = ConvDecoder(None, [4], (1, 8, 8), in_channels=3, kernel_size=5)
    first = dec.net[0]
    assert isinstance(first, nn.Conv2d) and (first.in_channels, first.kernel_size) == (3, (5, 5))


def test_grid_heads_round_trip_through_their_config_and_linear_configs_keep_their_keys() -> None:
    from autoenc.networks import build_network

    enc = ConvEncoder((1, 12, 10), [4, 8], out_channels=6, norm="group", groups=2)
    dec = ConvDecoder(None, [8, 4], (1, 12, 10), in_channels=6)
    x = torch.rand(2, 1, 12, 10)
    for net, inputs in ((enc, x), (dec, enc(x))):
        config = json.loads(json.dumps({"type": type(net).__name__, **net.config}))
        rebuilt = build_network(config)
        assert rebuilt.config == net.config
        rebuilt.load_state_dict(net.state_dict())
        assert torch.equal(rebuilt(inputs), net(inputs))
    assert "out_channels" not in ConvEncoder((1, 8, 8), [4], 2).config
    assert "in_channels" not in ConvDecoder(2, [4], (1, 8, 8)).config


def test_a_head_needs_exactly_one_of_width_and_channels() -> None:
    with pytest.raises(ValueError, match="give one of out_features .* and out_channels"):
        ConvEncoder((1, 8, 8), [4])
    with pytest.raises(ValueError, match=r"got out_features=2, out_channels=3"):
        ConvEncoder((1, 8, 8), [4], 2, out_channels=3)
    with pytest.raises(ValueError, match="give one of in_features .* and in_channels"):
        ConvDecoder(None, [4], (1, 8, 8))
    with pytest.raises(ValueError, match="in_channels must be a positive int, got 0"):
        ConvDecoder(None, [4], (1, 8, 8), in_channels=0)
    dec = ConvDecoder(None, [4], (1, 8, 8), in_channels=3)
    with pytest.raises(ValueError, match=r"ConvDecoder expects input of shape \(b, 3, 4, 4\)"):
        dec(torch.rand(2, 48))


# --- MLP heads


def test_hidden_widths_make_the_linear_heads_mlps_with_the_announced_sizes() -> None:
    enc = ConvEncoder((1, 12, 10), [4, 8], 6, hidden=[16, 5])
    dec = ConvDecoder(3, [8, 4], (1, 12, 10), hidden=[7])
    linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8 * 3 * 3, 16), (16, 5), (5, 6)]
    linears = [m for m in dec.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 7), (7, 8 * 3 * 3)]
    x = torch.rand(2, 1, 12, 10)
    assert enc(x).shape == (2, 6) and dec(torch.rand(2, 3)).shape == (2, 1, 12, 10)
    # Without hidden widths the head is the one Linear it was: saved models keep their keys.
    plain = ConvEncoder((1, 12, 10), [4, 8], 6)
    assert isinstance(plain.net[-1], nn.Linear) and "hidden" not in plain.config
    assert "hidden" not in ConvDecoder(3, [8, 4], (1, 12, 10)).config


def test_mlp_heads_round_trip_through_save_and_load(tmp_path) -> None:
    vae = GaussianVAE(
        ConvEncoder((1, 12, 10), [4, 8], 2 * LATENT, hidden=[16]),
        ConvDecoder(LATENT, [8, 4], (1, 12, 10), hidden=[16, 9]),
        LATENT,
    )
    loaded = autoenc.load(autoenc.save(vae, tmp_path / "vae.pt"))
    assert loaded.config == vae.config and loaded.config["decoder"]["hidden"] == [16, 9]
    x, eps = _binary((1, 12, 10)), torch.randn(4, LATENT)
    torch.testing.assert_close(loaded(x, eps=eps).params, vae(x, eps=eps).params, rtol=0, atol=0)


def test_hidden_widths_are_checked_and_refused_beside_a_grid() -> None:
    for bad in ([0], [2.5], "16", 16):
        with pytest.raises(ValueError, match="hidden must be a list of positive ints"):
            ConvEncoder((1, 8, 8), [4], 2, hidden=bad)
    with pytest.raises(ValueError, match="hidden widens the linear head, which out_channels"):
        ConvEncoder((1, 8, 8), [4], out_channels=3, hidden=[5])
    with pytest.raises(ValueError, match="hidden widens the linear head, which in_channels"):
        ConvDecoder(None, [4], (1, 8, 8), in_channels=3, hidden=[5])
