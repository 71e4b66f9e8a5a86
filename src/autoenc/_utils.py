"""The private helpers that several layers share: argument checks, devices, files, RNG, modes.

Nothing here imports another autoenc module, so every layer may import it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import math
import numbers
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__version__ = "0.2.0"

LOG_2PI = math.log(2 * math.pi)
SEED_BOUND = 2**62  # seeds drawn by autoenc stay below this, so they fit an int64
PRECISIONS = ("fp32", "bf16", "auto")

# -- argument checks -----------------------------------------------------------------------------


def check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer (NumPy's too, not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def check_number(value: Any, name: str, *, low: float = -math.inf, positive: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number (NumPy's too) in range."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and value >= low and (value > 0 or not positive)
    if not ok:
        kind = "a positive" if positive else ("a non-negative" if low == 0 else "a")
        raise ValueError(f"{name} must be {kind} finite number, got {value!r}")
    return float(value)


def check_choice(value: Any, choices: tuple[str, ...], name: str) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def renamed_arguments(**renames: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Let a function (or ``__init__``) take its old keyword names for one more release: each
    ``old=value`` is passed on as ``new=value`` with a ``FutureWarning`` naming the new name."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        owner = fn.__qualname__.removesuffix(".__init__")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{owner}() got {old}= and {new}=; pass only {new}=")
                    warnings.warn(
                        f"{owner}({old}=...) is deprecated and will be removed in the next "
                        f"release; use {new}=",
                        FutureWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


# -- devices and precision -----------------------------------------------------------------------


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


def model_device(model: nn.Module, device: Any = None) -> torch.device:
    """``device`` resolved, or where the model's first parameter (or buffer) lives."""
    if device is not None:
        return resolve_device(device)
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 when it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bfloat16 matrix products run natively on ``device`` (so ``precision="bf16"``
    pays, and ``"auto"`` picks it).

    On a CPU that needs AVX512-BF16 or AMX tiles (oneDNN emulates bf16 elsewhere, slower than
    fp32); on CUDA, a GPU with bf16 support.

    Example:
        >>> native_bf16("cpu") in (True, False)
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = f.read()
    except OSError:  # not Linux: trust oneDNN's answer
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_precision(precision: Any, device: torch.device) -> str:
    """The precision to train in: ``precision`` checked, ``"auto"`` resolved for ``device``.

    ``"auto"`` is ``"bf16"`` where :func:`native_bf16` says it runs natively, else ``"fp32"``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16":
        supported = torch.amp.is_autocast_available(device.type)
        if device.type == "cuda":
            supported = supported and torch.cuda.is_bf16_supported()
        if not supported:
            raise ValueError(f"precision='bf16' is not supported on {device}; use 'fp32'")
    return precision


def _flushing_denormals() -> bool:
    # torch has no getter: with flushing on, a float32 denormal times one gives zero
    return (torch.tensor([1e-39]) * torch.tensor([1.0])).item() == 0.0


@contextlib.contextmanager
def flush_denormals(enabled: bool = True) -> Iterator[None]:
    """Treat denormal floats as zero inside the block (a process-wide CPU setting), then
    restore the caller's setting. Denormal weights and activations slow CPU arithmetic
    several-fold in long runs."""
    if not enabled:
        yield
        return
    before = _flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


# glibc's mallopt parameters, and the values keep_freed_memory sets: the largest its own
# dynamic adjustment reaches (an mmap threshold of 32 MB on 64-bit, trimming at twice that).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 64 << 20


@functools.cache  # once per process
def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel at once.

    With glibc's default thresholds the few-megabyte tensors of every evaluation chunk or
    conv step are unmapped (or trimmed off the heap) when freed and faulted in, zeroed, on the
    next, and a large share of the CPU time goes to the kernel. This raises the thresholds,
    once per process, to the largest values glibc's own dynamic adjustment reaches, so at most
    64 MB of freed memory stays in the process. It does nothing off glibc or when the user set
    malloc's parameters themselves (a ``MALLOC_*_`` variable or ``GLIBC_TUNABLES``). Returns
    whether the thresholds were raised (by this call or an earlier one).
    """
    applied = False
    user_set = any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ) or (
        "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
    )
    if sys.platform.startswith("linux") and not user_set:
        try:
            libc = ctypes.CDLL(None)  # the symbols this process already has
            if hasattr(libc, "gnu_get_libc_version"):  # glibc, not musl
                applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
                )
        except (OSError, AttributeError):
            pass
    return applied


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``"bf16"``; nothing for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fork_rng(device: torch.device, seed: int | None = None) -> contextlib.AbstractContextManager:
    """Fork the CPU generator (and ``device``'s, on CUDA), optionally seeding the fork."""

    @contextlib.contextmanager
    def forked() -> Iterator[None]:
        cuda = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if cuda else []):
            if seed is not None:
                torch.default_generator.manual_seed(seed)
                if cuda:
                    with torch.cuda.device(device):
                        torch.cuda.manual_seed(seed)
            yield

    return forked()


