"""Convolutional building blocks: :class:`ConvEncoder` and :class:`ConvDecoder`.

They compose like :class:`~autoenc.Encoder` and :class:`~autoenc.Decoder`: the encoder maps images
``(b, C, H, W)``, or their flat form ``(b, C * H * W)``, to ``(b, out_features)``; the decoder
maps ``(b, in_features)`` to ``(b, C, H, W)``. Both keep their plain arguments in ``config``, so a
model built from them saves and loads without pickled code.

For a :class:`~autoenc.VQVAE` both can work on the last grid instead of a vector:
``ConvEncoder(..., out_channels=D)`` ends in a 1x1 convolution to ``(b, D, h, w)`` and
``ConvDecoder(None, ..., in_channels=D)`` starts from such a grid.

Each stage halves the height and the width, rounding up, so any image size works (28x28 goes
14x14, 7x7, 4x4). The decoder computes the same sizes from its ``out_shape`` and sets each
transposed convolution's ``output_padding`` to land on them, so its output is never cropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from einops.layers.torch import Rearrange
from torch import Tensor, nn

from autoenc._utils import check_int
from autoenc.networks.mlp import ACTIVATIONS, mlp

__all__ = ["ConvEncoder", "ConvDecoder"]

_NORMS = ("batch", "group")


# --- helpers


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _one_of(width: Any, width_arg: str, channels: Any, channels_arg: str) -> None:
    """Exactly one of a vector width and a grid's channels, a positive int."""
    if (width is None) == (channels is None):
        raise ValueError(
            f"give one of {width_arg} (a vector) and {channels_arg} (a grid), got "
            f"{width_arg}={width!r}, {channels_arg}={channels!r}"
        )
    if width is None:
        check_int(channels, channels_arg)
    else:
        check_int(width, width_arg)


def _image_shape(shape: Any, arg: str) -> tuple[int, int, int]:
    dims = tuple(shape) if isinstance(shape, Sequence) and not isinstance(shape, str) else ()
    if len(dims) != 3 or not all(_is_positive_int(d) for d in dims):
        raise ValueError(
            f"{arg} must be (channels, height, width) as three positive ints, e.g. (1, 28, 28), "
            f"got {shape!r}"
        )
    return dims


def _check_channels(channels: Any) -> tuple[int, ...]:
    ok = isinstance(channels, Sequence) and not isinstance(channels, str) and len(channels) > 0
    if not ok or not all(_is_positive_int(c) for c in channels):
        raise ValueError(
            "channels must be a non-empty list of positive ints, one per stride-2 stage "
            f"(e.g. [32, 64]), got {channels!r}"
        )
    return tuple(channels)


def _check_options(
    channels: tuple[int, ...], blocks: Any, norm: Any, groups: Any, activation: Any,
    kernel_size: Any, final_activation: Any,
) -> dict[str, Any]:  # fmt: skip
    """Check the keyword arguments both networks take; return them by name, for ``config``."""
    check_int(blocks, "blocks_per_stage", minimum=0)
    if norm is not None and norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS} or None, got {norm!r}")
    check_int(groups, "groups")
    if norm == "group" and any(c % groups for c in channels):
        raise ValueError(
            f"norm='group' splits channels into groups={groups}, so every entry of channels must "
            f"be a multiple of it, got channels={list(channels)}; change groups or channels"
        )
    for arg, name in (("activation", activation), ("final_activation", final_activation)):
        optional = arg == "final_activation"
        if not (optional and name is None) and name not in ACTIVATIONS:
            allowed = f"{sorted(ACTIVATIONS)}{' or None' if optional else ''}"
            raise ValueError(f"{arg} must be one of {allowed}, got {name!r}")
    if not _is_positive_int(kernel_size) or kernel_size % 2 != 1:
        raise ValueError(
            "kernel_size must be an odd positive int (3, 5, ...), so that a padding of "
            f"kernel_size // 2 halves every size rounding up, got {kernel_size!r}"
        )
    return {
        "blocks_per_stage": blocks, "norm": norm, "groups": groups, "activation": activation,
        "kernel_size": kernel_size, "final_activation": final_activation,
    }  # fmt: skip


