"""Fingerprints of a Model, to tell whether a pass really changed it.

Modelled on MLIR's `OperationFingerPrint` (mlir/lib/Pass/IRPrinting.cpp): instead of trusting a
pass's own "changed" answer, take a fingerprint before and after it and compare.

    before = fingerprint(model)
    some_pass.run(model)
    changed = fingerprint(model) != before

A fingerprint covers the main graph, every subgraph (recursively, through attributes) and every
local function: node order, op type/domain/overload, names, docs and metadata, attributes with
their values, input wiring, value names and types, graph inputs/outputs/initializers, and the
model's opset imports and metadata.

Like MLIR's (which hashes operation and operand pointers), it is about *these objects*: nodes and
values enter by identity, so input wiring records which value a node reads, never just its name,
and a node or value replaced by a look-alike counts as a change. Compare fingerprints of one
model over time; a copy of a model (`clone_model`, a reload) has other objects and another
fingerprint.

Constant tensors are immutable in this IR, so a tensor enters by its identity plus its dtype and
shape, never by its bytes: the cost is O(nodes + values), not O(weights). A pass that computes a
new constant creates a new tensor object, which changes the fingerprint.
"""

from __future__ import annotations

from typing import Any

from .ir import Attr, AttrType, Function, Graph, Model, Node, Value
from .tensor import SparseTensor, Tensor


class Fingerprint:
    """The fingerprint of a model at one moment; compare two with `==`.

    It holds the full key (a nested tuple), so equality is exact: no hash collision can make two
    states look the same.
    """

    __slots__ = ("_key", "_hash")

    def __init__(self, key: tuple) -> None:
        # The key holds the nodes, values and tensors themselves, not their id()s: as long as this
        # fingerprint lives none of them can be freed, so no object a pass creates can be placed
        # at a freed one's address and pass for it (ids are only unique among live objects).
        self._key = key
        self._hash: int | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fingerprint):
            return NotImplemented
        if self is other:
            return True
        if self._hash is not None and other._hash is not None and self._hash != other._hash:
            return False
        return self._key == other._key  # nodes/values/tensors compare by identity (no __eq__)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self._key)
        return self._hash

    def __repr__(self) -> str:
        return f"<Fingerprint {hash(self) & 0xFFFFFFFFFFFF:012x}>"


def _tensor(t: Any) -> tuple:
    if isinstance(t, Tensor):
        return (t, t.dtype, t.shape)
    if isinstance(t, SparseTensor):
        return (t, t.values.dtype, t.dims)
    return (t,)


def _value(v: Value) -> tuple:
    return (v, v.name, v.type, v.doc) if v.const is None else (v, v.name, v.type, v.doc, _tensor(v.const))


def _attr_value(a: Attr) -> Any:
    t, v = a.type, a.value
    if v is None:
        return None  # a pure reference to a function attribute (`ref` is recorded)
    if t == AttrType.INT or t == AttrType.STRING or t == AttrType.INTS or t == AttrType.STRINGS:
        return tuple(v) if isinstance(v, list) else v
    if t == AttrType.FLOAT:
        # hex: NaN equals NaN and -0.0 differs from 0.0, as in the serialized model.
        return float(v).hex()
    if t == AttrType.FLOATS:
        return tuple(float(x).hex() for x in v)
    if t == AttrType.GRAPH:
        return _graph(v)
    if t == AttrType.GRAPHS:
        return tuple(_graph(g) for g in v)
    if t == AttrType.TENSOR or t == AttrType.SPARSE_TENSOR:
        return _tensor(v)
    if t == AttrType.TENSORS or t == AttrType.SPARSE_TENSORS:
        return tuple(_tensor(x) for x in v)
    if t == AttrType.TYPE_PROTOS:
        return tuple(v)
    return v  # TYPE_PROTO: a frozen, comparable Type


def _attrs(attrs: dict[str, Attr]) -> tuple:
    return tuple((k, a.type, a.ref, a.doc, _attr_value(a)) for k, a in attrs.items())


def _node(n: Node) -> tuple:
    # The hot path, once per node: single-output nodes (most) skip building a tuple of outputs.
    outs = n.outputs
    if len(outs) == 1:
        o = outs[0]
        od: tuple = (o, o.name, o.type, o.doc, o.const)
    else:
        od = tuple([(o, o.name, o.type, o.doc, o.const) for o in outs])
    return (n, n.op_type, n.domain, n.overload, n.name, n.doc,
            tuple(n.metadata_props.items()) if n.metadata_props else (),
            tuple(n._inputs), _attrs(n.attrs) if n.attrs else (), od)


def _graph(g: Graph) -> tuple:
    inputs = tuple([_value(v) for v in g.inputs])
    declared = {id(v) for v in g.inputs}
    # An initializer that is also a graph input is described there already: only its name here.
    inits = tuple([(name, v) if id(v) in declared else (name, _value(v)) for name, v in g.initializers.items()])
    sparse = tuple([(k, _tensor(t)) for k, t in g.sparse_initializers.items()])
    nodes = tuple([_node(n) for n in g])
    return (g.name, g.doc, _freeze(g.metadata_props), _freeze(g.extra), inputs, inits, sparse, nodes,
            tuple(g.outputs))


def _function(f: Function) -> tuple:
    defaults = tuple((k, a.name, a.type, a.ref, _attr_value(a)) for k, a in f.attribute_defaults.items())
    return (f.key, tuple(f.attributes), defaults, _freeze(f.opset_imports), f.doc, _freeze(f.metadata_props),
            _graph(f.graph))


def _freeze(x: Any) -> Any:
    """A comparable, hashable form of the small containers kept in `extra` and metadata."""
    if isinstance(x, dict):
        return tuple((k, _freeze(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    if isinstance(x, (str, bytes, int, float, bool, type(None))):
        return x
    return repr(x)


def fingerprint(model: Model) -> Fingerprint:
    """The fingerprint of `model` as it is now (see the module doc). O(nodes + values)."""
    functions = tuple(_function(f) for f in model.functions.values())
    return Fingerprint((model.ir_version, _freeze(model.opset_imports), model.producer_name,
                        model.producer_version, model.domain, model.model_version, model.doc,
                        _freeze(model.metadata_props), _freeze(model.extra), functions, _graph(model.graph)))


__all__ = ["Fingerprint", "fingerprint"]