# -- modules -------------------------------------------------------------------------------------


class eval_mode:
    """Put a module in eval mode; on exit restore every submodule's mode as it was."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.modes = [(m, m.training) for m in module.modules()]

    def __enter__(self) -> nn.Module:
        self.module.eval()
        return self.module

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.modes[0][1])  # runs any train() override of the user's modules
        for m, training in self.modes:  # then a submodule kept in eval (frozen BN) stays so
            m.training = training


def check_model(model: Any) -> None:
    """Raise unless ``model`` is a module with a ``loss(x)`` method."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(getattr(model, "loss", None)):
        raise TypeError(
            f"model ({type(model).__name__}) has no loss(x) method; fit() trains any module whose "
            "loss(x) returns a scalar tensor, a LossOutput or a dict with a 'loss' key"
        )


def loss_terms(out: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss to backpropagate and the detached scalar terms to log, from ``model.loss(x)``."""
    if isinstance(out, Tensor):
        return out, {"loss": out.detach()}
    if hasattr(out, "terms") and hasattr(out, "loss"):
        return out.loss, dict(out.terms())
    if isinstance(out, Mapping) and "loss" in out:
        terms = {k: v.detach() for k, v in out.items() if isinstance(v, Tensor) and v.numel() == 1}
        return out["loss"], terms
    raise TypeError(
        "model.loss(x) must return a scalar tensor, a LossOutput or a dict with a 'loss' key, "
        f"got {type(out).__name__}"
    )


def term_vector(terms: dict[str, Tensor], loss: Tensor) -> Tensor:
    """The terms as one vector, float64 when the loss is, else float32 (bf16 sums drift)."""
    dtype = torch.float64 if loss.dtype == torch.float64 else torch.float32
    values = list(terms.values())
    if all(v.dim() == 0 and v.dtype == dtype for v in values):  # the usual case, in one op
        return torch.stack(values)
    return torch.stack([v.reshape(()).to(dtype) for v in values])


def weights_are_finite(model: nn.Module) -> bool:
    """Whether every parameter and floating-point buffer is finite (one host sync)."""
    tensors = [t.detach() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def config_json(model: nn.Module) -> str | None:
    """``model.config`` as JSON, or ``None`` for a model without a JSON-able config."""
    try:
        return json.dumps(model.config)
    except (AttributeError, TypeError, ValueError):
        return None


# -- files ---------------------------------------------------------------------------------------

_TMP_SUFFIX = ".tmp"
STALE_TMP_S = 3600.0  # a temporary file this old was left by a killed writer


def _remove_stale_tmps(folder: Path, name: str) -> None:
    """Remove temporaries of ``name`` that a killed writer left (our pattern, older ones only)."""
    cutoff = time.time() - STALE_TMP_S
    for tmp in folder.glob(f".{name}.*{_TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None]) -> Path:
    """Write ``path`` through ``write(binary_file)`` to a temporary file, then rename it over.

    A crash mid-write leaves the previous file intact; the file gets the umask's mode, as a
    plain ``open`` would give it. A full disk raises an ``OSError`` that says so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(err):
            raise OSError(
                errno.ENOSPC,
                f"no space left on the device while writing {str(path)!r}; the previous file "
                "(if any) is intact. Free some space and save again",
            ) from err
        raise
    return path


def _disk_full(err: BaseException) -> bool:
    # torch.save reports a full disk as a RuntimeError from its zip writer, not an OSError.
    if isinstance(err, OSError):
        return err.errno == errno.ENOSPC
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "No space left" in text or "file write failed" in text
    )


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def check_writable_folder(folder: str | os.PathLike[str], owner: str) -> Path:
    """Create ``folder`` if needed and check that files can be written in it, before training."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(
            f"{owner}: cannot write files in {str(folder)!r} ({err.strerror or err}); choose a "
            "folder you can write to"
        ) from err
    return folder


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (``mode`` "min" or "max")."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta
