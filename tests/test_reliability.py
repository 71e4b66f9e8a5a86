"""Faults: each is refused with a message that says what happened, or named by a warning; none
ends in a silently wrong result. Every test here failed before its fault was handled."""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import signal
import stat
import struct
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _fit_models import same_weights, tiny_data, tiny_vae, weights, without_time
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from autoenc import (
    Callback,
    Decoder,
    Encoder,
    Gaussian,
    GaussianVAE,
    KLWarmup,
    ModelCheckpoint,
    NonFiniteLossError,
    fit,
    load,
    load_checkpoint,
    save,
)

quiet = functools.partial(fit, verbose=False)


def _checkpoint(folder: Path, model: nn.Module | None = None, **kwargs) -> Path:
    """``last.pt`` of one epoch of ``model`` (a tiny VAE) trained with ``kwargs``."""
    model = tiny_vae() if model is None else model
    quiet(model, tiny_data(), epochs=1, callbacks=[ModelCheckpoint(folder)], **kwargs)
    return folder / "last.pt"


def _edit(path: Path, **changes) -> None:
    """Rewrite a torch file with some entries changed (``None`` removes one)."""
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    torch.save(payload, path)


def _messages(record, part: str) -> list[str]:
    return [str(w.message) for w in record if part in str(w.message)]


# ---------------------------------------------------------------------------------------------
# data


@pytest.mark.parametrize("parts", [2, 3])
def test_a_list_of_equal_length_tensors_is_refused_not_read_as_x_and_labels(parts):
    with pytest.raises(TypeError, match=f"a list of {parts} tensors is ambiguous"):
        quiet(tiny_vae(), [tiny_data(16, seed=s) for s in range(parts)], epochs=1)


def test_a_tuple_of_three_tensors_is_refused():
    x = tiny_data(16)
    with pytest.raises(TypeError, match="a tuple of 3 tensors is ambiguous"):
        quiet(tiny_vae(), (x, torch.zeros(16), torch.ones(16)), epochs=1)


# ---------------------------------------------------------------------------------------------
# divergence


