"""Lepton: a compiler-style graph optimizer for ONNX models.

`lepton.optimize(model, passes="...", backend="onnx", output="out/")` runs a pass pipeline over a
copy of the model and compiles it; `lepton.load("out/")` opens the artifact for running. The
command-line tools are `lepton-opt` and `lepton-run` (lepton.cli).
"""

from .driver import OptimizeResult, optimize
from .runtime import OrtRunner, load

__all__ = ["optimize", "OptimizeResult", "load", "OrtRunner"]
