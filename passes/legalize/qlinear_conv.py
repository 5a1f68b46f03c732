"""`legalize-qlinear-conv`: QLinearConv as ConvInteger + requantization, for TVM.

TVM 0.27's importer has no QLinearConv, and its ConvInteger needs constant zero points. As ONNX
Runtime computes it: acc = sum((x - x_zp) * (w - w_zp)) (+ the int32 bias B), accumulated here in
float64 (exact: all values are integers below 2**53), then
y = saturate(round_half_even(acc * (x_scale * w_scale / y_scale)) + y_zp) with the multiplier in
float32, per output channel when w_scale is 1-D (reshaped to [1, M, 1, ...] to broadcast). The
requantization is QuantizeLinear with scale 1. Needs the input rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import DType, Model

from ..base import Pass, register_pass
from ..util import replace_value

_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


@register_pass
@dataclass(frozen=True)
class LegalizeQLinearConv(Pass):
    """QLinearConv -> float64 Conv of zero-point-shifted operands (+ bias), Mul by the scales, QuantizeLinear."""

    name = "legalize-qlinear-conv"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type != "QLinearConv" or n.domain not in ("", "ai.onnx") or len(n.inputs) < 8:
                    continue
                x, sx, zx, w, sw, zw, sy, zy = n.inputs[:8]
                bias = n.inputs[8] if len(n.inputs) > 8 else None
                if any(v is None for v in (x, sx, w, sw, sy)) or x.shape is None:
                    continue
                rank = len(x.shape.dims)
                chan = [1, -1] + [1] * (rank - 2)  # [M] -> [1, M, 1, ...]
                f32 = int(DType.FLOAT)
                c = lambda a: g.constant(np.asarray(a), name="qlinearconv_const")  # noqa: E731
                i32, f64 = int(DType.INT32), int(DType.DOUBLE)
                wchan = [-1] + [1] * (rank - 1)  # w_zero_point [M] -> [M, 1, 1, ...]
                with g.inserting_before(n):
                    # Integer accumulation done in float64 on zero-point-shifted operands: every
                    # product and partial sum is an integer below 2**53, so the result is exact.
                    xi = g.op("Cast", x, to=i32)
                    if zx is not None:
                        xi = g.op("Sub", xi, g.op("Cast", zx, to=i32))
                    wi = g.op("Cast", w, to=i32)
                    if zw is not None:
                        wi = g.op("Sub", wi, g.op("Reshape", g.op("Cast", zw, to=i32), c(np.array(wchan, np.int64))))
                    acc = g.op("Conv", g.op("Cast", xi, to=f64), g.op("Cast", wi, to=f64),
                               **{k: v for k, v in n.attrs.items() if k in _CONV_ATTRS})
                    if bias is not None:
                        acc = g.op("Add", acc, g.op("Reshape", g.op("Cast", bias, to=f64), c(np.array(chan, np.int64))))
                    ws = g.op("Reshape", g.op("Cast", sw, to=f32), c(np.array(chan, np.int64)))
                    scale = g.op("Div", g.op("Mul", g.op("Cast", sx, to=f32), ws), g.op("Cast", sy, to=f32))
                    real = g.op("Mul", g.op("Cast", acc, to=f32), scale)
                    out = g.op("QuantizeLinear", real, c(np.float32(1.0)), zy)
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