class Linear(nn.Module):
    """``loss = 1000 * mean(x . w)``: finite while ``w`` is, with a gradient of ~500 per weight,
    so SGD at lr=1e38 overflows the weights in one step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return 1000 * (x * self.w).sum(dim=1).mean()


def _sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr)


def test_divergence_on_the_last_step_raises_before_any_checkpoint(tmp_path):
    model = Linear()
    with pytest.raises(NonFiniteLossError) as info:
        quiet(
            model,
            tiny_data(8),
            epochs=1,
            batch_size=8,
            optimizer=_sgd(1e38),
            callbacks=[ModelCheckpoint(tmp_path)],
        )
    assert not torch.isfinite(model.w).all()  # the one step diverged, its loss was finite
    assert info.value.term == "weights" and not info.value.weights_finite
    assert "no checkpoint was written" in str(info.value)
    assert not (tmp_path / "last.pt").exists()


def test_the_error_says_the_weights_are_inf_when_an_earlier_step_diverged():
    with pytest.raises(NonFiniteLossError) as info:
        quiet(Linear(), tiny_data(16), epochs=1, batch_size=8, optimizer=_sgd(1e38))
    err = info.value
    assert (err.step, err.weights_finite) == (1, False)
    assert "still finite" not in str(err) and "NaN or Inf already" in str(err)


# ---------------------------------------------------------------------------------------------
# damaged, odd or foreign files


def _flip_tensor_bytes(path: Path, n: int = 64) -> None:
    """Flip ``n`` bytes inside the largest tensor of a torch archive; the CRCs stay as written."""
    with zipfile.ZipFile(path) as archive:
        info = max(
            (i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size
        )
    assert info.file_size >= n and info.compress_type == zipfile.ZIP_STORED
    data = bytearray(path.read_bytes())
    # a local file header is 30 bytes, then the name and the extra field
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    start = info.header_offset + 30 + name_len + extra_len
    data[start : start + n] = bytes(b ^ 0xFF for b in data[start : start + n])
    path.write_bytes(bytes(data))


def test_a_model_file_with_flipped_bytes_is_refused(tmp_path):
    path = save(tiny_vae(), tmp_path / "vae.pt")
    _flip_tensor_bytes(path)
    torch.load(path, weights_only=True)  # torch alone reads the damaged weights
    with pytest.raises(ValueError, match=r"vae.pt' is corrupted: the checksum"):
        load(path)


def test_a_checkpoint_with_flipped_bytes_is_refused(tmp_path):
    path = _checkpoint(tmp_path)
    _flip_tensor_bytes(path)
    torch.load(path, weights_only=True)
    with pytest.raises(ValueError, match=r"last.pt' is corrupted: the checksum"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="corrupted"):
        quiet(tiny_vae(), tiny_data(), epochs=2, resume=path)


def test_a_float64_model_loads_back_as_float64(tmp_path):
    model = tiny_vae().double()
    with torch.no_grad():
        for p in model.parameters():  # values that float32 cannot hold
            p.add_(1e-10 * torch.randn_like(p))
    loaded = load(save(model, tmp_path / "vae.pt"))
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    assert same_weights(weights(model), weights(loaded))


def _model_file(tmp_path: Path) -> Path:
    return save(tiny_vae(), tmp_path / "vae.pt")


@pytest.mark.parametrize(
    "change",
    [
        {"config": "{not json"},
        {"config": json.dumps({**tiny_vae().config, "colour": "red"})},
        {"kind": "NoSuchModel"},
    ],
    ids=["bad-json", "unknown-key", "unknown-kind"],
)
def test_a_model_file_with_a_bad_config_raises_one_value_error_naming_it(tmp_path, change):
    path = _model_file(tmp_path)
    _edit(path, **change)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load(path)


def test_a_checkpoint_without_rng_states_names_the_file_and_the_missing_part(tmp_path):
    path = _checkpoint(tmp_path)
    _edit(path, rng=None)
    with pytest.raises(ValueError, match=r"last.pt' lacks 'rng'"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"lacks 'rng'"):
        quiet(tiny_vae(), tiny_data(), epochs=2, resume=path)


def test_a_full_disk_raises_an_os_error_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save(tiny_vae(), tmp_path / "vae.pt")
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"the first bytes")
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
            "file data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="no space left on the device") as info:
        save(tiny_vae(seed=1), path)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["vae.pt"]


def test_the_next_write_removes_stale_temporaries_of_a_killed_writer(tmp_path):
    stale = tmp_path / ".vae.pt.k1ll3d.tmp"
    fresh = tmp_path / ".vae.pt.writing.tmp"  # may belong to a writer still at work
    other = tmp_path / ".other.pt.k1ll3d.tmp"  # another file's: not ours to judge
    for tmp in (stale, fresh, other):
        tmp.write_bytes(b"half a file")
    two_hours_ago = time.time() - 2 * 3600
    for tmp in (stale, other):
        os.utime(tmp, (two_hours_ago, two_hours_ago))
    save(tiny_vae(), tmp_path / "vae.pt")
    assert not stale.exists()
    assert fresh.exists() and other.exists()


def test_saved_files_get_the_mode_of_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        model_file = save(tiny_vae(), tmp_path / "vae.pt")
        checkpoint = _checkpoint(tmp_path / "ckpt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(model_file.stat().st_mode) == 0o644
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o644


def test_a_checkpoint_folder_that_cannot_be_written_fails_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    model = tiny_vae()
    before = weights(model)
    with pytest.raises(ValueError, match=r"ModelCheckpoint: cannot write files in"):
        quiet(model, tiny_data(), epochs=2, callbacks=[ModelCheckpoint(blocker / "ckpt")])
    assert same_weights(before, weights(model))


# ---------------------------------------------------------------------------------------------
# arguments


def test_numpy_scalars_are_accepted_as_epochs_batch_size_and_lr():
    result = quiet(
        tiny_vae(), tiny_data(16), epochs=np.int64(2), batch_size=np.int64(8), lr=np.float64(0.01)
    )
    assert result.steps == 4 and result.history["lr"] == [0.01, 0.01]


def test_a_gaussian_with_a_scale_per_pixel_takes_an_int_shape(tmp_path):
    likelihood = Gaussian(0.5, learn_scale="pixel", shape=4)
    torch.manual_seed(0)
    vae = GaussianVAE(Encoder(4, [8], 4), Decoder(2, [8], 4), latent_dim=2, likelihood=likelihood)
    quiet(vae, tiny_data(), epochs=1)
    assert likelihood.log_scale.shape == (4,) and likelihood.config["shape"] == [4]
    assert same_weights(weights(load(save(vae, tmp_path / "vae.pt"))), weights(vae))
    with pytest.raises(ValueError, match="shape must be a positive int"):
        Gaussian(learn_scale="pixel", shape=0)


class SigmoidDecoder(nn.Module):
    """A decoder of the user's own that (wrongly, under a logits likelihood) applies a sigmoid."""

    def __init__(self, sigmoid: bool = True) -> None:
        super().__init__()
        self.linear, self.sigmoid = nn.Linear(2, 4), sigmoid

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.linear(z)
        return torch.sigmoid(out) if self.sigmoid else out


