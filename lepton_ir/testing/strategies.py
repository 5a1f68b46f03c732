"""Hypothesis strategies that generate random, valid ONNX models.

Public API for plugin authors who want to property-test graph passes against
ONNX Runtime::

    from hypothesis import given, settings
    from lepton_ir.testing.strategies import onnx_models, inputs_for

    @settings(deadline=None)  # building a model takes ~10-50 ms; large max_nodes more
    @given(onnx_models(ops=["Conv", "BatchNormalization", "Relu"]))
    def test_my_pass(model):
        feeds = inputs_for(model, seed=0)
        ...  # run model and my_pass(model) in ORT, compare outputs

How models are built: a pool of available values with known shapes (a shape
is a tuple of ints and dim-name strings such as ``"N"``) and conservative
value intervals is grown one *step* at a time.  Each step picks an entry of
:data:`OPS` (the registry) whose precondition some pool value satisfies,
draws that value (biased toward recent values for chains, sometimes old ones
for fan-out), computes the output shape and value interval itself and adds
the node(s).  The intervals are what keeps every model numerically safe:
Sqrt/Log/Div/Pow/Exp/Cast-to-float16 only see inputs whose interval makes
them finite (guards insert Abs/Clip where needed), and a step whose output
interval would overflow its dtype is rolled back.

Every generated model passes ``onnx.checker.check_model(m, full_check=True)``
and runs in ONNX Runtime (CPU) with finite outputs on inputs from
:func:`inputs_for`.  Intermediate shapes are recorded as ``value_info``; the
symbolic-dim size ranges and input value ranges the generator assumed are in
``metadata_props`` (:data:`META_DIM_RANGES`, :data:`META_INPUT_RANGES`).

Adding an op: write ``_b_myop(b, x) -> _Val`` (draw attributes with ``b.int``/
``b.choice``/``b.flag`` so they shrink, create weights with ``b.weight``/
``b.const``, emit with ``b.emit(op, inputs, attrs, shape=..., dtype=..., lo=...,
hi=...)`` giving the output shape and a conservative value interval), optionally
a precondition ``_p_myop(b, x) -> bool``, and add one :class:`OpEntry` to
:data:`OPS`.  The builder API is internal to this module and may change.

Shrinking: every step is one hypothesis span that starts with its own "stop"
draw, and all structural choices shrink toward the first option, so failing
examples shrink toward fewer nodes and toward the first (simplest) entries of
:data:`OPS` (Relu, Identity, Add, ...).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from hypothesis import assume
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "Dim",
    "Shape",
    "OpEntry",
    "OPS",
    "PRESETS",
    "onnx_models",
    "graphs",
    "pattern_models",
    "inputs_for",
    "model_inputs",
    "op_names",
    "META_DIM_RANGES",
    "META_INPUT_RANGES",
]

Dim = int | str
"""One dimension: a concrete size or a symbolic dim name."""
Shape = tuple[Dim, ...]
"""A tensor shape as this module tracks it."""

#: metadata_props key: JSON ``{dim_name: [min, max]}`` of the sizes a symbolic dim may take.
META_DIM_RANGES = "lepton.testing.dim_ranges"
#: metadata_props key: JSON ``{input_name: [lo, hi]}`` of the value range each input was assumed to have.
META_INPUT_RANGES = "lepton.testing.input_ranges"

_TP = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64, "bool": TensorProto.BOOL}
_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "bool": np.bool_}
_FROM_TP = {v: k for k, v in _TP.items()}
_FLOATS = ("float32", "float16")
_ALL = ("float32", "float16", "int64")
# Largest magnitude a value's conservative interval may reach.  Far below the
# dtype's max so products of two admissible values stay finite in float32, and
# float16 accumulations (Conv/MatMul/Reduce sums are bounded the same way) cannot overflow.
_LIMIT = {"float32": 1e12, "float16": 3.0e4, "int64": 1e12, "bool": 1.0}
# Size ranges of the symbolic dims; inputs_for draws concrete sizes from these.
_DIM_RANGES = {"N": (1, 3), "S": (2, 6), "H": (4, 9), "W": (4, 9), "L": (4, 12)}
_INT64_MAX = 2**63 - 1


class _Reject(Exception):
    """Raised by a builder when the step cannot be built here; the step is rolled back."""


@dataclass
class _Val:
    name: str
    shape: Shape
    dtype: str
    lo: float
    hi: float

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def bound(self) -> float:
        return max(abs(self.lo), abs(self.hi))

    @property
    def is_float(self) -> bool:
        return self.dtype in _FLOATS

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)


# --------------------------------------------------------------------------- helpers


def _prod(dims: Iterable[int]) -> int:
    p = 1
    for d in dims:
        p *= d
    return p


def _bcast(*shapes: Shape) -> Shape | None:
    """Numpy broadcast of shapes, or None when not provably compatible (e.g. 'N' vs 4)."""
    r = max(len(s) for s in shapes)
    out: list[Dim] = []
    for i in range(r):
        dims = {s[len(s) - r + i] for s in shapes if len(s) - r + i >= 0}
        non1 = {d for d in dims if d != 1}
        if len(non1) > 1:
            return None
        out.append(non1.pop() if non1 else 1)
    return tuple(out)


def _iv_mul(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    p = [a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]]
    return min(p), max(p)


def _sigmoid(x: float) -> float:
    if x < -60:
        return 0.0
    if x > 60:
        return 1.0
    return 1.0 / (1.0 + math.exp(-x))


def _hardswish(x: float) -> float:
    return x * min(max(x + 3.0, 0.0), 6.0) / 6.0


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# --------------------------------------------------------------------------- builder


@functools.lru_cache(maxsize=4096)
def _integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    # Building st.integers() validates its arguments each time; models make ~50 draws each.
    return st.integers(lo, hi)


_BOOLEANS = st.booleans()


@dataclass(repr=False)
class _Config:
    ops: tuple[str, ...] | None
    min_nodes: int
    max_nodes: int
    dtypes: tuple[str, ...]
    symbolic_dims: bool
    opset: int
    weights: dict[str, float]
    required: tuple[str, ...]

    def __repr__(self) -> str:  # hypothesis prints strategy reprs in failures: keep it short
        return (f"_Config(ops={self.ops}, nodes={self.min_nodes}..{self.max_nodes}, dtypes={self.dtypes}, "
                f"symbolic={self.symbolic_dims}, opset={self.opset}, required={self.required})")


class _Builder:
    """Mutable state of one model under construction (pool, nodes, initializers)."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any], rng: np.random.Generator, cfg: _Config) -> None:
        self.draw = draw
        self.rng = rng
        self.cfg = cfg
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[_Val] = []
        self.input_ranges: dict[str, tuple[float, float]] = {}
        self.pool: list[_Val] = []
        self.uses: dict[str, int] = {}
        self.info: dict[str, _Val] = {}
        self.dims: dict[str, tuple[int, int]] = {}
        self.n_compute = 0
        self._counter = 0
        self.accepts: dict[str, frozenset[str]] = {}
        self.perms: dict[str, list[int]] = {}  # Transpose outputs -> perm (see _ort_fp16_matmul_ok)

    # -- draws (structural choices go through hypothesis so they shrink) --
    def int(self, lo: int, hi: int) -> int:
        return self.draw(_integers(lo, hi)) if hi > lo else lo

    def choice(self, seq: Sequence[Any]) -> Any:
        """Shrinks toward seq[0]: list the simplest option first."""
        return seq[self.int(0, len(seq) - 1)] if len(seq) > 1 else seq[0]

    def flag(self) -> bool:
        return self.draw(_BOOLEANS)

    # -- transactions --
    def checkpoint(self) -> tuple:
        return (len(self.nodes), len(self.inits), list(self.pool), dict(self.uses), dict(self.info), self.n_compute)

    def rollback(self, cp: tuple) -> None:
        n, i, pool, uses, info, nc = cp
        del self.nodes[n:]
        del self.inits[i:]
        self.pool, self.uses, self.info, self.n_compute = pool, uses, info, nc

    def fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def dim_max(self, d: Dim) -> int:
        return d if isinstance(d, int) else self.dims.get(d, _DIM_RANGES.get(d, (1, 8)))[1]

    def allowed(self, dtype: str) -> bool:
        return dtype in self.cfg.dtypes

    # -- graph construction --
    def emit_n(self, op: str, inputs: Sequence[_Val | str | None], attrs: Mapping[str, Any] | None,
               outs: Sequence[tuple[Shape, str, float, float]], *, pool: bool = True) -> list[_Val]:
        vals = []
        for shape, dtype, lo, hi in outs:
            if not (math.isfinite(lo) and math.isfinite(hi)) or max(abs(lo), abs(hi)) > _LIMIT[dtype]:
                raise _Reject(f"{op} output interval [{lo}, {hi}] too wide for {dtype}")
            vals.append(_Val(self.fresh(op.lower()), tuple(shape), dtype, float(lo), float(hi)))
        in_names = ["" if v is None else (v if isinstance(v, str) else v.name) for v in inputs]
        # Trailing absent optional inputs are dropped, as exporters do.
        while in_names and in_names[-1] == "":
            in_names.pop()
        node = helper.make_node(op, in_names, [v.name for v in vals], name=self.fresh(f"n_{op}"), **(attrs or {}))
        self.nodes.append(node)
        for n in in_names:
            if n:
                self.uses[n] = self.uses.get(n, 0) + 1
        if op != "Constant":
            self.n_compute += 1
        if op == "Transpose":
            self.perms[vals[0].name] = list(attrs["perm"]) if attrs and "perm" in attrs else list(range(len(vals[0].shape)))[::-1]
        for v in vals:
            self.info[v.name] = v
            if pool and v.dtype != "bool":
                self.pool.append(v)
        return vals

    def emit(self, op: str, inputs: Sequence[_Val | str | None], attrs: Mapping[str, Any] | None = None, *,
             shape: Shape, dtype: str, lo: float, hi: float, pool: bool = True) -> _Val:
        return self.emit_n(op, inputs, attrs, [(shape, dtype, lo, hi)], pool=pool)[0]

    def const(self, arr: np.ndarray, prefix: str = "c", node: bool | None = None) -> _Val:
        """A constant: an initializer, or (sometimes, as exporters do) a Constant node."""
        arr = np.asarray(arr)
        dtype = _FROM_TP[helper.np_dtype_to_tensor_dtype(arr.dtype)]
        lo = float(arr.min()) if arr.size and dtype != "bool" else 0.0
        hi = float(arr.max()) if arr.size and dtype != "bool" else 0.0
        if node is None:
            node = bool(self.rng.random() < 0.25)
        if node:
            name = self.fresh(prefix)
            return self.emit("Constant", [], {"value": numpy_helper.from_array(arr, name)},
                             shape=tuple(arr.shape), dtype=dtype, lo=lo, hi=hi, pool=False)
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(arr, name))
        return _Val(name, tuple(arr.shape), dtype, lo, hi)

    def ints(self, values: Sequence[int], prefix: str = "i") -> _Val:
        return self.const(np.asarray(values, dtype=np.int64), prefix)

    def scalar(self, value: float, dtype: str, prefix: str = "s") -> _Val:
        return self.const(np.asarray(value, dtype=_NP[dtype]), prefix)

    def weight(self, shape: Sequence[int], fan_in: int, dtype: str, prefix: str = "w") -> _Val:
        """He-initialised weight: keeps activations O(1) through chains of layers."""
        w = self.rng.standard_normal(tuple(shape)) * math.sqrt(2.0 / max(fan_in, 1))
        return self.const(w.astype(_NP[dtype]), prefix, node=False)

    def uniform(self, shape: Sequence[int], lo: float, hi: float, dtype: str, prefix: str = "u") -> _Val:
        if dtype == "int64":
            return self.const(self.rng.integers(int(lo), int(hi) + 1, size=tuple(shape)).astype(np.int64), prefix)
        return self.const(self.rng.uniform(lo, hi, size=tuple(shape)).astype(_NP[dtype]), prefix)

    def squash(self, x: _Val, limit: float) -> _Val:
        """Clip x into [-limit, limit] when its interval is wider (guards Exp, Pow, casts)."""
        if x.bound <= limit:
            return x
        if x.dtype == "int64":
            limit = float(int(limit))
        lo_c, hi_c = self.scalar(-limit, x.dtype), self.scalar(limit, x.dtype)
        return self.emit("Clip", [x, lo_c, hi_c], shape=x.shape, dtype=x.dtype,
                         lo=min(max(x.lo, -limit), limit), hi=max(min(x.hi, limit), -limit))

    def pick(self, pred: Callable[["_Builder", _Val], bool], dtypes: Sequence[str]) -> _Val:
        """Draw a pool value satisfying pred: usually one of the newest two (chains), sometimes any (fan-out)."""
        cands = [v for v in reversed(self.pool) if v.dtype in dtypes and v.dtype in self.cfg.dtypes and pred(self, v)]
        if not cands:
            raise _Reject("no candidate")
        if self.int(0, 3) == 3:
            return cands[self.int(0, len(cands) - 1)]
        return cands[self.int(0, min(1, len(cands) - 1))]

    def partner(self, x: _Val, pred: Callable[[_Val], bool]) -> _Val | None:
        cands = [v for v in reversed(self.pool) if v is not x and v.dtype == x.dtype and pred(v)]
        if not cands:
            return None
        return cands[self.int(0, len(cands) - 1)]


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class OpEntry:
    """One registry entry: adding an op type is adding one of these to :data:`OPS`.

    name: key used by ``ops=``/``bias=`` (usually the ONNX op type; patterns use preset names).
    weight: base choice weight (multiplied by ``bias``).
    pred: precondition on a candidate input value.
    build: emits the node(s) for the chosen value; raises _Reject to roll the step back.
    dtypes: input dtypes the op accepts (ORT CPU kernels).
    cost: upper estimate of compute nodes emitted (budgeting against max_nodes).
    """

    name: str
    weight: float
    pred: Callable[[_Builder, _Val], bool]
    build: Callable[[_Builder, _Val], _Val]
    dtypes: tuple[str, ...] = _FLOATS
    cost: int = 1


