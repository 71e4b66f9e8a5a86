"""The examples run, write what they say into versioned run folders, and document every option.

Each example's ``main`` runs in this process for two short epochs on a slice of the MNIST sample
shipped with autoenc (the data helper is replaced, so nothing is downloaded).
"""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from autoenc.data import MNISTData, mnist_sample
from autoenc.training import State

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))  # the examples import their helper module from beside them
import _cli  # noqa: E402

SCRIPTS = ["mnist_ae.py", "mnist_vae.py", "mnist_vae_recipe.py"]
# smoke-run by the tests of their models (tests/test_conditional.py, tests/test_vqvae.py)
MODEL_EXAMPLES = ["mnist_cvae.py", "mnist_vqvae.py"]
RUNS = {
    "mnist_ae.py": "runs/ae",
    "mnist_vae.py": "runs/vae",
    "mnist_vae_recipe.py": "runs/vae_recipe",
}
FILES = {  # what two epochs with --every 1 write
    "mnist_ae.py": {"recon_epoch001.png", "recon_epoch002.png"},
    "mnist_vae.py": {
        *(f"{kind}_epoch00{n}.png" for kind in ("recon", "samples") for n in (1, 2)),
        "reconstructions.png",
    },
    "mnist_vae_recipe.py": {
        *(f"{kind}_epoch00{n}.png" for kind in ("recon", "samples") for n in (1, 2)),
        "checkpoints/last.pt",
    },
}
COMMON = {"loss.png", "model.pt", "metrics.json"}


@pytest.fixture
def small_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    """256 training and 64 test images of the shipped sample instead of full MNIST."""

    def sample(root: object = None, *, download: bool = True, hint: str = "") -> tuple:
        splits = []
        for train, n in ((True, 256), (False, 64)):
            images, labels = mnist_sample(train=train)
            splits.append(MNISTData(images[:n], labels[:n]))
        return tuple(splits), True

    monkeypatch.setattr(_cli, "mnist_or_sample", sample)