@pytest.mark.parametrize("sigmoid", [True, False])
def test_a_sigmoid_in_a_custom_decoder_under_bernoulli_warns_once(sigmoid):
    torch.manual_seed(0)
    vae = GaussianVAE(
        Encoder(4, [8], 4), SigmoidDecoder(sigmoid), latent_dim=2, likelihood="bernoulli"
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        quiet(vae, tiny_data(16), epochs=2, batch_size=8)
    assert len(_messages(record, "reads them as logits")) == (1 if sigmoid else 0)


# ---------------------------------------------------------------------------------------------
# resuming with another optimizer, model, scheduler or schedule


def test_resume_with_another_optimizer_class_names_both_and_loads_nothing(tmp_path):
    path = _checkpoint(tmp_path)  # the default Adam
    model = tiny_vae(seed=3)
    before = weights(model)
    with pytest.raises(
        ValueError, match=r"the Adam optimizer, but this run's is SGD.*torch.optim.Adam"
    ):
        quiet(model, tiny_data(), epochs=2, resume=path, optimizer=_sgd(0.1))
    assert same_weights(before, weights(model))


def test_an_older_checkpoint_is_compared_by_its_hyperparameter_names(tmp_path):
    path = _checkpoint(tmp_path)
    _edit(path, optimizer_class=None)  # as written before the class was stored
    model = tiny_vae(seed=3)
    before = weights(model)
    with pytest.raises(ValueError, match=r"'betas'.*but this run's SGD has .*'momentum'"):
        quiet(model, tiny_data(), epochs=2, resume=path, optimizer=_sgd(0.1))
    assert same_weights(before, weights(model))


def _adam(**kwargs):
    return lambda params: torch.optim.Adam(params, lr=1e-3, **kwargs)


def test_resume_warns_for_each_hyperparameter_it_does_not_apply(tmp_path):
    path = _checkpoint(tmp_path, optimizer=_adam())
    with pytest.warns(UserWarning) as record:
        result = quiet(
            tiny_vae(),
            tiny_data(),
            epochs=2,
            resume=path,
            optimizer=_adam(betas=(0.5, 0.9), weight_decay=0.1),
        )
    messages = _messages(record, "restores the optimizer's hyper-parameters")
    assert len(messages) == 2
    assert "betas=[0.5, 0.9] is not applied" in messages[0]
    assert "weight_decay=0.1 is not applied, the checkpoint's weight_decay=0" in messages[1]
    group = result.state.optimizer.param_groups[0]  # the checkpoint's, as the warnings say
    assert group["weight_decay"] == 0 and tuple(group["betas"]) == (0.9, 0.999)


def test_resume_with_the_same_optimizer_settings_warns_nothing(tmp_path):
    path = _checkpoint(tmp_path, optimizer=_adam(weight_decay=0.1))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        quiet(tiny_vae(), tiny_data(), epochs=2, resume=path, optimizer=_adam(weight_decay=0.1))
    assert [str(w.message) for w in record] == []


def test_resume_into_a_model_with_another_likelihood_names_the_difference(tmp_path):
    torch.manual_seed(0)
    bernoulli = GaussianVAE(
        Encoder(4, [8], 4), Decoder(2, [8], 4), latent_dim=2, likelihood="bernoulli"
    )
    path = _checkpoint(tmp_path, bernoulli)
    model = tiny_vae()  # the same shapes, a squared-error likelihood
    before = weights(model)
    expected = r"another config .*likelihood.name: 'bernoulli' in the checkpoint, 'mse' here"
    with pytest.raises(ValueError, match=expected):
        quiet(model, tiny_data(), epochs=2, resume=path)
    assert same_weights(before, weights(model))


class RenamedVAE(GaussianVAE):
    """A model of another kind with the same weights as a GaussianVAE."""


def test_resume_into_a_model_of_another_kind_is_refused(tmp_path):
    path = _checkpoint(tmp_path)
    torch.manual_seed(0)
    other = RenamedVAE(Encoder(4, [8], 4), Decoder(2, [8], 4), latent_dim=2, likelihood="mse")
    with pytest.raises(
        ValueError, match="written by a GaussianVAE, but this model is a RenamedVAE"
    ):
        quiet(other, tiny_data(), epochs=2, resume=path)


def test_resume_with_another_beta_warns_unless_a_schedule_sets_it(tmp_path):
    path = _checkpoint(tmp_path / "plain")
    with pytest.warns(UserWarning, match=r"written with beta=1.0, but this model has beta=4.0"):
        quiet(tiny_vae(beta=4.0), tiny_data(), epochs=2, resume=path)
    quiet(
        tiny_vae(),
        tiny_data(),
        epochs=1,
        callbacks=[KLWarmup(steps=50), ModelCheckpoint(tmp_path / "warmup")],
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        quiet(
            tiny_vae(),
            tiny_data(),
            epochs=2,
            callbacks=[KLWarmup(steps=50)],
            resume=tmp_path / "warmup" / "last.pt",
        )
    assert _messages(record, "beta") == []


def _cosine(t_max: int):
    return lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)


def test_resume_with_a_schedule_for_other_epochs_warns_naming_the_setting(tmp_path):
    quiet(
        tiny_vae(),
        tiny_data(),
        epochs=2,
        scheduler=_cosine(2),
        callbacks=[ModelCheckpoint(tmp_path)],
    )
    expected = r"CosineAnnealingLR whose settings differ .*T_max: 2 in the checkpoint, 4 here"
    with pytest.warns(UserWarning, match=expected):
        result = quiet(
            tiny_vae(), tiny_data(), epochs=4, scheduler=_cosine(4), resume=tmp_path / "last.pt"
        )
    assert result.state.scheduler.T_max == 2  # restored, as the warning says


def test_resume_with_another_scheduler_class_is_refused(tmp_path):
    path = _checkpoint(tmp_path, scheduler=_cosine(2))
    step_lr = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1)  # noqa: E731
    with pytest.raises(
        ValueError, match="a CosineAnnealingLR LR scheduler, but this run's is StepLR"
    ):
        quiet(tiny_vae(), tiny_data(), epochs=2, scheduler=step_lr, resume=path)


