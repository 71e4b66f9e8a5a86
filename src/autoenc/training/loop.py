"""The loop of :func:`~autoenc.fit`: epochs, steps, validation, hooks, Ctrl-C and the NaN guard.

The step stays lean: loss terms are accumulated on the device, and the host waits for the
device only for the NaN/Inf guard, when a callback reads a value, and once per epoch for the
metrics and a check that the weights are finite.
"""

from __future__ import annotations

import functools
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from autoenc._utils import SEED_BOUND, autocast, loss_terms, term_vector, weights_are_finite
from autoenc.data.batching import Batches
from autoenc.evaluation.loss import accumulate
from autoenc.training.callbacks import State, TermsView
from autoenc.training.checkpoint import restore_rng
from autoenc.training.distributed import StepSync, any_rank, mean_over_ranks
from autoenc.training.optimizers import is_plateau, optimizer_step
from autoenc.training.resume import restore_callbacks, rng_of_rank

__all__ = ["NonFiniteLossError", "Loop", "Interrupt", "rank_seed"]


class NonFiniteLossError(FloatingPointError, ValueError):
    """A loss term, or the weights, became NaN or Inf; no checkpoint is written with them.

    The loss terms are checked before each optimizer step and the weights at the end of each
    epoch, before the callbacks (and so the checkpoints) see it.

    Attributes:
        term: The first non-finite term (``kl``, ``recon``, ... or ``loss``), or ``"weights"``.
        value: Its value.
        epoch: The epoch index, from 0.
        batch: The batch index within the epoch, from 0.
        step: Optimizer steps taken before this batch.
        weights_finite: Whether the weights were still finite when it was raised.
    """

    def __init__(
        self,
        term: str,
        value: float,
        *,
        epoch: int,
        batch: int,
        step: int,
        weights_finite: bool = False,
    ) -> None:
        self.term, self.value, self.epoch, self.batch, self.step = term, value, epoch, batch, step
        self.weights_finite = weights_finite
        if term == "weights":
            what = (
                f"the weights became NaN or Inf in epoch {epoch} (counted from 0, after {step} "
                "optimizer steps) although every loss term was finite: a step diverged. Training "
                "stopped before the epoch's callbacks, so no checkpoint was written with them"
            )
        else:
            state = (
                "the weights are still finite"
                if weights_finite
                else "the weights are NaN or Inf already (an earlier step diverged)"
            )
            what = (
                f"the {term!r} term of the loss is {value} at epoch {epoch}, step {step} (batch "
                f"{batch} of the epoch; all counted from 0). Training stopped before the "
                f"optimizer step; {state} and no checkpoint was written with them"
            )
        super().__init__(
            f"{what}. Try a lower learning rate, gradient clipping (grad_clip=) or look for bad "
            "data."
        )

    def __reduce__(self) -> tuple:  # picklable despite keyword-only arguments
        rebuild = functools.partial(
            NonFiniteLossError,
            epoch=self.epoch,
            batch=self.batch,
            step=self.step,
            weights_finite=self.weights_finite,
        )
        return (rebuild, (self.term, self.value))


def _nonfinite(
    keys: tuple[str, ...], values: Tensor, state: State, weights_finite: bool
) -> NonFiniteLossError:
    floats = dict(zip(keys, values.tolist(), strict=True))
    bad = [k for k, v in floats.items() if not math.isfinite(v)]
    term = next((k for k in bad if k != "loss"), bad[0])
    return NonFiniteLossError(
        term,
        floats[term],
        epoch=state.epoch,
        batch=state.batch,
        step=state.step,
        weights_finite=weights_finite,
    )


def rank_seed(seed: int, rank: int) -> int:
    """A seed of its own for each process's random draws (noise, binarization), from the run's."""
    return (seed + rank * 0x9E3779B97F4A7C15) % SEED_BOUND


class Interrupt:
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

    def __enter__(self) -> Interrupt:
        if self.enabled:
            self.previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            signal.signal(
                signal.SIGINT, self.previous if self.previous is not None else signal.SIG_DFL
            )


class Loop:
    """The epoch and batch loops of :func:`~autoenc.fit`, with the state they share."""

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
                    state.epoch_rng = rng.get("torch_epoch_start")
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
            replay = state.epoch_rng if state.batch else None
            self.train.set_epoch(epoch, skip=state.batch, rng=replay)
            self._hook("on_epoch_start")
            self.model.train()
            if state.batch == 0:
                # A DataLoader draws its order and its workers' seeds from this state when its
                # iterator starts; a mid-epoch checkpoint keeps it, so a resume draws them again.
                state.epoch_rng = torch.get_rng_state()
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
            for batch in self.train:
                self._step(batch)
                self._hook("on_batch_end")
                if state.should_stop:
                    break

    def _batches_in_lockstep(self) -> None:
        """The batch loop of a distributed run: at every batch each process either steps or,
        when it stops or its data ran out, votes; so all leave the epoch at the same batch."""
        state = self.state
        batches = iter(self.train)
        while True:
            batch = None if state.should_stop else next(batches, None)
            if batch is None:
                self._agree(*self.sync.vote(stop=state.should_stop, interrupted=state.interrupted))
                return
            if not self._step(batch):
                return
            self._hook("on_batch_end")

    def _step(self, batch: Tensor | tuple[Tensor, Tensor]) -> bool:
        """One optimizer step on ``x`` (or ``(x, y)``, given to the loss as two arguments);
        ``False`` when another process stopped (no step)."""
        state, opt = self.state, self.state.optimizer
        args = batch if isinstance(batch, tuple) else (batch,)
        x = args[0]
        with autocast(self.precision, x.device):
            out = self.loss_fn(*args)
        loss, terms = loss_terms(out)
        keys = tuple(terms)
        values = term_vector(terms, loss)
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
        # one copy to the host, cheaper than isfinite's kernels for a handful of numbers
        if self.nan_guard and not all(map(math.isfinite, values.tolist())):
            raise _nonfinite(keys, values, state, weights_are_finite(state.model))
        if not loss.requires_grad:
            raise ValueError("model.loss(x) returned a loss that does not require gradients")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        optimizer_step(opt)
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
            seed = None if state.seed is None else rank_seed(state.seed, state.rank)
            meter = accumulate(self.model, self.val, precision=self.precision, seed=seed)
            val = meter.means() if self.sync is None else mean_over_ranks(meter)
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
        if self.nan_guard and not weights_are_finite(state.model):  # a finite loss, a bad step
            raise NonFiniteLossError(
                "weights", math.nan, epoch=state.epoch, batch=state.batch, step=state.step
            )
        self._hook("on_epoch_end")
