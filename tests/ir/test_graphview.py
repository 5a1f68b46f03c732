"""weighted_view: hand-checked capacities and min cut on a tiny model; on every real model the
capacities add up to the activation bytes ONNX Runtime actually produces, and min-cut runs."""

from __future__ import annotations


import networkx as nx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given

import lepton_ir
from lepton_ir import UnsupportedError, from_text, unsized_values, weighted_view
from lepton_ir.testing import corpus
from lepton_ir.testing.strategies import inputs_for, onnx_models

TINY = """
model <ir_version=8, opset={"": 17}>
graph tiny(%x: f32[N,64]) -> (%y: f32[4,64], %z: i64[1,64]) {
  %shape = const i64[2] [4, 64]
  %a = ReduceMax(%x) {axes=[0]} : f32[1,64]
  %b = Neg(%a) : f32[1,64]
  %c = Abs(%a) : f32[1,64]
  %d = Concat(%b, %c) {axis=0} : f32[2,64]
  %e = ReduceSum(%d) {keepdims=1} : f32[1,1]
  %y = Expand(%e, %shape) : f32[4,64]
  %z = Cast(%a) {to=7} : i64[1,64]
  return %y, %z
}
"""


def _total_capacity(view: nx.DiGraph) -> int:
    return sum(c for _, _, c in view.edges.data("capacity") if c is not None)


def test_tiny_model_by_hand():
    m = from_text(TINY)
    with pytest.raises(UnsupportedError, match=r"size of 'x' \(f32\[N,64\]\) is not known; pass the input "
                                               r"shapes \(--input-shape x=DIMS\)"):
        weighted_view(m)
    view = weighted_view(m, {"x": [2, 64]})
    by_value = {k[1]: d["bytes"] for k, d in view.nodes(data=True) if isinstance(k, tuple) and k[0] == "value"}
    # f32 [2,64] = 512 B; [1,64] = 256 B; [1,1] = 4 B; [4,64] = 1024 B; i64 [1,64] = 512 B; no constant
    assert by_value == {"x": 512, "a": 256, "b": 256, "c": 256, "d": 512, "e": 4, "y": 1024, "z": 512}
    assert _total_capacity(view) == 3332
    assert len(view) == 2 + 7 + 8
    assert view.edges["source", ("value", "x")]["capacity"] == 512
    assert "capacity" not in view.edges[("value", "a"), ("node", 1)]  # value -> reader: infinite
    assert sorted(v for _, v in view.out_edges(("value", "a"))) == [("node", 1), ("node", 2), ("node", 6)]
    assert set(view.predecessors("sink")) == {("value", "y"), ("value", "z")}
    # Single-value frontiers: x 512, a 256 (read by three nodes, paid once), {e, z} 516, {y, z} 1536.
    cut, (src_side, _) = nx.minimum_cut(view, "source", "sink")
    assert cut == 256
    cut_edges = [(u, v) for u, v in view.edges if u in src_side and v not in src_side]
    assert cut_edges == [(("node", 0), ("value", "a"))]


def test_shapes_errors_and_value_overrides():
    m = from_text(TINY)
    with pytest.raises(lepton_ir.LeptonError, match="shapes: the model has no input or activation value named 'w'"):
        weighted_view(m, {"w": [1]})
    # A non-input key gives that value's dims directly (for sizes inference cannot know).
    m2 = from_text(TINY.replace("%d = Concat(%b, %c) {axis=0} : f32[2,64]", "%d = Concat(%b, %c) {axis=0} : f32"))
    assert unsized_values(m2, {"x": [2, 64]}) == []  # re-inference types d again from the pinned x
    m3 = from_text(TINY.replace("%z = Cast(%a) {to=7} : i64[1,64]", "%z = Cast(%a) {to=7} : i64[?,64]"))
    assert unsized_values(m3) == ["x", "z"]
    view = weighted_view(m3, {"x": [2, 64], "z": [1, 64]})
    assert _total_capacity(view) == 3332


# -- real models ------------------------------------------------------------------------------------
REAL = list(corpus.REAL_MODELS) + ["digits"]


def _load_real(name: str) -> tuple[onnx.ModelProto, dict]:
    proto = onnx.load(str(corpus.require_real_model(name)))
    if name == "digits":
        return proto, {proto.graph.input[0].name: corpus.digits_dataset("test")[0][:4]}
    return proto, corpus.realistic_inputs(name)


def ort_all_values(proto: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    """Every main-graph node output, as ONNX Runtime computes it (added as graph outputs)."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    have = {o.name for o in p.graph.output}
    names = dict.fromkeys(o for n in p.graph.node for o in n.output if o and o not in have)
    p.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(p.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    return dict(zip(outs, sess.run(None, feeds)))


@pytest.mark.parametrize("name", REAL)
def test_real_model_capacity_is_activation_bytes(name):
    proto, feeds = _load_real(name)
    m = lepton_ir.load(proto)
    measured = ort_all_values(proto, feeds)
    measured.update(feeds)
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    # Sizes static inference cannot know even with pinned inputs (data-dependent reshapes, If
    # outputs, contrib ops) come from the run; all others are computed statically by the view.
    unsized = [n for n in unsized_values(m, shapes) if n not in shapes]
    view = weighted_view(m, {**shapes, **{n: list(measured[n].shape) for n in unsized}})
    want = {n: a.nbytes for n, a in measured.items()}
    got = {k[1]: d["bytes"] for k, d in view.nodes(data=True) if isinstance(k, tuple) and k[0] == "value"}
    assert got.keys() == want.keys()
    static_wrong = {n: (got[n], want[n]) for n in got if n not in unsized and got[n] != want[n]}
    assert not static_wrong
    assert _total_capacity(view) == sum(want.values())
    assert len(unsized) < len(got) / 2  # most sizes are static: the check above is not circular
    cut, (src_side, sink_side) = nx.minimum_cut(view, "source", "sink")
    assert "source" in src_side and "sink" in sink_side
    cut_bytes = sum(view.edges[u, v]["capacity"] for u in src_side for v in view.successors(u) if v in sink_side)
    assert cut == cut_bytes and 0 < cut <= sum(want[i] for i in feeds)  # no worse than sending the inputs


@given(onnx_models(max_nodes=16, dtypes=("float32", "float16", "int64")))
def test_random_models_capacity_is_activation_bytes(proto):
    m = lepton_ir.load(proto)
    feeds = inputs_for(proto, seed=0)
    measured = {**ort_all_values(proto, feeds), **feeds}
    # The generator records every intermediate shape, so pinning the inputs sizes everything.
    view = weighted_view(m, {k: list(v.shape) for k, v in feeds.items()})
    got = {k[1]: d["bytes"] for k, d in view.nodes(data=True) if isinstance(k, tuple) and k[0] == "value"}
    assert got == {n: a.nbytes for n, a in measured.items()}
    assert _total_capacity(view) == sum(got.values())
    cut, _ = nx.minimum_cut(view, "source", "sink")
    assert cut <= min(sum(got[i] for i in feeds), sum(got[o.name] for o in m.graph.outputs))
