"""Lepton: a compiler-style graph optimizer for ONNX models.

`lepton.optimize(model, passes="...", backend="onnx", output="out/")` runs a pass pipeline over a
copy of the model and compiles it; `lepton.load("out/")` opens the artifact for running. The
command-line tools are `lepton-opt` and `lepton-run` (lepton.cli).
"""

import importlib as _importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import OptimizeResult, optimize
    from .runtime import OrtRunner, load

__all__ = ["optimize", "OptimizeResult", "load", "OrtRunner"]

# Imported on first use (PEP 562): `import lepton.cli` stays cheap, so the command-line tools take
# Ctrl-C as theirs (exit 130) from their first instant instead of dying in an import.
_EXPORTS = {"optimize": "driver", "OptimizeResult": "driver", "load": "runtime", "OrtRunner": "runtime"}


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is not None:
        return getattr(_importlib.import_module(f".{mod}", __name__), name)
    try:
        return _importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