def _any(b: _Builder, v: _Val) -> bool:
    return True


def _rank_ge(n: int) -> Callable[[_Builder, _Val], bool]:
    return lambda b, v: v.rank >= n


# ---- unary element-wise


def _b_relu(b: _Builder, x: _Val) -> _Val:
    return b.emit("Relu", [x], shape=x.shape, dtype=x.dtype, lo=max(x.lo, 0.0), hi=max(x.hi, 0.0))


def _b_leaky(b: _Builder, x: _Val) -> _Val:
    alpha = b.choice([0.01, 0.1, 0.2])
    f = lambda t: t if t >= 0 else alpha * t
    return b.emit("LeakyRelu", [x], {"alpha": alpha}, shape=x.shape, dtype=x.dtype, lo=f(x.lo), hi=f(x.hi))


def _b_elu(b: _Builder, x: _Val) -> _Val:
    alpha = b.choice([1.0, 0.5])
    f = lambda t: t if t >= 0 else alpha * (math.exp(max(t, -60)) - 1)
    return b.emit("Elu", [x], {"alpha": alpha}, shape=x.shape, dtype=x.dtype, lo=f(x.lo), hi=f(x.hi))


def _b_sigmoid(b: _Builder, x: _Val) -> _Val:
    return b.emit("Sigmoid", [x], shape=x.shape, dtype=x.dtype, lo=_sigmoid(x.lo), hi=_sigmoid(x.hi))


def _b_hardsigmoid(b: _Builder, x: _Val) -> _Val:
    alpha, beta = b.choice([(0.2, 0.5), (1.0 / 6.0, 0.5)])
    f = lambda t: min(max(alpha * t + beta, 0.0), 1.0)
    return b.emit("HardSigmoid", [x], {"alpha": alpha, "beta": beta}, shape=x.shape, dtype=x.dtype, lo=f(x.lo), hi=f(x.hi))


def _b_hardswish(b: _Builder, x: _Val) -> _Val:
    lo = -0.375 if x.lo < 0 else _hardswish(x.lo)
    hi = max(_hardswish(x.hi), _hardswish(x.lo), 0.0)
    return b.emit("HardSwish", [x], shape=x.shape, dtype=x.dtype, lo=lo, hi=hi)


def _b_tanh(b: _Builder, x: _Val) -> _Val:
    return b.emit("Tanh", [x], shape=x.shape, dtype=x.dtype, lo=math.tanh(x.lo), hi=math.tanh(x.hi))


def _b_abs(b: _Builder, x: _Val) -> _Val:
    lo = 0.0 if x.lo <= 0 <= x.hi else min(abs(x.lo), abs(x.hi))
    return b.emit("Abs", [x], shape=x.shape, dtype=x.dtype, lo=lo, hi=x.bound)


def _b_neg(b: _Builder, x: _Val) -> _Val:
    return b.emit("Neg", [x], shape=x.shape, dtype=x.dtype, lo=-x.hi, hi=-x.lo)


def _b_identity(b: _Builder, x: _Val) -> _Val:
    return b.emit("Identity", [x], shape=x.shape, dtype=x.dtype, lo=x.lo, hi=x.hi)


def _b_dropout(b: _Builder, x: _Val) -> _Val:
    # Inference-mode Dropout (no training_mode input): an identity that passes must remove.
    ins: list[_Val | None] = [x]
    if b.flag():
        ins.append(b.scalar(b.choice([0.5, 0.1]), "float32", "ratio"))
    return b.emit("Dropout", ins, shape=x.shape, dtype=x.dtype, lo=x.lo, hi=x.hi)


def _b_exp(b: _Builder, x: _Val) -> _Val:
    x = b.squash(x, 10.0 if x.dtype == "float32" else 8.0)
    return b.emit("Exp", [x], shape=x.shape, dtype=x.dtype, lo=math.exp(x.lo), hi=math.exp(x.hi))


def _b_sqrt(b: _Builder, x: _Val) -> _Val:
    if x.lo < 0:
        x = _b_abs(b, x)
    return b.emit("Sqrt", [x], shape=x.shape, dtype=x.dtype, lo=math.sqrt(x.lo), hi=math.sqrt(x.hi))


def _b_log(b: _Builder, x: _Val) -> _Val:
    if x.lo < 1e-2:  # Log(|x| + 1): the usual exported "log1p" guard
        x = _b_abs(b, x)
        one = b.scalar(1.0, x.dtype)
        x = b.emit("Add", [x, one], shape=x.shape, dtype=x.dtype, lo=x.lo + 1, hi=x.hi + 1)
    return b.emit("Log", [x], shape=x.shape, dtype=x.dtype, lo=math.log(x.lo), hi=math.log(x.hi))


def _b_softmax(b: _Builder, x: _Val) -> _Val:
    axis = b.choice([-1] + list(range(x.rank)))
    lo = 0.0
    return b.emit("Softmax", [x], {"axis": axis}, shape=x.shape, dtype=x.dtype, lo=lo, hi=1.0)


def _b_clip(b: _Builder, x: _Val) -> _Val:
    kind = b.choice(["relu6", "minmax", "min", "max"])
    if x.dtype == "int64":
        mn, mx = (0, 6) if kind == "relu6" else (-int(b.int(0, 3)), int(b.int(1, 5)))
    else:
        mn, mx = (0.0, 6.0) if kind == "relu6" else (-b.choice([0.5, 1.0, 2.0]), b.choice([1.0, 0.5, 3.0]))
    ins: list[_Val | None] = [x, None, None]
    lo, hi = x.lo, x.hi
    if kind in ("relu6", "minmax", "min"):
        ins[1] = b.scalar(mn, x.dtype)
        lo, hi = max(lo, mn), max(hi, mn)
    if kind in ("relu6", "minmax", "max"):
        ins[2] = b.scalar(mx, x.dtype)
        lo, hi = min(lo, mx), min(hi, mx)
    return b.emit("Clip", ins, shape=x.shape, dtype=x.dtype, lo=lo, hi=hi)


# ---- binary element-wise


def _other_operand(b: _Builder, x: _Val, *, away_from_zero: bool = False) -> _Val:
    """Second operand of a broadcasting binary op: a constant of broadcastable shape, another pool value, or x."""
    mode = b.choice(["const", "pool", "self"])
    if mode == "pool":
        def ok(v: _Val) -> bool:
            if _bcast(x.shape, v.shape) is None:
                return False
            return not away_from_zero or v.lo >= 0.1 or v.hi <= -0.1
        y = b.partner(x, ok)
        if y is not None:
            return y
        mode = "const"
    if mode == "self" and (not away_from_zero or x.lo >= 0.1 or x.hi <= -0.1):
        return x
    # constant: scalar, per-last-dim, per-channel, full, or a bigger-rank shape that broadcasts x up
    r = x.rank
    k = b.int(0, r)
    shape = [d if isinstance(d, int) and b.flag() else 1 for d in x.shape[r - k:]]
    if r <= 3 and b.int(0, 5) == 5:
        shape = [2] + [1] * (r - k) + shape
    if x.dtype == "int64":
        arr = b.rng.integers(1, 4, size=shape) * b.rng.choice([-1, 1], size=shape)
        return b.const(np.asarray(arr, np.int64))
    if away_from_zero:
        arr = b.rng.uniform(0.5, 2.0, size=shape) * b.rng.choice([-1.0, 1.0], size=shape)
    else:
        arr = b.rng.uniform(-1.0, 1.0, size=shape)
    return b.const(np.asarray(arr, _NP[x.dtype]))


