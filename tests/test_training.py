"""Tests for autoenc.training: fit's loop, its options and input checks, and evaluate."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys

import pytest
import torch
from _fit_models import (
    NaNAt,
    Recorder,
    same_weights,
    tiny_ae,
    tiny_data,
    tiny_vae,
    weights,
    without_time,
)
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from autoenc import NonFiniteLossError, evaluate, fit
from autoenc.training.callbacks import Callback
from autoenc.training.checkpoint import ModelCheckpoint

quiet = functools.partial(fit, verbose=False)


class Stop(Callback):
    """Sets should_stop in on_batch_end or on_epoch_end once ``step`` steps are done."""

    def __init__(self, hook: str, step: int) -> None:
        self.hook, self.step = hook, step

    def _maybe(self, state, hook: str) -> None:
        if hook == self.hook and state.step >= self.step:
            state.should_stop = True

    def on_batch_end(self, state):
        self._maybe(state, "on_batch_end")

    def on_epoch_end(self, state):
        self._maybe(state, "on_epoch_end")


# ---------------------------------------------------------------------------------------------
# hooks


def test_hooks_run_in_order_with_the_state_they_promise():
    rec = Recorder()
    x = tiny_data(8)
    quiet(tiny_vae(), x, epochs=2, batch_size=4, val_data=x, callbacks=[rec])
    assert rec.events == [
        ("fit_start", 0, 0, 0),
        ("epoch_start", 0, 0, 0),
        ("batch_end", 0, 1, 1),
        ("batch_end", 0, 2, 2),
        ("epoch_end", 0, 2, 2),
        ("epoch_start", 1, 0, 2),
        ("batch_end", 1, 1, 3),
        ("batch_end", 1, 2, 4),
        ("epoch_end", 1, 2, 4),
        ("fit_end", 1, 2, 4),
    ]


def test_epoch_end_sees_this_epochs_metrics_and_history():
    seen = []

    class Look(Callback):
        def on_epoch_end(self, state):
            seen.append((dict(state.metrics), {k: list(v) for k, v in state.history.items()}))

    result = quiet(tiny_vae(), tiny_data(), epochs=2, val_data=tiny_data(8), callbacks=[Look()])
    metrics, history = seen[1]
    assert metrics == result.metrics and history == result.history
    assert {"train/loss", "train/recon", "train/kl", "val/loss", "val/kl", "lr"} <= set(metrics)
    assert all(len(v) == 2 for v in history.values())


def test_batch_terms_are_the_last_batchs_terms():
    terms = []

    class Look(Callback):
        def on_batch_end(self, state):
            terms.append(dict(state.batch_terms))

    result = quiet(
        tiny_ae(), tiny_data(8), epochs=1, batch_size=8, shuffle=False, callbacks=[Look()]
    )
    assert list(terms[0]) == ["loss", "recon"]
    assert terms[0]["loss"] == pytest.approx(result.history["train/loss"][0])


def test_should_stop_from_a_batch_ends_that_epoch_early():
    rec = Recorder()
    result = quiet(
        tiny_vae(), tiny_data(40), epochs=5, batch_size=4, callbacks=[Stop("on_batch_end", 3), rec]
    )
    assert result.stopped_early and not result.interrupted
    assert result.steps == 3 and result.epochs_completed == 1
    assert rec.hooks()[-2:] == ["epoch_end", "fit_end"]


def test_should_stop_at_epoch_end_stops_before_the_next_epoch():
    result = quiet(
        tiny_vae(), tiny_data(8), epochs=5, batch_size=4, callbacks=[Stop("on_epoch_end", 4)]
    )
    assert result.epochs_completed == 2 and result.stopped_early


def test_on_fit_end_runs_when_training_raises():
    class Boom(Callback):
        def on_batch_end(self, state):
            if state.step == 2:
                raise RuntimeError("boom")

    rec = Recorder()
    ended = []

    class Seen(Callback):
        def on_fit_end(self, state):
            ended.append(state.exception)

    with pytest.raises(RuntimeError, match="boom"):
        quiet(tiny_vae(), tiny_data(), epochs=3, batch_size=4, callbacks=[rec, Boom(), Seen()])
    assert rec.hooks()[-1] == "fit_end"
    assert isinstance(ended[0], RuntimeError)


def test_zero_epochs_runs_only_the_fit_hooks():
    rec = Recorder()
    model = tiny_vae()
    before = weights(model)
    result = quiet(model, tiny_data(), epochs=0, callbacks=[rec])
    assert rec.hooks() == ["fit_start", "fit_end"] and result.history == {}
    assert same_weights(before, weights(model))


# ---------------------------------------------------------------------------------------------
# the NaN guard


def test_nan_guard_names_the_term_epoch_and_step_and_keeps_weights_finite():
    model = NaNAt(at=7)  # 7th step: epoch 1 (from 0), batch 2, after 6 steps
    snapshots = []

    class Snap(Callback):
        def on_batch_end(self, state):
            snapshots.append(weights(state.model))

    with pytest.raises(NonFiniteLossError) as info:
        quiet(model, tiny_data(20), epochs=3, batch_size=4, lr=0.01, callbacks=[Snap()])
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, FloatingPointError)
    assert (err.term, err.epoch, err.batch, err.step) == ("kl", 1, 1, 6)
    assert "'kl'" in str(err) and "epoch 1" in str(err) and "step 6" in str(err)
    assert same_weights(weights(model), snapshots[-1])
    assert all(torch.isfinite(v).all() for v in weights(model).values())


def test_nan_guard_can_be_turned_off():
    model = NaNAt(at=2)
    result = quiet(model, tiny_data(8), epochs=1, batch_size=4, nan_guard=False)
    assert result.metrics["train/kl"] != result.metrics["train/kl"]  # NaN got through


# ---------------------------------------------------------------------------------------------
# data paths agree


class Items(Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], 0


def test_fast_path_dataset_and_dataloader_give_the_same_epoch_losses():
    x = tiny_data(30)
    runs = []
    for data in [
        x,
        (x, torch.zeros(30)),
        TensorDataset(x),
        Items(x),
        DataLoader(TensorDataset(x, torch.zeros(30)), batch_size=8),
    ]:
        model = tiny_ae()
        result = quiet(model, data, epochs=2, batch_size=8, shuffle=False, seed=0)
        runs.append((result.history["train/loss"], weights(model)))
    for losses, w in runs[1:]:
        assert losses == runs[0][0]
        assert same_weights(w, runs[0][1])


def test_epoch_loss_is_the_example_weighted_mean_of_batch_losses():
    per_batch = []

    class Look(Callback):
        def on_batch_end(self, state):
            per_batch.append((state.batch_terms["loss"], 4 if state.batch <= 3 else 2))

    result = quiet(tiny_ae(), tiny_data(14), epochs=1, batch_size=4, callbacks=[Look()])
    expected = sum(v * n for v, n in per_batch) / 14
    assert result.history["train/loss"][0] == pytest.approx(expected, rel=1e-6)


def test_transform_is_applied_to_training_and_validation_batches():
    seen = []

    class Watch(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def loss(self, x):
            seen.append(x.max().item())
            return (self.w - x).pow(2).mean()

    quiet(
        Watch(),
        torch.ones(4, 2),
        epochs=1,
        batch_size=2,
        val_data=torch.ones(2, 2),
        transform=lambda b: b * 3,
    )
    assert seen and all(v == 3.0 for v in seen)


# ---------------------------------------------------------------------------------------------
# loss return types


class ScalarModel(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.lin, self.kind = nn.Linear(4, 4), kind

    def loss(self, x):
        recon = (self.lin(x) - x).pow(2).mean()
        if self.kind == "tensor":
            return recon
        extra = torch.tensor([2.0], dtype=torch.float64)  # one element, not 0-d, not float32
        return {"loss": recon, "recon": recon.detach(), "extra": extra, "skip": x}


def test_a_scalar_tensor_or_a_dict_can_be_the_loss():
    r1 = quiet(ScalarModel("tensor"), tiny_data(), epochs=1)
    assert set(r1.metrics) == {"train/loss", "lr", "time"}
    r2 = quiet(ScalarModel("dict"), tiny_data(), epochs=1)
    assert {"train/loss", "train/recon", "train/extra"} <= set(r2.metrics)
    assert r2.metrics["train/extra"] == pytest.approx(2.0)


def test_a_loss_of_another_kind_is_rejected_before_training():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def loss(self, x):
            return [self.lin(x).sum()]

    with pytest.raises(TypeError, match="LossOutput"):
        quiet(Bad(), tiny_data(), epochs=1)


def test_a_non_scalar_loss_is_rejected_before_training():
    class Vector(ScalarModel):
        def loss(self, x):
            return (self.lin(x) - x).pow(2)

    with pytest.raises(ValueError, match="scalar"):
        quiet(Vector("tensor"), tiny_data(), epochs=1)


# ---------------------------------------------------------------------------------------------
# optimizer, scheduler, clipping, precision, seeds


def test_default_optimizer_is_adam_with_the_articles_lr():
    result = quiet(tiny_vae(), tiny_data(), epochs=1)
    opt = result.state.optimizer
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-3
    assert opt.defaults.get("fused") or opt.defaults.get("foreach")


def _adam_pair():
    """Two identical autoencoders, one under fit's default Adam, one under torch's fused Adam."""
    from autoenc.training.optimizers import build_optimizer

    ours, theirs = tiny_ae(), tiny_ae()
    return (
        (ours, build_optimizer(ours, None, None)),
        (theirs, torch.optim.Adam(theirs.parameters(), lr=1e-3, fused=True)),
    )


def _adam_steps(pairs, x, steps, change=None):
    for step in range(steps):
        for model, opt in pairs:
            if change is not None:
                change(step, model, opt)
            opt.zero_grad(set_to_none=True)
            model.loss(x).loss.backward()
            opt.step()


def _same_adam_state(a, b):
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    return sa.keys() == sb.keys() and all(
        torch.equal(sa[i][k], sb[i][k]) for i in sa for k in ("step", "exp_avg", "exp_avg_sq")
    )


def test_default_adam_steps_bit_for_bit_like_torchs_fused_adam():
    """The kept-list step of fit's Adam and torch's own step agree exactly, through a changed
    learning rate, a step where a layer has no gradient, added weight decay and a state load."""
    pairs = _adam_pair()
    x = tiny_data()

    def change(step, model, opt):
        group = opt.param_groups[0]
        if step == 2:
            group["lr"] = 5e-3  # as a scheduler does
        first = next(model.parameters())
        first.requires_grad_(step != 3)  # step 3: no gradient for the first layer's weight
        if step == 4:
            group["weight_decay"] = 0.01
        if step == 5:
            group["weight_decay"] = 0
            opt.load_state_dict(opt.state_dict())

    _adam_steps(pairs, x, 8, change)
    (ours, our_opt), (theirs, their_opt) = pairs
    assert type(our_opt).__name__ == "Adam" and our_opt._kept is not None  # the kept lists ran
    assert same_weights(weights(ours), weights(theirs))
    assert _same_adam_state(our_opt, their_opt)


def test_default_adam_runs_step_hooks_once_per_step_and_feeds_lr_schedulers():
    import warnings

    from autoenc.training.optimizers import build_optimizer

    torch.optim.Adam([nn.Parameter(torch.zeros(1))])  # torch wraps Adam.step in its hooks
    model = tiny_ae()
    opt = build_optimizer(model, None, None)
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        _adam_steps([(model, opt)], tiny_data(), 4, lambda *_: None)
        scheduler.step()
    assert calls == ["pre", "post"] * 4


def test_fit_skips_torchs_step_wrapper_only_when_it_has_nothing_to_do(monkeypatch):
    """The default Adam steps without torch's wrapper when nothing is attached; a step hook of
    the optimizer's own, a global one, an LR scheduler or the profiler each bring it back."""
    from torch.optim import optimizer as torch_optimizer

    wrapped = []  # torch's wrapper calls _optimizer_step_code once per step
    monkeypatch.setattr(
        torch.optim.Optimizer, "_optimizer_step_code", lambda self: wrapped.append(1)
    )
    x = tiny_data(8)

    def steps_through_wrapper(attach=None, scheduler=None):
        wrapped.clear()
        result = quiet(
            tiny_vae(), x, epochs=1, batch_size=4, scheduler=scheduler, scheduler_interval="step",
            callbacks=[] if attach is None else [attach],
        )  # fmt: skip
        assert result.steps == 2
        return len(wrapped)

    assert steps_through_wrapper() == 0
    calls = []

    class Hook(Callback):
        def __init__(self, kind):
            self.kind = kind

        def on_fit_start(self, state):
            register = getattr(state.optimizer, f"register_step_{self.kind}_hook")
            register(lambda *_: calls.append(self.kind))

    assert steps_through_wrapper(Hook("pre")) == 2 and calls == ["pre"] * 2
    assert steps_through_wrapper(Hook("post")) == 2 and calls[2:] == ["post"] * 2
    for kind in ("pre", "post"):
        register = getattr(torch_optimizer, f"register_optimizer_step_{kind}_hook")
        handle = register(lambda *_: calls.append("global"))
        try:
            assert steps_through_wrapper() == 2 and calls[4:] == ["global"] * 2
        finally:
            handle.remove()
            del calls[4:]
    assert steps_through_wrapper(scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1)) == 2
    with torch.profiler.profile() as prof:
        assert steps_through_wrapper() == 2
    assert "Optimizer.step#Adam.step" in {e.name for e in prof.events()}


