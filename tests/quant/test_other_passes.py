"""`quant8-dynamic`, `fp16`, `qdq-to-qoperator` and the report, run in ONNX Runtime."""

import json

import numpy as np

import lepton_ir
from lepton_passes import get_pass, run_onnxruntime
from lepton_passes.quant import Fp16, QdqToQOperator, Quant8, Quant8Dynamic, format_report, quant_report
from lepton_passes.quant.ort_check import ort_optimized_op_counts
from lepton_passes.quant.report import report_json

from qfixtures import calib_file, cnn_proto, load_proto, matmul_proto


def test_registered():
    assert get_pass("quant8-dynamic") is Quant8Dynamic
    assert get_pass("fp16") is Fp16
    assert get_pass("qdq-to-qoperator") is QdqToQOperator


def test_dynamic_matmul_runs_in_ort_within_tolerance(tmp_path, rng):
    fm = load_proto(matmul_proto(), tmp_path)
    qm = load_proto(matmul_proto(), tmp_path, "q.onnx")
    p = Quant8Dynamic()
    assert p.run(qm)
    ops = [n.op_type for n in qm.graph]
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops and "MatMul" not in ops
    rtol, atol = p.tolerance(qm)
    for _ in range(4):
        x = rng.standard_normal((4, 16)).astype(np.float32)
        a, b = run_onnxruntime(fm, {"x": x})[0], run_onnxruntime(qm, {"x": x})[0]
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)
    counts = ort_optimized_op_counts(lepton_ir.to_onnx(qm).SerializeToString())
    assert counts.get("DynamicQuantizeMatMul", 0) + counts.get("MatMulIntegerToFloat", 0) == 1


def test_dynamic_gemm_with_transposed_weights(tmp_path, rng):
    fm = load_proto(cnn_proto(), tmp_path)
    qm = load_proto(cnn_proto(), tmp_path, "q.onnx")
    assert Quant8Dynamic().run(qm)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_onnxruntime(qm, {"x": x})[0], run_onnxruntime(fm, {"x": x})[0], atol=0.02)


def test_fp16_keeps_interface_and_runs(tmp_path, rng):
    fm = load_proto(cnn_proto(), tmp_path)
    qm = load_proto(cnn_proto(), tmp_path, "q.onnx")
    p = Fp16()
    assert p.run(qm)
    assert qm.graph.inputs[0].dtype == lepton_ir.DType.FLOAT and qm.graph.outputs[0].dtype == lepton_ir.DType.FLOAT
    assert qm.graph.outputs[0].name == "y"
    assert any(v.const is not None and v.dtype == lepton_ir.DType.FLOAT16 for v in qm.graph.initializers.values())
    rtol, atol = p.tolerance(qm)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    b = run_onnxruntime(qm, {"x": x})[0]
    assert b.dtype == np.float32
    np.testing.assert_allclose(b, run_onnxruntime(fm, {"x": x})[0], rtol=rtol, atol=atol)


def test_fp16_without_io_types(tmp_path, rng):
    qm = load_proto(cnn_proto(), tmp_path)
    Fp16(keep_io_types=False).run(qm)
    assert qm.graph.inputs[0].dtype == lepton_ir.DType.FLOAT16
    out = run_onnxruntime(qm, {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float16)})[0]
    assert out.dtype == np.float16


def test_qdq_to_qoperator(tmp_path, rng):
    xs = rng.standard_normal((8, 1, 3, 8, 8)).astype(np.float32)
    qm = load_proto(cnn_proto(), tmp_path)
    Quant8(calib=calib_file(tmp_path, {"x": xs}), calibration="minmax", progress=False).run(qm)
    before = [run_onnxruntime(qm, {"x": x})[0] for x in xs]
    p = QdqToQOperator()
    assert p.run(qm)
    ops = [n.op_type for n in qm.graph]
    assert ops.count("QLinearConv") == 2 and "Conv" not in ops
    rtol, atol = p.tolerance(qm)
    for x, a in zip(xs, before):
        np.testing.assert_allclose(run_onnxruntime(qm, {"x": x})[0], a, rtol=rtol, atol=atol)
    assert not p.run(qm)  # idempotent


def test_report(tmp_path, rng):
    xs = rng.standard_normal((8, 1, 3, 8, 8)).astype(np.float32)
    fm = load_proto(cnn_proto(), tmp_path)
    qm = load_proto(cnn_proto(), tmp_path, "q.onnx")
    Quant8(calib=calib_file(tmp_path, {"x": xs}), calibration="minmax", progress=False).run(qm)
    r = quant_report(fm, qm, {"x": xs.reshape(8, 3, 8, 8)})
    assert r["samples"] == 8
    tensors = [la["tensor"] for la in r["layers"]]
    assert "x" in tensors and "r1" in tensors  # the folded ReLU's output is compared with the float ReLU
    assert all(la["sqnr_db"] > 20 for la in r["layers"])
    out = r["outputs"][0]
    assert out["sqnr_db"] > 20 and out["mean_cosine"] > 0.99
    assert r["size"]["quant_bytes"] < r["size"]["float_bytes"]
    text = format_report(r)
    assert "SQNR" in text and "size:" in text
    json.loads(report_json(r))


def test_passes_pass_the_differential_check_with_their_derived_tolerance(tmp_path):
    from lepton_passes import DifferentialInstrument, PassManager

    for pipeline, proto in (("fp16", cnn_proto), ("quant8-dynamic", matmul_proto),
                            ("quant8{calib=\"random:4\"},qdq-to-qoperator", cnn_proto)):
        m = load_proto(proto(), tmp_path)
        inst = DifferentialInstrument()
        PassManager(pipeline, instruments=[inst]).run(m)
        assert inst.checked >= 1, pipeline
