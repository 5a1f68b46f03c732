"""`legalize-reduce-bool`: ReduceMax/ReduceMin of bool tensors through uint8, for TVM.

ONNX (opset 20) allows bool for ReduceMax/ReduceMin (any/all); TVM 0.27 has no min/max value for
bool. Cast to uint8 (False=0, True=1), reduce, cast back: max is "any", min is "all", exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from lepton_ir import DType, Model

from ..base import Pass, register_pass
from ..util import replace_value


@register_pass
@dataclass(frozen=True)
class LegalizeReduceBool(Pass):
    """ReduceMax/ReduceMin(bool x) -> Cast(Reduce(Cast(x, uint8)), bool)."""

    name = "legalize-reduce-bool"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if (n.op_type not in ("ReduceMax", "ReduceMin") or n.domain not in ("", "ai.onnx")
                        or n.inputs[0] is None or n.inputs[0].dtype != DType.BOOL):
                    continue
                with g.inserting_before(n):
                    x8 = g.op("Cast", n.inputs[0], to=int(DType.UINT8))
                    red = g.op(n.op_type, x8, *n.inputs[1:], **dict(n.attrs))
                    out = g.op("Cast", red, to=int(DType.BOOL))
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
