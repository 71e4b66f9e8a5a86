"""Saving and loading models: one file with a JSON config and the weights, no pickled code.

The file is a ``torch.save`` archive of plain containers and tensors, read back with
``torch.load(..., weights_only=True)``, so loading a file never runs code from it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

import autoenc
from autoenc.modules import Decoder, Encoder
from autoenc.networks.conv import ConvDecoder, ConvEncoder

__all__ = ["save", "load", "build_module", "atomic_save"]

FORMAT = "autoenc.model"
FORMAT_VERSION = 1
_MODULES: dict[str, type[nn.Module]] = {
    "Encoder": Encoder,
    "Decoder": Decoder,
    "ConvEncoder": ConvEncoder,
    "ConvDecoder": ConvDecoder,
}


def _model_classes() -> dict[str, type[nn.Module]]:
    from autoenc.models import Autoencoder, GaussianVAE

    return {"Autoencoder": Autoencoder, "GaussianVAE": GaussianVAE}


def build_module(config: dict[str, Any]) -> nn.Module:
    """Rebuild an encoder or decoder of autoenc's (MLP or convolutional) from its ``config``."""
    kwargs = dict(config)
    kind = kwargs.pop("type", None)
    if kind not in _MODULES:
        raise ValueError(
            f"unknown module type {kind!r} in config; expected one of {sorted(_MODULES)}"
        )
    return _MODULES[kind](**kwargs)


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Save a model's config and weights to ``path`` (atomically).

    Models built from :class:`~autoenc.Encoder`/:class:`~autoenc.Decoder` save their config and
    load back with :func:`load` alone. Any other module saves its weights with a ``None`` config;
    load those with ``load(path, model=...)`` into a model built in code.

    Args:
        model: The model to save.
        path: Destination file.

    Returns:
        The path written.
    """
    try:
        config = json.dumps(model.config)
    except (AttributeError, TypeError):
        config = None
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "autoenc_version": autoenc.__version__,
        "kind": type(model).__name__,
        "config": config,
        "state_dict": model.state_dict(),
    }
    return atomic_save(payload, path)


def read_archive(path: str | os.PathLike[str], *, what: str, map_location: Any = "cpu") -> dict:
    """Read a ``torch.save`` file with ``weights_only=True``, with clear errors.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is truncated, corrupted or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {str(path)!r}")
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


def load(
    path: str | os.PathLike[str],
    *,
    model: nn.Module | None = None,
    kind: type[nn.Module] | str | None = None,
    map_location: Any = "cpu",
) -> nn.Module:
    """Load a model saved with :func:`save`.

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
            different kind than expected, or holds no config and no ``model`` was given.
    """
    payload = read_archive(path, what="model", map_location=map_location)
    if payload.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not an autoenc model file (format {payload.get('format')!r}); "
            "a fit() checkpoint loads with autoenc.load_checkpoint"
        )
    saved_kind = payload.get("kind")
    expected = kind if isinstance(kind, str) or kind is None else kind.__name__
    if model is not None:
        expected = type(model).__name__
    if expected is not None and saved_kind != expected:
        raise ValueError(f"{str(path)!r} holds a {saved_kind}, not a {expected}")
    if model is None:
        if payload["config"] is None:
            raise ValueError(
                f"{str(path)!r} holds a {saved_kind} with user-defined modules and no config; "
                "build the model in code and pass it as load(path, model=...)"
            )
        classes = _model_classes()
        if saved_kind not in classes:
            raise ValueError(f"{str(path)!r} holds an unknown model kind {saved_kind!r}")
        model = classes[saved_kind].from_config(json.loads(payload["config"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"the weights in {str(path)!r} do not fit the model: {err}") from err
    return model.eval()
