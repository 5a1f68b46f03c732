"""Collapsing chains of layout and type ops: Transpose, Reshape, Squeeze/Unsqueeze, Cast.

* `TransposeTranspose`: `Transpose(Transpose(x, p), q)` is `Transpose(x, r)` with
  `r[i] = p[q[i]]`; an identity `r` cancels the pair (the output is `x`).
* `ReshapeOfReshapeLike`: `Reshape(R(x), s)` with R one of Reshape, Squeeze, Unsqueeze, Flatten
  is `Reshape(x, s)`, legal when `s` is constant and has no 0 (a 0 copies a dim of R's output,
  which x may not have) unless `allowzero=1` (then 0 is a literal size).
* `SqueezeUnsqueeze` / `UnsqueezeSqueeze`: a Squeeze and an Unsqueeze of the same axes cancel
  (Squeeze checked that the axes were 1; Unsqueeze puts them back). Axes must be explicit and the
  rank known when they are negative.
* `CastCast`: `Cast(Cast(x, t1), t2)` is `Cast(x, t2)` (or `x` when t2 is x's type) when
  converting x's type to t1 is exact for every value (e.g. f32 -> f64, i8 -> i32), so the second
  Cast sees the same number the direct one would. Lossy middles (f32 -> f16 -> f32) stay.
"""

from __future__ import annotations

from typing import Any

from lepton_ir import DType, Node, Value

from ..rewrite import Match, PatternBuilder, RewriteBuilder, Rule
from .common import FusionRule, const_ints, node_attrs, rank_of

D = DType
_INTS_SIGNED = (D.INT8, D.INT16, D.INT32, D.INT64)
_INTS_UNSIGNED = (D.UINT8, D.UINT16, D.UINT32, D.UINT64)

#: source type -> types that hold every value of it exactly.
LOSSLESS: dict[DType, frozenset[DType]] = {
    D.FLOAT16: frozenset({D.FLOAT, D.DOUBLE}),
    D.BFLOAT16: frozenset({D.FLOAT, D.DOUBLE}),
    D.FLOAT: frozenset({D.DOUBLE}),
    D.INT8: frozenset({D.INT16, D.INT32, D.INT64, D.FLOAT16, D.FLOAT, D.DOUBLE}),
    D.UINT8: frozenset({D.INT16, D.UINT16, D.INT32, D.UINT32, D.INT64, D.UINT64, D.FLOAT16, D.FLOAT, D.DOUBLE}),
    D.INT16: frozenset({D.INT32, D.INT64, D.FLOAT, D.DOUBLE}),
    D.UINT16: frozenset({D.INT32, D.UINT32, D.INT64, D.UINT64, D.FLOAT, D.DOUBLE}),
    D.INT32: frozenset({D.INT64, D.DOUBLE}),
    D.UINT32: frozenset({D.INT64, D.UINT64, D.DOUBLE}),
    D.BOOL: frozenset(_INTS_SIGNED + _INTS_UNSIGNED + (D.FLOAT16, D.BFLOAT16, D.FLOAT, D.DOUBLE)),
}


def _perm(t: Node, rank: int | None) -> list[int] | None:
    p = t.attr("perm")
    if p is not None:
        return [int(v) for v in p]
    return None if rank is None else list(range(rank))[::-1]


class TransposeTranspose(FusionRule):
    """Transpose(Transpose(x, p), q) -> Transpose(x, p∘q), or x when that is the identity."""

    name = "transpose-transpose"

    def pattern(self, op: PatternBuilder, x: Any) -> Any:
        return op.Transpose(op.Transpose(x, _name="inner"), _name="outer")

    def _composed(self, x: Value, inner: Node, outer: Node) -> list[int] | None:
        r = rank_of(x)
        p, q = _perm(inner, r), _perm(outer, r if r is not None else (len(inner.attr("perm") or []) or None))
        if p is None or q is None or len(p) != len(q):
            return None
        return [p[i] for i in q]

    def check(self, match: Match, x: Value, inner: Node, outer: Node) -> str | None:
        return None if self._composed(x, inner, outer) is not None else "perm missing and rank unknown"

    def rewrite(self, op: RewriteBuilder, x: Value, inner: Node, outer: Node) -> Value:
        r = self._composed(x, inner, outer)
        assert r is not None
        if r == list(range(len(r))):
            return x
        return op.Transpose(x, perm=r)