def run(script: str, *args: str, monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Run an example's ``main`` as ``python examples/SCRIPT ARGS`` from ``folder``."""
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", [script, *args])
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")


def written(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_writes_what_it_prints(script, small_mnist, monkeypatch, tmp_path, capsys):
    args = ["--epochs", "2", "--max-batches", "2", "--every", "1", "--device", "cpu"]
    if script == "mnist_vae_recipe.py":
        args += ["--iw-samples", "2"]
    (tmp_path / RUNS[script] / "version_0").mkdir(parents=True)  # an earlier run
    run(script, *args, monkeypatch=monkeypatch, folder=tmp_path)

    folder = tmp_path / RUNS[script] / "version_1"
    assert written(folder) == FILES[script] | COMMON
    out = capsys.readouterr().out
    assert f"files in {Path(RUNS[script]) / 'version_1'}/" in out
    metrics = json.loads((folder / "metrics.json").read_text())
    history, test = metrics["history"], metrics["test"]
    assert len(history["train/loss"]) == 2
    for key, value in test.items():
        assert key.startswith("test/") and key in out and value == value  # printed, not NaN
    if script == "mnist_vae.py":  # the sampled error is the loss's term, val/recon
        assert test["test/mse_per_pixel_sampled"] == pytest.approx(history["val/recon"][-1])
        assert "test/mse_per_pixel_posterior_mean" in test
    # Grids carry row labels: a margin left of the 8 columns of 28 + 2 pixels.
    width, _ = Image.open(folder / "recon_epoch002.png").size
    assert width > 8 * 30 + 2


@pytest.mark.parametrize(
    "script, preset, network, precision",
    [
        ("mnist_ae.py", "conv", "ConvEncoder", "fp32"),
        ("mnist_vae_recipe.py", "conv", "ConvEncoder", "auto"),
        ("mnist_vae_recipe.py", "fast", "Encoder", "auto"),
    ],
)
def test_presets_train_their_own_networks(
    script, preset, network, precision, small_mnist, monkeypatch, tmp_path, capsys
):
    """--preset swaps the model (and, for recipes, the settings) and nothing else."""
    import autoenc

    seen = {}
    real_fit = autoenc.fit

    def spy(model, data, **kwargs):
        seen["encoder"], seen["precision"] = type(model.encoder).__name__, kwargs.get("precision")
        return real_fit(model, data, **kwargs)

    monkeypatch.setattr(autoenc, "fit", spy)
    args = ["--preset", preset, "--epochs", "1", "--max-batches", "1", "--device", "cpu"]
    run(script, *args, monkeypatch=monkeypatch, folder=tmp_path)
    assert seen["encoder"] == network
    assert seen["precision"] in ((None, "fp32") if precision == "fp32" else (precision,))
    metrics = json.loads((tmp_path / RUNS[script] / "version_0" / "metrics.json").read_text())
    assert all(v == v for v in metrics["test"].values())  # trained and evaluated, no NaN


def test_out_removes_only_the_files_of_an_earlier_run(small_mnist, monkeypatch, tmp_path):
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    for name in ("recon_epoch009.png", "checkpoints/last.pt", "metrics.json", "notes.txt"):
        (out / name).write_text("old")
    run("mnist_ae.py", "--epochs", "1", "--max-batches", "2", "--out", str(out),
        monkeypatch=monkeypatch, folder=tmp_path)  # fmt: skip
    assert written(out) == {"recon_epoch001.png", "notes.txt"} | COMMON
    assert (out / "notes.txt").read_text() == "old"
    assert not (tmp_path / "runs").exists()

    new = tmp_path / "new" / "folder"  # created when missing
    run("mnist_ae.py", "--epochs", "1", "--max-batches", "1", "--out", str(new),
        monkeypatch=monkeypatch, folder=tmp_path)  # fmt: skip
    assert written(new) == {"recon_epoch001.png"} | COMMON


@pytest.mark.slow
def test_recipe_resume_continues_in_the_run_folder(small_mnist, monkeypatch, tmp_path):
    args = ("--max-batches", "2", "--device", "cpu")
    run("mnist_vae_recipe.py", "--epochs", "1", *args, monkeypatch=monkeypatch, folder=tmp_path)
    folder = tmp_path / "runs/vae_recipe/version_0"
    ckpt = folder / "checkpoints/last.pt"
    run("mnist_vae_recipe.py", "--epochs", "2", "--resume", str(ckpt), *args,
        monkeypatch=monkeypatch, folder=tmp_path)  # fmt: skip
    assert sorted(p.name for p in folder.parent.iterdir()) == ["version_0"]
    history = json.loads((folder / "metrics.json").read_text())["history"]
    assert len(history["train/loss"]) == 2
    assert {"recon_epoch001.png", "recon_epoch002.png"} <= written(folder)


def help_text(script: str, monkeypatch: pytest.MonkeyPatch, folder: Path, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        run(script, "--help", monkeypatch=monkeypatch, folder=folder)
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_describes_every_option_with_its_default(script, monkeypatch, tmp_path, capsys):
    text = help_text(script, monkeypatch, tmp_path, capsys)
    options = re.split(r"\n  (?=-)", text.split("options:")[1])[1:]
    names = {entry.split()[0].rstrip(",") for entry in options}
    assert {"--epochs", "--max-batches", "--data-root", "--out", "--device", "--every"} <= names
    for entry in options:
        if not entry.startswith("-h"):
            assert "default" in entry, entry
    if script == "mnist_vae.py":
        assert "--visdom" in names
    if script == "mnist_vae_recipe.py":
        assert {"--iw-samples", "--resume", "--preset", "--eval-precision"} <= names
        assert "(default: the preset's)" in re.sub(r"\s+", " ", text)


def test_the_readmes_run_real_examples_with_real_options(monkeypatch, tmp_path, capsys):
    root = EXAMPLES.parent
    texts = [(root / "README.md").read_text(), (EXAMPLES / "README.md").read_text()]
    texts += [(EXAMPLES / script).read_text() for script in SCRIPTS]
    commands = [c for t in texts for c in re.findall(r"python examples/(\w+\.py)([^`\n#]*)", t)]
    assert {script for script, _ in commands} == set(SCRIPTS)
    helps = {script: help_text(script, monkeypatch, tmp_path, capsys) for script in SCRIPTS}
    for script, flags in commands:
        for flag in re.findall(r"--[\w-]+", flags):
            assert f"  {flag} " in helps[script] or f"  {flag}\n" in helps[script], (script, flag)


def test_examples_readme_has_one_line_per_example():
    lines = (EXAMPLES / "README.md").read_text().splitlines()
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
    assert scripts == sorted(SCRIPTS + MODEL_EXAMPLES)
    for script in scripts:
        assert sum(line.startswith(f"| `{script}` |") for line in lines) == 1, script


def test_run_folder_takes_the_next_version_number(tmp_path):
    for name in ("version_0", "version_3", "version_x", "other"):
        (tmp_path / name).mkdir()
    assert _cli.run_folder(None, str(tmp_path)) == tmp_path / "version_4"
    assert (tmp_path / "version_4").is_dir()
    assert _cli.run_folder(None, str(tmp_path / "new")) == tmp_path / "new" / "version_0"


def _state(times: list[float]) -> State:
    return State(model=torch.nn.Linear(1, 1), optimizer=None, history={"time": times})


def test_slow_epoch_hint_speaks_once_and_names_threads_when_they_help(monkeypatch, capsys):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    hint = _cli.SlowEpochHint(factor=2.0)
    hint.on_epoch_end(_state([4.0, 7.0]))  # within the factor: nothing
    assert capsys.readouterr().out == ""
    hint.on_epoch_end(_state([4.0, 7.0, 9.0]))
    out = capsys.readouterr().out
    assert "epoch 1 took 9 s, 2.2x the fastest" in out and "--threads 1" in out
    hint.on_epoch_end(_state([4.0, 7.0, 9.0, 20.0]))
    assert capsys.readouterr().out == ""

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # already one thread: no advice
    _cli.SlowEpochHint().on_epoch_end(_state([4.0, 9.0]))
    out = capsys.readouterr().out
    assert "2.2x" in out and "--threads" not in out


def test_label_rows_writes_a_label_beside_every_row(tmp_path):
    path = tmp_path / "grid.png"
    Image.new("RGB", (2 + 2 * 30, 2 + 3 * 30), "black").save(path)
    _cli.label_rows(path, ["input", "mean"])
    image = Image.open(path).convert("L")
    labelled = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(92, -1)
    margin = labelled.shape[1] - 62
    assert margin > 0 and (labelled[:, margin:] == 0).all()  # the grid itself is unchanged
    for row in range(3):
        band = labelled[2 + row * 30 : 2 + row * 30 + 28, :margin]
        assert (band < 128).any()  # dark text on white
