"""MNIST as in-memory tensors, a small sample shipped with the package, and binarization.

:func:`mnist` reads the IDX files once into a uint8 image tensor of shape ``(n, 1, 28, 28)`` and an
int64 label tensor of shape ``(n,)``, without building a PIL image per digit. :func:`mnist_sample`
loads a sample of real MNIST digits that ships inside the package (5000 training and 1000 test
images), so examples and doctests run without a download.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges
(http://yann.lecun.com/exdb/mnist/), licensed under CC BY-SA 3.0
(https://creativecommons.org/licenses/by-sa/3.0/). The shipped sample is a subset of it, under
the same licence; ``autoenc/assets/MNIST_SAMPLE_LICENSE.txt`` says how it was made.

Example:
    >>> from autoenc.data import mnist_sample, dynamic_binarize
    >>> x, y = mnist_sample()
    >>> x.shape, x.dtype, y.shape, y.dtype
    (torch.Size([5000, 1, 28, 28]), torch.uint8, torch.Size([5000]), torch.int64)
    >>> batch = dynamic_binarize(x[:32], generator=torch.Generator().manual_seed(0))
    >>> sorted(batch.unique().tolist())
    [0.0, 1.0]
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import socket
import sys
import threading
import warnings
import zlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import IO, NamedTuple

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
    "binarize",
    "dynamic_binarize",
]

ENV_VAR = "AUTOENC_DATA"
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: a dead mirror fails instead of hanging
_IMAGES_MAGIC = 0x0803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x0801  # unsigned bytes, 1 dimension
_SPLITS = {True: "train", False: "t10k"}
_FULL_SIZE = {True: 60000, False: 10000}
_CACHE: dict[tuple, tuple[tuple, MNISTData]] = {}
_CACHE_LOCK = threading.Lock()


class MNISTData(NamedTuple):
    """Images and labels of one split; unpacks as ``x, y = data``.

    The tensors are shared by every call that loads the same files (see :func:`mnist`): do not
    modify them in place, ``clone()`` them first.
    """

    images: Tensor  # (n, 1, 28, 28) uint8, 0 = background, 255 = ink
    labels: Tensor  # (n,) int64 in 0..9

    def __repr__(self) -> str:
        def describe(t: Tensor) -> str:
            return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"

        return f"MNISTData(images={describe(self.images)}, labels={describe(self.labels)})"


class DatasetNotFoundError(FileNotFoundError):
    """The MNIST files are not on disk and could not be downloaded.

    The message lists every folder searched, why the download failed (or that it was not
    tried), and how to point at a local copy. ``searched`` holds those folders.
    """

    def __init__(self, message: str, searched: list[Path]) -> None:
        super().__init__(message)
        self.searched = searched


# ---------------------------------------------------------------------------- locating files


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data folder to use: ``root`` if given, else ``$AUTOENC_DATA``, else the cache folder.

    The cache folder is ``$XDG_CACHE_HOME/autoenc``, or ``~/.cache/autoenc``. The folder need not
    exist yet; :func:`mnist` downloads into ``<root>/MNIST/raw`` (torchvision's layout).

    Args:
        root: A folder, or ``None`` to use the environment variable or the cache folder.

    Returns:
        The folder, with ``~`` expanded.

    Raises:
        TypeError: If ``root`` is not a string or path.

    Example:
        >>> resolve_root("~/data").name
        'data'
    """
    return _resolve_root(root)[0]


