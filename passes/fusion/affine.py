"""Folding per-channel affine maps into the weights of Conv, ConvTranspose, Gemm and MatMul.

`y = P(x; W, B)` followed by `y * s + t` with `s`, `t` constant per output channel equals
`P(x; W * s, B * s + t)` (the scale goes along W's output-channel axis). The followers handled:

* BatchNormalization (inference): `s = gamma / sqrt(var + eps)`, `t = beta - mean * s`;
* Mul / Div by a constant, Add / Sub of a constant (scalar or per-channel).

Legality (checked by every rule, with the reason reported as a near miss otherwise):
* the producer's output has no other user (the engine enforces this for intermediates);
* the weights (for a scale) and the bias (for a shift) are constants, float typed;
* the follower's constant varies only along the output-channel axis (axis 1 for Conv and
  ConvTranspose, the last axis for Gemm and MatMul) and its rank is at most the output rank, so
  broadcasting does not change the output shape;
* BatchNormalization statistics are constants, `training_mode` is 0, its extra outputs are
  unused, and its input has the channel on axis 1 (for Gemm/MatMul: a 2-D output);
* Div by a constant with zeros is not folded.

The shift cannot go into a MatMul (it has no bias); `MatMulAddToGemm` handles that case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lepton_ir import Node, Value
from lepton_ir.opsem import WeightInfo, expand_out_channels, weight_info

from ..rewrite import Match, PatternBuilder, RewriteBuilder, Rule
from ..util import constant_value
from .common import FusionRule, channel_vector, node_attrs, rank_of, secondary_outputs_unused

PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class _Target:
    """Where the output channels of a producer live (from `lepton_ir.opsem`) and its weight layout."""

    node: Node
    out_rank: int
    axis: int
    channels: int
    info: WeightInfo


def _target(node: Node) -> _Target | str:
    """Describe the output channels of `node`, or say why its weights cannot absorb a scale."""
    kind = node.op_type
    info = weight_info(node)
    w = node.inputs[1] if len(node.inputs) > 1 else None
    wc = constant_value(w)
    if wc is None:
        return "weights are not constant"
    if wc.dtype.kind != "f":
        return "weights are not floating point"
    if info is None or kind not in PRODUCERS:
        return f"{kind} is not a foldable producer"
    if kind in ("Conv", "ConvTranspose"):
        return _Target(node, wc.ndim, info.act_axis, info.out_channels(wc.shape), info)
    if kind == "Gemm":
        if wc.ndim != 2:
            return "Gemm B is not 2-D"
        return _Target(node, 2, info.act_axis, info.out_channels(wc.shape), info)
    if wc.ndim != 2:
        return "MatMul B is not 2-D (batched weights)"
    r = rank_of(node.inputs[0])
    if r is None or r < 2:
        return "MatMul input rank unknown or < 2"
    return _Target(node, r, r - 1, info.out_channels(wc.shape), info)  # a 2-D B keeps A's rank


def _bias_of(t: _Target) -> np.ndarray | None | str:
    """The producer's constant bias (None if absent), or a reason."""
    n = t.node
    if n.op_type == "MatMul":
        return None
    b = n.inputs[2] if len(n.inputs) > 2 else None
    if b is None:
        return None
    bc = constant_value(b)
    if bc is None:
        return "bias is not constant"
    return bc


def fold(op: RewriteBuilder, t: _Target, scale: np.ndarray | None, shift: np.ndarray | None) -> Value:
    """Emit the producer with `y * scale + shift` folded into its weights and bias."""
    n = t.node
    x = n.inputs[0]
    w = constant_value(n.inputs[1])
    assert w is not None
    dt = w.dtype
    w64 = w.astype(np.float64)
    attrs = node_attrs(n)
    bias = _bias_of(t)
    assert not isinstance(bias, str)
    kind = n.op_type
    if scale is not None:
        # Along the output-channel axis of W (for grouped ConvTranspose split over axes 0 and 1).
        w64 = w64 * expand_out_channels(t.info, w.shape, scale)
    new_w = op.const(w64.astype(dt), name="fused_w")
    if kind == "MatMul":
        assert shift is None
        return op.MatMul(x, new_w)
    if kind == "Gemm":
        beta = float(n.attr("beta", 1.0))
        c = None if bias is None else bias.astype(np.float64) * beta
        if scale is not None and c is not None:
            c = c * scale  # broadcasts over the last (channel) axis of C
        if shift is not None:
            c = shift if c is None else c + shift
        attrs.pop("beta", None)  # beta is now folded into C (default 1)
        new_c = None if c is None else op.const(np.asarray(c).astype(dt), name="fused_c")
        return op.Gemm(x, new_w, new_c, **attrs)
    b = np.zeros(t.channels) if bias is None else np.broadcast_to(bias.astype(np.float64), (t.channels,))
    if scale is not None:
        b = b * scale
    if shift is not None:
        b = b + shift
    new_b = None
    if bias is not None or shift is not None:
        new_b = op.const(b.astype(dt), name="fused_b")
    return getattr(op, kind)(x, new_w, new_b, **attrs)


