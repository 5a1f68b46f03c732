"""Type and shape (re)inference for a Model, on top of ONNX's shape inference.

Passes change the graph; this brings value types up to date without copying weights: large
initializers are handed to onnx as typed graph inputs (shape inference only needs their types),
small ones (the shape tensors that Reshape/Expand/Slice read) keep their data so data propagation
still works. Inferred types are copied back by walking the IR and the exported protobuf in step.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import onnx

from .errors import LeptonError
from .ir import Graph, Model, Value
from .types import Dim, Shape, TensorType, Type


def infer_types(model: Model, *, reset: bool = False) -> None:
    """Fill in / refine the types of all values from ONNX shape inference.

    With `reset`, types of node outputs are first forgotten (e.g. after input shapes changed).
    Known dims are never replaced by unknown ones; ints win over symbols.
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
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
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
