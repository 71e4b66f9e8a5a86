"""The README's quickstart runs as written (on the shipped MNIST sample, for one short epoch)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import autoenc.data

README = Path(__file__).resolve().parents[1] / "README.md"


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


@pytest.mark.parametrize("needle", ["examples/mnist_vae.py", "python -m pytest"])
def test_readme_names_the_two_commands(needle):
    assert needle in README.read_text(encoding="utf-8")