class ReshapeOfReshapeLike(FusionRule):
    """Reshape(R(x), s) -> Reshape(x, s) for R in Reshape/Squeeze/Unsqueeze/Flatten."""

    def __init__(self, inner: str) -> None:
        self.inner = inner
        self.name = f"reshape-of-{inner.lower()}"

    def pattern(self, op: PatternBuilder, x: Any, s: Any) -> Any:
        return op.Reshape(getattr(op, self.inner)(x, _allow_other_inputs=True, _name="r"), s, _name="outer")

    def check(self, match: Match, x: Value, s: Value, r: Node, outer: Node) -> str | None:
        shape = const_ints(s)
        if shape is None:
            return "target shape is not constant"
        if 0 in shape and not outer.attr("allowzero", 0):
            return "target shape has a 0 that copies a dim of the intermediate"
        return None

    def rewrite(self, op: RewriteBuilder, x: Value, s: Value, r: Node, outer: Node) -> Value:
        return op.Reshape(x, s, **node_attrs(outer))


def _axes(n: Node) -> list[int] | None:
    if "axes" in n.attrs:
        return [int(a) for a in n.attr("axes")]
    if len(n.inputs) > 1 and n.inputs[1] is not None:
        return const_ints(n.inputs[1])
    return None


class _SqueezePair(FusionRule):
    outer_op = ""
    inner_op = ""

    def pattern(self, op: PatternBuilder, x: Any) -> Any:
        inner = getattr(op, self.inner_op)(x, _allow_other_inputs=True, _name="inner")
        return getattr(op, self.outer_op)(inner, _allow_other_inputs=True, _name="outer")

    def check(self, match: Match, x: Value, inner: Node, outer: Node) -> str | None:
        a, b = _axes(inner), _axes(outer)
        if a is None or b is None:
            return "axes are not explicit constants"
        if any(v < 0 for v in a + b):
            rx = rank_of(x)
            if rx is None:
                return "negative axes and unknown rank"
            # The Unsqueeze-side rank is the larger one (rank(x) + k for Squeeze(Unsqueeze)).
            big = rx + len(a) if self.inner_op == "Unsqueeze" else rx
            a = sorted(v % big for v in a)
            b = sorted(v % big for v in b)
        if sorted(a) != sorted(b):
            return "axes differ"
        return None

    def rewrite(self, op: RewriteBuilder, x: Value, inner: Node, outer: Node) -> Value:
        return x


class SqueezeOfUnsqueeze(_SqueezePair):
    """Squeeze(Unsqueeze(x, a), a) -> x."""

    name = "squeeze-of-unsqueeze"
    outer_op, inner_op = "Squeeze", "Unsqueeze"


class UnsqueezeOfSqueeze(_SqueezePair):
    """Unsqueeze(Squeeze(x, a), a) -> x (Squeeze only succeeds when those dims are 1)."""

    name = "unsqueeze-of-squeeze"
    outer_op, inner_op = "Unsqueeze", "Squeeze"


class CastCast(FusionRule):
    """Cast(Cast(x, t1), t2) -> Cast(x, t2) (or x) when x -> t1 is exact."""

    name = "cast-cast"

    def pattern(self, op: PatternBuilder, x: Any) -> Any:
        return op.Cast(op.Cast(x, _name="inner"), _name="outer")

    def check(self, match: Match, x: Value, inner: Node, outer: Node) -> str | None:
        src = x.dtype
        if src is None:
            return "input type unknown"
        mid = DType(int(inner.attr("to")))
        if mid != src and mid not in LOSSLESS.get(src, frozenset()):
            return f"{src.short} -> {mid.short} loses precision"
        return None

    def rewrite(self, op: RewriteBuilder, x: Value, inner: Node, outer: Node) -> Value:
        to = int(outer.attr("to"))
        if x.dtype is not None and int(x.dtype) == to:
            return x
        return op.Cast(x, **node_attrs(outer))


def chain_rules() -> list[Rule]:
    return [TransposeTranspose(), *(ReshapeOfReshapeLike(k) for k in ("Reshape", "Squeeze", "Unsqueeze", "Flatten")),
            SqueezeOfUnsqueeze(), UnsqueezeOfSqueeze(), CastCast()]


__all__ = ["TransposeTranspose", "ReshapeOfReshapeLike", "SqueezeOfUnsqueeze", "UnsqueezeOfSqueeze", "CastCast",
           "chain_rules", "LOSSLESS"]
