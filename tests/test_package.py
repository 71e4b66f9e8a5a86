"""The public surface of ``autoenc``: exports, version, typing marker, import weight."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import autoenc


def test_all_names_exist_and_are_unique() -> None:
    assert len(autoenc.__all__) == len(set(autoenc.__all__))
    missing = [name for name in autoenc.__all__ if not hasattr(autoenc, name)]
    assert missing == []


def test_version_is_the_installed_distribution_version() -> None:
    """pyproject.toml reads the version from the package: the two cannot drift apart."""
    from importlib.metadata import version

    assert version("autoenc") == autoenc.__version__


def test_py_typed_ships() -> None:
    assert (Path(autoenc.__file__).parent / "py.typed").is_file()


@pytest.mark.slow  # starts a fresh interpreter (~2 s)
def test_import_is_light() -> None:
    code = (
        "import sys, autoenc\n"
        "heavy = ('visdom', 'tensorboard', 'matplotlib')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == ""
