"""Channel dependencies of a whole graph: which channels must be removed together.

The unit is one *element* of a channel axis: index `i` of axis `a` of value `v`. Every (value, axis)
that carries channels gets a `Slot` holding one element id per index, and op rules union elements
that must go together (union-find over element ids). The equivalence classes are the prunable
*channels*; a class with a frozen element is kept whatever its importance.

The idea and the vocabulary follow Torch-Pruning's `dependency/` (a dependency graph over
(tensor, axis) pairs, with index mappings for Concat, Split and Flatten); working on single elements
instead of index mappings makes every mapping an ordinary union:

* identity (element-wise ops, BatchNormalization, pooling, Transpose, residual joins): `out[i] ~ in[i]`;
* Concat / Split on the channel axis: offsets, `out[off_k + i] ~ in_k[i]`;
* Flatten / Reshape merging C x H x W into one axis: strides, `out[c * H*W + j] ~ in[c]`, so
  removing channel c removes its H*W columns of the Gemm that follows;
* Conv: `out[o] ~ W[o, ...] ~ B[o]`, `x[c] ~ W[:, c, ...]`; a depthwise Conv couples `x[c]` with
  its `multiplier` outputs (the group count follows the channel count); a grouped Conv ties index
  `j` of every group together (one position removed from every group keeps `Cin % group == 0`);
* Gemm / MatMul with a constant 2-D weight (transB aware), ConvTranspose (group 1).

Anything a rule does not understand (an unknown op, an op that mixes the channel axis: Softmax or a
reduction over it, a Shape that reads it, a graph input or output, a non-constant weight, ...)
*freezes* the slot: `DepGraph.reasons` lists, per frozen slot, the node and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from lepton_ir import DType, Model, Node, Value
from lepton_ir.opsem import PASS_THROUGH, passes_channel_through, weight_info

from ..util import constant_value

_STD = ("", "ai.onnx")
_FLOAT = (DType.FLOAT, DType.FLOAT16, DType.DOUBLE, DType.BFLOAT16)
#: Weight ops pruned (the quantized forms are left alone: their scales and zero points would
#: need the same bookkeeping and they come after pruning in any sane pipeline).
WEIGHT_OPS = {("", "Conv"), ("", "ConvTranspose"), ("", "Gemm"), ("", "MatMul"), ("ai.onnx", "Conv"),
              ("ai.onnx", "ConvTranspose"), ("ai.onnx", "Gemm"), ("ai.onnx", "MatMul"),
              ("ai.lepton", "FusedConv"), ("ai.lepton", "FusedGemm"), ("ai.lepton", "FusedMatMul")}


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb


@dataclass
class Slot:
    """One channel-carrying axis of one value."""

    value: Value
    axis: int
    ids: np.ndarray  # element id per index

    @property
    def size(self) -> int:
        return len(self.ids)

    def label(self) -> str:
        return f"{self.value.name or '?'}[axis {self.axis}]"


@dataclass
class Fix:
    """A node edit that must follow the removal (group count, Reshape shape, Split sizes)."""

    kind: str  # "group" | "reshape" | "split"
    node: Node
    slot: Slot | None = None  # group: the data slot; reshape: the output slot
    axis: int = 0  # reshape: output axis; split: axis
    outs: list[Slot] = field(default_factory=list)  # split: one slot per output
    piece: tuple | None = None  # reshape with a computed shape: (Concat node, input index) holding the dim


@dataclass
class WeightUse:
    """A weight op seen by the analysis: its channel slots (None where the op has none)."""

    node: Node
    kind: str
    out_slot: Slot | None
    in_slot: Slot | None
    weight: Value
    depthwise: bool
    macs: float


def _dims(v: Value | None) -> list | None:
    if v is None:
        return None
    if v.const is not None:
        return [int(d) for d in v.const.shape]
    if v.shape is None:
        c = constant_value(v)
        if c is not None:
            return list(np.shape(c))
    s = v.shape
    return None if s is None else list(s)


def _rank(v: Value | None) -> int | None:
    d = _dims(v)
    return None if d is None else len(d)


def _prod(xs: Iterable) -> int:
    p = 1
    for x in xs:
        p *= int(x)
    return p


def _axes_of(node: Node, attr_name: str = "axes", input_index: int = 1) -> list[int] | None | str:
    """Constant axes from the attribute or the input; None: absent; "dynamic": not constant."""
    if attr_name in node.attrs:
        return [int(a) for a in node.attr(attr_name)]
    if len(node.inputs) > input_index and node.inputs[input_index] is not None:
        c = constant_value(node.inputs[input_index])
        if c is None:
            return "dynamic"
        return [int(a) for a in np.asarray(c).reshape(-1)]
    return None


class Frozen(Exception):
    """Raised inside a rule: the slot cannot be pruned through this node."""


class DepGraph:
    """The dependency analysis of one model (top-level graph)."""

    def __init__(self, model: Model, *, prune_layernorm: bool = True,
                 log: Callable[[str], None] | None = None) -> None:
        self.model = model
        self.graph = model.graph
        self.uf = UnionFind()
        self.slots: dict[tuple[int, int], Slot] = {}
        self.frozen_ids: set[int] = set()
        #: (slot label, node label, reason), in discovery order
        self.reasons: list[tuple[str, str, str]] = []
        self.fixes: list[Fix] = []
        self.weights: list[WeightUse] = []
        self.prune_layernorm = prune_layernorm
        self.log = log or (lambda s: None)
        self._queue: list[Slot] = []
        self._done: set[tuple[int, int, int]] = set()
        self._outputs = {id(v) for v in self.graph.outputs}
        self._inputs = {id(v) for v in self.graph.inputs}
        self._build()

    # -- slots --------------------------------------------------------------------------------
    def slot(self, v: Value, axis: int) -> Slot:
        """The slot of (v, axis), created (and queued) on first use. Raises Frozen if its size
        is not a static integer."""
        r = _rank(v)
        if r is None:
            raise Frozen(f"rank of {v.name or '?'} unknown")
        axis %= r
        key = (id(v), axis)
        s = self.slots.get(key)
        if s is not None:
            return s
        d = _dims(v)[axis]
        if not isinstance(d, int):
            raise Frozen(f"dim {axis} of {v.name or '?'} is not static ({d})")
        s = Slot(v, axis, self.uf.new(d))
        self.slots[key] = s
        self._queue.append(s)
        return s

    def link(self, a: Slot, b: Slot) -> None:
        if a.size != b.size:
            raise Frozen(f"{a.label()} has {a.size} channels, {b.label()} {b.size}")
        for x, y in zip(a.ids.tolist(), b.ids.tolist()):
            self.uf.union(x, y)

    def freeze(self, s: Slot, node: Node | None, reason: str) -> None:
        self.frozen_ids.update(s.ids.tolist())
        where = _node_label(node) if node is not None else "graph"
        self.reasons.append((s.label(), where, reason))
        self.log(f"prune: freeze {s.label()} at {where}: {reason}")

    # -- the walk -----------------------------------------------------------------------------
    def _build(self) -> None:
        for n in self.graph:
            if (n.domain, n.op_type) in WEIGHT_OPS:
                self._seed(n)
        while self._queue:
            s = self._queue.pop()
            v = s.value
            if id(v) in self._outputs:
                self.freeze(s, None, "graph output (the model interface keeps its width)")
            if id(v) in self._inputs:
                self.freeze(s, None, "graph input (the model interface keeps its width)")
            if v.const is not None and id(v) in self._inputs:
                self.freeze(s, None, "initializer that is also a graph input (overridable)")
            if v.const is None and v.producer() is None and id(v) not in self._inputs:
                self.freeze(s, None, "value from an enclosing scope")
            p = v.producer()
            nodes = ([p] if p is not None else []) + v.users()
            for n in nodes:
                key = (id(n), id(v), s.axis)
                if key in self._done:
                    continue
                self._done.add(key)
                try:
                    self._relate(n, s)
                except Frozen as e:
                    self.freeze(s, n, str(e))
                except (TypeError, ValueError, IndexError, KeyError, AttributeError) as e:
                    # a rule met a case it does not model (unknown rank, odd attribute): stay safe
                    self.freeze(s, n, f"not modelled ({type(e).__name__}: {e})")

    def _seed(self, n: Node) -> None:
        info = weight_info(n)
        if info is None or constant_value(n.inputs[info.weight]) is None:
            return  # MatMul of two activations: reached (heads) through its inputs, never seeded
        try:
            out = n.outputs[0]
            self.slot(out, info.act_axis)
        except Frozen as e:
            self.reasons.append((f"{n.outputs[0].name}", _node_label(n), f"not analysed: {e}"))

    def _relate(self, n: Node, s: Slot) -> None:
        if n.graph is not self.graph:
            raise Frozen("used inside a subgraph")
        if n.subgraphs():
            raise Frozen(f"{n.op_type} has subgraphs")
        key = (n.domain, n.op_type)
        if key in WEIGHT_OPS:
            return self._weight_op(n, s)
        op = n.op_type if n.domain in _STD else None
        rule = _RULES.get(op) if op is not None else None
        if rule is not None:
            return rule(self, n, s)
        if key in PASS_THROUGH:
            return self._pass_through(n, s)
        raise Frozen(f"{n.qualified_op} is not understood by prune")

    # -- generic pass-through -----------------------------------------------------------------
    def _port(self, n: Node, s: Slot) -> tuple[str, int]:
        for k, o in enumerate(n.outputs):
            if o is s.value:
                return ("out", k)
        for i, x in enumerate(n.inputs):
            if x is s.value:
                return ("in", i)
        raise Frozen("slot not on node")

    def _other_outputs_unused(self, n: Node) -> None:
        for o in n.outputs[1:]:
            if o.num_uses() or id(o) in self._outputs:
                raise Frozen(f"{n.op_type}'s output {o.name} is used")

    def _pass_through(self, n: Node, s: Slot) -> None:
        self._other_outputs_unused(n)
        kind, k = self._port(n, s)
        out = n.outputs[0]
        if kind == "out":
            if k != 0:
                raise Frozen(f"output {k} of {n.op_type}")
            oa = s.axis
        else:
            oa = passes_channel_through(n, k, s.axis)
            if oa is None:
                raise Frozen(f"{n.op_type} mixes or resizes the channel axis of input {k}")
        so = self.slot(out, oa)
        if kind == "in":
            self.link(s, so)
        ro = _rank(out)
        broadcast = n.op_type in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu",
                                  "Where", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Xor",
                                  "Mod", "BiasGelu")
        for j, x in enumerate(n.inputs):
            if x is None or (kind == "in" and j == k):
                continue
            r = _rank(x)
            if r is None:
                raise Frozen(f"rank of input {j} unknown")
            if broadcast:
                aj = oa - (ro - r)
                if aj < 0:
                    continue  # the input has no such axis: broadcast along it
                d = _dims(x)[aj]
                if d == 1 and so.size != 1:
                    continue  # broadcast
                if passes_channel_through(n, j, aj) != oa:
                    raise Frozen(f"input {j} of {n.op_type} does not carry the channel axis")
                self.link(self.slot(x, aj), so)
            else:
                found = [a for a in range(r) if passes_channel_through(n, j, a) == oa]
                if found:
                    self.link(self.slot(x, found[0]), so)
                elif j == 0:
                    raise Frozen(f"{n.op_type} does not carry the channel axis")
                # other inputs: scalars/attributes-as-inputs (Clip min, Pad pads, ...)

    # -- weight ops ---------------------------------------------------------------------------
    def _weight_op(self, n: Node, s: Slot) -> None:
        info = weight_info(n)
        if info is None:
            raise Frozen(f"{n.op_type} without a weight")
        x, w, out = n.inputs[info.data], n.inputs[info.weight], n.outputs[0]
        if constant_value(w) is None:
            if info.kind == "matmul" and n.op_type == "MatMul":
                return self._batched_matmul(n, s)
            raise Frozen(f"{n.op_type} with a non-constant weight")
        if id(w) in self._inputs:
            raise Frozen(f"{n.op_type} weight is an overridable initializer")
        if w.dtype not in _FLOAT:
            raise Frozen(f"{n.op_type} weight is {w.dtype}")
        wd = _dims(w)
        if info.kind in ("gemm", "matmul") and len(wd) != 2:
            raise Frozen(f"{n.op_type} weight of rank {len(wd)}")
        kind, k = self._port(n, s)
        if kind == "in" and k not in (info.data, info.weight, info.bias):
            raise Frozen(f"input {k} of {n.op_type}")
        if kind == "out" and s.axis != _norm_axis(info.act_axis, _rank(out)):
            raise Frozen(f"axis {s.axis} of {n.op_type}'s output is not its channel axis")
        if kind == "in" and k == info.data and s.axis != _norm_axis(info.data_axis, _rank(x)):
            raise Frozen(f"axis {s.axis} of {n.op_type}'s input is not its channel axis")
        if info.kind == "gemm" and len(n.inputs) > 2 and n.inputs[2] is not None:
            c = n.inputs[2]
            if constant_value(c) is None:
                raise Frozen("Gemm with a non-constant C")
        so = self.slot(out, info.act_axis)
        sx = self.slot(x, info.data_axis)
        g = info.group
        cin, cout = sx.size, so.size
        depthwise = False
        if info.kind == "conv":
            sw_out, sw_in = self.slot(w, 0), self.slot(w, 1)
            self.link(sw_out, so)
            if g == 1:
                self.link(sw_in, sx)
            elif g == cin and cout % cin == 0 and sw_in.size == 1:
                depthwise = True
                m = cout // cin
                for c in range(cin):
                    for t in range(m):
                        self.uf.union(int(sx.ids[c]), int(so.ids[c * m + t]))
                if not any(f.kind == "group" and f.node is n for f in self.fixes):
                    self.fixes.append(Fix("group", n, sx))
            else:
                cin_g, cout_g = cin // g, cout // g
                for j in range(cin):
                    self.uf.union(int(sx.ids[j]), int(sw_in.ids[j % cin_g]))
                for o in range(cout):
                    self.uf.union(int(so.ids[o]), int(so.ids[o % cout_g]))
        elif info.kind == "conv_transpose":
            if g != 1:
                raise Frozen("grouped ConvTranspose")
            self.link(self.slot(w, 0), sx)
            self.link(self.slot(w, 1), so)
        else:
            self.link(self.slot(w, info.in_axis), sx)
            self.link(self.slot(w, info.out_axis), so)
        if info.bias is not None:
            b = n.inputs[info.bias]
            if constant_value(b) is None:
                raise Frozen(f"{n.op_type} with a non-constant bias")
            bd = _dims(b)
            if len(bd) >= 1 and bd[-1] == cout and (len(bd) == 1 or _prod(bd[:-1]) == 1):
                self.link(self.slot(b, len(bd) - 1), so)
            elif len(bd) >= 1 and bd[-1] != 1:
                raise Frozen(f"{n.op_type} bias of shape {bd}")
        if not any(wu.node is n for wu in self.weights):
            self.weights.append(WeightUse(n, info.kind, so, sx, w, depthwise, _macs(n, info, wd)))

    def _batched_matmul(self, n: Node, s: Slot) -> None:
        """MatMul of two activations (attention): batch axes (heads) pass through."""
        out = n.outputs[0]
        ro = _rank(out)
        kind, k = self._port(n, s)
        oa = s.axis if kind == "out" else s.axis + ro - _rank(n.inputs[k])
        if oa >= ro - 2 or oa < 0:
            raise Frozen("MatMul with a non-constant weight contracts or mixes the channel axis")
        so = self.slot(out, oa)
        for x in n.inputs:
            r = _rank(x)
            a = oa - (ro - r)
            if a < 0 or _dims(x)[a] == 1:
                continue
            self.link(self.slot(x, a), so)

    # -- summaries ----------------------------------------------------------------------------
    def root(self, e: int) -> int:
        return self.uf.find(e)

    def frozen_roots(self) -> set[int]:
        return {self.uf.find(e) for e in self.frozen_ids}

    def classes(self, s: Slot) -> list[int]:
        return [self.uf.find(int(e)) for e in s.ids]


def _norm_axis(a: int, r: int | None) -> int:
    return a % r if r else a


def _node_label(n: Node) -> str:
    out = next((o.name for o in n.outputs if o.name), None)
    return f"{n.qualified_op} {n.name or out or '?'!r}"


def _macs(n: Node, info, wd: list) -> float:
    """Multiply-accumulates of one run (symbolic dims count as 1)."""
    out = _dims(n.outputs[0]) or []
    n_out = _prod(d if isinstance(d, int) else 1 for d in out)
    if info.kind == "conv":
        return float(n_out * _prod(wd[1:]))
    if info.kind == "conv_transpose":
        x = _dims(n.inputs[info.data]) or []
        return float(_prod(d if isinstance(d, int) else 1 for d in x) * _prod(wd[1:]))
    return float(n_out * int(wd[info.in_axis]))


# ------------------------------------------------------------------------------------------------
# Op rules (standard domain) beyond opsem's pass-through table
# ------------------------------------------------------------------------------------------------
def _r_concat(dg: DepGraph, n: Node, s: Slot) -> None:
    out = n.outputs[0]
    r = _rank(out)
    axis = int(n.attr("axis", 0)) % r
    so = dg.slot(out, s.axis if s.value is out else s.axis)
    if so.axis != axis:
        for x in n.inputs:
            dg.link(dg.slot(x, so.axis), so)
        return
    off = 0
    for x in n.inputs:
        sx = dg.slot(x, axis)
        for i in range(sx.size):
            dg.uf.union(int(sx.ids[i]), int(so.ids[off + i]))
        off += sx.size
    if off != so.size:
        raise Frozen("Concat sizes do not add up")


def _r_split(dg: DepGraph, n: Node, s: Slot) -> None:
    x = n.inputs[0]
    r = _rank(x)
    axis = int(n.attr("axis", 0)) % r
    a = s.axis
    if len(n.inputs) > 1 and n.inputs[1] is not None and constant_value(n.inputs[1]) is None:
        raise Frozen("Split with computed sizes")
    sx = dg.slot(x, a)
    outs = [dg.slot(o, a) for o in n.outputs]
    if a != axis:
        for so in outs:
            dg.link(sx, so)
        return
    off = 0
    for so in outs:
        for i in range(so.size):
            dg.uf.union(int(so.ids[i]), int(sx.ids[off + i]))
        off += so.size
    if off != sx.size:
        raise Frozen("Split sizes do not add up")
    if not any(f.kind == "split" and f.node is n for f in dg.fixes):
        dg.fixes.append(Fix("split", n, sx, axis, outs))


def _merge_map(din: list, dout: list, a: int) -> tuple[int, int, int] | None:
    """(output axis b, outer, inner) when input axis `a` (C channels) lands in output axis b
    together with `outer` elements of the flattened axes before it and `inner` of those after:
    out[b: (o * C + c) * inner + j] <-> in[a: c] (row-major reshape). None if the reshape splits
    the channel axis itself or moves it otherwise."""
    C = din[a]
    if not isinstance(C, int) or C <= 0:
        return None
    same = _one_symbol(din, dout)
    sym_in = sorted(same.get(str(d), str(d)) for d in din[:a] if not isinstance(d, int))
    pre_in = _prod(d for d in din[:a] if isinstance(d, int))
    for b in range(len(dout)):
        if not isinstance(dout[b], int):
            continue
        if sorted(same.get(str(d), str(d)) for d in dout[:b] if not isinstance(d, int)) != sym_in:
            continue
        pre_out = _prod(d for d in dout[:b] if isinstance(d, int))
        inner, u = 1, a + 1
        while True:
            if dout[b] % (C * inner) == 0:
                outer = dout[b] // (C * inner)
                if pre_out * outer == pre_in:
                    return b, outer, inner
            if u >= len(din) or not isinstance(din[u], int):
                break
            inner *= din[u]
            u += 1
    return None


def _same_prod(xs: list, ys: list) -> bool:
    sx = sorted(str(d) for d in xs if not isinstance(d, int))
    sy = sorted(str(d) for d in ys if not isinstance(d, int))
    if sx != sy:
        return False
    return _prod(d for d in xs if isinstance(d, int)) == _prod(d for d in ys if isinstance(d, int))


def _shape_pieces(v: Value | None) -> list | None:
    """A computed Reshape shape built as Concat of 1-element pieces (the exporter's
    Shape -> Gather -> Unsqueeze -> Concat idiom): per output axis, (concat, index, constant or None)."""
    p = v.producer() if v is not None else None
    while p is not None and p.op_type == "Cast" and p.domain in _STD:  # tf2onnx casts the shape
        p = p.inputs[0].producer()
    if p is None or p.op_type != "Concat" or p.domain not in _STD:
        return None
    out = []
    for i, x in enumerate(p.inputs):
        d = _dims(x)
        if d != [1]:
            return None
        c = constant_value(x)
        out.append((p, i, None if c is None else int(np.asarray(c).reshape(-1)[0])))
    return out


def _one_symbol(din: list, dout: list) -> dict[str, str]:
    """Reshape often names its output's unknown dim afresh: with one symbol on each side and the
    same static element count, the two are the same size."""
    si = [str(d) for d in din if not isinstance(d, int)]
    so = [str(d) for d in dout if not isinstance(d, int)]
    if len(si) == 1 and len(so) == 1 and si != so and \
            _prod(d for d in din if isinstance(d, int)) == _prod(d for d in dout if isinstance(d, int)):
        return {so[0]: si[0]}
    return {}


def _split_map(din: list, dout: list, a: int) -> int | None:
    """Output axis b when input axis `a` is split into output axes b, b+1 (heads x head size)."""
    same = _one_symbol(din, dout)
    dout = [same.get(str(d), d) if not isinstance(d, int) else d for d in dout]
    din = [str(d) if not isinstance(d, int) else d for d in din]
    for b in range(len(dout) - 1):
        if (dout[:b] == din[:a] and dout[b + 2:] == din[a + 1:] and isinstance(dout[b], int)
                and isinstance(dout[b + 1], int) and dout[b] * dout[b + 1] == din[a] and dout[b] > 1):
            return b
    return None


def _r_reshape(dg: DepGraph, n: Node, s: Slot) -> None:
    x, out = n.inputs[0], n.outputs[0]
    din, dout = _dims(x), _dims(out)
    if din is None or dout is None:
        raise Frozen(f"{n.op_type} with unknown shapes")
    pieces = None
    shape = None
    if n.op_type == "Reshape":
        c = constant_value(n.inputs[1]) if len(n.inputs) > 1 else None
        if c is not None:
            shape = [int(v) for v in np.asarray(c).reshape(-1)]
        else:
            pieces = _shape_pieces(n.inputs[1])
            if pieces is None:
                raise Frozen("Reshape with a computed shape")
    split = None
    if s.value is x:
        m = _merge_map(din, dout, s.axis)
        if m is None:
            b = _split_map(din, dout, s.axis)
            if b is None:
                raise Frozen(f"{n.op_type} splits or moves the channel axis")
            split = (s, dg.slot(out, b), dout[b + 1])
        else:
            b, outer, inner = m
            sx, so = s, dg.slot(out, b)
    else:
        b = s.axis
        found = None
        for a in range(len(din)):
            m = _merge_map(din, dout, a)
            if m is not None and m[0] == b and isinstance(din[a], int) and din[a] > 1:
                found = (a, m[1], m[2])
                break
        if found is None:
            for a in range(len(din)):
                if _split_map(din, dout, a) == b:
                    split = (dg.slot(x, a), s, dout[b + 1])
                    break
            if split is None:
                raise Frozen(f"{n.op_type} splits or moves the channel axis")
        else:
            a, outer, inner = found
            sx, so = dg.slot(x, a), s
    if split is not None:  # whole heads: in[h * D + d] ~ out_heads[h]
        sx, so, D = split
        if n.op_type != "Reshape":
            raise Frozen(f"{n.op_type} splits the channel axis")
        for h in range(so.size):
            for d in range(D):
                dg.uf.union(int(sx.ids[h * D + d]), int(so.ids[h]))
    else:
        C = sx.size
        if outer * C * inner != so.size:
            raise Frozen(f"{n.op_type} sizes do not match")
        for o in range(outer):
            for c in range(C):
                base = (o * C + c) * inner
                for j in range(inner):
                    dg.uf.union(int(sx.ids[c]), int(so.ids[base + j]))
    if n.op_type == "Reshape":
        if shape is not None:
            if b < len(shape) and shape[b] == 0 and not (split is None and inner == 1 and outer == 1
                                                         and sx.axis == b):
                raise Frozen("Reshape copies the channel dim (0) from another axis")
            piece = None
        else:
            if b >= len(pieces) or pieces[b][2] is None:
                raise Frozen("Reshape's channel dim is computed")
            if pieces[b][2] == 0 and not (split is None and inner == 1 and outer == 1 and sx.axis == b):
                raise Frozen("Reshape copies the channel dim (0) from another axis")
            piece = pieces[b][:2]
        if not any(f.kind == "reshape" and f.node is n for f in dg.fixes):
            dg.fixes.append(Fix("reshape", n, so, b, piece=piece))


def _r_expand(dg: DepGraph, n: Node, s: Slot) -> None:
    x, out = n.inputs[0], n.outputs[0]
    din, dout = _dims(x), _dims(out)
    if din is None or dout is None:
        raise Frozen("Expand with unknown shapes")
    pieces = None if constant_value(n.inputs[1]) is not None else _shape_pieces(n.inputs[1])
    if constant_value(n.inputs[1]) is None and pieces is None:
        raise Frozen("Expand with a computed shape")
    r, ro = len(din), len(dout)
    if s.value is x:
        ia, oa = s.axis, s.axis + ro - r
    else:
        oa, ia = s.axis, s.axis - (ro - r)
        if ia < 0 or din[ia] != dout[oa]:
            raise Frozen("Expand creates the channel axis")
    if din[ia] != dout[oa]:
        raise Frozen("Expand broadcasts the channel axis")
    dg.link(dg.slot(x, ia), dg.slot(out, oa))
    if pieces is not None:
        k = oa - (ro - len(pieces))
        if k >= 0 and pieces[k][2] is None:
            raise Frozen("Expand's channel dim is computed")
        if k >= 0 and pieces[k][2] != 1 and not any(f.kind == "reshape" and f.node is n for f in dg.fixes):
            dg.fixes.append(Fix("reshape", n, dg.slot(out, oa), k, piece=pieces[k][:2]))
        return
    shape = [int(v) for v in np.asarray(constant_value(n.inputs[1])).reshape(-1)]
    k = oa - (ro - len(shape))
    if k >= 0 and shape[k] not in (1,) and not any(f.kind == "reshape" and f.node is n for f in dg.fixes):
        dg.fixes.append(Fix("reshape", n, dg.slot(out, oa), k))


def _r_squeeze(dg: DepGraph, n: Node, s: Slot) -> None:
    x, out = n.inputs[0], n.outputs[0]
    rin, rout = _rank(x), _rank(out)
    if rin is None or rout is None:
        raise Frozen("unknown ranks")
    axes = _axes_of(n)
    if axes == "dynamic":
        raise Frozen(f"{n.op_type} with computed axes")
    if n.op_type == "Squeeze":
        if axes is None:
            axes = [i for i, d in enumerate(_dims(x)) if d == 1]
        axes = sorted(a % rin for a in axes)
        keep = [i for i in range(rin) if i not in axes]  # keep[out_axis] = in_axis
    else:
        axes = sorted(a % rout for a in axes)
        keep = [i for i in range(rout) if i not in axes]  # keep[in_axis] = out_axis
    if s.value is x:
        if n.op_type == "Squeeze":
            if s.axis in axes:
                raise Frozen("Squeeze removes the channel axis")
            so = dg.slot(out, keep.index(s.axis))
        else:
            so = dg.slot(out, keep[s.axis])
        dg.link(s, so)
    else:
        if n.op_type == "Squeeze":
            sx = dg.slot(x, keep[s.axis])
        else:
            if s.axis in axes:
                raise Frozen("Unsqueeze axis")
            sx = dg.slot(x, keep.index(s.axis))
        dg.link(sx, s)


def _r_flatten(dg: DepGraph, n: Node, s: Slot) -> None:
    _r_reshape(dg, n, s)


def _r_axis_op(dg: DepGraph, n: Node, s: Slot) -> None:
    """Softmax / LogSoftmax / Hardmax / CumSum-like ops: pass through unless on their axis."""
    r = _rank(n.inputs[0])
    axis = int(n.attr("axis", -1)) % r
    if s.axis == axis:
        raise Frozen(f"{n.op_type} mixes the channel axis")
    x, out = n.inputs[0], n.outputs[0]
    dg.link(dg.slot(x, s.axis), dg.slot(out, s.axis))


def _r_layernorm(dg: DepGraph, n: Node, s: Slot) -> None:
    dg._other_outputs_unused(n)
    x, out = n.inputs[0], n.outputs[0]
    r = _rank(x)
    axis = int(n.attr("axis", -1)) % r
    if s.value is not x and s.value is not out:  # the slot is on the scale or bias
        if _rank(s.value) != 1 or axis != r - 1:
            raise Frozen("LayerNormalization parameter")
        s = dg.slot(out, axis)
    if s.axis < axis:
        dg.link(dg.slot(x, s.axis), dg.slot(out, s.axis))
        return
    if not dg.prune_layernorm:
        raise Frozen("LayerNormalization normalises over the channel axis (prune-layernorm=false)")
    if axis != r - 1:
        raise Frozen("LayerNormalization over several axes")
    sx, so = dg.slot(x, axis), dg.slot(out, axis)
    dg.link(sx, so)
    for p in n.inputs[1:]:
        if p is None:
            continue
        if constant_value(p) is None:
            raise Frozen("LayerNormalization with non-constant scale/bias")
        if _rank(p) == 1:
            dg.link(dg.slot(p, 0), so)
        else:
            raise Frozen("LayerNormalization scale of rank > 1")


def _r_reduce(dg: DepGraph, n: Node, s: Slot) -> None:
    x, out = n.inputs[0], n.outputs[0]
    r = _rank(x)
    axes = _axes_of(n)
    if axes == "dynamic":
        raise Frozen(f"{n.op_type} with computed axes")
    if axes is None:
        if n.attr("noop_with_empty_axes", 0):
            dg.link(dg.slot(x, s.axis), dg.slot(out, s.axis))
            return
        raise Frozen(f"{n.op_type} over every axis")
    axes = sorted(a % r for a in axes)
    keepdims = int(n.attr("keepdims", 1))
    keep = list(range(r)) if keepdims else [i for i in range(r) if i not in axes]
    if s.value is x:
        if s.axis in axes:
            if dg.prune_layernorm and len(axes) == 1 and _statistic(dg, n, s):
                return  # a mean over the channels (decomposed LayerNorm): recomputed over the kept ones
            raise Frozen(f"{n.op_type} reduces the channel axis")
        dg.link(s, dg.slot(out, keep.index(s.axis)))
    else:
        ia = keep[s.axis]
        if ia in axes:
            raise Frozen(f"{n.op_type} reduces the channel axis")
        dg.link(dg.slot(x, ia), s)


def _statistic(dg: DepGraph, n: Node, s: Slot) -> bool:
    """ReduceMean over the channel axis, or ReduceSum whose only users multiply it by the scalar
    constant 1/C (a mean, rewritten to 1/kept by a fix)."""
    if n.op_type == "ReduceMean":
        return True
    if n.op_type != "ReduceSum":
        return False
    out = n.outputs[0]
    users = out.users()
    if not users or out.is_graph_output():
        return False
    for u in users:
        if u.op_type != "Mul" or len(u.inputs) != 2:
            return False
        other = u.inputs[1] if u.inputs[0] is out else u.inputs[0]
        c = constant_value(other)
        if c is None or np.asarray(c).size != 1 or abs(float(np.asarray(c).reshape(-1)[0]) * s.size - 1) > 1e-4:
            return False
    for u in users:
        if not any(f.kind == "mean" and f.node is u for f in dg.fixes):
            dg.fixes.append(Fix("mean", u, s))
    return True


def _r_gather(dg: DepGraph, n: Node, s: Slot) -> None:
    data, idx, out = n.inputs[0], n.inputs[1], n.outputs[0]
    r, ri = _rank(data), _rank(idx)
    axis = int(n.attr("axis", 0)) % r
    if s.value is idx:
        raise Frozen("Gather indices carry channels")
    if s.value is data:
        if s.axis == axis:
            raise Frozen("Gather selects along the channel axis")
        oa = s.axis if s.axis < axis else s.axis + ri - 1
        dg.link(s, dg.slot(out, oa))
    else:
        oa = s.axis
        if oa < axis:
            ia = oa
        elif oa >= axis + ri:
            ia = oa - ri + 1
        else:
            raise Frozen("Gather indices axis")
        dg.link(dg.slot(data, ia), s)


def _r_slice(dg: DepGraph, n: Node, s: Slot) -> None:
    x, out = n.inputs[0], n.outputs[0]
    r = _rank(x)
    axes = _axes_of(n, "axes", 3)
    if axes == "dynamic":
        raise Frozen("Slice with computed axes")
    starts = constant_value(n.inputs[1]) if len(n.inputs) > 1 else None
    axes = list(range(len(np.asarray(starts).reshape(-1)))) if axes is None and starts is not None else axes
    if axes is None:
        raise Frozen("Slice with unknown axes")
    axes = [a % r for a in axes]
    if s.axis in axes:
        din, dout = _dims(x), _dims(out)
        k = axes.index(s.axis)
        st = np.asarray(starts).reshape(-1)
        steps = constant_value(n.inputs[4]) if len(n.inputs) > 4 and n.inputs[4] is not None else None
        step = 1 if steps is None else int(np.asarray(steps).reshape(-1)[k])
        if not (din is not None and dout is not None and din[s.axis] == dout[s.axis] and step == 1
                and int(st[k]) in (0, -din[s.axis]) or int(st[k]) <= -2**62):
            raise Frozen("Slice along the channel axis")
    dg.link(dg.slot(x, s.axis), dg.slot(out, s.axis))


def _r_constant(dg: DepGraph, n: Node, s: Slot) -> None:
    if constant_value(n.outputs[0]) is None:
        raise Frozen("Constant that is not a dense tensor")


def _r_shape(dg: DepGraph, n: Node, s: Slot) -> None:
    """Shape is fine when only other dims are read from it (Gather of a constant index)."""
    out = n.outputs[0]
    if out.is_graph_output() or "start" in n.attrs or "end" in n.attrs:
        raise Frozen("Shape reads the channel count")
    for u in out.users():
        if u.op_type != "Gather" or int(u.attr("axis", 0)) != 0 or u.inputs[0] is not out:
            raise Frozen("Shape reads the channel count")
        idx = constant_value(u.inputs[1])
        r = _rank(s.value)
        if idx is None or any(int(i) % r == s.axis for i in np.asarray(idx).reshape(-1)):
            raise Frozen("Shape reads the channel count")


def _r_mixing(dg: DepGraph, n: Node, s: Slot) -> None:
    raise Frozen(f"{n.op_type} reads the channel count or mixes channels")


_RULES: dict[str, Callable[[DepGraph, Node, Slot], None]] = {
    "Concat": _r_concat, "Split": _r_split, "Reshape": _r_reshape, "Flatten": _r_flatten,
    "Squeeze": _r_squeeze, "Unsqueeze": _r_squeeze,
    "Softmax": _r_axis_op, "LogSoftmax": _r_axis_op, "Hardmax": _r_axis_op,
    "LayerNormalization": _r_layernorm,
    "ReduceMean": _r_reduce, "ReduceSum": _r_reduce, "ReduceMax": _r_reduce, "ReduceMin": _r_reduce,
    "ReduceProd": _r_reduce, "ReduceL2": _r_reduce, "ReduceL1": _r_reduce, "ReduceSumSquare": _r_reduce,
    "ReduceLogSumExp": _r_reduce,
    "Gather": _r_gather, "Slice": _r_slice,
    "Constant": _r_constant, "Shape": _r_shape, "Size": _r_mixing, "Expand": _r_expand, "Tile": _r_mixing,
}
