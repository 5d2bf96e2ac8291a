"""Shared fixtures. gradaudit sets x64 itself inside every check; tests that build
float64 inputs outside a check use numpy, which needs no flag."""

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261203)
