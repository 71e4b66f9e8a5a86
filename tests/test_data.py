"""Tests for autoenc.data: IDX reading, root resolution, download failures, caching, binarization,
and the shipped sample. Unit tests write tiny IDX files; real MNIST only in slow tests."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import socket
import urllib.error
import urllib.request
import warnings
from importlib import resources
from pathlib import Path

import pytest
import torch

import autoenc.data.datasets as data
from autoenc.data import (
    DatasetNotFoundError,
    MNISTData,
    binarize,
    dynamic_binarize,
    mnist,
    mnist_or_sample,
    mnist_sample,
    resolve_root,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
REAL_ROOT_FROM_ENV = os.environ.get("AUTOENC_DATA")  # read before the fixture below hides it


# ---------------------------------------------------------------------------- helpers


def idx_bytes(t: torch.Tensor) -> bytes:
    """A uint8 tensor as an IDX file: magic 0x0000 08 <ndim>, big-endian dims, raw bytes."""
    header = bytes([0, 0, 0x08, t.dim()]) + b"".join(d.to_bytes(4, "big") for d in t.shape)
    return header + t.contiguous().numpy().tobytes()


def make_split(n: int = 10, seed: int = 0) -> MNISTData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    return MNISTData(images, torch.arange(n) % 10)


def split_files(split: MNISTData) -> tuple[bytes, bytes]:
    return idx_bytes(split.images.squeeze(1)), idx_bytes(split.labels.to(torch.uint8))


def write_split(
    folder: Path, split: MNISTData | None = None, *, train: bool = True, gz: bool = False
) -> MNISTData:
    """Write images and labels in torchvision's file names into ``folder``."""
    split = make_split() if split is None else split
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if train else "t10k"
    images, labels = split_files(split)
    for name, content in (
        (f"{prefix}-images-idx3-ubyte", images),
        (f"{prefix}-labels-idx1-ubyte", labels),
    ):
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)
    return split


def assert_same(a: MNISTData, b: MNISTData) -> None:
    assert a.images.shape == b.images.shape and a.images.dtype == torch.uint8
    assert a.labels.dtype == torch.int64
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)


def real_root() -> str:
    """Where real MNIST is: $AUTOENC_DATA, else the shared copy; skips the test if neither."""
    for root in (REAL_ROOT_FROM_ENV, "/work/shared/data"):
        if root and data._locate(Path(root), True) and data._locate(Path(root), False):
            return root
    pytest.skip("real MNIST not found (set AUTOENC_DATA)")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """No network, no cache carried between tests, and no AUTOENC_DATA from the environment."""

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.delenv("AUTOENC_DATA", raising=False)
    data.clear_cache()
    yield
    data.clear_cache()


# ---------------------------------------------------------------------------- loading and layouts


@pytest.mark.parametrize("point_at", ["holder", "MNIST", "raw"])
def test_loads_from_each_root_layout(tmp_path, point_at):
    written = write_split(tmp_path / "MNIST" / "raw")
    root = {"holder": tmp_path, "MNIST": tmp_path / "MNIST", "raw": tmp_path / "MNIST" / "raw"}
    loaded = mnist(root[point_at], download=False)
    assert isinstance(loaded, MNISTData)
    assert loaded.images.shape == (10, 1, 28, 28)
    assert_same(loaded, written)


def test_loads_the_test_split_from_t10k_files(tmp_path):
    train = write_split(tmp_path, make_split(10, seed=1))
    test = write_split(tmp_path, make_split(7, seed=2), train=False)
    assert_same(mnist(tmp_path, download=False), train)
    assert_same(mnist(tmp_path, train=False, download=False), test)


def test_reads_lecun_file_names(tmp_path):
    split = make_split()
    images, labels = split_files(split)
    (tmp_path / "train-images.idx3-ubyte").write_bytes(images)
    (tmp_path / "train-labels.idx1-ubyte").write_bytes(labels)
    assert_same(mnist(tmp_path, download=False), split)


