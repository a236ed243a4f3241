"""Shared fixtures for the engine tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest


def require_torch() -> ModuleType:
    """torch, or a skip when it is missing — except under CI, where missing torch is an error."""
    if os.environ.get("CI"):
        import torch

        return torch
    return pytest.importorskip("torch")


@pytest.fixture
def torch() -> ModuleType:
    mod = require_torch()
    mod.set_num_threads(1)
    return mod


def _rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / max |e| (an array-level relative error, robust to zero entries)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    return float(np.max(np.abs(actual - expected), initial=0.0)) / scale


@pytest.fixture
def rel_err() -> Callable[[np.ndarray, np.ndarray], float]:
    return _rel_err
