"""The training loop: :func:`fit`, :func:`evaluate` and the :class:`FitResult` fit returns.

``fit`` trains any ``nn.Module`` with a ``loss(x)`` method (autoenc's models or a user's) and
drives the callbacks of :mod:`autoenc.callbacks`. The step itself stays lean: loss terms are
accumulated on the device, and the host waits for the device only for the NaN/Inf guard and
when a callback reads a value.

Under ``torchrun`` (or in a process group the user made) ``fit`` trains data-parallel: the
model in ``DistributedDataParallel``, each process on its part of every global batch, metrics
over all processes, files written by rank 0 only. :mod:`autoenc.distributed` holds the
process-group code; here the loop only calls its per-step sync.
"""

from __future__ import annotations

import functools
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from autoenc._validation import check_choice, check_int
from autoenc.batching import Batches, make_batches
from autoenc.callbacks import Callback, ProgressBar, RunningMean, State, TermsView
from autoenc.checkpoint import (
    ModelCheckpoint,
    check_weights_fit,
    load_checkpoint,
    restore_callbacks,
    restore_rng,
    restore_training,
    rng_of_rank,
)
from autoenc.devices import autocast, check_precision, resolve_device
from autoenc.distributed import (
    DistributedSetup,
    StepSync,
    any_rank,
    broadcast_int,
    process_group,
    sum_over_ranks,
    unused_parameters,
    wrap,
)
from autoenc.models import _eval_mode
from autoenc.optimizers import build_optimizer, build_scheduler, is_plateau

__all__ = ["fit", "evaluate", "FitResult", "NonFiniteLossError"]

DEFAULT_BATCH_SIZE = 32
_INTERVALS = ("epoch", "step")
_SEED_BOUND = 2**62


class NonFiniteLossError(FloatingPointError, ValueError):
    """A loss term became NaN or Inf; raised before the optimizer step, so weights stay finite.

    Attributes:
        term: The first non-finite term (``kl``, ``recon``, ... or ``loss``).
        value: Its value.
        epoch: The epoch index, from 0.
        batch: The batch index within the epoch, from 0.
        step: Optimizer steps taken before this batch.
    """

    def __init__(self, term: str, value: float, *, epoch: int, batch: int, step: int) -> None:
        self.term, self.value, self.epoch, self.batch, self.step = term, value, epoch, batch, step
        super().__init__(
            f"the {term!r} term of the loss is {value} at epoch {epoch}, step {step} (batch "
            f"{batch} of the epoch; all counted from 0). Training stopped before the optimizer "
            "step, so the weights are still finite and no checkpoint was overwritten. Try a "
            "lower learning rate, gradient clipping (grad_clip=) or look for bad data."
        )

    def __reduce__(self) -> tuple:  # picklable despite keyword-only arguments
        rebuild = functools.partial(
            NonFiniteLossError, epoch=self.epoch, batch=self.batch, step=self.step
        )
        return (rebuild, (self.term, self.value))


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: Per-epoch metrics: ``train/loss``, ``train/recon``, ``train/kl``,
            ``val/...``, ``lr`` and ``time`` (seconds), each a list with one value per epoch.
        metrics: The last epoch's metrics.
        state: The final :class:`~autoenc.callbacks.State`.
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
# several processes


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module under a DataParallel/DistributedDataParallel wrapper."""
    return getattr(model, "module", model) if hasattr(model, "device_ids") else model


def _reduce(meter: RunningMean, *, distributed: bool = False) -> dict[str, float]:
    """Means of an accumulator over all processes, each example weighing the same."""
    if not distributed:
        return meter.means()
    sums, count = sum_over_ranks(meter.sums, meter.count, "the validation metrics")
    return dict(zip(meter.keys, (sums / count).tolist(), strict=True))


def _rank_seed(seed: int, rank: int) -> int:
    """A seed of its own for each process's random draws (noise, binarization), from the run's."""
    return (seed + rank * 0x9E3779B97F4A7C15) % _SEED_BOUND


def _per_rank_batch_size(batch_size: int, world_size: int, for_loader: bool) -> int:
    if for_loader or world_size == 1:
        return batch_size
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        raise ValueError(
            f"batch_size={batch_size} is the global batch (examples per optimizer step over all "
            f"{world_size} processes) and must be divisible by the number of processes; use "
            f"{lower or world_size} or {lower + world_size}"
        )
    return batch_size // world_size


def _check_loader_shards(loader: Any, world_size: int) -> None:
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


# ---------------------------------------------------------------------------------------------
# checking and preparing the arguments


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(getattr(model, "loss", None)):
        raise TypeError(
            f"model ({type(model).__name__}) has no loss(x) method; fit() trains any module whose "
            "loss(x) returns a scalar tensor, a LossOutput or a dict with a 'loss' key"
        )


def _batches(data: Any, name: str, **kwargs: Any) -> Batches:
    try:
        return make_batches(data, **kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from err


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % 2**32)


# ---------------------------------------------------------------------------------------------
# one step


def _loss_terms(out: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss to backpropagate and the detached scalar terms to log, from ``model.loss(x)``."""
    if isinstance(out, Tensor):
        return out, {"loss": out.detach()}
    if hasattr(out, "terms") and hasattr(out, "loss"):
        return out.loss, dict(out.terms())
    if isinstance(out, Mapping) and "loss" in out:
        terms = {k: v.detach() for k, v in out.items() if isinstance(v, Tensor) and v.numel() == 1}
        return out["loss"], terms
    raise TypeError(
        "model.loss(x) must return a scalar tensor, a LossOutput or a dict with a 'loss' key, "
        f"got {type(out).__name__}"
    )


