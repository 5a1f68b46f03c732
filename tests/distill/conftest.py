"""Shared fixtures of the distill tests: torch (skipped with the reason when it is absent outside
CI; under CI a missing torch fails, since .ci/run installs the `train` extra), the digits data and
a perturbed digits CNN."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

import lepton_ir
from lepton_ir.testing import corpus


from distill_helpers import perturb


@pytest.fixture(scope="session")
def torch():
    try:
        import torch
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and torch is missing ({e}); .ci/run installs it with `pip install -e .[test,train]`")
        pytest.skip("torch is not installed (pip install lepton[train]); CI installs it and runs these tests")
    return torch


@pytest.fixture(scope="session")
def digits_files(tmp_path_factory):
    """(teacher .onnx, perturbed student .onnx, train .npz with labels, train .npz without)."""
    d = tmp_path_factory.mktemp("distill-digits")
    X, y = corpus.digits_dataset("train")
    np.savez(d / "train.npz", image=X, labels=y)
    np.savez(d / "train_nolabels.npz", image=X)
    m = lepton_ir.load(corpus.digits_model_path())
    perturb(m)
    lepton_ir.save(m, d / "perturbed.onnx")
    return corpus.digits_model_path(), d / "perturbed.onnx", d / "train.npz", d / "train_nolabels.npz"


@pytest.fixture(autouse=True)
def _progress_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read distill's progress lines: other tests in the same worker process (and
    `lepton-opt --quiet` run in-process) set LEPTON_NO_PROGRESS, which silences them."""
    monkeypatch.delenv("LEPTON_NO_PROGRESS", raising=False)
