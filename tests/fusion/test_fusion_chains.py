"""Collapsing Transpose, Reshape, Squeeze/Unsqueeze and Cast chains."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import lepton_ir
from fusion_harness import F32, assert_not_fused, fuse_and_check, fuse_with_report, make_model, node, rand

FEED = {"x": rand(2, 3, 4, 5)}
X = {"x": (F32, [2, 3, 4, 5])}


def test_transpose_pair_composes() -> None:
    nodes = [node("Transpose", ["x"], "t", perm=[0, 2, 3, 1]), node("Transpose", ["t"], "z", perm=[1, 0, 3, 2])]
    m, _ = fuse_and_check(make_model(nodes, X, ["z"]), FEED, applied="transpose-transpose")
    assert [n.op_type for n in m.graph] == ["Transpose"]


def test_transpose_pair_cancels() -> None:
    nodes = [node("Transpose", ["x"], "t", perm=[0, 2, 3, 1]), node("Transpose", ["t"], "u", perm=[0, 3, 1, 2]),
             node("Relu", ["u"], "z")]
    m, _ = fuse_and_check(make_model(nodes, X, ["z"]), FEED, applied="transpose-transpose")
    assert [n.op_type for n in m.graph] == ["Relu"]


def test_transpose_pair_with_default_perm() -> None:
    nodes = [node("Transpose", ["x"], "t"), node("Transpose", ["t"], "u"), node("Relu", ["u"], "z")]
    m, _ = fuse_and_check(make_model(nodes, X, ["z"]), FEED, applied="transpose-transpose")
    assert [n.op_type for n in m.graph] == ["Relu"]


def test_shared_inner_transpose_is_kept() -> None:
    nodes = [node("Transpose", ["x"], "t", perm=[0, 2, 3, 1]), node("Transpose", ["t"], "z", perm=[0, 3, 1, 2]),
             node("Neg", ["t"], "n")]
    assert_not_fused(make_model(nodes, X, ["z", "n"]), FEED, "transpose-transpose", "other uses")


@pytest.mark.parametrize("inner", ["Reshape", "Flatten", "Unsqueeze", "Squeeze"])
def test_reshape_chains(inner: str) -> None:
    inits = {"s2": np.array([6, -1], np.int64)}
    if inner == "Reshape":
        first = node("Reshape", ["x", "s1"], "r")
        inits["s1"] = np.array([2, 3, 20], np.int64)
    elif inner == "Flatten":
        first = node("Flatten", ["x"], "r", axis=2)
    elif inner == "Unsqueeze":
        first = node("Unsqueeze", ["x", "ax"], "r")
        inits["ax"] = np.array([0], np.int64)
    else:
        first = node("Squeeze", ["y", "ax"], "r")
        inits["ax"] = np.array([1], np.int64)
    feed = FEED if inner != "Squeeze" else {"y": rand(2, 1, 3, 4, 5)}
    inputs = X if inner != "Squeeze" else {"y": (F32, [2, 1, 3, 4, 5])}
    nodes = [first, node("Reshape", ["r", "s2"], "z")]
    m, _ = fuse_and_check(make_model(nodes, inputs, ["z"], inits), feed, applied=f"reshape-of-{inner.lower()}")
    assert [n.op_type for n in m.graph] == ["Reshape"]


def test_reshape_with_zero_copying_a_dim_is_kept() -> None:
    nodes = [node("Reshape", ["x", "s1"], "r"), node("Reshape", ["r", "s2"], "z")]
    inits = {"s1": np.array([6, 4, 5], np.int64), "s2": np.array([0, -1], np.int64)}
    assert_not_fused(make_model(nodes, X, ["z"], inits), FEED, "reshape-of-reshape", "has a 0")


def test_reshape_with_runtime_shape_is_kept() -> None:
    nodes = [node("Reshape", ["x", "s1"], "r"), node("Reshape", ["r", "s2"], "z")]
    proto = make_model(nodes, {**X, "s2": (onnx.TensorProto.INT64, [2])}, ["z"], {"s1": np.array([6, 4, 5], np.int64)})
    assert_not_fused(proto, {**FEED, "s2": np.array([12, 10], np.int64)}, "reshape-of-reshape", "not constant")


@pytest.mark.parametrize("axes", [[0, 2], [-1], [1, -2]])
def test_squeeze_of_unsqueeze_cancels(axes: list) -> None:
    nodes = [node("Unsqueeze", ["x", "a"], "u"), node("Squeeze", ["u", "a"], "s"), node("Relu", ["s"], "z")]
    m, _ = fuse_and_check(make_model(nodes, X, ["z"], {"a": np.array(axes, np.int64)}), FEED,
                          applied="squeeze-of-unsqueeze")
    assert [n.op_type for n in m.graph] == ["Relu"]


def test_unsqueeze_of_squeeze_cancels_old_opset() -> None:
    nodes = [node("Squeeze", ["y"], "s", axes=[1]), node("Unsqueeze", ["s"], "u", axes=[1]), node("Relu", ["u"], "z")]
    proto = make_model(nodes, {"y": (F32, [2, 1, 3])}, ["z"], opset=11)
    m, _ = fuse_and_check(proto, {"y": rand(2, 1, 3)}, applied="unsqueeze-of-squeeze")
    assert [n.op_type for n in m.graph] == ["Relu"]


def test_squeeze_unsqueeze_with_different_axes_is_kept() -> None:
    nodes = [node("Unsqueeze", ["x", "a"], "u"), node("Squeeze", ["u", "b"], "z")]
    proto = make_model(nodes, X, ["z"], {"a": np.array([0], np.int64), "b": np.array([1], np.int64)})
    m, stats = assert_not_fused(make_model([node("Unsqueeze", ["y", "a"], "u"), node("Squeeze", ["u", "b"], "z")],
                                           {"y": (F32, [1, 3])}, ["z"],
                                           {"a": np.array([0], np.int64), "b": np.array([1], np.int64)}),
                                {"y": rand(1, 3)}, "squeeze-of-unsqueeze", "axes differ")


F64, F16, I8, I32 = (onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
                     onnx.TensorProto.INT32)


def test_lossless_cast_round_trip_cancels() -> None:
    nodes = [node("Cast", ["x"], "c", to=F64), node("Cast", ["c"], "d", to=F32), node("Relu", ["d"], "z")]
    m, _ = fuse_and_check(make_model(nodes, X, ["z"]), FEED, applied="cast-cast")
    assert [n.op_type for n in m.graph] == ["Relu"]


def test_lossless_cast_chain_becomes_one_cast() -> None:
    nodes = [node("Cast", ["x"], "c", to=I32), node("Cast", ["c"], "z", to=F32)]
    proto = make_model(nodes, {"x": (I8, [5])}, ["z"])
    m, _ = fuse_and_check(proto, {"x": np.array([-128, -3, 0, 7, 127], np.int8)}, applied="cast-cast")
    assert [n.op_type for n in m.graph] == ["Cast"]


def test_lossy_cast_chain_is_kept() -> None:
    # f32 -> f16 -> f32 rounds: removing it would change outputs.
    nodes = [node("Cast", ["x"], "c", to=F16), node("Cast", ["c"], "z", to=F32)]
    assert_not_fused(make_model(nodes, X, ["z"]), FEED, "cast-cast", "loses precision")
    nodes = [node("Cast", ["x"], "c", to=I32), node("Cast", ["c"], "z", to=F32)]  # truncation
    assert_not_fused(make_model(nodes, X, ["z"]), FEED, "cast-cast", "loses precision")


def test_graph_output_keeps_its_name_when_chain_cancels() -> None:
    nodes = [node("Transpose", ["x"], "t", perm=[1, 0, 2, 3]), node("Transpose", ["t"], "z", perm=[1, 0, 2, 3])]
    model = lepton_ir.load(make_model(nodes, X, ["z"]))
    fuse_with_report(model)
    assert [o.name for o in model.graph.outputs] == ["z"]
    assert [n.op_type for n in model.graph] == ["Identity"]
