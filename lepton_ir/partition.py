"""Capability-based partitioning: group a graph's nodes into cycle-free regions by a support oracle.

After torch.fx's `CapabilityBasedPartitioner`: every node gets a label from an oracle (a backend
that can run it, or the fallback), neighbouring nodes with the same label are merged into regions
as long as the contracted graph stays acyclic (checked with networkx: merging A and B is refused
when a path A -> ... -> B leaves A and B, since the merged region would both feed and read that
path), then regions below a size floor or a compute-to-copy floor are handed to the fallback and
merged again. The result is a list of regions in a topological order of the contracted DAG, each
with the values it reads from outside and the values it hands on: `lepton_ir.extract` turns each
into a stage model.

Nodes holding subgraphs (If/Loop/Scan) are single units. Constants are not nodes here
(canonicalize folds Constant nodes into initializers; `extract` copies the initializers a region
reads), so they never cross a border.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Hashable, Mapping, Sequence

from .analysis import _deps, topological_order
from .ir import Graph, Node, Value


@dataclasses.dataclass
class Region:
    """A set of nodes placed together, in graph order, with its border values."""

    label: Hashable
    nodes: list[Node]
    inputs: list[Value]  # non-constant values read from outside the region (graph inputs included)
    outputs: list[Value]  # values read outside the region or returned by the graph
    reason: str = ""  # why the region has its label (e.g. the oracle's reason for a fallback)

    def __len__(self) -> int:
        return len(self.nodes)


def _reads(node: Node, graph: Graph) -> list[Value]:
    """Non-constant values of `graph`'s scope that `node` reads (subgraph captures included)."""
    out: list[Value] = []
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        for v in n.inputs:
            if v is None or v.const is not None or id(v) in seen:
                continue
            if v.graph is graph:
                seen.add(id(v))
                out.append(v)
        for sub in n.subgraphs():
            stack.extend(sub)
    return out


def partition(graph: Graph, label_of: Callable[[Node], Hashable], *, fallback: Hashable,
              min_size: int = 1, min_compute_ratio: float = 0.0,
              compute_of: Callable[[Node], float] | None = None, bytes_of: Callable[[Value], float] | None = None,
              reasons: Mapping[int, str] | None = None) -> list[Region]:
    """Cycle-free regions of `graph`'s nodes, each with one label.

    `label_of(node)` says where a node can go (`fallback` for nodes only the fallback runs).
    Regions not labelled `fallback` with fewer than `min_size` nodes, or whose compute (sum of
    `compute_of` over its nodes) over the bytes crossing its border (`bytes_of` of its inputs and
    outputs) is below `min_compute_ratio`, are relabelled `fallback` (copies at borders cost more
    than such a region gains). `reasons` (by id(node)) are carried into fallback regions' `reason`.
    """
    import networkx as nx

    nodes = topological_order(graph)
    if not nodes:
        return []
    labels = {id(n): label_of(n) for n in nodes}

    def build(labels: dict[int, Hashable]) -> list[list[Node]]:
        # Contracted DAG over groups; start with one group per node.
        group = {id(n): i for i, n in enumerate(nodes)}
        members: dict[int, list[Node]] = {i: [n] for i, n in enumerate(nodes)}
        g = nx.DiGraph()
        g.add_nodes_from(range(len(nodes)))
        for i, n in enumerate(nodes):
            for d in _deps(n, graph):
                if group[id(d)] != i:
                    g.add_edge(group[id(d)], i)

        def try_merge(a: int, b: int) -> bool:
            """Merge group b into a unless that creates a cycle in the contracted graph."""
            if a == b:
                return True
            direct = [e for e in ((a, b), (b, a)) if g.has_edge(*e)]
            for e in direct:
                g.remove_edge(*e)
            cyclic = nx.has_path(g, a, b) or nx.has_path(g, b, a)
            for e in direct:
                g.add_edge(*e)
            if cyclic:
                return False
            nx.contracted_nodes(g, a, b, self_loops=False, copy=False)
            for n in members.pop(b):
                group[id(n)] = a
                members[a].append(n)
            return True

        # 1. Producer-consumer merges along edges, in graph order (the common case: chains).
        for n in nodes:
            for d in _deps(n, graph):
                ga, gb = group[id(d)], group[id(n)]
                if ga != gb and labels[id(d)] == labels[id(n)]:
                    try_merge(ga, gb)
        # 2. Siblings: same-label groups neither of which reaches the other (parallel branches);
        # merging those can create no cycle. Reachability is computed once and kept up to date.
        desc = {a: nx.descendants(g, a) for a in members}
        ids = sorted(members)
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                if a not in members or b not in members:
                    continue
                if labels[id(members[a][0])] != labels[id(members[b][0])] or b in desc[a] or a in desc[b]:
                    continue
                if try_merge(a, b):
                    desc[a] |= desc.pop(b)
                    for x, d in desc.items():
                        if a in d or b in d:
                            d.discard(b)
                            d.add(a)
                            d |= desc[a]
        order = list(nx.topological_sort(g))
        pos = {id(n): k for k, n in enumerate(nodes)}
        return [sorted(members[k], key=lambda n: pos[id(n)]) for k in order]

    groups = build(labels)
    # Floors: small or copy-bound non-fallback regions go to the fallback, then regroup once.
    demoted = False
    for grp in groups:
        lab = labels[id(grp[0])]
        if lab == fallback:
            continue
        small = len(grp) < min_size
        poor = False
        if min_compute_ratio > 0 and compute_of is not None and bytes_of is not None:
            ins, outs = _border(graph, grp)
            copied = sum(bytes_of(v) for v in ins + outs) or 1.0
            poor = sum(compute_of(n) for n in grp) / copied < min_compute_ratio
        if small or poor:
            demoted = True
            for n in grp:
                labels[id(n)] = fallback
    if demoted:
        groups = build(labels)
    regions = []
    for grp in groups:
        ins, outs = _border(graph, grp)
        lab = labels[id(grp[0])]
        why = ""
        if lab == fallback and reasons:
            why = "; ".join(dict.fromkeys(reasons[id(n)] for n in grp if id(n) in reasons))
        regions.append(Region(lab, grp, ins, outs, why))
    return regions


def _border(graph: Graph, nodes: Sequence[Node]) -> tuple[list[Value], list[Value]]:
    inside = {id(n) for n in nodes}
    produced = {id(o) for n in nodes for o in n.outputs}
    ins: list[Value] = []
    seen: set[int] = set()
    for n in nodes:
        for v in _reads(n, graph):
            if id(v) not in produced and id(v) not in seen:
                seen.add(id(v))
                ins.append(v)
    outs: list[Value] = []
    graph_outs = {id(o) for o in graph.outputs}
    for n in nodes:
        for o in n.outputs:
            if id(o) in graph_outs or any(id(_top(u, graph)) not in inside for u, _ in o.uses()):
                outs.append(o)
    return ins, outs


def _top(node: Node, graph: Graph) -> Node:
    """The node of `graph` that holds `node` (itself, or the If/Loop whose subgraph contains it)."""
    while node.graph is not graph and node.graph is not None and node.graph.parent is not None:
        node = node.graph.parent
    return node
