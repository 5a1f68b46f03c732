"""`legalize-dynamic-quantize-lstm`: com.microsoft::DynamicQuantizeLSTM unrolled into standard ONNX ops
that repeat ONNX Runtime's arithmetic.

`onnxruntime.quantization.quantize_dynamic` turns an LSTM into this op. Its meaning is ONNX
Runtime's CPU kernel, not a spec; what follows is read from the ONNX Runtime sources
(microsoft/onnxruntime: contrib_ops/cpu/quantization/dynamic_quantize_lstm.cc,
core/providers/cpu/rnn/uni_directional_lstm.cc, rnn_helpers.cc `ComputeGemm(..., GemmWeights<uint8_t>)`,
core/util/qmath.h `GetQuantizationParameter`, MLAS `MlasQuantizeLinear` / QGEMM output processor;
and python/tools/quantization/operators/lstm.py for how the weights are produced):

- Inputs: X, W, R, B, sequence_lens, initial_h, initial_c, P as for LSTM (no `layout`), then
  W_scale, W_zero_point, R_scale, R_zero_point. W is int8 or uint8 of shape
  [num_directions, input_size, 4*hidden] and R [num_directions, hidden, 4*hidden]: the float LSTM
  weights *transposed* (the quantizer transposes after quantizing), gates in LSTM order i, o, f, c.
  Scales and zero points are [num_directions] (per tensor) or [num_directions, 4*hidden] (per
  output column). Only the *first* zero point of a direction is used (the kernel checks that int8
  zero points are all 0 and uint8 ones all equal); scales are used per column.
- Each product `A @ Wq` (A float) is done as MLAS's u8 x (u8|s8) GEMM on dynamically quantized A:
  `min = min(min(A), 0)`, `max = max(max(A), 0)`, `scale = max == min ? 1 : (max - min) / 255`,
  `zp = round_half_even(clamp(0 - min / scale, 0, 255))` (uint8),
  `A_q = clamp(round_half_even(A / scale) + zp, 0, 255)`; the int32 sum of
  `(A_q - zp) * (Wq - w_zp)` is converted to float and multiplied by `scale * w_scale[col]`
  (that product taken first, in float32).
- The input projection quantizes the whole X of a direction at once (all steps and batch rows: one
  scale); the recurrence quantizes the hidden state of each step (the initial state at step 0) and
  adds its product into the projection of that step. The bias (Wb + Rb), clip and activations then
  follow the float LSTM kernel, as `unroll-rnn` writes them.
- Caveat (CPU-dependent in ONNX Runtime itself): with int8 weights on x86 CPUs without VNNI
  (AVX2, AVX-512 without VNNI), MLAS's u8s8 kernel adds pairs of u8*s8 products (raw A, zero point
  not yet subtracted) in int16 with saturation (vpmaddubsw), so a pair beyond 32767 is clipped;
  measured here: one gate column of a toy model with full-range int8 weights differs by 1e-3.
  The rewrite computes the exact int32 sums, which ORT gives with VNNI, on ARM, with uint8
  weights, and on any CPU whenever |w| <= 64 (quantize_dynamic's reduce_range=True), where no
  pair can reach 32767. (ddddocr-old's full-range int8 LSTM weights hit no such pair on its
  realistic input: the error below.)
- Caveat: for batch > 4, or batch >= 2 with hidden <= 256, ONNX Runtime splits the batch over its
  intra-op threads and quantizes each chunk's hidden state separately, so its own result depends
  on the thread count. This rewrite quantizes the whole batch at once: ONNX Runtime with one
  thread, and with any thread count when the batch is 1 (as in ddddocr-old).

Each direction is unrolled with `unroll-rnn`'s cell equations (`rnn._unroll`), the two products
replaced by DynamicQuantizeLinear-like arithmetic (written out, because ONNX's
DynamicQuantizeLinear gives scale 0 where ONNX Runtime's kernel uses 1: the all-zero initial
state) and MatMulInteger, whose int32 sums are exact: TVM's importer lowers it natively, and
`legalize-integer-ops` rewrites it into an int32 MatMul for other backends, so run this pass
before that one (as `legalize` does). Left alone: the cases `unroll-rnn` refuses, and weights or
quantization parameters of unknown rank or type.

Measured (ddddocr-old's LSTM: bidirectional, hidden 512, 20 steps, int8 weights, on its real input;
tvm-cpu vs ONNX Runtime's kernel): max abs error 4e-6; the toy models of the tests agree to a few ulp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lepton_ir import DType, Model, Node, Value

from ..base import Pass, register_pass
from ..util import replace_value
from .rnn import FloatGemms, StepBuilder, _unroll, _why_not

OP, DOMAIN = "DynamicQuantizeLSTM", "com.microsoft"


def _quantize(b: StepBuilder, a: Value) -> tuple[Value, Value, Value]:
    """(A_q uint8, scale f32 scalar, zero point uint8 scalar) as ONNX Runtime's GetQuantizationParameter
    and MlasQuantizeLinear compute them for a GEMM's A matrix (see the module docstring)."""
    zero, one, top = b.c(np.float32(0.0)), b.c(np.float32(1.0)), b.c(np.float32(255.0))
    lo = b("Min", b("ReduceMin", a, keepdims=0), zero)
    hi = b("Max", b("ReduceMax", a, keepdims=0), zero)
    span = b("Sub", hi, lo)
    # max == min happens only when A is all zeros (both include 0): ORT then uses scale 1
    scale = b("Where", b("Equal", span, zero), one, b("Div", span, top))
    zp = b("Round", b("Max", b("Min", b("Neg", b("Div", lo, scale)), top), zero))
    q = b("Max", b("Min", b("Add", b("Round", b("Div", a, scale)), zp), top), zero)
    return b("Cast", q, to=int(DType.UINT8)), scale, b("Cast", zp, to=int(DType.UINT8))


