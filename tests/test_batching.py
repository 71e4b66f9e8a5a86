"""Tests for autoenc.data.batching: every kind of data, order, sharding and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    Subset,
    TensorDataset,
)

from autoenc.data.batching import DatasetBatches, LoaderBatches, TensorBatches, make_batches


def _rows(batches) -> torch.Tensor:
    return torch.cat(list(batches))


def _sorted_rows(t: torch.Tensor) -> torch.Tensor:
    flat = t.reshape(t.shape[0], -1)
    return flat[torch.argsort(flat[:, 0])]


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(10, 3, generator=torch.Generator().manual_seed(0))


class ItemDataset(Dataset):
    """A map-style dataset of ``(x_i, label)`` pairs, as torchvision datasets are."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], i


# ---------------------------------------------------------------------------------------------
# what comes out


def test_tensor_batches_cover_the_data_once_per_epoch(x):
    batches = make_batches(x, batch_size=4, shuffle=True, generator=torch.Generator())
    assert isinstance(batches, TensorBatches)
    assert len(batches) == 3 and batches.num_examples == 10 and batches.dataset_size == 10
    out = list(batches)
    assert [b.shape[0] for b in out] == [4, 4, 2]
    assert torch.equal(_sorted_rows(torch.cat(out)), _sorted_rows(x))


def test_without_shuffle_the_order_is_the_data_order(x):
    assert torch.equal(_rows(make_batches(x, batch_size=3)), x)


def test_drop_last_drops_the_partial_batch(x):
    batches = make_batches(x, batch_size=4, drop_last=True)
    assert len(batches) == 2 and batches.num_examples == 8
    assert torch.equal(_rows(batches), x[:8])


def test_uint8_is_scaled_to_unit_interval_and_bool_becomes_float():
    pixels = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    (out,) = list(make_batches(pixels, batch_size=1))
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[0.0, 0.2, 1.0]]))
    (flags,) = list(make_batches(torch.tensor([[True, False]]), batch_size=1))
    assert torch.equal(flags, torch.tensor([[1.0, 0.0]]))


def test_float64_data_keeps_its_dtype(x):
    (out,) = list(make_batches(x.double(), batch_size=10))
    assert out.dtype == torch.float64 and torch.equal(out, x.double())


def test_integer_data_other_than_uint8_is_rejected():
    with pytest.raises(TypeError, match="int64"):
        make_batches(torch.arange(6).reshape(3, 2), batch_size=2)


def test_batches_are_copies_not_views_of_the_data(x):
    original = x.clone()
    for b in make_batches(x, batch_size=4):
        b.mul_(0)
    assert torch.equal(x, original)


def test_transform_is_applied_to_every_batch(x):
    out = _rows(make_batches(x, batch_size=4, transform=lambda b: b * 2))
    assert torch.equal(out, x * 2)


# ---------------------------------------------------------------------------------------------
# the same data in every wrapping


def test_pairs_datasets_arrays_and_subsets_give_the_same_batches(x):
    labels = torch.arange(10)
    expected = _rows(make_batches(x, batch_size=4))
    for data in [(x, labels), TensorDataset(x, labels), x.numpy()]:
        assert torch.equal(_rows(make_batches(data, batch_size=4)), expected)
    subset = Subset(TensorDataset(x, labels), [7, 2, 5])
    assert torch.equal(_rows(make_batches(subset, batch_size=2)), x[[7, 2, 5]])


def test_map_style_dataset_matches_the_fast_path(x):
    fast = make_batches(x, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    slow = make_batches(
        ItemDataset(x), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    assert isinstance(slow, DatasetBatches) and len(slow) == len(fast)
    for _ in range(2):  # two epochs, two orders
        assert torch.equal(_rows(slow), _rows(fast))


def test_pil_images_are_read_like_to_tensor():
    image = pytest.importorskip("PIL.Image")
    transforms = pytest.importorskip("torchvision.transforms")
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 6), dtype=np.uint8)
    img = image.fromarray(pixels)
    (out,) = list(make_batches([(img, 0)], batch_size=1))
    assert out.shape == (1, 1, 5, 6)
    assert torch.allclose(out[0], transforms.ToTensor()(img))


def test_dataloader_batches_keep_only_x_and_are_converted():
    pixels = torch.randint(0, 256, (10, 3), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(pixels, torch.arange(10)), batch_size=4)
    batches = make_batches(loader, batch_size=999)
    assert isinstance(batches, LoaderBatches)
    assert len(batches) == 3 and batches.num_examples == 10 and batches.dataset_size == 10
    assert torch.allclose(_rows(batches), pixels.float() / 255)


