"""Activation fusion: Conv / Gemm / MatMul followed by an activation become one fused op.

`Conv -> act` becomes `ai.lepton::FusedConv`, `Gemm -> act` `ai.lepton::FusedGemm` and
`MatMul -> act` `ai.lepton::FusedMatMul`, each with the producer's attributes plus `activation`
and `activation_params` (see `ops.py`). Activations recognised (one rule class each):

* Relu, Tanh, Sigmoid, LeakyRelu (alpha), HardSigmoid (alpha, beta), HardSwish (the op, opset 14+);
* Clip with constant scalar min/max (Relu6 is Clip(0, 6)); min/max from inputs (opset 11+) or
  attributes (older opsets);
* SiLU written `x * Sigmoid(x)`;
* HardSwish written `x * HardSigmoid(x; 1/6, 0.5)` or `x * Clip(x + 3, 0, 6) / 6`.

Legality: the producer's output has no other user (engine-enforced), the producer is a plain
(ungrouped or grouped) Conv / Gemm / MatMul on floats, and the activation's parameters are
constants. Fused ops are not re-fused (an activation after a fused op is left alone).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton_ir import Node, Value

from ..rewrite import Match, PatternBuilder, RewriteBuilder, Rule
from ..util import constant_value
from .common import FusionRule, import_domain, is_float_value, node_attrs, rank_of, scalar_of
from .ops import DOMAIN

PRODUCERS = {"Conv": "FusedConv", "Gemm": "FusedGemm", "MatMul": "FusedMatMul"}

_F32_MAX = float(np.finfo(np.float32).max)


def clip_bounds(node: Node) -> tuple[float, float] | str:
    """Constant (min, max) of a Clip node in either opset form, or why they are not constant."""
    if "min" in node.attrs or "max" in node.attrs:
        return float(node.attr("min", -_F32_MAX)), float(node.attr("max", _F32_MAX))
    lo, hi = -_F32_MAX, _F32_MAX
    ins = node.inputs
    if len(ins) > 1 and ins[1] is not None:
        v = scalar_of(ins[1])
        if v is None:
            return "Clip min is not a constant scalar"
        lo = v
    if len(ins) > 2 and ins[2] is not None:
        v = scalar_of(ins[2])
        if v is None:
            return "Clip max is not a constant scalar"
        hi = v
    return lo, hi


def _close(a: float | None, b: float, tol: float = 1e-6) -> bool:
    return a is not None and abs(a - b) <= tol * max(1.0, abs(b))


class _ActivationRule(FusionRule):
    """Base: `act(P(x, w, ...))` -> `ai.lepton::FusedP(x, w, ..., activation=...)`."""

    activation = ""

    def __init__(self, producer: str) -> None:
        self.producer = producer
        self.name = f"fuse-{producer.lower()}-{type(self).__name__.lower()}"

    def _producer(self, op: PatternBuilder, x: Any, w: Any) -> Any:
        return getattr(op, self.producer)(x, w, _allow_other_inputs=self.producer != "MatMul", _name="prod")

    def act_pattern(self, op: PatternBuilder, y: Any) -> Any:
        raise NotImplementedError

    def pattern(self, op: PatternBuilder, x: Any, w: Any) -> Any:
        return self.act_pattern(op, self._producer(op, x, w))

    def params(self, b: dict[str, Any]) -> list[float] | str:
        """The activation's parameters, or why the match is not this activation."""
        return []

    def check(self, match: Match, **b: Any) -> str | None:
        prod: Node = b["prod"]
        if not is_float_value(prod.outputs[0]) and not is_float_value(prod.inputs[0]):
            return "not a floating-point producer (or its type is unknown)"
        p = self.params(b)
        return p if isinstance(p, str) else None

    def rewrite(self, op: RewriteBuilder, **b: Any) -> Value:
        prod: Node = b["prod"]
        p = self.params(b)
        assert not isinstance(p, str)
        import_domain(op.model, DOMAIN)
        attrs: dict[str, Any] = dict(node_attrs(prod))
        attrs["activation"] = self.activation
        if p:
            attrs["activation_params"] = [float(v) for v in p]
        return getattr(op, PRODUCERS[self.producer])(*prod.inputs, _domain=DOMAIN, **attrs)


