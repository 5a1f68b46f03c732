"""`lepton.onnx_backend` specialising on shape-determining inputs (real TVM, numpy references)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import lepton_ir
from lepton.onnx_backend import backend_for, binding_text
from lepton_backends import BackendError, get_backend
from lepton_passes.base import get_pass


def reduce_model():
    """y = ReduceSum(x, axes) with axes a graph input (TVM needs it constant)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)
    g = helper.make_graph([node], "g", [x, axes], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_tvm_backends_declare_static_shape_values():
    assert get_backend("tvm-cpu").needs_static_shape_values is True
    assert not getattr(get_backend("onnx"), "needs_static_shape_values", False)


def test_tvm_cpu_compiles_per_bound_value_and_caches():
    rep = backend_for("tvm-cpu", "canonicalize").prepare(reduce_model())
    assert rep.specialize == ["axes"] and rep.compiled == {}  # lazy: nothing compiled yet
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (y1,) = rep.run([x, np.array([1], np.int64)])
    np.testing.assert_allclose(y1, x.sum(axis=1, keepdims=True), rtol=1e-6)
    (y0,) = rep.run([x, np.array([0], np.int64)])
    np.testing.assert_allclose(y0, x.sum(axis=0, keepdims=True), rtol=1e-6)
    assert len(rep.compiled) == 2  # new values recompiled
    (y1b,) = rep.run([x * 2, np.array([1], np.int64)])
    np.testing.assert_allclose(y1b, 2 * x.sum(axis=1, keepdims=True), rtol=1e-6)
    assert len(rep.compiled) == 2  # same values: the cached artifact, fed new data
    runner = rep.compiled[("axes=1",)][0]
    assert list(runner.input_names) == ["x"]  # data stays an input of the compiled model


def test_data_input_is_never_bound():
    # `s` is Reshape's shape *and* part of the output: data. It must not be bound, so TVM sees a
    # dynamic Reshape shape and refuses -- binding it would have made the case pass.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    s = helper.make_tensor_value_info("s", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])
    z = helper.make_tensor_value_info("z", TensorProto.INT64, [2])
    g = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"]),
                           helper.make_node("Identity", ["s"], ["z"])], "g", [x, s], [y, z])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    # Strict (no fallback to ONNX Runtime), as the "lepton-tvm-cpu" conformance column runs.
    with pytest.raises(BackendError, match="Reshape"):
        backend_for("tvm-cpu", "canonicalize", options={"fallback": False}).prepare(model)


def test_onnx_backend_compiles_in_prepare():
    rep = backend_for("onnx", "canonicalize").prepare(reduce_model())
    assert rep.specialize == [] and rep.runner is not None
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(rep.run([x, np.array([0], np.int64)])[0], x.sum(axis=0, keepdims=True))


def test_binding_text_is_exact():
    big = np.iinfo(np.int64).max
    assert binding_text("e", np.array([big, -1], np.int64)) == f"e={big}:-1"
    t = binding_text("s", np.array([0.1, 2.5], np.float32))
    assert [np.float32(float(v)) for v in t.split("=")[1].split(":")] == [np.float32(0.1), np.float32(2.5)]
    with pytest.raises(ValueError, match="1-D"):
        binding_text("m", np.zeros((2, 2)))


def test_bind_inputs_keeps_int64_max_exact():
    # INT64_MAX ("to the end") is the usual Slice bound; a float round trip would wrap it.
    m = lepton_ir.from_text('model <ir_version=8, opset={"": 18}>\n' + """
graph g(%x: f32[5], %e: i64[1]) -> (%y) {
  %s = const i64[1] [1]
  %y = Slice(%x, %s, %e)
  return %y
}""")
    big = np.iinfo(np.int64).max
    assert get_pass("bind-inputs")(values=(f"e={big}",)).run(m)
    bound = [v for v in m.graph.initializers.values() if v.name.startswith("e_bound")]
    assert bound[0].const.numpy().tolist() == [big]
