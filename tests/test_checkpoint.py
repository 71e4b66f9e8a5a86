"""Tests for autoenc.training.checkpoint: ModelCheckpoint files, atomic writes, exact resume."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
from pathlib import Path

import _resume_worker
import pytest
import torch
from _fit_models import NaNAt, same_weights, tiny_data, tiny_vae, weights, without_time
from torch.utils.data import DataLoader, TensorDataset

import autoenc.files
import autoenc.training.checkpoint
from autoenc.training import NonFiniteLossError, fit
from autoenc.training.callbacks import Callback
from autoenc.training.checkpoint import ModelCheckpoint, load_checkpoint

quiet = functools.partial(fit, verbose=False)
WORKER = Path(__file__).with_name("_resume_worker.py")


class SetMetric(Callback):
    def __init__(self, values):
        self.values = values

    def on_epoch_end(self, state):
        state.metrics["val/loss"] = self.values[state.epoch]


# ---------------------------------------------------------------------------------------------
# what is written


def test_last_and_best_checkpoints(tmp_path):
    ckpt = ModelCheckpoint(tmp_path)
    model = tiny_vae()
    quiet(
        model,
        tiny_data(),
        epochs=4,
        val_data=tiny_data(8),
        callbacks=[ckpt, SetMetric([3.0, 1.0, 2.0, 1.5])],
    )
    last, best = load_checkpoint(ckpt.last_path), load_checkpoint(ckpt.best_path)
    assert last["epochs_completed"] == 4 and last["epoch"] == 4 and last["batch"] == 0
    assert best["epochs_completed"] == 2 and best["metrics"]["val/loss"] == 1.0
    assert ckpt.best == 1.0 and ckpt.best_epoch == 1
    assert same_weights(last["model"], weights(model))
    assert len(last["history"]["train/loss"]) == 4
    assert {"optimizer", "scheduler", "rng", "callbacks", "seed", "step", "config"} <= set(last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_checkpoint_loads_into_a_model_and_rebuilds_from_its_config(tmp_path):
    import json

    from autoenc import GaussianVAE

    ckpt = ModelCheckpoint(tmp_path)
    model = tiny_vae()
    quiet(model, tiny_data(), epochs=1, callbacks=[ckpt])
    other = tiny_vae(seed=5)
    load_checkpoint(ckpt.last_path, model=other)
    assert same_weights(weights(other), weights(model))
    payload = load_checkpoint(ckpt.last_path)
    rebuilt = GaussianVAE.from_config(json.loads(payload["config"]))
    rebuilt.load_state_dict(payload["model"])
    assert same_weights(weights(rebuilt), weights(model))


def test_every_n_epochs_and_the_final_epoch(tmp_path):
    written = []
    ckpt = ModelCheckpoint(tmp_path, every_n_epochs=2, save_best=False)
    original = autoenc.training.checkpoint.atomic_save

    def spy(payload, path):
        written.append((payload["epochs_completed"], Path(path).name))
        return original(payload, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(autoenc.training.checkpoint, "atomic_save", spy)
        quiet(tiny_vae(), tiny_data(), epochs=5, callbacks=[ckpt])
    assert written == [(2, "last.pt"), (4, "last.pt"), (5, "last.pt")]


def test_monitor_defaults_to_train_loss_without_validation(tmp_path):
    ckpt = ModelCheckpoint(tmp_path)
    result = quiet(tiny_vae(), tiny_data(), epochs=2, callbacks=[ckpt])
    assert ckpt.best == min(result.history["train/loss"])


# ---------------------------------------------------------------------------------------------
# nothing good is lost


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    ckpt = ModelCheckpoint(tmp_path, save_best=False)
    quiet(tiny_vae(), tiny_data(), epochs=1, callbacks=[ckpt])
    before = ckpt.last_path.read_bytes()
    real_save = torch.save

    def crash_mid_write(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)  # half a file on disk, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(autoenc.files.torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        quiet(tiny_vae(), tiny_data(), epochs=1, callbacks=[ckpt])
    monkeypatch.undo()
    assert ckpt.last_path.read_bytes() == before
    assert load_checkpoint(ckpt.last_path)["epochs_completed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_nan_loss_never_overwrites_the_last_good_checkpoint(tmp_path):
    ckpt = ModelCheckpoint(tmp_path)
    model = NaNAt(at=8)  # 5 batches per epoch: fails in the second epoch
    with pytest.raises(NonFiniteLossError):
        quiet(model, tiny_data(20), epochs=3, batch_size=4, callbacks=[ckpt])
    last = load_checkpoint(ckpt.last_path)
    assert last["epochs_completed"] == 1 and last["step"] == 5
    assert all(torch.isfinite(v).all() for v in last["model"].values())


def test_non_finite_weights_are_never_written(tmp_path):
    class Poison(Callback):
        def on_epoch_end(self, state):
            if state.epoch == 1:
                with torch.no_grad():
                    next(state.model.parameters()).fill_(float("nan"))

    ckpt = ModelCheckpoint(tmp_path)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        quiet(tiny_vae(), tiny_data(), epochs=2, callbacks=[Poison(), ckpt], nan_guard=False)
    assert load_checkpoint(ckpt.last_path)["epochs_completed"] == 1


# ---------------------------------------------------------------------------------------------
# exact resume


def _uninterrupted():
    model, x, val = _resume_worker.build()
    result = _resume_worker.train(model, x, val)
    return model, result


def _assert_same_run(model_a, result_a, model_b, result_b):
    assert same_weights(weights(model_a), weights(model_b))
    assert without_time(result_a.history) == without_time(result_b.history)
    assert result_a.steps == result_b.steps
    opt_a, opt_b = result_a.state.optimizer.state_dict(), result_b.state.optimizer.state_dict()
    for key, state in opt_a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, opt_b["state"][key][name])
    assert model_a.beta == model_b.beta


def test_resume_from_an_epoch_checkpoint_equals_the_uninterrupted_run(tmp_path):
    full_model, full = _uninterrupted()

    class StopAfter(Callback):
        def on_epoch_end(self, state):
            if state.epochs_completed == 2:
                state.should_stop = True

    model, x, val = _resume_worker.build()
    _resume_worker.train(model, x, val, callbacks=[StopAfter(), ModelCheckpoint(tmp_path)])
    model, x, val = _resume_worker.build()
    resumed = _resume_worker.train(model, x, val, resume=tmp_path / "last.pt")
    _assert_same_run(full_model, full, model, resumed)
    assert resumed.state.callbacks[1].best == full.state.callbacks[1].best  # EarlyStopping


def test_resume_after_ctrl_c_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    full_model, full = _uninterrupted()

    class CtrlC(Callback):
        def on_batch_end(self, state):
            if state.step == 10:  # epoch 1, batch 3 of 7
                signal.raise_signal(signal.SIGINT)

    model, x, val = _resume_worker.build()
    stopped = _resume_worker.train(model, x, val, callbacks=[CtrlC(), ModelCheckpoint(tmp_path)])
    assert stopped.interrupted
    payload = load_checkpoint(tmp_path / "last.pt")
    assert (payload["epoch"], payload["batch"], payload["step"]) == (1, 3, 10)
    model, x, val = _resume_worker.build()
    resumed = _resume_worker.train(model, x, val, resume=tmp_path / "last.pt")
    _assert_same_run(full_model, full, model, resumed)


def test_resume_with_a_shuffling_dataloader_equals_the_uninterrupted_run(tmp_path):
    data = TensorDataset(tiny_data(30))

    def run(epochs, resume=None, callbacks=()):
        model = tiny_vae()
        loader = DataLoader(data, batch_size=8, shuffle=True)
        result = quiet(model, loader, epochs=epochs, seed=7, resume=resume, callbacks=callbacks)
        return model, result

    full_model, full = run(3)
    run(1, callbacks=[ModelCheckpoint(tmp_path)])
    model, resumed = run(3, resume=tmp_path / "last.pt")
    assert same_weights(weights(full_model), weights(model))
    assert without_time(full.history) == without_time(resumed.history)


@pytest.mark.slow
def test_resume_after_kill_9_equals_the_uninterrupted_run(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(tmp_path), "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "CHECKPOINTED 2", proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(tmp_path / "last.pt")["epochs_completed"] == 2
    model, x, val = _resume_worker.build()
    resumed = _resume_worker.train(model, x, val, resume=tmp_path / "last.pt")
    full_model, full = _uninterrupted()
    _assert_same_run(full_model, full, model, resumed)


def test_resuming_a_finished_run_trains_no_further(tmp_path):
    model = tiny_vae()
    quiet(model, tiny_data(), epochs=2, callbacks=[ModelCheckpoint(tmp_path)])
    again = tiny_vae()
    result = quiet(again, tiny_data(), epochs=2, resume=tmp_path / "last.pt")
    assert result.epochs_completed == 2 and same_weights(weights(again), weights(model))


def test_resume_warns_that_a_new_lr_is_not_applied(tmp_path):
    quiet(tiny_vae(), tiny_data(), epochs=1, lr=1e-3, callbacks=[ModelCheckpoint(tmp_path)])
    expected = r"restores the optimizer's learning rate .*started at 0.001.*lr=1e-05"
    with pytest.warns(UserWarning, match=expected):
        result = quiet(tiny_vae(), tiny_data(), epochs=2, lr=1e-5, resume=tmp_path / "last.pt")
    assert result.history["lr"] == [1e-3, 1e-3]


def test_resume_warns_when_batches_per_epoch_changed(tmp_path):
    data = tiny_data()
    quiet(tiny_vae(), data, epochs=1, batch_size=8, callbacks=[ModelCheckpoint(tmp_path)])
    with pytest.warns(UserWarning, match="batches per epoch"):
        quiet(tiny_vae(), data, epochs=2, batch_size=4, resume=tmp_path / "last.pt")


# ---------------------------------------------------------------------------------------------
# bad checkpoints


def test_resume_from_another_model_names_the_mismatch(tmp_path):
    quiet(tiny_vae(), tiny_data(), epochs=1, callbacks=[ModelCheckpoint(tmp_path)])
    from autoenc import Decoder, Encoder, GaussianVAE

    other = GaussianVAE(Encoder(4, [16], 4), Decoder(2, [8], 4), latent_dim=2, likelihood="mse")
    before = weights(other)
    with pytest.raises(ValueError, match=r"different model.*shape mismatches.*encoder"):
        quiet(other, tiny_data(), epochs=2, resume=tmp_path / "last.pt")
    assert same_weights(before, weights(other))


def test_resume_from_a_corrupted_or_missing_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupted"):
        quiet(tiny_vae(), tiny_data(), epochs=1, resume=bad)
    with pytest.raises(FileNotFoundError):
        quiet(tiny_vae(), tiny_data(), epochs=1, resume=tmp_path / "missing.pt")


def test_a_model_file_is_not_a_checkpoint(tmp_path):
    model = tiny_vae()
    autoenc.save(model, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="autoenc.load"):
        load_checkpoint(tmp_path / "model.pt")


def test_resume_with_another_optimizer_is_rejected(tmp_path):
    quiet(tiny_vae(), tiny_data(), epochs=1, callbacks=[ModelCheckpoint(tmp_path)])
    with pytest.raises(ValueError, match="optimizer"):
        quiet(
            tiny_vae(),
            tiny_data(),
            epochs=2,
            resume=tmp_path / "last.pt",
            optimizer=lambda p: torch.optim.SGD([{"params": p[:2]}, {"params": p[2:]}]),
        )


@pytest.mark.parametrize(
    "kwargs, match", [({"mode": "best"}, "mode"), ({"every_n_epochs": 0}, "every_n_epochs")]
)
def test_model_checkpoint_checks_its_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelCheckpoint(tmp_path, **kwargs)
