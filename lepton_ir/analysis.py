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

    Unweighted, for order and reachability questions (dominators, scheduling). For cuts use
    `lepton_ir.graphview.weighted_view`: it has value vertices with byte capacities, so a value read
    by several nodes is paid once, and source/sink vertices for `networkx.minimum_cut`.
    """
    import networkx as nx

    g = nx.MultiDiGraph()
    for n in graph:
        g.add_node(n)
    for n in graph:
        for d in _deps(n, graph):
            g.add_edge(d, n)
    return g


# -- shape-determining inputs ---------------------------------------------------------------------
#: Operand positions (standard ONNX domain) whose *values* a static compiler must know to build the
#: op: they fix an output shape (Reshape.shape, Expand.shape, Resize.sizes, TopK.K, ...) or name
#: axes (Reduce*.axes, CumSum.axis, ...). Static compilers (TVM, XLA) take them as compile-time
#: constants. Resize.roi is here too: TVM's importer reads it as a constant like scales/sizes.
#: Pad.constant_value, Clip.min/max and the like are *data* and deliberately absent, and so is Range:
#: its start/delta are also the values of its output, so binding them would bind the answer.
SHAPE_OPERANDS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "ConstantOfShape": frozenset({0}),
    "Slice": frozenset({1, 2, 3, 4}),  # starts, ends, axes, steps
    "Pad": frozenset({1, 3}),  # pads, axes
    "CenterCropPad": frozenset({1}),  # shape
    "Resize": frozenset({1, 2, 3}),  # roi, scales, sizes
    "Upsample": frozenset({1}),  # scales
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Split": frozenset({1}),
    "SplitToSequence": frozenset({1}),
    "TopK": frozenset({1}),
    "OneHot": frozenset({1}),  # depth
    "CumSum": frozenset({1}),  # axis
    "CumProd": frozenset({1}),  # axis
    "AffineGrid": frozenset({1}),  # size
    "Col2Im": frozenset({1, 2}),  # image_shape, block_shape
    "NonMaxSuppression": frozenset({2}),  # max_output_boxes_per_class
    "Trilu": frozenset({1}),  # k (a diagonal offset: TVM needs it at compile time)
    "DFT": frozenset({1, 2}),  # dft_length, axis
    **{op: frozenset({1}) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                                     "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                                     "ReduceSumSquare")},
}

#: Pure integer/shape arithmetic a shape-determining value may flow through (e.g. axes built by
#: Concat/Unsqueeze, sizes computed by Mul/Cast). An input of such a node is shape-determining when
#: every output of the node is. Kept deliberately small: anything else makes the value data.
SHAPE_VALUE_FLOW: frozenset[str] = frozenset({
    "Identity", "Cast", "CastLike", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Gather",
    "Slice", "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Max", "Min", "Floor", "Ceil", "Round",
})


def _is_shape_determining(value: "Value", graph: "Graph", memo: dict[int, bool]) -> bool:
    """True when every use of `value` reaches a SHAPE_OPERANDS position through SHAPE_VALUE_FLOW ops."""
    key = id(value)
    if key in memo:
        return memo[key]
    memo[key] = False  # graphs are acyclic; this only guards against malformed input
    uses = value.uses()
    ok = bool(uses) and not value.is_graph_output()
    for node, i in uses:
        if not ok:
            break
        if node.graph is not graph or node.domain not in ("", "ai.onnx"):
            ok = False  # captured by a subgraph or a non-standard op: treat as data
        elif i in SHAPE_OPERANDS.get(node.op_type, ()):
            continue
        elif node.op_type in SHAPE_VALUE_FLOW:
            ok = all(_is_shape_determining(o, graph, memo) for o in node.outputs)
        else:
            ok = False
    memo[key] = ok
    return ok


def shape_determining_inputs(graph: "Graph") -> list[str]:
    """Names of the graph's (non-initializer) inputs whose values only determine shapes or axes.

    An input qualifies when it has at least one use and *every* use is at a SHAPE_OPERANDS
    position, directly or through a chain of SHAPE_VALUE_FLOW ops (pure int arithmetic, Concat,
    Gather, ...), and neither it nor anything derived from it is a graph output. A value read by
    any other op (Add of data, a subgraph, a graph output) is data, so binding it to a constant
    could let constant folding compute the model's answer; such inputs are never reported.
    Static-shape backends specialise a model on the values of these inputs (see `bind-inputs`).
    """
    memo: dict[int, bool] = {}
    return [v.name for v in graph.inputs
            if v.const is None and v.name is not None and _is_shape_determining(v, graph, memo)]
