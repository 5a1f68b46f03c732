"""Layer normalization: recognise the decomposed form, fold affine maps into it, fuse the residual.

Decomposed form (what PyTorch < 1.13 / Paddle exporters emit)::

    mean = ReduceMean(x, axes)            d = Sub(x, mean)
    var  = ReduceMean(Pow(d, 2) | Mul(d, d), axes)
    y    = Div(d, Sqrt(Add(var, eps)))

becomes `LayerNormalization(x, ones, axis=-k, epsilon=eps)` (opset >= 17) or the same op in the
`ai.lepton` domain (older opsets). A following `Mul(y, gamma)` / `Add(y, beta)` is then folded into
the op's Scale / B by `LayerNormScaleFold` / `LayerNormBiasFold`, so the usual
`... * gamma + beta` tail is absorbed whatever order the exporter used.

Legality of the decomposition: both ReduceMeans reduce the same axes, which are the last k axes of
x, with keepdims=1; the exponent is the constant 2; eps is a non-negative constant scalar added
to the *variance* inside the Sqrt (eps added after the Sqrt is a different function and does not
match); the normalised dims are static (the Scale tensor needs their size); x is float.
Affine folds need gamma/beta constant and varying only over the normalised axes.

`SkipLayerNormFusion`: `LayerNormalization(Add(x, skip), gamma, beta)` normalising only the last
axis, whose size is static, with gamma/beta 1-D of that size ->
`ai.lepton::SkipLayerNorm(x, skip, gamma, beta)` (defined with broadcasting, like the Add).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton_ir import Node, Value

from ..rewrite import Match, PatternBuilder, RewriteBuilder, Rule
from ..util import constant_value
from .common import (FusionRule, dims_of, import_domain, is_float_value, node_attrs, rank_of, scalar_of,
                     secondary_outputs_unused, shape_of)
from .ops import DOMAIN


def _reduce_axes(n: Node) -> list[int] | None:
    if "axes" in n.attrs:
        return [int(a) for a in n.attr("axes")]
    if len(n.inputs) > 1 and n.inputs[1] is not None:
        c = constant_value(n.inputs[1])
        return None if c is None else [int(a) for a in c.reshape(-1)]
    return None


def _trailing_axis(axes: list[int], rank: int | None) -> int | str:
    """The first axis if `axes` are exactly the last k axes (as a negative axis), else a reason."""
    k = len(axes)
    if k == 0:
        return "empty axes"
    if rank is None:
        if all(a < 0 for a in axes) and sorted(axes) == list(range(-k, 0)):
            return -k
        return "axes are not negative and the rank is unknown"
    norm = sorted(a % rank if -rank <= a < rank else 10 ** 9 for a in axes)
    if norm != list(range(rank - k, rank)):
        return f"axes {axes} are not the last {k} axes"
    return -k


class _LayerNormDecomposed(FusionRule):
    #: True for the variants that also match the `* gamma + beta` tail (used when the normalised
    #: dims are not known from x's type: gamma's shape gives them).
    affine_tail = False

    def __init__(self, opset: int) -> None:
        self.opset = opset

    def _variance(self, op: PatternBuilder, d: Any) -> Any:
        raise NotImplementedError

    def pattern(self, op: PatternBuilder, x: Any) -> Any:
        mean = op.ReduceMean(x, _allow_other_inputs=True, _name="rm1")
        d = op.Sub(x, mean)
        var = op.ReduceMean(self._variance(op, d), _allow_other_inputs=True, _name="rm2")
        y = op.Div(d, op.Sqrt(op.Add(var, op.const("eps"))))
        if self.affine_tail:
            y = op.Add(op.Mul(y, op.const("gamma")), op.const("beta"))
        return y

    def _plan(self, x: Value, b: dict[str, Any]) -> tuple[int, float, tuple[int, ...]] | str:
        rm1, rm2 = b["rm1"], b["rm2"]
        if not is_float_value(x) and x.dtype is not None:
            return "input is not float"
        for rm in (rm1, rm2):
            if rm.attr("keepdims", 1) != 1:
                return "ReduceMean with keepdims=0"
        a1, a2 = _reduce_axes(rm1), _reduce_axes(rm2)
        if a1 is None or a2 is None:
            return "ReduceMean axes are not explicit constants"
        r = rank_of(x)
        ax1, ax2 = _trailing_axis(a1, r), _trailing_axis(a2, r)
        if isinstance(ax1, str):
            return ax1
        if isinstance(ax2, str):
            return ax2
        if ax1 != ax2:
            return "the two ReduceMeans reduce different axes"
        eps_c = constant_value(b["eps"])
        eps = scalar_of(b["eps"])
        if eps is None or eps < 0:
            return "epsilon is not a non-negative constant scalar"
        if eps_c is not None and eps_c.ndim > 0 and (r is None or eps_c.ndim > r):
            return "epsilon constant would broadcast the output up"
        two = scalar_of(b.get("two")) if "two" in b else 2.0
        if two != 2.0:
            return "exponent is not 2"
        k = -ax1
        dims = dims_of(x)
        norm = dims[ax1:] if dims is not None else None
        if self.affine_tail:
            consts = [constant_value(b["gamma"]), constant_value(b["beta"])]
            for c in consts:
                if c is None or c.ndim > k:
                    return "gamma/beta are not constants of rank <= the normalised rank"
            g = consts[0]
            if norm is None or any(not isinstance(d, int) for d in norm):
                if g.ndim != k:  # type: ignore[union-attr]
                    return "normalised dims unknown and gamma does not give them"
                norm = list(g.shape)  # type: ignore[union-attr]
            try:
                for c in consts:
                    if np.broadcast_shapes(c.shape, tuple(norm)) != tuple(norm):  # type: ignore[union-attr]
                        return "gamma/beta do not broadcast to the normalised shape"
            except ValueError:
                return "gamma/beta do not broadcast to the normalised shape"
        if x.dtype is None:
            return "input type unknown"
        if norm is None or any(not isinstance(d, int) for d in norm):
            return "normalised dims are not static"
        return ax1, eps, tuple(norm)  # type: ignore[arg-type]

    def check(self, match: Match, **b: Any) -> str | None:
        p = self._plan(b["x"], b)
        return p if isinstance(p, str) else None

    def rewrite(self, op: RewriteBuilder, **b: Any) -> Value:
        x = b["x"]
        plan = self._plan(x, b)
        assert not isinstance(plan, str)
        axis, eps, norm = plan
        dt = x.dtype.numpy()
        ins = [x]
        if self.affine_tail:
            for k in ("gamma", "beta"):
                c = constant_value(b[k])
                ins.append(op.const(np.broadcast_to(c, norm).astype(dt), name=f"ln_{k}"))  # type: ignore[arg-type]
        else:
            ins.append(op.const(np.ones(norm, dtype=dt), name="ln_scale"))
        if self.opset >= 17:
            return op.LayerNormalization(*ins, axis=axis, epsilon=float(eps))
        import_domain(op.model, DOMAIN)
        return op.LayerNormalization(*ins, _domain=DOMAIN, axis=axis, epsilon=float(eps))


class LayerNormFromPow(_LayerNormDecomposed):
    """The decomposed LayerNorm with the variance as ReduceMean(Pow(d, 2))."""

    name = "layernorm-from-pow"

    def _variance(self, op: PatternBuilder, d: Any) -> Any:
        return op.Pow(d, op.const("two"))


class LayerNormFromMul(_LayerNormDecomposed):
    """The decomposed LayerNorm with the variance as ReduceMean(Mul(d, d))."""

    name = "layernorm-from-mul"

    def _variance(self, op: PatternBuilder, d: Any) -> Any:
        return op.Mul(d, d)


class LayerNormAffineFromPow(LayerNormFromPow):
    """Pow form with its `* gamma + beta` tail (when only gamma tells the normalised size)."""

    name = "layernorm-affine-from-pow"
    affine_tail = True


class LayerNormAffineFromMul(LayerNormFromMul):
    """Mul form with its `* gamma + beta` tail."""

    name = "layernorm-affine-from-mul"
    affine_tail = True


def _norm_vector(c: np.ndarray, x: Value, ln: Node) -> np.ndarray | str:
    """`c` as a tensor of the normalised shape, if it only varies over the normalised axes."""
    dims = dims_of(x)
    if dims is None:
        return "input rank unknown"
    r = len(dims)
    axis = int(ln.attr("axis", -1))
    axis = axis + r if axis < 0 else axis
    norm = dims[axis:]
    if any(not isinstance(d, int) for d in norm):
        return "normalised dims are not static"
    if c.ndim > r:
        return "constant would broadcast the output up"
    padded = (1,) * (r - c.ndim) + tuple(c.shape)
    if any(d != 1 for d in padded[:axis]):
        return "constant varies over non-normalised axes"
    if any(d not in (1, n) for d, n in zip(padded[axis:], norm)):
        return "constant does not broadcast to the normalised shape"
    return np.broadcast_to(c.reshape(padded[axis:]), tuple(norm))


class _LayerNormAffineFold(FusionRule):
    follower = ""

    def __init__(self, domain: str = "", op_type: str = "LayerNormalization") -> None:
        self.domain = domain
        self.op_type = op_type
        # Scale/B position: LayerNormalization(X, Scale, B), SkipLayerNorm(X, skip, gamma, beta).
        self.first = 2 if op_type == "SkipLayerNorm" else 1
        kind = "scale" if self.follower == "Mul" else "bias"
        self.name = f"{op_type.lower()}-{kind}-fold{'-lepton' if domain else ''}"

    def pattern(self, op: PatternBuilder, x: Any, c: Any) -> Any:
        ln = getattr(op, self.op_type)(x, _allow_other_inputs=True, _domain=self.domain, _name="ln")
        return getattr(op, self.follower)(ln, c)

    def check(self, match: Match, x: Value, c: Value, ln: Node) -> str | None:
        if not secondary_outputs_unused(ln):
            return "Mean/InvStdDev outputs are used"
        cc = constant_value(c)
        if cc is None:
            return "operand is not constant"
        for v in ln.inputs[self.first:]:
            if v is not None and constant_value(v) is None:
                return "Scale/B are not constant"
        v = _norm_vector(cc, x, ln)
        return v if isinstance(v, str) else None

    def rewrite(self, op: RewriteBuilder, x: Value, c: Value, ln: Node) -> Value:
        cc = constant_value(c)
        vec = _norm_vector(cc, x, ln)  # type: ignore[arg-type]
        assert not isinstance(vec, str)
        ins = list(ln.inputs)
        scale = constant_value(ins[self.first])
        has_bias = len(ins) > self.first + 1 and ins[self.first + 1] is not None
        bias = constant_value(ins[self.first + 1]) if has_bias else None
        assert scale is not None
        dt = scale.dtype
        s64 = np.broadcast_to(scale.astype(np.float64), vec.shape)
        b64 = None if bias is None else np.broadcast_to(bias.astype(np.float64), vec.shape)
        if self.follower == "Mul":
            s64 = s64 * vec
            b64 = None if b64 is None else b64 * vec
        else:
            b64 = vec.astype(np.float64) if b64 is None else b64 + vec
        new_ins = ins[:self.first] + [op.const(np.asarray(s64).astype(dt), name="ln_scale")]
        if b64 is not None:
            new_ins.append(op.const(np.asarray(b64).astype(dt), name="ln_bias"))
        return getattr(op, self.op_type)(*new_ins, _domain=self.domain, **node_attrs(ln))


class LayerNormScaleFold(_LayerNormAffineFold):
    """Mul(LayerNormalization(x, s, b), c) -> LayerNormalization(x, s*c, b*c)."""

    follower = "Mul"


class LayerNormBiasFold(_LayerNormAffineFold):
    """Add(LayerNormalization(x, s, b), c) -> LayerNormalization(x, s, b+c)."""

    follower = "Add"


class SkipLayerNormFusion(FusionRule):
    """LayerNormalization(Add(x, skip), gamma, beta) over the last axis -> ai.lepton::SkipLayerNorm."""

    def __init__(self, domain: str = "") -> None:
        self.domain = domain
        self.name = f"skip-layernorm{'-lepton' if domain else ''}"

    def pattern(self, op: PatternBuilder, x: Any, skip: Any) -> Any:
        return op.LayerNormalization(op.Add(x, skip), _allow_other_inputs=True, _domain=self.domain, _name="ln")

    def check(self, match: Match, x: Value, skip: Value, ln: Node) -> str | None:
        if not secondary_outputs_unused(ln):
            return "Mean/InvStdDev outputs are used"
        # SkipLayerNorm is LN(x + skip) with numpy broadcasting, so any shapes are legal as long as
        # the sum's last axis is the hidden size; the lowering only uses ORT's kernel when it can
        # prove the shapes equal.
        dx, ds = dims_of(x), dims_of(skip)
        if dx is None or ds is None or not dx or not ds:
            return "x or skip has unknown rank"
        hidden = [d for d in (dx[-1], ds[-1]) if d != 1]
        if any(not isinstance(d, int) for d in hidden) or len(set(hidden)) > 1:
            return "the hidden size is not static or does not match"
        axis = int(ln.attr("axis", -1))
        if axis not in (-1, max(len(dx), len(ds)) - 1):
            return "normalises more than the last axis"
        h = hidden[0] if hidden else 1
        for v in ln.inputs[1:]:
            if v is not None and shape_of(v) not in ((h,),):
                return "gamma/beta are not 1-D of the hidden size"
        if not is_float_value(x):
            return "not floating point"
        return None

    def rewrite(self, op: RewriteBuilder, x: Value, skip: Value, ln: Node) -> Value:
        import_domain(op.model, DOMAIN)
        return op.SkipLayerNorm(x, skip, *ln.inputs[1:], _domain=DOMAIN,
                                epsilon=float(ln.attr("epsilon", 1e-5)))


def normalization_rules(opset: int) -> list[Rule]:
    return [LayerNormFromPow(opset), LayerNormFromMul(opset), LayerNormAffineFromPow(opset),
            LayerNormAffineFromMul(opset), LayerNormScaleFold(""), LayerNormBiasFold(""),
            LayerNormScaleFold(DOMAIN), LayerNormBiasFold(DOMAIN), LayerNormScaleFold(DOMAIN, "SkipLayerNorm"),
            LayerNormBiasFold(DOMAIN, "SkipLayerNorm"), SkipLayerNormFusion(""), SkipLayerNormFusion(DOMAIN)]
