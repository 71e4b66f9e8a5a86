"""Tests for the built-in callbacks: progress output, CSV logging, early stopping, running means."""

from __future__ import annotations

import csv
import functools
import inspect
import io
import sys

import pytest
import torch
from _fit_models import Recorder, same_weights, tiny_ae, tiny_data, tiny_vae, weights

from autoenc.pictures import ImageSnapshots, TensorBoardDashboard, VisdomDashboard
from autoenc.training import ModelCheckpoint, fit
from autoenc.training.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    ProgressBar,
    RunningMean,
    State,
    TermsView,
)

quiet = functools.partial(fit, verbose=False)


class FakeMetric(Callback):
    """Overwrites ``state.metrics[key]`` with the next of ``values`` at every epoch end, and
    keeps a copy of the weights of every epoch."""

    def __init__(self, values, key: str = "val/loss") -> None:
        self.values, self.key, self.snapshots = list(values), key, []

    def on_fit_start(self, state):
        self.snapshots = []

    def on_epoch_end(self, state):
        state.metrics[self.key] = self.values[state.epoch]
        self.snapshots.append(weights(state.model))


# ---------------------------------------------------------------------------------------------
# running values


def test_running_mean_weighs_batches_by_size():
    meter = RunningMean()
    meter.update(("loss", "kl"), torch.tensor([1.0, 10.0]), 3)
    meter.update(("loss", "kl"), torch.tensor([4.0, 20.0]), 1)
    assert meter.means() == pytest.approx({"loss": (3 + 4) / 4, "kl": (30 + 20) / 4})
    copy = RunningMean()
    copy.load_state_dict(meter.state_dict())
    assert copy.means() == meter.means() and copy.count == 4
    with pytest.raises(ValueError, match="same on every batch"):
        meter.update(("loss",), torch.tensor([1.0]), 1)


def test_terms_view_reads_like_a_dict_of_floats():
    view = TermsView(("loss", "kl"), torch.tensor([0.5, 0.25]))
    assert dict(view) == {"loss": 0.5, "kl": 0.25} and view["kl"] == 0.25
    assert list(view) == ["loss", "kl"] and len(view) == 2


# ---------------------------------------------------------------------------------------------
# progress


