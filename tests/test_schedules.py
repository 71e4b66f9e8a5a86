"""Tests for autoenc.training.schedules: the β formulas and the callbacks that apply them."""

from __future__ import annotations

import functools

import pytest
import torch
from _fit_models import tiny_ae, tiny_data, tiny_vae

from autoenc.training import fit
from autoenc.training.schedules import FreeBits, KLCyclical, KLWarmup, cyclical, linear_warmup

quiet = functools.partial(fit, verbose=False)


def _betas_per_step(model):
    """Wrap ``model.loss`` to record the β of every training step."""
    seen, loss = [], model.loss

    def recording(x, **kwargs):
        if torch.is_grad_enabled():
            seen.append(model.beta)
        return loss(x, **kwargs)

    model.loss = recording
    return seen


def test_linear_warmup_formula():
    assert [linear_warmup(t, 4, start=0.5, end=2.5) for t in (0, 1, 4, 9)] == [0.5, 1.0, 2.5, 2.5]


def test_cyclical_formula_follows_fu_et_al():
    period, ratio = 10, 0.4
    for t in range(35):
        tau = (t % period) / period
        expected = tau / ratio if tau <= ratio else 1.0
        assert cyclical(t, period, ratio=ratio) == pytest.approx(expected)


def test_kl_warmup_by_steps_sets_beta_before_every_step():
    model = tiny_vae()
    seen = _betas_per_step(model)
    quiet(model, tiny_data(24), epochs=2, batch_size=4, callbacks=[KLWarmup(steps=8, end=2.0)])
    assert seen == pytest.approx([2.0 * min(1, t / 8) for t in range(12)])
    assert model.beta == 2.0


def test_kl_warmup_by_epochs_holds_beta_for_an_epoch():
    model = tiny_vae()
    seen = _betas_per_step(model)
    quiet(model, tiny_data(8), epochs=4, batch_size=4, callbacks=[KLWarmup(epochs=2)])
    assert seen == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]


def test_kl_cyclical_repeats_and_stops_after_its_cycles():
    model = tiny_vae()
    seen = _betas_per_step(model)
    quiet(
        model,
        tiny_data(40),
        epochs=1,
        batch_size=4,
        callbacks=[KLCyclical(steps=4, ratio=0.5, cycles=2)],
    )
    assert seen == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0]


def test_a_schedule_needs_a_model_with_beta():
    with pytest.raises(TypeError, match="beta"):
        quiet(tiny_ae(), tiny_data(), epochs=1, callbacks=[KLWarmup(steps=3)])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: KLWarmup(), "exactly one"),
        (lambda: KLWarmup(steps=3, epochs=2), "exactly one"),
        (lambda: KLWarmup(steps=0), "positive"),
        (lambda: KLWarmup(steps=3, end=-1.0), "end"),
        (lambda: KLCyclical(steps=3, ratio=0.0), "ratio"),
        (lambda: KLCyclical(epochs=3, cycles=0), "cycles"),
        (lambda: FreeBits(-0.5), "nats"),
    ],
)
def test_schedule_arguments_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_free_bits_applies_during_the_fit_only():
    model = tiny_vae()
    floors = []
    loss = model.loss

    def recording(x, **kwargs):
        floors.append(model.free_bits)
        out = loss(x, **kwargs)
        return out

    model.loss = recording
    result = quiet(model, tiny_data(), epochs=1, callbacks=[FreeBits(5.0)])
    assert set(floors[1:]) == {5.0} and model.free_bits == 0.0
    # with a floor far above the true KL, the training loss exceeds recon + kl
    m = result.metrics
    assert m["train/loss"] > m["train/recon"] + m["train/kl"] + 1.0


def test_free_bits_needs_a_model_with_free_bits():
    with pytest.raises(TypeError, match="free_bits"):
        quiet(tiny_ae(), tiny_data(), epochs=1, callbacks=[FreeBits(0.5)])
