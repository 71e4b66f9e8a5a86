"""Training: :func:`fit` and the :class:`FitResult` it returns.

``fit`` trains any ``nn.Module`` with a ``loss(x)`` method (autoenc's models or a user's): it
checks the arguments and the first batch, builds the batches, the optimizer and the callbacks,
and hands them to the :class:`~autoenc.training.Loop`. Under ``torchrun`` the process
group, the sharding and the per-step sync come from :mod:`autoenc.training.distributed`.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from autoenc._utils import (
    SEED_BOUND,
    autocast,
    check_choice,
    check_int,
    check_model,
    check_number,
    check_precision,
    eval_mode,
    fork_rng,
    loss_terms,
    model_dtype,
)
from autoenc.data.batching import Batches, make_batches
from autoenc.training.callbacks import Callback, ProgressBar, State
from autoenc.training.checkpoint import ModelCheckpoint
from autoenc.training.distributed import (
    StepSync,
    broadcast_int,
    check_loader_shards,
    per_rank_batch_size,
    process_group,
    unused_parameters,
    unwrap,
    wrap,
)
from autoenc.training.loop import Interrupt, Loop, rank_seed
from autoenc.training.optimizers import build_optimizer, build_scheduler
from autoenc.training.resume import load_resume, restore_training

__all__ = ["fit", "FitResult"]

DEFAULT_BATCH_SIZE = 32
_INTERVALS = ("epoch", "step")


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: Per-epoch metrics: ``train/loss``, ``train/recon``, ``train/kl``,
            ``val/...``, ``lr`` and ``time`` (seconds), each a list with one value per epoch.
        metrics: The last epoch's metrics.
        state: The final :class:`~autoenc.training.State`.
        interrupted: Whether Ctrl-C stopped training.
        stopped_early: Whether a callback (e.g. early stopping) stopped training.
    """

    history: dict[str, list[float]]
    metrics: dict[str, float]
    state: State
    interrupted: bool = False
    stopped_early: bool = False

    @property
    def model(self) -> nn.Module:
        """The trained model."""
        return self.state.model

    @property
    def epochs_completed(self) -> int:
        """Epochs finished, counting those of a resumed run."""
        return self.state.epochs_completed

    @property
    def steps(self) -> int:
        """Optimizer steps taken, counting those of a resumed run."""
        return self.state.step


# ---------------------------------------------------------------------------------------------
# checking and preparing the arguments


def _batches(data: Any, name: str, **kwargs: Any) -> Batches:
    try:
        return make_batches(data, **kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from err


def _has_own_generator(loader: torch.utils.data.DataLoader) -> bool:
    sampler = getattr(loader.batch_sampler, "sampler", loader.sampler)
    return loader.generator is not None or getattr(sampler, "generator", None) is not None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % 2**32)


def _probe(
    model: nn.Module, batches: Batches, name: str, precision: str, *, find_unused: bool = False
) -> tuple[tuple[str, ...], list[str]]:
    """Check the first batch of ``batches`` and run ``model.loss`` on two of its examples,
    leaving no trace (RNG, mode, stats).

    Returns the names of the loss terms and, with ``find_unused``, of the trainable parameters
    the loss does not use (a backward pass, for DistributedDataParallel).
    """
    device = batches.device
    unused: list[str] = []
    with fork_rng(device):
        try:
            x = next(iter(batches))
        except StopIteration:
            raise ValueError(f"{name} is empty: it yields no batches") from None
        check_input = getattr(model, "check_input", None)
        try:
            if callable(check_input):  # the whole first batch, values too: once, off the loop
                check_input(x, values=True)
            x = x[:2]
            with eval_mode(model), torch.set_grad_enabled(find_unused), autocast(precision, device):
                out = model.loss(x)
        except Exception as err:
            raise ValueError(
                f"model.loss failed on a batch from {name} of shape {tuple(x.shape)} "
                f"({x.dtype}): {type(err).__name__}: {err}"
            ) from err
        loss, terms = loss_terms(out)
        if not (isinstance(loss, Tensor) and loss.numel() == 1 and loss.is_floating_point()):
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"model.loss must return a floating-point scalar loss, got {shape}")
        if find_unused and loss.requires_grad:
            unused = unused_parameters(model, loss)
    return tuple(terms), unused


@contextlib.contextmanager
def _checked_once(model: nn.Module) -> Iterator[None]:
    """Turn off an autoenc model's per-batch input check (the first batch was checked)."""
    validate = getattr(model, "validate", None)
    if isinstance(validate, bool):
        model.validate = False
    try:
        yield
    finally:
        if isinstance(validate, bool):
            model.validate = validate