def _term_vector(terms: dict[str, Tensor], dtype: torch.dtype) -> Tensor:
    return torch.stack([(v if v.dim() == 0 else v.reshape(())).to(dtype) for v in terms.values()])


def _nonfinite(keys: tuple[str, ...], values: Tensor, state: State) -> NonFiniteLossError:
    floats = dict(zip(keys, values.tolist(), strict=True))
    bad = [k for k, v in floats.items() if not math.isfinite(v)]
    term = next((k for k in bad if k != "loss"), bad[0])
    return NonFiniteLossError(
        term, floats[term], epoch=state.epoch, batch=state.batch, step=state.step
    )


def _probe(
    model: nn.Module, batches: Batches, name: str, precision: str, *, find_unused: bool = False
) -> tuple[tuple[str, ...], list[str]]:
    """Run ``model.loss`` on two examples of ``batches``, leaving no trace (RNG, mode, stats).

    Returns the names of the loss terms and, with ``find_unused``, of the trainable parameters
    the loss does not use (a backward pass, for DistributedDataParallel).
    """
    device = batches.device
    unused: list[str] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            x = next(iter(batches))[:2]
        except StopIteration:
            raise ValueError(f"{name} is empty: it yields no batches") from None
        try:
            with (
                _eval_mode(model),
                torch.set_grad_enabled(find_unused),
                autocast(precision, device),
            ):
                out = model.loss(x)
        except Exception as err:
            raise ValueError(
                f"model.loss failed on a batch from {name} of shape {tuple(x.shape)} "
                f"({x.dtype}): {type(err).__name__}: {err}"
            ) from err
        loss, terms = _loss_terms(out)
        if not (isinstance(loss, Tensor) and loss.numel() == 1 and loss.is_floating_point()):
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"model.loss must return a floating-point scalar loss, got {shape}")
        if find_unused and loss.requires_grad:
            unused = unused_parameters(model, loss)
    return tuple(terms), unused


