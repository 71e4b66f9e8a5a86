"""MNIST as in-memory tensors, and a small sample of it shipped with the package.

:func:`mnist` reads the files of ``torchvision.datasets.MNIST`` (``<root>/MNIST/raw``) with
torchvision's own reader; autoenc adds where to look, what to say when files are missing or
damaged, and a download that cannot hang or leave partial files. :func:`mnist_sample` loads real
MNIST digits that ship inside the package, so examples and doctests run without a download.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges
(http://yann.lecun.com/exdb/mnist/), licensed under CC BY-SA 3.0
(https://creativecommons.org/licenses/by-sa/3.0/). The shipped sample is a subset of it, under
the same licence; ``autoenc/assets/MNIST_SAMPLE_LICENSE.txt`` says how it was made.

Example:
    >>> x, y = mnist_sample()
    >>> x.shape, x.dtype, y.shape, y.dtype
    (torch.Size([5000, 1, 28, 28]), torch.uint8, torch.Size([5000]), torch.int64)
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import socket
import struct
import warnings
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "MNISTData",
    "DatasetNotFoundError",
    "mnist",
    "mnist_sample",
    "mnist_or_sample",
    "resolve_root",
    "clear_cache",
]

ENV_VAR = "AUTOENC_DATA"
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: a dead mirror fails instead of hanging
_SPLITS = {True: "train", False: "t10k"}
_CACHE_ORIGIN = f"the default cache folder (${ENV_VAR} is not set)"


class MNISTData(NamedTuple):
    """Images and labels of one split; unpacks as ``x, y = data``.

    The tensors are shared by every call that loads the same files (see :func:`mnist`): do not
    modify them in place, ``clone()`` them first.

    Attributes:
        images: ``(n, 1, 28, 28)`` uint8 pixels, 0 for the background and 255 for ink.
        labels: ``(n,)`` int64 digits in 0..9.
    """

    images: Tensor
    labels: Tensor

    def __repr__(self) -> str:
        def describe(t: Tensor) -> str:
            return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"

        return f"MNISTData(images={describe(self.images)}, labels={describe(self.labels)})"


class DatasetNotFoundError(FileNotFoundError):
    """The MNIST files are not on disk and could not be downloaded.

    The message lists the files looked for, why they are missing (the download error, or that no
    download was tried) and how to point at a copy. ``searched`` holds those files.
    """

    def __init__(self, message: str, searched: list[Path]) -> None:
        super().__init__(message)
        self.searched = searched


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: ``root`` if given, else ``$AUTOENC_DATA``, else the cache folder.

    The cache folder is ``$XDG_CACHE_HOME/autoenc``, or ``~/.cache/autoenc``. The files are
    looked for, and downloaded, in ``<root>/MNIST/raw`` (torchvision's layout).

    Args:
        root: A folder, or ``None`` to use the environment variable or the cache folder.

    Returns:
        The folder, with ``~`` expanded; it need not exist.

    Raises:
        TypeError: If ``root`` is not a string or path.

    Example:
        >>> resolve_root("~/data").name
        'data'
    """
    return _resolve_root(root)[0]


