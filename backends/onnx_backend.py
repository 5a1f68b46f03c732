"""The `onnx` backend: the optimized model as an ONNX file for ONNX Runtime.

Stage files::

    model.onnx        the optimized model (lepton_ir.save; `model.onnx.data` beside it if the
                      weights need external data); Lepton's fused `ai.lepton` ops are lowered to
                      standard ONNX or ONNX Runtime contrib ops first (`lowering_pipeline`)

The manifest (artifact.py) records inputs/outputs, the pipeline, versions and every file's sha256.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import lepton_ir
from lepton_ir import LeptonError, Model, ModelLoadError

from .base import Backend, register_backend


def _has_numpy(dtype: lepton_ir.DType) -> bool:
    try:
        dtype.numpy()
        return True
    except ValueError:
        return False


def value_signature(v: lepton_ir.Value) -> dict[str, Any]:
    """{name, dtype, shape} of a graph input/output; symbolic dims are strings, unknown ones null."""
    dtype = v.dtype
    shape = v.shape
    return {
        "name": v.name,
        "dtype": dtype.numpy().name if dtype is not None and _has_numpy(dtype) else (dtype.name.lower() if dtype else None),
        "shape": list(shape.dims) if shape is not None else None,
    }


def model_signature(model: Model) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    g = model.graph
    inputs = [value_signature(v) for v in g.inputs if v.const is None and v.name not in g.initializers]
    return inputs, [value_signature(v) for v in g.outputs]


def _feed(v: Any) -> Any:
    """Tensors as arrays; sequences (lists) and absent optionals (None) as they are, ORT takes both."""
    return v if isinstance(v, list) or v is None else np.asarray(v)


class OrtRunner:
    """Runs an `onnx` stage with ONNX Runtime (CPU)."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        import onnxruntime as ort

        self.folder = folder
        self.manifest = manifest
        so = ort.SessionOptions()
        so.log_severity_level = 3
        entry = folder / manifest.get("entry", "model.onnx")
        try:
            self.session = ort.InferenceSession(str(entry), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # verified bytes ORT still refuses (e.g. a stage naming the wrong entry)
            raise ModelLoadError(f"{entry}: ONNX Runtime cannot load this stage: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for inputs by name (missing or unknown names are an error)."""
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise LeptonError(f"inputs do not match the model: missing {missing or 'none'}, unknown {extra or 'none'}; "
                              f"expected {self.input_names}")
        try:
            outs = self.session.run(None, {k: _feed(v) for k, v in inputs.items()})
        except Exception as e:  # ORT's messages for bad dtypes/shapes are user errors here
            raise LeptonError(f"ONNX Runtime failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        return dict(zip(self.output_names, outs))

    __call__ = run


@dataclasses.dataclass(frozen=True)
class OnnxOptions:
    """Options of the `onnx` backend."""

    external_data: bool = dataclasses.field(default=False, metadata={
        "help": "always write the weights to model.onnx.data (default: only above 2 GiB)"})


@register_backend
class OnnxBackend(Backend):
    """ONNX file for ONNX Runtime (model.onnx + manifest.json)."""

    name = "onnx"
    # ORT needs no lowering of standard ops; the default only cleans up (folding, no-ops, CSE, DCE).
    default_pipeline = "canonicalize"
    Options = OnnxOptions

    def lowering_pipeline(self, target: str | None, options: OnnxOptions) -> str:
        # Fused `ai.lepton` ops become standard ONNX or ONNX Runtime contrib ops; a no-op otherwise.
        return "lower-fused-to-onnx"

    def build(self, model: Model, staging: Path, *, target: str | None, options: OnnxOptions) -> dict[str, Any]:
        lepton_ir.save(model, staging / "model.onnx", external_data=True if options.external_data else None)
        inputs, outputs = model_signature(model)
        return {"entry": "model.onnx", "inputs": inputs, "outputs": outputs, "device": "host"}

    def loads_here(self, stage: Mapping[str, Any]) -> bool:
        return True  # ONNX Runtime here opens what ONNX Runtime on a device would (same model file)

    def load(self, folder: Path, stage: dict[str, Any]) -> OrtRunner:
        return OrtRunner(folder, stage)
