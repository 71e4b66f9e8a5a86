"""Where and in what precision :func:`autoenc.fit` and :func:`autoenc.evaluate` compute.

:func:`resolve_device` turns ``"auto"``, ``"cpu"``, ``"cuda:1"``, ... into a device that exists
here, or a ``ValueError`` that says what does; :func:`check_precision` and :func:`autocast` handle
``precision="fp32"|"bf16"``.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> with autocast("fp32", torch.device("cpu")):
    ...     torch.ones(2).dtype
    torch.float32
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["PRECISIONS", "resolve_device", "check_precision", "autocast"]

#: The precisions :func:`autoenc.fit` accepts: float32, or bfloat16 autocast.
PRECISIONS = ("fp32", "bf16")


def resolve_device(device: Any) -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU) or a device that exists here."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<index>'"
        ) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} but MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        try:
            torch.empty(0, device=dev)
        except RuntimeError as err:
            raise ValueError(f"device {device!r} is not usable here: {err}") from err
    return dev


def check_precision(precision: Any, device: torch.device) -> None:
    """Raise a ``ValueError`` unless ``precision`` is one of :data:`PRECISIONS` and works on
    ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        supported = torch.amp.is_autocast_available(device.type)
        if device.type == "cuda":
            supported = supported and torch.cuda.is_bf16_supported()
        if not supported:
            raise ValueError(f"precision='bf16' is not supported on {device}; use 'fp32'")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``"bf16"``; nothing for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