def _resolve_root(root: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The root and, for messages, where it came from."""
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a str, a path or None, got {type(root).__name__}")
        return Path(root).expanduser(), "the root argument"
    if env := os.environ.get(ENV_VAR):
        return Path(env).expanduser(), f"${ENV_VAR}"
    xdg = os.environ.get("XDG_CACHE_HOME")
    cache = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return cache / "autoenc", _CACHE_ORIGIN


def _files(root: Path, train: bool) -> tuple[Path, Path]:
    """Where torchvision keeps one split's images and labels."""
    raw, split = root / "MNIST" / "raw", _SPLITS[train]
    return raw / f"{split}-images-idx3-ubyte", raw / f"{split}-labels-idx1-ubyte"


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torchvision calls urlopen without a timeout and takes none; the process-wide default is
    # the only handle, so it is changed for the download alone and restored.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(root: Path) -> Exception | None:
    """Download all four files with torchvision (mirrors, md5); on failure remove what it wrote."""
    raw = root / "MNIST" / "raw"
    created = [p for p in (raw, *raw.parents) if not p.exists()]  # deepest first
    before = set(raw.iterdir()) if raw.is_dir() else set()
    try:
        from torchvision.datasets import MNIST

        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            MNIST(root, download=True)
    except BaseException as err:  # Ctrl-C during a download must not leave partial files either
        for path in set(raw.iterdir()) - before if raw.is_dir() else ():
            path.unlink(missing_ok=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if not isinstance(err, Exception):
            raise
        return err
    return None


def _why(
    root: Path, origin: str, missing: list[bool], *, tried: bool, error: Exception | None
) -> str:
    """Which files of the missing splits are absent, and why (one download serves every split)."""
    where = f"{root}, from {origin}" + ("" if root.is_dir() else "; that folder does not exist")
    names = " and ".join(_SPLITS[t] for t in missing)
    lines = [f"MNIST {names} files not found under {where}:"]
    for path in (p for t in missing for p in _files(root, t)):
        lines.append(f"  {path}  ({'found' if path.is_file() else 'missing'})")
    if root.name in ("MNIST", "raw"):
        lines.append(f"  (root is the folder that holds MNIST/raw/, not {root.name}/ itself)")
    if not tried:
        lines.append("Not downloading, because download=False.")
    elif error is None:
        lines.append("torchvision's download reported no error, yet the files are not there.")
    else:
        reason = f"{type(error).__name__}: {error}".strip().replace("\n", "\n    ")
        lines.append(f"The download into {root / 'MNIST' / 'raw'} failed:\n    {reason}")
    return "\n".join(lines)


def _fix(hint: str) -> str:
    return (
        f"To use a copy you already have, pass {hint} or set {ENV_VAR}=DIR, where DIR is the "
        "folder that holds MNIST/raw/ (torchvision's layout)."
    )


def _read(path: Path, kind: str) -> Tensor:
    """One file through torchvision's reader, its errors (asserts among them) naming the file."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    try:
        return (read_image_file if kind == "images" else read_label_file)(str(path))
    except (AssertionError, KeyError, RuntimeError, TypeError, ValueError) as err:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        detail = "gzip data: decompress it" if gzipped else str(err) or "not an IDX header"
        raise ValueError(
            f"{path}: not a valid MNIST {kind} file, corrupt or truncated "
            f"({path.stat().st_size} bytes; {detail})"
        ) from err


@functools.lru_cache(maxsize=4)  # keyed on the files' mtime and size, so an edit is re-read
def _load(images_path: Path, labels_path: Path, stamp: tuple[int, ...]) -> MNISTData:
    images, labels = _read(images_path, "images"), _read(labels_path, "labels")
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images of shape {tuple(images.shape[1:])}, not (28, 28)")
    if len(images) != len(labels):
        raise ValueError(
            f"{labels_path} has {len(labels)} labels but {images_path} has {len(images)} images"
        )
    if len(labels) and int(labels.max()) > 9:
        raise ValueError(f"{labels_path}: labels must be digits 0-9, found {int(labels.max())}")
    return MNISTData(images.unsqueeze(1), labels)  # (n, 1, 28, 28), (n,)


def _load_splits(
    root: str | os.PathLike[str] | None, splits: tuple[bool, ...], download: bool, hint: str
) -> list[MNISTData]:
    """The splits, after one download (torchvision's fetches every split) if one is missing."""
    path, origin = _resolve_root(root)
    if path.is_file():
        raise ValueError(f"root must be a folder, got the file {path}")
    tried = download and not all(p.is_file() for t in splits for p in _files(path, t))
    error = _download(path) if tried else None
    missing = [t for t in splits if not all(p.is_file() for p in _files(path, t))]
    if missing:
        why = _why(path, origin, missing, tried=tried, error=error)
        searched = [p for t in missing for p in _files(path, t)]
        raise DatasetNotFoundError(f"{why}\n{_fix(hint)}", searched) from error
    loaded = []
    for train in splits:
        paths = [p.resolve() for p in _files(path, train)]
        stamp = tuple(n for p in paths for n in (p.stat().st_mtime_ns, p.stat().st_size))
        loaded.append(_load(*paths, stamp))
    return loaded


def clear_cache() -> None:
    """Forget every split loaded so far, freeing its memory once no one else holds it."""
    _load.cache_clear()
    _sample.cache_clear()


# ---------------------------------------------------------------------------- public loaders


def mnist(
    root: str | os.PathLike[str] | None = None, *, train: bool = True, download: bool = True
) -> MNISTData:
    """Load one split of MNIST as tensors, downloading it first if needed and allowed.

    Reads ``<root>/MNIST/raw`` (torchvision's layout) with torchvision's reader; the folder is
    chosen by :func:`resolve_root`. A download goes through ``torchvision.datasets.MNIST``
    (mirrors, md5 checks, both splits) under a socket timeout of ``DOWNLOAD_TIMEOUT_S`` seconds,
    and a failed one removes the files and folders it created. Later calls return the same
    tensors while the files are unchanged (:func:`clear_cache` forgets them). Never falls back
    to the shipped sample; :func:`mnist_or_sample` does.

    Args:
        root: Data folder; ``None`` for ``$AUTOENC_DATA`` or the cache folder.
        train: The 60000 training images if True, else the 10000 test images.
        download: Whether to download the files when they are not found.

    Returns:
        ``MNISTData(images, labels)``: uint8 images of shape ``(n, 1, 28, 28)`` (0 is
        background, 255 is ink) and int64 labels of shape ``(n,)``.

    Raises:
        DatasetNotFoundError: (a :class:`FileNotFoundError`) if the files are absent and were
            not downloaded; the message lists the files looked for, why, and the fix.
        ValueError: If a file is corrupt or truncated, naming the file, or ``root`` is a file.
        TypeError: If ``root``, ``train`` or ``download`` has the wrong type.

    Example:
        >>> x, y = mnist()  # doctest: +SKIP
        >>> x.shape, y.shape  # doctest: +SKIP
        (torch.Size([60000, 1, 28, 28]), torch.Size([60000]))
    """
    _check_bool(train, "train")
    _check_bool(download, "download")
    return _load_splits(root, (train,), download, "root=DIR")[0]


def _read_sample(name: str) -> Tensor:
    # torchvision's reader opens a path only (not a file object, whatever its docstring says)
    # and cannot read gzip, while the sample ships gzip-compressed inside the package. These
    # files are ours and checksummed by the tests, so the header is all there is to read.
    packed = resources.files("autoenc").joinpath("assets", name).read_bytes()
    buf = bytearray(gzip.decompress(packed))
    dims = struct.unpack(f">{buf[3]}I", buf[4 : 4 + 4 * buf[3]])
    return torch.frombuffer(buf, dtype=torch.uint8, offset=4 + 4 * buf[3]).view(dims)


@functools.lru_cache(maxsize=2)
def _sample(train: bool) -> MNISTData:
    split = _SPLITS[train]
    images = _read_sample(f"mnist-sample-{split}-images-idx3-ubyte.gz")
    labels = _read_sample(f"mnist-sample-{split}-labels-idx1-ubyte.gz")
    return MNISTData(images.unsqueeze(1), labels.long())


def mnist_sample(*, train: bool = True) -> MNISTData:
    """The sample of MNIST shipped with autoenc: 5000 training or 1000 test digits.

    500 (training) or 100 (test) real images of each digit, unchanged, chosen without randomness
    by ``scripts/make_mnist_sample.py``; ``autoenc/assets/mnist-sample.json`` lists their MNIST
    indices. Enough to try and test code, too few for results comparable with full MNIST.
    MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, under CC BY-SA 3.0; so
    is this sample (see ``autoenc/assets/MNIST_SAMPLE_LICENSE.txt``).

    Args:
        train: The training sample if True, else the test sample.

    Returns:
        ``MNISTData(images, labels)`` as :func:`mnist` returns them, shared between calls.

    Example:
        >>> x_test, y_test = mnist_sample(train=False)
        >>> x_test.shape, y_test.bincount().tolist()
        (torch.Size([1000, 1, 28, 28]), [100, 100, 100, 100, 100, 100, 100, 100, 100, 100])
    """
    _check_bool(train, "train")
    return _sample(train)


def mnist_or_sample(
    root: str | os.PathLike[str] | None = None, *, download: bool = True, hint: str = "root=DIR"
) -> tuple[tuple[MNISTData, MNISTData], bool]:
    """Both splits of full MNIST if found or downloaded, else of the shipped sample, with a warning.

    For examples that must run anywhere. Only the default cache folder falls back: a folder the
    user named (``root`` or ``$AUTOENC_DATA``) without MNIST raises as in :func:`mnist`, so that
    a typo does not pass silently. The fallback takes both splits from the sample, so that they
    match, and warns once, saying why each split is missing and naming ``hint`` in the fix.

    Args:
        root: As for :func:`mnist`.
        download: As for :func:`mnist`; one download fetches both splits.
        hint: How the caller lets the user name the data folder, quoted in the messages, e.g.
            ``"--data-root DIR"`` for a command-line flag.

    Returns:
        ``((train, test), is_sample)``: the two splits as :class:`MNISTData`, and whether they
        are the sample rather than full MNIST.

    Raises:
        DatasetNotFoundError: If ``root`` or ``$AUTOENC_DATA`` is set and MNIST is not there.
        ValueError: If a file is corrupt or truncated.
        TypeError: If an argument has the wrong type.

    Example:
        >>> (train, test), is_sample = mnist_or_sample(hint="--data-root DIR")  # doctest: +SKIP
    """
    _check_bool(download, "download")
    if not isinstance(hint, str) or not hint.strip():
        raise TypeError(f"hint must be a non-empty string such as '--data-root DIR', got {hint!r}")
    try:
        train, test = _load_splits(root, (True, False), download, hint)
        return (train, test), False
    except DatasetNotFoundError as err:
        if _resolve_root(root)[1] != _CACHE_ORIGIN:  # a folder the user named: no fallback
            raise
        why = err
    sample = (_sample(True), _sample(False))
    warnings.warn(
        "full MNIST is not available, so both splits come from the small sample shipped with "
        f"autoenc ({len(sample[0].labels)} training and {len(sample[1].labels)} test images "
        f"instead of 60000 and 10000): results will not match full-MNIST figures.\n{why}",
        UserWarning,
        stacklevel=2,
    )
    return sample, True