def test_progress_prints_one_line_per_epoch_when_not_a_terminal(capsys):
    result = fit(tiny_vae(), tiny_data(), epochs=2, val_data=tiny_data(8), verbose=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("epoch 2/2")
    for key in ("train/loss", "train/kl", "val/loss"):
        assert key in lines[1]
    assert f"{result.history['train/loss'][1]:.4g}" in lines[1]
    assert lines[1].endswith("s")


def test_verbose_false_prints_nothing(capsys):
    quiet(tiny_vae(), tiny_data(), epochs=1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_bar_draws_a_tqdm_bar_with_the_running_loss():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    bar = ProgressBar(stream=stream, bar=True, refresh_seconds=0.0)
    postfixes = []

    class Peek(Callback):
        def on_batch_end(self, state):
            postfixes.append((bar._tqdm.postfix, state.running.means()["loss"]))

    result = quiet(tiny_vae(), tiny_data(), epochs=2, batch_size=8, callbacks=[bar, Peek()])
    postfix, running = postfixes[-1]
    assert f"loss={running:.4g}" in postfix
    text = stream.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text and "5/5" in text
    assert f"train/loss {result.history['train/loss'][1]:.4g}" in text


def test_progress_bar_falls_back_to_lines_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    stream = io.StringIO()
    quiet(tiny_vae(), tiny_data(), epochs=2, callbacks=[ProgressBar(stream=stream, bar=True)])
    lines = stream.getvalue().strip().splitlines()
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]


# ---------------------------------------------------------------------------------------------
# CSV


def test_csv_logger_writes_the_history(tmp_path):
    folder = tmp_path / "logs"
    logger = CSVLogger(folder)
    result = quiet(tiny_vae(), tiny_data(), epochs=3, val_data=tiny_data(8), callbacks=[logger])
    with logger.path.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", *result.history}
    for key, values in result.history.items():
        assert [float(r[key]) for r in rows] == values  # repr round-trips exactly
    assert list(folder.iterdir()) == [folder / "history.csv"]
    assert CSVLogger(folder, filename="run1.csv").path == folder / "run1.csv"
    with pytest.raises(ValueError, match="filename"):
        CSVLogger(folder, filename="sub/run1.csv")


def test_csv_logger_takes_the_old_file_path_with_a_warning(tmp_path):
    state = State(model=None, optimizer=None, history={"train/loss": [0.5, 0.25]})
    with pytest.warns(FutureWarning, match="takes a folder now") as caught:
        old = CSVLogger(tmp_path / "log.csv")
    assert caught[0].filename == __file__  # points at the caller
    assert (old.directory, old.filename) == (tmp_path, "log.csv")
    old.on_epoch_end(state)
    CSVLogger(tmp_path / "new", filename="log.csv").on_epoch_end(state)
    assert (tmp_path / "log.csv").read_text() == (tmp_path / "new" / "log.csv").read_text()
    with pytest.warns(FutureWarning) as caught:
        CSVLogger(path=tmp_path / "kw.csv")
    assert any("use directory=" in str(w.message) for w in caught)


def test_file_writing_callbacks_share_one_vocabulary(tmp_path):
    """The folder is the first parameter, named directory; the frequency is every_n_epochs."""
    for callback in (CSVLogger, ModelCheckpoint, ImageSnapshots, TensorBoardDashboard):
        assert next(iter(inspect.signature(callback).parameters)) == "directory", callback
    for callback in (ModelCheckpoint, ImageSnapshots, TensorBoardDashboard, VisdomDashboard):
        assert "every_n_epochs" in inspect.signature(callback).parameters, callback
    with pytest.warns(FutureWarning, match=r"ModelCheckpoint\(dirpath=...\).*use directory="):
        checkpoint = ModelCheckpoint(dirpath=tmp_path)
    assert checkpoint.last_path == tmp_path / "last.pt"


# ---------------------------------------------------------------------------------------------
# early stopping


def test_early_stopping_stops_after_patience_and_restores_the_best_weights():
    fake = FakeMetric([3.0, 1.0, 2.0, 1.5, 1.2, 0.5])
    stop = EarlyStopping(patience=3, restore_best_weights=True)
    model = tiny_vae()
    result = quiet(model, tiny_data(), epochs=6, val_data=tiny_data(8), callbacks=[fake, stop])
    assert result.epochs_completed == 5 and result.stopped_early  # best at epoch 1, 3 worse
    assert stop.best == 1.0 and stop.best_epoch == 1 and stop.stopped_epoch == 4
    assert same_weights(weights(model), fake.snapshots[1])
    assert not same_weights(weights(model), fake.snapshots[-1])


def test_early_stopping_min_delta_and_max_mode():
    fake = FakeMetric([1.0, 1.05, 1.08, 1.5], key="train/recon")
    stop = EarlyStopping("train/recon", patience=2, mode="max", min_delta=0.1)
    result = quiet(tiny_vae(), tiny_data(), epochs=4, callbacks=[fake, stop])
    assert result.epochs_completed == 3 and stop.best == 1.0


def test_early_stopping_is_reset_for_every_fit():
    stop = EarlyStopping("train/loss", patience=1)
    first = quiet(
        tiny_vae(),
        tiny_data(),
        epochs=5,
        callbacks=[FakeMetric([1, 2, 3, 4, 5], "train/loss"), stop],
    )
    assert first.epochs_completed == 2
    second = quiet(
        tiny_vae(), tiny_data(), epochs=3, callbacks=[FakeMetric([5, 4, 3], "train/loss"), stop]
    )
    assert second.epochs_completed == 3 and not second.stopped_early
    assert stop.best == 3 and stop.wait == 0


def test_early_stopping_on_val_loss_without_val_data_fails_before_training():
    rec = Recorder()
    with pytest.raises(ValueError, match="no val_data"):
        quiet(tiny_vae(), tiny_data(), epochs=2, callbacks=[rec, EarlyStopping()])
    assert rec.hooks() == ["fit_start", "fit_end"]


def test_early_stopping_on_an_unknown_metric_names_the_metrics():
    with pytest.raises(ValueError, match=r"'train/elbo'.*train/loss"):
        quiet(tiny_ae(), tiny_data(), epochs=2, callbacks=[EarlyStopping("train/elbo")])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"mode": "mean"}, "mode"), ({"patience": 0}, "patience"), ({"min_delta": -1}, "min_delta")],
)
def test_early_stopping_checks_its_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping(**kwargs)


def test_progress_lines_show_a_models_further_terms():
    """A VQ-VAE's perplexity (any term beyond loss, recon and kl) appears in the epoch line."""
    import io

    from autoenc import fit

    class WithPerplexity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            loss = (self.w * x).pow(2).mean()
            return {"loss": loss, "perplexity": torch.tensor(7.0)}

    stream = io.StringIO()
    fit(WithPerplexity(), torch.rand(8, 3), epochs=1, batch_size=4,
        callbacks=[ProgressBar(stream=stream, bar=False)])  # fmt: skip
    assert "train/perplexity 7" in stream.getvalue()