def _evaluate_batches(
    model: nn.Module,
    batches: Iterable[Tensor],
    *,
    precision: str,
    seed: int | None,
    distributed: bool = False,
) -> dict[str, float]:
    device = getattr(batches, "device", torch.device("cpu"))
    meter = RunningMean()
    with (
        _eval_mode(model),
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        torch.no_grad(),
    ):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            if device.type == "cuda":
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
        for x in batches:
            with autocast(precision, device):
                loss, terms = _loss_terms(model.loss(x))
            dtype = torch.float64 if loss.dtype == torch.float64 else torch.float32
            meter.update(tuple(terms), _term_vector(terms, dtype), x.shape[0])
    return _reduce(meter, distributed=distributed)


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    precision: str = "fp32",
    seed: int | None = None,
) -> dict[str, float]:
    """Mean loss terms of ``model`` over a data set, without gradients.

    Every batch is weighted by its size, so the result is the mean over examples (a smaller
    last batch counts for what it holds). The model runs in eval mode; its mode is restored.

    Args:
        model: Any module with ``loss(x)``.
        data: Anything :func:`autoenc.batching.make_batches` accepts (labels are ignored).
        batch_size: Examples per batch.
        device: Where to evaluate; the model moves there. ``None``: where the model is.
        transform: A callable applied to every float batch on the device.
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        seed: Seed the model's noise (e.g. a VAE's ``z`` draws) for a repeatable result,
            without touching the global RNG state; ``None`` draws from it.

    Returns:
        The mean of every term ``model.loss`` reports: ``loss``, ``recon``, ``kl``, ...

    Example:
        >>> from autoenc import Autoencoder, Decoder, Encoder
        >>> ae = Autoencoder(Encoder(4, [8], 2), Decoder(2, [8], 4))
        >>> sorted(evaluate(ae, torch.rand(10, 4), batch_size=3))
        ['loss', 'recon']
    """
    _check_model(model)
    check_int(batch_size, "batch_size")
    if device is None:
        first = next(model.parameters(), None)
        dev = first.device if first is not None else torch.device("cpu")
    else:
        dev = resolve_device(device)
    check_precision(precision, dev)
    model.to(dev)
    batches = make_batches(data, batch_size=batch_size, device=dev, transform=transform)
    return _evaluate_batches(model, batches, precision=precision, seed=seed)


# ---------------------------------------------------------------------------------------------
# Ctrl-C


class _Interrupt:
    """While active, the first Ctrl-C asks training to stop after the current batch; the second
    raises ``KeyboardInterrupt`` at once. The previous handler comes back on exit."""

    def __init__(self, state: State, enabled: bool) -> None:
        self.state = state
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.state.interrupted:
            raise KeyboardInterrupt
        self.state.interrupted = self.state.should_stop = True
        if self.state.is_main_process:
            print(
                "\nCtrl-C: stopping after this batch (press Ctrl-C again to abort at once)",
                file=sys.stderr,
                flush=True,
            )

    def __enter__(self) -> _Interrupt:
        if self.enabled:
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(
                signal.SIGINT, self.previous if self.previous is not None else signal.SIG_DFL
            )