def _binary(op: str) -> Callable[[_Builder, _Val], _Val]:
    def build(b: _Builder, x: _Val) -> _Val:
        y = _other_operand(b, x, away_from_zero=(op == "Div"))
        a, c = (x, y)
        if op != "Div" and b.flag():
            a, c = c, a  # exercise both broadcast directions
        shape = _bcast(a.shape, c.shape)
        if shape is None:
            raise _Reject("shapes")
        ia, ic = (a.lo, a.hi), (c.lo, c.hi)
        if op == "Add":
            lo, hi = ia[0] + ic[0], ia[1] + ic[1]
        elif op == "Sub":
            lo, hi = ia[0] - ic[1], ia[1] - ic[0]
        elif op == "Mul":
            lo, hi = _iv_mul(ia, ic)
        elif op == "Div":
            lo, hi = _iv_mul(ia, (1.0 / ic[1], 1.0 / ic[0]))
        elif op == "Max":
            lo, hi = max(ia[0], ic[0]), max(ia[1], ic[1])
        else:
            lo, hi = min(ia[0], ic[0]), min(ia[1], ic[1])
        return b.emit(op, [a, c], shape=shape, dtype=x.dtype, lo=lo, hi=hi)
    return build


def _b_pow(b: _Builder, x: _Val) -> _Val:
    x = b.squash(x, 1e3 if x.dtype == "float32" else 25.0)
    exps = [2.0, 3.0] + ([0.5, 1.5] if x.lo >= 0 else [])
    e = b.choice(exps)
    ev = b.scalar(e, x.dtype, "exp")
    cands = [x.lo**e, x.hi**e] + ([0.0] if x.lo <= 0 <= x.hi else [])
    return b.emit("Pow", [x, ev], shape=x.shape, dtype=x.dtype, lo=min(cands), hi=max(cands))


def _b_where(b: _Builder, x: _Val) -> _Val:
    # cond = Greater/Less(x, c): the masking pattern exporters emit
    cmp_op = b.choice(["Greater", "Less"])
    c = b.scalar(0.0 if x.dtype != "int64" else 0, x.dtype)
    cond = b.emit(cmp_op, [x, c], shape=x.shape, dtype="bool", lo=0, hi=1)
    y = _other_operand(b, x)
    shape = _bcast(cond.shape, x.shape, y.shape)
    if shape is None:
        raise _Reject("shapes")
    a, c2 = (x, y) if b.flag() else (y, x)
    return b.emit("Where", [cond, a, c2], shape=shape, dtype=x.dtype, lo=min(x.lo, y.lo), hi=max(x.hi, y.hi))


# ---- linear layers


