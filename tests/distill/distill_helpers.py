"""Helpers of the distill tests (a unique module name: test folders are not packages)."""

from __future__ import annotations

import pathlib

import numpy as np

import lepton_ir
from lepton_ir.testing import corpus


def require_fetched(name: str) -> pathlib.Path:
    """The cached real model's path; skip (or fail under CI) when it has not been fetched."""
    return corpus.require_real_model(name)


def digits_accuracy(model: lepton_ir.Model, X: np.ndarray, y: np.ndarray) -> float:
    from lepton_ir.reference import run_ort

    logits = run_ort(lepton_ir.to_onnx(model), {"image": X})[0]
    return float((logits.argmax(1) == y).mean())


#: Noise added to conv2's weight (in units of its standard deviation) by `perturb`: the digits
#: CNN drops from 99.2% to 48.9% test accuracy.
NOISE = 2.0


def perturb(model: lepton_ir.Model, noise: float = NOISE, seed: int = 0) -> None:
    """Add Gaussian noise to the second Conv's weight (a stand-in for a lossy pass)."""
    conv = [n for n in model.graph if n.op_type == "Conv"][1]
    w = conv.inputs[1]
    W = w.const.numpy()
    rng = np.random.default_rng(seed)
    lepton_ir.replace_constants(model, {w: (W + noise * W.std() * rng.standard_normal(W.shape)).astype(W.dtype)})
