"""The DADS minimum cut (lepton_ir.cut) equals exhaustive search over every valid cut.

Valid cut: an edge set closed under predecessors (a down-closed set of the DAG of main-graph
nodes); `lepton_ir.cut.valid_cuts` enumerates them. Random DAGs come from the property harness
(up to 20 compute nodes, static shapes), with random per-node costs, at 1, 10, 100, 1000 Mbit/s.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lepton_ir
from lepton_ir.cut import (Compression, Link, NodeCosts, count_valid_cuts, cut_table, dads_cut, evaluate,
                           exhaustive_cut, is_valid, valid_cuts)
from lepton_ir.testing.strategies import onnx_models

BANDWIDTHS = (1, 10, 100, 1000)


def _random_costs(n: int, rng: np.random.Generator) -> NodeCosts:
    # Log-uniform: cloud 0.1 us .. 1 ms a node, the edge 0.1x .. 100x that, so edge-only, cloud-only
    # and true splits all occur at 1..1000 Mbit/s on the harness's small tensors.
    cloud = {i: float(10 ** rng.uniform(-4, 0)) for i in range(n)}
    edge = {i: float(cloud[i] * 10 ** rng.uniform(-1, 2)) for i in range(n)}
    return NodeCosts(edge, cloud, float(rng.uniform(0, 0.2)), float(rng.uniform(0, 0.2)))


def _check_optimal(view, costs: NodeCosts, rtt: float, compression: Compression = Compression()) -> int:
    n_cuts = 0
    for bw in BANDWIDTHS:
        link = Link.mbit(bw, rtt)
        got = dads_cut(view, costs, link, compression)
        best, n_cuts = exhaustive_cut(view, costs, link, compression)
        assert is_valid(view, got.edge_nodes)
        assert got.latency_ms == best.latency_ms, (bw, got.describe(), best.describe())
        # The reported latency is what evaluate() gives for that partition.
        assert evaluate(view, got.edge_nodes, costs, link, compression).latency_ms == got.latency_ms
    return n_cuts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(proto=onnx_models(max_nodes=20, symbolic_dims=False), seed=st.integers(0, 2**32 - 1),
       rtt=st.sampled_from([0.0, 0.1, 1.0, 5.0]), comp=st.sampled_from(["none", "fp16", "int8"]))
def test_dads_equals_exhaustive_on_random_dags(proto, seed, rtt, comp):
    model = lepton_ir.load(proto)
    view = lepton_ir.weighted_view(model)
    rng = np.random.default_rng(seed)
    costs = _random_costs(len(model.graph), rng)
    compression = Compression(comp, float(rng.uniform(0, 5)), float(rng.uniform(0, 5)))
    _check_optimal(view, costs, rtt, compression)


def _enumerate_by_subsets(view, n):
    """Every subset of nodes that is closed under predecessors, the slow way."""
    out = set()
    for k in range(n + 1):
        for s in itertools.combinations(range(n), k):
            if is_valid(view, s):
                out.add(frozenset(s))
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(proto=onnx_models(max_nodes=10, symbolic_dims=False))
def test_valid_cuts_are_the_down_closed_sets(proto):
    model = lepton_ir.load(proto)
    view = lepton_ir.weighted_view(model)
    n = len(model.graph)
    if n > 14:
        return
    assert set(valid_cuts(view)) == _enumerate_by_subsets(view, n)


@pytest.mark.parametrize("name", ["digits", "silero-vad-ifless", "magika-head"])
def test_dads_equals_exhaustive_on_real_models(name, real_view):
    view, n = real_view(name)
    rng = np.random.default_rng(0)
    for trial in range(5):
        _check_optimal(view, _random_costs(n, rng), rtt=[0.0, 5.0, 20.0, 0.0, 1.0][trial])


def test_chain_picks_the_narrow_tensor():
    # x(1 MB) -> a -> big(1 MB) -> b -> small(4 B) -> c -> y: at 10 Mbit/s the cut is after b.
    from onnx import TensorProto, helper

    n = 262144
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["big"]), helper.make_node("ReduceSum", ["big"], ["small"], keepdims=1),
         helper.make_node("Relu", ["small"], ["y"])], "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    model = lepton_ir.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    view = lepton_ir.weighted_view(model)
    costs = NodeCosts({0: 1.0, 1: 1.0, 2: 50.0}, {0: 0.1, 1: 0.1, 2: 0.1})
    cut = dads_cut(view, costs, Link.mbit(10, 2.0))
    assert cut.edge_nodes == {0, 1} and cut.uplink == ("small",) and cut.downlink == ("y",)
    assert cut.latency_ms == pytest.approx(1 + 1 + 0.1 + 2.0 + 2 * 4 * 8 / 10e6 * 1e3, abs=1e-5)
    # At 1000 Mbit/s the whole input goes (8.4 ms on the wire vs 2 ms on the edge): still the cut;
    # with a free, fast link and a slow edge everything goes to the cloud.
    fast = dads_cut(view, NodeCosts({0: 100.0, 1: 100.0, 2: 100.0}, {0: 0.1, 1: 0.1, 2: 0.1}), Link.mbit(1e6, 0))
    assert fast.kind == "cloud-only" and fast.uplink == ("x",)
    # Compression shrinks the bytes sent (int8: a quarter plus the scale).
    c8 = evaluate(view, [], costs, Link.mbit(10), Compression("int8"))
    assert c8.uplink_bytes == n + 4
    table = cut_table(view, costs, 2.0)
    assert [b for b, _ in table] == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


def test_rtt_is_paid_once_and_only_with_a_cloud_side():
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    view = lepton_ir.weighted_view(lepton_ir.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])))
    costs = NodeCosts({0: 3.0, 1: 3.0}, {0: 0.0, 1: 0.0})
    assert dads_cut(view, costs, Link.mbit(1e6, 5.9)).kind == "cloud-only"
    assert dads_cut(view, costs, Link.mbit(1e6, 6.1)).kind == "edge-only"
    assert count_valid_cuts(view) == 3
