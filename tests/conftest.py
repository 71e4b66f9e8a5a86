"""Shared fixtures for the whole test suite. Keep this file small."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same torch RNG state, so failures reproduce."""
    torch.manual_seed(0)


@pytest.fixture
def images() -> torch.Tensor:
    """A small batch of image-shaped data in [0, 1], shape (6, 1, 4, 4)."""
    return torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(1))
