"""Binarization of image intensities for the Bernoulli likelihood.

Example:
    >>> import torch
    >>> binarize(torch.tensor([0, 127, 128, 255], dtype=torch.uint8))
    tensor([0., 0., 1., 1.])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["binarize", "dynamic_binarize"]


def _as_probabilities(x: Tensor, name: str = "x") -> Tensor:
    """Pixel intensities in [0, 1]: uint8 is divided by 255, floats must already be in range."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        return x.to(torch.get_default_dtype()) / 255
    if not x.is_floating_point():
        raise TypeError(f"{name} must be uint8 (0-255) or floating point in [0, 1], got {x.dtype}")
    if x.numel():
        lo, hi = torch.aminmax(x)
        if lo < 0 or hi > 1:
            raise ValueError(
                f"{name} must hold intensities in [0, 1], got values in [{float(lo)}, {float(hi)}]"
            )
    return x


def binarize(x: Tensor, threshold: float = 0.5) -> Tensor:
    """Fixed binarization: 1 where the intensity is above ``threshold``, else 0.

    Args:
        x: Images, uint8 in 0..255 or floating point in [0, 1], any shape.
        threshold: Intensity in [0, 1]; for uint8, compared with ``x / 255``.

    Returns:
        A tensor of 0s and 1s of ``x``'s shape: ``x``'s dtype if floating point, else the default
        float dtype.

    Raises:
        TypeError: If ``x`` is neither uint8 nor floating point.
        ValueError: If ``threshold`` or a float ``x`` is outside [0, 1].

    Example:
        >>> binarize(torch.tensor([0, 127, 128, 255], dtype=torch.uint8))
        tensor([0., 0., 1., 1.])
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number in [0, 1], got {threshold!r}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    p = _as_probabilities(x)
    return (p > threshold).to(p.dtype)


def dynamic_binarize(x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    """Dynamic binarization: each pixel becomes 1 with probability equal to its intensity.

    Draw afresh for every batch (pass it to ``fit`` as ``transform=``) so that a Bernoulli
    likelihood sees binary data without a fixed binarization to overfit. For reproducible draws
    pass a seeded generator, e.g. ``functools.partial(dynamic_binarize, generator=g)``.

    Args:
        x: Images, uint8 in 0..255 or floating point in [0, 1], any shape.
        generator: Random generator on ``x``'s device; ``None`` uses the global one.

    Returns:
        A tensor of 0s and 1s of ``x``'s shape: ``x``'s dtype if floating point, else the default
        float dtype.

    Raises:
        TypeError: If ``x`` is neither uint8 nor floating point.
        ValueError: If a float ``x`` is outside [0, 1], or ``generator`` is on another device.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> dynamic_binarize(torch.full((2, 3), 0.5), generator=g).shape
        torch.Size([2, 3])
    """
    p = _as_probabilities(x)
    if generator is not None and generator.device.type != p.device.type:
        raise ValueError(
            f"generator is on {generator.device} but x is on {p.device}; create the generator "
            f"with torch.Generator(device=x.device)"
        )
    return torch.bernoulli(p, generator=generator)
