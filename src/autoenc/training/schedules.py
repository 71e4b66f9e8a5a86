r"""KL schedules and free bits for any VAE, as callbacks for :func:`autoenc.fit`.

A schedule sets the model's ``beta`` attribute (the weight of the KL term) before every step
or every epoch, from the run's step or epoch counter alone. A checkpoint restores those
counters, so a resumed run continues the schedule where it stopped. Any model with a numeric
``beta`` attribute works, :class:`~autoenc.GaussianVAE` included.

- :class:`KLWarmup`: :math:`\beta` rises linearly from ``start`` to ``end`` (Bowman et al., 2016).
- :class:`KLCyclical`: the warm-up repeats every cycle (Fu et al., 2019, "Cyclical Annealing
  Schedule").
- Free bits (Kingma et al., 2016): :class:`~autoenc.GaussianVAE` takes ``free_bits=`` (nats per
  latent dimension); :class:`FreeBits` sets it on any model with a ``free_bits`` attribute for
  the length of a fit only.

Example:
    >>> [round(linear_warmup(t, 4), 2) for t in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    >>> [round(cyclical(t, 4, ratio=0.5), 2) for t in range(9)]
    [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 0.0]
"""

from __future__ import annotations

import math
from typing import Any

from autoenc.training.callbacks import Callback, State

__all__ = ["linear_warmup", "cyclical", "KLWarmup", "KLCyclical", "FreeBits"]


def linear_warmup(t: int, length: int, *, start: float = 0.0, end: float = 1.0) -> float:
    """``start`` at ``t = 0``, rising linearly to ``end`` at ``t = length``, then ``end``."""
    return start + (end - start) * min(1.0, t / length)


def cyclical(
    t: int, period: int, *, ratio: float = 0.5, start: float = 0.0, end: float = 1.0
) -> float:
    """Fu et al.'s cyclical schedule: each cycle of ``period`` rises linearly from ``start``
    to ``end`` over its first ``ratio`` part, then stays at ``end``."""
    tau = (t % period) / period
    return start + (end - start) * min(1.0, tau / ratio)


def _check_unit(steps: Any, epochs: Any, owner: str) -> tuple[str, int]:
    if (steps is None) == (epochs is None):
        raise ValueError(f"{owner} needs exactly one of steps= or epochs=")
    unit, length = ("step", steps) if steps is not None else ("epoch", epochs)
    if not (isinstance(length, int) and not isinstance(length, bool) and length > 0):
        raise ValueError(f"{owner}: {unit}s must be a positive int, got {length!r}")
    return unit, length


def _check_number(value: Any, name: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


class _BetaSchedule(Callback):
    """Sets ``model.beta`` from the step (before every step) or the epoch (before every epoch)."""

    def __init__(self, steps: int | None, epochs: int | None, start: float, end: float) -> None:
        self.unit, self.length = _check_unit(steps, epochs, type(self).__name__)
        self.start, self.end = _check_number(start, "start"), _check_number(end, "end")

    def beta(self, t: int) -> float:
        """β at step or epoch ``t``."""
        raise NotImplementedError

    def _apply(self, state: State) -> None:
        state.model.beta = self.beta(state.step if self.unit == "step" else state.epoch)

    def on_fit_start(self, state: State) -> None:
        beta = getattr(state.model, "beta", None)
        if not isinstance(beta, (int, float)) or isinstance(beta, bool):
            raise TypeError(
                f"{type(self).__name__} needs a model with a numeric beta attribute (the KL "
                f"weight); {type(state.model).__name__} has beta={beta!r}"
            )
        self._apply(state)

    def on_epoch_start(self, state: State) -> None:
        self._apply(state)

    def on_batch_end(self, state: State) -> None:
        if self.unit == "step":
            self._apply(state)  # for the next step


class KLWarmup(_BetaSchedule):
    """Linear β warm-up: ``start`` at the first step/epoch, ``end`` after ``steps``/``epochs``.

    Args:
        steps: Length of the warm-up in optimizer steps (β changes every step) ...
        epochs: ... or in epochs (β is constant within an epoch). Give exactly one.
        start: β at the beginning.
        end: β after the warm-up.

    Example:
        >>> import torch
        >>> from autoenc import Decoder, Encoder, GaussianVAE
        >>> from autoenc.training import fit
        >>> vae = GaussianVAE(Encoder(4, [8], 4), Decoder(2, [8], 4), latent_dim=2,
        ...                   likelihood="mse")
        >>> _ = fit(vae, torch.rand(64, 4), epochs=2, batch_size=16, verbose=False,
        ...         callbacks=[KLWarmup(steps=4)])
        >>> vae.beta
        1.0
    """

    def __init__(
        self,
        *,
        steps: int | None = None,
        epochs: int | None = None,
        start: float = 0.0,
        end: float = 1.0,
    ) -> None:
        super().__init__(steps, epochs, start, end)

    def beta(self, t: int) -> float:
        return linear_warmup(t, self.length, start=self.start, end=self.end)


class KLCyclical(_BetaSchedule):
    """Cyclical β annealing (Fu et al., 2019): the warm-up repeats every cycle.

    Args:
        steps: Length of one cycle in optimizer steps ...
        epochs: ... or in epochs. Give exactly one.
        ratio: Part of each cycle over which β rises (the paper's ``R``, 0.5 by default).
        cycles: Stop cycling after this many cycles and keep ``end`` (``None``: never stop).
        start: β at the start of each cycle.
        end: β at the top of each cycle.
    """

    def __init__(
        self,
        *,
        steps: int | None = None,
        epochs: int | None = None,
        ratio: float = 0.5,
        cycles: int | None = None,
        start: float = 0.0,
        end: float = 1.0,
    ) -> None:
        super().__init__(steps, epochs, start, end)
        if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        if cycles is not None and not (isinstance(cycles, int) and cycles > 0):
            raise ValueError(f"cycles must be a positive int or None, got {cycles!r}")
        self.ratio, self.cycles = float(ratio), cycles

    def beta(self, t: int) -> float:
        if self.cycles is not None and t >= self.cycles * self.length:
            return self.end
        return cyclical(t, self.length, ratio=self.ratio, start=self.start, end=self.end)


class FreeBits(Callback):
    """Use free bits (a floor of ``nats`` on the KL of each latent dimension) during a fit.

    Sets ``model.free_bits`` when the fit starts and puts the previous value back when it ends,
    so the trained model reports its true loss afterwards. Equivalent to building a
    :class:`~autoenc.GaussianVAE` with ``free_bits=nats`` for the length of the fit; works with
    any model that has a numeric ``free_bits`` attribute. The logged ``kl`` stays the true KL.

    Args:
        nats: The floor per latent dimension, in nats (e.g. 0.1 to 0.5).
    """

    def __init__(self, nats: float) -> None:
        self.nats = _check_number(nats, "nats")
        self._previous: float | None = None

    def on_fit_start(self, state: State) -> None:
        previous = getattr(state.model, "free_bits", None)
        if not isinstance(previous, (int, float)) or isinstance(previous, bool):
            raise TypeError(
                f"FreeBits needs a model with a numeric free_bits attribute; "
                f"{type(state.model).__name__} has free_bits={previous!r}"
            )
        self._previous = previous
        state.model.free_bits = self.nats

    def on_fit_end(self, state: State) -> None:
        if self._previous is not None:
            state.model.free_bits = self._previous
            self._previous = None
