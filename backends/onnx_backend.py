"""The `onnx` backend: the optimized model as an ONNX file for ONNX Runtime, plus a manifest.

Artifact layout::

    model.onnx        the optimized model (lepton_ir.save; `model.onnx.data` beside it if the
                      weights need external data)
    manifest.json     format, backend, inputs/outputs (name, dtype, shape), pipeline, versions of
                      lepton/onnx/onnxruntime, sha256 of every file and of the source model
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lepton_ir
from lepton_ir import Model

from .base import MANIFEST, Backend, register_backend, sha256_file, write_json

#: Bumped when the manifest layout changes incompatibly.
MANIFEST_FORMAT_VERSION = 1


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def value_signature(v: lepton_ir.Value) -> dict[str, Any]:
    """{name, dtype, shape} of a graph input/output; symbolic dims are strings, unknown ones null."""
    dtype = v.dtype
    shape = v.shape
    return {
        "name": v.name,
        "dtype": dtype.numpy().name if dtype is not None and _has_numpy(dtype) else (dtype.name.lower() if dtype else None),
        "shape": list(shape.dims) if shape is not None else None,
    }


def _has_numpy(dtype: lepton_ir.DType) -> bool:
    try:
        dtype.numpy()
        return True
    except ValueError:
        return False


def model_signature(model: Model) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    g = model.graph
    inputs = [value_signature(v) for v in g.inputs if v.const is None and v.name not in g.initializers]
    return inputs, [value_signature(v) for v in g.outputs]


def _lower_fused(model: Model) -> Model:
    """Fused `ai.lepton` ops become standard ONNX or ONNX Runtime contrib ops (on a copy: the
    caller's model keeps its fused form)."""
    if not any(n.domain == "ai.lepton" for n in model.graph.all_nodes()):
        return model
    from lepton_ir.clone import clone_model
    from lepton_passes import get_pass

    work = clone_model(model)
    get_pass("lower-fused-to-onnx")().run(work)
    work.verify()
    return work


@register_backend
class OnnxBackend(Backend):
    """ONNX file for ONNX Runtime (model.onnx + manifest.json)."""

    name = "onnx"
    # ORT needs no lowering; the default only cleans up (folding, no-ops, CSE, DCE).
    default_pipeline = "canonicalize"
    option_help = {"external-data": "true: always write weights to model.onnx.data (default: only above 2 GiB)"}

    def build(self, model: Model, staging: Path, *, target: str | None, options: dict[str, Any],
              pipeline_text: str, source_sha256: str | None) -> None:
        ext = options.get("external-data")
        if isinstance(ext, str):
            ext = ext.lower() in ("1", "true", "yes")
        model = _lower_fused(model)
        lepton_ir.save(model, staging / "model.onnx", external_data=ext)
        inputs, outputs = model_signature(model)
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        write_json(staging / MANIFEST, {
            "format": "lepton-artifact",
            "format_version": MANIFEST_FORMAT_VERSION,
            "backend": self.name,
            "target": target,
            "entry": "model.onnx",
            "inputs": inputs,
            "outputs": outputs,
            "pipeline": pipeline_text,
            "options": options,
            "versions": {"lepton": _version("lepton"), "onnx": _version("onnx"),
                         "onnxruntime": _version("onnxruntime")},
            "source_sha256": source_sha256,
            "files": files,
        })
