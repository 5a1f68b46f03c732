"""`quant8` on small fixtures: QDQ structure, weights/bias, exclusion, ORT round trip within the
derived tolerance, and ONNX Runtime's integer kernels."""

import numpy as np
import pytest

import lepton_ir
from lepton_passes import DifferentialInstrument, PassManager, get_pass, parse_pipeline, run_onnxruntime
from lepton_passes.quant import Quant8
from lepton_passes.quant.ort_check import ort_optimized_op_counts
from lepton_passes.util import constant_value

from qfixtures import add_join_proto, calib_file, cnn_proto, conv_relu_proto, load_proto, matmul_proto


def _ops(model):
    return [n.op_type for n in model.graph]


def _samples(rng, shape, n=8):
    return rng.standard_normal((n,) + shape).astype(np.float32)


def _check_within_tolerance(fm, qm, p, xs, name="x"):
    rtol, atol = p.tolerance(qm)
    assert rtol == 0.0 and 0 < atol < 1.0
    worst = 0.0
    for x in xs:
        a = run_onnxruntime(fm, {name: x[None] if x.ndim < len(fm.graph.inputs[0].shape.dims) else x})[0]
        b = run_onnxruntime(qm, {name: x[None] if x.ndim < len(fm.graph.inputs[0].shape.dims) else x})[0]
        worst = max(worst, float(np.abs(a - b).max()))
    assert worst <= atol, (worst, atol)
    return worst, atol


def test_registered_and_parsed_from_pipeline_text():
    assert get_pass("quant8") is Quant8
    pl = parse_pipeline("quant8{calibration=minmax,per-channel=false,exclude-ops=[MatMul],activations=s8}")
    (p,) = list(pl.passes())
    assert p.calibration == "minmax" and p.per_channel is False and p.exclude_ops == ("MatMul",)
    assert p.signed_activations


def test_conv_relu_structure_and_tolerance(tmp_path, rng):
    xs = _samples(rng, (3, 12, 12))
    fm = load_proto(conv_relu_proto(), tmp_path)
    qm = load_proto(conv_relu_proto(), tmp_path, "q.onnx")
    p = Quant8(calib=calib_file(tmp_path, {"x": xs}), calibration="minmax", progress=False)
    assert p.run(qm)
    ops = _ops(qm)
    # ReLU folded into the output quantizer (u8, zero point 0), Conv reads DQ'd int8 weights/int32 bias
    assert "Relu" not in ops and ops.count("QuantizeLinear") == 2
    conv = next(n for n in qm.graph if n.op_type == "Conv")
    wdq, bdq = conv.inputs[1].producer(), conv.inputs[2].producer()
    assert wdq.op_type == bdq.op_type == "DequantizeLinear"
    assert constant_value(wdq.inputs[0]).dtype == np.int8 and wdq.attr("axis") == 0
    assert constant_value(wdq.inputs[1]).shape == (8,)  # per output channel
    assert constant_value(bdq.inputs[0]).dtype == np.int32
    xdq = conv.inputs[0].producer()
    s_in = float(constant_value(xdq.inputs[1]))
    np.testing.assert_allclose(constant_value(bdq.inputs[1]), s_in * constant_value(wdq.inputs[1]), rtol=1e-6)
    q_out = conv.outputs[0].users()[0]
    assert q_out.op_type == "QuantizeLinear" and int(constant_value(q_out.inputs[2])) == 0
    assert qm.graph.outputs[0].name == "y"  # the interface is kept
    _check_within_tolerance(fm, qm, p, xs)
    # ONNX Runtime really runs an integer convolution
    counts = ort_optimized_op_counts(lepton_ir.to_onnx(qm).SerializeToString())
    assert counts.get("QLinearConv", 0) == 1 and "Conv" not in counts


def test_matmul(tmp_path, rng):
    xs = rng.standard_normal((8, 4, 16)).astype(np.float32)
    fm = load_proto(matmul_proto(), tmp_path)
    qm = load_proto(matmul_proto(), tmp_path, "q.onnx")
    p = Quant8(calib=calib_file(tmp_path, {"x": xs}), calibration="minmax", progress=False)
    assert p.run(qm)
    mm = next(n for n in qm.graph if n.op_type == "MatMul")
    wdq = mm.inputs[1].producer()
    assert wdq.op_type == "DequantizeLinear" and wdq.attr("axis") == 1
    assert constant_value(wdq.inputs[1]).shape == (8,)
    assert [n.op_type for n in qm.graph].count("Add") == 1  # the isolated bias Add stays float
    worst = 0.0
    rtol, atol = p.tolerance(qm)
    for x in xs:
        a, b = run_onnxruntime(fm, {"x": x})[0], run_onnxruntime(qm, {"x": x})[0]
        worst = max(worst, float(np.abs(a - b).max()))
    assert worst <= atol
    counts = ort_optimized_op_counts(lepton_ir.to_onnx(qm).SerializeToString())
    assert counts.get("QLinearMatMul", 0) + counts.get("MatMulIntegerToFloat", 0) == 1


def test_add_join_and_pool_run_quantized(tmp_path, rng):
    xs = _samples(rng, (3, 8, 8))
    fm = load_proto(add_join_proto(), tmp_path)
    qm = load_proto(add_join_proto(), tmp_path, "q.onnx")
    p = Quant8(calib=calib_file(tmp_path, {"x": xs}), calibration="minmax", progress=False)
    assert p.run(qm)
    add = next(n for n in qm.graph if n.op_type == "Add")
    assert all(v.producer().op_type == "DequantizeLinear" for v in add.inputs)
    assert add.outputs[0].users()[0].op_type == "QuantizeLinear"
    pool = next(n for n in qm.graph if n.op_type == "MaxPool")
    assert pool.inputs[0].producer().op_type == "DequantizeLinear"
    _check_within_tolerance(fm, qm, p, xs)
    counts = ort_optimized_op_counts(lepton_ir.to_onnx(qm).SerializeToString())
    assert counts.get("QLinearAdd", 0) == 1 and counts.get("QLinearConv", 0) == 3


