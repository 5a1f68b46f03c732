"""`cse`: common subexpression elimination, constants included."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lepton_ir import Attr, AttrType, Graph, Model, Node

from ..base import Pass, register_pass
from ..util import replace_value

# Ops whose results differ between two evaluations with the same inputs.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})


def _attr_key(a: Attr) -> Any:
    if a.ref is not None:
        return ("ref", a.ref)
    t = a.type
    if t == AttrType.TENSOR:
        return (t, a.value.digest())
    if t == AttrType.TENSORS:
        return (t, tuple(x.digest() for x in a.value))
    if t in (AttrType.GRAPH, AttrType.GRAPHS, AttrType.SPARSE_TENSOR, AttrType.SPARSE_TENSORS):
        return None  # not compared: nodes with such attributes are never merged
    if t in (AttrType.FLOATS, AttrType.INTS, AttrType.STRINGS, AttrType.TYPE_PROTOS):
        return (t, tuple(map(_float_key, a.value)))
    return (t, _float_key(a.value))


def _float_key(v: Any) -> Any:
    # Distinguish -0.0 from 0.0 and make NaN equal to itself: attributes equal bit for bit.
    if isinstance(v, float):
        return ("f", v.hex())
    return v


def node_key(n: Node) -> tuple | None:
    """A hashable key equal for nodes that compute the same thing, or None if not mergeable."""
    if n.op_type in NONDETERMINISTIC or n.subgraphs():
        return None
    attrs = []
    for name in sorted(n.attrs):
        k = _attr_key(n.attrs[name])
        if k is None:
            return None
        attrs.append((name, k))
    return (n.domain, n.op_type, n.overload, len(n.outputs), tuple(id(v) if v is not None else None for v in n.inputs),
            tuple(attrs))


def _cse_graph(g: Graph) -> bool:
    changed = False
    # Identical constants first, so nodes reading them become identical too.
    inputs = {id(v) for v in g.inputs}
    seen_const: dict[tuple, Any] = {}
    for name, v in list(g.initializers.items()):
        if id(v) in inputs or v.is_graph_output():
            continue
        key = (v.const.dtype, v.const.shape.dims, v.const.digest())
        first = seen_const.get(key)
        if first is None:
            seen_const[key] = v
            continue
        v.replace_all_uses_with(first)
        g.remove_initializer(name)
        changed = True
    seen: dict[tuple, Node] = {}
    for n in g:
        for sub in n.subgraphs():
            changed |= _cse_graph(sub)
        key = node_key(n)
        if key is None:
            continue
        first = seen.get(key)
        if first is None:
            seen[key] = n
            continue
        for old, new in zip(n.outputs, first.outputs):
            replace_value(old, new)
        if not any(o.num_uses() or o.is_graph_output() for o in n.outputs):
            g.remove(n)
        changed = True
    return changed


@register_pass
@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    """Merge nodes that compute the same op on the same inputs with equal attributes, and equal constants."""

    name = "cse"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = _cse_graph(model.graph)
        for f in model.functions.values():
            changed |= _cse_graph(f.graph)
        return changed
