"""Lossless round trip: import with lepton_ir, export, and the model is the same to onnx.checker and
bit-identical to ONNX Runtime.

The logic is `bench/roundtrip_corpus.py`'s (loaded from the file, so the numbers it prints and
these tests cannot drift apart). Here: the whole node-conformance sweep as one test (~40-60 s),
every real model through `to_onnx` and through `save` + `load` from a file (mapped weights), and a
sample of the onnx wheel's data models; the whole data set runs under `-m slow` and in the script.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import onnx
import pytest

import lepton_ir
import lepton_ir.testing.corpus as corpus
from lepton_ir.onnx_io import MappedTensor

_BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "roundtrip_corpus.py"
_spec = importlib.util.spec_from_file_location("roundtrip_corpus", _BENCH)
rt = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules.setdefault("roundtrip_corpus", rt)
_spec.loader.exec_module(rt)  # type: ignore[union-attr]



@pytest.fixture(autouse=True)
def _always_scan(monkeypatch):
    """Files here are small; scan them anyway so the mapped-weights path (used above
    onnx_io.SCAN_MIN_BYTES) is what these tests exercise."""
    import lepton_ir.onnx_io

    monkeypatch.setattr(lepton_ir.onnx_io, "SCAN_MIN_BYTES", 0)

def _real_path(name: str) -> pathlib.Path:
    return corpus.require_real_model(name)


def _assert_ok(res) -> None:
    assert res.failure is None, f"{res.name}: {res.failure}"


# ------------------------------------------------------------------------------------------------
# the comparison itself must be strict
# ------------------------------------------------------------------------------------------------
def test_same_bits_is_bitwise() -> None:
    a = np.array([0.0, 1.0, np.nan], np.float32)
    assert rt._same_bits(a, a.copy())
    assert not rt._same_bits(a, np.array([-0.0, 1.0, np.nan], np.float32))  # -0.0 == 0.0 by value
    other_nan = a.copy()
    other_nan.view(np.uint32)[2] ^= 1  # a different NaN payload
    assert not rt._same_bits(a, other_nan)
    assert not rt._same_bits(a, a.astype(np.float64))
    assert not rt._same_bits(a, a.reshape(3, 1))
    assert rt._same_bits([a, None], [a.copy(), None])
    assert not rt._same_bits([a], [a, a])
    assert rt._same_bits(np.array(["x", "y"], dtype=object), np.array(["x", "y"], dtype=object))


def test_broken_export_is_reported() -> None:
    """The harness catches a lossy export (here: a weight changed by one ulp)."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3])
    w = onnx.numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "w")
    m = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y],
                                                      [w]), opset_imports=[onnx.helper.make_opsetid("", 17)])
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    arr = np.array([1.0, 2.0, np.nextafter(np.float32(3.0), np.float32(4.0))], np.float32)
    bad.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(arr, "w"))
    res = rt._compare(rt.Result("t"), m, bad, {"x": np.ones(3, np.float32)})
    assert res.failure is not None and "differ" in res.failure


# ------------------------------------------------------------------------------------------------
# node conformance: all 1884 cases as one test
# ------------------------------------------------------------------------------------------------
def test_node_conformance_round_trip() -> None:
    results = [job() for job in rt.node_corpus()]
    s = rt.summarise(results)
    failures = [f"{r.name}: {r.failure}" for r in results if r.failure]
    assert not failures, f"{len(failures)} of {s['total']} cases fail:\n" + "\n".join(failures[:30])
    assert s["total"] >= 1884
    # Everything the checker accepts is still accepted; everything ORT runs is bit-identical
    # (minus ops whose output is random and differs from run to run on the original too).
    assert s["checker_export"] == s["checker_orig"]
    assert s["bit_identical"] + s["nondeterministic"] == s["ort_orig"]
    assert s["ort_orig"] > 1500


@pytest.mark.parametrize("name", ["test_affine_grid_2d_expanded", "test_affine_grid_3d_align_corners_expanded",
                                  "test_if_seq", "test_loop11", "test_scan9_sum", "test_sequence_map_identity_1_sequence",
                                  "test_optional_get_element_optional_sequence"])
def test_node_conformance_selected(name: str) -> None:
    """A few structurally hard cases (subgraphs, sequences, optionals) for a quick failure signal."""
    jobs = list(rt.node_corpus(names=[name]))
    assert jobs, f"no conformance case {name}"
    for job in jobs:
        _assert_ok(job())


# ------------------------------------------------------------------------------------------------
# onnx wheel data models
# ------------------------------------------------------------------------------------------------
def _data_jobs() -> list:
    return list(rt.data_corpus())


_DATA = _data_jobs()


@pytest.mark.parametrize("k", range(0, len(_DATA), 5))
def test_data_models_sample(k: int) -> None:
    _assert_ok(_DATA[k]())


