"""The ``tvm-arm`` backend: ``tvm-cpu`` cross-compiling for aarch64 boards (default cortex-a72).

``--backend tvm-arm --target cortex-a72`` is the same compile as ``--backend tvm-cpu --target
cortex-a72``: LLVM for ``aarch64-linux-gnu``, linked with ``aarch64-linux-gnu-gcc``. The separate
name exists because it is what users type, and it makes ``--target`` optional (cortex-a72) and
refuses non-ARM targets. The stage's manifest entry says ``backend: tvm-arm``, ``device: remote``
and the aarch64 target: ``lepton-run ARTIFACT --rpc HOST:PORT`` runs it on a board or on the
emulated device (``lepton-device emulate``).

Registered by ``lepton_backends.base._BUILTIN_MODULES`` ("lepton_backends.tvm.arm").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lepton_backends.base import BackendError, register_backend

from .backend import TvmCpuBackend, target_dict_for

DEFAULT_TARGET = "cortex-a72"


@register_backend
class TvmArmBackend(TvmCpuBackend):
    """TVM shared library cross-compiled for aarch64 (default --target cortex-a72); run with lepton-run --rpc."""

    name = "tvm-arm"
    default_target = DEFAULT_TARGET

    def build(self, model, staging: Path, *, target: str | None, options: Any) -> dict[str, Any]:
        spec = target or self.default_target
        d = target_dict_for("tvm-arm", spec)
        triple = str(d.get("mtriple") or "")
        if d.get("kind") != "llvm" or not triple.startswith("aarch64"):
            raise BackendError(f"tvm-arm: target {spec!r} is not an aarch64 target; use one of cortex-a53, "
                               "cortex-a55, cortex-a72, cortex-a76, neoverse-n1, neoverse-v1 (or tvm-cpu / tvm-cuda)")
        return super().build(model, staging, target=spec, options=options)
