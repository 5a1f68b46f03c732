"""`legalize-qlinear-matmul`: QLinearMatMul as MatMulInteger + requantization, for TVM.

TVM 0.27's importer has no QLinearMatMul but lowers MatMulInteger natively (int32 accumulation).
The op is, as ONNX Runtime computes it: acc = sum((a - a_zp) * (b - b_zp)) in int32, then
y = saturate(round_half_even(acc * (a_scale * b_scale / y_scale)) + y_zp), the multiplier in
float32 (float16 scales are widened first). The requantization is QuantizeLinear with scale 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import DType, Model

from ..base import Pass, register_pass
from ..util import replace_value


@register_pass
@dataclass(frozen=True)
class LegalizeQLinearMatMul(Pass):
    """QLinearMatMul -> MatMulInteger, Cast, Mul by a_scale*b_scale/y_scale, QuantizeLinear."""

    name = "legalize-qlinear-matmul"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type != "QLinearMatMul" or n.domain not in ("", "ai.onnx") or len(n.inputs) != 8:
                    continue
                a, sa, za, b, sb, zb, sy, zy = n.inputs
                if any(v is None for v in n.inputs):
                    continue
                f32 = int(DType.FLOAT)
                with g.inserting_before(n):
                    acc = g.op("MatMulInteger", a, b, za, zb)
                    scale = g.op("Div", g.op("Mul", g.op("Cast", sa, to=f32), g.op("Cast", sb, to=f32)),
                                 g.op("Cast", sy, to=f32))
                    real = g.op("Mul", g.op("Cast", acc, to=f32), scale)
                    one = g.constant(np.array(1.0, np.float32), name="qlinear_one")
                    out = g.op("QuantizeLinear", real, one, zy)
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
