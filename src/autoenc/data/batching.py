"""Turning training data into batches of float tensors on the training device.

:func:`make_batches` accepts a tensor, an ``(x, y)`` pair, a ``TensorDataset`` (or a ``Subset``
of one), a NumPy array, any map-style ``Dataset`` or a ``DataLoader``, and returns a
:class:`Batches` object that yields ``x`` as a float tensor on the device: ``uint8`` pixels are
scaled to ``[0, 1]``, ``bool`` becomes ``0.``/``1.``, floating-point data keeps its dtype. Labels
are dropped, or with ``labels=True`` (for a conditional model) every batch is an ``(x, y)`` pair
whose ``y`` is moved to the device as it is and taken in the same order as ``x``.

Tensors take a fast path: the whole set stays in memory (moved to the training device once when
it fits there, kept ``uint8`` until each batch is converted), and an epoch is one seeded
permutation sliced into batches: no per-sample Python and no ``DataLoader``. A map-style dataset
is read one item at a time in the same seeded order; a ``DataLoader`` is used as it is.

The order of epoch ``e`` depends only on the seed drawn from ``generator`` and on ``e``
(:meth:`Batches.set_epoch`), so a resumed run sees the same batches as an uninterrupted one.
With ``world_size > 1`` every rank takes a disjoint shard of the same permutation (for
``DistributedDataParallel``): its part of every global batch of ``batch_size * world_size``
examples, so all ranks take the same number of steps and their batches together are those of a
single process with the global batch.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from autoenc._utils import SEED_BOUND, check_int, resolve_device

__all__ = ["Batches", "TensorBatches", "DatasetBatches", "LoaderBatches", "make_batches"]


# ---------------------------------------------------------------------------------------------
# helpers


def to_float(
    x: Tensor, device: torch.device, *, dtype: torch.dtype | None = None, what: str = "data"
) -> Tensor:
    """Move ``x`` to ``device`` as ``dtype`` (``uint8`` / 255, ``bool`` -> 0/1).

    ``dtype=None`` keeps floating-point data as it is and gives the others the default dtype.
    The move comes first, so ``uint8`` images cross to an accelerator at a quarter of the size.
    """
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        return x.to(dtype or torch.get_default_dtype()).div_(255)
    if x.dtype == torch.bool:
        return x.to(dtype or torch.get_default_dtype())
    if x.is_floating_point():
        return x if dtype is None else x.to(dtype)
    raise TypeError(
        f"{what} must hold floating-point, uint8 (pixels, scaled by 1/255) or bool values, got "
        f"dtype {x.dtype}; convert it yourself, e.g. x.float()"
    )


def _check_dtype(x: Tensor, what: str) -> None:
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.bool)):
        to_float(x[:0], torch.device("cpu"), what=what)  # raises the TypeError


def _first(item: Any) -> Any:
    """``x`` of an ``(x, y, ...)`` item or batch; anything else is ``x`` itself."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError("a data item is an empty tuple; expected x or (x, y)")
        return item[0]
    return item


def _second(item: Any, what: str) -> Any:
    """``y`` of an ``(x, y, ...)`` item or batch, or a ``ValueError`` naming what came instead."""
    if not (isinstance(item, (tuple, list)) and len(item) >= 2):
        kind = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else type(item).__name__
        raise ValueError(
            f"labels=True (a conditional model) needs {what} that are (x, y) pairs, got {kind}"
        )
    return item[1]


def _stack_labels(ys: list[Any]) -> Tensor:
    """The labels of one batch as one tensor: ints, floats, NumPy values or tensors."""
    if all(isinstance(y, Tensor) for y in ys):
        return torch.stack(ys)
    return torch.as_tensor(ys if type(ys[0]).__module__ != "numpy" else [y.tolist() for y in ys])


def _item_tensor(item: Any) -> Tensor:
    """One dataset item as a tensor: PIL images become ``(c, h, w)`` uint8 as ``ToTensor`` does."""
    x = _first(item)
    if isinstance(x, Tensor):
        return x
    if type(x).__module__.startswith("PIL."):
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(x)  # (c, h, w) uint8, scaled by to_float as ToTensor would
    if type(x).__module__ == "numpy":
        return torch.from_numpy(x)
    raise TypeError(
        f"dataset items must be tensors, PIL images or NumPy arrays (or tuples starting with one), "
        f"got {type(x).__name__}"
    )


