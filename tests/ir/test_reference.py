"""`lepton_ir.reference`: ONNX Runtime sessions, random inputs and the one output comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import lepton_ir
from lepton_ir import UnsupportedError
from lepton_ir.reference import Mismatch, compare_outputs, ort_session, random_inputs, run_ort, session_options

INF, NAN = np.inf, np.nan


def make_onnx() -> onnx.ModelProto:
    """y = Relu(x + b) * 2, n = Not(flag), i = ids + 1, with a symbolic batch dim."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
              helper.make_tensor_value_info("flag", TensorProto.BOOL, [3]),
              helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
               helper.make_tensor_value_info("n", TensorProto.BOOL, [3]),
               helper.make_tensor_value_info("i", TensorProto.INT64, ["N"])]
    inits = [helper.make_tensor("b", TensorProto.FLOAT, [4], [0.5, -0.5, 1.0, -1.0]),
             helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
             helper.make_tensor("one", TensorProto.INT64, [], [1])]
    nodes = [helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Mul", ["r", "two"], ["y"]), helper.make_node("Not", ["flag"], ["n"]),
             helper.make_node("Add", ["ids", "one"], ["i"])]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                             opset_imports=[helper.make_opsetid("", 17)])


# -- compare_outputs ------------------------------------------------------------------------------------
def f32(*xs: float) -> np.ndarray:
    return np.array(xs, np.float32)


def test_equal_outputs_match() -> None:
    assert compare_outputs([f32(1, 2)], [f32(1, 2)], 0, 0) is None
    assert compare_outputs([f32(1, 2)], [f32(1, 2.0001)], 1e-3, 0) is None  # within rtol


def test_nan_must_meet_nan_at_the_same_positions() -> None:
    assert compare_outputs([f32(NAN, 1)], [f32(NAN, 1)], 0, 0) is None
    bad = compare_outputs([f32(NAN, 1)], [f32(1, NAN)], 1e9, 1e9)  # no tolerance excuses a moved NaN
    assert bad is not None and bad.reason == "NaN pattern differs" and bad.index == 0
    bad = compare_outputs([f32(1, 2)], [f32(1, NAN)], 1e9, 1e9)
    assert bad is not None and bad.reason == "NaN pattern differs"


def test_equal_infinities_match_and_others_do_not() -> None:
    assert compare_outputs([f32(INF, -INF, 1)], [f32(INF, -INF, 1)], 0, 0) is None
    bad = compare_outputs([f32(INF, 1)], [f32(-INF, 1)], 1e-3, 1e-3)
    assert bad is not None and bad.reason == "infinities differ" and bad.max_abs == INF
    # An infinite reference must not make atol + rtol*|ref| accept any finite value.
    for ref, got in ((INF, 3e38), (3e38, INF), (-INF, 0)):
        bad = compare_outputs([f32(ref)], [f32(got)], 1e-3, 1e-3)
        assert bad is not None and bad.reason == "infinities differ" and bad.max_abs == INF


def test_value_mismatch_reports_errors_and_the_first_bad_output() -> None:
    bad = compare_outputs([f32(1, 2), f32(1, 4)], [f32(1, 2), f32(1, 5)], 1e-3, 1e-3)
    assert bad == Mismatch(1, None, 1.0, 0.25, "values differ")
    assert str(bad) == "output #1: values differ, max abs error 1, max rel error 0.25"


def test_shape_dtype_and_count() -> None:
    bad = compare_outputs([f32(1, 2)], [f32(1, 2, 3)], 1, 1)
    assert bad is not None and bad.reason == "shape [3] instead of [2]" and bad.max_abs == INF
    bad = compare_outputs([f32(1, 2)], [np.array([1, 2], np.float64)], 1, 1)
    assert bad is not None and bad.reason == "dtype float64 instead of float32"
    bad = compare_outputs([f32(1)], [f32(1), f32(2)], 1, 1)
    assert bad is not None and bad.index == -1 and bad.reason == "2 outputs instead of 1"
    assert str(bad) == "2 outputs instead of 1"


def test_named_outputs_compare_names_too() -> None:
    assert compare_outputs({"y": f32(1)}, [("y", f32(1))], 0, 0) is None
    bad = compare_outputs([("y", f32(1))], [("z", f32(1))], 0, 0)
    assert bad is not None and bad.reason == "output names changed: ['y'] -> ['z']"
    bad = compare_outputs({"a": f32(0), "b": f32(1)}, {"a": f32(0), "b": f32(2)}, 0, 0)
    assert bad is not None and bad.name == "b" and str(bad).startswith("output 'b': values differ")


def test_integers_use_the_tolerance_unless_exact() -> None:
    ref, got = [np.array([100], np.int64)], [np.array([101], np.int64)]
    assert compare_outputs(ref, got, 0.05, 0) is None
    assert compare_outputs(ref, got, 0.05, 0, exact_integers=True) == Mismatch(0, None, INF, INF, "values differ")
    assert compare_outputs([np.array([True])], [np.array([False])], 0.5, 0.5, exact_integers=True) is not None


