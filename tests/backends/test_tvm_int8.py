"""quant8 models through tvm-cpu run integer compute: ConvInteger/MatMulInteger (qdq-to-integer) ->
Relax conv2d/matmul with int32 accumulation. Real TVM, ONNX Runtime as the reference, no mocks."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

tvm = pytest.importorskip("tvm")

import lepton_ir  # noqa: E402
import lepton_passes.quant  # noqa: E402,F401  registers quant8 / qdq-to-integer
from lepton_backends import get_backend  # noqa: E402
from lepton_backends.tvm import load_artifact, lower  # noqa: E402
from lepton_backends.tvm.backend import prepare_for_tvm  # noqa: E402
from lepton_ir.reference import ort_session, run_ort  # noqa: E402
from lepton_ir.testing.corpus import digits_dataset, digits_model_path  # noqa: E402
from lepton_passes.quant import Quant8  # noqa: E402
from lepton_passes.util import constant_value  # noqa: E402

os.environ.setdefault("LEPTON_NO_PROGRESS", "1")


def _ort(model: lepton_ir.Model, feeds: dict) -> list[np.ndarray]:
    """ONNX Runtime on the QDQ model with all optimizations (its fused integer kernels)."""
    return run_ort(model, feeds, optimize=True)


def _output_step(model: lepton_ir.Model) -> float:
    """Scale of the DequantizeLinear that produces the (first) graph output: one quantization step."""
    dq = model.graph.outputs[0].producer()
    assert dq is not None and dq.op_type == "DequantizeLinear"
    return float(np.asarray(constant_value(dq.inputs[1])).reshape(-1)[0])


def _relax_compute(mod) -> list[tuple[str, str, str, str]]:
    """(op, data dtype, weight dtype, out dtype) of every conv/matmul in the Relax ``main``."""
    from tvm import relax

    found = []

    @relax.expr_functor.visitor
    class _V(relax.PyExprVisitor):
        def visit_call_(self, call):  # noqa: N802  (TVM's visitor naming)
            name = getattr(call.op, "name", "")
            if name in ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d", "relax.matmul"):
                found.append((name, call.args[0].ty.dtype, call.args[1].ty.dtype, call.ty.dtype))
            super().visit_call_(call)

    _V().visit_expr(mod["main"])
    return found


def _compile(model: lepton_ir.Model, tmp_path, shapes: dict) -> object:
    out = tmp_path / "art"
    get_backend("tvm-cpu")().compile(model, out, target="native", options={"input-shapes": shapes})
    return load_artifact(out)


@pytest.fixture(scope="module")
def digits_q8(tmp_path_factory) -> lepton_ir.Model:
    """The shipped digits CNN through quant8 (defaults: entropy, u8 activations), calibrated on the
    'calib' split."""
    d = tmp_path_factory.mktemp("digits")
    xc, _ = digits_dataset("calib")
    np.savez(d / "calib.npz", image=xc)
    m = lepton_ir.load(str(digits_model_path()))
    assert Quant8(calib=str(d / "calib.npz"), progress=False).run(m)
    return m


def test_digits_lowered_module_has_integer_conv(digits_q8):
    onnx_model = lepton_ir.to_onnx(prepare_for_tvm(digits_q8))
    ops = {n.op_type for n in onnx_model.graph.node}
    assert {"ConvInteger", "MatMulInteger"} <= ops and not {"Conv", "Gemm", "MatMul"} & ops
    compute = _relax_compute(lower.to_relax(onnx_model))
    convs = [c for c in compute if c[0] == "relax.nn.conv2d"]
    assert len(convs) == 2 and len(compute) == 3  # 2 convs + the classifier
    for op, data, weight, out in compute:
        assert out == "int32", (op, out)
        assert data in ("uint8", "int8", "int16", "int32") and weight in ("uint8", "int8", "int16", "int32")
    # The convs read the u8 activations as they are (zero point 0: after the folded ReLU, and the
    # image's range is [0, 1]); the int8 weights are stored widened to int32 (converters.py).
    assert all(c[1] == "uint8" and c[2] == "int32" for c in convs), convs


def test_digits_tvm_int8_matches_ort(digits_q8, tmp_path):
    """All 360 test images: TVM int8 within one output quantization step of ONNX Runtime running
    the same QDQ model (bit-exact in practice), and the same predictions."""
    x, y = digits_dataset("test")
    runner = _compile(digits_q8, tmp_path, {"image": list(x.shape)})
    got = runner.run({"image": x})
    got = next(iter(got.values()))
    ref = _ort(digits_q8, {"image": x})[0]
    step = _output_step(digits_q8)
    err = np.abs(got - ref)
    assert err.max() <= step * 1.001, (err.max(), step)
    assert np.mean(err == 0) > 0.99
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.997
    assert np.mean(got.argmax(1) == y) > 0.97  # still a digits classifier (float: 99.2 %)


def _mlp_proto(seed: int = 0) -> onnx.ModelProto:
    """x[8,32] -> MatMul(W1[32,24]) -> Add(b1) -> Relu -> Gemm(W2[10,24], transB=1, b2) -> y."""
    rng = np.random.default_rng(seed)
    inits = [nh.from_array((rng.standard_normal((32, 24)) * 0.3).astype(np.float32), "W1"),
             nh.from_array((rng.standard_normal(24) * 0.1).astype(np.float32), "b1"),
             nh.from_array((rng.standard_normal((10, 24)) * 0.3).astype(np.float32), "W2"),
             nh.from_array((rng.standard_normal(10) * 0.1).astype(np.float32), "b2")]
    nodes = [h.make_node("MatMul", ["x", "W1"], ["m"]), h.make_node("Add", ["m", "b1"], ["a"]),
             h.make_node("Relu", ["a"], ["r"]), h.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1)]
    g = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", T.FLOAT, [8, 32])],
                     [h.make_tensor_value_info("y", T.FLOAT, [8, 10])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("activations", ["u8", "s8"])
def test_matmul_model_int8(tmp_path, activations):
    rng = np.random.default_rng(0)
    onnx.save(_mlp_proto(), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((16, 8, 32)).astype(np.float32))
    m = lepton_ir.load(str(tmp_path / "mlp.onnx"))
    assert Quant8(calib=str(tmp_path / "calib.npz"), calibration="minmax", activations=activations,
                  progress=False).run(m)
    compute = _relax_compute(lower.to_relax(lepton_ir.to_onnx(prepare_for_tvm(m))))
    assert len(compute) == 2 and all(c[0] == "relax.matmul" and c[3] == "int32" for c in compute), compute
    runner = _compile(m, tmp_path, {"x": [8, 32]})
    step = _output_step(m)
    for _ in range(4):
        x = rng.standard_normal((8, 32)).astype(np.float32)
        got = next(iter(runner.run({"x": x}).values()))
        ref = _ort(m, {"x": x})[0]
        assert np.abs(got - ref).max() <= step * 1.001


def test_conv_integer_runtime_zero_points_like_ddddocr_old(tmp_path):
    """ddddocr-old's form (quantize_dynamic): ConvInteger on u8 activations whose zero point is a
    run-time tensor, u8 weights with a non-zero zero point, padding and stride 2. prepare_for_tvm
    keeps the ConvInteger (no float legalization) and TVM's int32 result is ONNX Runtime's, bit for bit."""
    rng = np.random.default_rng(0)
    w = rng.integers(0, 256, (16, 8, 3, 3)).astype(np.uint8)
    nodes = [h.make_node("ConvInteger", ["xq", "w", "xzp", "wzp"], ["acc"], pads=[1, 1, 1, 1], strides=[2, 2]),
             h.make_node("ConvInteger", ["xq", "w1", "xzp", "wzp"], ["acc1"], kernel_shape=[1, 1])]
    g = h.make_graph(nodes, "ci", [h.make_tensor_value_info("xq", T.UINT8, [1, 8, 12, 12]),
                                   h.make_tensor_value_info("xzp", T.UINT8, [])],
                     [h.make_tensor_value_info("acc", T.INT32, [1, 16, 6, 6]),
                      h.make_tensor_value_info("acc1", T.INT32, [1, 4, 12, 12])],
                     [nh.from_array(w, "w"), nh.from_array(np.array(131, np.uint8), "wzp"),
                      nh.from_array(rng.integers(0, 256, (4, 8, 1, 1)).astype(np.uint8), "w1")])
    proto = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m = lepton_ir.load(proto)
    assert [n.op_type for n in prepare_for_tvm(m).graph].count("ConvInteger") == 2
    runner = _compile(m, tmp_path, {"xq": [1, 8, 12, 12], "xzp": []})
    sess = ort_session(proto, optimize=True)
    for zp in (0, 77, 255):
        feeds = {"xq": rng.integers(0, 256, (1, 8, 12, 12)).astype(np.uint8), "xzp": np.array(zp, np.uint8)}
        got = runner.run(feeds)
        for (name, a), b in zip(got.items(), sess.run(None, feeds)):
            assert a.dtype == np.int32
            np.testing.assert_array_equal(a, b, err_msg=f"{name} zp={zp}")


def test_quant8_dynamic_model_compiles_with_pinned_shapes(tmp_path):
    """quant8-dynamic output through tvm-cpu with input-shapes (pin_input_shapes re-types the
    graph, which once failed on the scalar scale/zero point types the pass wrote)."""
    from lepton_passes import get_pass

    m = lepton_ir.load(_mlp_proto().SerializeToString())
    assert get_pass("quant8-dynamic")().run(m)
    runner = _compile(m, tmp_path, {"x": [8, 32]})
    x = np.random.default_rng(3).standard_normal((8, 32)).astype(np.float32)
    got = next(iter(runner.run({"x": x}).values()))
    ref = _ort(m, {"x": x})[0]
    # ORT's DynamicQuantizeLinear and MatMulInteger are integer-exact; the rescale is float.
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
