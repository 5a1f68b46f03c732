"""Gelu from its Erf and Tanh forms, and bias-Gelu.

* `GeluErf`: `0.5 * x * (1 + Erf(x / sqrt(2)))` in the orders exporters emit:
  `Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5)` (HuggingFace/PyTorch) and
  `Mul(Mul(x, 0.5), Add(Erf(...), 1))`; the Erf argument may also be `Mul(x, 1/√2)`.
* `GeluTanh`: `0.5 * x * (1 + Tanh(√(2/π) * (x + 0.044715 * x³)))` with `x³` as `Pow(x, 3)`.
* `BiasGeluFusion`: `Gelu(Add(x, bias))` (standard or `ai.lepton` Gelu), bias a constant vector
  over the last axis -> `ai.lepton::BiasGelu(x, bias)`.

The result is the standard `Gelu` (with `approximate="tanh"` for the tanh form) when the model's
opset is 20 or later, else `ai.lepton::Gelu`. Legality: every constant is a scalar with the exact
value (relative tolerance 1e-4, since exporters round √2 and √(2/π) to float32), none of
them broadcasts the output to a higher rank, and x is float.
"""

from __future__ import annotations

import math
from typing import Any

from lepton_ir import Node, Value

from ..rewrite import Match, PatternBuilder, RewriteBuilder, Rule
from ..util import constant_value
from .common import FusionRule, dims_of, import_domain, is_float_value, rank_of, scalar_of
from .ops import DOMAIN


def _close(v: float | None, want: float, rtol: float = 1e-4) -> bool:
    return v is not None and abs(v - want) <= rtol * abs(want)


def _check_consts(x: Value, b: dict[str, Any], want: dict[str, float]) -> str | None:
    if not is_float_value(x):
        return "input is not float (or its type is unknown)"
    r = rank_of(x)
    for k, w in want.items():
        c = constant_value(b[k])
        if c is None or c.size != 1:
            return f"{k} is not a constant scalar"
        if c.ndim > 0 and (r is None or c.ndim > r):
            return f"{k} would broadcast the output up"
        if not _close(scalar_of(b[k]), w):
            return f"{k} is {scalar_of(b[k])}, expected {w:g}"
    return None


def _emit_gelu(op: RewriteBuilder, x: Value, opset: int, approximate: str) -> Value:
    if opset >= 20:
        return op.Gelu(x, approximate=approximate) if approximate != "none" else op.Gelu(x)
    import_domain(op.model, DOMAIN)
    return op.Gelu(x, _domain=DOMAIN, approximate=approximate)


class GeluErf(FusionRule):
    """0.5 * x * (1 + erf(x / √2)) -> Gelu(x). `variant` picks the exporter's operation order."""

    VARIANTS = ("div-half-outer", "div-half-inner", "mul-half-outer", "mul-half-inner")

    def __init__(self, opset: int, variant: str) -> None:
        self.opset = opset
        self.variant = variant
        self.name = f"gelu-erf-{variant}"

    def pattern(self, op: PatternBuilder, x: Any) -> Any:
        if self.variant.startswith("div"):
            arg = op.Div(x, op.const("sqrt2"))
        else:
            arg = op.Mul(x, op.const("inv_sqrt2"))
        one_plus = op.Add(op.Erf(arg), op.const("one"))
        if self.variant.endswith("half-outer"):
            return op.Mul(op.Mul(x, one_plus), op.const("half"))
        return op.Mul(op.Mul(x, op.const("half")), one_plus)

    def check(self, match: Match, **b: Any) -> str | None:
        want = {"one": 1.0, "half": 0.5}
        if "sqrt2" in b:
            want["sqrt2"] = math.sqrt(2.0)
        else:
            want["inv_sqrt2"] = 1 / math.sqrt(2.0)
        return _check_consts(b["x"], b, want)

    def rewrite(self, op: RewriteBuilder, **b: Any) -> Value:
        return _emit_gelu(op, b["x"], self.opset, "none")


class GeluTanh(FusionRule):
    """0.5 * x * (1 + tanh(√(2/π) (x + 0.044715 x³))) -> Gelu(x, approximate="tanh")."""

    def __init__(self, opset: int, variant: str) -> None:
        self.opset = opset
        self.variant = variant
        self.name = f"gelu-tanh-{variant}"

    def pattern(self, op: PatternBuilder, x: Any) -> Any:
        cube = op.Mul(op.Pow(x, op.const("three")), op.const("c"))
        inner = op.Tanh(op.Mul(op.Add(x, cube), op.const("k")))
        one_plus = op.Add(inner, op.const("one"))
        if self.variant == "half-outer":
            return op.Mul(op.Mul(x, one_plus), op.const("half"))
        return op.Mul(op.Mul(x, op.const("half")), one_plus)

    def check(self, match: Match, **b: Any) -> str | None:
        return _check_consts(b["x"], b, {"three": 3.0, "c": 0.044715, "k": math.sqrt(2.0 / math.pi),
                                         "one": 1.0, "half": 0.5})

    def rewrite(self, op: RewriteBuilder, **b: Any) -> Value:
        return _emit_gelu(op, b["x"], self.opset, "tanh")


class BiasGeluFusion(FusionRule):
    """Gelu(Add(x, bias)) -> ai.lepton::BiasGelu(x, bias), bias a constant over the last axis."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.name = f"bias-gelu{'-lepton' if domain else ''}"

    def pattern(self, op: PatternBuilder, x: Any, bias: Any) -> Any:
        return op.Gelu(op.Add(x, bias), _domain=self.domain, _name="gelu")

    @staticmethod
    def _orient(x: Value, bias: Value) -> tuple[Value, Value]:
        # Add is commutative and both operands are plain variables: put the constant second.
        if constant_value(x) is not None and constant_value(bias) is None:
            return bias, x
        return x, bias

    def check(self, match: Match, x: Value, bias: Value, gelu: Node) -> str | None:
        x, bias = self._orient(x, bias)
        c = constant_value(bias)
        if c is None or c.ndim != 1:
            return "bias is not a constant vector"
        dims = dims_of(x)
        if dims is None or len(dims) < 1 or dims[-1] != c.shape[0]:
            return "bias length does not match the last axis of x"
        if not is_float_value(x):
            return "not floating point"
        return None

    def rewrite(self, op: RewriteBuilder, x: Value, bias: Value, gelu: Node) -> Value:
        x, bias = self._orient(x, bias)
        import_domain(op.model, DOMAIN)
        approx = gelu.attr("approximate", "none")
        approx = approx.decode() if isinstance(approx, bytes) else approx
        return op.BiasGelu(x, bias, _domain=DOMAIN, approximate=approx)


def gelu_rules(opset: int) -> list[Rule]:
    return [*(GeluErf(opset, v) for v in GeluErf.VARIANTS), GeluTanh(opset, "half-outer"),
            GeluTanh(opset, "half-inner"), BiasGeluFusion(""), BiasGeluFusion(DOMAIN)]
