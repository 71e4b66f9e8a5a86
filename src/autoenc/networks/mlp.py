"""MLP building blocks: :func:`mlp`, :class:`Encoder` and :class:`Decoder`.

Each block is built from plain arguments (widths, an activation name, ...) and keeps them in
``config``, a JSON-able dict, so a model can be saved without pickling code and rebuilt from the
file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from einops.layers.torch import Rearrange
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "mlp", "Encoder", "Decoder"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}
"""Activation names accepted by the builders, mapped to their ``torch.nn`` classes."""

_NORMS = ("batch", "layer")


def make_activation(name: str | None, arg: str) -> nn.Module | None:
    if name is None:
        return None
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"{arg} must be one of {sorted(ACTIVATIONS)} or None, got {name!r}")
    return ACTIVATIONS[name]()


def as_shape(shape: int | Sequence[int], arg: str) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ValueError(f"{arg} must be a positive int or a tuple of positive ints, got {shape!r}")
    return dims


def _is_width(w: Any) -> bool:
    return isinstance(w, int) and not isinstance(w, bool) and w > 0


def _check_width(width: Any, arg: str) -> int:
    if not _is_width(width):
        raise ValueError(f"{arg} must be a positive int, got {width!r}")
    return width


def check_widths(hidden: Any) -> tuple[int, ...]:
    if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence):
        raise ValueError(
            "hidden must be a list of positive ints (e.g. [256, 64], or [] for none), "
            f"got {hidden!r}"
        )
    widths = tuple(hidden)
    if not all(_is_width(w) for w in widths):
        raise ValueError(f"hidden widths must be positive ints, got {list(hidden)!r}")
    return widths


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    activation: str | None = "relu",
    norm: str | None = None,
    dropout: float = 0.0,
    final_activation: str | None = None,
) -> nn.Sequential:
    """Build ``Linear -> [norm] -> activation -> [dropout]`` blocks and a last ``Linear``.

    Args:
        in_features: Width of the input.
        hidden: Widths of the hidden layers, in order (may be empty).
        out_features: Width of the output.
        activation: Name of the activation after each hidden layer (see ``ACTIVATIONS``);
            ``None`` for none.
        norm: ``"batch"``, ``"layer"`` or ``None``: normalization after each hidden ``Linear``.
        dropout: Dropout probability after each hidden activation.
        final_activation: Activation after the last ``Linear`` (``None`` for none).

    Returns:
        An ``nn.Sequential`` mapping ``(b, in_features)`` to ``(b, out_features)``.

    Raises:
        ValueError: On non-positive widths, an unknown activation or norm, or a dropout outside
            ``[0, 1)``.

    Example:
        >>> mlp(784, [256, 64], 20, final_activation="relu")  # the article's encoder
        Sequential(
          (0): Linear(in_features=784, out_features=256, bias=True)
          (1): ReLU()
          (2): Linear(in_features=256, out_features=64, bias=True)
          (3): ReLU()
          (4): Linear(in_features=64, out_features=20, bias=True)
          (5): ReLU()
        )
    """
    widths = (
        _check_width(in_features, "in_features"),
        *check_widths(hidden),
        _check_width(out_features, "out_features"),
    )
    make_activation(activation, "activation")
    if norm is not None and norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS} or None, got {norm!r}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")

    layers: list[nn.Module] = []
    for d_in, d_out in zip(widths[:-2], widths[1:-1], strict=True):
        layers.append(nn.Linear(d_in, d_out))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(d_out))
        elif norm == "layer":
            layers.append(nn.LayerNorm(d_out))
        act = make_activation(activation, "activation")
        if act is not None:
            layers.append(act)
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(widths[-2], widths[-1]))
    final = make_activation(final_activation, "final_activation")
    if final is not None:
        layers.append(final)
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """An MLP that flattens its input: ``(b, *in_shape) -> (b, out_features)``.

    It also accepts inputs that are already flat, ``(b, prod(in_shape))``.

    Args:
        in_shape: Shape of one input, e.g. ``784`` or ``(1, 28, 28)``.
        hidden: Hidden widths.
        out_features: Output width (``2 * latent_dim`` for a :class:`~autoenc.GaussianVAE`).
        activation: Hidden activation name.
        norm: ``"batch"``, ``"layer"`` or ``None``.
        dropout: Dropout probability after hidden activations.
        final_activation: Activation after the last layer (the article uses ``"relu"``).

    Example:
        >>> import torch
        >>> enc = Encoder((1, 28, 28), [256, 64], 20, final_activation="relu")
        >>> enc(torch.zeros(5, 1, 28, 28)).shape
        torch.Size([5, 20])
    """

    def __init__(
        self,
        in_shape: int | Sequence[int],
        hidden: Sequence[int],
        out_features: int,
        *,
        activation: str = "relu",
        norm: str | None = None,
        dropout: float = 0.0,
        final_activation: str | None = None,
    ) -> None:
        super().__init__()
        self.in_shape = as_shape(in_shape, "in_shape")
        self.in_features = math.prod(self.in_shape)
        self.out_features = out_features
        self.flatten = Rearrange("b ... -> b (...)")
        self.net = mlp(
            self.in_features,
            hidden,
            out_features,
            activation=activation,
            norm=norm,
            dropout=dropout,
            final_activation=final_activation,
        )
        self.config: dict[str, Any] = {
            "in_shape": list(self.in_shape),
            "hidden": list(hidden),
            "out_features": out_features,
            "activation": activation,
            "norm": norm,
            "dropout": dropout,
            "final_activation": final_activation,
        }

    def forward(self, x: Tensor) -> Tensor:
        """Flatten ``x`` when it has the shape ``(b, *in_shape)`` and run the MLP.

        Args:
            x: ``(b, *in_shape)``, or already flat ``(b, prod(in_shape))``.

        Returns:
            ``(b, out_features)``.

        Raises:
            ValueError: If ``x`` has neither shape.
        """
        if x.dim() >= 2 and tuple(x.shape[1:]) == self.in_shape:
            x = self.flatten(x)  # (b, *in_shape) -> (b, d)
        elif not (x.dim() == 2 and x.shape[1] == self.in_features):
            raise ValueError(
                f"Encoder expects input of shape (b, {', '.join(map(str, self.in_shape))}) or "
                f"(b, {self.in_features}), got {tuple(x.shape)}"
            )
        return self.net(x)


class Decoder(nn.Module):
    """An MLP that unflattens its output: ``(b, in_features) -> (b, *out_shape)``.

    Args:
        in_features: Input (latent) width.
        hidden: Hidden widths.
        out_shape: Shape of one output, e.g. ``784`` or ``(1, 28, 28)``.
        activation: Hidden activation name.
        norm: ``"batch"``, ``"layer"`` or ``None``.
        dropout: Dropout probability after hidden activations.
        final_activation: Activation after the last layer: ``"sigmoid"`` for a decoder that emits
            pixel intensities (as the article's), ``None`` for one that emits logits (for the
            Bernoulli likelihoods).

    Example:
        >>> import torch
        >>> dec = Decoder(10, [64, 256], (1, 28, 28), final_activation="sigmoid")
        >>> dec(torch.zeros(5, 10)).shape
        torch.Size([5, 1, 28, 28])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_shape: int | Sequence[int],
        *,
        activation: str = "relu",
        norm: str | None = None,
        dropout: float = 0.0,
        final_activation: str | None = None,
    ) -> None:
        super().__init__()
        self.out_shape = as_shape(out_shape, "out_shape")
        self.in_features = in_features
        self.out_features = math.prod(self.out_shape)
        self.net = mlp(
            in_features,
            hidden,
            self.out_features,
            activation=activation,
            norm=norm,
            dropout=dropout,
            final_activation=final_activation,
        )
        # einops has no literal pattern for "unflatten to a shape of any rank"; torch does.
        self.unflatten = nn.Unflatten(1, self.out_shape)
        self.final_activation = final_activation
        self.config: dict[str, Any] = {
            "in_features": in_features,
            "hidden": list(hidden),
            "out_shape": list(self.out_shape),
            "activation": activation,
            "norm": norm,
            "dropout": dropout,
            "final_activation": final_activation,
        }

    def forward(self, z: Tensor) -> Tensor:
        """Run the MLP on ``z`` and unflatten its output.

        Args:
            z: ``(b, in_features)``.

        Returns:
            ``(b, *out_shape)``.

        Raises:
            ValueError: If ``z`` is not ``(b, in_features)``.
        """
        if z.dim() != 2 or z.shape[1] != self.in_features:
            raise ValueError(
                f"Decoder expects input of shape (b, {self.in_features}), got {tuple(z.shape)}"
            )
        return self.unflatten(self.net(z))  # (b, d) -> (b, *out_shape)
