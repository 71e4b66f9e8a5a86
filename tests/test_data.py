"""Tests for autoenc.data: reading MNIST files, root resolution, missing and damaged files, the
download's clean failure, the fallback to the shipped sample, and binarization. Unit tests
write tiny IDX files and never reach the network; real MNIST only in slow tests."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from importlib import resources
from pathlib import Path

import pytest
import torch

from autoenc.data import (
    DatasetNotFoundError,
    MNISTData,
    binarize,
    clear_cache,
    dynamic_binarize,
    mnist,
    mnist_or_sample,
    mnist_sample,
    resolve_root,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
REAL_ROOT_FROM_ENV = os.environ.get("AUTOENC_DATA")  # read before the fixture below hides it
NAMES = {
    (True, "images"): "train-images-idx3-ubyte",
    (True, "labels"): "train-labels-idx1-ubyte",
    (False, "images"): "t10k-images-idx3-ubyte",
    (False, "labels"): "t10k-labels-idx1-ubyte",
}


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


def write_split(root: Path, split: MNISTData | None = None, *, train: bool = True) -> MNISTData:
    """Write one split as torchvision keeps it: ``root/MNIST/raw/<name>``."""
    split = make_split() if split is None else split
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for kind, content in zip(("images", "labels"), split_files(split), strict=True):
        (raw / NAMES[train, kind]).write_bytes(content)
    return split


def assert_same(a: MNISTData, b: MNISTData) -> None:
    assert a.images.dtype == torch.uint8 and a.labels.dtype == torch.int64
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def real_root() -> Path:
    """Where real MNIST is: $AUTOENC_DATA, else ../shared/data; skips the test if neither."""
    for root in (REAL_ROOT_FROM_ENV, REPO.parent / "shared" / "data"):
        if root and all((Path(root) / "MNIST" / "raw" / n).is_file() for n in NAMES.values()):
            return Path(root)
    pytest.skip("real MNIST not found (set AUTOENC_DATA)")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No network, no AUTOENC_DATA, a fresh default cache folder, and no cached tensors."""

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.delenv("AUTOENC_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    clear_cache()
    yield
    clear_cache()


# ---------------------------------------------------------------------------- reading files


def test_reads_both_splits_from_torchvision_layout(tmp_path):
    train = write_split(tmp_path, make_split(10, seed=1))
    test = write_split(tmp_path, make_split(7, seed=2), train=False)
    loaded = mnist(tmp_path, download=False)
    assert loaded.images.shape == (10, 1, 28, 28) and loaded.labels.shape == (10,)
    assert_same(loaded, train)
    assert_same(mnist(tmp_path, train=False, download=False), test)
    assert repr(loaded) == "MNISTData(images=uint8[10, 1, 28, 28], labels=int64[10])"
    x, y = loaded
    assert x is loaded.images and y is loaded.labels


def test_tensors_are_shared_until_the_files_change(tmp_path):
    write_split(tmp_path, make_split(seed=1))
    first = mnist(tmp_path, download=False)
    (tmp_path / "sub").mkdir()
    assert mnist(tmp_path, download=False) is first
    assert mnist(tmp_path / "sub" / "..", download=False) is first  # same files, other spelling
    newer = write_split(tmp_path, make_split(seed=2))
    path = tmp_path / "MNIST" / "raw" / NAMES[True, "images"]
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    reread = mnist(tmp_path, download=False)
    assert_same(reread, newer)
    clear_cache()
    assert mnist(tmp_path, download=False) is not reread


def test_bad_argument_types(tmp_path):
    with pytest.raises(TypeError, match="train"):
        mnist(tmp_path, train="test", download=False)
    with pytest.raises(TypeError, match="download"):
        mnist(tmp_path, download=0)
    with pytest.raises(TypeError, match="root"):
        mnist(3, download=False)
    with pytest.raises(TypeError, match="hint"):
        mnist_or_sample(tmp_path, hint=None)
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


def test_loaders_follow_the_same_precedence(tmp_path, monkeypatch):
    from_cache = write_split(tmp_path / "xdg-cache" / "autoenc", make_split(seed=1))
    assert_same(mnist(download=False), from_cache)
    from_env = write_split(tmp_path / "env", make_split(seed=2))
    monkeypatch.setenv("AUTOENC_DATA", str(tmp_path / "env"))
    assert_same(mnist(download=False), from_env)
    from_arg = write_split(tmp_path / "arg", make_split(seed=3))
    assert_same(mnist(tmp_path / "arg", download=False), from_arg)


# ---------------------------------------------------------------------------- missing files


def test_missing_files_list_the_paths_the_reason_and_the_fix(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: calls.append(a))
    root = tmp_path / "empty"
    with pytest.raises(DatasetNotFoundError) as info:
        mnist(root, train=False, download=False)
    message = str(info.value)
    raw = root / "MNIST" / "raw"
    assert calls == [] and isinstance(info.value, FileNotFoundError)
    assert info.value.searched == [raw / NAMES[False, "images"], raw / NAMES[False, "labels"]]
    for path in info.value.searched:
        assert f"{path}  (missing)" in message
    assert "that folder does not exist" in message and "download=False" in message
    assert "pass root=DIR or set AUTOENC_DATA=DIR" in message
    assert not root.exists()


def test_one_missing_file_is_named_as_missing(tmp_path):
    write_split(tmp_path)
    (tmp_path / "MNIST" / "raw" / NAMES[True, "labels"]).unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        mnist(tmp_path, download=False)
    message = str(info.value)
    assert f"{NAMES[True, 'images']}  (found)" in message
    assert f"{NAMES[True, 'labels']}  (missing)" in message
    assert "does not exist" not in message


def test_offline_download_fails_with_the_reason_under_a_timeout(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOENC_DATA", str(tmp_path / "env"))
    timeouts = []

    def offline(*args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        mnist()
    message = str(info.value)
    assert "from $AUTOENC_DATA" in message
    assert "download into" in message and "Name or service not known" in message
    assert isinstance(info.value.__cause__, Exception)
    # the download ran under a finite socket timeout, and the process default was restored
    assert timeouts and all(t is not None and t > 0 for t in timeouts)
    assert socket.getdefaulttimeout() is None


def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    class Garbage(io.BytesIO):  # an answer whose md5 is wrong, written to disk before the check
        url, length = None, 100

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Garbage(b"x" * 100))
    raw = tmp_path / "mine" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("kept")
    before = tree(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="download into"):
        mnist(tmp_path / "mine")
    assert tree(tmp_path) == before
    with pytest.raises(DatasetNotFoundError):
        mnist(tmp_path / "mine" / "typo" / "data")  # a whole new folder chain
    assert tree(tmp_path) == before


# ---------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize(
    ("kind", "edit", "match"),
    [
        ("images", lambda b: b[:-5], "corrupt or truncated"),
        ("images", lambda b: b + b"\0", "corrupt or truncated"),
        ("images", lambda b: b[:3], "corrupt or truncated"),
        ("images", lambda b: b[:10], "corrupt or truncated"),
        ("images", lambda b: b"\x00\x00\x08\x01" + b[4:], "corrupt or truncated"),
        ("labels", lambda b: b"\x12\x34" + b[2:], "corrupt or truncated"),
        ("images", lambda b: gzip.compress(b), "gzip data: decompress it"),
        ("images", lambda b: idx_bytes(torch.zeros(10, 28, 27, dtype=torch.uint8)), r"\(28, 27\)"),
        ("labels", lambda b: b[:-1] + bytes([12]), "digits 0-9, found 12"),
        ("labels", lambda b: b[:7] + bytes([9]) + b[8:-1], "has 9 labels"),
    ],
)
def test_damaged_files_raise_value_error_naming_the_file(tmp_path, kind, edit, match):
    write_split(tmp_path)
    path = tmp_path / "MNIST" / "raw" / NAMES[True, kind]
    path.write_bytes(edit(path.read_bytes()))
    with pytest.raises(ValueError, match=match) as info:
        mnist(tmp_path, download=False)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------- the fallback


def test_fallback_warns_once_with_each_splits_reason_and_the_hint():
    with pytest.warns(UserWarning) as record:
        (train, test), is_sample = mnist_or_sample(download=False, hint="--data-root DIR")
    assert is_sample and len(record) == 1
    assert train is mnist_sample() and test is mnist_sample(train=False)
    text = str(record[0].message)
    assert "5000 training and 1000 test images instead of 60000 and 10000" in text
    assert "MNIST train and t10k files not found" in text
    assert text.count("  (missing)") == 4 and "download=False" in text
    assert "pass --data-root DIR or set AUTOENC_DATA=DIR" in text
    assert record[0].filename == __file__  # points at the caller


def test_fallback_reason_is_the_real_one_for_each_split(tmp_path, monkeypatch):
    write_split(tmp_path / "xdg-cache" / "autoenc")  # train only, in the default cache
    attempts = []

    def offline(*args, **kwargs):
        attempts.append(args)
        raise urllib.error.URLError("mirror unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.warns(UserWarning) as record:
        _, is_sample = mnist_or_sample()
    assert is_sample and len(record) == 1
    text = str(record[0].message)
    assert "MNIST t10k files not found" in text and "train-images-idx3-ubyte  (" not in text
    assert "mirror unreachable" in text and "download=False" not in text
    assert attempts  # one download, for both splits


@pytest.mark.parametrize("named_by", ["argument", "env"])
def test_a_named_folder_without_mnist_fails_instead_of_falling_back(
    tmp_path, monkeypatch, named_by
):
    typo = tmp_path / "dta"
    root = typo if named_by == "argument" else None
    if named_by == "env":
        monkeypatch.setenv("AUTOENC_DATA", str(typo))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DatasetNotFoundError) as info:
            mnist_or_sample(root, hint="--data-root DIR")
    message = str(info.value)
    assert "that folder does not exist" in message and "pass --data-root DIR" in message
    assert ("$AUTOENC_DATA" in message) == (named_by == "env")
    assert "MNIST train and t10k files not found" in message
    assert not typo.exists()


def test_no_fallback_when_the_data_is_there(tmp_path):
    train = write_split(tmp_path, make_split(10, seed=1))
    test = write_split(tmp_path, make_split(4, seed=2), train=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (loaded_train, loaded_test), is_sample = mnist_or_sample(tmp_path, download=False)
    assert not is_sample
    assert_same(loaded_train, train)
    assert_same(loaded_test, test)


def test_damaged_files_do_not_fall_back(tmp_path):
    write_split(tmp_path / "xdg-cache" / "autoenc")
    write_split(tmp_path / "xdg-cache" / "autoenc", train=False)
    path = tmp_path / "xdg-cache" / "autoenc" / "MNIST" / "raw" / NAMES[False, "images"]
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        mnist_or_sample(download=False)


def test_mnist_never_substitutes_the_sample():
    with pytest.raises(DatasetNotFoundError):
        mnist(download=False)


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
    assert "CC BY-SA 3.0" in mnist_sample.__doc__


# ---------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_importing_autoenc_does_not_import_torchvision():
    code = "import sys, autoenc, autoenc.data; print('torchvision' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


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
def test_download_of_the_published_files_lands_where_mnist_reads(tmp_path, monkeypatch):
    raw = real_root() / "MNIST" / "raw"
    served = {f"{name}.gz": (raw / f"{name}.gz").read_bytes() for name in NAMES.values()}

    class Response(io.BytesIO):
        def __init__(self, url: str) -> None:
            super().__init__(served[url.rsplit("/", 1)[1]])
            self.url, self.length = url, len(self.getvalue())

    monkeypatch.setattr(urllib.request, "urlopen", lambda req, *a, **k: Response(req.full_url))
    (train, test), is_sample = mnist_or_sample(tmp_path / "fresh")
    assert not is_sample
    assert_same(train, mnist(real_root(), download=False))
    assert_same(test, mnist(real_root(), train=False, download=False))


@pytest.mark.slow
def test_sample_script_reproduces_the_committed_files(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_sample", REPO / "scripts" / "make_mnist_sample.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assets = REPO / "src" / "autoenc" / "assets"
    root = str(real_root())
    assert script.main(["--root", root, "--out", str(assets), "--check"]) == 0
    assert script.main(["--root", root, "--out", str(tmp_path)]) == 0
    for path in assets.glob("mnist-sample*"):
        fresh = (tmp_path / path.name).read_bytes()
        if path.suffix == ".gz":
            assert gzip.decompress(fresh) == gzip.decompress(path.read_bytes())
        else:
            assert fresh == path.read_bytes()
