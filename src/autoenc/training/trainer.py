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
from torch.utils.data import DataLoader

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
    keep_freed_memory,
    loss_terms,
    model_dtype,
)
from autoenc._utils import flush_denormals as denormals_flushed
from autoenc.data.batching import Batches, make_batches
from autoenc.training.callbacks import Callback, ProgressBar, State
from autoenc.training.checkpoint import ModelCheckpoint
from autoenc.training.distributed import (
    DistributedSetup,
    broadcast_int,
    loss_and_sync,
    per_rank_batch_sizes,
    process_group,
    unused_parameters,
    unwrap,
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
# the steps of fit, in the order it takes them


def _checked_arguments(
    model: nn.Module,
    epochs: int,
    batch_size: int | None,
    val_batch_size: int | None,
    scheduler_interval: str,
    grad_clip: float | None,
    seed: int | None,
) -> tuple[int, int, int, float | None, int | None]:
    """The checked ``epochs``, batch sizes, ``grad_clip`` and ``seed``, defaults filled in."""
    check_model(model)
    epochs = check_int(epochs, "epochs", minimum=0)
    batch_size = check_int(DEFAULT_BATCH_SIZE if batch_size is None else batch_size, "batch_size")
    val_batch_size = check_int(
        batch_size if val_batch_size is None else val_batch_size, "val_batch_size"
    )
    check_choice(scheduler_interval, _INTERVALS, "scheduler_interval")
    if grad_clip is not None:
        grad_clip = check_number(grad_clip, "grad_clip", positive=True)
    if seed is not None:
        seed = check_int(seed, "seed", minimum=0)
    return epochs, batch_size, val_batch_size, grad_clip, seed


def _callbacks(callbacks: Sequence[Callback], verbose: bool) -> list[Callback]:
    """The checked ``callbacks``, checkpoints last; ``verbose`` adds a progress bar if none is."""
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
    callbacks = sorted(callbacks, key=lambda c: isinstance(c, ModelCheckpoint))  # a stable sort
    if verbose and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.insert(0, ProgressBar())
    return callbacks


def _resume_payload(
    resume: Any, target: nn.Module, run: DistributedSetup, data: Any
) -> dict[str, Any] | None:
    """The checked ``resume`` checkpoint, or ``None``; warns when the data order cannot resume."""
    payload = load_resume(resume, target, run)
    if payload is None or not isinstance(data, DataLoader):
        return payload
    sampler = getattr(data.batch_sampler, "sampler", data.sampler)
    if data.generator is not None or getattr(sampler, "generator", None) is not None:
        warnings.warn(
            "the DataLoader draws its order from a generator of its own, whose state the "
            "checkpoint does not hold: the resumed run sees another order than the "
            "interrupted one. Leave generator= unset: the loader then draws from torch's "
            "generator, which the checkpoint restores",
            UserWarning,
            stacklevel=3,  # the caller of fit
        )
    return payload


def _seed_everything(seed: int) -> None:
    """Seed Python's ``random``, torch and, when it is loaded, NumPy."""
    random.seed(seed)
    torch.manual_seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % 2**32)


def _run_seed(seed: int | None, payload: dict[str, Any] | None, run: DistributedSetup) -> int:
    """The run's seed (the checkpoint's, ``seed`` or a drawn one), once this process is seeded."""
    if seed is not None:
        _seed_everything(seed)
    if payload is not None:
        run_seed = payload["seed"]
    else:
        run_seed = seed if seed is not None else int(torch.randint(SEED_BOUND, ()))
    if run.enabled:
        run_seed = broadcast_int(run_seed, run.device)  # one data order for all
        if run.rank > 0:
            _seed_everything(rank_seed(run_seed, run.rank))  # but noise of their own
    return run_seed


def _batch_settings(target: nn.Module, run: DistributedSetup, transform: Any) -> dict[str, Any]:
    """The :func:`make_batches` arguments that training and validation batches share."""
    return dict(
        device=run.device,
        transform=transform,
        rank=run.rank,
        world_size=run.world_size,
        dtype=model_dtype(target),
        labels=getattr(target, "conditional", False) is True,
    )


