"""Data-parallel training for :func:`autoenc.fit`: the process group, the DDP wrapper and the
small collectives that keep every process in step.

``fit`` trains on several processes (one per GPU, or several CPU processes) when it is started
by ``torchrun`` or inside a process group the user created. This module holds what that takes:

- :func:`setup` reads the launch (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``) or an existing process group, picks the device (``cuda:LOCAL_RANK``) and
  creates the process group when needed (NCCL on CUDA, Gloo on the CPU); :func:`teardown`
  destroys it again, only if :func:`setup` created it.
- :class:`LossModule` routes ``forward`` to ``model.loss``, so that
  ``DistributedDataParallel`` sees the loss computation and averages the gradients in backward.
- :class:`StepSync` runs one small all-reduce per step, before backward: it sums the loss terms
  (so the metrics are those of the whole global batch), carries each process's stop, interrupt
  and end-of-data flags (so all stop together and none is left waiting in a collective), and
  gives the weight that makes the averaged gradient the mean over the global batch when the
  processes' batches differ in size.

Nothing here runs in a single-process fit.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from autoenc._utils import resolve_device

__all__ = [
    "DistributedError",
    "DistributedSetup",
    "LossModule",
    "StepSync",
    "process_group",
    "setup",
    "teardown",
]

_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A collective failed: another process crashed, was killed or stopped answering."""


@dataclass
class DistributedSetup:
    """Where this process stands in the run.

    Attributes:
        rank: This process's rank, from 0.
        world_size: Number of processes (1: no distributed training).
        local_rank: Rank on this machine (picks the CUDA device).
        device: The training device of this process.
        owns_group: Whether :func:`setup` created the process group (and so destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """Whether training is spread over several processes."""
        return self.world_size > 1


# ---------------------------------------------------------------------------------------------
# the launch and the process group


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name}={value!r} is not an integer") from None


def _launched() -> bool:
    """Whether the environment describes a multi-process launch (``torchrun`` or equivalent)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and _env_int("WORLD_SIZE") > 1


def _group_ready() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def _check_mode(distributed: Any) -> None:
    if not (isinstance(distributed, bool) or distributed == "auto"):
        raise ValueError(f"distributed must be 'auto', True or False, got {distributed!r}")


def _timeout(seconds: Any) -> datetime.timedelta | None:
    if seconds is None:
        return None
    if isinstance(seconds, datetime.timedelta):
        seconds = seconds.total_seconds()
    if not (isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0):
        raise ValueError(
            f"distributed_timeout must be a positive number of seconds or None, got {seconds!r}"
        )
    return datetime.timedelta(seconds=seconds)


