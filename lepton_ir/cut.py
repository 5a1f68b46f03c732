"""Cloud-edge partitioning of a model: the DADS minimum cut (Hu et al., INFOCOM'19) and its checks.

A *cut* splits the nodes of the main graph into an **edge set** E (run on the edge device, where the
graph inputs arrive) and a **cloud set** C (run on the server). A cut is **valid** when E is closed
under predecessors: every node that produces a value a node of E reads is in E too, so no tensor
ever flows back from the cloud to the edge (the only cloud -> edge traffic is the graph outputs,
returned at the end). The valid cuts are exactly the down-closed sets (order ideals) of the DAG.

The latency of a cut, one request, no pipelining (`evaluate`):

    sum edge_ms(v) for v in E + sum cloud_ms(v) for v in C
    + sum transfer(x) for every value x produced on the edge (or a graph input) read in C, paid once
      however many cloud nodes read it
    + sum transfer(y) for every graph output y produced in C (returned to the edge)
    + rtt_ms when C is not empty

with transfer(x) = encode + bytes(x) * 8 / bandwidth + decode (`Link`, `Compression`).

`dads_cut` finds the cut minimising that with one `networkx.minimum_cut` on the graph of DADS:
source = edge, sink = cloud; edge -> v of capacity cloud_ms(v) (+ v's returned outputs) and
v -> cloud of capacity edge_ms(v) (so a node on the edge side pays its edge cost, one on the cloud
side its cloud cost); one vertex per value, producer -> value of capacity transfer(value) and value
-> each reader unbounded (the value is paid once); unbounded reader -> producer edges so no valid
minimum can put a producer on the cloud side of one of its readers; graph inputs are produced by the
source (forced on the edge); one auxiliary vertex `rtt` with edge -> rtt of capacity rtt_ms (+ the
cloud stage's call overhead) and rtt -> every node unbounded, so the round trip is paid once as soon
as any node is on the cloud (and `edge-call`, every node -> edge-call -> cloud, for the edge stage's
call overhead, paid once as soon as any node is on the edge).

All weights are rounded to integer nanoseconds before the flow runs and `evaluate` sums the same
rounded weights, so "the minimum cut is optimal" is an exact equality, checked against
`exhaustive_cut` (every valid cut enumerated) by tests/split and bench/split_optimality.py.

The input is `lepton_ir.weighted_view(model, shapes)` (value byte sizes); pure networkx, no TVM.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from .errors import LeptonError

if TYPE_CHECKING:
    import networkx as nx

#: Weights are integer nanoseconds (exact flows, exact comparisons).
_NS_PER_MS = 1_000_000
_INF = float("inf")


# -- the link and compression --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Link:
    """A network link: `bandwidth_bps` (bits per second, both ways) and `rtt_ms` (one round trip)."""

    bandwidth_bps: float
    rtt_ms: float = 0.0

    def __post_init__(self) -> None:
        if not self.bandwidth_bps > 0:
            raise ValueError("bandwidth must be positive")
        if self.rtt_ms < 0:
            raise ValueError("rtt must be non-negative")

    @classmethod
    def mbit(cls, mbit_per_s: float, rtt_ms: float = 0.0) -> "Link":
        return cls(mbit_per_s * 1e6, rtt_ms)

    def wire_ms(self, nbytes: float) -> float:
        """Milliseconds to put `nbytes` on the wire (serialisation delay)."""
        return nbytes * 8.0 / self.bandwidth_bps * 1e3


@dataclasses.dataclass(frozen=True)
class Compression:
    """How cut tensors (float32 activations) are sent: `none`, `fp16` or `int8` (symmetric, one
    float32 scale per tensor). `encode_ns_per_elem` is the edge's cost of encoding one element,
    `decode_ns_per_elem` the cloud's of decoding it (measured by the profiler; 0 = free)."""

    kind: str = "none"
    encode_ns_per_elem: float = 0.0
    decode_ns_per_elem: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "fp16", "int8"):
            raise ValueError(f"compression {self.kind!r}: expected none, fp16 or int8")

    def applies(self, dtype_name: str) -> bool:
        return self.kind != "none" and dtype_name == "FLOAT"

    def wire_bytes(self, nbytes: int, dtype_name: str) -> int:
        if not self.applies(dtype_name):
            return nbytes
        elems = nbytes // 4
        return elems * 2 if self.kind == "fp16" else elems + 4  # int8 payload + its float32 scale

    def codec_ms(self, nbytes: int, dtype_name: str) -> float:
        if not self.applies(dtype_name):
            return 0.0
        return (nbytes // 4) * (self.encode_ns_per_elem + self.decode_ns_per_elem) / 1e6


NO_COMPRESSION = Compression()


# -- costs ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NodeCosts:
    """Per-node latency in ms, by node index in the main graph (the `("node", i)` vertices of
    `weighted_view`): on the edge and on the cloud. A missing or infinite entry means the node
    cannot run there. `edge_call_ms` / `cloud_call_ms`: a stage's fixed call overhead, added once
    per non-empty side (the per-node figures have it subtracted)."""

    edge_ms: Mapping[int, float]
    cloud_ms: Mapping[int, float]
    edge_call_ms: float = 0.0
    cloud_call_ms: float = 0.0


def _ns(ms: float) -> float:
    if ms is None or math.isinf(ms):
        return _INF
    if ms < 0 or math.isnan(ms):
        raise LeptonError(f"a cost must be a non-negative number of ms, got {ms}")
    return int(round(ms * _NS_PER_MS))


@dataclasses.dataclass
class _Problem:
    """The integer weights of one (view, costs, link, compression) instance."""

    nodes: list[int]                       # node indices, topological (graph) order
    preds: dict[int, set[int]]             # node -> producers of what it reads
    edge_ns: dict[int, float]
    cloud_ns: dict[int, float]
    values: list[tuple[str, int | None, set[int], float, int]]   # name, producer (None: input), readers, transfer ns, wire bytes
    returns: dict[int, float]              # node -> ns to return the graph outputs it produces
    returned: dict[int, list[str]]
    rtt_ns: int
    edge_call_ns: int
    cloud_call_ns: int


def _problem(view: "nx.DiGraph", costs: NodeCosts, link: Link, compression: Compression = NO_COMPRESSION) -> _Problem:
    nodes = sorted(k[1] for k in view.nodes if isinstance(k, tuple) and k[0] == "node")
    preds: dict[int, set[int]] = {i: set() for i in nodes}
    values = []
    returns: dict[int, float] = {i: 0 for i in nodes}
    returned: dict[int, list[str]] = {i: [] for i in nodes}
    for key, data in view.nodes(data=True):
        if not (isinstance(key, tuple) and key[0] == "value"):
            continue
        (tail,) = list(view.predecessors(key))
        producer = None if tail == "source" else tail[1]
        readers = {r[1] for r in view.successors(key) if isinstance(r, tuple) and r[0] == "node"}
        to_sink = view.has_edge(key, "sink")
        v = data["value"]
        dtype = getattr(getattr(v.type, "dtype", None), "name", "")
        nbytes = int(data["bytes"])
        wire = compression.wire_bytes(nbytes, dtype)
        up = _ns(link.wire_ms(wire) + compression.codec_ms(nbytes, dtype))
        if producer is not None:
            for r in readers:
                if r != producer:
                    preds[r].add(producer)
            if to_sink:  # returned uncompressed: the caller wants the real output
                returns[producer] += _ns(link.wire_ms(nbytes))
                returned[producer].append(key[1])
        values.append((key[1], producer, readers - ({producer} if producer is not None else set()), up, wire))
    edge_ns = {i: _ns(costs.edge_ms.get(i, _INF)) for i in nodes}
    cloud_ns = {i: _ns(costs.cloud_ms.get(i, _INF)) for i in nodes}
    return _Problem(nodes, preds, edge_ns, cloud_ns, values, returns, returned, _ns(link.rtt_ms),
                    _ns(costs.edge_call_ms), _ns(costs.cloud_call_ms))


# -- cuts ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Cut:
    """A partition and its modeled latency (ms). `uplink`: values sent edge -> cloud (graph inputs
    included when a cloud node reads them); `downlink`: graph outputs returned cloud -> edge."""

    edge_nodes: frozenset[int]
    cloud_nodes: frozenset[int]
    uplink: tuple[str, ...]
    downlink: tuple[str, ...]
    latency_ms: float
    edge_ms: float
    cloud_ms: float
    transfer_ms: float
    uplink_bytes: int

    @property
    def kind(self) -> str:
        if not self.cloud_nodes:
            return "edge-only"
        if not self.edge_nodes:
            return "cloud-only"
        return "split"

    def describe(self) -> str:
        return (f"{self.kind}: {len(self.edge_nodes)} edge / {len(self.cloud_nodes)} cloud nodes, "
                f"send {list(self.uplink)} ({self.uplink_bytes} B), {self.latency_ms:.3f} ms "
                f"(edge {self.edge_ms:.3f} + link {self.transfer_ms:.3f} + cloud {self.cloud_ms:.3f})")


def is_valid(view: "nx.DiGraph", edge_nodes: Sequence[int]) -> bool:
    """Whether `edge_nodes` is closed under predecessors (a valid edge set)."""
    p = _problem(view, NodeCosts({}, {}), Link(1.0))
    e = set(edge_nodes)
    return all(p.preds[v] <= e for v in e)


def _evaluate(p: _Problem, edge: frozenset[int]) -> Cut:
    cloud = frozenset(i for i in p.nodes if i not in edge)
    e_ns = sum(p.edge_ns[i] for i in edge) + (p.edge_call_ns if edge else 0)
    c_ns = sum(p.cloud_ns[i] for i in cloud) + (p.cloud_call_ns if cloud else 0)
    t_ns = 0
    uplink, up_bytes = [], 0
    for name, producer, readers, up, wire in p.values:
        if (producer is None or producer in edge) and readers & cloud:
            t_ns += up
            uplink.append(name)
            up_bytes += wire
    downlink = [n for i in cloud for n in p.returned[i]]
    t_ns += sum(p.returns[i] for i in cloud)
    if cloud:
        t_ns += p.rtt_ns
    total = e_ns + c_ns + t_ns
    return Cut(frozenset(edge), cloud, tuple(uplink), tuple(sorted(downlink)), total / _NS_PER_MS,
               e_ns / _NS_PER_MS, c_ns / _NS_PER_MS, t_ns / _NS_PER_MS, up_bytes)


def evaluate(view: "nx.DiGraph", edge_nodes: Sequence[int], costs: NodeCosts, link: Link,
             compression: Compression = NO_COMPRESSION) -> Cut:
    """The modeled latency of the valid cut whose edge set is `edge_nodes` (LeptonError if it is
    not closed under predecessors)."""
    p = _problem(view, costs, link, compression)
    e = frozenset(edge_nodes)
    bad = [v for v in e if not p.preds[v] <= e]
    if bad:
        raise LeptonError(f"not a valid cut: edge node {bad[0]} reads a value computed on the cloud")
    return _evaluate(p, e)


def _flow_graph(p: _Problem, rtt_vertex: bool = True) -> "nx.DiGraph":
    import networkx as nx

    g = nx.DiGraph()
    g.add_node("edge")
    g.add_node("cloud")
    for i in p.nodes:
        # Cut when i is on the cloud side: its cloud cost and returning its graph outputs.
        cap = p.cloud_ns[i] + p.returns[i]
        g.add_edge("edge", ("n", i), capacity=cap)
        g.add_edge(("n", i), "cloud", capacity=p.edge_ns[i])
    for name, producer, readers, up, _ in p.values:
        if not readers:
            continue
        tail = "edge" if producer is None else ("n", producer)
        g.add_edge(tail, ("v", name), capacity=up)
        for r in readers:
            g.add_edge(("v", name), ("n", r))          # no capacity: unbounded
            if producer is not None:
                g.add_edge(("n", r), ("n", producer))  # no reader on the edge of a cloud producer
    if rtt_vertex:
        extra = p.rtt_ns + p.cloud_call_ns
        if extra:
            g.add_edge("edge", "rtt", capacity=extra)
            for i in p.nodes:
                g.add_edge("rtt", ("n", i))
        if p.edge_call_ns:  # paid once when any node is on the edge side
            g.add_edge("edge-call", "cloud", capacity=p.edge_call_ns)
            for i in p.nodes:
                g.add_edge(("n", i), "edge-call")
    # networkx reads a missing capacity as infinite; an infinite float capacity must go too.
    for _, _, d in g.edges(data=True):
        if d.get("capacity") == _INF:
            del d["capacity"]
    return g


def dads_cut(view: "nx.DiGraph", costs: NodeCosts, link: Link, compression: Compression = NO_COMPRESSION) -> Cut:
    """The valid cut of least modeled latency, by one minimum s-t cut (module docstring)."""
    import networkx as nx

    p = _problem(view, costs, link, compression)
    for i in p.nodes:
        if p.edge_ns[i] == _INF and p.cloud_ns[i] == _INF:
            raise LeptonError(f"node {i} has no cost on the edge nor on the cloud: it can run nowhere")
    g = _flow_graph(p)
    try:
        value, (reach, _) = nx.minimum_cut(g, "edge", "cloud")
    except nx.NetworkXUnbounded:
        raise LeptonError("no valid cut has a finite latency (a node runs nowhere reachable)") from None
    edge = frozenset(k[1] for k in reach if isinstance(k, tuple) and k[0] == "n")
    cut = _evaluate(p, edge)
    assert round(cut.latency_ms * _NS_PER_MS) == value, (cut, value)  # the flow prices what evaluate sums
    return cut


def valid_cuts(view: "nx.DiGraph", limit: int | None = None) -> Iterator[frozenset[int]]:
    """Every valid edge set (down-closed set of nodes), the empty and the full one included;
    LeptonError after `limit` of them."""
    p = _problem(view, NodeCosts({}, {}), Link(1.0))
    return _ideals(p, limit)


def _ideals(p: _Problem, limit: int | None) -> Iterator[frozenset[int]]:
    order = p.nodes  # graph order is topological
    count = 0
    stack: list[tuple[int, frozenset[int]]] = [(0, frozenset())]
    while stack:
        k, s = stack.pop()
        if k == len(order):
            count += 1
            if limit is not None and count > limit:
                raise LeptonError(f"more than {limit} valid cuts")
            yield s
            continue
        v = order[k]
        stack.append((k + 1, s))
        if p.preds[v] <= s:
            stack.append((k + 1, s | {v}))


def count_valid_cuts(view: "nx.DiGraph", limit: int | None = None) -> int:
    return sum(1 for _ in valid_cuts(view, limit))


def exhaustive_cut(view: "nx.DiGraph", costs: NodeCosts, link: Link, compression: Compression = NO_COMPRESSION,
                   limit: int | None = 1_000_000) -> tuple[Cut, int]:
    """(the best valid cut by enumeration, the number of valid cuts enumerated)."""
    p = _problem(view, costs, link, compression)
    best: Cut | None = None
    n = 0
    for s in _ideals(p, limit):
        n += 1
        c = _evaluate(p, s)
        if best is None or c.latency_ms < best.latency_ms:
            best = c
    assert best is not None
    return best, n


# -- tables over bandwidth ------------------------------------------------------------------------
#: Mbit/s, log-spaced.
BANDWIDTH_GRID = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def cut_table(view: "nx.DiGraph", costs: NodeCosts, rtt_ms: float, bandwidths_mbit: Sequence[float] = BANDWIDTH_GRID,
              compression: Compression = NO_COMPRESSION) -> list[tuple[float, Cut]]:
    """The DADS cut at each bandwidth (Mbit/s) of the grid, same RTT."""
    return [(float(b), dads_cut(view, costs, Link.mbit(b, rtt_ms), compression)) for b in bandwidths_mbit]


def cut_json(c: Cut) -> dict[str, Any]:
    return {"kind": c.kind, "edge_nodes": sorted(c.edge_nodes), "cloud_nodes": sorted(c.cloud_nodes),
            "uplink": list(c.uplink), "downlink": list(c.downlink), "uplink_bytes": c.uplink_bytes,
            "latency_ms": round(c.latency_ms, 6), "edge_ms": round(c.edge_ms, 6), "cloud_ms": round(c.cloud_ms, 6),
            "transfer_ms": round(c.transfer_ms, 6)}


__all__ = ["Link", "Compression", "NO_COMPRESSION", "NodeCosts", "Cut", "dads_cut", "evaluate", "is_valid",
           "valid_cuts", "count_valid_cuts", "exhaustive_cut", "cut_table", "cut_json", "BANDWIDTH_GRID"]
