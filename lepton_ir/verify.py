"""The verifier: checks the IR's invariants and says where one is broken.

Invariants: every value is defined once and before its uses (in this graph or an enclosing one,
for subgraphs), use lists match node inputs exactly, producers match outputs, node lists are
consistent, names are unique per graph scope, initializers' types agree with their data, and
graph outputs are defined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import VerifyError
from .types import TensorType

if TYPE_CHECKING:
    from .ir import Graph, Model, Node, Value


def _where(graph: "Graph", node: "Node | None" = None) -> str:
    path = []
    g = graph
    while g is not None:
        path.append(g.name or "<graph>")
        g = g.parent.graph if g.parent is not None else None
    loc = "/".join(reversed(path))
    if node is not None:
        loc += f": node {node.name or '<unnamed>'} ({node.qualified_op})"
    return loc


def verify_graph(graph: "Graph", outer: dict[int, "Value"] | None = None) -> None:
    """Raise VerifyError at the first broken invariant of `graph` (and its subgraphs)."""
    scope: dict[int, Value] = dict(outer or {})
    names: dict[str, Value] = {}

    def define(v: "Value", what: str, node: "Node | None" = None) -> None:
        if id(v) in scope and (outer is None or id(v) not in outer):
            raise VerifyError(f"{_where(graph, node)}: value {v!r} is defined twice ({what})")
        if id(v) in (outer or {}):
            raise VerifyError(f"{_where(graph, node)}: value {v!r} shadows a value of an enclosing graph")
        if v.name:
            other = names.get(v.name)
            if other is not None and other is not v:
                raise VerifyError(f"{_where(graph, node)}: two values are named {v.name!r}")
            names[v.name] = v
        scope[id(v)] = v

    for v in graph.inputs:
        if v.graph is not graph:
            raise VerifyError(f"{_where(graph)}: input {v!r} does not belong to this graph")
        define(v, "graph input")
    for name, v in graph.initializers.items():
        if v.name != name:
            raise VerifyError(f"{_where(graph)}: initializer registered as {name!r} is named {v.name!r}")
        if v.const is None:
            raise VerifyError(f"{_where(graph)}: initializer {v!r} has no data")
        if isinstance(v.type, TensorType):
            if v.type.dtype != v.const.dtype:
                raise VerifyError(f"{_where(graph)}: initializer {v!r} is typed {v.type.dtype.short} "
                                  f"but holds {v.const.dtype.short}")
            if v.type.shape is not None and tuple(v.type.shape.dims) != tuple(v.const.shape.dims):
                raise VerifyError(f"{_where(graph)}: initializer {v!r} is typed {v.type.shape} but holds "
                                  f"{v.const.shape}")
        if id(v) not in scope:
            define(v, "initializer")

    count = 0
    prev = None
    for node in graph:
        count += 1
        if node.graph is not graph:
            raise VerifyError(f"{_where(graph, node)}: node's graph link is wrong")
        if node._prev is not prev:
            raise VerifyError(f"{_where(graph, node)}: node list is corrupt (back link)")
        prev = node
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in scope:
                where = "later in the graph" if v.producer() is not None and v.producer().graph is graph \
                    else "nowhere in scope"
                raise VerifyError(f"{_where(graph, node)}: input {i} {v!r} is used before it is defined "
                                  f"(defined {where})")
            if (node, i) not in v._uses:
                raise VerifyError(f"{_where(graph, node)}: input {i} {v!r} is missing from its use list")
        for k, o in enumerate(node.outputs):
            if o._producer is not node or o._index != k:
                raise VerifyError(f"{_where(graph, node)}: output {k} {o!r} has a wrong producer link")
        for a in node.attrs.values():
            for sub in a.graphs():
                if sub.parent is not node:
                    raise VerifyError(f"{_where(graph, node)}: subgraph {a.name!r} has a wrong parent link")
                verify_graph(sub, scope)
        for o in node.outputs:
            define(o, "node output", node)
    if count != len(graph):
        raise VerifyError(f"{_where(graph)}: node count {len(graph)} disagrees with the list ({count})")
    if graph._tail is not prev:
        raise VerifyError(f"{_where(graph)}: node list is corrupt (tail)")

    for v in scope.values():
        if outer is not None and id(v) in outer:
            continue
        for user, i in v._uses:
            if user.graph is None:
                raise VerifyError(f"{_where(graph)}: {v!r} is used by a node no longer in any graph: {user!r}")
            if i >= len(user.inputs) or user.inputs[i] is not v:
                raise VerifyError(f"{_where(graph)}: use list of {v!r} names {user!r} input {i}, "
                                  "which reads another value")
    for k, o in enumerate(graph.outputs):
        if id(o) not in scope:
            raise VerifyError(f"{_where(graph)}: output {k} {o!r} is not defined in scope")


def verify_model(model: "Model") -> None:
    """Verify the main graph and every function body."""
    verify_graph(model.graph)
    for f in model.functions.values():
        verify_graph(f.graph)
    for domain in {n.domain for n in model.graph.all_nodes()}:
        d = "" if domain == "ai.onnx" else domain
        if d not in model.opset_imports and not any(k[0] == domain for k in model.functions):
            raise VerifyError(f"model: nodes use domain {domain!r}, which is not in the opset imports")