# ---------------------------------------------------------------------------------------------


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

    Tensors and tensor datasets take the fast path of :mod:`autoenc.batching` (the whole set in
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
    dies makes the others raise :class:`~autoenc.distributed.DistributedError` (at once on
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
        callbacks: :class:`~autoenc.callbacks.Callback` instances.
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
            epoch is exact for tensors and datasets; a ``DataLoader`` is re-read from the
            start of the epoch and its first batches skipped, in a new order if it shuffles.
        nan_guard: Check every batch's loss terms before the optimizer step and raise
            :class:`NonFiniteLossError` naming the term when one is NaN or Inf. Costs one host
            sync per step on an accelerator.
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
            or holds another model; in a distributed run also a ``batch_size`` not divisible
            by the number of processes, a DataLoader without a ``DistributedSampler``, fewer
            examples than processes, or an incomplete ``torchrun`` environment.
        NonFiniteLossError: A loss term became NaN/Inf (also a ``ValueError``); in a
            distributed run on any process, raised on all.
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
    _check_model(model)
    check_int(epochs, "epochs", minimum=0)
    for_loader = isinstance(data, torch.utils.data.DataLoader)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    check_int(batch_size, "batch_size")
    val_batch_size = batch_size if val_batch_size is None else val_batch_size
    check_int(val_batch_size, "val_batch_size")
    check_choice(scheduler_interval, _INTERVALS, "scheduler_interval")
    if grad_clip is not None and not (
        isinstance(grad_clip, (int, float)) and grad_clip > 0 and math.isfinite(grad_clip)
    ):
        raise ValueError(f"grad_clip must be a positive finite number or None, got {grad_clip!r}")
    if seed is not None:
        check_int(seed, "seed", minimum=0)
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback instances, got {type(cb).__name__}")
    with process_group(distributed, device, timeout=distributed_timeout) as run:
        dev, rank, world_size = run.device, run.rank, run.world_size
        check_precision(precision, dev)
        if for_loader:
            _check_loader_shards(data, world_size)
        batch_size = _per_rank_batch_size(batch_size, world_size, for_loader)
        val_batch_size = -(-val_batch_size // world_size)
        target = _unwrap(model)
        payload = _load_resume(resume, target, run)

        # 2. seeds and data
        if seed is not None:
            _seed_everything(seed)
        if payload is not None:
            run_seed = payload["seed"]
        elif seed is not None:
            run_seed = seed
        else:
            run_seed = int(torch.randint(_SEED_BOUND, ()))
        if run.enabled:
            run_seed = broadcast_int(run_seed, dev)  # one data order for all
            if rank > 0:
                _seed_everything(_rank_seed(run_seed, rank))  # but noise of their own
        common = dict(device=dev, transform=transform, rank=rank, world_size=world_size)
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
            restore_training(payload, state, source=repr(str(resume)))
            _warn_on_resume_changes(payload, state, lr, repr(str(resume)))

        # 4. the loop
        loss_fn = model.loss
        sync = None
        if run.enabled:
            loss_fn = wrap(target, run, find_unused=bool(unused))
            sync = StepSync(keys, dev, world_size)
        loop = _Loop(
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
            with _Interrupt(state, handle_interrupt):
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


def _warn_on_resume_changes(payload: dict[str, Any], state: State, lr: Any, source: str) -> None:
    """Warn when the resumed run cannot equal the one the checkpoint came from."""
    saved = payload.get("batches_per_epoch")
    current = state.batches_per_epoch
    if saved is not None and current is not None and saved != current:
        warnings.warn(
            f"{source} was written by a run with {saved} batches per epoch, this one has "
            f"{current}: the data or batch_size changed, so the resumed run will not match the "
            "interrupted one",
            stacklevel=3,
        )
    # A scheduler moves "lr"; the rate the run was started with is its "initial_lr".
    groups = payload["optimizer"].get("param_groups", [])
    started = {group.get("initial_lr", group.get("lr")) for group in groups}
    if lr is not None and started and started != {lr}:
        warnings.warn(
            f"resuming restores the optimizer's learning rate from {source} (the run started "
            f"at {', '.join(f'{r:g}' for r in sorted(started))}); lr={lr:g} is not applied. To "
            "change it, set optimizer.param_groups[i]['lr'] in a callback's on_fit_start",
            stacklevel=3,
        )


def _load_resume(resume: Any, target: nn.Module, run: DistributedSetup) -> dict[str, Any] | None:
    """The resume checkpoint, read by every process; all fail together if one cannot read it."""
    if resume is None:
        return None
    payload, error = None, None
    try:
        payload = load_checkpoint(resume)
        check_weights_fit(payload["model"], target, f"the resume checkpoint {str(resume)!r}")
    except (OSError, ValueError) as err:
        if not run.enabled:
            raise
        error = err
    if run.enabled and any_rank([error is not None], run.device, "the resume check")[0]:
        if error is not None:
            raise error
        raise ValueError(
            f"another process could not read the resume checkpoint {str(resume)!r} (see its "
            "error); every process reads it, so it must be on a file system they all see"
        )
    return payload


class _Loop:
    """The epoch and batch loops of :func:`fit`, with the state they share."""

    def __init__(
        self,
        model: nn.Module,
        state: State,
        train: Batches,
        val: Batches | None,
        *,
        loss_fn: Callable[[Tensor], Any],
        sync: StepSync | None,
        precision: str,
        grad_clip: float | None,
        nan_guard: bool,
        scheduler_interval: str,
    ) -> None:
        self.model, self.state, self.train, self.val = model, state, train, val
        self.loss_fn, self.sync = loss_fn, sync  # model.loss, or its DDP wrapper and the sync
        self.precision, self.grad_clip, self.nan_guard = precision, grad_clip, nan_guard
        self.scheduler_interval = scheduler_interval
        self.params = [p for p in state.model.parameters() if p.requires_grad]

    def _hook(self, name: str) -> None:
        for cb in self.state.callbacks:
            getattr(cb, name)(self.state)

    def run(self, payload: dict[str, Any] | None) -> None:
        state = self.state
        try:
            self._hook("on_fit_start")
            if payload is not None:
                restore_callbacks(payload, state)
                rng = rng_of_rank(payload, state)
                if rng is not None:
                    restore_rng(rng)
            self._epochs()
        except BaseException as err:
            state.exception = err
            raise
        finally:
            self._fit_end()

    def _agree(self, stop: bool, interrupted: bool) -> None:
        """Take on what any process decided: stop, or stop because it was interrupted."""
        state = self.state
        state.should_stop = state.should_stop or stop or interrupted
        state.interrupted = state.interrupted or interrupted

    def _sync_flags(self) -> None:
        """Outside the batch loop, let every process know any process's stop or interrupt."""
        if self.sync is not None:
            state = self.state
            self._agree(*any_rank([state.should_stop, state.interrupted], state.device))

    def _fit_end(self) -> None:
        if self.state.exception is None:
            self._sync_flags()  # so all processes write the interrupt checkpoint, or none
        first_error = None
        for cb in self.state.callbacks:
            try:
                cb.on_fit_end(self.state)
            except Exception as err:
                if self.state.exception is None and first_error is None:
                    first_error = err
        if first_error is not None:
            raise first_error

    def _epochs(self) -> None:
        state = self.state
        resumed_mid_epoch = state.batch > 0
        for epoch in range(state.epoch, state.epochs):
            self._sync_flags()
            if state.should_stop:
                return
            if epoch != state.epoch or not resumed_mid_epoch:
                state.batch = 0
                state.running.reset()
            state.epoch = epoch
            resumed_mid_epoch = False
            start = time.perf_counter()
            self.train.set_epoch(epoch, skip=state.batch)
            self._hook("on_epoch_start")
            self.model.train()
            if self.sync is None:
                self._batches()
            else:
                self._batches_in_lockstep()
            if state.interrupted or state.running.count == 0:
                return
            self._end_epoch(start)

    def _batches(self) -> None:
        state = self.state
        # should_stop is checked before fetching the next batch: after Ctrl-C, DataLoader
        # workers may already be gone
        if not state.should_stop:
            for x in self.train:
                self._step(x)
                self._hook("on_batch_end")
                if state.should_stop:
                    break

    def _batches_in_lockstep(self) -> None:
        """The batch loop of a distributed run: at every batch each process either steps or,
        when it stops or its data ran out, votes; so all leave the epoch at the same batch."""
        state = self.state
        batches = iter(self.train)
        while True:
            x = None if state.should_stop else next(batches, None)
            if x is None:
                self._agree(*self.sync.vote(stop=state.should_stop, interrupted=state.interrupted))
                return
            if not self._step(x):
                return
            self._hook("on_batch_end")

    def _step(self, x: Tensor) -> bool:
        """One optimizer step on ``x``; ``False`` when another process stopped (no step)."""
        state, opt = self.state, self.state.optimizer
        with autocast(self.precision, x.device):
            out = self.loss_fn(x)
        loss, terms = _loss_terms(out)
        keys = tuple(terms)
        values = _term_vector(
            terms, torch.float64 if loss.dtype == torch.float64 else torch.float32
        )
        n = x.shape[0]
        if self.sync is not None:  # the global batch's terms, and every process's flags
            values, n, weight, stop, interrupted = self.sync.step(
                keys, values, n, stop=state.should_stop, interrupted=state.interrupted
            )
            self._agree(stop, interrupted)
            if values is None:
                return False
            if weight != 1.0:  # this process's batch is smaller or larger than the others
                loss = loss * weight
        if self.nan_guard and not bool(torch.isfinite(values).all()):
            raise _nonfinite(keys, values, state)
        if not loss.requires_grad:
            raise ValueError("model.loss(x) returned a loss that does not require gradients")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        opt.step()
        if state.scheduler is not None and self.scheduler_interval == "step":
            state.scheduler.step()
        state.running.update(keys, values, n)
        state.batch_terms = TermsView(keys, values)
        state.batch += 1
        state.step += 1
        return True

    def _end_epoch(self, start: float) -> None:
        state = self.state
        metrics = {f"train/{k}": v for k, v in state.running.means().items()}  # all processes'
        if self.val is not None:
            val = _evaluate_batches(
                self.model,
                self.val,
                precision=self.precision,
                seed=None if state.seed is None else _rank_seed(state.seed, state.rank),
                distributed=self.sync is not None,
            )
            metrics.update({f"val/{k}": v for k, v in val.items()})
        metrics["lr"] = float(state.optimizer.param_groups[0]["lr"])
        metrics["time"] = time.perf_counter() - start
        if state.scheduler is not None and self.scheduler_interval == "epoch":
            if is_plateau(state.scheduler):
                state.scheduler.step(metrics.get("val/loss", metrics["train/loss"]))
            else:
                state.scheduler.step()
        state.metrics = metrics
        for key, value in metrics.items():
            state.history.setdefault(key, []).append(value)
        state.epochs_completed = state.epoch + 1
        self._hook("on_epoch_end")
