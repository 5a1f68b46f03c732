"""Type and shape (re)inference for a Model, on top of ONNX's shape inference.

Passes change the graph; this brings value types up to date without copying weights: large
initializers are handed to onnx as typed graph inputs (shape inference only needs their types),
small ones (the shape tensors that Reshape/Expand/Slice read) keep their data so data propagation
still works. Inferred types are copied back by walking the IR and the exported protobuf in step.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx

from .errors import LeptonError
from .ir import Graph, Model, Node, Value
from .tensor import ArrayTensor, Tensor
from .types import Dim, DType, Shape, TensorType, Type


class ShapeInferenceError(LeptonError):
    """A node's output types cannot be (re)inferred, or its inputs contradict each other."""


def infer_types(model: Model, *, reset: bool = False, strict: bool = False) -> None:
    """Fill in / refine the types of all values from ONNX shape inference.

    With `reset`, types of node outputs are first forgotten (e.g. after input shapes changed).
    Known dims are never replaced by unknown ones; ints win over symbols. Inference is best-effort:
    nodes onnx cannot infer keep the types they had, unless `strict` (onnx's strict mode), which
    raises ShapeInferenceError with onnx's reason instead.
    """
    from .onnx_io import _Exporter

    if reset:
        for g in model.graph.all_graphs():
            for n in g:
                for o in n.outputs:
                    o.type = None
    exp = _Exporter(defer=4096)
    proto = exp.model(model)
    deferred = {tp.name for tp, _ in exp.deferred}
    if deferred:
        keep = [tp for tp in proto.graph.initializer if tp.name not in deferred]
        moved = [tp for tp in proto.graph.initializer if tp.name in deferred]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
        declared_inputs = {vi.name for vi in proto.graph.input}
        for tp in moved:
            if tp.name not in declared_inputs:
                proto.graph.input.append(onnx.helper.make_tensor_value_info(tp.name, tp.data_type, list(tp.dims)))
    try:
        # strict_mode makes onnx raise for a node it cannot infer instead of skipping it.
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=strict, data_prop=True)
    except Exception as e:
        if strict:
            raise ShapeInferenceError(f"onnx shape inference failed on the model: {_first_line(e)}") from None
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False)
        except Exception:
            return  # inference is best-effort: a model it cannot handle keeps the types it had
    _copy_back(model.graph, inferred.graph)


