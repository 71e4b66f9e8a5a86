"""Model files: one file with a JSON config and the weights, no pickled code.

The file is a ``torch.save`` archive of plain containers and tensors. Reading it checks the
archive's checksums first and then uses ``torch.load(..., weights_only=True)``, so a corrupted
file is refused and loading a file never runs code from it.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoenc._utils import __version__, atomic_save, config_json, model_dtype
from autoenc.models import MODELS

__all__ = ["save", "load", "read_archive"]

FORMAT = "autoenc.model"
FORMAT_VERSION = 1


def save(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save a model's config and weights to ``path`` (atomically).

    Models built from autoenc's networks save their config and load back with :func:`load`
    alone. Any other module saves its weights with a ``None`` config; load those with
    ``load(path, model=...)`` into a model built in code.

    Args:
        model: The model to save.
        path: Destination file.

    Returns:
        The path written.

    Raises:
        OSError: When the disk is full (the previous file at ``path`` is intact).
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "autoenc_version": __version__,
        "kind": type(model).__name__,
        "config": config_json(model),
        "dtype": str(model_dtype(model)).removeprefix("torch."),
        "state_dict": model.state_dict(),
    }
    return atomic_save(payload, path)


def _check_checksums(path: Path, what: str) -> None:
    """torch.load does not check the zip's CRCs: a flipped byte in a tensor would load."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise ValueError(
            f"could not read the {what} file {str(path)!r}: it is truncated, corrupted or not a "
            f"torch file ({type(err).__name__}: {err})"
        ) from err
    if bad is not None:
        raise ValueError(
            f"the {what} file {str(path)!r} is corrupted: the checksum of its part {bad!r} does "
            "not match (a damaged copy or disk); use another copy"
        )


def read_archive(path: str | os.PathLike[str], *, what: str, map_location: Any = "cpu") -> dict:
    """Read a ``torch.save`` file with ``weights_only=True`` after checking its checksums.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is truncated, corrupted or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {str(path)!r}")
    _check_checksums(path, what)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise ValueError(
            f"could not read the {what} file {str(path)!r}: it is truncated, corrupted or not a "
            f"torch file ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(payload, dict):
        raise ValueError(f"{str(path)!r} is not an autoenc {what} file")
    return payload


def model_from_config(kind: Any, config: Any, source: str) -> nn.Module:
    """Rebuild an untrained model of class name ``kind`` from a file's JSON ``config``."""
    if config is None:
        raise ValueError(
            f"{source} holds a {kind} with networks of your own and no config; build the model "
            "in code and pass it as load(path, model=...)"
        )
    if kind not in MODELS:
        raise ValueError(
            f"{source} holds an unknown model kind {kind!r} (known: {sorted(MODELS)}); build "
            "the model in code and pass it as load(path, model=...)"
        )
    try:
        return MODELS[kind].from_config(json.loads(config))
    except (json.JSONDecodeError, TypeError, ValueError, KeyError, AttributeError) as err:
        raise ValueError(
            f"{source} holds a config that does not describe a {kind}: "
            f"{type(err).__name__}: {err}. Build the model in code and pass it as "
            "load(path, model=...)"
        ) from err


def load(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    kind: type[nn.Module] | str | None = None,
    map_location: Any = "cpu",
) -> nn.Module:
    """Load a model saved with :func:`save`, in the dtype it was saved in.

    Args:
        path: The file.
        model: A model built in code to load the weights into (needed for models with user
            modules; it must be of the saved kind).
        kind: The expected model class (or its name); a file of another kind raises.
        map_location: Passed to :func:`torch.load`.

    Returns:
        The model, in eval mode.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is truncated or corrupted, not an autoenc model file, of a
            different kind than expected, or holds no usable config and no ``model`` was given.
    """
    source = repr(str(path))
    payload = read_archive(path, what="model", map_location=map_location)
    if payload.get("format") != FORMAT or "state_dict" not in payload:
        raise ValueError(
            f"{source} is not an autoenc model file (format {payload.get('format')!r}); "
            "a fit() checkpoint loads with autoenc.load_checkpoint"
        )
    saved_kind = payload.get("kind")
    expected = kind if isinstance(kind, str) or kind is None else kind.__name__
    if model is not None:
        expected = type(model).__name__
    if expected is not None and saved_kind != expected:
        raise ValueError(f"{source} holds a {saved_kind}, not a {expected}")
    if model is None:
        model = model_from_config(saved_kind, payload.get("config"), source)
    dtype = getattr(torch, str(payload.get("dtype", "float32")), None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        model.to(dtype)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"the weights in {source} do not fit the model: {err}") from err
    return model.eval()
