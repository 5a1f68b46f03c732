"""`quant8-dynamic`: int8 weights, activations quantized at run time (for transformer MatMul/Gemm).

Each MatMul (or Gemm) with a constant 2-D float weight becomes

    a_q, a_s, a_zp = DynamicQuantizeLinear(A)           # u8, per tensor, range taken per call
    acc = MatMulInteger(a_q, W_q, a_zp, 0)               # int32; W_q int8 symmetric per column
    Y   = Cast(acc, float) * (a_s * w_s)                 # (+ bias for Gemm)

the form ONNX Runtime's `quantize_dynamic` emits and fuses into DynamicQuantizeMatMul at session
creation. No calibration is needed (the activation range is measured per call), which is why it is
the usual choice for transformers whose activation ranges vary a lot between inputs. The
DynamicQuantizeLinear of an activation read by several MatMuls (Q, K and V projections) is shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lepton_ir import DType, Model, Shape, TensorType, Value

from ..base import Pass, register_pass
from ..util import constant_value, infer_types_changed, replace_value
from . import qmath


@register_pass
@dataclass(frozen=True)
class Quant8Dynamic(Pass):
    """int8 weights per channel, activations quantized at run time (DynamicQuantizeLinear + MatMulInteger)."""

    name = "quant8-dynamic"

    per_channel: bool = field(default=True, metadata={"help": "per-output-column weight scales"})
    target: Literal["x86", "x86-vnni", "arm"] = field(default="x86", metadata={"help": "see quant8"})
    reduce_range: bool | None = field(default=None, metadata={"help": "7-bit weights; none: on for target=x86"})
    ops: tuple[str, ...] = field(default=("MatMul", "Gemm"), metadata={"help": "op types to quantize"})
    exclude_nodes: tuple[str, ...] = field(default=(), metadata={"help": "node names left in float"})
    tolerance_k: float = field(default=4.0, metadata={"help": "k of the derived tolerance"})

    @property
    def weight_qmax(self) -> int:
        reduce = self.reduce_range if self.reduce_range is not None else self.target == "x86"
        return 63 if reduce else 127

    def tolerance(self, model: Model) -> tuple[float, float]:
        """Relative: each quantized MatMul adds a relative error of about half a weight step
        (1 / (2 qmax_w)) plus half an activation step (1 / (2 * 255)); n of them in series add up as
        sqrt(n). rtol = atol = k * sqrt(n) * (1/(2 qmax_w) + 1/510) (atol for outputs near 0)."""
        n = sum(1 for x in model.graph if x.op_type == "MatMulInteger")
        if n == 0:
            return (self.rtol, self.atol)
        r = self.tolerance_k * math.sqrt(n) * (1.0 / (2 * self.weight_qmax) + 1.0 / 510.0)
        return (r, r)

    def run(self, model: Model) -> bool:
        from ..util import unfuse

        unfused = unfuse(model)  # after `fuse`: quantize standard ops (see util.unfuse)
        g = model.graph
        # Refined types (and a raised opset) change the model even when nothing is quantized.
        refined = infer_types_changed(model)
        if (model.opset("") or 13) < 13:
            refined |= bool(self.per_channel)
            model.opset_imports[""] = 13 if self.per_channel else model.opset("")
        shared: dict[int, tuple[Value, Value, Value]] = {}
        changed = False
        for n in list(g):
            if n.op_type not in self.ops or n.domain not in ("", "ai.onnx") or (n.name and n.name in self.exclude_nodes):
                continue
            a, w_val = n.inputs[0], n.inputs[1]
            w = constant_value(w_val)
            if a is None or a.dtype != DType.FLOAT or w is None or w.dtype != np.float32 or w.ndim != 2:
                continue
            bias = None
            alpha = 1.0
            if n.op_type == "Gemm":
                if n.attr("transA", 0):
                    continue
                if n.attr("transB", 0):
                    w = w.T
                alpha = float(n.attr("alpha", 1.0))
                if len(n.inputs) > 2 and n.inputs[2] is not None:
                    bias = constant_value(n.inputs[2])
                    if bias is None:
                        continue
                    bias = (bias * float(n.attr("beta", 1.0))).astype(np.float32)
            qw, p = qmath.quantize_weight(w, 1 if self.per_channel else None, self.weight_qmax)
            base = (w_val.name or "W").replace("/", "_")
            with g.inserting_before(n):
                if id(a) not in shared:
                    aq, as_, azp = g.op("DynamicQuantizeLinear", a, num_outputs=3, name=f"{base}_DynamicQuantizeLinear")
                    aq.type = TensorType(DType.UINT8, a.shape)
                    as_.type = TensorType(DType.FLOAT, Shape(()))
                    azp.type = TensorType(DType.UINT8, Shape(()))
                    shared[id(a)] = (aq, as_, azp)
                aq, as_, azp = shared[id(a)]
                wq = g.constant(qw, name=f"{base}_quantized")
                wzp = g.constant(np.zeros(qw.shape[1] if p.scale.ndim else (), np.int8), name=f"{base}_zero_point")
                acc = g.op("MatMulInteger", aq, wq, azp, wzp, name=f"{base}_MatMulInteger")
                accf = g.op("Cast", acc, to=int(DType.FLOAT))
                ws = g.constant((p.scale * np.float32(alpha)).astype(np.float32), name=f"{base}_scale")
                scale = g.op("Mul", as_, ws)
                y = g.op("Mul", accf, scale)
                if bias is not None:
                    y = g.op("Add", y, g.constant(bias, name=f"{base}_bias"))
            y.type = n.outputs[0].type
            replace_value(n.outputs[0], y)
            g.remove(n)
            changed = True
        if changed:
            for name, v in list(g.initializers.items()):
                if not v.num_uses() and not v.is_graph_output() and v not in g.inputs:
                    g.remove_initializer(name)
            model.metadata_props["lepton.quant8-dynamic"] = f"per_channel={self.per_channel};qmax={self.weight_qmax}"
        return changed or unfused or refined
