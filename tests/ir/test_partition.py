"""lepton_ir.partition: cycle-free regions from a support oracle.

Property tests on the harness's random DAGs with random support sets: the contracted graph is
acyclic, every node is placed exactly once, regions come in an order where each reads only graph
inputs or earlier regions' outputs, the size floor holds, and the regions cut out with
`lepton_ir.extract` and chained in ONNX Runtime give the whole model's outputs bit for bit.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given
from hypothesis import strategies as st

import lepton_ir
from lepton_ir import extract, from_text
from lepton_ir.analysis import _deps
from lepton_ir.partition import partition
from lepton_ir.testing.strategies import inputs_for, onnx_models


def _ort(proto: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {k: v for k, v in feeds.items()
                                                                          if k in names})))


def check_regions(graph: lepton_ir.Graph, regions, labels: dict[int, str], min_size: int) -> None:
    nodes = list(graph)
    placed = [id(n) for r in regions for n in r.nodes]
    assert sorted(placed) == sorted(id(n) for n in nodes), "every node placed exactly once"
    where = {id(n): k for k, r in enumerate(regions) for n in r.nodes}
    # Acyclic contracted graph, and the list order is a topological order of it.
    cg = nx.DiGraph()
    cg.add_nodes_from(range(len(regions)))
    for n in nodes:
        for d in _deps(n, graph):
            if where[id(d)] != where[id(n)]:
                cg.add_edge(where[id(d)], where[id(n)])
                assert where[id(d)] < where[id(n)], "a region reads a later region"
    assert nx.is_directed_acyclic_graph(cg)
    for r in regions:
        assert len({r.label} | {labels[id(n)] for n in r.nodes if labels[id(n)] != "ort"}) == 1 or r.label == "ort"
        if r.label != "ort":
            assert all(labels[id(n)] == r.label for n in r.nodes), "a node went to a backend that cannot run it"
            assert len(r) >= min_size, "size floor"


@given(onnx_models(max_nodes=14, dtypes=("float32",)), st.data())
def test_regions_are_acyclic_complete_ordered_and_chain_to_the_whole(proto: onnx.ModelProto, data) -> None:
    model = lepton_ir.load(proto)
    g = model.graph
    nodes = list(g)
    flags = data.draw(st.lists(st.booleans(), min_size=len(nodes), max_size=len(nodes)))
    labels = {id(n): ("tvm" if f else "ort") for n, f in zip(nodes, flags)}
    min_size = data.draw(st.integers(1, 3))
    regions = partition(g, lambda n: labels[id(n)], fallback="ort", min_size=min_size)
    check_regions(g, regions, labels, min_size)
    # Cut out and chained, the regions compute exactly what the whole model computes.
    feeds = inputs_for(proto, seed=0)
    want = _ort(proto, feeds)
    env = dict(feeds)
    for r in regions:
        stage = extract(model, [v.name for v in r.inputs], [v.name for v in r.outputs])
        env.update(_ort(lepton_ir.to_onnx(stage), env))
    for name, arr in want.items():
        assert env[name].tobytes() == arr.tobytes(), name


def test_diamond_with_an_unsupported_middle_is_not_merged_around_it() -> None:
    """a -> {b (unsupported), c} -> d: merging a, c, d would make the region both feed and read b."""
    m = from_text("""
model <ir_version=8, opset={"": 17}>
graph g(%x: f32[4]) -> (%y: f32[4]) {
  %a = Relu(%x) : f32[4]
  %b = Neg(%a) : f32[4]
  %c = Abs(%a) : f32[4]
  %y = Add(%b, %c) : f32[4]
  return %y
}""")
    nodes = {n.op_type: n for n in m.graph}
    labels = {id(n): ("ort" if n.op_type == "Neg" else "tvm") for n in m.graph}
    regions = partition(m.graph, lambda n: labels[id(n)], fallback="ort")
    check_regions(m.graph, regions, labels, 1)
    assert [sorted(n.op_type for n in r.nodes) for r in regions] == [["Abs", "Relu"], ["Neg"], ["Add"]]
    assert [v.name for v in regions[0].outputs] == [nodes["Relu"].output.name, nodes["Abs"].output.name]


def test_parallel_branches_merge_and_the_floor_demotes_small_regions() -> None:
    m = from_text("""
model <ir_version=8, opset={"": 17}>
graph g(%x: f32[4]) -> (%y: f32[4]) {
  %a = Neg(%x) : f32[4]
  %b = Relu(%a) : f32[4]
  %c = Abs(%a) : f32[4]
  %d = Add(%b, %c) : f32[4]
  %e = Neg(%d) : f32[4]
  %y = Sigmoid(%e) : f32[4]
  return %y
}""")
    labels = {id(n): ("ort" if n.op_type == "Neg" else "tvm") for n in m.graph}
    regions = partition(m.graph, lambda n: labels[id(n)], fallback="ort")
    assert [(r.label, sorted(n.op_type for n in r.nodes)) for r in regions] == [
        ("ort", ["Neg"]), ("tvm", ["Abs", "Add", "Relu"]), ("ort", ["Neg"]), ("tvm", ["Sigmoid"])]
    # With a floor of 2 the lone Sigmoid goes to the fallback and joins the Neg before it.
    regions = partition(m.graph, lambda n: labels[id(n)], fallback="ort", min_size=2,
                        reasons={id(n): f"{n.op_type} unsupported" for n in m.graph if n.op_type == "Neg"})
    assert [(r.label, sorted(n.op_type for n in r.nodes)) for r in regions] == [
        ("ort", ["Neg"]), ("tvm", ["Abs", "Add", "Relu"]), ("ort", ["Neg", "Sigmoid"])]
    assert regions[2].reason == "Neg unsupported"
    check_regions(m.graph, regions, labels, 2)


def test_compute_to_copy_floor() -> None:
    m = from_text("""
model <ir_version=8, opset={"": 17}>
graph g(%x: f32[1000]) -> (%y: f32[1000]) {
  %a = Neg(%x) : f32[1000]
  %b = Relu(%a) : f32[1000]
  %y = Neg(%b) : f32[1000]
  return %y
}""")
    labels = {id(n): ("ort" if n.op_type == "Neg" else "tvm") for n in m.graph}
    size = lambda v: 4.0 * 1000  # noqa: E731
    regions = partition(m.graph, lambda n: labels[id(n)], fallback="ort", min_compute_ratio=8.0,
                        compute_of=lambda n: 1000.0, bytes_of=size)
    # One Relu computes 1000 per 8000 bytes copied in and out: below 8 per byte, so it stays on the fallback.
    assert [r.label for r in regions] == ["ort"]