@pytest.mark.slow
def test_data_models_all() -> None:
    results = [job() for job in _DATA]
    failures = [f"{r.name}: {r.failure}" for r in results if r.failure]
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------------------
# real models, in memory and through a file
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(corpus.REAL_MODELS))
@pytest.mark.parametrize("via_save", [False, True], ids=["to_onnx", "save+load"])
def test_real_model_round_trip(name: str, via_save: bool) -> None:
    path = _real_path(name)
    res = rt.check_file(name, path, corpus.realistic_inputs(name), via_save=via_save)
    _assert_ok(res)
    assert res.checker_orig and res.checker_export
    assert res.ort_orig and res.bit_identical


def test_real_model_weights_stay_mapped(tmp_path: pathlib.Path) -> None:
    """Large weights are mapped from the file on load, and again from the saved copy."""
    path = _real_path("minilm-l3")
    m = lepton_ir.load(path)
    inits = list(m.graph.initializers.values())
    big = [v for v in inits if v.const.nbytes >= 1 << 16]
    assert big and all(isinstance(v.const, MappedTensor) for v in big)
    out = tmp_path / "copy.onnx"
    lepton_ir.save(m, out)
    m2 = lepton_ir.load(out)
    for v in big:
        c2 = m2.graph.initializers[v.name].const
        assert isinstance(c2, MappedTensor)
        assert c2.numpy().tobytes() == v.const.numpy().tobytes()
    # The saved file is the same model to onnx: same initializers, same nodes.
    a, b = onnx.load(path), onnx.load(out)
    assert [t.name for t in a.graph.initializer] == [t.name for t in b.graph.initializer]
    assert [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]
    assert all(x.SerializeToString() == y.SerializeToString() for x, y in zip(a.graph.initializer, b.graph.initializer))


def test_save_splices_large_initializers_in_place(tmp_path: pathlib.Path) -> None:
    """`save` streams large weights into their slots: same message as `to_onnx`, same order."""
    rng = np.random.default_rng(0)
    small = [onnx.numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), f"s{i}") for i in range(3)]
    big = [onnx.numpy_helper.from_array(rng.standard_normal(8192).astype(np.float32), f"big{i}") for i in range(3)]
    order = [small[0], big[0], small[1], big[1], small[2], big[2]]  # copied and spliced, interleaved
    nodes = []
    for t in order:
        nodes.append(onnx.helper.make_node("ReduceSum", [t.name], [f"r_{t.name}"], keepdims=0))
    outs = [onnx.helper.make_tensor_value_info(f"r_{t.name}", onnx.TensorProto.FLOAT, []) for t in order]
    g = onnx.helper.make_graph(nodes, "g", [], outs, order)
    src = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    m = lepton_ir.load(src)
    out = tmp_path / "m.onnx"
    lepton_ir.save(m, out)
    back = onnx.load(out)
    assert [t.name for t in back.graph.initializer] == [t.name for t in order]
    assert back == lepton_ir.to_onnx(m)
    for a, b in zip(order, back.graph.initializer):
        assert onnx.numpy_helper.to_array(a).tobytes() == onnx.numpy_helper.to_array(b).tobytes()
    onnx.checker.check_model(out, full_check=True)


def test_node_and_model_metadata_survive(tmp_path: pathlib.Path) -> None:
    """Fields no corpus model uses: node metadata_props/overload/doc, an explicitly empty node name,
    the "ai.onnx" domain spelling, graph and model metadata. Regression: a speed-up of the importer
    probed the NodeProto class with hasattr (False for upb messages) and dropped node metadata."""
    h = onnx.helper
    n1 = h.make_node("Relu", ["x"], ["a"], name="r", doc_string="why", domain="ai.onnx")
    e = n1.metadata_props.add()
    e.key, e.value = "origin", "layer1"
    n2 = h.make_node("Neg", ["a"], ["y"])
    n2.name = ""  # present but empty
    g = h.make_graph([n1, n2], "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                     [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])], doc_string="graph doc")
    gm = g.metadata_props.add()
    gm.key, gm.value = "gk", "gv"
    m = h.make_model(g, opset_imports=[h.make_opsetid("ai.onnx", 17)], producer_name="p", doc_string="model doc")
    h.set_model_props(m, {"author": "me"})
    back = lepton_ir.to_onnx(lepton_ir.load(m))
    assert back.graph.node[0] == m.graph.node[0]
    assert back.graph.node[1].HasField("name") and back.graph.node[1] == m.graph.node[1]
    assert back.graph.metadata_props == m.graph.metadata_props and back.graph.doc_string == "graph doc"
    assert back.metadata_props == m.metadata_props and back.doc_string == "model doc"
    assert back.opset_import == m.opset_import
    out = tmp_path / "m.onnx"
    lepton_ir.save(lepton_ir.load(m), out)
    assert onnx.load(out).graph.node[0] == m.graph.node[0]