class Relu(_ActivationRule):
    activation = "Relu"

    def act_pattern(self, op: PatternBuilder, y: Any) -> Any:
        return op.Relu(y)


class Tanh(_ActivationRule):
    activation = "Tanh"

    def act_pattern(self, op: PatternBuilder, y: Any) -> Any:
        return op.Tanh(y)


class Sigmoid(_ActivationRule):
    activation = "Sigmoid"

    def act_pattern(self, op: PatternBuilder, y: Any) -> Any:
        return op.Sigmoid(y)


class LeakyRelu(_ActivationRule):
    activation = "LeakyRelu"

    def act_pattern(self, op: PatternBuilder, y: Any) -> Any:
        return op.LeakyRelu(y, _name="act")

    def params(self, b: dict[str, Any]) -> list[float]:
        return [float(b["act"].attr("alpha", 0.01))]


class HardSigmoid(_ActivationRule):
    activation = "HardSigmoid"

    def act_pattern(self, op: PatternBuilder, y: Any) -> Any:
        return op.HardSigmoid(y, _name="act")

    def params(self, b: dict[str, Any]) -> list[float]:
        return [float(b["act"].attr("alpha", 0.2)), float(b["act"].attr("beta", 0.5))]


class Clip(_ActivationRule):
    activation = "Clip"

    def act_pattern(self, op: PatternBuilder, y: Any) -> Any:
        return op.Clip(y, _allow_other_inputs=True, _name="act")

    def params(self, b: dict[str, Any]) -> list[float] | str:
        bounds = clip_bounds(b["act"])
        return bounds if isinstance(bounds, str) else list(bounds)


class HardSwish(_ActivationRule):
    activation = "HardSwish"

    def act_pattern(self, op: PatternBuilder, y: Any) -> Any:
        return op.HardSwish(y)


class SiLU(_ActivationRule):
    """x * Sigmoid(x) (both uses of x are the producer's output)."""

    activation = "SiLU"

    def act_pattern(self, op: PatternBuilder, y: Any) -> Any:
        return op.Mul(y, op.Sigmoid(y))


class HardSwishFromHardSigmoid(_ActivationRule):
    """x * HardSigmoid(x; alpha=1/6, beta=0.5) (PaddlePaddle exports)."""

    activation = "HardSwish"

    def act_pattern(self, op: PatternBuilder, y: Any) -> Any:
        return op.Mul(y, op.HardSigmoid(y, _name="act"))

    def params(self, b: dict[str, Any]) -> list[float] | str:
        act: Node = b["act"]
        if not (_close(act.attr("alpha", 0.2), 1 / 6) and _close(act.attr("beta", 0.5), 0.5)):
            return "HardSigmoid parameters are not (1/6, 0.5)"
        return []


class HardSwishFromClip(_ActivationRule):
    """x * Clip(x + 3, 0, 6) / 6 (PyTorch and Paddle exports)."""

    activation = "HardSwish"

    def act_pattern(self, op: PatternBuilder, y: Any) -> Any:
        clip = op.Clip(op.Add(y, op.const("three")), _allow_other_inputs=True, _name="act")
        return op.Div(op.Mul(y, clip), op.const("six"))

    def params(self, b: dict[str, Any]) -> list[float] | str:
        if not _close(scalar_of(b["three"]), 3.0) or not _close(scalar_of(b["six"]), 6.0):
            return "constants are not 3 and 6"
        bounds = clip_bounds(b["act"])
        if isinstance(bounds, str):
            return bounds
        if not (_close(bounds[0], 0.0) and _close(bounds[1], 6.0)):
            return "Clip bounds are not (0, 6)"
        r = rank_of(b["prod"].outputs[0])
        for k in ("three", "six"):
            c = constant_value(b[k])
            if c is not None and c.ndim > 0 and (r is None or c.ndim > r):
                return "a constant of higher rank would broadcast the output up"
        return []


ACTIVATION_RULES = (Relu, Tanh, Sigmoid, LeakyRelu, HardSigmoid, Clip, HardSwish, SiLU, HardSwishFromHardSigmoid,
                    HardSwishFromClip)


def activation_rules() -> list[Rule]:
    """Every activation rule for every producer."""
    return [cls(p) for p in PRODUCERS for cls in ACTIVATION_RULES]