def test_optimizer_class_factory_and_instance_are_accepted():
    r = quiet(tiny_vae(), tiny_data(), epochs=1, optimizer=torch.optim.SGD, lr=0.1)
    assert isinstance(r.state.optimizer, torch.optim.SGD) and r.metrics["lr"] == 0.1
    r = quiet(
        tiny_vae(), tiny_data(), epochs=1, optimizer=lambda p: torch.optim.RMSprop(p, lr=0.01)
    )
    assert isinstance(r.state.optimizer, torch.optim.RMSprop)
    model = tiny_vae()
    opt = torch.optim.AdamW(model.parameters(), lr=0.02)
    assert quiet(model, tiny_data(), epochs=1, optimizer=opt).state.optimizer is opt


def test_scheduler_steps_per_epoch():
    result = quiet(
        tiny_vae(),
        tiny_data(),
        epochs=3,
        lr=0.1,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    )
    assert result.history["lr"] == pytest.approx([0.1, 0.05, 0.025])
    assert result.state.optimizer.param_groups[0]["lr"] == pytest.approx(0.0125)


def test_scheduler_steps_per_batch():
    result = quiet(
        tiny_vae(),
        tiny_data(12),
        epochs=2,
        batch_size=4,
        lr=0.1,
        scheduler_interval="step",
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    )
    assert result.steps == 6
    assert result.state.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**6)


