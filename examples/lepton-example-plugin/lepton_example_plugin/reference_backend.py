"""An example Lepton backend: the model in Lepton's text form, run by ONNX's reference evaluator.

One class and one entry point (`lepton.backends` in pyproject.toml) are all a backend needs:
`lepton-opt --backend example-reference -o out/` compiles with it, `lepton-opt --list-backends`
shows its typed options, and `lepton.load("out/")` / `lepton-run out/` run the artifact through
its `load()`. Useful in practice as a slow, independent second opinion on a pipeline's output.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

import lepton_ir
from lepton_backends import Backend
from lepton_backends.onnx_backend import model_signature


@dataclasses.dataclass(frozen=True)
class ReferenceOptions:
    """Options of the example-reference backend."""

    form: Literal["text", "onnx"] = dataclasses.field(default="text", metadata={
        "help": "store the model as Lepton's text form (model.lep) or as ONNX (model.onnx)"})
    note: str = dataclasses.field(default="", metadata={"help": "free text recorded in the manifest"})


class ReferenceRunner:
    """Runs a stage with `lepton_ir.evaluate` (onnx.reference)."""

    def __init__(self, model: lepton_ir.Model) -> None:
        self.model = model
        self.input_names = [v.name for v in model.graph.inputs if v.const is None]
        self.output_names = [v.name for v in model.graph.outputs]

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return lepton_ir.evaluate(self.model, {k: np.asarray(v) for k, v in inputs.items()})


class ReferenceBackend(Backend):
    """The model as text (or ONNX), run by ONNX's reference evaluator (slow; an independent check)."""

    name = "example-reference"
    default_pipeline = "canonicalize"
    Options = ReferenceOptions

    def lowering_pipeline(self, target: str | None, options: ReferenceOptions) -> str:
        # The reference evaluator knows standard ONNX only: lower Lepton's fused ops first.
        return "lower-fused-to-standard"

    def build(self, model: lepton_ir.Model, staging: Path, *, target: str | None,
              options: ReferenceOptions) -> dict[str, Any]:
        if options.form == "text":
            entry = "model.lep"
            (staging / entry).write_text(lepton_ir.to_text(model, max_inline_elements=None))
        else:
            entry = "model.onnx"
            lepton_ir.save(model, staging / entry)
        inputs, outputs = model_signature(model)
        return {"entry": entry, "inputs": inputs, "outputs": outputs, "extra": {"note": options.note}}

    def load(self, folder: Path, stage: dict[str, Any]) -> ReferenceRunner:
        path = folder / stage["entry"]
        model = lepton_ir.from_text(path.read_text()) if path.suffix == ".lep" else lepton_ir.load(path)
        return ReferenceRunner(model)