def test_strings_and_empty_outputs() -> None:
    assert compare_outputs([np.array(["a"])], [np.array(["a"])], 0, 0) is None
    bad = compare_outputs([np.array(["a"])], [np.array(["b"])], 1, 1)
    assert bad is not None and bad.reason == "values differ"
    assert compare_outputs([np.zeros((0, 3), np.float32)], [np.zeros((0, 3), np.float32)], 0, 0) is None


# -- random_inputs --------------------------------------------------------------------------------------
def test_random_inputs_from_a_model() -> None:
    m = lepton_ir.load(make_onnx())
    a = random_inputs(m, seed=3, dim_size=5)
    assert list(a) == ["x", "flag", "ids"]  # initializers need no data
    assert (a["x"].dtype, a["x"].shape) == (np.float32, (5, 4))
    assert (a["flag"].dtype, a["flag"].shape) == (np.bool_, (3,))
    assert (a["ids"].dtype, a["ids"].shape) == (np.int64, (5,))
    assert a["ids"].min() >= 0 and a["ids"].max() < 4
    b = random_inputs(m, seed=3, dim_size=5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(random_inputs(m, seed=4, dim_size=5)["x"], a["x"])


def test_random_inputs_from_manifest_specs_match_the_model() -> None:
    specs = [{"name": "x", "dtype": "float32", "shape": ["N", 4]}, {"name": "flag", "dtype": "bool", "shape": [3]},
             {"name": "ids", "dtype": "int64", "shape": ["N"]}, {"name": "u", "dtype": "uint8", "shape": []}]
    got = random_inputs(specs, seed=3, dim_size=1)
    assert [(k, v.dtype.name, v.shape) for k, v in got.items()] == \
        [("x", "float32", (1, 4)), ("flag", "bool", (3,)), ("ids", "int64", (1,)), ("u", "uint8", ())]
    # The same draws as from the model with those inputs: one generator for both sources.
    from_model = random_inputs(lepton_ir.load(make_onnx()), seed=3, dim_size=1)
    for k in from_model:
        np.testing.assert_array_equal(got[k], from_model[k])


def test_random_inputs_refuses_what_it_cannot_fill() -> None:
    with pytest.raises(UnsupportedError, match="'s'"):
        random_inputs([{"name": "s", "dtype": "str", "shape": [1]}])
    m = lepton_ir.load(make_onnx())
    m.graph.inputs[0].type = None
    with pytest.raises(UnsupportedError, match="'x': its type is unknown"):
        random_inputs(m)


# -- sessions -------------------------------------------------------------------------------------------
def test_run_ort_from_every_source_agrees_with_numpy(tmp_path: Path) -> None:
    proto = make_onnx()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    feeds = random_inputs(lepton_ir.load(proto), seed=1)
    feeds["unused"] = np.zeros(1, np.float32)  # fed only what the session takes
    want = np.maximum(feeds["x"] + f32(0.5, -0.5, 1.0, -1.0), 0) * 2
    for src in (lepton_ir.load(proto), proto, proto.SerializeToString(), str(path), path):
        y, n, i = run_ort(src, feeds)
        np.testing.assert_allclose(y, want, rtol=1e-6)
        np.testing.assert_array_equal(n, ~feeds["flag"])
        np.testing.assert_array_equal(i, feeds["ids"] + 1)
    sess = ort_session(proto)
    assert [a.shape for a in run_ort(sess, feeds)] == [want.shape, (3,), feeds["ids"].shape]


def test_ort_session_optimize_flag(tmp_path: Path) -> None:
    """Off by default; with optimize=True ORT folds the constant subexpression. What ORT writes as
    its optimized model shows which it did."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    c = helper.make_tensor("c", TensorProto.FLOAT, [2], [1.0, 2.0])
    nodes = [helper.make_node("Mul", ["c", "c"], ["k"]), helper.make_node("Add", ["x", "k"], ["y"])]
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [c]), opset_imports=[helper.make_opsetid("", 17)])
    ops = {}
    for optimize in (False, True):
        so = session_options(optimize=optimize, threads=1)
        assert so.intra_op_num_threads == 1 and so.log_severity_level == 3
        so.optimized_model_filepath = str(tmp_path / f"opt-{optimize}.onnx")
        sess = ort_session(proto, options=so)
        assert isinstance(sess, ort.InferenceSession) and sess.get_providers() == ["CPUExecutionProvider"]
        np.testing.assert_allclose(sess.run(None, {"x": f32(0, 0)})[0], f32(1, 4))
        ops[optimize] = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert ops == {False: ["Mul", "Add"], True: ["Add"]}
    assert session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert session_options(optimize=True).graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session_options().intra_op_num_threads == 0  # ORT's default: its own choice
    # ort_session(optimize=...) builds exactly these options: same answers, both ways.
    for optimize in (False, True):
        np.testing.assert_allclose(run_ort(ort_session(proto, optimize=optimize, threads=2), {"x": f32(1, 1)})[0],
                                   f32(2, 5))
