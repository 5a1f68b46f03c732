"""`legalize-contrib-ops`: ONNX Runtime contrib ops real models carry, in standard ONNX.

- com.microsoft::FusedConv (Conv + activation) -> Conv + the activation;
- com.microsoft::FusedMatMul (transA/transB/alpha) -> Transpose + MatMul + Mul;
- com.microsoft::DynamicQuantizeLSTM has its own pass, `legalize-dynamic-quantize-lstm`
  (dynamic_quantize_lstm.py): it unrolls the op and repeats ONNX Runtime's per-step re-quantization
  of the activations with standard ops and MatMulInteger, so results match ONNX Runtime's kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import Model, Node, Value

from ..base import Pass, register_pass
from ..rewrite import TableRule, apply_rules

_ACT = {"Relu": "Relu", "Tanh": "Tanh", "Sigmoid": "Sigmoid", "LeakyRelu": "LeakyRelu", "Clip": "Clip",
        "HardSigmoid": "HardSigmoid"}


def _fused_conv_ok(n: Node) -> bool | str:
    act = n.attr("activation")
    return True if act is None or act in _ACT else f"activation {act!r} unknown"


def _fused_conv(n: Node) -> Value:
    g = n.graph
    attrs = {k: a for k, a in n.attrs.items() if k not in ("activation", "activation_params")}
    y = g.op("Conv", *n.inputs[:3], **attrs)
    if len(n.inputs) > 3 and n.inputs[3] is not None:  # the optional residual input "Z" is added first
        y = g.op("Add", y, n.inputs[3])
    act = n.attr("activation")
    params = list(n.attr("activation_params") or [])
    if act is None:
        return y
    if act == "LeakyRelu":
        return g.op("LeakyRelu", y, alpha=params[0] if params else 0.01)
    if act == "HardSigmoid":
        return g.op("HardSigmoid", y, alpha=params[0] if params else 0.2, beta=params[1] if len(params) > 1 else 0.5)
    if act == "Clip":
        lo, hi = (params + [float("-inf"), float("inf")])[:2] if params else (float("-inf"), float("inf"))
        return g.op("Clip", y, g.constant(np.float32(lo), name="clip_min"), g.constant(np.float32(hi), name="clip_max"))
    return g.op(_ACT[act], y)


def _fused_matmul(n: Node) -> Value:
    g = n.graph
    a, b = n.inputs[0], n.inputs[1]

    def swap_last(v: Value) -> Value:
        r = len(v.shape) if v.shape is not None else None
        if r is None or r < 2:
            raise ValueError("rank unknown")
        perm = list(range(r - 2)) + [r - 1, r - 2]
        return g.op("Transpose", v, perm=perm)

    if n.attr("transA", 0):
        a = swap_last(a)
    if n.attr("transB", 0):
        b = swap_last(b)
    y = g.op("MatMul", a, b)
    alpha = n.attr("alpha", 1.0)
    if alpha != 1.0:
        y = g.op("Mul", y, g.constant(np.float32(alpha), name="alpha"))
    return y


def _fused_matmul_ok(n: Node) -> bool | str:
    if n.attr("transBatchA", 0) or n.attr("transBatchB", 0):
        return "transBatch attributes"
    for flag, v in (("transA", n.inputs[0]), ("transB", n.inputs[1])):
        if n.attr(flag, 0) and (v.shape is None or len(v.shape) < 2):
            return f"{flag} with unknown rank"
    return True


RULES = [
    TableRule("FusedConv", _fused_conv_ok, _fused_conv, domain="com.microsoft", name="fused-conv"),
    TableRule("FusedMatMul", _fused_matmul_ok, _fused_matmul, domain="com.microsoft", name="fused-matmul"),
]


@register_pass
@dataclass(frozen=True)
class LegalizeContribOps(Pass):
    """Rewrite ONNX Runtime contrib ops (FusedConv, FusedMatMul) into standard ONNX ops."""

    name = "legalize-contrib-ops"
    idempotent = True

    def run(self, model: Model) -> bool:
        return apply_rules(model, RULES).changed
