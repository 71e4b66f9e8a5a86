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
The order of epoch ``e`` depends only on the seed and on ``e``, so a resumed run sees the same
batches; with ``world_size > 1`` every rank takes its shard of every global batch
(:func:`make_batches` says how).
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from autoenc._utils import SEED_BOUND, check_int, resolve_device
from autoenc.data.conversion import (
    check_dtype,
    first_of,
    fits_on,
    item_tensor,
    second_of,
    stack_labels,
    tensors_of,
    to_float,
)

_NO_LABELS = (
    "labels=True (a conditional model) needs data with labels: an (x, y) pair of tensors, a "
    "TensorDataset(x, y), a Dataset of (x, y) items or a DataLoader of (x, y) batches"
)

__all__ = ["Batches", "TensorBatches", "DatasetBatches", "LoaderBatches", "make_batches"]


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
        self.epoch = check_int(epoch, "epoch", minimum=0)
        self._skip = check_int(skip, "skip", minimum=0)

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
            x = x if self.transform is None else self.transform(x)
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
        self.drop_last, self.transform, self.equal_batches = drop_last, transform, equal_batches
        self.rank, self.world_size = rank, world_size
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
        g = torch.Generator().manual_seed(self.seed + epoch) if self.shuffle else None
        order = torch.randperm(self.n, generator=g) if g is not None else torch.arange(self.n)
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
        check_dtype(x, "data")
        super().__init__(x.shape[0], **kwargs)
        if self.labels and y is None:
            raise ValueError(_NO_LABELS + "; got a tensor of examples alone")
        self.x = x.to(self.device) if fits_on(x, self.device) else x
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
            items = [item_tensor(item) for item in raw]
            try:
                x = torch.stack(items)
            except RuntimeError as err:
                shapes = sorted({tuple(t.shape) for t in items})
                raise ValueError(f"dataset items differ in shape: {shapes}") from err
            y = stack_labels([second_of(i, "dataset items") for i in raw]) if self.labels else None
            yield to_float(x, self.device, dtype=self.dtype), y if y is None else y.to(self.device)


class LoaderBatches(Batches):
    """A ``DataLoader`` used as it is; ``x`` of each batch is converted (and ``y`` kept with
    ``labels``).

    Its iterator draws from torch's global generator when it starts. To continue an epoch
    after ``skip`` batches, :meth:`set_epoch` takes the generator state the epoch began with:
    the iterator restarts from it, skips the batches, and every generator is put back, so the
    rest of the epoch equals the uninterrupted one.
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
            x = first_of(batch)
            if not isinstance(x, Tensor):
                raise TypeError(
                    "a DataLoader batch must be a tensor or a tuple/list starting with one, got "
                    f"{type(x).__name__}"
                )
            y = None
            if self.labels:
                y = torch.as_tensor(second_of(batch, "DataLoader batches")).to(self.device)
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
        data: A tensor ``(n, ...)``, a NumPy array, an ``(x, y)`` tuple of tensors, a
            ``TensorDataset`` (or a ``Subset`` of one), a map-style ``Dataset`` (items ``x`` or
            ``(x, y, ...)``; PIL images as ``ToTensor`` reads them), or a ``DataLoader``.
        batch_size: Examples per batch (ignored for a ``DataLoader``, which has its own).
        shuffle: Draw a new permutation every epoch (ignored for a ``DataLoader``).
        generator: Source of the shuffle's seed (one draw, at construction); the global torch
            generator when ``None``.
        device: Where batches are yielded. Tensors move there once, when they fit.
        drop_last: Drop the last, smaller batch (with ``world_size > 1``: the last, smaller
            global batch of ``batch_size * world_size``).
        transform: A callable applied to every float batch on the device (e.g. binarization).
        rank: This process's rank, from 0.
        world_size: Number of processes. Each epoch's permutation is cut into global batches of
            ``batch_size * world_size``; rank ``r`` takes positions ``r``, ``r + world_size``,
            ... of each, so the ranks' ``k``-th batches together are a single process's.
        equal_batches: With ``world_size > 1``, every rank yields as many batches (training:
            each step is a collective; the last global batch is split, padded with the epoch's
            first examples when too small). ``False`` (evaluation): every ``world_size``-th
            example, none twice; the ranks' batch counts may differ.
        dtype: Cast floating-point data to this dtype (a model's parameter dtype: NumPy's
            float64 arrays then train a float32 model); ``None`` keeps it.
        labels: Yield ``(x, y)`` pairs (what a conditional model's ``loss(x, y)`` takes): ``y``
            is the data's labels, moved to ``device`` without conversion, taken (and sharded)
            exactly like ``x``; ``transform`` and ``dtype`` apply to ``x`` only.

    Returns:
        A :class:`Batches`: ``len()`` is the number of batches per epoch, iterating yields one
        epoch, ``set_epoch(e)`` fixes the order, ``num_examples`` counts the examples yielded.

    Raises:
        ValueError: Empty data, a bad ``batch_size``, ``rank``, ``world_size`` or ``device``,
            an ``(x, y)`` of different lengths, fewer examples than ``world_size``, or
            ``labels`` with data that has none.
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
    pair = tensors_of(data)
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
