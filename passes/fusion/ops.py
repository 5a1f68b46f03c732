"""The fused operators of the `ai.lepton` domain and their reference implementations.

Every op the fusion rules create outside the standard ONNX domain is listed here with its exact
semantics, written in numpy and registered with `lepton_ir.register_reference_op`, so
`lepton_ir.evaluate` can run a fused model before it is lowered. The lowering passes
(`lower.py`) turn each of these back into standard ONNX or ONNX Runtime contrib ops.

onnx's inference does not know the domain: the rules copy the type of the value they replace
onto the fused op's output, and `SHAPE_FUNCTIONS` (registered with
`lepton_ir.register_shape_function`) give `lepton_ir.repropagate` each op's output types.

Ops (domain `ai.lepton`, version 1):

* `FusedConv(X, W, B?)`: Conv attributes plus `activation` (string) and `activation_params`
  (floats): `act(Conv(X, W, B))`.
* `FusedGemm(A, B, C?)`: Gemm attributes plus `activation`, `activation_params`.
* `FusedMatMul(A, B)`: `act(alpha * MatMul(A', B'))` where `transA`/`transB` swap the last two
  axes of A/B; attributes `alpha` (1.0), `transA`, `transB` (0), `activation`, `activation_params`.
* `Gelu(X)`: attribute `approximate` ("none" = erf form, "tanh"), as ONNX Gelu-20.
* `BiasGelu(X, bias)`: `Gelu(X + bias)`, bias 1-D over the last axis; attribute `approximate`.
* `LayerNormalization(X, Scale, B?)`: ONNX LayerNormalization-17 (attributes `axis`,
  `epsilon`), for models whose opset is older than 17.
* `SkipLayerNorm(X, skip, gamma, beta?)`: `LayerNormalization(X + skip, gamma, beta)` over the
  last axis; attribute `epsilon`.
* `Attention(Q, K, V, mask?)`: `Softmax(scale * Q @ K' + mask, axis=-1) @ V` with K' = K, or K
  with its last two axes swapped when `transB=1`; attributes `scale` (1.0), `transB` (0).

Activation names: Relu, Tanh, Sigmoid, LeakyRelu [alpha], Clip [min, max],
HardSigmoid [alpha, beta], HardSwish, SiLU.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_conv import _conv_implementation

import lepton_ir
from lepton_ir.shape_inference import infer_like

DOMAIN = "ai.lepton"

#: Activations the fused ops accept, with the number of `activation_params` each takes.
ACTIVATIONS: dict[str, int] = {
    "Relu": 0, "Tanh": 0, "Sigmoid": 0, "LeakyRelu": 1, "Clip": 2, "HardSigmoid": 2,
    "HardSwish": 0, "SiLU": 0,
}


def _erf(x: np.ndarray) -> np.ndarray:
    # math.erf is exact to double precision; vectorised because numpy has no erf.
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64))


def apply_activation(y: np.ndarray, activation: str | None, params: Sequence[float] | None) -> np.ndarray:
    """`activation(y)` in numpy, keeping y's dtype."""
    if not activation:
        return y
    p = list(params or [])
    dt = y.dtype
    if activation == "Relu":
        out = np.maximum(y, 0)
    elif activation == "Tanh":
        out = np.tanh(y)
    elif activation == "Sigmoid":
        out = 1.0 / (1.0 + np.exp(-y.astype(np.float64)))
    elif activation == "LeakyRelu":
        alpha = p[0] if p else 0.01
        out = np.where(y >= 0, y, y * alpha)
    elif activation == "Clip":
        lo, hi = (p + [-np.inf, np.inf][len(p):])[:2]
        out = np.clip(y, lo, hi)
    elif activation == "HardSigmoid":
        alpha, beta = (p + [0.2, 0.5][len(p):])[:2]
        out = np.clip(alpha * y.astype(np.float64) + beta, 0, 1)
    elif activation == "HardSwish":
        out = y * np.clip(y.astype(np.float64) / 6.0 + 0.5, 0, 1)
    elif activation == "SiLU":
        out = y / (1.0 + np.exp(-y.astype(np.float64)))
    else:
        raise ValueError(f"unknown activation {activation!r}")
    return np.asarray(out).astype(dt)


