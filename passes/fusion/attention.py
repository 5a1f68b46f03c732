"""Attention: the scaled-dot-product core `Softmax(scale * Q @ K + mask) @ V`.

Exporters write multi-head attention as head-split Reshape/Transpose ops around this core::

    s = MatMul(Q, K)                       (or ai.lepton::FusedMatMul(Q, K, alpha) after
    s = Div(s, √d) | Mul(s, 1/√d)           matmul-*-scale has already absorbed the scale)
    s = Add(s, mask)                       (optional)
    p = Softmax(s, axis=-1)
    o = MatMul(p, V)

which becomes `ai.lepton::Attention(Q, K, V, mask?)` with attributes `scale` and `transB` (K
given as (..., Sk, D) instead of (..., D, Sk)). The head split and merge stay outside: fusing them
needs the Reshape targets, which models compute at run time (Shape/Gather/Concat), and ORT's
`com.microsoft::Attention` / `MultiHeadAttention` want packed (B, S, hidden) projections.

Legality: the intermediates have no other users (engine-enforced); the scale is a constant scalar
of rank no higher than the scores; Softmax normalises the last axis only (for opset < 13 its
`axis` coerces to 2-D, which for the last axis is the same thing); the mask does not broadcast
the scores to a higher rank (its rank and the scores' rank are known); the FusedMatMul, if any,
has no activation and no transA; floats only.
"""

from __future__ import annotations

from typing import Any

from lepton_ir import Node, Value

from ..rewrite import Match, PatternBuilder, RewriteBuilder, Rule
from ..util import constant_value
from .common import FusionRule, import_domain, is_float_value, rank_of, scalar_of
from .ops import DOMAIN


class AttentionCore(FusionRule):
    """Softmax(scale * Q @ K [+ mask]) @ V -> ai.lepton::Attention(Q, K, V[, mask])."""

    def __init__(self, opset: int, scores: str, scale: str, mask: bool) -> None:
        # scores: "matmul" or "fused" (ai.lepton::FusedMatMul); scale: "none", "Mul" or "Div".
        self.opset = opset
        self.scores = scores
        self.scale = scale
        self.mask = mask
        self.name = f"attention-{scores}-{scale.lower()}{'-mask' if mask else ''}"

    def pattern(self, op: PatternBuilder, q: Any, k: Any, v: Any, m: Any) -> Any:
        if self.scores == "fused":
            s = op.FusedMatMul(q, k, _domain=DOMAIN, _name="mm")
        else:
            s = op.MatMul(q, k, _name="mm")
        if self.scale != "none":
            s = getattr(op, self.scale)(s, op.const("scale"))
        if self.mask:
            s = op.Add(s, m)
        return op.MatMul(op.Softmax(s, _name="softmax"), v)

    def _scale(self, b: dict[str, Any]) -> float | None:
        mm: Node = b["mm"]
        alpha = float(mm.attr("alpha", 1.0)) if self.scores == "fused" else 1.0
        if self.scale == "none":
            return alpha
        c = scalar_of(b["scale"])
        if c is None or (self.scale == "Div" and c == 0):
            return None
        return alpha * c if self.scale == "Mul" else alpha / c

    def check(self, match: Match, **b: Any) -> str | None:
        q, k, mm, sm = b["q"], b["k"], b["mm"], b["softmax"]
        if not (is_float_value(q) or is_float_value(k)):
            return "not floating point (or the type is unknown)"
        if self.scores == "fused" and (mm.attr("activation") or mm.attr("transA", 0)):
            return "FusedMatMul has an activation or transA"
        if self._scale(b) is None:
            return "scale is not a constant non-zero scalar"
        r = rank_of(mm.outputs[0]) or rank_of(q)
        if r is None:
            return "scores rank unknown"
        if self.scale != "none":
            c = constant_value(b["scale"])
            if c is not None and c.ndim > r:
                return "scale would broadcast the scores up"
        axis = int(sm.attr("axis", -1 if self.opset >= 13 else 1))
        if axis not in (-1, r - 1):
            return f"Softmax over axis {axis}, not the last"
        if self.mask:
            rm = rank_of(b["m"])
            if rm is None or rm > r:
                return "mask rank unknown or higher than the scores'"
        if rank_of(b["v"]) is None:
            return "V rank unknown"
        return None

    def rewrite(self, op: RewriteBuilder, **b: Any) -> Value:
        import_domain(op.model, DOMAIN)
        mm: Node = b["mm"]
        ins = [b["q"], b["k"], b["v"]] + ([b["m"]] if self.mask else [])
        trans_b = int(mm.attr("transB", 0)) if self.scores == "fused" else 0
        return op.Attention(*ins, _domain=DOMAIN, scale=float(self._scale(b)), transB=trans_b)  # type: ignore[arg-type]


def attention_rules(opset: int) -> list[Rule]:
    return [AttentionCore(opset, s, sc, m) for s in ("fused", "matmul") for sc in ("none", "Mul", "Div")
            for m in (True, False)]