def test_exclusions(tmp_path, rng):
    xs = _samples(rng, (3, 8, 8))
    cal = calib_file(tmp_path, {"x": xs})
    qm = load_proto(cnn_proto(), tmp_path)
    Quant8(calib=cal, exclude_ops=("Gemm",), exclude_nodes=("conv2",), progress=False).run(qm)
    by_name = {n.name: n for n in qm.graph if n.name}
    assert by_name["conv1"].inputs[1].producer().op_type == "DequantizeLinear"
    # conv2 and fc stay float: float weights, no weight DQ
    assert constant_value(by_name["conv2"].inputs[1]).dtype == np.float32
    assert constant_value(by_name["fc"].inputs[1]).dtype == np.float32
    # conv1 still quantized: its (folded-ReLU) output has a Q/DQ pair read by the float conv2
    assert by_name["conv2"].inputs[0].producer().op_type == "DequantizeLinear"
    assert "Relu" in _ops(qm)  # conv2's ReLU is not folded (conv2 is float)


def test_cnn_full_and_gemm_bias(tmp_path, rng):
    xs = _samples(rng, (3, 8, 8), n=16)
    fm = load_proto(cnn_proto(), tmp_path)
    qm = load_proto(cnn_proto(), tmp_path, "q.onnx")
    p = Quant8(calib=calib_file(tmp_path, {"x": xs}), calibration="minmax", progress=False)
    p.run(qm)
    gemm = next(n for n in qm.graph if n.op_type == "Gemm")
    assert gemm.inputs[1].producer().attr("axis") == 0  # transB: rows are output channels
    assert constant_value(gemm.inputs[2].producer().inputs[0]).dtype == np.int32
    sig = next(n for n in qm.graph if n.op_type == "Sigmoid")
    assert sig.inputs[0].producer().op_type == "DequantizeLinear"  # quantized: its input is
    _check_within_tolerance(fm, qm, p, xs)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_methods_and_s8(tmp_path, rng, method):
    xs = _samples(rng, (3, 8, 8), n=16)
    fm = load_proto(cnn_proto(), tmp_path)
    qm = load_proto(cnn_proto(), tmp_path, "q.onnx")
    p = Quant8(calib=calib_file(tmp_path, {"x": xs}), calibration=method, target="arm", progress=False)
    p.run(qm)
    q_types = {constant_value(n.inputs[2]).dtype for n in qm.graph if n.op_type == "QuantizeLinear"}
    assert q_types == {np.dtype(np.int8)}  # arm: s8 symmetric activations
    assert all(int(np.max(np.abs(constant_value(n.inputs[2])))) == 0 for n in qm.graph if n.op_type == "QuantizeLinear")
    a = np.stack([run_onnxruntime(fm, {"x": x[None]})[0] for x in xs])
    b = np.stack([run_onnxruntime(qm, {"x": x[None]})[0] for x in xs])
    assert np.abs(a - b).max() < 0.1


def test_random_calibration_passes_the_differential_instrument(tmp_path):
    qm = load_proto(cnn_proto(), tmp_path)
    pm = PassManager("quant8{calib=\"random:4\",calibration=minmax}", instruments=[DifferentialInstrument()])
    pm.run(qm)
    assert "QuantizeLinear" in _ops(qm)


def test_opset_11_model_is_upgraded(tmp_path, rng):
    proto = conv_relu_proto()
    proto.opset_import[0].version = 11
    qm = load_proto(proto, tmp_path)
    Quant8(calib=calib_file(tmp_path, {"x": _samples(rng, (3, 12, 12))}), progress=False).run(qm)
    assert qm.opset("") == 13
    run_onnxruntime(qm, {"x": _samples(rng, (3, 12, 12), 1)})


def test_second_run_changes_nothing(tmp_path, rng):
    cal = calib_file(tmp_path, {"x": _samples(rng, (3, 8, 8))})
    qm = load_proto(cnn_proto(), tmp_path)
    p = Quant8(calib=cal, progress=False)
    assert p.run(qm)
    text = lepton_ir.to_text(qm)
    assert not p.run(qm)
    assert lepton_ir.to_text(qm) == text


def test_batchnorm_is_folded_before_quantization(tmp_path, rng):
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    w = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    stats = [rng.uniform(0.5, 2, 4), rng.standard_normal(4), rng.standard_normal(4) * 0.1, rng.uniform(0.5, 2, 4)]
    inits = [nh.from_array(w, "W")] + [nh.from_array(a.astype(np.float32), n) for a, n in zip(stats, "gbmv")]
    g = h.make_graph([h.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                      h.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 8, 8])], inits)
    proto = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    xs = _samples(rng, (3, 8, 8))
    fm, qm = load_proto(proto, tmp_path), load_proto(proto, tmp_path, "q.onnx")
    p = Quant8(calib=calib_file(tmp_path, {"x": xs}), calibration="minmax", progress=False)
    assert p.run(qm)
    assert "BatchNormalization" not in _ops(qm)
    conv = next(n for n in qm.graph if n.op_type == "Conv")
    assert conv.inputs[2] is not None and conv.inputs[2].producer().op_type == "DequantizeLinear"
    _check_within_tolerance(fm, qm, p, xs)
