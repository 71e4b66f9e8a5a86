"""Data: MNIST as in-memory tensors (and a sample shipped with the package), binarization, and
the batching that turns any data into float batches on the training device."""

from __future__ import annotations

from autoenc.data.batching import Batches, make_batches
from autoenc.data.binarization import binarize, dynamic_binarize
from autoenc.data.datasets import (
    DatasetNotFoundError,
    MNISTData,
    clear_cache,
    mnist,
    mnist_or_sample,
    mnist_sample,
    resolve_root,
)

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
    "Batches",
    "make_batches",
]
