"""MLP building blocks: :func:`mlp`, :class:`Encoder` and :class:`Decoder`.

Each block is built from plain arguments (widths, an activation name, ...) and keeps them in
``config``, a JSON-able dict, so a model can be saved without pickling code and rebuilt from the
file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from einops.layers.torch import Rearrange
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "mlp", "Encoder", "Decoder", "fused_inference"]

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


# oneDNN's names for the activations it applies to a matrix product's output before rounding it.
_FUSED = {
    nn.ReLU: "relu",
    nn.SiLU: "swish",
    nn.GELU: "gelu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
}


def _fusion_available(dtype: torch.dtype) -> bool:
    mkldnn = torch.ops.mkldnn
    if not (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise")):
        return False
    return dtype != torch.bfloat16 or bool(mkldnn._is_mkldnn_bf16_supported())


def fused_inference(
    module: nn.Module, dtype: torch.dtype = torch.bfloat16
) -> Callable[[Tensor], Tensor] | None:
    """``module``'s forward for inference on a CPU, each ``Linear`` fused with its activation.

    Each ``Linear`` and the activation after it (ReLU, SiLU, GELU, tanh or sigmoid) run as one
    oneDNN call, the kernel ``torch.compile`` uses on a CPU: the activation is applied before the
    product is rounded to ``dtype``, and no pass over memory is spent on the bias or the
    activation. The weights are cast to ``dtype`` once, here, so build it again after they change.
    It computes what ``module`` computes in eval mode without gradients (``Dropout`` is skipped),
    to ``dtype``'s rounding.

    Args:
        module: A :class:`Decoder`, or an ``nn.Sequential`` of ``Linear`` layers, those
            activations, ``Dropout`` and ``Identity``.
        dtype: The dtype of the products and the output: ``torch.bfloat16`` or ``torch.float32``.

    Returns:
        A function of ``(b, in_features)`` inputs, or ``None`` where this does not apply: other
        layers or activations, a forward of a subclass or a forward hook (it would be skipped),
        weights off the CPU or of another dtype than float32, or a torch without oneDNN's
        kernel for ``dtype``.

    Example:
        >>> dec = Decoder(4, [8], (1, 2, 3), activation="silu").eval()
        >>> fused = fused_inference(dec, torch.float32)
        >>> z = torch.randn(5, 4)
        >>> fused is None or torch.allclose(fused(z), dec(z), atol=1e-5)
        True
    """
    net, shape = (module.net, module.out_shape) if isinstance(module, Decoder) else (module, None)
    own_forward = type(module).forward in (Decoder.forward, nn.Sequential.forward)
    hooked = any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())
    if not (isinstance(net, nn.Sequential) and own_forward and _fusion_available(dtype)) or hooked:
        return None  # a forward or hook of the user's would be skipped
    layers = [m for m in net if not isinstance(m, (nn.Dropout, nn.Identity))]
    steps: list[tuple[Tensor, Tensor | None, str, str]] = []
    for i, layer in enumerate(layers):
        if type(layer) in _FUSED and i > 0 and isinstance(layers[i - 1], nn.Linear):
            continue  # fused into the Linear before it
        if not (
            isinstance(layer, nn.Linear)
            and type(layer).forward is nn.Linear.forward
            and layer.weight.device.type == "cpu"
            and layer.weight.dtype == torch.float32
        ):
            return None
        after = layers[i + 1] if i + 1 < len(layers) else None
        attr = _FUSED.get(type(after), "none")
        algorithm = getattr(after, "approximate", "") if attr == "gelu" else ""
        bias = None if layer.bias is None else layer.bias.detach().to(dtype)
        steps.append((layer.weight.detach().to(dtype), bias, attr, algorithm))
    if not steps:
        return None
    in_features = steps[0][0].shape[1]

    def forward(x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != in_features:
            raise ValueError(f"expected input of shape (b, {in_features}), got {tuple(x.shape)}")
        h = x.to(dtype)
        for weight, bias, attr, algorithm in steps:
            h = torch.ops.mkldnn._linear_pointwise(h, weight, bias, attr, [], algorithm)
        return h if shape is None else h.unflatten(1, shape)  # (b, d) -> (b, *out_shape)

    return forward