class _FoldRule(FusionRule):
    """Base of the fold rules: one instance per producer kind."""

    follower = ""

    def __init__(self, producer: str, opset: int = 17) -> None:
        self.producer = producer
        self.opset = opset
        self.name = f"fold-{self.follower.lower()}-into-{producer.lower()}"

    def _producer(self, op: PatternBuilder, x: Any, w: Any) -> Any:
        return getattr(op, self.producer)(x, w, _allow_other_inputs=self.producer != "MatMul", _name="prod")

    # Subclasses return (scale, shift) or a reason.
    def affine(self, t: _Target, **b: Any) -> tuple[np.ndarray | None, np.ndarray | None] | str:
        raise NotImplementedError

    def _plan(self, b: dict[str, Any]) -> tuple[_Target, np.ndarray | None, np.ndarray | None] | str:
        prod: Node = b["prod"]
        if prod.op_type == "Gemm" and self.opset < 7:
            return "Gemm before opset 7 broadcasts C only with its `broadcast` attribute"
        t = _target(prod)
        if isinstance(t, str):
            return t
        st = self.affine(t, **b)
        if isinstance(st, str):
            return st
        scale, shift = st
        if shift is not None:
            if prod.op_type == "MatMul":
                return "MatMul has no bias to absorb a shift (see matmul-add-to-gemm)"
            bias = _bias_of(t)
            if isinstance(bias, str):
                return bias
            if prod.op_type != "Gemm" and bias is not None and bias.size not in (1, t.channels):
                return "bias is not per-channel"
        elif scale is not None:
            bias = _bias_of(t)
            if isinstance(bias, str):
                return bias
        return (t, scale, shift)

    def check(self, match: Match, **b: Any) -> str | None:
        plan = self._plan(b)
        return plan if isinstance(plan, str) else None

    def rewrite(self, op: RewriteBuilder, **b: Any) -> Value:
        plan = self._plan(b)
        assert not isinstance(plan, str)
        return fold(op, *plan)


def _per_channel(t: _Target, v: Value) -> np.ndarray | str:
    c = constant_value(v)
    if c is None:
        return "operand is not constant"
    if c.dtype.kind != "f":
        return "operand is not floating point"
    return channel_vector(c, t.out_rank, t.axis, t.channels)


class BatchNormFold(_FoldRule):
    """BatchNormalization(P(x)) -> P'(x) with the normalisation folded into W and B."""

    follower = "BatchNorm"

    def pattern(self, op: PatternBuilder, x: Any, w: Any, scale: Any, bias: Any, mean: Any, var: Any) -> Any:
        return op.BatchNormalization(self._producer(op, x, w), scale, bias, mean, var, _name="bn")

    def affine(self, t: _Target, **b: Any) -> tuple[np.ndarray, np.ndarray] | str:
        bn: Node = b["bn"]
        if bn.attr("training_mode", 0):
            return "training_mode=1"
        if not secondary_outputs_unused(bn):
            return "running statistics outputs are used"
        if bn.attr("spatial", 1) != 1:
            return "spatial=0"
        if t.axis != 1:
            return "BatchNormalization normalises axis 1, but the producer's channels are elsewhere"
        arrs = [constant_value(b[k]) for k in ("scale", "bias", "mean", "var")]
        if any(a is None for a in arrs):
            return "statistics are not constant"
        if any(a.shape != (t.channels,) for a in arrs):  # type: ignore[union-attr]
            return f"statistics are not of shape ({t.channels},)"
        gamma, beta, mean, var = (a.astype(np.float64) for a in arrs)  # type: ignore[union-attr]
        eps = float(bn.attr("epsilon", 1e-5))
        s = gamma / np.sqrt(var + eps)
        return s, beta - mean * s


class MulFold(_FoldRule):
    """Mul(P(x), c) -> P'(x) with W scaled by the per-channel c."""

    follower = "Mul"

    def pattern(self, op: PatternBuilder, x: Any, w: Any, c: Any) -> Any:
        return op.Mul(self._producer(op, x, w), c)

    def affine(self, t: _Target, **b: Any) -> tuple[np.ndarray, None] | str:
        s = _per_channel(t, b["c"])
        return s if isinstance(s, str) else (s, None)


class DivFold(_FoldRule):
    """Div(P(x), c) -> P'(x) with W scaled by 1/c (c constant, per-channel, no zeros)."""

    follower = "Div"

    def pattern(self, op: PatternBuilder, x: Any, w: Any, c: Any) -> Any:
        return op.Div(self._producer(op, x, w), c)

    def affine(self, t: _Target, **b: Any) -> tuple[np.ndarray, None] | str:
        s = _per_channel(t, b["c"])
        if isinstance(s, str):
            return s
        if np.any(s == 0):
            return "divisor has zeros"
        return 1.0 / s, None


class AddFold(_FoldRule):
    """Add(P(x), c) -> P'(x) with c added to the bias (Conv, ConvTranspose, Gemm)."""

    follower = "Add"

    def pattern(self, op: PatternBuilder, x: Any, w: Any, c: Any) -> Any:
        return op.Add(self._producer(op, x, w), c)

    def affine(self, t: _Target, **b: Any) -> tuple[None, np.ndarray] | str:
        s = _per_channel(t, b["c"])
        return s if isinstance(s, str) else (None, s)


class SubFold(_FoldRule):
    """Sub(P(x), c) -> P'(x) with -c added to the bias."""

    follower = "Sub"

    def pattern(self, op: PatternBuilder, x: Any, w: Any, c: Any) -> Any:
        return op.Sub(self._producer(op, x, w), c)

    def affine(self, t: _Target, **b: Any) -> tuple[None, np.ndarray] | str:
        s = _per_channel(t, b["c"])
        return s if isinstance(s, str) else (None, -s)


def affine_rules(opset: int = 17) -> list[Rule]:
    """All fold rules, for every producer kind they apply to."""
    rules: list[Rule] = []
    for p in PRODUCERS:
        rules.append(BatchNormFold(p, opset))
        rules.append(MulFold(p, opset))
        rules.append(DivFold(p, opset))
        if p != "MatMul":
            rules.append(AddFold(p, opset))
            rules.append(SubFold(p, opset))
    return rules


__all__ = ["BatchNormFold", "MulFold", "DivFold", "AddFold", "SubFold", "affine_rules", "fold"]
