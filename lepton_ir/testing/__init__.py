"""Testing support, public for plugin authors: hypothesis strategies for random valid models and
the corpus of real models and conformance cases.

    from lepton_ir.testing import models, onnx_models, pattern_models, inputs_for

`onnx_models(...)` yields onnx.ModelProto; `models(...)` the same models imported into the IR.
The property check of passes, `check_pass`, lives in `lepton_passes.testing` (it runs passes, and
lepton_ir must not depend on lepton_passes).
"""

from __future__ import annotations

from typing import Any


def models(**kwargs: Any):
    """Strategy for random valid models as `lepton_ir.Model` (same options as `onnx_models`)."""
    from .. import load
    from .strategies import onnx_models

    return onnx_models(**kwargs).map(load)


def __getattr__(name: str) -> Any:
    # Strategies pull in hypothesis; load them only when asked for, so importing lepton_ir.testing
    # (e.g. for the corpus) does not require the test extras. importlib, not `from . import`:
    # the latter looks the submodule up as an attribute first, which would recurse into here.
    import importlib

    if name in ("corpus", "strategies", "magika_data"):
        return importlib.import_module(f"{__name__}.{name}")
    strategies = importlib.import_module(f"{__name__}.strategies")
    if name in strategies.__all__:
        return getattr(strategies, name)
    raise AttributeError(f"module 'lepton_ir.testing' has no attribute {name!r}")
