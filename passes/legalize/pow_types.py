"""`legalize-pow-types`: Pow with an integer base or mixed base/exponent types, for TVM.

ONNX Pow(X: T, Y: T1) -> T allows any numeric T1 and integer T; TVM's power needs both operands
of one float type. A float base takes the exponent cast to its type (exact for the integer
exponents ONNX models use). An integer base is computed in float64 and cast back, which truncates
like ORT's static_cast and is exact while results stay below 2**53.
"""

from __future__ import annotations

from dataclasses import dataclass

from lepton_ir import DType, Model, Node, TensorType

from ..base import Pass, register_pass
from ..util import replace_value

_FLOATS = {DType.FLOAT, DType.DOUBLE, DType.FLOAT16, DType.BFLOAT16}


def _needs(n: Node) -> bool:
    if n.op_type != "Pow" or n.domain not in ("", "ai.onnx") or len(n.inputs) != 2:
        return False
    x, y = n.inputs
    if x is None or y is None or x.dtype is None or y.dtype is None:
        return False
    return x.dtype not in _FLOATS or x.dtype != y.dtype


@register_pass
@dataclass(frozen=True)
class LegalizePowTypes(Pass):
    """Pow(int base) in float64, Pow(float base, other-typed exponent) with the exponent cast."""

    name = "legalize-pow-types"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if not _needs(n):
                    continue
                x, y = n.inputs
                with g.inserting_before(n):
                    if x.dtype in _FLOATS:
                        exp = g.op("Cast", y, to=int(x.dtype))
                        exp.type = TensorType(x.dtype, y.shape)  # typed: a rerun sees matching types
                        out = g.op("Pow", x, exp)
                    else:
                        wide = g.op("Pow", g.op("Cast", x, to=int(DType.DOUBLE)), g.op("Cast", y, to=int(DType.DOUBLE)))
                        out = g.op("Cast", wide, to=int(x.dtype))
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