def _window(b: _Builder, spatial: Shape, *, conv: bool, dilation: bool, max_k: int = 3) -> dict | None:
    """Kernel/stride/dilation/pads for Conv and pools; symbolic spatial dims get stride-1 'same' padding."""
    n = len(spatial)
    if any(isinstance(d, str) for d in spatial):
        ks = [b.choice([1, 3]) for _ in range(n)]
        dil = b.choice([1, 2]) if dilation else 1
        pads = [dil * (k - 1) // 2 for k in ks] * 2
        return {"k": ks, "s": [1] * n, "d": [dil] * n, "pads": pads, "out": list(spatial)}
    ks = [b.choice(list(range(1, max_k + 1))) for _ in range(n)]
    s = b.choice([1, 2])
    dil = b.choice([1, 2]) if dilation else 1
    mode = b.choice(["valid", "same", "asym"])
    if mode == "valid":
        pb = pe = [0] * n
    elif mode == "same":
        pb = [dil * (k - 1) // 2 for k in ks]
        pe = [dil * (k - 1) - p for k, p in zip(ks, pb)]
    else:
        pb = [b.int(0, k - 1) for k in ks]
        pe = [b.int(0, k - 1) for k in ks]
    if not conv:  # pools need pad < kernel
        pb = [min(p, k - 1) for p, k in zip(pb, ks)]
        pe = [min(p, k - 1) for p, k in zip(pe, ks)]
    out = [(d + p0 + p1 - dil * (k - 1) - 1) // s + 1 for d, k, p0, p1 in zip(spatial, ks, pb, pe)]
    if min(out) < 1:
        return None
    if not conv:
        # A pool window lying entirely in the padding gives -inf (MaxPool) or 0/0 (AveragePool
        # without count_include_pad); with dilation, pad < kernel does not rule that out.
        for d, k, p0, o in zip(spatial, ks, pb, out):
            for i in range(int(o)):
                if not any(0 <= i * s - p0 + j * dil < d for j in range(k)):
                    return None
    return {"k": ks, "s": [s] * n, "d": [dil] * n, "pads": pb + pe, "out": out}


def _p_conv(b: _Builder, x: _Val) -> bool:
    return x.rank in (3, 4) and isinstance(x.shape[1], int)


def _b_conv(b: _Builder, x: _Val) -> _Val:
    C = x.shape[1]
    assert isinstance(C, int)
    kind = b.choice(["plain", "depthwise", "grouped"])
    if kind == "depthwise":
        g, M = C, C * b.choice([1, 2])
    elif kind == "grouped":
        g = b.choice(_divisors(C))
        M = g * b.int(1, max(1, 8 // g))
    else:
        g, M = 1, b.int(1, 8)
    w = _window(b, x.shape[2:], conv=True, dilation=True)
    if w is None:
        raise _Reject("window")
    fan_in = (C // g) * _prod(w["k"])
    W = b.weight([M, C // g] + w["k"], fan_in, x.dtype)
    ins: list[_Val] = [x, W]
    attrs: dict[str, Any] = {"kernel_shape": w["k"], "pads": w["pads"], "strides": w["s"]}
    if any(d != 1 for d in w["d"]):
        attrs["dilations"] = w["d"]
    if g != 1:
        attrs["group"] = g
    warr = numpy_helper.to_array(_find_init(b, W.name)).astype(np.float64)
    bound = float(np.abs(warr).reshape(M, -1).sum(1).max()) * x.bound
    if b.flag():
        bias = b.uniform([M], -0.1, 0.1, x.dtype, "bias")
        ins.append(bias)
        bound += bias.bound
    return b.emit("Conv", ins, attrs, shape=(x.shape[0], M, *w["out"]), dtype=x.dtype, lo=-bound, hi=bound)


def _find_init(b: _Builder, name: str) -> onnx.TensorProto:
    for t in reversed(b.inits):
        if t.name == name:
            return t
    raise KeyError(name)


def _b_convtranspose(b: _Builder, x: _Val) -> _Val:
    C = x.shape[1]
    assert isinstance(C, int)
    g, mult = (C, b.choice([1, 2])) if b.flag() else (1, b.int(1, 8))
    spatial = x.shape[2:]
    n = len(spatial)
    attrs: dict[str, Any] = {}
    if any(isinstance(d, str) for d in spatial):
        ks = [b.choice([1, 3]) for _ in range(n)]
        s, dil, op_ = 1, 1, 0
        pads = [(k - 1) // 2 for k in ks] * 2
        out = list(spatial)
    else:
        ks = [b.choice([1, 2, 3]) for _ in range(n)]
        s = b.choice([1, 2])
        dil = b.choice([1, 2])
        op_ = b.int(0, s - 1)
        pads = [b.int(0, dil * (k - 1)) for k in ks] + [b.int(0, dil * (k - 1)) for k in ks]
        out = [s * (d - 1) + op_ + dil * (k - 1) + 1 - pads[i] - pads[i + n] for i, (d, k) in enumerate(zip(spatial, ks))]
        if min(out) < 1:
            raise _Reject("window")
    W = b.weight([C, mult] + ks, (C // g) * _prod(ks), x.dtype)
    warr = numpy_helper.to_array(_find_init(b, W.name)).astype(np.float64)
    # every output element receives each (input channel, kernel tap) at most once
    per_out = np.abs(warr).reshape(g, C // g, mult, -1).sum(axis=(1, 3))
    bound = float(per_out.max()) * x.bound
    attrs.update({"kernel_shape": ks, "strides": [s] * n, "pads": pads})
    if dil != 1:
        attrs["dilations"] = [dil] * n
    if op_:
        attrs["output_padding"] = [op_] * n
    if g != 1:
        attrs["group"] = g
    ins: list[_Val] = [x, W]
    M = g * mult
    if b.flag():
        bias = b.uniform([M], -0.1, 0.1, x.dtype, "bias")
        ins.append(bias)
        bound += bias.bound
    return b.emit("ConvTranspose", ins, attrs, shape=(x.shape[0], M, *out), dtype=x.dtype, lo=-bound, hi=bound)


def _p_gemm(b: _Builder, x: _Val) -> bool:
    return x.rank == 2 and (isinstance(x.shape[0], int) or isinstance(x.shape[1], int))


def _b_gemm(b: _Builder, x: _Val) -> _Val:
    trans_a = 1 if isinstance(x.shape[0], int) and (not isinstance(x.shape[1], int) or b.flag()) else 0
    K, M = (x.shape[0], x.shape[1]) if trans_a else (x.shape[1], x.shape[0])
    assert isinstance(K, int)
    N = b.int(1, 16)
    trans_b = b.int(0, 1)
    W = b.weight([N, K] if trans_b else [K, N], K, x.dtype)
    alpha = b.choice([1.0, 0.5, 2.0])
    beta = b.choice([1.0, 0.5])
    warr = numpy_helper.to_array(_find_init(b, W.name)).astype(np.float64)
    col = np.abs(warr).sum(axis=1 if trans_b else 0).max()
    bound = abs(alpha) * float(col) * x.bound
    attrs: dict[str, Any] = {}
    if trans_a:
        attrs["transA"] = 1
    if trans_b:
        attrs["transB"] = 1
    if alpha != 1.0:
        attrs["alpha"] = alpha
    if beta != 1.0:
        attrs["beta"] = beta
    ins: list[_Val] = [x, W]
    cshape = b.choice([[N], [1, N], [M, N], [1, 1], []])
    if b.int(0, 3) != 0 and all(isinstance(d, int) for d in cshape):
        c = b.uniform(cshape, -0.1, 0.1, x.dtype, "bias")
        ins.append(c)
        bound += abs(beta) * c.bound
    return b.emit("Gemm", ins, attrs, shape=(M, N), dtype=x.dtype, lo=-bound, hi=bound)


def _ort_fp16_matmul_ok(b: _Builder, v: _Val) -> bool:
    """ONNX Runtime 1.32 segfaults creating a session (level >= EXTENDED, its Transpose+MatMul fusion)
    for a float16 MatMul fed by a Transpose that moves a batch dim, e.g. perm [1, 0, 2] or [1, 2, 0].
    Keep float16 MatMul operands to Transposes that leave the leading dims in place."""
    perm = b.perms.get(v.name)
    return v.dtype != "float16" or perm is None or perm[:-2] == list(range(len(perm) - 2))


def _p_matmul(b: _Builder, x: _Val) -> bool:
    return x.rank >= 1 and isinstance(x.shape[-1], int) and _ort_fp16_matmul_ok(b, x)


def _b_matmul(b: _Builder, x: _Val) -> _Val:
    K = x.shape[-1]
    assert isinstance(K, int)
    variant = b.choice(["weight", "pool", "vector", "batched"])
    if variant == "pool":
        def ok(v: _Val) -> bool:
            return (v.rank >= 2 and v.shape[-2] == K and x.rank >= 1 and _ort_fp16_matmul_ok(b, v)
                    and (x.rank == 1 or _bcast(x.shape[:-2], v.shape[:-2]) is not None))
        y = b.partner(x, ok)
        if y is not None:
            batch = _bcast(x.shape[:-2], y.shape[:-2])
            assert batch is not None
            shape = (*batch, *x.shape[-2:-1], y.shape[-1]) if x.rank >= 2 else (*y.shape[:-2], y.shape[-1])
            bound = x.bound * y.bound * b.dim_max(K)
            return b.emit("MatMul", [x, y], shape=shape, dtype=x.dtype, lo=-bound, hi=bound)
        variant = "weight"
    if variant == "vector" and x.rank >= 2:
        W = b.weight([K], K, x.dtype)
        wshape: tuple[int, ...] = ()
        batch_w: tuple[int, ...] = ()
    elif variant == "batched" and x.rank == 2:
        N = b.int(1, 12)
        batch_w = (b.int(2, 3),)
        W = b.weight([*batch_w, K, N], K, x.dtype)
        wshape = (N,)
    else:
        N = b.int(1, 16)
        batch_w = ()
        W = b.weight([K, N], K, x.dtype)
        wshape = (N,)
    warr = numpy_helper.to_array(_find_init(b, W.name)).astype(np.float64)
    col = float(np.abs(warr).sum(axis=-2).max()) if warr.ndim >= 2 else float(np.abs(warr).sum())
    bound = col * x.bound
    if x.rank == 1:
        shape: Shape = (*batch_w, *wshape)
    else:
        shape = (*batch_w, *x.shape[:-1], *wshape) if batch_w else (*x.shape[:-1], *wshape)
    return b.emit("MatMul", [x, W], shape=shape, dtype=x.dtype, lo=-bound, hi=bound)


# ---- normalization


def _p_bn(b: _Builder, x: _Val) -> bool:
    return x.rank >= 2 and isinstance(x.shape[1], int) and x.rank <= 4


def _b_bn(b: _Builder, x: _Val) -> _Val:
    C = x.shape[1]
    assert isinstance(C, int)
    rng = b.rng
    scale = rng.uniform(0.5, 1.5, C)
    bias = rng.uniform(-0.5, 0.5, C)
    mean = rng.uniform(-0.5, 0.5, C)
    # Strictly positive, down to small variances, and epsilons beyond the default: a fold that
    # misplaces or ignores epsilon must change outputs visibly (the harness's mutation tests).
    var = 10.0 ** rng.uniform(-2.0, 0.3, C)
    eps = b.choice([1e-5, 1e-3, 0.05, 0.5])
    dt = _NP[x.dtype]
    vals = [b.const(a.astype(dt), p, node=False) for a, p in ((scale, "bn_scale"), (bias, "bn_bias"), (mean, "bn_mean"), (var, "bn_var"))]
    slope = scale / np.sqrt(var + eps)
    ends = np.stack([(x.lo - mean) * slope + bias, (x.hi - mean) * slope + bias])
    return b.emit("BatchNormalization", [x, *vals], {"epsilon": eps}, shape=x.shape, dtype=x.dtype,
                  lo=float(ends.min()), hi=float(ends.max()))


def _p_ln(b: _Builder, x: _Val) -> bool:
    return x.rank >= 1 and isinstance(x.shape[-1], int)


def _b_ln(b: _Builder, x: _Val) -> _Val:
    r = x.rank
    first = r - 1
    while first > 0 and isinstance(x.shape[first - 1], int) and r - first < 2:
        first -= 1
    axis = b.choice(list(range(r - 1, first - 1, -1)))
    norm = x.shape[axis:]
    n = _prod(int(d) for d in norm)
    if x.dtype == "float16":  # ORT may accumulate x^2 in fp16
        x = b.squash(x, math.sqrt(_LIMIT["float16"] / max(n, 1)))
    ins: list[_Val] = [x, b.const(b.rng.uniform(0.5, 1.5, norm).astype(_NP[x.dtype]), "ln_scale", node=False)]
    bound = math.sqrt(n) * ins[1].bound
    if b.flag():
        ins.append(b.uniform(norm, -0.5, 0.5, x.dtype, "ln_bias"))
        bound += ins[2].bound
    attrs = {"axis": axis if b.flag() else axis - r, "epsilon": 1e-5}
    return b.emit("LayerNormalization", ins, attrs, shape=x.shape, dtype=x.dtype, lo=-bound, hi=bound)


# ---- shape manipulation


def _factorize(b: _Builder, P: int) -> list[int]:
    parts = b.int(1, 3)
    out = []
    rem = P
    for _ in range(parts - 1):
        f = b.choice(_divisors(rem))
        out.append(f)
        rem //= f
    out.append(rem)
    return out


def _b_reshape(b: _Builder, x: _Val) -> _Val:
    r = x.rank
    sym = [i for i, d in enumerate(x.shape) if isinstance(d, str)]
    kmin = sym[-1] + 1 if sym else 0
    k = b.int(kmin, r)
    P = _prod(int(d) for d in x.shape[k:])
    factors = _factorize(b, P) if (k < r or b.flag() or k == 0) else []
    target: list[int] = [0 if isinstance(d, str) or b.flag() else int(d) for d in x.shape[:k]]
    out: list[Dim] = list(x.shape[:k]) + factors
    target += factors
    if not target:
        target, out = [1], [1]
    # One -1 (inferred) in a position whose value is a known int.
    ints = [i for i, d in enumerate(out) if isinstance(d, int)]
    if ints and b.flag():
        target[b.choice(ints)] = -1
    return b.emit("Reshape", [x, b.ints(target, "shape")], shape=tuple(out), dtype=x.dtype, lo=x.lo, hi=x.hi)


def _b_transpose(b: _Builder, x: _Val) -> _Val:
    perm = list(b.draw(st.permutations(range(x.rank))))
    attrs = {} if perm == list(range(x.rank))[::-1] and b.flag() else {"perm": perm}
    return b.emit("Transpose", [x], attrs, shape=tuple(x.shape[p] for p in perm), dtype=x.dtype, lo=x.lo, hi=x.hi)


def _group(dims: Shape) -> Dim | None:
    if all(isinstance(d, int) for d in dims):
        return _prod(dims)  # type: ignore[arg-type]
    return dims[0] if len(dims) == 1 else None


def _p_flatten(b: _Builder, x: _Val) -> bool:
    return x.rank >= 1 and any(_group(x.shape[:a]) is not None and _group(x.shape[a:]) is not None for a in range(x.rank + 1))


def _b_flatten(b: _Builder, x: _Val) -> _Val:
    axes = [a for a in range(x.rank + 1) if _group(x.shape[:a]) is not None and _group(x.shape[a:]) is not None]
    a = b.choice(axes)
    attrs = {"axis": a if (a in (0, x.rank) or b.flag()) else a - x.rank}
    return b.emit("Flatten", [x], attrs, shape=(_group(x.shape[:a]), _group(x.shape[a:])), dtype=x.dtype, lo=x.lo, hi=x.hi)  # type: ignore[arg-type]


def _p_concat(b: _Builder, x: _Val) -> bool:
    return x.rank >= 1 and any(isinstance(d, int) for d in x.shape)


def _b_concat(b: _Builder, x: _Val) -> _Val:
    axis = b.choice([i for i, d in enumerate(x.shape) if isinstance(d, int)])
    def ok(v: _Val) -> bool:
        return v.rank == x.rank and isinstance(v.shape[axis], int) and all(
            v.shape[i] == x.shape[i] for i in range(x.rank) if i != axis)
    parts = [x]
    for _ in range(b.int(1, 2)):
        mode = b.choice(["self", "pool", "const"])
        y = b.partner(x, ok) if mode == "pool" else None
        if y is None and mode == "const" and all(isinstance(d, int) for i, d in enumerate(x.shape) if i != axis):
            shape = [d if i != axis else b.int(1, 3) for i, d in enumerate(x.shape)]
            y = b.uniform(shape, -1, 1, x.dtype)
        parts.append(y if y is not None else x)
    if b.flag():
        parts = parts[::-1]
    out = list(x.shape)
    out[axis] = sum(int(p.shape[axis]) for p in parts)
    attrs = {"axis": axis if b.flag() else axis - x.rank}
    return b.emit("Concat", parts, attrs, shape=tuple(out), dtype=x.dtype,
                  lo=min(p.lo for p in parts), hi=max(p.hi for p in parts))


def _p_split(b: _Builder, x: _Val) -> bool:
    return any(isinstance(d, int) and d >= 2 for d in x.shape)


def _b_split(b: _Builder, x: _Val) -> _Val:
    axis = b.choice([i for i, d in enumerate(x.shape) if isinstance(d, int) and d >= 2])
    d = int(x.shape[axis])
    n = b.int(2, min(3, d))
    equal = d % n == 0 and b.flag()
    attrs: dict[str, Any] = {"axis": axis if b.flag() else axis - x.rank}
    if equal:
        sizes = [d // n] * n
        ins: list[_Val] = [x]
        if b.cfg.opset >= 18:  # Split-18 needs num_outputs when there is no split input
            attrs["num_outputs"] = n
    else:
        cuts = sorted(b.rng.choice(np.arange(1, d), size=n - 1, replace=False).tolist())
        sizes = [e - s for s, e in zip([0] + cuts, cuts + [d])]
        ins = [x, b.ints(sizes, "split")]
    outs = []
    for s in sizes:
        shp = list(x.shape)
        shp[axis] = s
        outs.append((tuple(shp), x.dtype, x.lo, x.hi))
    vals = b.emit_n("Split", ins, attrs, outs)
    return vals[0]


def _p_slice(b: _Builder, x: _Val) -> bool:
    return any(isinstance(d, int) for d in x.shape)


def _b_slice(b: _Builder, x: _Val) -> _Val:
    cand = [i for i, d in enumerate(x.shape) if isinstance(d, int)]
    n = b.int(1, min(2, len(cand)))
    axes = sorted(set(b.choice(cand) for _ in range(n)))
    starts, ends, steps = [], [], []
    out = list(x.shape)
    for a in axes:
        d = int(x.shape[a])
        step = b.choice([1, 2, -1, -2, 3])
        start = b.int(-d, d - 1)
        end = b.choice([_INT64_MAX if step > 0 else -_INT64_MAX, b.int(-d, d)])
        length = len(range(*slice(start, end, step).indices(d)))
        if length < 1:  # keep tensors non-empty: fall back to a full slice in that direction
            start, end = (0, _INT64_MAX) if step > 0 else (-1, -_INT64_MAX)
            length = len(range(*slice(start, end, step).indices(d)))
        starts.append(start)
        ends.append(end)
        steps.append(step)
        out[a] = length
    ins: list[_Val | None] = [x, b.ints(starts, "starts"), b.ints(ends, "ends")]
    use_neg = b.flag()
    ins.append(b.ints([a - x.rank if use_neg else a for a in axes], "axes"))
    if any(s != 1 for s in steps) or b.flag():
        ins.append(b.ints(steps, "steps"))
    return b.emit("Slice", ins, shape=tuple(out), dtype=x.dtype, lo=x.lo, hi=x.hi)


def _p_squeeze(b: _Builder, x: _Val) -> bool:
    return x.rank >= 2 and 1 in x.shape


def _b_squeeze(b: _Builder, x: _Val) -> _Val:
    ones = [i for i, d in enumerate(x.shape) if d == 1]
    axes = sorted(set(b.choice(ones) for _ in range(b.int(1, len(ones)))))
    if len(axes) == x.rank:
        axes = axes[:-1]
    out = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    enc = [a - x.rank if b.flag() else a for a in axes]
    return b.emit("Squeeze", [x, b.ints(enc, "axes")], shape=out, dtype=x.dtype, lo=x.lo, hi=x.hi)


def _b_unsqueeze(b: _Builder, x: _Val) -> _Val:
    n = b.int(1, 2)
    R = x.rank + n
    axes = [b.int(0, R - 1)]
    if n == 2:  # a second, distinct position
        a2 = b.int(0, R - 2)
        axes.append(a2 if a2 < axes[0] else a2 + 1)
    axes.sort()
    out: list[Dim] = []
    it = iter(x.shape)
    for i in range(R):
        out.append(1 if i in axes else next(it))
    enc = [a - R if b.flag() else a for a in axes]
    return b.emit("Unsqueeze", [x, b.ints(enc, "axes")], shape=tuple(out), dtype=x.dtype, lo=x.lo, hi=x.hi)


def _b_pad(b: _Builder, x: _Val) -> _Val:
    mode = b.choice(["constant", "reflect", "edge"])
    r = x.rank
    pads = [0] * (2 * r)
    out = list(x.shape)
    for i, d in enumerate(x.shape):
        if not isinstance(d, int) or (mode == "reflect" and d < 2):
            continue
        mx = min(2, d - 1) if mode == "reflect" else 2
        pads[i], pads[i + r] = b.int(0, mx), b.int(0, mx)
        out[i] = d + pads[i] + pads[i + r]
    ins: list[_Val | None] = [x, b.ints(pads, "pads")]
    lo, hi = x.lo, x.hi
    attrs = {} if mode == "constant" and b.flag() else {"mode": mode}
    if mode == "constant":
        cv = b.choice([0.0, 1.0, -1.0])
        if cv != 0.0 or b.flag():
            ins.append(b.scalar(cv, x.dtype, "pad_value"))
        lo, hi = min(lo, cv), max(hi, cv)
    return b.emit("Pad", ins, attrs, shape=tuple(out), dtype=x.dtype, lo=lo, hi=hi)


def _p_pool(b: _Builder, x: _Val) -> bool:
    return x.rank in (3, 4)


def _pool(op: str) -> Callable[[_Builder, _Val], _Val]:
    def build(b: _Builder, x: _Val) -> _Val:
        w = _window(b, x.shape[2:], conv=False, dilation=(op == "MaxPool"))
        if w is None:
            raise _Reject("window")
        attrs: dict[str, Any] = {"kernel_shape": w["k"]}
        if any(s != 1 for s in w["s"]) or b.flag():
            attrs["strides"] = w["s"]
        if any(w["pads"]) or b.flag():
            attrs["pads"] = w["pads"]
        lo, hi = x.lo, x.hi
        if op == "MaxPool":
            if any(d != 1 for d in w["d"]):
                attrs["dilations"] = w["d"]
        else:
            if any(w["pads"]) and b.flag():
                attrs["count_include_pad"] = 1
                lo, hi = min(lo, 0.0), max(hi, 0.0)
        return b.emit(op, [x], attrs, shape=(x.shape[0], x.shape[1], *w["out"]), dtype=x.dtype, lo=lo, hi=hi)
    return build


def _global_pool(op: str) -> Callable[[_Builder, _Val], _Val]:
    def build(b: _Builder, x: _Val) -> _Val:
        if x.dtype == "float16":  # the sum may be accumulated in fp16
            count = _prod(b.dim_max(d) for d in x.shape[2:])
            if x.bound * count > _LIMIT["float16"]:
                raise _Reject("fp16 sum")
        return b.emit(op, [x], shape=(x.shape[0], x.shape[1], *([1] * (x.rank - 2))), dtype=x.dtype, lo=x.lo, hi=x.hi)
    return build


def _reduce(op: str) -> Callable[[_Builder, _Val], _Val]:
    def build(b: _Builder, x: _Val) -> _Val:
        r = x.rank
        axes = sorted(set(b.int(0, r - 1) for _ in range(b.int(1, r))))
        keep = b.choice([1, 0])
        if keep == 0 and len(axes) == r:
            keep = 1  # keep rank >= 1: scalars stress little but complicate every consumer
        out = tuple((1 if i in axes else d) for i, d in enumerate(x.shape) if keep or i not in axes)
        count = _prod(b.dim_max(x.shape[a]) for a in axes)
        lo, hi = x.lo, x.hi
        if op == "ReduceSum":
            lo, hi = min(lo * count, lo), max(hi * count, hi)
        if x.dtype == "float16" and x.bound * count > _LIMIT["float16"]:
            raise _Reject("fp16 sum")
        enc = [a - r if b.flag() else a for a in axes]
        ins: list[_Val] = [x]
        attrs: dict[str, Any] = {"keepdims": keep}
        if op == "ReduceSum" or b.cfg.opset >= 18:
            ins.append(b.ints(enc, "axes"))
        else:
            attrs["axes"] = enc
        return b.emit(op, ins, attrs, shape=out, dtype=x.dtype, lo=lo, hi=hi)
    return build


def _p_resize(b: _Builder, x: _Val) -> bool:
    return x.rank == 4


def _b_resize(b: _Builder, x: _Val) -> _Val:
    mode = b.choice(["nearest", "linear"])
    attrs: dict[str, Any] = {"mode": mode}
    if mode == "nearest":
        nm = b.choice(["round_prefer_floor", "floor", "ceil", "round_prefer_ceil"])
        if nm != "round_prefer_floor":
            attrs["nearest_mode"] = nm
        ctm = b.choice(["half_pixel", "asymmetric"])
    else:
        ctm = b.choice(["half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel"])
    if ctm != "half_pixel":
        attrs["coordinate_transformation_mode"] = ctm
    out = list(x.shape)
    if x.static and b.int(0, 2) == 2:
        sizes = list(x.shape[:2]) + [b.int(1, 2 * int(d)) for d in x.shape[2:]]
        out = sizes
        ins: list[_Val | None] = [x, None, None, b.ints(sizes, "sizes")]
    else:
        scales = [1.0, 1.0]
        for i in (2, 3):
            d = x.shape[i]
            s = b.choice([2.0, 1.0, 0.5, 3.0]) if isinstance(d, int) else 1.0
            if isinstance(d, int):
                if int(d * s) < 1:
                    s = 1.0
                out[i] = int(math.floor(d * s))
            scales.append(s)
        ins = [x, None, b.const(np.asarray(scales, np.float32), "scales")]
    return b.emit("Resize", ins, attrs, shape=tuple(out), dtype=x.dtype, lo=x.lo, hi=x.hi)


def _p_cast(b: _Builder, x: _Val) -> bool:
    return any(t != x.dtype and b.allowed(t) for t in _ALL)


def _b_cast(b: _Builder, x: _Val) -> _Val:
    to = b.choice([t for t in _ALL if t != x.dtype and b.allowed(t)])
    if to == "float16":
        x = b.squash(x, 1000.0)
    elif to == "int64":
        x = b.squash(x, 1e6)
    lo, hi = x.lo, x.hi
    if to == "int64":
        lo, hi = float(math.trunc(lo)), float(math.trunc(hi))
    return b.emit("Cast", [x], {"to": _TP[to]}, shape=x.shape, dtype=to, lo=lo, hi=hi)


def _p_expand(b: _Builder, x: _Val) -> bool:
    return 1 <= x.rank <= 4


def _b_expand(b: _Builder, x: _Val) -> _Val:
    target = []
    for d in x.shape:
        if d == 1:
            target.append(b.choice([2, 1, 3]))
        elif isinstance(d, int) and b.flag():
            target.append(d)
        else:
            target.append(1)
    if b.flag():
        target = [b.choice([2, 1])] + target
    out = _bcast(x.shape, tuple(target))
    assert out is not None
    return b.emit("Expand", [x, b.ints(target, "shape")], shape=out, dtype=x.dtype, lo=x.lo, hi=x.hi)


def _p_gather(b: _Builder, x: _Val) -> bool:
    return any(isinstance(d, int) for d in x.shape)


def _b_gather(b: _Builder, x: _Val) -> _Val:
    axis = b.choice([i for i, d in enumerate(x.shape) if isinstance(d, int)])
    d = int(x.shape[axis])
    ishape = b.choice([(), (1,), (2,), (3,), (2, 2)])
    if x.rank == 1 and ishape == ():
        ishape = (1,)
    idx = b.rng.integers(-d, d, size=ishape).astype(np.int64)  # negative indices are legal
    out = (*x.shape[:axis], *ishape, *x.shape[axis + 1:])
    attrs = {"axis": axis} if axis or b.flag() else {}
    return b.emit("Gather", [x, b.const(idx, "idx")], attrs, shape=out, dtype=x.dtype, lo=x.lo, hi=x.hi)


def _p_shape_chain(b: _Builder, x: _Val) -> bool:
    return x.rank >= 2 and all(isinstance(d, int) for d in x.shape[2:])


def _b_shape_chain(b: _Builder, x: _Val) -> _Val:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as torch.onnx exports x.view(x.size(0), -1)."""
    keep = 2 if isinstance(x.shape[1], str) else b.choice([1, 2])
    shp = b.emit("Shape", [x], shape=(x.rank,), dtype="int64", lo=1, hi=64, pool=False)
    parts: list[_Val] = []
    if keep == 2 and b.flag():  # one Gather with 1-D indices
        parts.append(b.emit("Gather", [shp, b.ints([0, 1], "idx")], {"axis": 0}, shape=(2,), dtype="int64", lo=1, hi=64, pool=False))
    else:
        for i in range(keep):
            g = b.emit("Gather", [shp, b.const(np.asarray(i, np.int64), "idx")], {"axis": 0}, shape=(), dtype="int64", lo=1, hi=64, pool=False)
            parts.append(b.emit("Unsqueeze", [g, b.ints([0], "axes")], shape=(1,), dtype="int64", lo=1, hi=64, pool=False))
    rest = _prod(int(d) for d in x.shape[keep:])
    tail = [-1] if b.flag() else [rest]
    if keep == 1 and b.flag() and rest > 1:  # split the tail: (N, a, -1)
        a = b.choice(_divisors(rest))
        tail = [a, -1]
        out: Shape = (x.shape[0], a, rest // a)
    else:
        out = (*x.shape[:keep], rest)
    parts.append(b.ints(tail, "tail"))
    n = sum(p.shape[0] for p in parts)  # type: ignore[misc]
    cat = b.emit("Concat", parts, {"axis": 0}, shape=(n,), dtype="int64", lo=-1, hi=64, pool=False)
    return b.emit("Reshape", [x, cat], shape=out, dtype=x.dtype, lo=x.lo, hi=x.hi)


# ---- decomposed activations and patterns


def _b_gelu_erf(b: _Builder, x: _Val) -> _Val:
    """x * 0.5 * (1 + Erf(x / sqrt(2))) in the node order torch.onnx exports."""
    s2 = b.scalar(math.sqrt(2.0), x.dtype, "sqrt2")
    d = b.emit("Div", [x, s2], shape=x.shape, dtype=x.dtype, lo=x.lo / s2.lo, hi=x.hi / s2.lo)
    e = b.emit("Erf", [d], shape=x.shape, dtype=x.dtype, lo=math.erf(d.lo), hi=math.erf(d.hi))
    a = b.emit("Add", [e, b.scalar(1.0, x.dtype, "one")], shape=x.shape, dtype=x.dtype, lo=e.lo + 1, hi=e.hi + 1)
    m = b.emit("Mul", [x, a], shape=x.shape, dtype=x.dtype, **dict(zip(("lo", "hi"), _iv_mul((x.lo, x.hi), (a.lo, a.hi)))))
    return b.emit("Mul", [m, b.scalar(0.5, x.dtype, "half")], shape=x.shape, dtype=x.dtype, lo=m.lo / 2, hi=m.hi / 2)


def _b_gelu_tanh(b: _Builder, x: _Val) -> _Val:
    """0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))."""
    x = b.squash(x, 1e3 if x.dtype == "float32" else 25.0)
    p = b.emit("Pow", [x, b.scalar(3.0, x.dtype, "three")], shape=x.shape, dtype=x.dtype, lo=x.lo**3, hi=x.hi**3)
    c = 0.044715
    m1 = b.emit("Mul", [p, b.scalar(c, x.dtype, "c")], shape=x.shape, dtype=x.dtype, lo=p.lo * c, hi=p.hi * c)
    a1 = b.emit("Add", [x, m1], shape=x.shape, dtype=x.dtype, lo=x.lo + m1.lo, hi=x.hi + m1.hi)
    k = math.sqrt(2.0 / math.pi)
    m2 = b.emit("Mul", [a1, b.scalar(k, x.dtype, "k")], shape=x.shape, dtype=x.dtype, lo=a1.lo * k, hi=a1.hi * k)
    t = b.emit("Tanh", [m2], shape=x.shape, dtype=x.dtype, lo=math.tanh(m2.lo), hi=math.tanh(m2.hi))
    a2 = b.emit("Add", [t, b.scalar(1.0, x.dtype, "one")], shape=x.shape, dtype=x.dtype, lo=t.lo + 1, hi=t.hi + 1)
    lo, hi = _iv_mul((x.lo, x.hi), (a2.lo, a2.hi))
    m3 = b.emit("Mul", [x, a2], shape=x.shape, dtype=x.dtype, lo=lo, hi=hi)
    return b.emit("Mul", [m3, b.scalar(0.5, x.dtype, "half")], shape=x.shape, dtype=x.dtype, lo=lo / 2, hi=hi / 2)


def _b_conv_bn(b: _Builder, x: _Val) -> _Val:
    return _b_bn(b, _b_conv(b, x))


_ACTS: list[Callable[[_Builder, _Val], _Val]] = []  # filled below (needs _b_clip etc.)


def _b_conv_act(b: _Builder, x: _Val) -> _Val:
    y = _b_conv(b, x)
    if b.flag():
        y = _b_bn(b, y)
    return b.choice(_ACTS)(b, y)


def _b_matmul_add(b: _Builder, x: _Val) -> _Val:
    K = int(x.shape[-1])
    N = b.int(1, 16)
    W = b.weight([K, N], K, x.dtype)
    warr = numpy_helper.to_array(_find_init(b, W.name)).astype(np.float64)
    bound = float(np.abs(warr).sum(0).max()) * x.bound
    shape = (*x.shape[:-1], N)
    y = b.emit("MatMul", [x, W], shape=shape, dtype=x.dtype, lo=-bound, hi=bound)
    bias = b.uniform([N], -0.1, 0.1, x.dtype, "bias")
    ins = [y, bias] if b.flag() else [bias, y]
    return b.emit("Add", ins, shape=shape, dtype=x.dtype, lo=-bound - bias.bound, hi=bound + bias.bound)


def _b_transpose_chain(b: _Builder, x: _Val) -> _Val:
    y = x
    for _ in range(b.int(2, 3)):
        perm = list(b.draw(st.permutations(range(x.rank))))
        if b.int(0, 2) == 0 and y is not x:  # sometimes the inverse: a chain a pass can cancel
            prev = next(n for n in reversed(b.nodes) if n.output[0] == y.name)
            p = list(helper.get_attribute_value(prev.attribute[0]))
            perm = [p.index(i) for i in range(len(p))]
        y = b.emit("Transpose", [y], {"perm": perm}, shape=tuple(y.shape[p] for p in perm), dtype=x.dtype, lo=x.lo, hi=x.hi)
    return y


def _b_ln_decomposed(b: _Builder, x: _Val) -> _Val:
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add, as exporters emit LayerNorm before opset 17."""
    D = int(x.shape[-1])
    x = b.squash(x, 1e3 if x.dtype == "float32" else math.sqrt(_LIMIT["float16"] / max(D, 1)) / 2)
    def rmean(v: _Val, lo: float, hi: float) -> _Val:
        ins: list[_Val] = [v]
        attrs: dict[str, Any] = {"keepdims": 1}
        if b.cfg.opset >= 18:
            ins.append(b.ints([-1], "axes"))
        else:
            attrs["axes"] = [-1]
        return b.emit("ReduceMean", ins, attrs, shape=(*v.shape[:-1], 1), dtype=v.dtype, lo=lo, hi=hi)
    m = rmean(x, x.lo, x.hi)
    d = b.emit("Sub", [x, m], shape=x.shape, dtype=x.dtype, lo=x.lo - x.hi, hi=x.hi - x.lo)
    p = b.emit("Pow", [d, b.scalar(2.0, x.dtype, "two")], shape=x.shape, dtype=x.dtype, lo=0.0, hi=d.bound**2)
    if x.dtype == "float16" and p.hi * D > _LIMIT["float16"]:
        raise _Reject("fp16 sum")
    v = rmean(p, 0.0, p.hi)
    eps = b.scalar(1e-5 if x.dtype == "float32" else 1e-3, x.dtype, "eps")
    ve = b.emit("Add", [v, eps], shape=v.shape, dtype=x.dtype, lo=eps.lo, hi=v.hi + eps.lo)
    s = b.emit("Sqrt", [ve], shape=v.shape, dtype=x.dtype, lo=math.sqrt(ve.lo), hi=math.sqrt(ve.hi))
    nb = math.sqrt(D)  # |x - mean| / std <= sqrt(D)
    n = b.emit("Div", [d, s], shape=x.shape, dtype=x.dtype, lo=-nb, hi=nb)
    g = b.uniform([D], 0.5, 1.5, x.dtype, "gamma")
    y = b.emit("Mul", [n, g], shape=x.shape, dtype=x.dtype, lo=-nb * g.hi, hi=nb * g.hi)
    be = b.uniform([D], -0.5, 0.5, x.dtype, "beta")
    return b.emit("Add", [y, be], shape=x.shape, dtype=x.dtype, lo=y.lo - be.bound, hi=y.hi + be.bound)


def _p_attention(b: _Builder, x: _Val) -> bool:
    return x.rank in (2, 3) and isinstance(x.shape[-1], int) and _ort_fp16_matmul_ok(b, x)


def _b_attention(b: _Builder, x: _Val) -> _Val:
    """Single-head attention: Q/K/V MatMuls, K^T, scaled scores, Softmax, MatMul with V."""
    D = int(x.shape[-1])
    x = b.squash(x, 100.0 if x.dtype == "float32" else 4.0)
    Dh = b.choice([d for d in (4, 8, 2, 16) if d <= max(D, 2)] or [2])
    proj = []
    for nm in ("q", "k", "v"):
        W = b.weight([D, Dh], D, x.dtype, "w" + nm)
        warr = numpy_helper.to_array(_find_init(b, W.name)).astype(np.float64)
        bd = float(np.abs(warr).sum(0).max()) * x.bound
        proj.append(b.emit("MatMul", [x, W], shape=(*x.shape[:-1], Dh), dtype=x.dtype, lo=-bd, hi=bd))
    q, k, v = proj
    perm = list(range(x.rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    kt = b.emit("Transpose", [k], {"perm": perm}, shape=tuple(k.shape[p] for p in perm), dtype=x.dtype, lo=k.lo, hi=k.hi)
    sb = q.bound * kt.bound * Dh
    scores = b.emit("MatMul", [q, kt], shape=(*x.shape[:-1], x.shape[-2]), dtype=x.dtype, lo=-sb, hi=sb)
    if b.flag():
        sc = b.scalar(math.sqrt(Dh), x.dtype, "scale")
        scaled = b.emit("Div", [scores, sc], shape=scores.shape, dtype=x.dtype, lo=-sb / sc.lo, hi=sb / sc.lo)
    else:
        sc = b.scalar(1.0 / math.sqrt(Dh), x.dtype, "scale")
        scaled = b.emit("Mul", [scores, sc], shape=scores.shape, dtype=x.dtype, lo=-sb * sc.hi, hi=sb * sc.hi)
    probs = b.emit("Softmax", [scaled], {"axis": -1}, shape=scores.shape, dtype=x.dtype, lo=0.0, hi=1.0)
    return b.emit("MatMul", [probs, v], shape=(*x.shape[:-1], Dh), dtype=x.dtype, lo=v.lo if v.lo < 0 else 0.0,
                  hi=v.hi if v.hi > 0 else 0.0)


_ACTS.extend([_b_relu, _b_clip, _b_leaky, _b_sigmoid, _b_hardswish, _b_hardsigmoid, _b_tanh])

_F = _FLOATS
_FI = _ALL  # float and int64

# Order matters for shrinking: the op choice shrinks toward the first applicable entry,
# so the simplest ops come first.
OPS: dict[str, OpEntry] = {e.name: e for e in [
    OpEntry("Relu", 1.5, _any, _b_relu, _F),
    OpEntry("Identity", 0.4, _any, _b_identity, _FI),
    OpEntry("Add", 1.5, _any, _binary("Add"), _FI),
    OpEntry("Mul", 1.0, _any, _binary("Mul"), _FI),
    OpEntry("Sub", 0.8, _any, _binary("Sub"), _FI),
    OpEntry("Div", 0.8, _any, _binary("Div"), _F),
    OpEntry("Max", 0.5, _any, _binary("Max"), _FI),
    OpEntry("Min", 0.5, _any, _binary("Min"), _FI),
    OpEntry("Pow", 0.5, _any, _b_pow, _F, cost=2),
    OpEntry("Neg", 0.5, _any, _b_neg, _FI),
    OpEntry("Abs", 0.5, _any, _b_abs, _FI),
    OpEntry("Sigmoid", 0.8, _any, _b_sigmoid, _F),
    OpEntry("Tanh", 0.8, _any, _b_tanh, _F),
    OpEntry("LeakyRelu", 0.6, _any, _b_leaky, _F),
    OpEntry("Elu", 0.3, _any, _b_elu, _F),
    OpEntry("HardSigmoid", 0.5, _any, _b_hardsigmoid, _F),
    OpEntry("HardSwish", 0.6, _any, _b_hardswish, _F),
    OpEntry("Clip", 0.8, _any, _b_clip, _FI),
    OpEntry("Exp", 0.5, _any, _b_exp, _F, cost=2),
    OpEntry("Sqrt", 0.5, _any, _b_sqrt, _F, cost=2),
    OpEntry("Log", 0.3, _any, _b_log, _F, cost=3),
    OpEntry("Dropout", 0.4, _any, _b_dropout, _F),
    OpEntry("Softmax", 0.8, _rank_ge(1), _b_softmax, _F),
    OpEntry("Transpose", 1.0, _rank_ge(2), _b_transpose, _FI),
    OpEntry("Reshape", 1.0, _rank_ge(1), _b_reshape, _FI),
    OpEntry("Flatten", 0.6, _p_flatten, _b_flatten, _FI),
    OpEntry("Unsqueeze", 0.5, lambda b, v: v.rank <= 4, _b_unsqueeze, _FI),
    OpEntry("Squeeze", 0.8, _p_squeeze, _b_squeeze, _FI),
    OpEntry("Concat", 0.8, _p_concat, _b_concat, _FI),
    OpEntry("Split", 0.6, _p_split, _b_split, _FI),
    OpEntry("Slice", 0.8, _p_slice, _b_slice, _FI),
    OpEntry("Gather", 0.5, _p_gather, _b_gather, _FI),
    OpEntry("Expand", 0.5, _p_expand, _b_expand, _FI),
    OpEntry("Pad", 0.6, _rank_ge(1), _b_pad, _FI),
    OpEntry("Where", 0.5, _any, _b_where, _FI, cost=2),
    OpEntry("Cast", 0.6, _p_cast, _b_cast, _FI, cost=2),
    OpEntry("ReduceMean", 0.6, _rank_ge(1), _reduce("ReduceMean"), _FI),
    OpEntry("ReduceSum", 0.5, _rank_ge(1), _reduce("ReduceSum"), _FI),
    OpEntry("ReduceMax", 0.5, _rank_ge(1), _reduce("ReduceMax"), _FI),
    OpEntry("MatMul", 1.5, _p_matmul, _b_matmul, _F),
    OpEntry("Gemm", 1.0, _p_gemm, _b_gemm, _F),
    OpEntry("Conv", 2.0, _p_conv, _b_conv, _F),
    OpEntry("ConvTranspose", 0.8, _p_conv, _b_convtranspose, _F),
    OpEntry("BatchNormalization", 1.0, _p_bn, _b_bn, _F),
    OpEntry("LayerNormalization", 0.8, _p_ln, _b_ln, _F, cost=2),
    OpEntry("MaxPool", 0.8, _p_pool, _pool("MaxPool"), _F),
    OpEntry("AveragePool", 0.6, _p_pool, _pool("AveragePool"), _F),
    OpEntry("GlobalAveragePool", 0.6, _p_pool, _global_pool("GlobalAveragePool"), _F),
    OpEntry("GlobalMaxPool", 0.3, _p_pool, _global_pool("GlobalMaxPool"), _F),
    OpEntry("Resize", 0.6, _p_resize, _b_resize, _F),
    OpEntry("ShapeReshape", 0.6, _p_shape_chain, _b_shape_chain, _FI, cost=7),
    OpEntry("Gelu", 0.5, _any, _b_gelu_erf, _F, cost=5),
    OpEntry("GeluTanh", 0.3, _any, _b_gelu_tanh, _F, cost=9),
    # Multi-node patterns that graph passes rewrite (see PRESETS).
    OpEntry("conv-bn", 0.3, _p_conv, _b_conv_bn, _F, cost=2),
    OpEntry("conv-act", 0.3, _p_conv, _b_conv_act, _F, cost=4),
    OpEntry("matmul-add", 0.3, _p_matmul, _b_matmul_add, _F, cost=2),
    OpEntry("transpose-chain", 0.2, _rank_ge(2), _b_transpose_chain, _FI, cost=3),
    OpEntry("layernorm-decomposed", 0.2, _p_ln, _b_ln_decomposed, _F, cost=10),
    OpEntry("gelu-erf", 0.0, _any, _b_gelu_erf, _F, cost=5),
    OpEntry("attention", 0.2, _p_attention, _b_attention, _F, cost=10),
]}

#: Bias presets for patterns graph passes rewrite; ``pattern_models(name)`` also forces one instance.
PRESETS: dict[str, dict[str, float]] = {
    "conv-bn": {"conv-bn": 20.0, "Conv": 3.0, "BatchNormalization": 3.0},
    "conv-act": {"conv-act": 20.0, "Conv": 3.0, "Relu": 3.0, "Clip": 3.0},
    "matmul-add": {"matmul-add": 20.0, "MatMul": 3.0, "Add": 3.0, "Gemm": 2.0},
    "transpose-chain": {"transpose-chain": 20.0, "Transpose": 5.0},
    "layernorm-decomposed": {"layernorm-decomposed": 20.0},
    "gelu-erf": {"gelu-erf": 20.0, "Gelu": 5.0, "MatMul": 2.0},
    "attention": {"attention": 20.0, "MatMul": 2.0, "Softmax": 2.0},
}


def op_names() -> list[str]:
    """Names accepted by ``ops=`` and ``bias=`` (registry order)."""
    return list(OPS)


# --------------------------------------------------------------------------- inputs


_KINDS = ("mat", "seq", "image", "vec", "signal")


def _input_shape(b: _Builder, kind: str) -> Shape:
    sym = b.cfg.symbolic_dims
    batch: Dim = "N" if sym and b.flag() else b.choice([1, 2, 3])
    if kind == "vec":
        return (b.int(1, 16),)
    if kind == "mat":
        return (batch, b.int(1, 16))
    if kind == "seq":
        return (batch, "S" if sym and b.flag() else b.int(1, 8), b.choice([8, 4, 16, 6]))
    if kind == "signal":
        return (batch, b.int(1, 8), "L" if sym and b.int(0, 3) == 3 else b.int(4, 16))
    spatial: tuple[Dim, ...] = ("H", "W") if sym and b.int(0, 3) == 3 else (b.int(4, 12), b.int(4, 12))
    return (batch, b.int(1, 8), *spatial)


def _accepts(b: _Builder, v: _Val) -> frozenset[str]:
    """Registry entries that accept v as input (cached: preconditions depend only on v and the config)."""
    acc = b.accepts.get(v.name)
    if acc is None:
        ok = v.dtype in b.cfg.dtypes
        acc = b.accepts[v.name] = frozenset(
            n for n, e in OPS.items() if ok and v.dtype in e.dtypes and e.pred(b, v))
    return acc


def _applicable(b: _Builder, e: OpEntry) -> bool:
    return any(e.name in _accepts(b, v) for v in b.pool)


def _make_inputs(b: _Builder, must: Sequence[OpEntry], any_of: Sequence[OpEntry]) -> None:
    for _attempt in range(4):
        b.pool, b.inputs, b.dims, b.input_ranges, b.accepts = [], [], {}, {}, {}
        n = b.int(1, 2)
        for i in range(n):
            if i == 1 and b.flag():
                shape = b.inputs[0].shape  # same shape: residual / binary joins between inputs
            else:
                shape = _input_shape(b, b.choice(_KINDS))
            dtype = b.choice([d for d in ("float32", "float16", "int64") if d in b.cfg.dtypes])
            if dtype == "int64":
                lo, hi = -4.0, 4.0
            else:
                lo, hi = b.choice([(-1.0, 1.0), (0.1, 2.0)])
            v = _Val(f"input_{i}", shape, dtype, lo, hi)
            for d in shape:
                if isinstance(d, str):
                    b.dims[d] = _DIM_RANGES[d]
            b.inputs.append(v)
            b.input_ranges[v.name] = (lo, hi)
            b.pool.append(v)
        if all(_applicable(b, e) for e in must) and (not any_of or any(_applicable(b, e) for e in any_of)):
            return
    assume(False)


# --------------------------------------------------------------------------- model assembly


def _ir_version(opset: int) -> int:
    return 8 if opset <= 18 else (9 if opset <= 20 else 10)


def _vi(v: _Val) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(v.name, _TP[v.dtype], list(v.shape))


@st.composite
def _step(draw: Callable[[st.SearchStrategy[Any]], Any], b: _Builder, entries: Sequence[OpEntry],
          required: list[OpEntry]) -> str:
    """One growth step as its own strategy, so the shrinker can delete a whole step."""
    outer, b.draw = b.draw, draw
    try:
        cfg = b.cfg
        # The stop decision is the step's first draw, so deleting a step's span deletes exactly one
        # step, and it stops on 0, so lowering values also shrinks toward fewer steps.  (Hypothesis
        # draws 0 about 14% of the time here, which gives a spread of graph sizes.)
        if not required and b.n_compute >= cfg.min_nodes and b.int(0, 60) == 0:
            return "stop"
        if required:
            e = required[0]
        else:
            room = cfg.max_nodes - b.n_compute
            ok = frozenset().union(*(_accepts(b, v) for v in b.pool))
            live = [x for x in entries if x.name in ok and cfg.weights.get(x.name, 0) > 0]
            cands = [x for x in live if x.cost <= room]
            if not cands:
                cands = live
                if not cands or b.n_compute >= cfg.min_nodes:
                    return "stop"
            ws = [max(1, int(round(cfg.weights[x.name] * 100))) for x in cands]
            # Hypothesis draws integers from a distribution peaked near 0 in wide ranges, so a plain
            # weighted index would flood models with the first entries.  Two base-61 digits are
            # nearly uniform (only 0 is over-drawn, ~14%), and still shrink toward the first
            # (simplest) applicable entry.
            raw = b.int(0, 60) * 61 + b.int(0, 60)
            r = raw * sum(ws) // 3721
            acc = 0
            for e, w in zip(cands, ws):
                acc += w
                if r < acc:
                    break
        cp = b.checkpoint()
        try:
            x = b.pick(e.pred, e.dtypes)
            e.build(b, x)
            if b.n_compute > cfg.max_nodes and not required:
                raise _Reject("over budget")
        except _Reject:
            b.rollback(cp)
            return "reject"
        if required:
            required.pop(0)
        return "ok"
    finally:
        b.draw = outer


@st.composite
def _models(draw: Callable[[st.SearchStrategy[Any]], Any], cfg: _Config) -> onnx.ModelProto:
    seed = draw(st.integers(0, 2**32 - 1))
    b = _Builder(draw, np.random.default_rng(seed), cfg)
    names = cfg.ops if cfg.ops is not None else tuple(n for n in OPS if cfg.weights.get(n, 0) > 0)
    entries = [OPS[n] for n in names if cfg.weights.get(n, 0) > 0 or n in cfg.required]
    must = [OPS[n] for n in cfg.required]
    _make_inputs(b, must, entries if cfg.ops is not None else [])
    required = list(must)
    failures = 0
    # The number of steps is not drawn up front: hypothesis draws the minimum of a range very often,
    # which made ~40% of models single-node.  Each step instead starts with its own stop draw.
    while b.n_compute < cfg.max_nodes and failures < 8:
        status = draw(_step(b, entries, required))
        if status == "reject":
            failures += 1
        elif status == "stop":
            break
    assume(not required and b.n_compute >= cfg.min_nodes)

    produced = [v for v in b.pool if v.name not in b.input_ranges]
    outputs = [v for v in produced if b.uses.get(v.name, 0) == 0]
    # Sometimes also export a used intermediate: passes must keep graph outputs alive.
    outputs += [v for v in produced if b.uses.get(v.name, 0) > 0 and b.rng.random() < 0.1]
    out_names = {v.name for v in outputs}
    order = {v.name: i for i, v in enumerate(produced)}
    outputs.sort(key=lambda v: order[v.name])
    value_info = [_vi(v) for n, v in b.info.items() if n not in out_names]
    graph = helper.make_graph(b.nodes, "lepton_random", [_vi(v) for v in b.inputs], [_vi(v) for v in outputs],
                              initializer=b.inits, value_info=value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", cfg.opset)],
                              producer_name="lepton_ir.testing.strategies")
    model.ir_version = _ir_version(cfg.opset)
    helper.set_model_props(model, {
        META_DIM_RANGES: json.dumps({k: list(v) for k, v in sorted(b.dims.items())}),
        META_INPUT_RANGES: json.dumps({k: list(v) for k, v in b.input_ranges.items()}),
    })
    return model


def _config(ops: Sequence[str] | None, min_nodes: int, max_nodes: int, dtypes: Sequence[str], symbolic_dims: bool,
            opset: int, bias: Mapping[str, float] | None, required: Sequence[str] = ()) -> _Config:
    if opset < 17:
        raise ValueError("opset must be >= 17 (LayerNormalization, Split/Squeeze/ReduceSum input forms)")
    unknown = [n for n in list(ops or []) + list(bias or {}) + list(required) if n not in OPS]
    if unknown:
        raise ValueError(f"unknown op names {unknown}; known: {op_names()}")
    bad = [d for d in dtypes if d not in _ALL]
    if bad or not dtypes:
        raise ValueError(f"dtypes must be a non-empty subset of {_ALL}")
    if not 1 <= min_nodes <= max_nodes:
        raise ValueError("need 1 <= min_nodes <= max_nodes")
    if ops is not None and all(OPS[n].cost > max_nodes for n in ops):
        raise ValueError(f"max_nodes={max_nodes} is too small for every op in {list(ops)}")
    weights = {n: e.weight for n, e in OPS.items()}
    if ops is not None:
        # Restricting to an entry enables it even if its default weight is 0.
        weights = {n: (w if w > 0 else 1.0) if n in ops else 0.0 for n, w in weights.items()}
    for n, f in (bias or {}).items():
        weights[n] = (weights[n] if weights[n] > 0 or ops is not None else 1.0) * float(f)
        if ops is not None and n not in ops:
            weights[n] = 0.0
    return _Config(tuple(ops) if ops is not None else None, min_nodes, max_nodes, tuple(dtypes), symbolic_dims,
                   opset, weights, tuple(required))


def onnx_models(*, ops: Sequence[str] | None = None, min_nodes: int = 1, max_nodes: int = 12,
                dtypes: Sequence[str] = ("float32",), symbolic_dims: bool = True, opset: int = 17,
                bias: Mapping[str, float] | None = None) -> st.SearchStrategy[onnx.ModelProto]:
    """Strategy for random valid ONNX models.

    ops: restrict the steps to these registry names (see :func:`op_names`); helper nodes a step needs
        (Constant, Clip/Abs guards, the nodes of decomposed Gelu and of patterns) may still appear.
    min_nodes/max_nodes: number of compute nodes (Constant nodes not counted).
    dtypes: element types allowed for data tensors (inputs, intermediates, outputs); int64 shape/index
        tensors are always allowed.  Any of "float32", "float16", "int64".
    symbolic_dims: allow dim names ('N' batch, 'S' sequence, 'H'/'W'/'L' spatial) in input shapes.
    opset: default-domain opset (>= 17); ir_version is chosen so ONNX Runtime 1.32 accepts it.
    bias: multiply the choice weight of registry entries, e.g. ``{"Conv": 5.0}``; gives weight to
        entries that are off by default ("gelu-erf").
    """
    return _models(_config(ops, min_nodes, max_nodes, dtypes, symbolic_dims, opset, bias))


def graphs(**kwargs: Any) -> st.SearchStrategy[onnx.GraphProto]:
    """Like :func:`onnx_models` but yields the GraphProto (opset is the one given, default 17)."""
    return onnx_models(**kwargs).map(lambda m: m.graph)


def pattern_models(pattern: str, *, min_nodes: int = 1, max_nodes: int = 20, dtypes: Sequence[str] = ("float32",),
                   symbolic_dims: bool = True, opset: int = 17,
                   bias: Mapping[str, float] | None = None) -> st.SearchStrategy[onnx.ModelProto]:
    """Models that contain at least one instance of a :data:`PRESETS` pattern (inserted as the first step),
    with further steps biased toward it."""
    if pattern not in PRESETS:
        raise ValueError(f"unknown pattern {pattern!r}; known: {sorted(PRESETS)}")
    merged = dict(PRESETS[pattern])
    merged.update(bias or {})
    return _models(_config(None, min_nodes, max_nodes, dtypes, symbolic_dims, opset, merged, (pattern,)))


def inputs_for(model: onnx.ModelProto, seed: int | np.random.Generator = 0,
               dim_sizes: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Concrete inputs for model's graph inputs.

    Symbolic dims get one consistent size per name (from ``dim_sizes`` or drawn from the model's
    recorded ranges); values come from the ranges the generator assumed, which is what keeps every
    op finite (e.g. inputs of Sqrt/Log, divisors).  Works on any model: unknown dims default to 1..4
    and unknown inputs to [-1, 1] (integers to [0, 3]).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    props = {p.key: p.value for p in model.metadata_props}
    dim_ranges = {k: tuple(v) for k, v in json.loads(props.get(META_DIM_RANGES, "{}")).items()}
    ranges = {k: tuple(v) for k, v in json.loads(props.get(META_INPUT_RANGES, "{}")).items()}
    sizes: dict[str, int] = dict(dim_sizes or {})
    init_names = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        tt = vi.type.tensor_type
        shape = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            else:
                name = d.dim_param or f"?{vi.name}{len(shape)}"
                if name not in sizes:
                    lo, hi = dim_ranges.get(name, (1, 4))
                    sizes[name] = int(rng.integers(lo, hi + 1))
                shape.append(sizes[name])
        np_dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if np.issubdtype(np_dtype, np.floating):
            lo, hi = ranges.get(vi.name, (-1.0, 1.0))
            feeds[vi.name] = rng.uniform(lo, hi, size=shape).astype(np_dtype)
        elif np_dtype == np.bool_:
            feeds[vi.name] = rng.random(size=shape) < 0.5
        else:
            lo, hi = ranges.get(vi.name, (0, 3))
            feeds[vi.name] = rng.integers(int(lo), int(hi) + 1, size=shape).astype(np_dtype)
    return feeds


def model_inputs(model: onnx.ModelProto) -> st.SearchStrategy[dict[str, np.ndarray]]:
    """Strategy form of :func:`inputs_for` (draws the seed, so it shrinks toward seed 0)."""
    return st.integers(0, 2**32 - 1).map(lambda s: inputs_for(model, s))
