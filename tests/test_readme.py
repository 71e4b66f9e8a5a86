"""The README's quickstart runs as written (on the shipped MNIST sample, for one short epoch)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import autoenc.data

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_one_quickstart_block():
    assert len(_python_blocks()) == 1


def test_quickstart_runs(monkeypatch):
    (code,) = _python_blocks()
    # The snippet trains 10 epochs on full MNIST; here the same lines run on 256 sample images
    # for one epoch, which is what can change without the snippet's API use changing.
    assert "epochs=10" in code
    code = code.replace("epochs=10", "epochs=1")

    def small_mnist(root=None, *, train=True, download=True):
        images, labels = autoenc.data.mnist_sample(train=train)
        return autoenc.data.MNISTData(images[:256], labels[:256])

    monkeypatch.setattr(autoenc.data, "mnist", small_mnist)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    result, samples = namespace["result"], namespace["samples"]
    assert len(result.history["val/loss"]) == 1
    assert torch.isfinite(torch.tensor(result.history["val/loss"])).all()
    assert samples.shape == (64, 1, 28, 28)
    assert samples.min() >= 0 and samples.max() <= 1


def _run_it_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Run it", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_runs_the_vae_example_then_the_tests():
    run_example, run_tests = _run_it_commands()  # exactly two commands
    assert run_example.endswith("python examples/mnist_vae.py")
    assert (ROOT / "examples" / "mnist_vae.py").is_file()
    assert run_tests.endswith("python -m pytest")
    # CI runs the README's test command as written, so it cannot go stale.
    assert run_tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


def test_readme_pictures_exist():
    sources = re.findall(r'<img src="([^"]+)"', README.read_text(encoding="utf-8"))
    assert sources
    for source in sources:
        assert (ROOT / source).is_file(), source


def test_every_example_named_in_the_readmes_exists():
    for readme in (README, ROOT / "examples" / "README.md"):
        for name in re.findall(r"examples/(\w+\.py)", readme.read_text(encoding="utf-8")):
            assert (ROOT / "examples" / name).is_file(), f"{readme.name} names examples/{name}"
