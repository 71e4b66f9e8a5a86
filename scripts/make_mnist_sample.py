"""Build the MNIST sample shipped in ``src/autoenc/assets/`` from the real MNIST files.

Takes ``--train-per-class`` images of each digit from the training file and ``--test-per-class``
from the test file, evenly spaced through that digit's occurrences (no randomness, so the
selection depends on the labels alone), keeps them in file order with their pixels unchanged,
and writes them as gzip-compressed IDX files (mtime 0, so the output depends only on the data
and zlib) plus ``mnist-sample.json`` with the MNIST index of every image and checksums.

The script refuses files whose content differs from the published MNIST (md5 of the
decompressed IDX files), so the sample is always real MNIST.

Usage::

    python scripts/make_mnist_sample.py --root DIR
    python scripts/make_mnist_sample.py --root DIR --out OUT --check

where ``DIR`` holds ``MNIST/raw/`` (torchvision's layout).

``--check`` compares the decompressed contents with the files already in ``--out`` instead of
writing, and exits 1 if they differ.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path

import torch

from autoenc.data import mnist

# md5 of the decompressed IDX files, as published with MNIST (and in torchvision's mirrors).
SOURCE_MD5 = {
    ("train", "images"): "6bbc9ace898e44ae57da46a324031adb",
    ("train", "labels"): "a25bea736e30d166cdddb491f175f624",
    ("t10k", "images"): "2646ac647ad5339dbf082846283269ea",
    ("t10k", "labels"): "27ae3e4e09519cfbb04c329615203637",
}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "autoenc" / "assets"


def idx_bytes(t: torch.Tensor) -> bytes:
    """A uint8 tensor as an IDX file: magic 0x08 (unsigned bytes), ndim, big-endian dims, data."""
    if t.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 tensor, got {t.dtype}")
    header = bytes([0, 0, 0x08, t.dim()]) + b"".join(d.to_bytes(4, "big") for d in t.shape)
    return header + t.contiguous().numpy().tobytes()


def stratified_indices(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """``per_class`` indices of each digit, evenly spaced through its occurrences, sorted."""
    picked = []
    for digit in range(10):
        where = (labels == digit).nonzero().flatten()
        if len(where) < per_class:
            raise ValueError(f"digit {digit} has {len(where)} images, fewer than {per_class}")
        picked.append(where[torch.arange(per_class) * len(where) // per_class])
    return torch.cat(picked).sort().values


def build(root: str | None, train_per_class: int, test_per_class: int) -> tuple[dict, dict]:
    """The sample files (name -> decompressed IDX bytes) and the manifest."""
    files: dict[str, bytes] = {}
    manifest: dict = {
        "dataset": "MNIST, by Yann LeCun, Corinna Cortes and Christopher J.C. Burges",
        "license": "CC BY-SA 3.0, https://creativecommons.org/licenses/by-sa/3.0/",
        "made_by": "scripts/make_mnist_sample.py",
        "selection": "per digit, per_class images evenly spaced through that digit's "
        "occurrences in the file (index k*count//per_class of them, k = 0..per_class-1), "
        "in file order; pixels and labels unchanged",
    }
    for train, split, per_class in (
        (True, "train", train_per_class),
        (False, "t10k", test_per_class),
    ):
        x, y = mnist(root, train=train, download=False)
        full = {"images": idx_bytes(x.squeeze(1)), "labels": idx_bytes(y.to(torch.uint8))}
        for kind, data in full.items():
            md5 = hashlib.md5(data).hexdigest()
            if md5 != SOURCE_MD5[split, kind]:
                raise SystemExit(f"{split} {kind}: md5 {md5} is not the published MNIST file's")
        index = stratified_indices(y, per_class)
        entry = {"per_class": per_class, "source_md5": {}, "sha256": {}, "indices": index.tolist()}
        sample = {"images": x[index].squeeze(1), "labels": y[index].to(torch.uint8)}
        for kind, t in sample.items():
            name = f"mnist-sample-{split}-{kind}-idx{t.dim()}-ubyte.gz"
            files[name] = idx_bytes(t)
            entry["source_md5"][kind] = SOURCE_MD5[split, kind]
            entry["sha256"][name] = hashlib.sha256(files[name]).hexdigest()
        manifest["train" if train else "test"] = entry
    return files, manifest


def manifest_text(manifest: dict) -> str:
    """Indented JSON with each index list on one line, so the file stays small and readable."""
    text = json.dumps(manifest, indent=2)
    for split in ("train", "test"):
        full = json.dumps(manifest[split]["indices"], indent=2).replace("\n", "\n    ")
        text = text.replace(full, json.dumps(manifest[split]["indices"]), 1)
    return text + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", help="folder holding MNIST/raw (default: $AUTOENC_DATA)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    args = parser.parse_args(argv)

    files, manifest = build(args.root, args.train_per_class, args.test_per_class)
    if args.check:
        stale = [
            name
            for name, data in files.items()
            if not (args.out / name).is_file()
            or gzip.decompress((args.out / name).read_bytes()) != data
        ]
        if json.loads((args.out / "mnist-sample.json").read_text()) != manifest:
            stale.append("mnist-sample.json")
        print("up to date" if not stale else f"differs: {', '.join(stale)}")
        return 1 if stale else 0

    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    (args.out / "mnist-sample.json").write_text(manifest_text(manifest))
    total = sum((args.out / name).stat().st_size for name in [*files, "mnist-sample.json"])
    print(f"wrote {len(files) + 1} files to {args.out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
