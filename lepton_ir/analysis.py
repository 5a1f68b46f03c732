"""Graph analyses: topological order, cycle detection, and a networkx view for graph algorithms."""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from .errors import GraphCycleError

if TYPE_CHECKING:
    import networkx as nx

    from .ir import Graph, Node


def _deps(node: "Node", graph: "Graph") -> list["Node"]:
    """Producers in `graph` of the node's inputs, including uses made inside its subgraphs."""
    out = []
    for v in node.inputs:
        if v is not None and v.producer() is not None and v.producer().graph is graph:
            out.append(v.producer())
    for g in node.subgraphs():
        for inner in g.all_nodes():
            for v in inner.inputs:
                if v is not None and v.producer() is not None and v.producer().graph is graph:
                    out.append(v.producer())
    return out


def topological_order(graph: "Graph") -> list["Node"]:
    """Nodes of `graph` in a topological order, stable with respect to the current order.

    Raises GraphCycleError naming nodes on the cycle.
    """
    nodes = list(graph)
    pos = {id(n): i for i, n in enumerate(nodes)}
    indeg = [0] * len(nodes)
    succ: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        for d in set(map(id, _deps(n, graph))):
            if d in pos:
                succ[pos[d]].append(i)
                indeg[i] += 1
    ready = [i for i, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        stuck = [nodes[i] for i, d in enumerate(indeg) if d > 0]
        names = ", ".join(repr(n.name or n.op_type) for n in stuck[:5])
        more = f" and {len(stuck) - 5} more" if len(stuck) > 5 else ""
        raise GraphCycleError(f"graph {graph.name!r} has a cycle among nodes {names}{more}")
    return [nodes[i] for i in order]


def is_sorted(graph: "Graph") -> bool:
    seen: set[int] = set()
    for n in graph:
        for d in _deps(n, graph):
            if id(d) not in seen:
                return False
        seen.add(id(n))
    return True


def to_networkx(graph: "Graph") -> "nx.MultiDiGraph":
    """A networkx view: one vertex per node, one edge per (producer -> user, value).

    Used by partitioning and scheduling passes, which want graph algorithms (dominators, cuts,
    min-cut) that networkx already provides.
    """
    import networkx as nx

    g = nx.MultiDiGraph()
    for n in graph:
        g.add_node(n)
    for n in graph:
        for d in _deps(n, graph):
            g.add_edge(d, n)
    return g