def _check_hidden(hidden: Any, grid: bool, grid_arg: str) -> list[int]:
    """The widths of a linear head's hidden layers; a grid end has no linear head to widen."""
    ok = isinstance(hidden, Sequence) and not isinstance(hidden, str)
    if not ok or not all(_is_positive_int(h) for h in hidden):
        raise ValueError(f"hidden must be a list of positive ints, e.g. [512], got {hidden!r}")
    if hidden and grid:
        raise ValueError(f"hidden widens the linear head, which {grid_arg} replaces; drop one")
    return list(hidden)


def _head(in_features: int, hidden: list[int], out_features: int, activation: str) -> nn.Module:
    """A ``Linear``, or with ``hidden`` widths an MLP (:func:`~autoenc.mlp`)."""
    if not hidden:  # a bare Linear keeps the state-dict keys of models saved without hidden
        return nn.Linear(in_features, out_features)
    return mlp(in_features, hidden, out_features, activation=activation)


def _stage_sizes(height: int, width: int, stages: int) -> list[tuple[int, int]]:
    """``(height, width)`` before the first stage and after each one: ``ceil(n / 2)`` per stage."""
    sizes = [(height, width)]
    while min(sizes[-1]) >= 2:  # halving needs two pixels; a 1-pixel side would stay 1
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    if stages > len(sizes) - 1:
        trail = " -> ".join(f"{h}x{w}" for h, w in sizes)
        raise ValueError(
            f"channels has {stages} entries (one stride-2 stage each) but a {height}x{width} image "
            f"allows at most {len(sizes) - 1}: each stage halves the height and width rounding up "
            f"({trail}) and needs at least 2 pixels on each side; use at most {len(sizes) - 1} "
            "entries in channels or larger images"
        )
    return sizes[: stages + 1]


