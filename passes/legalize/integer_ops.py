"""`legalize-integer-ops`: ConvInteger and MatMulInteger in ops every backend has, bit-exactly.

- MatMulInteger(a, b, a_zp, b_zp) -> MatMul over int32 of (a - a_zp) and (b - b_zp): ONNX MatMul
  is defined for int32, and int32 accumulation is what the op specifies.
- ConvInteger(x, w, x_zp, w_zp) -> two float32 Convs over (x - x_zp) and the high and low parts of
  (w - w_zp), combined in int32: exact (see `_conv_integer`). ONNX Conv has no integer form.
The TVM backends replace these with real int8 kernels where the target has them (quant8 issue);
this is the portable fallback that keeps any model with these ops runnable and exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import DType, Model, Node, TensorType, Value

from ..base import Pass, register_pass
from ..rewrite import TableRule, apply_rules


def _typed(v: Value, dtype: DType, like: Value | None) -> Value:
    shape = like.shape if like is not None and like.shape is not None else None
    v.type = TensorType(dtype, shape)
    return v


def _centered(g, x: Value, zp: Value | None, to: DType, per_channel_axis0: bool = False) -> Value:
    """Cast(x) - Cast(zp); a per-output-channel weight zero point is reshaped to broadcast."""
    xc = _typed(g.op("Cast", x, to=int(to)), to, x)
    if zp is None:
        return xc
    zc = g.op("Cast", zp, to=int(to))
    if per_channel_axis0 and zp.shape is not None and len(zp.shape) == 1 and x.shape is not None:
        tail = [1] * (len(x.shape) - 1)
        zc = g.op("Reshape", zc, g.constant(np.array([-1, *tail], dtype=np.int64), name="zp_shape"))
    return _typed(g.op("Sub", xc, zc), to, x)


def _matmul_integer(n: Node) -> Value:
    g = n.graph
    a, b = n.inputs[0], n.inputs[1]
    azp = n.inputs[2] if len(n.inputs) > 2 else None
    bzp = n.inputs[3] if len(n.inputs) > 3 else None
    return g.op("MatMul", _centered(g, a, azp, DType.INT32), _centered(g, b, bzp, DType.INT32))


def _conv_k(n: Node) -> int | None:
    """Products summed per output element: (input channels / group) * kernel size."""
    w = n.inputs[1]
    if w.shape is None or not w.shape.is_static or len(w.shape) < 3:
        return None
    return int(np.prod(w.shape.dims[1:]))


def _conv_integer_ok(n: Node) -> bool | str:
    k = _conv_k(n)
    if k is None:
        return "weight shape unknown"
    if k * 255 * 16 >= 2 ** 24:
        return f"{k} products per output exceed what two exact float32 convolutions can sum"
    return True


def _conv_integer(n: Node) -> Value:
    """y = 16 * conv(x, w_hi) + conv(x, w_lo) with w = 16 * w_hi + w_lo, w_lo in [0, 15].

    Centered 8-bit operands are at most 255 in magnitude, so each float32 convolution sums integer
    products of at most 255 * 16 and stays below 2^24 (checked by the predicate): every partial sum
    is an exactly representable integer, whatever the summation order. The two halves are combined
    in int32. Float64 would be simpler but ONNX Runtime has no float64 Conv kernel.
    """
    g = n.graph
    x, w = n.inputs[0], n.inputs[1]
    xzp = n.inputs[2] if len(n.inputs) > 2 else None
    wzp = n.inputs[3] if len(n.inputs) > 3 else None
    attrs = {k: a for k, a in n.attrs.items()}
    xc = _centered(g, x, xzp, DType.FLOAT)
    wc = _centered(g, w, wzp, DType.FLOAT, per_channel_axis0=True)
    sixteen = g.constant(np.float32(16.0), name="sixteen")
    w_hi = g.op("Floor", g.op("Div", wc, sixteen))
    w_lo = g.op("Sub", wc, g.op("Mul", w_hi, sixteen))
    hi = g.op("Cast", g.op("Conv", xc, w_hi, **attrs), to=int(DType.INT32))
    lo = g.op("Cast", g.op("Conv", xc, w_lo, **attrs), to=int(DType.INT32))
    return g.op("Add", g.op("Mul", hi, g.constant(np.int32(16), name="sixteen_i")), lo)


RULES = [
    TableRule("MatMulInteger", lambda n: True, _matmul_integer, name="matmul-integer"),
    TableRule("ConvInteger", _conv_integer_ok, _conv_integer, name="conv-integer"),
]


@register_pass
@dataclass(frozen=True)
class LegalizeIntegerOps(Pass):
    """Rewrite ConvInteger/MatMulInteger into float32 Convs / int32 MatMul that give the same integers."""

    name = "legalize-integer-ops"
    idempotent = True

    def run(self, model: Model) -> bool:
        return apply_rules(model, RULES).changed