class QuantizedGemms(FloatGemms):
    """The products of a DynamicQuantizeLSTM direction: dynamic uint8 A, MatMulInteger, rescale."""

    def __init__(self, w_scale: Value, w_zp: Value, r_scale: Value, r_zp: Value) -> None:
        self.w_scale, self.w_zp, self.r_scale, self.r_zp = w_scale, w_zp, r_scale, r_zp

    @staticmethod
    def _direction(b: StepBuilder, weights: Value, scale: Value, zp: Value, d: int
                   ) -> Callable[[Value], Value]:
        wd = b.take(weights, d)                         # [K, 4h], already transposed
        sd = b.take(scale, d)                           # [] or [4h]
        zd = b.take(zp, d)
        if zp.shape is not None and len(zp.shape) == 2:
            zd = b.take(zd, 0)                          # the kernel reads the first zero point only

        def product(a: Value) -> Value:
            aq, a_scale, a_zp = _quantize(b, a)
            acc = b("MatMulInteger", aq, wd, a_zp, zd)  # int32 sums, exact
            mult = b("Mul", a_scale, sd)                # MLAS scale_multiplier = a_scale * w_scale
            return b("Mul", b("Cast", acc, to=int(DType.FLOAT)), mult)

        return product

    def project(self, b: StepBuilder, X: Value, W: Value, d: int) -> Value:
        return self._direction(b, W, self.w_scale, self.w_zp, d)(X)

    def recurrence(self, b: StepBuilder, R: Value, d: int) -> Callable[[Value], Value]:
        return self._direction(b, R, self.r_scale, self.r_zp, d)


def why_not(n: Node) -> str | None:
    """Why this DynamicQuantizeLSTM cannot be legalized; None if it can."""
    if n.attr("layout", 0):
        return "layout attribute (not in the op's schema)"
    why = _why_not(n, "LSTM")
    if why is not None:
        return why
    if len(n.inputs) < 12 or any(n.inputs[i] is None for i in (1, 2, 8, 9, 10, 11)):
        return "weights or quantization parameters missing"
    w, r = n.inputs[1], n.inputs[2]
    for name, v in (("W", w), ("R", r)):
        if v.type is None or v.dtype not in (DType.INT8, DType.UINT8) or v.shape is None or len(v.shape) != 3:
            return f"{name} is not a rank-3 int8/uint8 tensor of known type"
    for i in (8, 9, 10, 11):
        v = n.inputs[i]
        if v.shape is None or len(v.shape) not in (1, 2):
            return f"quantization parameter {v.name} of unknown rank"
    if n.inputs[9].dtype != w.dtype or n.inputs[11].dtype != r.dtype:
        return "zero point type differs from its weight's"
    return None


@register_pass
@dataclass(frozen=True)
class LegalizeDynamicQuantizeLstm(Pass):
    """Unroll com.microsoft::DynamicQuantizeLSTM into quantize/MatMulInteger/LSTM-cell ops, as ONNX Runtime computes it."""

    name = "legalize-dynamic-quantize-lstm"
    idempotent = True
    max_steps: int = field(default=512, metadata={"help": "leave ops with longer sequences alone"})

    def run(self, model: Model) -> bool:
        opset = model.opset("") or 17
        changed = False
        for g in list(model.graph.all_graphs()):
            for node in g:
                if node.domain != DOMAIN or node.op_type != OP or node.graph is not g:
                    continue
                if why_not(node) is not None or node.inputs[0].shape[0] > self.max_steps:
                    continue
                gemms = QuantizedGemms(*node.inputs[8:12])
                with g.inserting_before(node):
                    new = _unroll(node, opset, kind="LSTM", gemms=gemms)
                for old, nv in zip(node.outputs, new):
                    if nv is None or not (old.num_uses() or old.is_graph_output()):
                        continue
                    if nv.type is None:
                        nv.type = old.type
                    replace_value(old, nv)
                g.remove(node)
                changed = True
        return changed