def _norm_act(channels: int, opts: dict[str, Any]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    if opts["norm"] == "batch":
        layers.append(nn.BatchNorm2d(channels))
    elif opts["norm"] == "group":
        layers.append(nn.GroupNorm(opts["groups"], channels))
    return [*layers, ACTIVATIONS[opts["activation"]]()]


# --- small modules


class _ResidualBlock(nn.Module):
    """``x + f(x)``, ``f`` being two ``[norm] -> activation -> conv`` steps that keep the size.

    The pre-activation order of He et al. (2016), *Identity Mappings in Deep Residual Networks*.
    """

    def __init__(self, channels: int, opts: dict[str, Any]) -> None:
        super().__init__()
        k, layers = opts["kernel_size"], []
        for bias in (opts["norm"] is None, True):  # a norm after the first conv: no bias there
            layers += [
                *_norm_act(channels, opts),
                nn.Conv2d(channels, channels, k, 1, k // 2, bias=bias),
            ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Add the residual branch to ``x``, shape ``(b, c, h, w)``."""
        return x + self.net(x)


# --- main classes


class ConvEncoder(nn.Module):
    """A stride-2 convolution per entry of ``channels``, then a ``Linear``:
    ``(b, C, H, W) -> (b, out_features)``.

    Each stage is ``Conv2d(stride=2) -> [norm] -> activation`` followed by ``blocks_per_stage``
    residual blocks; the last grid is flattened into the ``Linear``. The input may also be
    already flat, ``(b, C * H * W)``. ``sizes`` lists the grid before and after each stage;
    ``out_shape`` is the shape of one output, ``(out_features,)``.

    With ``out_channels`` instead of ``out_features`` a 1x1 convolution replaces the flatten and
    the ``Linear``: the output is the last grid, ``(b, out_channels, h, w)`` (a
    :class:`~autoenc.VQVAE`'s encoder), and ``out_shape`` is ``(out_channels, h, w)``.

    Args:
        in_shape: Shape of one image, ``(C, H, W)``; any height and width.
        channels: Output channels of each stage, e.g. ``[32, 64]``.
        out_features: Output width (``2 * latent_dim`` for a :class:`~autoenc.GaussianVAE`);
            ``None`` with ``out_channels``.
        out_channels: Channels of a grid output instead (give one of the two).
        hidden: Widths of hidden layers between the last grid and ``out_features`` (the
            ``Linear`` becomes an MLP); empty by default.
        blocks_per_stage: Residual blocks after each stage's downsampling.
        norm: ``"batch"``, ``"group"`` or ``None``: normalization after each convolution.
        groups: Number of groups for ``norm="group"``; must divide every entry of ``channels``.
        activation: Hidden activation name (a key of ``autoenc.networks.ACTIVATIONS``).
        kernel_size: Odd kernel size of every convolution.
        final_activation: Activation after the ``Linear`` or the 1x1 convolution (``None`` for
            none).

    Raises:
        ValueError: On a bad argument, both or neither of ``out_features`` and ``out_channels``,
            or more stages than the image size allows (a stage needs at least 2 pixels on each
            side).

    Example:
        >>> import torch
        >>> enc = ConvEncoder((1, 28, 28), [32, 64], 20)
        >>> enc(torch.zeros(5, 1, 28, 28)).shape, enc.sizes
        (torch.Size([5, 20]), [(28, 28), (14, 14), (7, 7)])
        >>> ConvEncoder((1, 28, 28), [32, 64], out_channels=16).out_shape
        (16, 7, 7)

        Count the parameters with ``sum(p.numel() for p in enc.parameters())``; for one stage of
        4 channels on 8x8 images, a 3x3 convolution and a ``Linear`` from the 4x4 grid:

        >>> small = ConvEncoder((1, 8, 8), [4], 6)
        >>> sum(p.numel() for p in small.parameters()) == (4 * 1 * 3 * 3 + 4) + (4 * 4 * 4 * 6 + 6)
        True
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: Sequence[int],
        out_features: int | None = None,
        *,
        out_channels: int | None = None,
        hidden: Sequence[int] = (),
        blocks_per_stage: int = 0,
        norm: str | None = None,
        groups: int = 8,
        activation: str = "relu",
        kernel_size: int = 3,
        final_activation: str | None = None,
    ) -> None:
        super().__init__()
        self.in_shape = _image_shape(in_shape, "in_shape")
        chans = _check_channels(channels)
        opts = _check_options(
            chans, blocks_per_stage, norm, groups, activation, kernel_size, final_activation
        )
        _one_of(out_features, "out_features", out_channels, "out_channels")
        widths = _check_hidden(hidden, out_channels is not None, "out_channels")
        self.out_features, self.out_channels = out_features, out_channels
        c, h, w = self.in_shape
        self.in_features = c * h * w
        self.sizes = _stage_sizes(h, w, len(chans))
        self.unflatten = Rearrange("b (c h w) -> b c h w", c=c, h=h, w=w)
        layers: list[nn.Module] = []
        for c_in, c_out in zip((c, *chans[:-1]), chans, strict=True):
            # no bias before a norm: the norm's shift takes its place
            down = nn.Conv2d(c_in, c_out, kernel_size, 2, kernel_size // 2, bias=norm is None)
            layers += [down, *_norm_act(c_out, opts)]  # (b, c_out, ceil(h / 2), ceil(w / 2))
            layers += [_ResidualBlock(c_out, opts) for _ in range(blocks_per_stage)]
        h_last, w_last = self.sizes[-1]
        if out_channels is None:
            self.out_shape: tuple[int, ...] = (out_features,)
            layers.append(Rearrange("b c h w -> b (c h w)"))  # (b, c * h * w)
            flat = chans[-1] * h_last * w_last
            layers.append(_head(flat, widths, out_features, activation))  # (b, out)
        else:
            self.out_shape = (out_channels, h_last, w_last)
            layers.append(nn.Conv2d(chans[-1], out_channels, 1))  # (b, out_channels, h, w)
        if final_activation is not None:
            layers.append(ACTIVATIONS[final_activation]())
        self.net = nn.Sequential(*layers)
        self.final_activation = final_activation
        self.config: dict[str, Any] = {
            "in_shape": list(self.in_shape),
            "channels": list(chans),
            "out_features": out_features,
            # only when set, so configs of linear heads read as before
            **({} if out_channels is None else {"out_channels": out_channels}),
            **({"hidden": widths} if widths else {}),
            **opts,
        }

    def forward(self, x: Tensor) -> Tensor:
        """Unflatten ``x`` when it is flat and run the network.

        Args:
            x: ``(b, C, H, W)``, or already flat ``(b, C * H * W)``.

        Returns:
            ``(b, out_features)``, or ``(b, out_channels, h, w)``.

        Raises:
            ValueError: If ``x`` has neither shape.
        """
        if x.dim() == 2 and x.shape[1] == self.in_features:
            x = self.unflatten(x)  # (b, C * H * W) -> (b, C, H, W)
        elif tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"ConvEncoder expects input of shape (b, {', '.join(map(str, self.in_shape))}) or "
                f"(b, {self.in_features}), got {tuple(x.shape)}"
            )
        return self.net(x)


class ConvDecoder(nn.Module):
    """A ``Linear`` to the smallest grid, a transposed convolution per entry of ``channels`` and a
    last convolution: ``(b, in_features) -> (b, C, H, W)``.

    The mirror of :class:`ConvEncoder`: ``channels`` lists the stages from the smallest grid up
    (``[64, 32]`` mirrors an encoder's ``[32, 64]``), each stage being ``blocks_per_stage``
    residual blocks then ``ConvTranspose2d(stride=2) -> [norm] -> activation``. The grid
    sizes are the encoder's for ``out_shape``, in reverse (``sizes``), so the output is exactly
    ``(C, H, W)``. The last convolution emits the likelihood's parameters, with no activation by
    default (logits, as the Bernoulli likelihoods expect). ``in_shape`` is the shape of one
    input, ``(in_features,)``.

    With ``in_features=None`` and ``in_channels`` the input is the smallest grid itself,
    ``(b, in_channels, h, w)`` (a :class:`~autoenc.VQVAE`'s decoder): a convolution replaces the
    ``Linear``, and ``in_shape`` is ``(in_channels, h, w)``.

    Args:
        in_features: Input (latent) width; ``None`` with ``in_channels``.
        channels: Input channels of each stage, smallest grid first, e.g. ``[64, 32]``.
        out_shape: Shape of one image, ``(C, H, W)``; any height and width.
        blocks_per_stage: Residual blocks before each stage's upsampling.
        norm: ``"batch"``, ``"group"`` or ``None``: normalization after each upsampling.
        groups: Number of groups for ``norm="group"``; must divide every entry of ``channels``.
        activation: Hidden activation name (a key of ``autoenc.networks.ACTIVATIONS``).
        kernel_size: Odd kernel size of every convolution.
        final_activation: Activation after the last convolution: ``None`` for logits,
            ``"sigmoid"`` for pixel intensities.
        in_channels: Channels of a grid input instead of ``in_features`` (give one of the two).
        hidden: Widths of hidden layers between ``in_features`` and the smallest grid (the
            ``Linear`` becomes an MLP); empty by default.

    Raises:
        ValueError: On a bad argument, both or neither of ``in_features`` and ``in_channels``,
            or more stages than the image size allows.

    Example:
        >>> import torch
        >>> dec = ConvDecoder(10, [64, 32], (1, 28, 28))
        >>> dec(torch.zeros(5, 10)).shape, dec.sizes
        (torch.Size([5, 1, 28, 28]), [(7, 7), (14, 14), (28, 28)])
        >>> grid = ConvDecoder(None, [64, 32], (1, 28, 28), in_channels=16)
        >>> grid.in_shape, grid(torch.zeros(5, 16, 7, 7)).shape
        ((16, 7, 7), torch.Size([5, 1, 28, 28]))

        Count the parameters with ``sum(p.numel() for p in dec.parameters())``; for one stage of
        4 channels to 8x8 images: a ``Linear`` to the 4x4 grid, a 3x3 transposed convolution and
        the last 3x3 convolution:

        >>> small = ConvDecoder(2, [4], (1, 8, 8))
        >>> linear, up, last = 2 * 4 * 4 * 4 + 4 * 4 * 4, 4 * 4 * 3 * 3 + 4, 1 * 4 * 3 * 3 + 1
        >>> sum(p.numel() for p in small.parameters()) == linear + up + last
        True
    """

    def __init__(
        self,
        in_features: int | None,
        channels: Sequence[int],
        out_shape: Sequence[int],
        *,
        blocks_per_stage: int = 0,
        norm: str | None = None,
        groups: int = 8,
        activation: str = "relu",
        kernel_size: int = 3,
        final_activation: str | None = None,
        in_channels: int | None = None,
        hidden: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.out_shape = _image_shape(out_shape, "out_shape")
        chans = _check_channels(channels)
        opts = _check_options(
            chans, blocks_per_stage, norm, groups, activation, kernel_size, final_activation
        )
        _one_of(in_features, "in_features", in_channels, "in_channels")
        widths = _check_hidden(hidden, in_channels is not None, "in_channels")
        self.in_features, self.in_channels = in_features, in_channels
        c, h, w = self.out_shape
        self.sizes = _stage_sizes(h, w, len(chans))[::-1]
        h0, w0 = self.sizes[0]
        if in_channels is None:
            self.in_shape: tuple[int, ...] = (in_features,)
            layers: list[nn.Module] = [
                _head(in_features, widths, chans[0] * h0 * w0, activation),  # (b, c0 * h0 * w0)
                Rearrange("b (c h w) -> b c h w", c=chans[0], h=h0, w=w0),  # (b, c0, h0, w0)
            ]
        else:
            self.in_shape = (in_channels, h0, w0)
            layers = [nn.Conv2d(in_channels, chans[0], kernel_size, padding=kernel_size // 2)]
        layers.append(ACTIVATIONS[activation]())
        for c_in, c_out, (h_out, w_out) in zip(
            chans, (*chans[1:], chans[-1]), self.sizes[1:], strict=True
        ):
            layers += [_ResidualBlock(c_in, opts) for _ in range(blocks_per_stage)]
            # With an odd kernel k, stride 2 and padding k // 2, a transposed conv maps n to
            # 2n - 1 + output_padding: one more for an even target size, none for an odd one.
            pad = (1 - h_out % 2, 1 - w_out % 2)
            up = nn.ConvTranspose2d(
                c_in, c_out, kernel_size, 2, kernel_size // 2, pad, bias=norm is None
            )
            layers += [up, *_norm_act(c_out, opts)]  # (b, c_out, h_out, w_out)
        last = nn.Conv2d(chans[-1], c, kernel_size, padding=kernel_size // 2)
        layers.append(last)  # (b, C, H, W)
        if final_activation is not None:
            layers.append(ACTIVATIONS[final_activation]())
        self.net = nn.Sequential(*layers)
        self.final_activation = final_activation
        self.config: dict[str, Any] = {
            "in_features": in_features,
            "channels": list(chans),
            "out_shape": list(self.out_shape),
            **opts,
            **({} if in_channels is None else {"in_channels": in_channels}),
            **({"hidden": widths} if widths else {}),
        }

    def forward(self, z: Tensor) -> Tensor:
        """Map ``z`` to images.

        Args:
            z: ``(b, in_features)``, or the grid ``(b, in_channels, h, w)``.

        Returns:
            ``(b, C, H, W)``.

        Raises:
            ValueError: If ``z`` is not ``(b, *in_shape)``.
        """
        if tuple(z.shape[1:]) != self.in_shape:
            raise ValueError(
                f"ConvDecoder expects input of shape (b, {', '.join(map(str, self.in_shape))}), "
                f"got {tuple(z.shape)}"
            )
        return self.net(z)