def gelu(x: np.ndarray, approximate: str = "none") -> np.ndarray:
    """ONNX Gelu-20 in numpy (computed in float64, returned in x's dtype)."""
    x64 = x.astype(np.float64)
    if approximate == "tanh":
        out = 0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
    else:
        out = 0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0)))
    return out.astype(x.dtype)


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray | None, axis: int, epsilon: float) -> np.ndarray:
    """ONNX LayerNormalization (first output only), computed in float64."""
    axis = axis if axis >= 0 else axis + x.ndim
    axes = tuple(range(axis, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    out = (x64 - mean) / np.sqrt(var + epsilon) * scale
    if bias is not None:
        out = out + bias
    return out.astype(x.dtype)


def _str(v: Any, default: str = "") -> str:
    if v is None:
        return default
    return v.decode() if isinstance(v, bytes) else str(v)


class FusedConv(OpRun):
    op_domain = DOMAIN

    def _run(self, X, W, B=None, activation=None, activation_params=None,  # type: ignore[override]
             auto_pad=None, dilations=None,
             group=None, kernel_shape=None, pads=None, strides=None, **_: Any):
        y = _conv_implementation(X, W, B, _str(auto_pad, "NOTSET"), dilations, group or 1, kernel_shape, pads,
                                 strides).astype(X.dtype)
        return (apply_activation(y, _str(activation), activation_params),)


class FusedGemm(OpRun):
    op_domain = DOMAIN

    def _run(self, A, B, C=None, alpha=None, beta=None,  # type: ignore[override]
             transA=None, transB=None, activation=None,
             activation_params=None, **_: Any):
        a = A.T if transA else A
        b = B.T if transB else B
        y = (1.0 if alpha is None else alpha) * (a @ b)
        if C is not None:
            y = y + (1.0 if beta is None else beta) * C
        return (apply_activation(np.asarray(y).astype(A.dtype), _str(activation), activation_params),)


class FusedMatMul(OpRun):
    op_domain = DOMAIN

    def _run(self, A, B, alpha=None, transA=None, transB=None,  # type: ignore[override]
             activation=None, activation_params=None,
             **_: Any):
        a = np.swapaxes(A, -1, -2) if transA else A
        b = np.swapaxes(B, -1, -2) if transB else B
        y = np.matmul(a, b)
        if alpha is not None and alpha != 1.0:
            y = y * alpha
        return (apply_activation(np.asarray(y).astype(A.dtype), _str(activation), activation_params),)


class Gelu(OpRun):
    op_domain = DOMAIN

    def _run(self, X, approximate=None, **_: Any):  # type: ignore[override]
        return (gelu(X, _str(approximate, "none")),)


class BiasGelu(OpRun):
    op_domain = DOMAIN

    def _run(self, X, bias, approximate=None, **_: Any):  # type: ignore[override]
        return (gelu((X + bias).astype(X.dtype), _str(approximate, "none")),)


class LayerNormalization(OpRun):
    op_domain = DOMAIN

    def _run(self, X, Scale, B=None, axis=None, epsilon=None, stash_type=None, **_: Any):  # type: ignore[override]
        return (layer_norm(X, Scale, B, -1 if axis is None else axis, 1e-5 if epsilon is None else epsilon),)


class SkipLayerNorm(OpRun):
    op_domain = DOMAIN

    def _run(self, X, skip, gamma, beta=None, epsilon=None, **_: Any):  # type: ignore[override]
        return (layer_norm((X + skip).astype(X.dtype), gamma, beta, -1, 1e-5 if epsilon is None else epsilon),)


def softmax_last(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed stably in float64."""
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class Attention(OpRun):
    op_domain = DOMAIN

    def _run(self, Q, K, V, mask=None, scale=None, transB=None, **_: Any):  # type: ignore[override]
        k = np.swapaxes(K, -1, -2) if transB else K
        s = np.matmul(Q.astype(np.float64), k.astype(np.float64)) * (1.0 if scale is None else scale)
        if mask is not None:
            s = s + mask
        return (np.matmul(softmax_last(s), V.astype(np.float64)).astype(Q.dtype),)


REFERENCE_OPS: dict[str, type[OpRun]] = {
    c.__name__: c for c in (FusedConv, FusedGemm, FusedMatMul, Gelu, BiasGelu, LayerNormalization, SkipLayerNorm,
                            Attention)
}


_FUSED_ATTRS = ("activation", "activation_params")


def _swap_last(t: Any, swap: bool) -> Any:
    """The type with its last two dims swapped (FusedMatMul's transA/transB, Attention's transB)."""
    if not swap or t is None or t.shape is None or len(t.shape) < 2:
        return t
    d = list(t.shape.dims)
    return lepton_ir.TensorType(t.dtype, lepton_ir.Shape(d[:-2] + [d[-1], d[-2]]))


def _matmul_like(n: lepton_ir.Node, ins: Sequence[Any]) -> list[Any]:
    a, b = _swap_last(ins[0], bool(n.attr("transA", 0))), _swap_last(ins[1], bool(n.attr("transB", 0)))
    return infer_like("MatMul", n, [a, b], drop=tuple(n.attrs))


def _attention(n: lepton_ir.Node, ins: Sequence[Any]) -> list[Any]:
    s = infer_like("MatMul", n, [ins[0], _swap_last(ins[1], bool(n.attr("transB", 0)))], drop=tuple(n.attrs))
    return infer_like("MatMul", n, [s[0], ins[2]], drop=tuple(n.attrs))


def _first_input(n: lepton_ir.Node, ins: Sequence[Any]) -> list[Any]:
    return [ins[0]] + [None] * (len(n.outputs) - 1)


#: Output types of every op above, for `lepton_ir.repropagate` (fn(node, input types) -> types).
SHAPE_FUNCTIONS: dict[str, Any] = {
    "FusedConv": lambda n, ins: infer_like("Conv", n, ins, drop=_FUSED_ATTRS),
    "FusedGemm": lambda n, ins: infer_like("Gemm", n, ins, drop=_FUSED_ATTRS),
    "FusedMatMul": _matmul_like,
    "Gelu": _first_input,
    "BiasGelu": lambda n, ins: infer_like("Add", n, ins, drop=tuple(n.attrs)),
    "LayerNormalization": _first_input,
    "SkipLayerNorm": lambda n, ins: infer_like("Add", n, ins[:2], drop=tuple(n.attrs)),
    "Attention": _attention,
}


def register_reference_ops() -> None:
    """Make `lepton_ir.evaluate` able to run every `ai.lepton` op, and `lepton_ir.repropagate`
    infer their types (idempotent)."""
    for name, impl in REFERENCE_OPS.items():
        lepton_ir.register_reference_op(DOMAIN, name, impl)
    for name, fn in SHAPE_FUNCTIONS.items():
        lepton_ir.register_shape_function(DOMAIN, name, fn)


register_reference_ops()