def fit(
    model: nn.Module,
    data: Any,
    *,
    epochs: int,
    batch_size: int | None = None,
    optimizer: Any = None,
    lr: float | None = None,
    scheduler: Any = None,
    scheduler_interval: str = "epoch",
    val_data: Any = None,
    val_batch_size: int | None = None,
    callbacks: Sequence[Callback] = (),
    device: torch.device | str = "auto",
    precision: str = "fp32",
    grad_clip: float | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    seed: int | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    resume: str | os.PathLike[str] | None = None,
    nan_guard: bool = True,
    verbose: bool = True,
    handle_interrupt: bool = True,
    distributed: bool | str = "auto",
    distributed_timeout: float | None = None,
) -> FitResult:
    """Train ``model`` by minimizing ``model.loss(x)`` over ``data``.

    Tensors and tensor datasets take the fast path of :mod:`autoenc.data.batching` (the whole set in
    memory, one seeded permutation per epoch, no ``DataLoader``); any map-style ``Dataset`` or
    a ``DataLoader`` works too. Every argument is checked, and ``model.loss`` is run on two
    examples, before the first step, so a mistake fails at once with a clear message.

    Hooks run in this order: ``on_fit_start``; per epoch ``on_epoch_start``, ``on_batch_end``
    after every step, ``on_epoch_end`` (after validation and the per-epoch scheduler step);
    ``on_fit_end`` always, also when training raised or was interrupted.
    :class:`~autoenc.ModelCheckpoint` callbacks run after all others. When resuming, each
    callback's saved state is loaded after its ``on_fit_start`` (which may reset it).

    **Several processes.** Started by ``torchrun`` (or inside a process group you created),
    ``fit`` trains data-parallel with ``DistributedDataParallel``; the same script runs on one
    process unchanged::

        torchrun --standalone --nproc_per_node=4 train.py   # one machine, 4 processes
        # two machines, 8 GPUs each: run on both, --node_rank=0 on HOST0 and 1 on the other
        torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 \\
            --master_addr=HOST0 --master_port=29500 train.py

    It creates the process group (NCCL on CUDA, Gloo on the CPU; each process on
    ``cuda:LOCAL_RANK``) and destroys it at the end; a group you created is left alone.
    ``batch_size`` stays the global batch: each process takes ``batch_size // world_size``
    examples of every global batch, so a step on ``k`` processes is a step of one process on
    the same examples (the gradients are averaged, and weighted when the last batch splits
    unevenly) and the hyperparameters, the data order and the number of steps do not change
    with ``k``. Every process runs the same steps; the metrics and ``state.batch_terms`` are
    those of the global batch, identical on every process. Only rank 0
    (``state.is_main_process``) prints and writes checkpoints, pictures and logs; give every
    process the same callbacks. A stop (early stopping, Ctrl-C, a callback's
    ``should_stop``) or a NaN on any process stops them all at the same step; a process that
    dies makes the others raise :class:`~autoenc.training.DistributedError` (at once on
    Gloo, after ``distributed_timeout`` when it hangs). Each process draws its own noise
    (seeded from ``seed``); checkpoints hold every process's RNG state, so a resume on the
    same number of processes is exact. The resume file must be readable by every process.

    Args:
        model: Any ``nn.Module`` with ``loss(x)`` returning a scalar tensor, a
            :class:`~autoenc.LossOutput` or a dict with a ``"loss"`` key (other scalar entries
            are logged). It is moved to ``device`` and stays there.
        data: A tensor ``(n, ...)``, an ``(x, y)`` pair (labels ignored), a ``TensorDataset``,
            a map-style ``Dataset`` or a ``DataLoader``. ``uint8`` is scaled by 1/255.
        epochs: Total number of epochs (a resumed run counts the epochs already done).
        batch_size: Examples per optimizer step (default 32, the article's), over all
            processes in a distributed run, where it must be divisible by their number.
            Ignored for a DataLoader (whose batch size is per process).
        optimizer: ``None`` (Adam, fused where available), an optimizer instance over the
            model's parameters, an optimizer class, or a callable ``params -> optimizer``.
        lr: Learning rate for the default Adam (1e-3) or an optimizer class.
        scheduler: An LR scheduler for this optimizer, or a callable ``optimizer -> scheduler``
            (needed with the default optimizer). ``ReduceLROnPlateau`` steps on ``val/loss``
            when there is validation data, else on ``train/loss``.
        scheduler_interval: Step the scheduler every ``"epoch"`` or every ``"step"``.
        val_data: Data for ``val/...`` metrics after every epoch (same kinds as ``data``).
        val_batch_size: Batch size for validation (default ``batch_size``); split over the
            processes like ``batch_size``, rounded up.
        callbacks: :class:`~autoenc.training.Callback` instances.
        device: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda:1"``, ...
        precision: ``"fp32"``, or ``"bf16"`` for bfloat16 autocast (weights stay fp32).
        grad_clip: Clip the gradients' global norm to this value.
        transform: A callable applied to every float batch on the device, e.g.
            :func:`autoenc.data.dynamic_binarize`; also applied to ``val_data``.
        seed: Seeds Python's ``random``, torch (and NumPy when loaded) and fixes the data order
            and the validation noise, so two runs from the same initial model are identical.
            Build the model after ``torch.manual_seed`` for identical initial weights too.
            With several processes rank 0's seed (drawn when ``None``) fixes the data order
            of all, and the other processes' random draws get seeds derived from it.
        shuffle: Shuffle the training data every epoch (ignored for a DataLoader).
        drop_last: Drop each epoch's last, smaller batch.
        resume: A checkpoint written by :class:`~autoenc.ModelCheckpoint`: continue that run
            (model, optimizer, scheduler, RNGs, data order, history, callback states) so that
            the result equals the uninterrupted run's, bit for bit on the CPU. The run's seed
            comes from the checkpoint. From a mid-epoch (Ctrl-C) checkpoint the rest of the
            epoch is exact too; a ``DataLoader`` restarts its iterator from the generator
            state the epoch began with and skips the batches done (a loader with a
            ``generator=`` of its own draws another order; a warning says so). Another model
            kind or config, optimizer or scheduler class is refused before anything is
            loaded; other hyper-parameters or scheduler settings, which the checkpoint's
            replace, are named in warnings.
        nan_guard: Check every batch's loss terms before the optimizer step and raise
            :class:`NonFiniteLossError` naming the term when one is NaN or Inf, and the weights
            at the end of every epoch (a step that diverged on a finite loss), before the
            callbacks see it. Costs one host sync per step on an accelerator.
        verbose: Add a :class:`~autoenc.ProgressBar` when ``callbacks`` holds none.
        handle_interrupt: Catch Ctrl-C (in the main thread): stop after the current batch,
            write the ``ModelCheckpoint`` callbacks' ``last.pt`` and return with
            ``interrupted=True``; a second Ctrl-C raises ``KeyboardInterrupt`` at once.
        distributed: ``"auto"``: train on several processes when launched by ``torchrun``
            (``WORLD_SIZE`` > 1 with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
            ``MASTER_PORT``) or inside an initialized process group of several processes;
            ``True``: the same, but an error when there is neither; ``False``: train in this
            process alone, whatever the environment says.
        distributed_timeout: Seconds a collective may wait for the other processes before
            it fails, for a process group ``fit`` creates (``None``: PyTorch's default,
            10 minutes for NCCL and 30 for Gloo).

    Returns:
        A :class:`FitResult` with the per-epoch ``history`` and the final ``state``.

    Raises:
        TypeError: A model without ``loss``, data or arguments of the wrong kind.
        ValueError: Empty data, ``batch_size`` <= 0, ``epochs`` < 0, data that ``model.loss``
            rejects, a bad device or precision, or a ``resume`` checkpoint that is corrupted
            or incomplete, holds another model (kind, config or weights) or was written with
            another optimizer or scheduler class; in a distributed run also a ``batch_size``
            not divisible by the number of processes, a DataLoader without a
            ``DistributedSampler``, fewer examples than processes, or an incomplete
            ``torchrun`` environment.
        NonFiniteLossError: A loss term became NaN/Inf, or the weights did by the end of an
            epoch (also a ``ValueError``); in a distributed run on any process, raised on all.
        DistributedError: Another process of a distributed run died or stopped answering.

    Example:
        >>> from autoenc import Decoder, Encoder, GaussianVAE
        >>> vae = GaussianVAE(Encoder(4, [8], 4), Decoder(2, [8], 4), latent_dim=2,
        ...                   likelihood="mse")
        >>> result = fit(vae, torch.rand(64, 4), epochs=3, batch_size=16, seed=0,
        ...              verbose=False)
        >>> len(result.history["train/loss"]), sorted(result.metrics)
        (3, ['lr', 'time', 'train/kl', 'train/loss', 'train/recon'])
    """
    # 1. arguments, checked before anything changes
    check_model(model)
    epochs = check_int(epochs, "epochs", minimum=0)
    for_loader = isinstance(data, torch.utils.data.DataLoader)
    batch_size = check_int(DEFAULT_BATCH_SIZE if batch_size is None else batch_size, "batch_size")
    val_batch_size = check_int(
        batch_size if val_batch_size is None else val_batch_size, "val_batch_size"
    )
    check_choice(scheduler_interval, _INTERVALS, "scheduler_interval")
    if grad_clip is not None:
        grad_clip = check_number(grad_clip, "grad_clip", positive=True)
    if seed is not None:
        seed = check_int(seed, "seed", minimum=0)
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
    with process_group(distributed, device, timeout=distributed_timeout) as run:
        dev, rank, world_size = run.device, run.rank, run.world_size
        check_precision(precision, dev)
        if for_loader:
            check_loader_shards(data, world_size)
        batch_size = per_rank_batch_size(batch_size, world_size, for_loader)
        val_batch_size = -(-val_batch_size // world_size)
        target = unwrap(model)
        payload = load_resume(resume, target, run)
        if payload is not None and for_loader and _has_own_generator(data):
            warnings.warn(
                "the DataLoader draws its order from a generator of its own, whose state the "
                "checkpoint does not hold: the resumed run sees another order than the "
                "interrupted one. Leave generator= unset: the loader then draws from torch's "
                "generator, which the checkpoint restores",
                UserWarning,
                stacklevel=2,
            )

        # 2. seeds and data
        if seed is not None:
            _seed_everything(seed)
        if payload is not None:
            run_seed = payload["seed"]
        elif seed is not None:
            run_seed = seed
        else:
            run_seed = int(torch.randint(SEED_BOUND, ()))
        if run.enabled:
            run_seed = broadcast_int(run_seed, dev)  # one data order for all
            if rank > 0:
                _seed_everything(rank_seed(run_seed, rank))  # but noise of their own
        common = dict(
            device=dev,
            transform=transform,
            rank=rank,
            world_size=world_size,
            dtype=model_dtype(target),
        )
        train_batches = _batches(
            data,
            "data",
            batch_size=batch_size,
            shuffle=shuffle and not for_loader,
            generator=torch.Generator().manual_seed(run_seed),
            drop_last=drop_last,
            **common,
        )
        val_batches = None
        if val_data is not None:
            val_batches = _batches(
                val_data, "val_data", batch_size=val_batch_size, equal_batches=False, **common
            )

        # 3. model, optimizer, scheduler; a dry run of model.loss
        model.to(dev)
        opt = build_optimizer(target, optimizer, lr)
        sched = build_scheduler(scheduler, opt, scheduler_interval)
        keys, unused = _probe(model, train_batches, "data", precision, find_unused=run.enabled)
        if val_batches is not None:
            _probe(model, val_batches, "val_data", precision)

        callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)] + [
            c for c in callbacks if isinstance(c, ModelCheckpoint)
        ]
        if verbose and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.insert(0, ProgressBar())
        try:
            per_epoch = len(train_batches)
        except TypeError:
            per_epoch = None
        state = State(
            model=target,
            optimizer=opt,
            scheduler=sched,
            epochs=epochs,
            device=dev,
            is_main_process=rank == 0,
            rank=rank,
            world_size=world_size,
            batches_per_epoch=per_epoch,
            callbacks=callbacks,
            seed=run_seed,
            has_val_data=val_batches is not None,
        )
        if payload is not None:
            restore_training(
                payload,
                state,
                source=f"the resume checkpoint {str(resume)!r}",
                lr=lr,
                optimizer_chosen=optimizer is not None,
            )

        # 4. the loop
        loss_fn = model.loss
        sync = None
        if run.enabled:
            loss_fn = wrap(target, run, find_unused=bool(unused))
            sync = StepSync(keys, dev, world_size)
        loop = Loop(
            model,
            state,
            train_batches,
            val_batches,
            loss_fn=loss_fn,
            sync=sync,
            precision=precision,
            grad_clip=grad_clip,
            nan_guard=nan_guard,
            scheduler_interval=scheduler_interval,
        )
        modes = [(m, m.training) for m in model.modules()]
        try:
            with Interrupt(state, handle_interrupt), _checked_once(target):
                loop.run(payload)
        finally:  # leave every submodule's mode as found (a frozen one stays in eval)
            for m, training in modes:
                m.training = training
        return FitResult(
            history=state.history,
            metrics=state.metrics,
            state=state,
            interrupted=state.interrupted,
            stopped_early=state.should_stop and not state.interrupted,
        )