def test_dataloader_set_epoch_reaches_a_distributed_sampler(x):
    sampler = DistributedSampler(TensorDataset(x), num_replicas=2, rank=0, shuffle=True, seed=0)
    batches = make_batches(
        DataLoader(TensorDataset(x), batch_size=2, sampler=sampler), batch_size=2
    )
    batches.set_epoch(5)
    assert sampler.epoch == 5


# ---------------------------------------------------------------------------------------------
# order: seeded, per epoch, resumable


def test_shuffle_is_reproducible_from_the_generator_and_differs_per_epoch(x):
    def orders(seed: int) -> list[torch.Tensor]:
        batches = make_batches(
            x, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        return [_rows(batches) for _ in range(3)]

    first, again, other = orders(0), orders(0), orders(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], other[0])


def test_set_epoch_picks_the_order_and_skip_resumes_inside_it(x):
    batches = make_batches(x, batch_size=3, shuffle=True, generator=torch.Generator())
    epochs = [list(batches) for _ in range(3)]
    batches.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(list(batches), epochs[1], strict=True))
    batches.set_epoch(2, skip=2)
    tail = list(batches)
    assert len(tail) == 2
    assert all(torch.equal(a, b) for a, b in zip(tail, epochs[2][2:], strict=True))
    assert len(list(batches)) == 4  # the skip applies once; then a whole epoch 3


def test_world_size_splits_a_shared_permutation_into_disjoint_shards(x):
    def shard(rank: int, drop_last: bool = False) -> torch.Tensor:
        return _rows(
            make_batches(
                x,
                batch_size=2,
                shuffle=True,
                generator=torch.Generator().manual_seed(7),
                rank=rank,
                world_size=3,
                drop_last=drop_last,
            )
        )

    shards = [shard(r) for r in range(3)]
    assert [len(s) for s in shards] == [4, 3, 3]
    assert torch.equal(_sorted_rows(torch.cat(shards)), _sorted_rows(x))
    even = [shard(r, drop_last=True) for r in range(3)]
    assert [len(s) for s in even] == [2, 2, 2]  # 9 usable examples, 3 per rank, 1 batch each
    rows = {tuple(r.tolist()) for s in even for r in s}
    assert len(rows) == 6


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_batch_size_must_be_a_positive_int(x, bad):
    with pytest.raises(ValueError, match="batch_size"):
        make_batches(x, batch_size=bad)


@pytest.mark.parametrize(
    "data, match",
    [
        (torch.empty(0, 3), "empty"),
        (TensorDataset(torch.empty(0, 3)), "empty"),
        (ItemDataset(torch.empty(0, 3)), "empty"),
        (DataLoader(TensorDataset(torch.empty(0, 3)), batch_size=2), "empty"),
    ],
)
def test_empty_data_is_rejected(data, match):
    with pytest.raises(ValueError, match=match):
        make_batches(data, batch_size=2)


@pytest.mark.parametrize(
    "data, error, match",
    [
        (42, TypeError, "int"),
        ("abc", TypeError, "str"),
        ([torch.zeros(3)] * 5, TypeError, "list of 5 tensors is ambiguous"),
        ([torch.zeros(3, 2), torch.zeros(3)], TypeError, "torch.cat"),
        ((torch.zeros(3, 2),), TypeError, "tuple of 1 tensors"),
        ((torch.zeros(3, 2), torch.zeros(3), torch.ones(3)), TypeError, "an .x, y. tuple"),
        ((torch.zeros(3, 2), torch.zeros(4)), ValueError, "same length"),
        ((torch.zeros(3, 2), [1, 2, 3]), TypeError, "ambiguous"),
    ],
)
def test_wrong_kinds_of_data_are_rejected(data, error, match):
    with pytest.raises(error, match=match):
        make_batches(data, batch_size=2)


def test_iterable_dataset_must_come_in_a_dataloader():
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(3)

    with pytest.raises(TypeError, match="DataLoader"):
        make_batches(Stream(), batch_size=2)


def test_rank_world_size_device_transform_and_generator_are_checked(x):
    with pytest.raises(ValueError, match="rank"):
        make_batches(x, batch_size=2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        make_batches(x, batch_size=2, world_size=0)
    with pytest.raises(ValueError, match="device"):
        make_batches(x, batch_size=2, device="gpu7")
    with pytest.raises(TypeError, match="transform"):
        make_batches(x, batch_size=2, transform="binarize")
    with pytest.raises(TypeError, match="generator"):
        make_batches(x, batch_size=2, generator=0)
    with pytest.raises(ValueError, match="too few"):
        make_batches(x[:2], batch_size=4, drop_last=True)


def test_items_of_different_shapes_get_a_clear_error():
    data = [(torch.zeros(3), 0), (torch.zeros(4), 1)]
    with pytest.raises(ValueError, match="differ in shape"):
        list(make_batches(data, batch_size=2))