def test_reduce_on_plateau_steps_on_the_validation_loss():
    result = quiet(
        tiny_vae(),
        tiny_data(),
        epochs=3,
        lr=0.1,
        val_data=tiny_data(8),
        scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0),
    )
    assert result.state.scheduler.best == pytest.approx(min(result.history["val/loss"]))


def test_a_scheduler_instance_needs_the_same_optimizer():
    other = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="another optimizer"):
        quiet(
            tiny_vae(),
            tiny_data(),
            epochs=1,
            scheduler=torch.optim.lr_scheduler.StepLR(other, step_size=1),
        )


def test_grad_clip_bounds_the_update_norm():
    # plain SGD with lr=1: the update is the clipped gradient, whose global norm is grad_clip
    model = tiny_ae()
    before = [p.detach().clone() for p in model.parameters()]
    quiet(
        model,
        tiny_data(8),
        epochs=1,
        batch_size=8,
        optimizer=torch.optim.SGD,
        lr=1.0,
        grad_clip=1e-3,
    )
    update = torch.cat(
        [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]
    )
    assert update.norm().item() == pytest.approx(1e-3, rel=1e-4)


def test_same_seed_same_run_other_seed_other_run():
    def run(seed):
        model = tiny_vae()
        result = quiet(model, tiny_data(), epochs=2, batch_size=8, val_data=tiny_data(8), seed=seed)
        return weights(model), without_time(result.history)

    (w1, h1), (w2, h2), (w3, _) = run(0), run(0), run(1)
    assert same_weights(w1, w2) and h1 == h2
    assert not same_weights(w1, w3)