def _resolve_root(root: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The root and, for error messages, where it came from."""
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a str, a path or None, got {type(root).__name__}")
        return Path(root).expanduser(), "the root= argument"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), f"${ENV_VAR}"
    xdg = os.environ.get("XDG_CACHE_HOME")
    cache = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return cache / "autoenc", f"the default cache folder (${ENV_VAR} is not set)"


def _candidate_dirs(root: Path) -> list[Path]:
    """Where the files may be: root holds ``MNIST/raw``, root is ``MNIST``, or root is ``raw``."""
    return [root / "MNIST" / "raw", root / "raw", root]


def _find_file(folder: Path, kind: str, train: bool) -> Path | None:
    """The images/labels file in ``folder``, preferring the decompressed form."""
    split, idx = _SPLITS[train], "idx3" if kind == "images" else "idx1"
    names = [f"{split}-{kind}-{idx}-ubyte", f"{split}-{kind}.{idx}-ubyte"]  # torchvision, LeCun
    for name in [*names, *(n + ".gz" for n in names)]:
        if (folder / name).is_file():
            return folder / name
    return None


def _locate(root: Path, train: bool) -> tuple[Path, Path] | None:
    """The (images, labels) files under ``root``; ``None`` if absent, ValueError if ambiguous."""
    if root.is_file():
        raise ValueError(f"root must be a folder, got the file {root}")
    found: dict[Path, tuple[Path, Path]] = {}
    for folder in _candidate_dirs(root):
        images, labels = _find_file(folder, "images", train), _find_file(folder, "labels", train)
        if images and labels:
            found.setdefault(folder.resolve(), (images, labels))
    if len(found) > 1:
        listing = "\n".join(f"  {images.parent}" for images, _ in found.values())
        raise ValueError(
            f"root {root} is ambiguous: MNIST files are in more than one of its folders:\n"
            f"{listing}\npass the one you mean as root="
        )
    return next(iter(found.values()), None)


def _torchvision_root(root: Path) -> Path:
    """The folder torchvision downloads into, so that the files land under ``root``."""
    if root.name == "raw" and root.parent.name == "MNIST":
        return root.parent.parent
    return root.parent if root.name == "MNIST" else root


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torchvision calls urlopen without a timeout; the process-wide default is the only handle.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(root: Path, train: bool) -> BaseException | None:
    """Download with torchvision (mirrors, md5); the error if it failed, with no partial files."""
    raw = _torchvision_root(root) / "MNIST" / "raw"
    before = set(raw.iterdir()) if raw.is_dir() else set()
    # The outermost folder this attempt will create, so a failed download leaves none behind.
    created = next((p for p in reversed([raw, *raw.parents]) if not p.exists()), None)
    try:
        from torchvision.datasets import MNIST

        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            MNIST(_torchvision_root(root), train=train, download=True)
    except BaseException as err:
        for path in set(raw.iterdir()) - before if raw.is_dir() else ():
            path.unlink(missing_ok=True)
        if created is not None and created.is_dir():
            for folder in sorted((p for p in created.rglob("*") if p.is_dir()), reverse=True):
                with contextlib.suppress(OSError):  # not empty: someone else's files
                    folder.rmdir()
            with contextlib.suppress(OSError):
                created.rmdir()
        if not isinstance(err, Exception):
            raise
        return err
    return None


def _not_found(
    root: Path, origin: str, train: bool, *, tried: bool, error: BaseException | None = None
) -> DatasetNotFoundError:
    split = _SPLITS[train]
    lines = [
        f"MNIST {split} files not found: looked for {split}-images-idx3-ubyte and "
        f"{split}-labels-idx1-ubyte (or .gz) under {root}, from {origin}, in:"
    ]
    searched = _candidate_dirs(root)
    for folder in searched:
        has = [k for k in ("images", "labels") if _find_file(folder, k, train)]
        lines.append(
            f"  {folder}" + (f"  (has the {has[0]} but not the other file)" if has else "")
        )
    target = _torchvision_root(root) / "MNIST" / "raw"
    if not tried:
        lines.append("Not downloading, because download=False.")
    elif error is None:
        lines.append(f"torchvision's download reported no error, yet nothing arrived in {target}.")
    else:
        reason = f"{type(error).__name__}: {error}".strip().replace("\n", "\n    ")
        lines.append(f"The download into {target} failed:\n    {reason}")
    lines.append(
        "To use a copy you already have, pass the folder that holds MNIST/raw/ as root= "
        f"(mnist(root='/path/that/holds/MNIST')) or set {ENV_VAR}=/path/that/holds/MNIST. "
        "The MNIST folder itself or its raw/ folder also work."
    )
    return DatasetNotFoundError("\n".join(lines), searched)


# ---------------------------------------------------------------------------- reading IDX files


def _read_bytes(path: Path) -> bytearray:
    """The whole (decompressed) file, in a writable buffer that tensors can share."""
    with open(path, "rb") as f:
        if path.suffix != ".gz":
            buf = bytearray(os.fstat(f.fileno()).st_size)
            view, pos = memoryview(buf), 0
            while pos < len(buf) and (n := f.readinto(view[pos:])):
                pos += n
            return buf[:pos] if pos < len(buf) else buf
        return _gunzip(f, path)


def _gunzip(f: IO[bytes], name: object) -> bytearray:
    buf = bytearray()
    try:
        with gzip.GzipFile(fileobj=f) as unzipped:
            while chunk := unzipped.read(1 << 22):
                buf += chunk
    except (EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{name}: corrupt or truncated gzip data ({err})") from err
    return buf


def _parse_idx(buf: bytearray, name: object, *, magic: int, item_shape: tuple[int, ...]) -> Tensor:
    """Check an IDX header against what MNIST needs, and view the payload as a uint8 tensor."""
    what = "an image file (n, 28, 28)" if magic == _IMAGES_MAGIC else "a label file (n,)"
    if len(buf) < 4:
        raise ValueError(f"{name}: truncated: {len(buf)} bytes, too short for an IDX header")
    found = int.from_bytes(buf[:4], "big")
    if found != magic:
        hint = ""
        if buf[:2] == b"\x1f\x8b":
            hint = "; it is gzip-compressed: decompress it or give it a .gz suffix"
        raise ValueError(
            f"{name}: bad magic number {found} (0x{found:08x}); expected {magic} (0x{magic:08x}) "
            f"for {what}{hint}"
        )
    header = 4 + 4 * (1 + len(item_shape))
    if len(buf) < header:
        raise ValueError(
            f"{name}: truncated: {len(buf)} bytes, shorter than its {header}-byte header"
        )
    dims = tuple(int.from_bytes(buf[i : i + 4], "big") for i in range(4, header, 4))
    if dims[1:] != item_shape:
        raise ValueError(f"{name}: wrong dimensions {dims}; expected {what}")
    need = header + math.prod(dims)
    if len(buf) != need:
        problem = "truncated" if len(buf) < need else "has extra bytes at the end"
        raise ValueError(
            f"{name}: size does not match its header: {dims} needs {need} bytes, the file has "
            f"{len(buf)} ({problem})"
        )
    if dims[0] == 0:
        return torch.empty(dims, dtype=torch.uint8)
    return torch.frombuffer(buf, dtype=torch.uint8, offset=header).view(dims)


def _to_data(images: Tensor, labels: Tensor, image_name: object, label_name: object) -> MNISTData:
    if len(images) != len(labels):
        raise ValueError(
            f"{label_name} has {len(labels)} labels but {image_name} has {len(images)} images"
        )
    if len(labels) and int(labels.max()) > 9:
        raise ValueError(f"{label_name}: labels must be digits 0-9, found {int(labels.max())}")
    return MNISTData(images.unsqueeze(1), labels.long())  # (n, 1, 28, 28), (n,)


def _load_files(images_path: Path, labels_path: Path) -> MNISTData:
    images = _parse_idx(
        _read_bytes(images_path), images_path, magic=_IMAGES_MAGIC, item_shape=(28, 28)
    )
    labels = _parse_idx(_read_bytes(labels_path), labels_path, magic=_LABELS_MAGIC, item_shape=())
    return _to_data(images, labels, images_path, labels_path)


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


def _cached(key: tuple, stamp: tuple, load) -> MNISTData:
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        data = load()
        _CACHE[key] = (stamp, data)
        return data


def clear_cache() -> None:
    """Forget every split loaded so far, freeing its memory once no one else holds it."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ---------------------------------------------------------------------------- public loaders


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def mnist(
    root: str | os.PathLike[str] | None = None, *, train: bool = True, download: bool = True
) -> MNISTData:
    """Load one split of MNIST as tensors, downloading it first if needed and allowed.

    ``root`` may be the folder that holds ``MNIST/raw/`` (torchvision's layout), the ``MNIST``
    folder, or the ``raw`` folder. The decompressed IDX files are read if present, else the
    ``.gz`` files. Without ``root``, ``$AUTOENC_DATA`` is used, else the cache folder (see
    :func:`resolve_root`). A download goes through :class:`torchvision.datasets.MNIST` (mirrors
    and md5 checks) into ``<root>/MNIST/raw``, with a socket timeout of
    ``DOWNLOAD_TIMEOUT_S`` seconds so that it cannot hang.

    Each split is read once per process: later calls return the same tensors while the files
    are unchanged (same mtime and size). Do not modify them in place; ``clone()`` them first.

    This never falls back to the shipped sample; :func:`mnist_or_sample` does, loudly.

    Args:
        root: Data folder; ``None`` for ``$AUTOENC_DATA`` or the cache folder.
        train: The 60000 training images if True, else the 10000 test images.
        download: Whether to download the files when they are not found.

    Returns:
        ``MNISTData(images, labels)``: uint8 images of shape ``(n, 1, 28, 28)`` (0 is
        background, 255 is ink) and int64 labels of shape ``(n,)``.

    Raises:
        DatasetNotFoundError: (a :class:`FileNotFoundError`) if the files are absent and were
            not downloaded; the message lists the folders searched and the download error.
        ValueError: If a file is corrupt or truncated (bad magic number, wrong dimensions, size
            not matching its header, labels and images of different counts), naming the file;
            or if ``root`` holds the files in more than one of the accepted layouts.
        TypeError: If ``root``, ``train`` or ``download`` has the wrong type.

    Example:
        >>> x, y = mnist()  # doctest: +SKIP
        >>> x.shape, y.shape  # doctest: +SKIP
        (torch.Size([60000, 1, 28, 28]), torch.Size([60000]))
        >>> x_test, y_test = mnist("/data", train=False, download=False)  # doctest: +SKIP
    """
    _check_bool(train, "train")
    _check_bool(download, "download")
    root, origin = _resolve_root(root)
    found = _locate(root, train)
    if found is None and not download:
        raise _not_found(root, origin, train, tried=False)
    if found is None:
        error = _download(root, train)
        found = _locate(root, train)
        if found is None:
            raise _not_found(root, origin, train, tried=True, error=error) from error
    images_path, labels_path = found
    stamp = (_stamp(images_path), _stamp(labels_path))
    key = (images_path.resolve(), labels_path.resolve())
    return _cached(key, stamp, lambda: _load_files(images_path, labels_path))


def _load_sample(train: bool) -> MNISTData:
    tensors, names = [], []
    for kind, magic, item_shape in (
        ("images", _IMAGES_MAGIC, (28, 28)),
        ("labels", _LABELS_MAGIC, ()),
    ):
        name = f"mnist-sample-{_SPLITS[train]}-{kind}-idx{len(item_shape) + 1}-ubyte.gz"
        resource = resources.files("autoenc").joinpath("assets", name)
        with resource.open("rb") as f:
            buf = _gunzip(f, resource)
        tensors.append(_parse_idx(buf, resource, magic=magic, item_shape=item_shape))
        names.append(resource)
    return _to_data(*tensors, *names)


def mnist_sample(*, train: bool = True) -> MNISTData:
    """The sample of MNIST shipped with autoenc: 5000 training or 1000 test digits.

    Taken from the real MNIST files by ``scripts/make_mnist_sample.py``: 500 images of each
    digit from the training file and 100 of each from the test file, evenly spaced through that
    digit's occurrences (no randomness), kept in file order, pixels unchanged. Enough for
    examples, tests and a quick look; too few for results comparable with full MNIST.
    ``autoenc/assets/mnist-sample.json`` lists the MNIST index of every sample image.

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
    return _cached(("sample", train), (), lambda: _load_sample(train))


def mnist_or_sample(
    root: str | os.PathLike[str] | None = None, *, train: bool = True, download: bool = True
) -> tuple[MNISTData, bool]:
    """Full MNIST if it can be found or downloaded, else the shipped sample, with a loud warning.

    For examples and demos that must run anywhere. Only a missing dataset
    (:class:`DatasetNotFoundError`) falls back; a corrupt file still raises.

    Args:
        root: As for :func:`mnist`.
        train: As for :func:`mnist`.
        download: As for :func:`mnist`.

    Returns:
        ``(data, is_sample)``: the split, and whether it is the sample rather than full MNIST.

    Example:
        >>> import tempfile, warnings
        >>> with tempfile.TemporaryDirectory() as empty, warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     (x, y), is_sample = mnist_or_sample(empty, download=False)
        >>> is_sample, len(x)
        (True, 5000)
    """
    try:
        return mnist(root, train=train, download=download), False
    except DatasetNotFoundError as err:
        data = mnist_sample(train=train)
        split = "training" if train else "test"
        message = (
            f"full MNIST is not available, so this uses the small sample shipped with autoenc "
            f"({len(data.labels)} {split} images instead of {_FULL_SIZE[train]}): results will "
            f"not match full-MNIST figures. Why:\n{err}"
        )
        warnings.warn(message, UserWarning, stacklevel=2)
        print(
            f"autoenc: WARNING: using the {len(data.labels)}-image MNIST sample, not full MNIST; "
            f"set {ENV_VAR}=/path/that/holds/MNIST or allow the download for the real thing.",
            file=sys.stderr,
        )
        return data, True


# ---------------------------------------------------------------------------- binarization


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