def test_resume_with_a_longer_kl_warmup_warns(tmp_path):
    quiet(
        tiny_vae(),
        tiny_data(),
        epochs=1,
        callbacks=[KLWarmup(steps=10), ModelCheckpoint(tmp_path)],
    )
    with pytest.warns(UserWarning, match=r"KLWarmup.length: 10 in the checkpoint, 20 here"):
        quiet(
            tiny_vae(),
            tiny_data(),
            epochs=2,
            callbacks=[KLWarmup(steps=20)],
            resume=tmp_path / "last.pt",
        )


# ---------------------------------------------------------------------------------------------
# a DataLoader resumed mid-epoch


class CtrlCAt(Callback):
    """Presses Ctrl-C after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_batch_end(self, state) -> None:
        if state.step == self.step:
            signal.raise_signal(signal.SIGINT)


class NoisyData(Dataset):
    """Items that draw from torch's generator as they are read (a random augmentation)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i] + 0.01 * torch.rand(self.x.shape[1:])


@pytest.mark.parametrize(
    "shuffle, dataset",
    [(False, TensorDataset), (True, TensorDataset), (True, NoisyData)],
    ids=["in-order", "shuffled", "shuffled-noisy-items"],
)
def test_a_dataloader_resumed_mid_epoch_equals_the_uninterrupted_run(tmp_path, shuffle, dataset):
    data = dataset(tiny_data(30))

    def run(callbacks=(), resume=None):
        model = tiny_vae()  # a VAE: every step draws noise from torch's generator
        loader = DataLoader(data, batch_size=4, shuffle=shuffle)  # 8 batches per epoch
        result = quiet(model, loader, epochs=2, seed=5, callbacks=list(callbacks), resume=resume)
        return model, result

    full_model, full = run()
    _, stopped = run([CtrlCAt(11), ModelCheckpoint(tmp_path)])
    assert stopped.interrupted and load_checkpoint(tmp_path / "last.pt")["batch"] == 3
    model, resumed = run(resume=tmp_path / "last.pt")
    assert same_weights(weights(full_model), weights(model))
    assert without_time(full.history) == without_time(resumed.history)


def test_resume_with_a_dataloader_of_its_own_generator_warns(tmp_path):
    def loader():
        generator = torch.Generator().manual_seed(0)
        return DataLoader(
            TensorDataset(tiny_data()), batch_size=8, shuffle=True, generator=generator
        )

    quiet(tiny_vae(), loader(), epochs=1, callbacks=[ModelCheckpoint(tmp_path)])
    with pytest.warns(UserWarning, match="a generator of its own"):
        quiet(tiny_vae(), loader(), epochs=2, resume=tmp_path / "last.pt")