def test_validation_does_not_change_the_training_run():
    def run(val):
        model = tiny_vae()
        quiet(model, tiny_data(), epochs=2, batch_size=8, val_data=val, seed=0)
        return weights(model)

    assert same_weights(run(None), run(tiny_data(8)))


def test_bf16_autocast_runs_on_the_cpu():
    seen = []

    class Watch(ScalarModel):
        def loss(self, x):
            seen.append((torch.is_autocast_enabled("cpu"), self.lin(x).dtype))
            return super().loss(x)

    result = quiet(Watch("tensor"), tiny_data(), epochs=1, precision="bf16", device="cpu")
    assert seen[-1] == (True, torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    assert result.metrics["train/loss"] == result.metrics["train/loss"]


def _flushing() -> bool:
    # with flushing on, a float32 denormal times one is zero
    return (torch.tensor([1e-39]) * torch.tensor([1.0])).item() == 0.0


@pytest.mark.parametrize("caller", [False, True])
@pytest.mark.parametrize("flush", [True, False])
def test_fit_flushes_denormals_while_it_trains_and_restores_the_callers_setting(caller, flush):
    seen = []

    class Watch(ScalarModel):
        def loss(self, x):
            seen.append(_flushing())
            return super().loss(x)

    torch.set_flush_denormal(caller)
    try:
        quiet(Watch("tensor"), tiny_data(), epochs=1, flush_denormals=flush)
        assert seen and all(s == (flush or caller) for s in seen[1:])  # [0]: the dry run
        assert _flushing() == caller
    finally:
        torch.set_flush_denormal(False)


_FAULTS_AROUND_FIT = """
import ctypes, resource, sys, torch
from autoenc import Decoder, Encoder, GaussianVAE, fit, log_likelihood

# glibc's initial thresholds (128 KiB), which its dynamic adjustment may have raised already
libc = ctypes.CDLL(None)
libc.mallopt(-3, 128 * 1024), libc.mallopt(-1, 128 * 1024)

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        buffers = [torch.ones(3 << 18) for _ in range(4)]  # four 3 MB tensors, freed together
        del buffers
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

before = faults()
vae = GaussianVAE(Encoder(4, [8], 4), Decoder(2, [8], 4), latent_dim=2)
x = torch.randint(0, 2, (16, 4)).float()
if sys.argv[1] == "fit":
    fit(vae, x, epochs=1, verbose=False)
else:
    log_likelihood(vae, x, k=10)
print(before, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize(
    "caller, user_setting", [("fit", None), ("log_likelihood", None), ("fit", "131072")]
)
def test_malloc_keeps_freed_memory_after_fit_unless_the_user_set_malloc(caller, user_setting):
    """Freed buffers of a few MB are given back to the kernel and faulted in again on every
    reuse with glibc's defaults; after fit or log_likelihood they stay in the process (far
    fewer page faults), unless the user chose malloc's thresholds themselves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    if user_setting is not None:
        env["MALLOC_TRIM_THRESHOLD_"] = user_setting
    run = subprocess.run(
        [sys.executable, "-c", _FAULTS_AROUND_FIT, caller], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    before, after = map(int, run.stdout.split())
    assert before > 10_000  # the pattern does fault under glibc's defaults
    if user_setting is None:
        assert after < before / 4
    else:
        assert after > before / 2


@pytest.mark.slow
def test_training_in_bf16_reaches_the_nll_of_fp32():
    """A short run of a Bernoulli VAE on the shipped MNIST sample in bf16 ends within 0.3 nats
    of the same run in fp32 (test NLL, mean over three seeds: a single pair differs by the
    chaos of training, about 0.1-0.3 nats, as two fp32 seeds do)."""
    from autoenc import log_likelihood
    from autoenc.data import dynamic_binarize, mnist_sample
    from autoenc.recipes import recommended_vae

    x, test = mnist_sample(train=True).images, mnist_sample(train=False).images
    test = dynamic_binarize(test, generator=torch.Generator().manual_seed(0))
    gaps = []
    for seed in range(3):
        nll = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(seed)
            model = recommended_vae(latent_dim=16, hidden=(256,))
            kwargs = {"epochs": 5, "batch_size": 64, "lr": 1e-3, "seed": seed}
            fit(model, x, transform=dynamic_binarize, precision=precision, verbose=False, **kwargs)
            nll[precision] = log_likelihood(model, test, k=100, precision="fp32").nll
        gaps.append(nll["bf16"] - nll["fp32"])
    assert abs(sum(gaps) / len(gaps)) < 0.3, gaps


def test_fit_restores_the_models_mode_and_leaves_it_on_the_device():
    model = tiny_vae().eval()
    quiet(model, tiny_data(), epochs=1, device="cpu")
    assert not model.training
    assert next(model.parameters()).device.type == "cpu"


# ---------------------------------------------------------------------------------------------
# Ctrl-C


def test_ctrl_c_stops_after_the_batch_and_returns_cleanly(tmp_path):
    previous = signal.getsignal(signal.SIGINT)
    rec = Recorder()

    class CtrlC(Callback):
        def on_batch_end(self, state):
            if state.step == 3:
                signal.raise_signal(signal.SIGINT)

    ckpt = ModelCheckpoint(tmp_path)
    result = quiet(
        tiny_vae(), tiny_data(40), epochs=5, batch_size=4, callbacks=[CtrlC(), rec, ckpt]
    )
    assert result.interrupted and not result.stopped_early
    assert result.steps == 3 and result.epochs_completed == 0
    assert "epoch_end" not in rec.hooks() and rec.hooks()[-1] == "fit_end"
    assert ckpt.last_path.exists()
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_second_ctrl_c_raises_at_once():
    previous = signal.getsignal(signal.SIGINT)
    rec = Recorder()

    class CtrlC(Callback):
        def on_batch_end(self, state):
            if state.step == 2:
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        quiet(tiny_vae(), tiny_data(), epochs=3, batch_size=4, callbacks=[CtrlC(), rec])
    assert rec.hooks()[-1] == "fit_end"
    assert signal.getsignal(signal.SIGINT) is previous


# ---------------------------------------------------------------------------------------------
# bad input, rejected before the first step


class NoLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)


