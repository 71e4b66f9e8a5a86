"""Batches as pictures: the input checks every picture function shares, image layout, PNG files.

Inputs may be tensors or NumPy arrays, taken as :func:`autoenc.fit` takes data: ``uint8`` pixels
are scaled by 1/255, and a model gets them on its device in its dtype. Flat data such as
``(b, 784)`` is shown as images of ``image_shape=(1, 28, 28)``, of the decoder's ``out_shape``
when it has two or three dims, or, for square one-channel images, of its own size.

torchvision and Pillow are imported on first use, never with this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from autoenc._utils import model_device, model_dtype
from autoenc.data.conversion import to_float

__all__ = ["as_images", "image_grid", "to_uint8", "save_image"]


def check_batch(x: Any, arg: str) -> Tensor:
    """``x`` as a tensor batch ``(b, ...)`` of floats, ``uint8`` pixels or bools, unconverted (a
    NumPy array is wrapped, not copied)."""
    if type(x).__module__ == "numpy" and hasattr(x, "dtype"):
        x = torch.as_tensor(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor or a NumPy array, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{arg} must be a non-empty batch (b, ...), got shape {tuple(x.shape)}")
    to_float(x[:0], x.device, what=arg)  # raises the TypeError of fit for other dtypes
    return x.detach()


def float_batch(x: Any, arg: str, model: nn.Module | None = None) -> Tensor:
    """:func:`check_batch`, then floats as ``fit`` makes them (``uint8`` / 255): on the model's
    device in its dtype when a model is given, else where ``x`` is."""
    x = check_batch(x, arg)
    if model is None:
        return to_float(x, x.device, what=arg)
    device = model_device(model)
    if device.type == "cpu":
        x = x.cpu()  # a blocking copy: to_float's non-blocking move is meant for host to device
    return to_float(x, device, dtype=model_dtype(model), what=arg)


def _image_shape(image_shape: Sequence[int] | None, model: Any) -> tuple[int, ...] | None:
    if image_shape is None:
        out_shape = getattr(getattr(model, "decoder", None), "out_shape", None)
        if out_shape is not None and len(out_shape) in (2, 3):
            image_shape = out_shape
        else:
            return None
    shape = tuple(image_shape)
    if len(shape) not in (2, 3) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(
            f"image_shape must be (C, H, W) or (H, W) with positive ints, got {image_shape!r}"
        )
    return shape if len(shape) == 3 else (1, *shape)


def as_images(x: Tensor, image_shape: Sequence[int] | None = None, *, model: Any = None) -> Tensor:
    """Reshape a batch to images ``(b, C, H, W)``.

    The shape comes from ``image_shape``, else from ``model.decoder.out_shape`` when that has two
    or three dims, else from ``x`` itself: ``(b, C, H, W)`` is kept, ``(b, H, W)`` gets one
    channel, and flat ``(b, d)`` with a square ``d`` becomes ``(b, 1, √d, √d)``.

    Args:
        x: A batch, ``(b, ...)``; ``uint8`` pixels are scaled by 1/255.
        image_shape: ``(C, H, W)`` or ``(H, W)`` of one image.
        model: A model whose decoder may know the image shape.

    Returns:
        The batch as floats ``(b, C, H, W)`` (a view of floating-point ``x`` when possible).

    Raises:
        ValueError: If the shape cannot be told or does not match ``x``.

    Example:
        >>> as_images(torch.zeros(2, 784)).shape
        torch.Size([2, 1, 28, 28])
    """
    x = float_batch(x, "x")
    shape = _image_shape(image_shape, model)
    b = x.shape[0]
    if shape is not None:
        if x[0].numel() != math.prod(shape):
            raise ValueError(
                f"cannot show x of shape {tuple(x.shape)} as images of shape {shape}: "
                f"{x[0].numel()} values per example, expected {math.prod(shape)}"
            )
        return x.reshape(b, *shape)
    if x.dim() == 4:
        return x
    if x.dim() == 3:
        return x.unsqueeze(1)  # (b, h, w) -> (b, 1, h, w)
    if x.dim() == 2 and math.isqrt(x.shape[1]) ** 2 == x.shape[1]:
        side = math.isqrt(x.shape[1])
        return x.reshape(b, 1, side, side)
    raise ValueError(
        f"cannot tell the image shape of a batch shaped {tuple(x.shape)}; pass "
        "image_shape=(C, H, W)"
    )


def image_grid(
    images: Tensor,
    *,
    nrow: int = 8,
    image_shape: Sequence[int] | None = None,
    model: Any = None,
    padding: int = 2,
    pad_value: float = 1.0,
    value_range: tuple[float, float] | None = None,
) -> Tensor:
    """Lay a batch out as one picture with ``nrow`` images per row.

    Args:
        images: A batch of images or of flat data (see :func:`as_images`).
        nrow: Images per row.
        image_shape: Shape of one image, for flat data.
        model: A model whose decoder may know the image shape.
        padding: Pixels between images.
        pad_value: Colour of the padding (``1.0``: white, as in the article's Visdom grids).
        value_range: ``(low, high)`` of the data, mapped to ``[0, 1]``; by default the data is
            taken to be in ``[0, 1]`` already. Values outside are clamped.

    Returns:
        A ``(C, H, W)`` float tensor in ``[0, 1]`` on the CPU; one-channel images come out
        with three equal channels.

    Example:
        >>> image_grid(torch.rand(16, 784), nrow=8).shape
        torch.Size([3, 62, 242])
    """
    from torchvision.utils import make_grid

    if not (isinstance(nrow, int) and nrow > 0):
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    images = as_images(images, image_shape, model=model).detach().float().cpu()
    if value_range is not None:
        low, high = value_range
        if not high > low:
            raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
        images = (images - low) / (high - low)
    return make_grid(images.clamp(0, 1), nrow=nrow, padding=padding, pad_value=pad_value)


def to_uint8(grid: Tensor) -> Tensor:
    """Quantize a ``[0, 1]`` image to ``uint8`` as ``torchvision.utils.save_image`` does, for
    the dashboards that take pixels (torchvision has no public function for this step).

    Example:
        >>> to_uint8(torch.tensor([0.0, 0.5, 1.0, 2.0])).tolist()
        [0, 128, 255, 255]
    """
    return grid.detach().float().cpu().mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def save_image(grid: Tensor, path: str | Path) -> Path:
    """Save a ``(C, H, W)`` or ``(H, W)`` image in ``[0, 1]`` as a PNG (parents are created).

    Args:
        grid: The image, e.g. from :func:`image_grid`; ``C`` is 1, 3 or 4.
        path: Where to write it.

    Returns:
        The path written.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save_image(image_grid(torch.rand(4, 784)), f"{d}/grid.png").name
        'grid.png'
    """
    from torchvision.utils import save_image as write_png

    if not isinstance(grid, Tensor) or grid.dim() not in (2, 3):
        shape = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
        raise ValueError(f"grid must be a (C, H, W) or (H, W) tensor, got {shape}")
    if grid.dim() == 3 and grid.shape[0] not in (1, 3, 4):
        raise ValueError(f"grid must have 1, 3 or 4 channels, got {grid.shape[0]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(grid.detach().float().cpu(), path, format="PNG")
    return path
