"""pytest setup for the quantization tests."""

import os

import numpy as np
import pytest

import lepton_passes.quant  # noqa: F401  registers the quantization passes

os.environ.setdefault("LEPTON_NO_PROGRESS", "1")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