@pytest.mark.parametrize(
    "model, data, kwargs, error, match",
    [
        (NoLoss(), tiny_data(), {}, TypeError, "loss"),
        ("model", tiny_data(), {}, TypeError, "nn.Module"),
        (None, torch.empty(0, 4), {}, ValueError, "empty"),
        (None, [], {}, ValueError, "empty"),
        (None, tiny_data(), {"batch_size": 0}, ValueError, "batch_size"),
        (None, tiny_data(), {"batch_size": -2}, ValueError, "batch_size"),
        (None, tiny_data(), {"epochs": -1}, ValueError, "epochs"),
        (None, tiny_data(), {"device": "tpu9"}, ValueError, "device"),
        (None, tiny_data(), {"precision": "fp8"}, ValueError, "precision"),
        (None, tiny_data(), {"scheduler_interval": "week"}, ValueError, "scheduler_interval"),
        (None, tiny_data(), {"grad_clip": -1.0}, ValueError, "grad_clip"),
        (None, tiny_data(), {"lr": 0.0}, ValueError, "lr"),
        (None, tiny_data(), {"callbacks": [print]}, TypeError, "Callback"),
        (None, tiny_data(), {"optimizer": "adam"}, TypeError, "optimizer"),
        (None, torch.rand(6, 5), {}, ValueError, r"shape \(2, 5\)"),
        (None, tiny_data(), {"val_data": torch.rand(6, 3)}, ValueError, "val_data"),
        (None, torch.arange(8).reshape(2, 4), {}, TypeError, "int64"),
    ],
)
def test_bad_input_is_rejected_before_the_first_step(model, data, kwargs, error, match):
    rec = Recorder()
    model = tiny_vae() if model is None else model
    before = weights(model) if isinstance(model, nn.Module) else None
    with pytest.raises(error, match=match):
        quiet(model, data, **{"epochs": 1, "callbacks": [rec], **kwargs})
    assert rec.events == []
    if before is not None:
        assert same_weights(before, weights(model))