def _types_by_name(gp: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    out: dict[str, onnx.TypeProto] = {}
    for vi in list(gp.input) + list(gp.value_info) + list(gp.output):
        if vi.HasField("type"):
            out[vi.name] = vi.type
    return out


def _copy_back(g: Graph, gp: onnx.GraphProto) -> None:
    from .onnx_io import _type

    types = _types_by_name(gp)
    pnodes = list(gp.node)
    for node, pn in zip(g, pnodes):
        for o, name in zip(node.outputs, pn.output):
            t = types.get(name)
            if t is not None and name:
                o.type = merge_types(o.type, _type(t))
        pattrs = {a.name: a for a in pn.attribute}
        for a in node.attrs.values():
            pa = pattrs.get(a.name)
            if pa is None:
                continue
            if a.type.name == "GRAPH":
                _copy_back(a.value, pa.g)
            elif a.type.name == "GRAPHS":
                for sub, psub in zip(a.value, pa.graphs):
                    _copy_back(sub, psub)
    for o, vi in zip(g.outputs, gp.output):
        if vi.HasField("type"):
            o.type = merge_types(o.type, _type(vi.type))


def merge_types(old: Type | None, new: Type | None) -> Type | None:
    """Combine what is known: ints beat symbols, symbols beat unknown; never lose a known dim."""
    if old is None:
        return new
    if new is None:
        return old
    if isinstance(old, TensorType) and isinstance(new, TensorType):
        if old.dtype != new.dtype and old.dtype.value != 0:
            return old
        if old.shape is None:
            return TensorType(new.dtype, new.shape)
        if new.shape is None or len(new.shape) != len(old.shape):
            return old
        dims = [_merge_dim(a, b) for a, b in zip(old.shape.dims, new.shape.dims)]
        return TensorType(old.dtype if old.dtype.value else new.dtype, Shape(dims))
    return old


def _merge_dim(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    if isinstance(a, str) and not a.startswith("unk__"):
        return a
    if isinstance(b, str):
        return b if (a is None or not isinstance(a, str)) else a
    return a


def pin_input_shapes(model: Model, shapes: Mapping[str, Sequence[int]]) -> None:
    """Fix graph input shapes (e.g. `{"x": [1, 3, 224, 224]}`) and re-infer every type.

    Symbolic dims bound this way are substituted everywhere they appear. Raises LeptonError for
    an unknown input, a rank mismatch, or a conflict with a fixed dim.
    """
    g = model.graph
    by_name = {v.name: v for v in g.inputs if v.const is None}
    binding: dict[str, int] = {}
    for name, dims in shapes.items():
        v = by_name.get(name)
        if v is None:
            raise LeptonError(f"--input-shape: the model has no input named {name!r}; inputs: "
                              f"{', '.join(repr(k) for k in by_name)}")
        dims = [int(d) for d in dims]
        if any(d < 0 for d in dims):
            raise LeptonError(f"--input-shape: negative dimension in {name}={dims}")
        t = v.type
        if not isinstance(t, TensorType):
            raise LeptonError(f"--input-shape: input {name!r} is not a tensor")
        if t.shape is not None:
            if len(t.shape) != len(dims):
                raise LeptonError(f"--input-shape: input {name!r} has rank {len(t.shape)}, given {len(dims)} dims")
            for old, new in zip(t.shape.dims, dims):
                if isinstance(old, int) and old != new:
                    raise LeptonError(f"--input-shape: input {name!r} has fixed shape {t.shape}, given {dims}")
                if isinstance(old, str) and not _anonymous(old):
                    if binding.get(old, new) != new:
                        raise LeptonError(f"--input-shape: symbol {old!r} bound to both {binding[old]} and {new}")
                    binding[old] = new
        v.type = TensorType(t.dtype, Shape(dims))
    if binding:
        for gr in g.all_graphs():
            for val in list(gr.inputs) + [o for n in gr for o in n.outputs] + list(gr.outputs):
                _substitute(val, binding)
    infer_types(model, reset=True)


def _anonymous(sym: str) -> bool:
    """Symbols that only mean "unknown": Paddle writes "?" for every free dim, onnx's inference
    invents unk__N. Two dims carrying them are not known to be equal."""
    return sym in ("?", "-1", "") or sym.startswith("unk__")


def _substitute(v: Value, binding: Mapping[str, int]) -> None:
    v.type = _subst_type(v.type, binding)
    for key in ("declared_output_type", "input_type", "declared_type"):
        if key in v.meta:
            v.meta[key] = _subst_type(v.meta[key], binding)


def _subst_type(t: Type | None, binding: Mapping[str, int]) -> Type | None:
    if isinstance(t, TensorType) and t.shape is not None and any(isinstance(d, str) for d in t.shape.dims):
        return TensorType(t.dtype, Shape([binding.get(d, d) if isinstance(d, str) else d for d in t.shape.dims]))
    return t


# ------------------------------------------------------------------------------------------------
# Re-propagation after a local change (pruning, a replaced weight)
# ------------------------------------------------------------------------------------------------
#
# `infer_types` exports the whole model and merges what onnx says into what is known, never
# forgetting a dim: right for refining, wrong after a pass changed a dim on purpose (the stale 64
# would win over the new 48 forever). `repropagate` re-infers only the forward cone of the changed
# values, one node at a time, and the new types replace the old ones. Anything it cannot infer is
# an error: a pruning pass must not ship a model whose recorded shapes lie.

#: fn(node, input types) -> output types (one per output; None only for omitted outputs).
ShapeFunction = Callable[[Node, Sequence["Type | None"]], Sequence["Type | None"]]

_SHAPE_FUNCTIONS: dict[tuple[str, str], ShapeFunction] = {}
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
#: Small constants (shape tensors, axes, Resize scales) go to onnx as data; weights never do.
_DATA_LIMIT = 1024
#: Ops whose small integer results are computed during re-propagation, so a Reshape fed by
#: Concat(Shape(x)[0], -1) still gets exact dims (per-node inference has no data propagation).
_DATA_OPS = frozenset({
    "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Add", "Sub", "Mul", "Div", "Mod", "Neg",
    "Abs", "Identity", "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "Range", "Equal", "Where", "Max",
    "Min", "Reshape", "Expand", "ConstantOfShape", "Less", "Greater", "Not", "And", "Or", "Tile", "Flatten"})


def register_shape_function(domain: str, op_type: str, fn: ShapeFunction) -> None:
    """Teach `repropagate` the output types of a non-standard op (`fn(node, input_types)`)."""
    _SHAPE_FUNCTIONS[(domain, op_type)] = fn


def infer_like(op_type: str, node: Node, input_types: Sequence[Type | None], *, drop: Sequence[str] = (),
               opset: int | None = None) -> list[Type | None]:
    """Output types of `node` inferred as if it were the standard op `op_type` (its attributes
    minus `drop`), e.g. a fused Conv+activation as Conv. For shape functions of custom ops."""
    proxy = Node(op_type, [Value(f"in{i}") if t is not None else None for i, t in enumerate(input_types)],
                 {k: a for k, a in node.attrs.items() if k not in drop}, num_outputs=1)
    ver = opset or onnx.defs.onnx_opset_version()
    return _onnx_infer(proxy, list(input_types), {}, {"": ver}, 10, label=node)


def repropagate(model: Model, changed: Iterable[Value]) -> None:
    """Re-infer the types of every value downstream of `changed`; new dims replace old ones.

    Node by node in topological order over the forward cone only: standard ops through onnx's
    per-node inference (small constant inputs passed as data), other domains through functions
    registered with `register_shape_function`. Graph outputs (and their declared types) follow.
    Values outside the cone keep their type objects. Raises ShapeInferenceError naming the node
    when a type cannot be inferred or the inputs contradict each other (a weight's input channels
    no longer matching its data, a broadcast or rank mismatch), and for nodes with subgraphs
    (If/Loop/Scan) in the cone: see `_reinfer` for why those are refused rather than guessed.
    """
    changed = [v for v in changed if v is not None]
    dirty = {id(v) for v in changed}
    graphs: list[Graph] = []
    for v in changed:
        g = v.graph
        if g is not None and all(g is not x for x in graphs):
            graphs.append(g)
    cache: dict[int, np.ndarray | None] = {}
    for g in graphs:
        _walk(model, g, dirty, cache)


def replace_constant(value: Value, array: Any, *, model: Model) -> None:
    """Give the initializer `value` a new constant (any shape or dtype), update its type, and
    re-propagate the types downstream of it. See `replace_constants` for several at once."""
    replace_constants(model, {value: array})


def replace_constants(model: Model, arrays: Mapping[Value, Any]) -> None:
    """`replace_constant` for several initializers, then one re-propagation: a consistent edit such
    as pruning a Conv's output channels changes W, B and the next Conv's W together, and the
    states in between are contradictory (they would raise)."""
    for v, a in arrays.items():
        if v.const is None:
            raise ShapeInferenceError(f"replace_constant: {v!r} is not an initializer (it has no constant)")
        t = a if isinstance(a, Tensor) else ArrayTensor(np.asarray(a))
        v.const = t
        v.type = TensorType(t.dtype, t.shape)
        if "input_type" in v.meta:  # initializer also declared as a graph input (IR < 4)
            v.meta["input_type"] = v.type
        if "declared_output_type" in v.meta:  # an initializer returned as a graph output
            v.meta["declared_output_type"] = _redeclare(v.meta["declared_output_type"], v.type)
    repropagate(model, list(arrays))


def _label(n: Node) -> str:
    out = next((o.name for o in n.outputs if o.name), None)
    return f"{n.qualified_op} node {n.name or out or '?'!r}"


def _walk(model: Model, g: Graph, dirty: set[int], cache: dict[int, np.ndarray | None]) -> None:
    from .analysis import topological_order

    for n in topological_order(g):
        if not _touches(n, dirty):
            continue
        new = _reinfer(model, n, cache)
        for o, t in zip(n.outputs, new):
            if t is None or t == o.type:
                continue  # unchanged: keep the type object, and the cone stops here
            o.type = t
            dirty.add(id(o))
            for key in ("declared_output_type", "declared_type"):
                if key in o.meta:
                    o.meta[key] = _redeclare(o.meta[key], t)
    if g.parent is not None and any(id(o) in dirty for o in g.outputs):
        raise ShapeInferenceError(f"cannot re-infer {_label(g.parent)}: the types of its body {g.name!r} changed "
                                  "and nodes with subgraphs are not re-inferred")


def _touches(n: Node, dirty: set[int]) -> bool:
    if any(v is not None and id(v) in dirty for v in n.inputs):
        return True
    return any(v is not None and id(v) in dirty for sg in n.subgraphs() for inner in sg.all_nodes()
               for v in inner.inputs)


def _redeclare(declared: Type, new: Type) -> Type:
    """The declared type brought up to date: new ints win, a declared symbol survives where the
    new type knows nothing (onnx forgets symbol names the declaration had)."""
    if not (isinstance(declared, TensorType) and isinstance(new, TensorType)) or new.shape is None \
            or declared.shape is None or len(declared.shape) != len(new.shape):
        return new
    dims = [d if (n is None and isinstance(d, str)) else n for d, n in zip(declared.shape.dims, new.shape.dims)]
    return TensorType(new.dtype, Shape(dims))


def _reinfer(model: Model, n: Node, cache: dict[int, np.ndarray | None]) -> list[Type | None]:
    """New output types of `n`, or ShapeInferenceError.

    Nodes with subgraphs are refused: re-inferring a body means re-inferring values it reads from
    outside, and the only tool for that, onnx's whole-model inference, merges with the types a
    model declares and gives up silently, which is exactly the stale-dim behaviour this function
    exists to avoid. A pass that prunes into an If/Loop/Scan must say so (it gets this error).
    """
    if n.subgraphs():
        raise ShapeInferenceError(f"cannot re-infer {_label(n)}: nodes with subgraphs (If/Loop/Scan) are not "
                                  "re-inferred; the change reaches its body or inputs")
    ins = [v.type if v is not None else None for v in n.inputs]
    for v, t in zip(n.inputs, ins):
        if v is not None and t is None:
            raise ShapeInferenceError(f"cannot re-infer {_label(n)}: its input {v!r} has no type")
    _check_channels(n)
    fn = _SHAPE_FUNCTIONS.get((n.domain, n.op_type))
    if fn is not None:
        try:
            outs = list(fn(n, ins))
        except ShapeInferenceError:
            raise
        except Exception as e:  # noqa: BLE001 - a shape function that fails means "cannot infer"
            raise ShapeInferenceError(f"cannot re-infer {_label(n)}: {_first_line(e)}") from None
    elif n.domain in _STANDARD_DOMAINS:
        data = {i: d for i, v in enumerate(n.inputs) if v is not None and (d := _data(model, v, cache)) is not None}
        outs = _onnx_infer(n, ins, data, model.opset_imports, model.ir_version, label=n)
        if n.op_type == "Reshape" and 1 not in data and len(n.inputs) > 1:
            outs = _reshape_symbolic(n, outs, _sym_data(model, n.inputs[1], cache))
    else:
        raise ShapeInferenceError(f"cannot re-infer {_label(n)}: no shape function for domain {n.domain!r}; "
                                  "register one with lepton_ir.register_shape_function")
    if len(outs) != len(n.outputs):
        raise ShapeInferenceError(f"cannot re-infer {_label(n)}: its shape function gave {len(outs)} types "
                                  f"for {len(n.outputs)} outputs")
    from .onnx_io import _empty_output

    for o, t in zip(n.outputs, outs):
        if t is None and not _empty_output(o):
            raise ShapeInferenceError(f"cannot re-infer {_label(n)}: no type for its output {o!r}")
    return outs


def _static_dims(t: Type | None) -> list[Dim] | None:
    return list(t.shape.dims) if isinstance(t, TensorType) and t.shape is not None else None


def _check_channels(n: Node) -> None:
    """What onnx does not check itself: a weight op's data channels against the weight's input
    channels (onnx's Conv inference ignores them) and the bias against the output channels."""
    from .opsem import weight_info

    info = weight_info(n)
    if info is None:
        return
    w = n.inputs[info.weight]
    wd = _static_dims(w.type if w is not None else None)
    if wd is None or not all(isinstance(d, int) for d in wd) or len(wd) < 2:
        return
    xd = _static_dims(n.inputs[info.data].type if n.inputs[info.data] is not None else None)
    if xd is not None and -len(xd) <= info.data_axis < len(xd):
        c = xd[info.data_axis]
        if isinstance(c, int) and c != info.in_channels(wd):
            raise ShapeInferenceError(
                f"cannot re-infer {_label(n)}: its input {n.inputs[info.data]!r} has {c} channels but its weight "
                f"{w!r} {list(wd)} reads {info.in_channels(wd)}")
    if info.bias is not None and info.kind == "gemm" and xd is not None and len(xd) == 2:
        # C must broadcast (one way) to the (M, N) output; onnx's Gemm inference does not check.
        c = n.inputs[info.bias]
        cd, out = _static_dims(c.type), [xd[1 - info.data_axis], info.out_channels(wd)]
        if cd is not None and (len(cd) > 2 or any(isinstance(a, int) and isinstance(b, int) and a not in (1, b)
                                                   for a, b in zip(cd[::-1], out[::-1]))):
            raise ShapeInferenceError(f"cannot re-infer {_label(n)}: its C {c!r} {list(cd)} does not broadcast "
                                      f"to the output {out}")
    if info.bias is not None and info.kind in ("conv", "conv_transpose"):
        b = n.inputs[info.bias]
        bd = _static_dims(b.type)
        if bd is not None and len(bd) == 1 and isinstance(bd[0], int) and bd[0] != info.out_channels(wd):
            raise ShapeInferenceError(f"cannot re-infer {_label(n)}: its bias {b!r} has {bd[0]} entries for "
                                      f"{info.out_channels(wd)} output channels")


def _onnx_infer(n: Node, ins: Sequence[Type | None], data: Mapping[int, np.ndarray], opsets: Mapping[str, int],
                ir_version: int, *, label: Node) -> list[Type | None]:
    """One node through onnx's per-node inference (`onnx.shape_inference.infer_node_outputs`)."""
    from .onnx_io import _empty_output, _Exporter, _type, _type_proto

    dom = "" if n.domain in ("", "ai.onnx") else n.domain
    ver = opsets.get(dom, opsets.get("ai.onnx") if dom == "" else None)
    if ver is None:
        raise ShapeInferenceError(f"cannot re-infer {_label(label)}: the model imports no opset of "
                                  f"{dom or 'ai.onnx'!r}")
    try:
        schema = onnx.defs.get_schema(n.op_type, ver, dom)
    except Exception:
        raise ShapeInferenceError(f"cannot re-infer {_label(label)}: onnx knows no {n.op_type} in opset {ver} "
                                  "(a model-local function? inline it first)") from None
    p = onnx.NodeProto()
    p.op_type, p.domain = n.op_type, dom
    p.input.extend("" if v is None else f"in{i}" for i, v in enumerate(n.inputs))
    p.output.extend("" if _empty_output(o) else f"out{i}" for i, o in enumerate(n.outputs))
    exp = _Exporter(defer=None)
    for a in n.attrs.values():
        p.attribute.append(exp.attr(a, None))  # type: ignore[arg-type]  (no graphs: refused above)
    types = {f"in{i}": _type_proto(t) for i, t in enumerate(ins) if t is not None}
    tdata = {f"in{i}": onnx.numpy_helper.from_array(np.asarray(a), f"in{i}") for i, a in data.items()}
    try:
        got = onnx.shape_inference.infer_node_outputs(
            schema, p, types, tdata, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()],
            ir_version=max(int(ir_version), 3))
    except Exception as e:  # noqa: BLE001 - onnx raises InferenceError, ValidationError, RuntimeError
        raise ShapeInferenceError(f"cannot re-infer {_label(label)}: {_first_line(e)}") from None
    outs: list[Type | None] = []
    for i, o in enumerate(n.outputs):
        tp = got.get(f"out{i}")
        t = _type(tp) if tp is not None else None
        if isinstance(t, TensorType) and t.dtype == DType.UNDEFINED:
            t = None
        outs.append(t)
    return outs


def _data(model: Model, v: Value, cache: dict[int, np.ndarray | None]) -> np.ndarray | None:
    """The value's contents when small and knowable without running the model: constants, Constant
    nodes, Shape/Size of static types, and small integer ops over those (memoised in `cache`)."""
    key = id(v)
    if key in cache:
        return cache[key]
    cache[key] = None  # also guards against revisiting while computing
    t = v.type
    dims = _static_dims(t)
    small = dims is not None and all(isinstance(d, int) for d in dims) and int(np.prod(dims or [1])) <= _DATA_LIMIT
    out: np.ndarray | None = None
    p = v.producer()
    try:
        if v.const is not None:
            if int(np.prod(v.const.shape.dims or [1])) <= _DATA_LIMIT and v.const.dtype != DType.STRING:
                out = np.asarray(v.const.numpy())
        elif p is not None and p.domain in ("", "ai.onnx") and not p.subgraphs():
            if p.op_type == "Constant" and "value" in p.attrs:
                c = p.attr("value")
                out = np.asarray(c.numpy()) if int(np.prod(c.shape.dims or [1])) <= _DATA_LIMIT else None
            elif p.op_type in ("Constant",) and ("value_ints" in p.attrs or "value_int" in p.attrs):
                out = np.asarray(p.attr("value_ints", p.attr("value_int")), np.int64)
            elif p.op_type in ("Shape", "Size"):
                xd = _static_dims(p.inputs[0].type)
                if xd is not None and all(isinstance(d, int) for d in xd):
                    if p.op_type == "Size":
                        out = np.asarray(int(np.prod(xd or [1])), np.int64)
                    else:
                        out = np.asarray(_shape_op(p, xd), np.int64)
            elif p.op_type in _DATA_OPS and small and isinstance(t, TensorType) and t.dtype.is_integer:
                args = [None if x is None else _data(model, x, cache) for x in p.inputs]
                if all(a is not None for x, a in zip(p.inputs, args) if x is not None):
                    out = _evaluate_node(model, p, args)
    except Exception:  # noqa: BLE001 - data is a refinement: without it onnx infers fewer dims
        out = None
    cache[key] = out
    return out


def _shape_op(p: Node, dims: list[Dim]) -> list[Dim]:
    """What Shape node `p` returns for an input of `dims` (its `start`/`end` clamp like Python)."""
    r = len(dims)
    start, end = int(p.attr("start", 0)), p.attr("end", None)
    end = r if end is None else int(end)
    return list(dims)[slice(*(max(min(k + r if k < 0 else k, r), 0) for k in (start, end)))]


def _sym_data(model: Model, v: Value | None, cache: dict[int, np.ndarray | None],
              depth: int = 0) -> tuple[list[Dim], bool] | None:
    """Symbolic contents of a small integer shape vector: (entries, is_scalar), entries ints or
    symbols (None: unknown). Follows Shape, Slice, Gather, Concat, (Un)Squeeze, Cast, Identity, so
    `Reshape(x, Concat(Shape(x)[0:1], [-1]))` keeps a symbolic batch dim (onnx's per-node inference
    only takes numeric data)."""
    if v is None or depth > 32:
        return None
    num = _data(model, v, cache)
    if num is not None:
        return ([int(x) for x in num.reshape(-1)], num.ndim == 0) if num.dtype.kind in "iu" and num.ndim <= 1 else None
    p = v.producer()
    if p is None or p.domain not in ("", "ai.onnx"):
        return None
    op = p.op_type
    try:
        if op == "Shape":
            xd = _static_dims(p.inputs[0].type)
            return (_shape_op(p, xd), False) if xd is not None else None
        args = [_sym_data(model, x, cache, depth + 1) if x is not None else None for x in p.inputs]
        if op in ("Cast", "Identity") and args[0] is not None:
            return args[0]
        if op == "Concat" and all(a is not None and not a[1] for a in args):
            return [d for a in args for d in a[0]], False  # type: ignore[index]
        if op == "Unsqueeze" and args[0] is not None and args[0][1]:
            return args[0][0], False
        if op == "Squeeze" and args[0] is not None and len(args[0][0]) == 1:
            return args[0][0], True
        if op == "Gather" and args[0] is not None and not args[0][1] and int(p.attr("axis", 0)) == 0:
            idx = _data(model, p.inputs[1], cache)
            if idx is not None and idx.ndim <= 1:
                src = args[0][0]
                return [src[int(i)] for i in idx.reshape(-1)], idx.ndim == 0
        if op == "Slice" and args[0] is not None and not args[0][1]:
            k = [_data(model, x, cache) if x is not None else None for x in p.inputs[1:5]]
            if k[0] is None or k[1] is None or (len(k) > 2 and k[2] is not None and int(k[2].reshape(-1)[0]) != 0):
                return None
            step = int(k[3].reshape(-1)[0]) if len(k) > 3 and k[3] is not None else 1
            src = args[0][0]
            st, en = int(k[0].reshape(-1)[0]), int(k[1].reshape(-1)[0])
            return src[slice(*slice(st, en, step).indices(len(src)))], False
    except Exception:  # noqa: BLE001 - a refinement, as for _data
        return None
    return None


def _reshape_symbolic(n: Node, outs: list[Type | None], sym: tuple[list[Dim], bool] | None) -> list[Type | None]:
    """Reshape's output dims from a symbolic shape vector: 0 copies the input dim (allowzero=0),
    -1 is what is left once equal ints and symbols cancel; anything else stays as onnx said."""
    xd = _static_dims(n.inputs[0].type)
    t = outs[0]
    if sym is None or sym[1] or xd is None or not isinstance(t, TensorType):
        return outs
    target = list(sym[0])
    if not n.attr("allowzero", 0):
        target = [xd[i] if d == 0 and i < len(xd) else d for i, d in enumerate(target)]
    if target.count(-1) == 1:
        k = target.index(-1)
        num, den = list(xd), [d for i, d in enumerate(target) if i != k]
        for d in list(den):
            if d in num:
                num.remove(d)
                den.remove(d)
        if all(isinstance(d, int) for d in num + den) and None not in num + den:
            total, rest = int(np.prod(num or [1])), int(np.prod(den or [1]))
            target[k] = total // rest if rest and total % rest == 0 else None
        elif not den and len(num) == 1:
            target[k] = num[0]
        else:
            target[k] = None
    if any(isinstance(d, int) and d < 0 for d in target):
        return outs
    return [TensorType(t.dtype, Shape(target))] + outs[1:]


def _evaluate_node(model: Model, n: Node, args: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """Output 0 of one standard node on constant inputs, with onnx's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    from .onnx_io import _Exporter

    exp = _Exporter(defer=None)
    names = ["" if a is None else f"in{i}" for i, a in enumerate(args)]
    node = onnx.helper.make_node(n.op_type, names, [f"out{i}" for i in range(len(n.outputs))])
    node.attribute.extend(exp.attr(a, None) for a in n.attrs.values())  # type: ignore[arg-type]
    inits = [onnx.numpy_helper.from_array(np.asarray(a), nm) for a, nm in zip(args, names) if a is not None]
    graph = onnx.helper.make_graph([node], "data", [], [onnx.helper.make_tensor_value_info("out0", 0, None)], inits)
    ver = model.opset("") or onnx.defs.onnx_opset_version()
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", ver)])
    return np.asarray(ReferenceEvaluator(proto).run(None, {})[0])


def _first_line(e: BaseException) -> str:
    """The error's text on one line, capped: onnx messages can quote whole protos."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