def test_reads_gz_when_only_gz_exists(tmp_path):
    written = write_split(tmp_path / "MNIST" / "raw", gz=True)
    assert_same(mnist(tmp_path, download=False), written)


def test_prefers_decompressed_files_over_gz(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_split(raw, make_split(seed=1), gz=True)
    plain = write_split(raw, make_split(seed=2))
    assert_same(mnist(tmp_path, download=False), plain)


def test_result_unpacks_as_x_y_and_has_a_short_repr(tmp_path):
    write_split(tmp_path)
    x, y = mnist(tmp_path, download=False)
    assert x.shape == (10, 1, 28, 28) and y.shape == (10,)
    assert repr(mnist(tmp_path, download=False)) == (
        "MNISTData(images=uint8[10, 1, 28, 28], labels=int64[10])"
    )


def test_ambiguous_root_is_refused(tmp_path):
    write_split(tmp_path / "MNIST" / "raw", make_split(seed=1))
    write_split(tmp_path, make_split(seed=2))
    with pytest.raises(ValueError, match="ambiguous") as info:
        mnist(tmp_path, download=False)
    assert str(tmp_path / "MNIST" / "raw") in str(info.value)


def test_bad_argument_types(tmp_path):
    with pytest.raises(TypeError, match="train"):
        mnist(tmp_path, train="test", download=False)
    with pytest.raises(TypeError, match="download"):
        mnist(tmp_path, download=0)
    with pytest.raises(TypeError, match="root"):
        mnist(3, download=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="must be a folder"):
        mnist(tmp_path / "file", download=False)


# ---------------------------------------------------------------------------- root resolution


def test_root_precedence_argument_then_env_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert resolve_root() == tmp_path / "home" / ".cache" / "autoenc"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_root() == tmp_path / "xdg" / "autoenc"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    assert resolve_root() == tmp_path / "home" / ".cache" / "autoenc"
    monkeypatch.setenv("AUTOENC_DATA", "")  # empty means unset
    assert resolve_root() == tmp_path / "home" / ".cache" / "autoenc"
    monkeypatch.setenv("AUTOENC_DATA", str(tmp_path / "env"))
    assert resolve_root() == tmp_path / "env"
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_root("~/d") == tmp_path / "home" / "d"


def test_env_var_is_used_and_the_argument_wins(tmp_path, monkeypatch):
    from_env = write_split(tmp_path / "env" / "MNIST" / "raw", make_split(seed=1))
    from_arg = write_split(tmp_path / "arg", make_split(seed=2))
    monkeypatch.setenv("AUTOENC_DATA", str(tmp_path / "env"))
    assert_same(mnist(download=False), from_env)
    assert_same(mnist(tmp_path / "arg", download=False), from_arg)


def test_default_cache_folder_is_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    written = write_split(tmp_path / "autoenc" / "MNIST" / "raw")
    assert_same(mnist(download=False), written)


# ---------------------------------------------------------------------------- missing files


def test_download_false_explains_without_trying(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: calls.append(a))
    root = tmp_path / "empty"
    with pytest.raises(DatasetNotFoundError) as info:
        mnist(root, download=False)
    message = str(info.value)
    assert calls == []
    assert isinstance(info.value, FileNotFoundError)
    assert "download=False" in message and "AUTOENC_DATA" in message and "root=" in message
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        assert f"  {folder}\n" in message or message.endswith(str(folder))
    assert info.value.searched == [root / "MNIST" / "raw", root / "raw", root]
    assert not root.exists()


def test_offline_download_failure_lists_paths_reason_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOENC_DATA", str(tmp_path / "env"))
    timeouts = []

    def offline(request, *args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        mnist()
    message = str(info.value)
    root = tmp_path / "env"
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        assert str(folder) in message
    assert "$AUTOENC_DATA" in message  # where the root came from
    assert "AUTOENC_DATA=/path/that/holds/MNIST" in message  # how to fix it
    assert "failed" in message and "Name or service not known" in message
    assert info.value.__cause__ is not None
    # every attempt ran under a finite socket timeout, and the global default was restored
    assert timeouts and all(t == data.DOWNLOAD_TIMEOUT_S for t in timeouts)
    assert socket.getdefaulttimeout() is None


def test_failed_download_leaves_no_partial_files(tmp_path, monkeypatch):
    class Dropping(io.BytesIO):
        url = None
        length = 1000

        def read(self, size=-1):
            if self.tell():
                raise urllib.error.URLError("connection reset")
            return super().read(10)

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Dropping(b"x" * 100))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("mine")
    with pytest.raises(DatasetNotFoundError, match="connection reset"):
        mnist(tmp_path)
    assert sorted(p.name for p in raw.iterdir()) == ["notes.txt"]


def test_failed_download_removes_the_folders_it_created(tmp_path, monkeypatch):
    def offline(request, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    keep = tmp_path / "mine"
    keep.mkdir()
    with pytest.raises(DatasetNotFoundError):
        mnist(keep / "typo" / "data")
    assert list(keep.iterdir()) == []  # no empty typo/data/MNIST/raw left behind


def test_download_fetches_through_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    train, test = make_split(10, seed=1), make_split(5, seed=2)
    served = {}
    for prefix, split in (("train", train), ("t10k", test)):
        images, labels = split_files(split)
        served[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(images)
        served[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(labels)
    resources_md5 = [(name, hashlib.md5(content).hexdigest()) for name, content in served.items()]
    monkeypatch.setattr(MNIST, "resources", resources_md5)

    class Response(io.BytesIO):
        def __init__(self, url):
            super().__init__(served[url.rsplit("/", 1)[1]])
            self.url, self.length = url, len(self.getvalue())

    monkeypatch.setattr(urllib.request, "urlopen", lambda req, *a, **k: Response(req.full_url))
    assert_same(mnist(tmp_path / "MNIST"), train)  # pointing at MNIST/ downloads into MNIST/raw
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert_same(mnist(tmp_path, train=False, download=False), test)


# ---------------------------------------------------------------------------- corrupt files


def corrupt(tmp_path: Path, kind: str, edit) -> Path:
    write_split(tmp_path)
    path = tmp_path / f"train-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    path.write_bytes(edit(path.read_bytes()))
    return path


@pytest.mark.parametrize(
    ("kind", "edit", "match"),
    [
        ("images", lambda b: b[:-5], "size does not match its header.*truncated"),
        ("images", lambda b: b + b"\0", "extra bytes"),
        ("images", lambda b: b[:3], "too short"),
        ("images", lambda b: b[:10], "shorter than its 16-byte header"),
        ("images", lambda b: b"\x00\x00\x08\x01" + b[4:], "bad magic number 2049"),
        ("labels", lambda b: b"\x12\x34" + b[2:], "bad magic number"),
        ("images", lambda b: gzip.compress(b), "gzip-compressed"),
        (
            "images",
            lambda b: b[:12] + (27).to_bytes(4, "big") + b[16:],
            r"wrong dimensions \(10, 28, 27\)",
        ),
        ("labels", lambda b: b[:-1] + bytes([12]), "digits 0-9, found 12"),
    ],
)
def test_corrupt_files_raise_value_error_naming_the_file(tmp_path, kind, edit, match):
    path = corrupt(tmp_path, kind, edit)
    with pytest.raises(ValueError, match=match) as info:
        mnist(tmp_path, download=False)
    assert str(path) in str(info.value)


def test_label_and_image_counts_must_match(tmp_path):
    split = make_split(10)
    write_split(tmp_path, split)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(split.labels[:9].to(torch.uint8)))
    with pytest.raises(
        ValueError, match="has 9 labels but .*train-images-idx3-ubyte has 10 images"
    ):
        mnist(tmp_path, download=False)


def test_truncated_gz_is_a_value_error(tmp_path):
    write_split(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as info:
        mnist(tmp_path, download=False)
    assert str(path) in str(info.value)


def test_corrupt_files_do_not_fall_back_to_the_sample(tmp_path):
    corrupt(tmp_path, "images", lambda b: b[:-1])
    with pytest.raises(ValueError, match="truncated"):
        mnist_or_sample(tmp_path, download=False)


# ---------------------------------------------------------------------------- caching


def test_loaded_once_then_shared_until_the_files_change(tmp_path, monkeypatch):
    write_split(tmp_path)
    reads = []
    read_bytes = data._read_bytes
    monkeypatch.setattr(data, "_read_bytes", lambda path: reads.append(path) or read_bytes(path))
    first = mnist(tmp_path, download=False)
    assert len(reads) == 2  # images and labels
    (tmp_path / "sub").mkdir()
    assert mnist(tmp_path / "sub" / "..", download=False) is first  # same files, other spelling
    assert len(reads) == 2
    path = tmp_path / "train-images-idx3-ubyte"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert mnist(tmp_path, download=False) is not first
    assert len(reads) == 4


# ---------------------------------------------------------------------------- binarization


def test_binarize_uint8_and_float_agree_with_the_threshold():
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    for threshold in (0.0, 0.3, 0.5, 1.0):
        from_uint8 = binarize(x, threshold)
        from_float = binarize(x.double() / 255, threshold)
        assert from_uint8.dtype == torch.get_default_dtype() and from_float.dtype == torch.float64
        assert set(from_uint8.unique().tolist()) <= {0.0, 1.0}
        expected = (x.double() / 255 > threshold).double()
        assert torch.equal(from_float, expected)
        assert torch.equal(from_uint8.double(), expected)
    assert binarize(torch.tensor([0.5, 0.51])).tolist() == [0.0, 1.0]


def test_dynamic_binarize_mean_matches_intensity():
    p = torch.linspace(0, 1, 11)
    x = p.expand(20000, 11)
    out = dynamic_binarize(x, generator=torch.Generator().manual_seed(0))
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(out.mean(0), p, atol=0.02)  # binomial std <= 0.0036
    assert torch.equal(out[:, 0], torch.zeros(20000)) and torch.equal(out[:, -1], torch.ones(20000))
    u8 = torch.full((200, 100), 77, dtype=torch.uint8)
    drawn = dynamic_binarize(u8, generator=torch.Generator().manual_seed(1))
    assert drawn.dtype == torch.get_default_dtype()
    assert abs(drawn.mean().item() - 77 / 255) < 0.02


def test_dynamic_binarize_is_reproducible_with_a_generator_and_fresh_per_call():
    x = torch.rand(8, 1, 28, 28)
    a = dynamic_binarize(x, generator=torch.Generator().manual_seed(3))
    b = dynamic_binarize(x, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    first, second = dynamic_binarize(x, generator=g), dynamic_binarize(x, generator=g)
    assert torch.equal(a, b) and torch.equal(a, first)
    assert not torch.equal(first, second)


def test_binarization_rejects_bad_input():
    for fn in (binarize, dynamic_binarize):
        with pytest.raises(TypeError, match="uint8"):
            fn(torch.ones(3, dtype=torch.int64))
        with pytest.raises(ValueError, match=r"\[0, 1\].*\[-0.5, 2.0\]"):
            fn(torch.tensor([-0.5, 2.0]))
        with pytest.raises(TypeError, match="tensor"):
            fn([0.5])
    with pytest.raises(ValueError, match="threshold"):
        binarize(torch.rand(3), 1.5)
    with pytest.raises(TypeError, match="threshold"):
        binarize(torch.rand(3), "0.5")


# ---------------------------------------------------------------------------- the shipped sample


def sample_manifest() -> dict:
    return json.loads(
        resources.files("autoenc").joinpath("assets", "mnist-sample.json").read_text()
    )


@pytest.mark.parametrize(("train", "per_class"), [(True, 500), (False, 100)])
def test_sample_shapes_labels_and_checksums(train, per_class):
    x, y = mnist_sample(train=train)
    assert x.shape == (10 * per_class, 1, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10 * per_class,) and y.dtype == torch.int64
    assert y.bincount().tolist() == [per_class] * 10
    assert 0 < x.float().mean() < 255 and x.max() == 255  # real digits, not blank
    entry = sample_manifest()["train" if train else "test"]
    assert entry["per_class"] == per_class and len(entry["indices"]) == len(y)
    assert entry["indices"] == sorted(set(entry["indices"]))
    split = "train" if train else "t10k"
    for content, kind in zip(split_files(MNISTData(x, y)), ("images", "labels"), strict=True):
        name = f"mnist-sample-{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
        assert hashlib.sha256(content).hexdigest() == entry["sha256"][name]
    assert mnist_sample(train=train) is mnist_sample(train=train)


def test_sample_is_small_and_has_its_licence():
    assets = resources.files("autoenc").joinpath("assets")
    total = sum(len(p.read_bytes()) for p in assets.iterdir() if p.is_file())
    assert total < 2_000_000
    licence = assets.joinpath("MNIST_SAMPLE_LICENSE.txt").read_text()
    for needed in ("CC BY-SA 3.0", "Yann LeCun", "Corinna Cortes", "Christopher J.C. Burges"):
        assert needed in licence
    assert "CC BY-SA 3.0" in data.mnist_sample.__doc__


def test_fallback_warns_loudly_and_returns_the_sample(tmp_path, capsys):
    with pytest.warns(UserWarning, match="only|sample") as record:
        (x, y), is_sample = mnist_or_sample(tmp_path / "none", train=False, download=False)
    assert is_sample and x is mnist_sample(train=False).images
    text = str(record[0].message)
    assert "1000 test images instead of 10000" in text and "AUTOENC_DATA" in text
    assert "not full MNIST" in capsys.readouterr().err


def test_no_fallback_when_the_data_is_there(tmp_path):
    written = write_split(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded, is_sample = mnist_or_sample(tmp_path, download=False)
    assert not is_sample
    assert_same(loaded, written)


def test_mnist_never_substitutes_the_sample(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        mnist(tmp_path, download=False)


# ---------------------------------------------------------------------------- real MNIST (slow)


@pytest.mark.slow
def test_real_mnist_counts():
    root = real_root()
    x, y = mnist(root, download=False)
    x_test, y_test = mnist(root, train=False, download=False)
    assert x.shape == (60000, 1, 28, 28) and y.shape == (60000,)
    assert x_test.shape == (10000, 1, 28, 28) and y_test.shape == (10000,)
    assert y.bincount().tolist() == TRAIN_COUNTS


@pytest.mark.slow
@pytest.mark.parametrize("train", [True, False])
def test_sample_pixels_are_the_real_mnist_images(train):
    x, y = mnist(real_root(), train=train, download=False)
    sx, sy = mnist_sample(train=train)
    index = torch.tensor(sample_manifest()["train" if train else "test"]["indices"])
    assert torch.equal(x[index], sx) and torch.equal(y[index], sy)


@pytest.mark.slow
def test_sample_script_reproduces_the_committed_files(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_sample", REPO / "scripts" / "make_mnist_sample.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assets = REPO / "src" / "autoenc" / "assets"
    assert script.main(["--root", real_root(), "--out", str(assets), "--check"]) == 0
    assert script.main(["--root", real_root(), "--out", str(tmp_path)]) == 0
    for path in assets.glob("mnist-sample*"):
        fresh = (tmp_path / path.name).read_bytes()
        if path.suffix == ".gz":
            assert gzip.decompress(fresh) == gzip.decompress(path.read_bytes())
        else:
            assert fresh == path.read_bytes()
