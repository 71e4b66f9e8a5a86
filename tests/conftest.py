"""Shared fixtures for the whole test suite. Keep this file small."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# benchmarks/article.py is the one written-out copy of the article's networks and loop; the
# tests that compare against the article import it from there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same torch RNG state, so failures reproduce."""
    torch.manual_seed(0)


@pytest.fixture
def images() -> torch.Tensor:
    """A small batch of image-shaped data in [0, 1], shape (6, 1, 4, 4)."""
    return torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