def test_cuda_or_bf16_where_unavailable_is_rejected(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        quiet(tiny_vae(), tiny_data(), epochs=1, device="cuda")
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(ValueError, match="bf16"):
        quiet(tiny_vae(), tiny_data(), epochs=1, precision="bf16", device="cpu")


def test_lr_with_an_optimizer_instance_and_a_foreign_optimizer_are_rejected():
    model = tiny_vae()
    with pytest.raises(ValueError, match="lr"):
        quiet(
            model,
            tiny_data(),
            epochs=1,
            lr=0.1,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        )
    with pytest.raises(ValueError, match="none of the model"):
        quiet(
            model, tiny_data(), epochs=1, optimizer=torch.optim.SGD(tiny_vae().parameters(), lr=0.1)
        )


def test_a_model_whose_loss_does_not_fit_the_data_names_the_shapes():
    with pytest.raises(ValueError, match=r"shape \(2, 7\).*Encoder expects"):
        quiet(tiny_vae(), torch.rand(10, 7), epochs=1)


# ---------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_weights_batches_by_size_and_matches_one_big_batch():
    model, x = tiny_ae(), tiny_data(10)
    small = evaluate(model, x, batch_size=3)
    whole = evaluate(model, x, batch_size=10)
    direct = model.loss(x).terms()
    assert small.keys() == {"loss", "recon"}
    for k in small:
        assert small[k] == pytest.approx(whole[k], rel=1e-6)
        assert small[k] == pytest.approx(direct[k].item(), rel=1e-6)


def test_evaluate_restores_mode_needs_no_gradients_and_keeps_the_rng():
    model = tiny_vae()
    for mode in (True, False):
        model.train(mode)
        state = torch.get_rng_state()
        a = evaluate(model, tiny_data(), batch_size=8, seed=3)
        assert torch.equal(torch.get_rng_state(), state)
        assert model.training is mode
        assert all(p.grad is None for p in model.parameters())
        assert evaluate(model, tiny_data(), batch_size=8, seed=3) == a


def test_validation_metrics_equal_evaluate_after_the_last_epoch():
    model, val = tiny_ae(), tiny_data(9)
    result = quiet(model, tiny_data(), epochs=2, val_data=val, val_batch_size=4)
    assert result.metrics["val/loss"] == pytest.approx(evaluate(model, val)["loss"], rel=1e-6)


def test_evaluate_checks_its_input():
    with pytest.raises(TypeError, match="loss"):
        evaluate(NoLoss(), tiny_data())
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(tiny_ae(), tiny_data(), batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        evaluate(tiny_ae(), torch.empty(0, 4))


def test_evaluate_and_the_dry_run_keep_a_frozen_submodule_in_eval_mode():
    model = tiny_vae()
    model.train()
    model.encoder.eval()  # e.g. a frozen, pretrained encoder with BatchNorm
    evaluate(model, tiny_data(), batch_size=8)
    assert model.training and not model.encoder.training
    fit(model, tiny_data(), epochs=2, batch_size=8, verbose=False)
    assert model.training and not model.encoder.training  # fit leaves the modes as it found them


# ---------------------------------------------------------------------------------------------
# your own data in any float dtype


def test_float64_numpy_data_trains_a_float32_model_like_float32_data():
    """NumPy arrays are float64 by default: fit, evaluate and log_likelihood cast them to the
    model's dtype, and the result equals training on the same values in float32."""
    import numpy as np

    from autoenc import Decoder, Encoder, GaussianVAE, log_likelihood

    def build():
        torch.manual_seed(0)
        return GaussianVAE(Encoder(6, [8], 4), Decoder(2, [8], 6), latent_dim=2)

    data = np.random.default_rng(0).integers(0, 2, size=(40, 6)).astype(np.float64)
    as_numpy, as_float32 = build(), build()
    fit(as_numpy, data, epochs=2, batch_size=8, seed=0, verbose=False)
    fit(as_float32, torch.from_numpy(data).float(), epochs=2, batch_size=8, seed=0, verbose=False)
    for a, b in zip(as_numpy.parameters(), as_float32.parameters(), strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    assert evaluate(as_numpy, data, seed=0) == evaluate(as_float32, data.astype(np.float32), seed=0)
    nll = log_likelihood(as_numpy, data, k=4).nll
    assert nll == log_likelihood(as_float32, torch.from_numpy(data).float(), k=4).nll
