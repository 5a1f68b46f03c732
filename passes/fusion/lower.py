"""Lowering the `ai.lepton` fused ops: to ONNX Runtime contrib ops, or to plain ONNX.

`lower-fused-to-onnx` (the `onnx` backend) maps each fused op to the ONNX Runtime op that runs it
in one kernel where ORT 1.32's CPU provider has one and it computes the same function (each
mapping below is exercised against ORT by tests/fusion), and to the decomposed standard form
otherwise:

=============================  =====================================================================
ai.lepton op                   lowering for ONNX Runtime
=============================  =====================================================================
FusedConv                      com.microsoft::FusedConv for Relu, Tanh, Sigmoid, LeakyRelu, Clip,
                               HardSwish,
                               HardSigmoid on float32; else Conv + activation ops
FusedGemm                      com.microsoft::FusedGemm (activation_alpha/beta) for Relu, Tanh,
                               Sigmoid, LeakyRelu, HardSigmoid on float32; else Gemm + activation
FusedMatMul                    com.microsoft::FusedMatMul (transA/transB/alpha) when there is no
                               activation, float32; else Transpose/MatMul/Mul + activation
Gelu                           com.microsoft::Gelu (erf) / com.microsoft::FastGelu (tanh), float32
BiasGelu                       com.microsoft::BiasGelu (erf) / com.microsoft::FastGelu(x, bias)
LayerNormalization             ONNX-domain LayerNormalization, which ORT registers for every opset
                               (its contrib kernel predates ONNX 17)
SkipLayerNorm                  com.microsoft::SkipLayerNormalization for 2-D/3-D float32 input
                               and skip of provably the same shape; else Add + LayerNormalization
Attention                      com.microsoft::FusedMatMul(alpha=scale) + Add(mask) + Softmax +
                               MatMul (ORT's Attention/MultiHeadAttention need packed projections)
=============================  =====================================================================

`lower-fused-to-standard` always uses the decomposed standard form (what the TVM backend and any
other ONNX consumer can read): activations as their ONNX ops (HardSwish as x*HardSigmoid(x) before
opset 14, SiLU as x*Sigmoid(x)), Gelu as its Erf/Tanh formula before opset 20, LayerNormalization
as ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div/Mul/Add before opset 17.

Both add the `com.microsoft` opset import (version 1) when they emit contrib ops, and drop the
`ai.lepton` import once no op of that domain is left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from lepton_ir import DType, Model, Node, Value

from ..base import Pass, register_pass
from ..rewrite import PatternBuilder, RewriteBuilder, Rule, apply_rules
from .common import FusionRule, MS_DOMAIN, default_opset, import_domain, node_attrs, rank_of
from .ops import DOMAIN

#: Activations com.microsoft::FusedConv computes (checked against ORT 1.32 by the tests).
ORT_FUSED_CONV_ACTIVATIONS = frozenset({"Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish"})
#: Activations com.microsoft::FusedGemm accepts (it reads activation_alpha/beta, not params).
ORT_FUSED_GEMM_ACTIVATIONS = frozenset({"Relu", "Tanh", "Sigmoid", "LeakyRelu", "HardSigmoid"})


def _dtype(n: Node) -> np.dtype:
    for v in (n.outputs[0], n.inputs[0]):
        if v is not None and v.dtype is not None:
            return v.dtype.numpy()
    return np.dtype(np.float32)


def _is_f32(n: Node) -> bool:
    dt = n.outputs[0].dtype or (n.inputs[0].dtype if n.inputs[0] is not None else None)
    return dt == DType.FLOAT


def _str_attr(n: Node, name: str, default: str = "") -> str:
    v = n.attr(name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _scalar(op: RewriteBuilder, value: float, dt: np.dtype, name: str = "c") -> Value:
    return op.const(np.array(value, dtype=dt), name=name)


def emit_activation(op: RewriteBuilder, y: Value, activation: str, params: Sequence[float], opset: int,
                    dt: np.dtype) -> Value:
    """Standard ONNX ops computing `activation(y)`."""
    p = list(params)
    if not activation:
        return y
    if activation in ("Relu", "Tanh", "Sigmoid"):
        return getattr(op, activation)(y)
    if activation == "LeakyRelu":
        return op.LeakyRelu(y, alpha=float(p[0]) if p else 0.01)
    if activation == "HardSigmoid":
        return op.HardSigmoid(y, alpha=float(p[0]) if p else 0.2, beta=float(p[1]) if len(p) > 1 else 0.5)
    if activation == "Clip":
        lo, hi = (p + [float(-np.finfo(np.float32).max), float(np.finfo(np.float32).max)][len(p):])[:2]
        if opset >= 11:
            return op.Clip(y, _scalar(op, lo, dt, "clip_min"), _scalar(op, hi, dt, "clip_max"))
        return op.Clip(y, min=float(lo), max=float(hi))
    if activation == "HardSwish":
        if opset >= 14:
            return op.HardSwish(y)
        return op.Mul(y, op.HardSigmoid(y, alpha=1.0 / 6.0, beta=0.5))
    if activation == "SiLU":
        return op.Mul(y, op.Sigmoid(y))
    raise ValueError(f"unknown activation {activation!r}")


def emit_gelu(op: RewriteBuilder, x: Value, approximate: str, opset: int, dt: np.dtype) -> Value:
    """Gelu as standard ONNX: the op from opset 20, its formula before."""
    if opset >= 20:
        return op.Gelu(x, approximate=approximate) if approximate == "tanh" else op.Gelu(x)
    if approximate == "tanh":
        cube = op.Mul(op.Pow(x, _scalar(op, 3.0, dt)), _scalar(op, 0.044715, dt))
        inner = op.Tanh(op.Mul(op.Add(x, cube), _scalar(op, math.sqrt(2.0 / math.pi), dt)))
        return op.Mul(op.Mul(x, op.Add(inner, _scalar(op, 1.0, dt))), _scalar(op, 0.5, dt))
    erf = op.Erf(op.Div(x, _scalar(op, math.sqrt(2.0), dt)))
    return op.Mul(op.Mul(x, op.Add(erf, _scalar(op, 1.0, dt))), _scalar(op, 0.5, dt))


def emit_layer_norm(op: RewriteBuilder, x: Value, scale: Value, bias: Value | None, axis: int, eps: float,
                    opset: int, dt: np.dtype) -> Value:
    """LayerNormalization as standard ONNX: the op from opset 17, its decomposition before."""
    if opset >= 17:
        return op.LayerNormalization(x, scale, bias, axis=axis, epsilon=eps)
    if axis >= 0:
        r = rank_of(x)
        if r is None:
            raise ValueError("LayerNormalization with a positive axis needs the input rank to decompose")
        axis -= r
    axes = list(range(axis, 0))
    if opset >= 18:  # unreachable (>= 17 above) but kept so the helper stays correct if reused
        axes_v = op.const(np.array(axes, dtype=np.int64), name="axes")
        mean = op.ReduceMean(x, axes_v)
    else:
        mean = op.ReduceMean(x, axes=axes)
    d = op.Sub(x, mean)
    var = op.ReduceMean(op.Mul(d, d), axes=axes)
    y = op.Div(d, op.Sqrt(op.Add(var, _scalar(op, eps, dt, "eps"))))
    y = op.Mul(y, scale)
    return op.Add(y, bias) if bias is not None else y


class _Lower(FusionRule):
    """Base of the lowering rules: one per fused op; `ort` picks the ORT flavour."""

    op_type = ""

    def __init__(self, opset: int, ort: bool) -> None:
        self.opset = opset
        self.ort = ort
        self.name = f"lower-{self.op_type.lower()}-to-{'onnx' if ort else 'standard'}"

    def pattern(self, op: PatternBuilder, x: Any) -> Any:
        return getattr(op, self.op_type)(x, _allow_other_inputs=True, _domain=DOMAIN, _name="n")

    def rewrite(self, op: RewriteBuilder, x: Value, n: Node) -> Value:
        return self.lower(op, n, _dtype(n))

    def lower(self, op: RewriteBuilder, n: Node, dt: np.dtype) -> Value:
        raise NotImplementedError

    def ms(self, op: RewriteBuilder) -> str:
        import_domain(op.model, MS_DOMAIN, 1)
        return MS_DOMAIN


class LowerFusedConv(_Lower):
    op_type = "FusedConv"

    def lower(self, op: RewriteBuilder, n: Node, dt: np.dtype) -> Value:
        act = _str_attr(n, "activation")
        params = list(n.attr("activation_params") or [])
        if self.ort and act in ORT_FUSED_CONV_ACTIVATIONS and _is_f32(n):
            return op.FusedConv(*n.inputs, _domain=self.ms(op), **node_attrs(n))
        y = op.Conv(*n.inputs, **node_attrs(n, drop=("activation", "activation_params")))
        return emit_activation(op, y, act, params, self.opset, dt)


class LowerFusedGemm(_Lower):
    op_type = "FusedGemm"

    def lower(self, op: RewriteBuilder, n: Node, dt: np.dtype) -> Value:
        act = _str_attr(n, "activation")
        params = list(n.attr("activation_params") or [])
        base = node_attrs(n, drop=("activation", "activation_params"))
        if self.ort and act in ORT_FUSED_GEMM_ACTIVATIONS and _is_f32(n):
            extra: dict[str, Any] = {}
            if act == "LeakyRelu":
                extra["activation_alpha"] = float(params[0]) if params else 0.01
            if act == "HardSigmoid":
                extra["activation_alpha"] = float(params[0]) if params else 0.2
                extra["activation_beta"] = float(params[1]) if len(params) > 1 else 0.5
            return op.FusedGemm(*n.inputs, _domain=self.ms(op), activation=act, **base, **extra)
        y = op.Gemm(*n.inputs, **base)
        return emit_activation(op, y, act, params, self.opset, dt)


class LowerFusedMatMul(_Lower):
    op_type = "FusedMatMul"

    def lower(self, op: RewriteBuilder, n: Node, dt: np.dtype) -> Value:
        act = _str_attr(n, "activation")
        params = list(n.attr("activation_params") or [])
        alpha = float(n.attr("alpha", 1.0))
        ta, tb = int(n.attr("transA", 0)), int(n.attr("transB", 0))
        a, b = n.inputs[0], n.inputs[1]
        if self.ort and not act and _is_f32(n):
            return op.FusedMatMul(a, b, _domain=self.ms(op), alpha=alpha, transA=ta, transB=tb)
        if ta:
            a = op.Transpose(a, perm=_swap_perm(a))
        if tb:
            b = op.Transpose(b, perm=_swap_perm(b))
        y = op.MatMul(a, b)
        if alpha != 1.0:
            y = op.Mul(y, _scalar(op, alpha, dt, "alpha"))
        return emit_activation(op, y, act, params, self.opset, dt)


def _swap_perm(v: Value | None) -> list[int]:
    r = rank_of(v)
    if r is None or r < 2:
        raise ValueError(f"cannot transpose {v!r}: rank unknown")
    return list(range(r - 2)) + [r - 1, r - 2]


class LowerGelu(_Lower):
    op_type = "Gelu"

    def lower(self, op: RewriteBuilder, n: Node, dt: np.dtype) -> Value:
        approx = _str_attr(n, "approximate", "none")
        if self.ort and _is_f32(n):
            return op.FastGelu(n.inputs[0], _domain=self.ms(op)) if approx == "tanh" else op.Gelu(
                n.inputs[0], _domain=self.ms(op))
        return emit_gelu(op, n.inputs[0], approx, self.opset, dt)


class LowerBiasGelu(_Lower):
    op_type = "BiasGelu"

    def lower(self, op: RewriteBuilder, n: Node, dt: np.dtype) -> Value:
        approx = _str_attr(n, "approximate", "none")
        x, bias = n.inputs[0], n.inputs[1]
        if self.ort and _is_f32(n):
            if approx == "tanh":
                return op.FastGelu(x, bias, _domain=self.ms(op))
            return op.BiasGelu(x, bias, _domain=self.ms(op))
        return emit_gelu(op, op.Add(x, bias), approx, self.opset, dt)


class LowerLayerNormalization(_Lower):
    op_type = "LayerNormalization"

    def lower(self, op: RewriteBuilder, n: Node, dt: np.dtype) -> Value:
        ins = list(n.inputs) + [None] * 3
        axis, eps = int(n.attr("axis", -1)), float(n.attr("epsilon", 1e-5))
        if self.ort:
            return op.LayerNormalization(ins[0], ins[1], ins[2], axis=axis, epsilon=eps)
        return emit_layer_norm(op, ins[0], ins[1], ins[2], axis, eps, self.opset, dt)


class LowerSkipLayerNorm(_Lower):
    op_type = "SkipLayerNorm"

    def lower(self, op: RewriteBuilder, n: Node, dt: np.dtype) -> Value:
        ins = list(n.inputs) + [None] * 4
        eps = float(n.attr("epsilon", 1e-5))
        if self.ort and _is_f32(n) and rank_of(ins[0]) in (2, 3) and _same_shape(ins[0], ins[1]):
            args = [ins[0], ins[1], ins[2]] + ([ins[3]] if ins[3] is not None else [])
            return op.SkipLayerNormalization(*args, _domain=self.ms(op), epsilon=eps)
        s = op.Add(ins[0], ins[1])
        if self.ort:
            return op.LayerNormalization(s, ins[2], ins[3], axis=-1, epsilon=eps)
        return emit_layer_norm(op, s, ins[2], ins[3], -1, eps, self.opset, dt)


class LowerAttention(_Lower):
    op_type = "Attention"

    def lower(self, op: RewriteBuilder, n: Node, dt: np.dtype) -> Value:
        ins = list(n.inputs) + [None]
        q, k, v, mask = ins[0], ins[1], ins[2], ins[3]
        scale, tb = float(n.attr("scale", 1.0)), int(n.attr("transB", 0))
        if self.ort and _is_f32(n):
            s = op.FusedMatMul(q, k, _domain=self.ms(op), alpha=scale, transB=tb)
        else:
            if tb:
                k = op.Transpose(k, perm=_swap_perm(k))
            s = op.MatMul(q, k)
            if scale != 1.0:
                s = op.Mul(s, _scalar(op, scale, dt, "scale"))
        if mask is not None:
            s = op.Add(s, mask)
        # axis=-1 is the last axis in every opset (before 13 it coerces to 2-D at the last axis).
        return op.MatMul(op.Softmax(s, axis=-1), v)


def _same_shape(a: Value | None, b: Value | None) -> bool:
    """True if a and b provably have one shape (equal static dims or identical symbols): ORT's
    SkipLayerNormalization does not broadcast the way the Add it replaces would."""
    sa, sb = (getattr(v, "shape", None) for v in (a, b))
    if sa is None or sb is None:
        return False
    da, db = list(sa.dims), list(sb.dims)
    return len(da) == len(db) and all(x == y and x is not None for x, y in zip(da, db))


LOWERINGS = (LowerAttention, LowerFusedConv, LowerFusedGemm, LowerFusedMatMul, LowerGelu, LowerBiasGelu,
             LowerLayerNormalization,
             LowerSkipLayerNorm)


def lower_fused(model: Model, *, ort: bool) -> bool:
    """Rewrite every `ai.lepton` op; return True if anything changed."""
    opset = default_opset(model)
    stats = apply_rules(model, [cls(opset, ort) for cls in LOWERINGS])
    if not any(n.domain == DOMAIN for n in model.graph.all_nodes()) and DOMAIN in model.opset_imports:
        if not any(f.domain == DOMAIN for f in model.functions.values()):
            del model.opset_imports[DOMAIN]
            return True
    return stats.changed


@register_pass
@dataclass(frozen=True)
class LowerFusedToOnnx(Pass):
    """Lower ai.lepton fused ops to ONNX Runtime contrib ops where ORT has them, else to plain ONNX."""

    name = "lower-fused-to-onnx"
    idempotent = True

    def run(self, model: Model) -> bool:
        return lower_fused(model, ort=True)


@register_pass
@dataclass(frozen=True)
class LowerFusedToStandard(Pass):
    """Decompose every ai.lepton fused op into standard ONNX ops (for backends other than ORT)."""

    name = "lower-fused-to-standard"
    idempotent = True

    def run(self, model: Model) -> bool:
        return lower_fused(model, ort=False)


__all__ = ["LowerFusedToOnnx", "LowerFusedToStandard", "lower_fused", "emit_activation", "emit_gelu",
           "emit_layer_norm"]