def _device(device: Any, local_rank: int) -> torch.device:
    """The device of this process: ``"auto"`` and ``"cuda"`` mean ``cuda:LOCAL_RANK``."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"LOCAL_RANK={local_rank} but this machine has {count} CUDA devices; start at "
                "most one process per GPU (torchrun --nproc_per_node=<number of GPUs>)"
            )
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def setup(distributed: Any, device: Any, *, timeout: Any = None) -> DistributedSetup:
    """Find out whether this is a multi-process run, and prepare it.

    Args:
        distributed: ``"auto"`` (use a process group that exists, or create one when launched
            by ``torchrun``), ``True`` (the same, but an error when neither is there) or
            ``False`` (train in this process alone).
        device: ``fit``'s ``device`` argument.
        timeout: Seconds a collective may wait before failing (for a group created here;
            ``None``: PyTorch's default).

    Returns:
        The :class:`DistributedSetup`; ``world_size == 1`` when not distributed.

    Raises:
        ValueError: A bad ``distributed`` or ``timeout``, ``distributed=True`` without a launch
            or a group, a ``LOCAL_RANK`` without its GPU, or an NCCL group with a CPU device.
    """
    _check_mode(distributed)
    delta = _timeout(timeout)
    if distributed is False:
        return DistributedSetup(device=resolve_device(device))
    dist = torch.distributed
    if _group_ready():
        world_size, rank = dist.get_world_size(), dist.get_rank()
        if world_size == 1:
            return DistributedSetup(device=resolve_device(device))
        local_rank = (
            _env_int("LOCAL_RANK")
            if "LOCAL_RANK" in os.environ
            else rank % max(torch.cuda.device_count(), 1)
        )
        dev = _device(device, local_rank)
        backend = str(dist.get_backend()).lower()
        if backend == "nccl" and dev.type != "cuda":
            raise ValueError(
                f"the process group uses NCCL, which needs CUDA, but fit's device is {dev}; "
                "create the group with backend='gloo' to train on the CPU"
            )
        return DistributedSetup(rank, world_size, local_rank, dev, owns_group=False)
    if not _launched():
        if distributed is True:
            missing = [v for v in _LAUNCH_VARIABLES if v not in os.environ]
            raise ValueError(
                "distributed=True but no process group is initialized and this process was not "
                f"launched for several processes (missing or 1: {missing or ['WORLD_SIZE']}); "
                "start the script with torchrun, e.g. torchrun --nproc_per_node=2 train.py"
            )
        return DistributedSetup(device=resolve_device(device))
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed: train in one process")
    for name in _LAUNCH_VARIABLES:
        if name not in os.environ:
            raise ValueError(
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {name} is not; launch with "
                "torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT"
            )
    rank, world_size = _env_int("RANK"), _env_int("WORLD_SIZE")
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    dev = _device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=delta)
    return DistributedSetup(rank, world_size, local_rank, dev, owns_group=True)


def teardown(run: DistributedSetup) -> None:
    """Destroy the process group if :func:`setup` created it; a user's group is left alone."""
    if run.owns_group and _group_ready():
        try:
            torch.distributed.destroy_process_group()
        except Exception as err:  # a group broken by a dead peer must not hide the real error
            warnings.warn(f"destroying the process group failed: {err}", stacklevel=2)


@contextlib.contextmanager
def process_group(
    distributed: Any, device: Any, *, timeout: Any = None
) -> Iterator[DistributedSetup]:
    """:func:`setup` on entry, :func:`teardown` on exit (also when training raised)."""
    run = setup(distributed, device, timeout=timeout)
    try:
        yield run
    finally:
        teardown(run)


# ---------------------------------------------------------------------------------------------
# the model


class LossModule(nn.Module):
    """``forward(*args)`` is ``model.loss(*args)`` (``x``, or ``x, y`` for a conditional model):
    what ``DistributedDataParallel`` has to wrap so the gradients of the loss (not of
    ``model.forward``) are averaged over the processes.

    When some parameters are unused, DDP finds the loss in the output; it looks into tensors,
    tuples, lists, dicts and dataclasses (such as :class:`~autoenc.LossOutput`).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Tensor) -> Any:
        return self.model.loss(*args)


def unused_parameters(model: nn.Module, loss: Tensor) -> list[str]:
    """Names of the trainable parameters of ``model`` that ``loss`` does not depend on."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return [n for (n, _), g in zip(named, grads, strict=True) if g is None]


def wrap(model: nn.Module, run: DistributedSetup, *, find_unused: bool) -> nn.Module:
    """``model`` in a ``DistributedDataParallel`` over :class:`LossModule`.

    The wrapper broadcasts rank 0's parameters and buffers, so every process starts from the
    same weights. ``find_unused`` must be true when ``model.loss`` leaves some trainable
    parameters without a gradient (DDP then looks for them after every forward).
    """
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [run.device.index] if run.device.type == "cuda" else None
    return DistributedDataParallel(
        LossModule(model), device_ids=device_ids, find_unused_parameters=find_unused
    )


# ---------------------------------------------------------------------------------------------
# collectives


def _all_reduce(t: Tensor, what: str) -> Tensor:
    """``t`` summed over the processes, in place; a failure names what was being summed."""
    dist = torch.distributed
    try:
        dist.all_reduce(t)
    except (RuntimeError, dist.DistError) as err:
        rank, size = dist.get_rank(), dist.get_world_size()
        raise DistributedError(
            f"process {rank} of {size}: the all-reduce of {what} failed, so another process "
            f"crashed, was killed or stopped answering (see its log for the cause): {err}"
        ) from err
    return t


def broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every process."""
    t = torch.tensor([value if torch.distributed.get_rank() == 0 else 0], device=device)
    return int(_all_reduce(t, "the run's seed").item())


def any_rank(flags: list[bool], device: torch.device, what: str = "the stop flags") -> list[bool]:
    """Each flag, true on every process when it is true on any."""
    t = torch.tensor([float(f) for f in flags], device=device)
    return [bool(v) for v in _all_reduce(t, what).tolist()]


def sum_over_ranks(values: Tensor, count: int, what: str) -> tuple[Tensor, int]:
    """``values`` and ``count`` summed over the processes (``values`` is float64 or float32)."""
    t = torch.cat([values.to(torch.float64), values.new_tensor([count], dtype=torch.float64)])
    t = _all_reduce(t, what)
    return t[:-1], int(t[-1].item())


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (on every process)."""
    dist = torch.distributed
    out: list[Any] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(out, obj)
    except (RuntimeError, dist.DistError) as err:
        raise DistributedError(f"gathering the processes' RNG states failed: {err}") from err
    return out


class StepSync:
    """The all-reduce of every step: loss terms, batch sizes and stop flags of all processes.

    Every process calls :meth:`step` once per batch, or :meth:`vote` instead when it has no
    batch to train on (it stops or its data ran out), so all processes run the same sequence
    of collectives and leave the epoch together.

    Args:
        keys: The loss terms ``model.loss`` reports, in order (the same on every process).
        device: The training device.
        world_size: Number of processes.
    """

    _FLAGS = 3  # stop, interrupted, out of data

    def __init__(self, keys: tuple[str, ...], device: torch.device, world_size: int) -> None:
        self.keys, self.device, self.world_size = keys, device, world_size

    def _reduce(self, sums: Tensor, n: int, flags: tuple[bool, bool, bool]) -> Tensor:
        head = torch.tensor([n, *map(float, flags)], dtype=torch.float64, device=self.device)
        return _all_reduce(torch.cat([sums.to(torch.float64), head]), "the step's loss terms")

    def step(
        self, keys: tuple[str, ...], values: Tensor, n: int, *, stop: bool, interrupted: bool
    ) -> tuple[Tensor | None, int, float, bool, bool]:
        """Share this process's batch: ``values`` are its mean terms over ``n`` examples.

        Returns:
            ``(means, total, weight, stop, interrupted)``: the terms' means over the global
            batch of ``total`` examples, the factor for this process's loss that makes DDP's
            averaged gradient the global mean (``n * world_size / total``), and whether any
            process asked to stop or was interrupted. ``means`` is ``None`` when another
            process had no batch: then nobody steps.
        """
        if keys != self.keys:
            raise ValueError(
                f"model.loss returned the terms {list(keys)} after {list(self.keys)}; the terms "
                "must be the same on every batch"
            )
        out = self._reduce(values.detach() * n, n, (stop, interrupted, False))
        k = len(self.keys)
        total, stop_any, interrupted_any, out_of_data = out[k:].tolist()  # one host sync
        if stop_any or out_of_data:
            return None, 0, 1.0, bool(stop_any), bool(interrupted_any)
        total_n = int(total)
        means = out[:k] / total_n
        return means, total_n, n * self.world_size / total_n, False, bool(interrupted_any)

    def vote(self, *, stop: bool, interrupted: bool) -> tuple[bool, bool]:
        """Take part in the step's all-reduce without a batch (stopping, or out of data).

        Returns:
            Whether any process asked to stop, and whether any was interrupted.
        """
        zeros = torch.zeros(len(self.keys), dtype=torch.float64, device=self.device)
        flags = self._reduce(zeros, 0, (stop, interrupted, not stop))[len(self.keys) + 1 :]
        stop_any, interrupted_any, _ = flags.tolist()
        return bool(stop_any), bool(interrupted_any)


def loss_and_sync(
    model: nn.Module, run: DistributedSetup, keys: tuple[str, ...], find_unused: bool
) -> tuple[Callable[..., Any], StepSync | None]:
    """``model.loss`` and no sync in one process; over several, ``model`` wrapped by :func:`wrap`
    and the :class:`StepSync` of the loss terms ``keys``."""
    loss_fn, sync = model.loss, None
    if run.enabled:
        loss_fn = wrap(unwrap(model), run, find_unused=find_unused)
        sync = StepSync(keys, run.device, run.world_size)
    return loss_fn, sync


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under a DataParallel/DistributedDataParallel wrapper."""
    return getattr(model, "module", model) if hasattr(model, "device_ids") else model


def per_rank_batch_sizes(
    data: Any, batch_size: int, val_batch_size: int, run: DistributedSetup
) -> tuple[int, int]:
    """Each process's training and validation batch sizes, from the global ones (validation's
    rounded up); a DataLoader keeps its own batch size and must be sharded."""
    world_size = run.world_size
    for_loader = isinstance(data, torch.utils.data.DataLoader)
    if for_loader:
        check_loader_shards(data, world_size)
    val_batch_size = -(-val_batch_size // world_size)
    if for_loader or world_size == 1:
        return batch_size, val_batch_size
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        raise ValueError(
            f"batch_size={batch_size} is the global batch (examples per optimizer step over all "
            f"{world_size} processes) and must be divisible by the number of processes; use "
            f"{lower or world_size} or {lower + world_size}"
        )
    return batch_size // world_size, val_batch_size


def check_loader_shards(loader: Any, world_size: int) -> None:
    """A DataLoader must give each process its own part of the data."""
    if world_size == 1 or isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return
    samplers = (loader.sampler, getattr(loader.batch_sampler, "sampler", None))
    if not any(getattr(s, "num_replicas", None) == world_size for s in samplers):
        raise ValueError(
            f"data is a DataLoader without a DistributedSampler for {world_size} processes, so "
            "every process would train on all of it; build it with "
            "sampler=DistributedSampler(dataset) or pass the dataset itself (fit shards it)"
        )


def mean_over_ranks(meter: Any) -> dict[str, float]:
    """Means of a :class:`~autoenc.evaluation.RunningMean` over all processes, each example
    weighing the same."""
    sums, count = sum_over_ranks(meter.sums, meter.count, "the validation metrics")
    return dict(zip(meter.keys, (sums / count).tolist(), strict=True))
