"""MatMul and Gemm rewrites: MatMul + Add to Gemm, Transpose into Gemm / MatMul, MatMul scaling.

* `MatMulAddToGemm`: `Add(MatMul(a, b), c)` -> `Gemm(a, b, c)` when a and b are 2-D, floats, and
  c broadcasts unidirectionally to the (N, M) product (so the output shape is unchanged).
* `TransposeAIntoGemm` / `TransposeBIntoGemm`: `Gemm(Transpose(a), b)` flips `transA` (and
  likewise for B); the Transpose must be the 2-D swap.
* `TransposeIntoMatMul2D`: `MatMul(Transpose(a), b)` (or of `b`) with 2-D operands -> `Gemm`
  with `transA`/`transB` (and a scalar zero C before opset 11, where C is required).
* `TransposeIntoMatMulBatched`: `MatMul` of an operand whose Transpose only swaps the last two
  axes (rank >= 3) -> `ai.lepton::FusedMatMul` with `transA`/`transB`.
* `MatMulScale`: `Mul(MatMul(a, b), s)` / `Div(MatMul(a, b), s)` with s a constant scalar and b
  not constant (else `fold-mul-into-matmul` folds s into b) -> `ai.lepton::FusedMatMul(alpha=s)`
  (the scaled-dot-product in attention).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton_ir import Node, Value

from ..rewrite import Match, PatternBuilder, RewriteBuilder, Rule
from ..util import constant_value
from .common import (FusionRule, dims_of, import_domain, is_float_value, node_attrs, rank_of, scalar_of,
                     shape_of)
from .ops import DOMAIN


def _is_swap_last_two(t: Node, rank: int | None) -> bool:
    perm = t.attr("perm")
    if perm is None:
        return rank == 2  # no perm = reverse the axes, a swap only in 2-D
    perm = list(perm)
    n = len(perm)
    return n >= 2 and perm == list(range(n - 2)) + [n - 1, n - 2]


class MatMulAddToGemm(FusionRule):
    """Add(MatMul(a, b), c) -> Gemm(a, b, c) for 2-D float operands and a broadcastable c."""

    name = "matmul-add-to-gemm"

    def __init__(self, opset: int = 17) -> None:
        self.opset = opset

    def pattern(self, op: PatternBuilder, a: Any, b: Any, c: Any) -> Any:
        return op.Add(op.MatMul(a, b, _name="mm"), c)

    def check(self, match: Match, a: Value, b: Value, c: Value, mm: Node) -> str | None:
        if self.opset < 7:
            return "Gemm before opset 7 broadcasts C only with its `broadcast` attribute"
        if rank_of(a) != 2 or rank_of(b) != 2:
            return "MatMul operands are not both 2-D (or their rank is unknown)"
        if not (is_float_value(a) or is_float_value(b)):
            return "not floating point"
        cs = shape_of(c)
        if cs is None:
            return "bias shape is not static"
        if len(cs) > 2:
            return "bias has rank > 2 and would broadcast the output up"
        da, db = dims_of(a), dims_of(b)
        out = [da[0] if da else None, db[1] if db else None]
        for d, o in zip((1,) * (2 - len(cs)) + tuple(cs), out):
            if d != 1 and d != o:
                return f"bias dim {d} does not broadcast to the product's dim {o}"
        return None

    def rewrite(self, op: RewriteBuilder, a: Value, b: Value, c: Value, mm: Node) -> Value:
        return op.Gemm(a, b, c)


class _TransposeIntoGemm(FusionRule):
    operand = 0

    def pattern(self, op: PatternBuilder, x: Any, other: Any) -> Any:
        t = op.Transpose(x, _name="t")
        args = (t, other) if self.operand == 0 else (other, t)
        return op.Gemm(*args, _allow_other_inputs=True, _name="gemm")

    def check(self, match: Match, x: Value, other: Value, t: Node, gemm: Node) -> str | None:
        if not _is_swap_last_two(t, rank_of(x)) or len(t.attr("perm") or [0, 1]) != 2:
            return "Transpose is not the 2-D swap"
        return None

    def rewrite(self, op: RewriteBuilder, x: Value, other: Value, t: Node, gemm: Node) -> Value:
        attrs = node_attrs(gemm)
        key = "transA" if self.operand == 0 else "transB"
        flag = 1 - int(gemm.attr(key, 0))
        attrs.pop(key, None)
        ins = list(gemm.inputs)
        ins[self.operand] = x
        return op.Gemm(*ins, **attrs, **{key: flag})


class TransposeAIntoGemm(_TransposeIntoGemm):
    """Gemm(Transpose(a), b) -> Gemm(a, b, transA=not transA)."""

    name = "transpose-a-into-gemm"
    operand = 0


class TransposeBIntoGemm(_TransposeIntoGemm):
    """Gemm(a, Transpose(b)) -> Gemm(a, b, transB=not transB)."""

    name = "transpose-b-into-gemm"
    operand = 1


class _TransposeIntoMatMul(FusionRule):
    operand = 0

    def pattern(self, op: PatternBuilder, x: Any, other: Any) -> Any:
        t = op.Transpose(x, _name="t")
        return op.MatMul(*((t, other) if self.operand == 0 else (other, t)))

    def _ranks(self, x: Value, other: Value) -> tuple[int | None, int | None]:
        return rank_of(x), rank_of(other)


class TransposeIntoMatMul2D(_TransposeIntoMatMul):
    """MatMul(Transpose(a), b) -> Gemm(a, b, transA=1) for 2-D float operands (likewise for b)."""

    def __init__(self, operand: int, opset: int = 17) -> None:
        self.operand = operand
        self.opset = opset
        self.name = f"transpose-{'ab'[operand]}-into-matmul-2d"

    def check(self, match: Match, x: Value, other: Value, t: Node) -> str | None:
        rx, ro = self._ranks(x, other)
        if self.opset < 7:
            return "Gemm before opset 7 has different broadcasting rules"
        if rx != 2 or ro != 2:
            return "operands are not both 2-D"
        if not _is_swap_last_two(t, rx):
            return "Transpose is not the 2-D swap"
        if not (is_float_value(x) or is_float_value(other)):
            return "not floating point (Gemm needs floats)"
        return None

    def rewrite(self, op: RewriteBuilder, x: Value, other: Value, t: Node) -> Value:
        # C is optional only from Gemm-11; before, a scalar zero stands for "no bias".
        dt = (x.dtype or other.dtype).numpy()  # type: ignore[union-attr]
        c = op.const(np.zeros((), dtype=dt), name="zero_bias") if self.opset < 11 else None
        if self.operand == 0:
            return op.Gemm(x, other, c, transA=1)
        return op.Gemm(other, x, c, transB=1)


class TransposeIntoMatMulBatched(_TransposeIntoMatMul):
    """MatMul(Transpose(a, perm=[..., -1, -2]), b) -> ai.lepton::FusedMatMul(a, b, transA=1)."""

    def __init__(self, operand: int) -> None:
        self.operand = operand
        self.name = f"transpose-{'ab'[operand]}-into-matmul-batched"

    def check(self, match: Match, x: Value, other: Value, t: Node) -> str | None:
        rx, ro = self._ranks(x, other)
        if rx is None or rx < 3 or ro is None or ro < 2:
            return "operand ranks unknown or not batched"
        if not _is_swap_last_two(t, rx):
            return "Transpose does not only swap the last two axes"
        if not (is_float_value(x) or is_float_value(other)):
            return "not floating point"
        return None

    def rewrite(self, op: RewriteBuilder, x: Value, other: Value, t: Node) -> Value:
        import_domain(op.model, DOMAIN)
        if self.operand == 0:
            return op.FusedMatMul(x, other, _domain=DOMAIN, transA=1)
        return op.FusedMatMul(other, x, _domain=DOMAIN, transB=1)


class MatMulScale(FusionRule):
    """Mul(MatMul(a, b), s) -> ai.lepton::FusedMatMul(a, b, alpha=s) (s a scalar constant)."""

    def __init__(self, follower: str = "Mul") -> None:
        self.follower = follower
        self.name = f"matmul-{follower.lower()}-scale"

    def pattern(self, op: PatternBuilder, a: Any, b: Any, s: Any) -> Any:
        return getattr(op, self.follower)(op.MatMul(a, b, _name="mm"), s)

    def check(self, match: Match, a: Value, b: Value, s: Value, mm: Node) -> str | None:
        c = constant_value(s)
        if c is None or c.size != 1:
            return "scale is not a constant scalar"
        if c.ndim > 0:
            r = rank_of(mm.outputs[0]) or max(rank_of(a) or 0, rank_of(b) or 0)
            if c.ndim > r:
                return "scale has higher rank than the product and would broadcast it up"
        if constant_value(b) is not None and constant_value(b).ndim == 2:  # type: ignore[union-attr]
            return "b is constant: fold-mul-into-matmul folds the scale into the weights"
        if not (is_float_value(a) or is_float_value(b)):
            return "not floating point"
        if self.follower == "Div" and scalar_of(s) == 0:
            return "division by zero"
        return None

    def rewrite(self, op: RewriteBuilder, a: Value, b: Value, s: Value, mm: Node) -> Value:
        v = scalar_of(s)
        assert v is not None
        import_domain(op.model, DOMAIN)
        return op.FusedMatMul(a, b, _domain=DOMAIN, alpha=v if self.follower == "Mul" else 1.0 / v)


def matmul_rules(opset: int = 17) -> list[Rule]:
    return [MatMulAddToGemm(opset), TransposeAIntoGemm(), TransposeBIntoGemm(), TransposeIntoMatMul2D(0, opset),
            TransposeIntoMatMul2D(1, opset), TransposeIntoMatMulBatched(0), TransposeIntoMatMulBatched(1),
            MatMulScale("Mul"), MatMulScale("Div")]