def _fits_on(x: Tensor, device: torch.device) -> bool:
    """Whether the whole of ``x`` should live on ``device``: on the CPU always; on CUDA when it
    takes at most half of the free memory."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return x.numel() * x.element_size() <= free // 2


def _tensor_of(data: Any) -> tuple[Tensor, Tensor | None] | None:
    """The ``x`` tensor of data that can take the fast path and its labels (``None`` when it
    has none), or ``None``."""
    if isinstance(data, Tensor):
        return data, None
    if type(data).__module__ == "numpy" and hasattr(data, "shape"):
        return torch.from_numpy(data), None
    if isinstance(data, TensorDataset):
        return data.tensors[0], data.tensors[1] if len(data.tensors) > 1 else None
    if isinstance(data, Subset) and isinstance(data.dataset, TensorDataset):
        indices = torch.as_tensor(list(data.indices), dtype=torch.long)
        tensors = [t.index_select(0, indices) for t in data.dataset.tensors[:2]]
        return tensors[0], tensors[1] if len(tensors) > 1 else None
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], Tensor):
        if not (isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Tensor)):
            raise TypeError(
                f"a {type(data).__name__} of {len(data)} tensors is ambiguous: pass one tensor "
                "of examples (torch.cat the parts along dim 0), an (x, y) tuple of examples and "
                "labels, or a Dataset"
            )
        if data[0].dim() == 0 or data[1].dim() == 0 or len(data[0]) != len(data[1]):
            raise ValueError(
                "the tensors of an (x, y) pair must have the same length (first dimension), got "
                f"shapes {[tuple(t.shape) for t in data]}"
            )
        return data[0], data[1]
    return None


# ---------------------------------------------------------------------------------------------
# the three kinds of batches


class Batches:
    """Batches of ``x`` (or ``(x, y)`` pairs) for one rank: iterate for one epoch;
    :meth:`set_epoch` picks the order.

    Attributes:
        batch_size: Examples per batch (the last one may be smaller unless ``drop_last``).
        device: Where the batches are.
        seed: The seed of the shuffle (the order of epoch ``e`` uses ``seed + e``), or ``None``.
        labels: Whether every batch is an ``(x, y)`` pair.
    """

    batch_size: int
    device: torch.device
    seed: int | None = None
    transform: Callable[[Tensor], Tensor] | None = None
    dtype: torch.dtype | None = None  # floating-point data is cast to it (None: kept as it is)
    labels: bool = False

    def __init__(self) -> None:
        self.epoch, self._skip = 0, 0

    def set_epoch(self, epoch: int, *, skip: int = 0, rng: Tensor | None = None) -> None:
        """Iterate epoch ``epoch`` next, starting after its first ``skip`` batches.

        Without calls to ``set_epoch`` each iteration moves on to the next epoch by itself.

        Args:
            epoch: The epoch, from 0.
            skip: Batches of it already done.
            rng: With ``skip``, torch's CPU generator state when the epoch first started: a
                ``DataLoader`` starts its iterator from it (see ``LoaderBatches``); the
                other kinds ignore it, their order depends on the seed and the epoch alone.
        """
        if not (isinstance(epoch, int) and epoch >= 0):
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        if not (isinstance(skip, int) and skip >= 0):
            raise ValueError(f"skip must be a non-negative int, got {skip!r}")
        self.epoch, self._skip = epoch, skip

    @property
    def num_examples(self) -> int | None:
        """Examples this rank yields per epoch (``None`` when a ``DataLoader`` cannot tell)."""
        raise NotImplementedError

    @property
    def dataset_size(self) -> int | None:
        """Examples in the whole data set, over all ranks."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Tensor | tuple[Tensor, Tensor]]:
        skip, self._skip = self._skip, 0
        epoch, self.epoch = self.epoch, self.epoch + 1
        for x, y in self._epoch_batches(epoch, skip):
            if self.transform is not None:
                x = self.transform(x)
            yield (x, y) if self.labels else x

    def _epoch_batches(self, epoch: int, skip: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        raise NotImplementedError


class _IndexedBatches(Batches):
    """Shared by the in-memory and map-style paths: a seeded, sharded permutation of indices."""

    def __init__(
        self,
        n: int,
        *,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
        device: torch.device,
        drop_last: bool,
        transform: Callable[[Tensor], Tensor] | None,
        rank: int,
        world_size: int,
        equal_batches: bool,
        labels: bool,
    ) -> None:
        super().__init__()
        self.labels = labels
        self.n, self.batch_size, self.shuffle, self.device = n, batch_size, shuffle, device
        self.drop_last, self.transform, self.rank, self.world_size = (
            drop_last,
            transform,
            rank,
            world_size,
        )
        self.equal_batches = equal_batches
        if shuffle:
            self.seed = int(torch.randint(SEED_BOUND, (), generator=generator))
        step = batch_size * world_size  # examples per optimizer step over all ranks
        if world_size > 1 and n < world_size:
            raise ValueError(
                f"the data has {n} examples, fewer than the {world_size} processes: every "
                "process needs at least one"
            )
        if drop_last and n < step:
            raise ValueError(
                f"the data has {n} examples: too few for one batch of {step}"
                + (f" ({batch_size} on each of {world_size} processes)" if world_size > 1 else "")
                + " with drop_last=True"
            )
        if world_size == 1 or equal_batches:
            full, rest = divmod(n, step)
            rest = 0 if drop_last else rest
            # the last, smaller global batch: split over the ranks, padded to one example each
            last = 0 if rest == 0 else len(range(rank, max(rest, world_size), world_size))
            self._shard = full * batch_size + last
            self._len = full + (rest > 0)
        else:
            self._shard = len(range(rank, n, world_size))
            self._len = math.ceil(self._shard / batch_size)

    @property
    def num_examples(self) -> int:
        return self._shard

    @property
    def dataset_size(self) -> int:
        return self.n

    def __len__(self) -> int:
        return self._len

    def _indices(self, epoch: int) -> Tensor:
        """This rank's indices for ``epoch``, on the CPU, in the order it takes them."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        w, b = self.world_size, self.batch_size
        if w == 1:
            return order[: self._shard]
        if not self.equal_batches:
            return order[self.rank :: w]
        # global batch k is order[k*b*w : (k+1)*b*w], the union of every rank's batch k: the
        # same examples a single process with batch b*w takes at step k
        full = self.n // (b * w)
        head = order[: full * b * w].reshape(full, b, w)[:, :, self.rank].reshape(-1)
        rest = order[full * b * w :]
        if self.drop_last or len(rest) == 0:
            return head
        if len(rest) < w:  # fewer examples than ranks: repeat the epoch's first ones
            rest = torch.cat([rest, order[: w - len(rest)]])
        return torch.cat([head, rest[self.rank :: w]])


class TensorBatches(_IndexedBatches):
    """The fast path: one in-memory tensor gathered batch by batch with a seeded permutation."""

    def __init__(self, x: Tensor, y: Tensor | None = None, **kwargs: Any) -> None:
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"data is empty: got a tensor of shape {tuple(x.shape)}")
        _check_dtype(x, "data")
        super().__init__(x.shape[0], **kwargs)
        if self.labels and y is None:
            raise ValueError(
                "labels=True (a conditional model) needs data with labels: an (x, y) pair of "
                "tensors, a TensorDataset(x, y), a Dataset of (x, y) items or a DataLoader of "
                "(x, y) batches; got a tensor of examples alone"
            )
        self.x = x.to(self.device) if _fits_on(x, self.device) else x
        # the labels sit beside x, so one index picks both
        self.y = y.to(self.x.device) if self.labels and y is not None else None

    def _epoch_batches(self, epoch: int, skip: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        order = self._indices(epoch).to(self.x.device, non_blocking=True)
        for b in range(skip, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = to_float(self.x.index_select(0, idx), self.device, dtype=self.dtype)
            y = None if self.y is None else self.y.index_select(0, idx).to(self.device)
            yield x, y


class DatasetBatches(_IndexedBatches):
    """A map-style dataset read item by item in the seeded order, stacked into batches."""

    def __init__(self, dataset: Any, **kwargs: Any) -> None:
        n = len(dataset)
        if n == 0:
            raise ValueError("data is empty: the dataset has length 0")
        super().__init__(n, **kwargs)
        self.dataset = dataset

    def _epoch_batches(self, epoch: int, skip: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        order = self._indices(epoch).tolist()
        for b in range(skip, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            raw = [self.dataset[i] for i in idx]
            items = [_item_tensor(item) for item in raw]
            try:
                x = torch.stack(items)
            except RuntimeError as err:
                shapes = sorted({tuple(t.shape) for t in items})
                raise ValueError(f"dataset items differ in shape: {shapes}") from err
            y = None
            if self.labels:
                y = _stack_labels([_second(item, "dataset items") for item in raw])
                y = y.to(self.device)
            yield to_float(x, self.device, dtype=self.dtype), y


class LoaderBatches(Batches):
    """A ``DataLoader`` used as it is; ``x`` of each batch is converted (and ``y`` kept with
    ``labels``).

    Its iterator draws from torch's global generator when it starts (a ``RandomSampler``'s
    order, the workers' base seed), as in a plain training loop. To continue an epoch after
    ``skip`` batches as it began, give :meth:`set_epoch` the generator state the epoch started
    with: the iterator is then started from that state and the skipped batches are read with
    every generator (torch's, Python's, NumPy's) put back afterwards, so the rest of the epoch
    sees the same batches and draws the same numbers as the uninterrupted epoch.
    """

    def __init__(
        self,
        loader: DataLoader,
        *,
        device: torch.device,
        transform: Callable[[Tensor], Tensor] | None,
        labels: bool = False,
    ) -> None:
        super().__init__()
        self.loader, self.device, self.transform = loader, device, transform
        self.labels = labels
        self.batch_size = loader.batch_size or 0
        self._replay: Tensor | None = None
        try:
            length = len(loader)
        except TypeError:
            length = None
        if length == 0:
            raise ValueError("data is empty: the DataLoader yields no batches")

    @property
    def num_examples(self) -> int | None:
        try:
            n = len(self.loader.sampler) if self.loader.batch_size else None
        except TypeError:
            return None
        if n is not None and self.loader.drop_last:
            n -= n % self.loader.batch_size
        return n

    @property
    def dataset_size(self) -> int | None:
        try:
            return len(self.loader.dataset)
        except TypeError:
            return None

    def __len__(self) -> int:
        try:
            return len(self.loader)
        except TypeError as err:
            raise TypeError("this DataLoader has no length (an iterable-style dataset)") from err

    def set_epoch(self, epoch: int, *, skip: int = 0, rng: Tensor | None = None) -> None:
        super().set_epoch(epoch, skip=skip)
        self._replay = rng if skip else None
        for sampler in (self.loader.sampler, getattr(self.loader.batch_sampler, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)

    def _replayed(self, rng: Tensor, skip: int) -> Iterator[Any]:
        """The loader's iterator started from generator state ``rng``, past ``skip`` batches."""
        np = sys.modules.get("numpy")
        saved = torch.get_rng_state(), random.getstate(), np and np.random.get_state()
        torch.set_rng_state(rng)
        try:
            batches = iter(self.loader)
            for _ in range(skip):
                if next(batches, None) is None:
                    break
        finally:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            if np is not None:
                np.random.set_state(saved[2])
        return batches

    def _epoch_batches(self, epoch: int, skip: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        replay, self._replay = self._replay, None
        batches: Any = self.loader
        if replay is not None:
            batches, skip = self._replayed(replay, skip), 0
        for b, batch in enumerate(batches):
            if b < skip:
                continue
            x = _first(batch)
            if not isinstance(x, Tensor):
                raise TypeError(
                    "a DataLoader batch must be a tensor or a tuple/list starting with one, got "
                    f"{type(x).__name__}"
                )
            y = None
            if self.labels:
                y = torch.as_tensor(_second(batch, "DataLoader batches")).to(self.device)
            yield to_float(x, self.device, dtype=self.dtype), y


# ---------------------------------------------------------------------------------------------


def make_batches(
    data: Any,
    *,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
    transform: Callable[[Tensor], Tensor] | None = None,
    rank: int = 0,
    world_size: int = 1,
    equal_batches: bool = True,
    dtype: torch.dtype | None = None,
    labels: bool = False,
) -> Batches:
    """Batches of ``x`` as float tensors on ``device``, from any supported kind of data.

    Args:
        data: A tensor ``(n, ...)``, a NumPy array, a tuple ``(x,)``/``(x, y)`` of tensors, a
            ``TensorDataset`` (or a ``Subset`` of one), a map-style ``Dataset`` (items ``x`` or
            ``(x, y, ...)``; PIL images are read like ``ToTensor`` does), or a ``DataLoader``.
            Labels are dropped unless ``labels``.
        batch_size: Examples per batch (ignored for a ``DataLoader``, which has its own).
        shuffle: Draw a new permutation every epoch (ignored for a ``DataLoader``).
        generator: Source of the shuffle's seed (one draw, at construction); the global torch
            generator when ``None``.
        device: Where batches are yielded. Tensors move there once, when they fit.
        drop_last: Drop the last, smaller batch (with ``world_size > 1``: the last, smaller
            global batch of ``batch_size * world_size``).
        transform: A callable applied to every float batch on the device (e.g. binarization).
        rank: This process's rank, from 0.
        world_size: Number of processes. Every epoch's shared permutation is cut into global
            batches of ``batch_size * world_size`` examples, and each rank takes its
            ``batch_size`` of every one: rank ``r`` takes the examples at positions ``r``,
            ``r + world_size``, ... of the global batch. The shards are disjoint and the union
            of the ranks' ``k``-th batches is the ``k``-th batch of a single process with
            batch ``batch_size * world_size``.
        equal_batches: With ``world_size > 1``, make every rank yield the same number of
            batches (needed for training, where each step is a collective): the last global
            batch is split over the ranks, sizes differing by at most one, and when it holds
            fewer examples than there are ranks it is padded with the epoch's first examples.
            ``False`` (for evaluation): each rank takes every ``world_size``-th example of the
            permutation, no example twice, and the ranks' batch counts may differ.
        dtype: Cast floating-point data to this dtype (a model's parameter dtype: NumPy's
            float64 arrays then train a float32 model); ``None`` keeps it.
        labels: Yield ``(x, y)`` pairs (what a conditional model's ``loss(x, y)`` takes): ``y``
            is the data's labels, moved to ``device`` without conversion, taken (and sharded)
            exactly like ``x``; ``transform`` and ``dtype`` apply to ``x`` only.

    Returns:
        A :class:`Batches`: ``len()`` is the number of batches per epoch, iterating yields one
        epoch, ``set_epoch(e)`` fixes the order, ``num_examples`` counts the examples yielded.

    Raises:
        ValueError: Empty data, ``batch_size`` not a positive int, a bad ``rank``/``world_size``
            or ``device``, tensors of different lengths in a tuple, fewer examples than
            ``world_size``, or ``labels`` with data that has none (items and ``DataLoader``
            batches are checked as they are read).
        TypeError: A kind of data it cannot read, a non-numeric dtype, or a ``transform`` that
            is not callable.

    Example:
        >>> x = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
        >>> batches = make_batches(x, batch_size=4, shuffle=True,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> len(batches), batches.num_examples, [tuple(b.shape) for b in batches]
        (3, 10, [(4, 1, 4, 4), (4, 1, 4, 4), (2, 1, 4, 4)])
        >>> float(next(iter(batches)).max()) <= 1.0
        True
    """
    check_int(batch_size, "batch_size")
    check_int(world_size, "world_size")
    if not (isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator)}")
    device = resolve_device(device)
    if isinstance(data, DataLoader):
        batches: Batches = LoaderBatches(
            data, device=device, transform=transform, labels=bool(labels)
        )
    else:
        batches = _indexed(
            data,
            batch_size=batch_size,
            shuffle=bool(shuffle),
            generator=generator,
            device=device,
            drop_last=bool(drop_last),
            transform=transform,
            rank=rank,
            world_size=world_size,
            equal_batches=bool(equal_batches),
            labels=bool(labels),
        )
    batches.dtype = dtype
    return batches


def _indexed(data: Any, **options: Any) -> _IndexedBatches:
    pair = _tensor_of(data)
    if pair is not None:
        return TensorBatches(*pair, **options)
    if isinstance(data, IterableDataset):
        raise TypeError("an IterableDataset has no random access: wrap it in a DataLoader")
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        if isinstance(data, (str, bytes, dict)):
            raise TypeError(f"cannot train on a {type(data).__name__}")
        return DatasetBatches(data, **options)
    raise TypeError(
        "data must be a tensor, an (x, y) pair, a Dataset or a DataLoader, got "
        f"{type(data).__name__}"
    )