def _batches(data: Any, name: str, **kwargs: Any) -> Batches:
    """``make_batches(data, **kwargs)``, whose errors name the argument ``name``."""
    try:
        return make_batches(data, **kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from err


def _train_batches(data: Any, run_seed: int, *, shuffle: bool, **settings: Any) -> Batches:
    """The training batches, in an order drawn from the run's seed (a DataLoader keeps its own)."""
    shuffle = shuffle and not isinstance(data, DataLoader)
    generator = torch.Generator().manual_seed(run_seed)
    return _batches(data, "data", shuffle=shuffle, generator=generator, **settings)


def _val_batches(val_data: Any, batch_size: int, **settings: Any) -> Batches | None:
    """The validation batches, or ``None`` without ``val_data``."""
    if val_data is None:
        return None
    return _batches(val_data, "val_data", batch_size=batch_size, equal_batches=False, **settings)


def _probe(
    model: nn.Module, batches: Batches, name: str, precision: str, *, find_unused: bool = False
) -> tuple[tuple[str, ...], list[str]]:
    """The loss terms' names and, with ``find_unused``, the unused parameters' (for DDP), from a
    check of the first batch and a traceless dry run of ``model.loss`` on two of its examples."""
    device = batches.device
    unused: list[str] = []
    with fork_rng(device):
        try:
            batch = next(iter(batches))
        except StopIteration:
            raise ValueError(f"{name} is empty: it yields no batches") from None
        x, *y = batch if isinstance(batch, tuple) else (batch,)  # y: [labels] or []
        check_input = getattr(model, "check_input", None)
        check_condition = getattr(model, "check_condition", None)
        try:
            if callable(check_input):  # the whole first batch, values too: once, off the loop
                check_input(x, values=True)
            if y and callable(check_condition):
                check_condition(y[0], x.shape[0], values=True)
            x, y = x[:2], [t[:2] for t in y]
            with eval_mode(model), torch.set_grad_enabled(find_unused), autocast(precision, device):
                out = model.loss(x, *y)
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


def _state(
    target: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    run: DistributedSetup,
    train_batches: Batches,
    val_batches: Batches | None,
    epochs: int,
    callbacks: list[Callback],
    run_seed: int,
) -> State:
    """The :class:`State` of a fresh run, which the loop and the callbacks share."""
    try:
        per_epoch = len(train_batches)
    except TypeError:
        per_epoch = None
    return State(
        model=target,
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=epochs,
        device=run.device,
        is_main_process=run.rank == 0,
        rank=run.rank,
        world_size=run.world_size,
        batches_per_epoch=per_epoch,
        callbacks=callbacks,
        seed=run_seed,
        has_val_data=val_batches is not None,
    )


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


@contextlib.contextmanager
def _training(model: nn.Module, state: State, interrupt: bool, flush: bool) -> Iterator[None]:
    """A context for the loop: Ctrl-C, input checks off, denormals flushed, modes restored."""
    modes = [(m, m.training) for m in model.modules()]
    keep_freed_memory()
    try:
        with Interrupt(state, interrupt), _checked_once(state.model), denormals_flushed(flush):
            yield
    finally:  # leave every submodule's mode as found (a frozen one stays in eval)
        for m, training in modes:
            m.training = training


def _result(state: State) -> FitResult:
    """The :class:`FitResult` of a finished run."""
    stopped_early = state.should_stop and not state.interrupted
    return FitResult(state.history, state.metrics, state, state.interrupted, stopped_early)


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
    flush_denormals: bool = True,
) -> FitResult:
    """Train ``model`` by minimizing ``model.loss(x)`` over ``data``.

    Every argument and the first batch are checked before the first step. Under ``torchrun`` the
    same call trains data-parallel. The guide's *Training*, *Checkpoints* and *Distributed
    training* pages explain the data, hooks, seeds, metrics, resuming and ``torchrun`` in full.

    Args:
        model: Any ``nn.Module`` whose ``loss(x)`` returns a scalar tensor, a
            :class:`~autoenc.LossOutput` or a dict with a ``"loss"`` key (other scalars are
            logged). It moves to ``device`` and stays there.
        data: A tensor ``(n, ...)``, an ``(x, y)`` tuple, a ``Dataset`` or a ``DataLoader``; its
            floating-point data (NumPy's float64 too) is cast to the model's dtype. Its labels go
            to ``model.loss(x, y)`` if the model's class sets ``conditional = True``, else unused.
        epochs: Total epochs (a resumed run counts the epochs already done).
        batch_size: Examples per optimizer step over all processes (default 32, the article's).
        optimizer: ``None`` (Adam), an optimizer instance or class, or a callable
            ``params -> optimizer``.
        lr: Learning rate for the default Adam (1e-3) or an optimizer class.
        scheduler: An LR scheduler, or a callable ``optimizer -> scheduler``.
        scheduler_interval: Step the scheduler every ``"epoch"`` or every ``"step"``.
        val_data: Data for the ``val/...`` metrics after every epoch (as ``data``).
        val_batch_size: Batch size for validation (default ``batch_size``).
        callbacks: :class:`~autoenc.Callback` instances; :class:`~autoenc.ModelCheckpoint`
            ones run last.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``, ...
        precision: ``"fp32"``, or ``"bf16"`` for bfloat16 autocast (weights stay fp32).
        grad_clip: Clip the gradients' global norm to this value.
        transform: Applied to every float batch on the device, ``val_data``'s too.
        seed: Seeds Python, torch and NumPy (if loaded); fixes the data order and validation noise.
        shuffle: Shuffle the training data every epoch (ignored for a DataLoader).
        drop_last: Drop each epoch's last, smaller batch.
        resume: A :class:`~autoenc.ModelCheckpoint` file: continue its run exactly, mid-epoch
            too; changed settings are refused or named in warnings.
        nan_guard: Check the loss terms before every step and the weights after every epoch;
            raise :class:`~autoenc.NonFiniteLossError` naming the term.
        verbose: Add a :class:`~autoenc.ProgressBar` when ``callbacks`` holds none.
        handle_interrupt: On Ctrl-C, stop after the current batch (``interrupted=True``).
        distributed: ``"auto"`` (under ``torchrun`` or in a process group), ``True`` or ``False``.
        distributed_timeout: Seconds a collective waits for the other processes.
        flush_denormals: Treat denormal floats as zero while training, which on some CPUs
            keeps long runs from slowing several-fold (the caller's setting comes back). On
            glibc ``fit`` also lets malloc keep freed memory for reuse; the guide's
            *Training* page has both process-wide settings.

    Returns:
        A :class:`FitResult` with the per-epoch ``history`` and the final ``state``.

    Raises:
        TypeError: A model without ``loss``, or data or arguments of the wrong kind.
        ValueError: Empty or rejected data, a bad argument, device or precision, or a
            ``resume`` checkpoint that is corrupted or belongs to another run.
        NonFiniteLossError: A loss term or the weights became NaN/Inf.
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
    epochs, batch_size, val_batch_size, grad_clip, seed = _checked_arguments(
        model, epochs, batch_size, val_batch_size, scheduler_interval, grad_clip, seed
    )
    callbacks = _callbacks(callbacks, verbose)
    with process_group(distributed, device, timeout=distributed_timeout) as run:
        precision = check_precision(precision, run.device)
        batch_size, val_batch_size = per_rank_batch_sizes(data, batch_size, val_batch_size, run)
        target = unwrap(model)
        payload = _resume_payload(resume, target, run, data)
        run_seed = _run_seed(seed, payload, run)  # seeds this process, before any batch is drawn

        settings = _batch_settings(target, run, transform)
        train_batches = _train_batches(
            data, run_seed, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, **settings
        )
        val_batches = _val_batches(val_data, val_batch_size, **settings)

        model.to(run.device)
        opt = build_optimizer(target, optimizer, lr)
        sched = build_scheduler(scheduler, opt, scheduler_interval)
        keys, unused = _probe(model, train_batches, "data", precision, find_unused=run.enabled)
        if val_batches is not None:
            _probe(model, val_batches, "val_data", precision)

        state = _state(
            target, opt, sched, run, train_batches, val_batches, epochs, callbacks, run_seed
        )
        if payload is not None:  # here, not in a helper: its warnings' stacklevels count up to fit
            source = f"the resume checkpoint {str(resume)!r}"
            restore_training(
                payload, state, source=source, lr=lr, optimizer_chosen=optimizer is not None
            )

        loss_fn, sync = loss_and_sync(model, run, keys, find_unused=bool(unused))
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
        with _training(model, state, handle_interrupt, flush_denormals):
            loop.run(payload)  # here too, for the same reason
        return _result(state)
