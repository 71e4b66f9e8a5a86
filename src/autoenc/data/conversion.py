"""From the kinds of data users pass to float tensors on the training device: item and tensor
unpacking, dtype conversion, and which data can take the in-memory fast path."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Subset, TensorDataset

__all__ = [
    "to_float",
    "check_dtype",
    "first_of",
    "second_of",
    "stack_labels",
    "item_tensor",
    "fits_on",
    "tensors_of",
]


def to_float(
    x: Tensor, device: torch.device, *, dtype: torch.dtype | None = None, what: str = "data"
) -> Tensor:
    """Move ``x`` to ``device`` as ``dtype`` (``uint8`` / 255, ``bool`` -> 0/1).

    ``dtype=None`` keeps floating-point data as it is and gives the others the default dtype.
    The move comes first, so ``uint8`` images cross to an accelerator at a quarter of the size.
    """
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        return x.to(dtype or torch.get_default_dtype()).div_(255)
    if x.dtype == torch.bool:
        return x.to(dtype or torch.get_default_dtype())
    if x.is_floating_point():
        return x if dtype is None else x.to(dtype)
    raise TypeError(
        f"{what} must hold floating-point, uint8 (pixels, scaled by 1/255) or bool values, got "
        f"dtype {x.dtype}; convert it yourself, e.g. x.float()"
    )


def check_dtype(x: Tensor, what: str) -> None:
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.bool)):
        to_float(x[:0], torch.device("cpu"), what=what)  # raises the TypeError


def first_of(item: Any) -> Any:
    """``x`` of an ``(x, y, ...)`` item or batch; anything else is ``x`` itself."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError("a data item is an empty tuple; expected x or (x, y)")
        return item[0]
    return item


def second_of(item: Any, what: str) -> Any:
    """``y`` of an ``(x, y, ...)`` item or batch, or a ``ValueError`` naming what came instead."""
    if not (isinstance(item, (tuple, list)) and len(item) >= 2):
        kind = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else type(item).__name__
        raise ValueError(
            f"labels=True (a conditional model) needs {what} that are (x, y) pairs, got {kind}"
        )
    return item[1]


def stack_labels(ys: list[Any]) -> Tensor:
    """The labels of one batch as one tensor: ints, floats, NumPy values or tensors."""
    if all(isinstance(y, Tensor) for y in ys):
        return torch.stack(ys)
    return torch.as_tensor(ys if type(ys[0]).__module__ != "numpy" else [y.tolist() for y in ys])


def item_tensor(item: Any) -> Tensor:
    """One dataset item as a tensor: PIL images become ``(c, h, w)`` uint8 as ``ToTensor`` does."""
    x = first_of(item)
    if isinstance(x, Tensor):
        return x
    if type(x).__module__.startswith("PIL."):
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(x)  # (c, h, w) uint8, scaled by to_float as ToTensor would
    if type(x).__module__ == "numpy":
        return torch.from_numpy(x)
    raise TypeError(
        f"dataset items must be tensors, PIL images or NumPy arrays (or tuples starting with one), "
        f"got {type(x).__name__}"
    )


def fits_on(x: Tensor, device: torch.device) -> bool:
    """Whether the whole of ``x`` should live on ``device``: on the CPU always; on CUDA when it
    takes at most half of the free memory."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return x.numel() * x.element_size() <= free // 2


def tensors_of(data: Any) -> tuple[Tensor, Tensor | None] | None:
    """The ``x`` tensor of data that can take the fast path and its labels (``None`` when it
    has none), or ``None``."""
    if isinstance(data, Tensor):
        return data, None
    if type(data).__module__ == "numpy" and hasattr(data, "shape"):
        return torch.from_numpy(data), None
    if isinstance(data, TensorDataset):
        return data.tensors[0], data.tensors[1] if len(data.tensors) > 1 else None
    if isinstance(data, Subset) and isinstance(data.dataset, TensorDataset):
        indices = torch.as_tensor(list(data.indices), dtype=torch.long)
        tensors = [t.index_select(0, indices) for t in data.dataset.tensors[:2]]
        return tensors[0], tensors[1] if len(tensors) > 1 else None
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], Tensor):
        if not (isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Tensor)):
            raise TypeError(
                f"a {type(data).__name__} of {len(data)} tensors is ambiguous: pass one tensor "
                "of examples (torch.cat the parts along dim 0), an (x, y) tuple of examples and "
                "labels, or a Dataset"
            )
        if data[0].dim() == 0 or data[1].dim() == 0 or len(data[0]) != len(data[1]):
            raise ValueError(
                "the tensors of an (x, y) pair must have the same length (first dimension), got "
                f"shapes {[tuple(t.shape) for t in data]}"
            )
        return data[0], data[1]
    return None
