"""`qdq-to-integer`: quant8's QDQ groups -> ConvInteger/MatMulInteger + float rescale, checked with
ONNX Runtime running the QDQ original (float simulation, graph optimizations off)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import strategies as st
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import lepton_ir
from lepton_ir.reference import run_ort
from lepton_passes import get_pass, run_onnxruntime
from lepton_passes.quant import QdqToInteger, Quant8
from lepton_passes.testing import check_one, check_pass

from qfixtures import add_join_proto, calib_file, cnn_proto, conv_relu_proto, load_proto, matmul_proto


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", inputs, outputs, [nh.from_array(v, k) for k, v in inits.items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def _vi(name: str, shape) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, T.FLOAT, shape)


def depthwise_strided_proto(seed: int = 0) -> onnx.ModelProto:
    """Conv(stride 2, auto_pad SAME_UPPER) -> depthwise Conv(group 6, dilation 2): group, strides,
    dilations and auto padding through ConvInteger."""
    rng = np.random.default_rng(seed)
    inits = {"W1": (rng.standard_normal((6, 3, 3, 3)) * 0.3).astype(np.float32),
             "B1": (rng.standard_normal(6) * 0.1).astype(np.float32),
             "W2": (rng.standard_normal((6, 1, 3, 3)) * 0.4).astype(np.float32)}
    nodes = [h.make_node("Conv", ["x", "W1", "B1"], ["c1"], strides=[2, 2], auto_pad="SAME_UPPER", name="c1"),
             h.make_node("Conv", ["c1", "W2"], ["y"], group=6, dilations=[2, 2], pads=[2, 2, 2, 2], name="dw")]
    return _model(nodes, [_vi("x", [1, 3, 11, 11])], [_vi("y", [1, 6, 6, 6])], inits)


def gemm_proto(seed: int = 0) -> onnx.ModelProto:
    """Gemm(transB=1, bias) -> Relu -> Gemm(transB=0, no bias): the transposed weight is stored
    transposed for MatMulInteger, per-output-channel scales along the right axis."""
    rng = np.random.default_rng(seed)
    inits = {"G1": (rng.standard_normal((12, 16)) * 0.3).astype(np.float32),
             "b1": (rng.standard_normal(12) * 0.1).astype(np.float32),
             "G2": (rng.standard_normal((12, 5)) * 0.3).astype(np.float32)}
    nodes = [h.make_node("Gemm", ["x", "G1", "b1"], ["g1"], transB=1, name="fc1"),
             h.make_node("Relu", ["g1"], ["r"]),
             h.make_node("Gemm", ["r", "G2"], ["y"], name="fc2")]
    return _model(nodes, [_vi("x", [3, 16])], [_vi("y", [3, 5])], inits)


def act_matmul_proto(seed: int = 0) -> onnx.ModelProto:
    """MatMul of two activations (attention-score style): MatMulInteger with both zero points."""
    nodes = [h.make_node("MatMul", ["a", "b"], ["y"], name="scores")]
    return _model(nodes, [_vi("a", [2, 4, 8]), _vi("b", [2, 8, 6])], [_vi("y", [2, 4, 6])], {})


FIXTURES = {
    "cnn": (cnn_proto, {"x": (1, 3, 8, 8)}),
    "conv_relu": (conv_relu_proto, {"x": (1, 3, 12, 12)}),
    "add_join": (add_join_proto, {"x": (1, 3, 8, 8)}),
    "matmul": (matmul_proto, {"x": (4, 16)}),
    "depthwise_strided": (depthwise_strided_proto, {"x": (1, 3, 11, 11)}),
    "gemm": (gemm_proto, {"x": (3, 16)}),
    "act_matmul": (act_matmul_proto, {"a": (2, 4, 8), "b": (2, 8, 6)}),
}


def quantized(tmp_path, name: str, activations: str = "u8", seed: int = 0) -> lepton_ir.Model:
    """The fixture through quant8 (minmax on 16 samples with an offset, so u8 zero points are not 0)."""
    builder, shapes = FIXTURES[name]
    rng = np.random.default_rng(seed)
    calib = {k: (rng.standard_normal((16,) + s) + 0.3).astype(np.float32) for k, s in shapes.items()}
    m = load_proto(builder(seed), tmp_path, f"{name}.onnx")
    assert Quant8(calib=calib_file(tmp_path, calib, f"{name}.npz"), calibration="minmax", progress=False,
                  activations=activations).run(m)
    return m


def test_registered():
    assert get_pass("qdq-to-integer") is QdqToInteger


@pytest.mark.parametrize("activations", ["u8", "s8"])
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_rewrites_every_group_and_matches_qdq(tmp_path, name, activations):
    qm = quantized(tmp_path, name, activations)
    n_compute = sum(n.op_type in ("Conv", "MatMul", "Gemm") for n in qm.graph)
    rng = np.random.default_rng(7)
    _, shapes = FIXTURES[name]
    feeds = [{k: (rng.standard_normal(s) + 0.3).astype(np.float32) for k, s in shapes.items()} for _ in range(6)]
    before = [run_onnxruntime(qm, f) for f in feeds]
    p = QdqToInteger()
    assert p.run(qm)
    qm.verify()
    ops = [n.op_type for n in qm.graph]
    assert not {"Conv", "MatMul", "Gemm"} & set(ops), ops
    assert ops.count("ConvInteger") + ops.count("MatMulInteger") == n_compute
    # No weight or bias DequantizeLinear is left: only activation ones (constants were removed).
    assert all(_reads_computed(n) for n in qm.graph if n.op_type == "DequantizeLinear")
    rtol, atol = p.tolerance(qm)
    assert rtol == 0 and 0 < atol
    for f, ref in zip(feeds, before):
        got = run_onnxruntime(qm, f)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    assert not p.run(qm)  # idempotent: nothing left to rewrite


def _reads_computed(dq) -> bool:
    """A DequantizeLinear reading a computed tensor (not a constant weight or bias)."""
    from lepton_passes.util import is_constant

    return not is_constant(dq.inputs[0])


def test_check_pass_on_quantized_fixtures(tmp_path_factory):
    """The project's property check (IR verify, onnx.checker, ORT outputs within the derived
    tolerance, text round trip, idempotence) over the quantized fixtures and random inputs."""
    protos = []
    for i, name in enumerate(sorted(FIXTURES)):
        for act in ("u8", "s8"):
            d = tmp_path_factory.mktemp(f"{name}_{act}")
            protos.append(lepton_ir.to_onnx(quantized(d, name, act, seed=i)))
    check_pass(QdqToInteger(), strategy=st.sampled_from(protos), max_examples=20)


def test_conv_integer_padding_is_the_zero_point(tmp_path):
    """ONNX ConvInteger pads x_q with x_zp, which the float QDQ model sees as DQ(x_zp) = 0.0: the
    border outputs (where padding is read) agree with the QDQ original exactly, with a zero point
    far from 0 (inputs all positive and large, so u8 zp = 0 would hide a wrong padding)."""
    qm = quantized(tmp_path, "conv_relu", "u8")
    zps = [int(np.asarray(_const(n.inputs[2]))) for n in qm.graph if n.op_type == "QuantizeLinear"]
    assert any(z != 0 for z in zps)
    x = {"x": np.random.default_rng(3).standard_normal((1, 3, 12, 12)).astype(np.float32) + 0.3}
    ref = run_onnxruntime(qm, x)[0]
    assert QdqToInteger().run(qm)
    got = run_onnxruntime(qm, x)[0]
    # Rounding may differ by one output step in rare cases; the border must not differ more.
    step = max(float(np.asarray(_const(n.inputs[1]))) for n in qm.graph if n.op_type == "QuantizeLinear")
    border = np.ones(ref.shape, bool)
    border[..., 1:-1, 1:-1] = False
    assert np.max(np.abs(got[border] - ref[border])) <= step * 1.001
    assert np.mean(got == ref) > 0.99


def _const(v):
    from lepton_passes.util import constant_value

    return constant_value(v)


def test_integer_ops_run_as_integer_kernels_in_ort(tmp_path):
    """With graph optimizations on, ORT runs the rewritten model with ConvInteger/MatMulInteger
    kernels and gives the same result as its fused QDQ kernels within one output step."""
    qm = quantized(tmp_path, "cnn", "u8")
    data = lepton_ir.to_onnx(qm).SerializeToString()
    x = {"x": np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    ref = run_ort(data, x, optimize=True)[0]  # optimized: ORT's fused QDQ kernels
    assert QdqToInteger().run(qm)
    got = run_ort(qm, x, optimize=True)[0]
    _, atol = QdqToInteger().tolerance(qm)
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol)


def test_leaves_groups_it_cannot_express(tmp_path):
    """A weight quantized per channel with non-zero zero points (not quant8's form) is left alone."""
    rng = np.random.default_rng(0)
    w = rng.integers(-50, 50, (16, 8)).astype(np.int8)
    inits = {"xs": np.float32(0.02), "xz": np.uint8(128), "wq": w, "ws": np.full(8, 0.01, np.float32),
             "wz": np.arange(8, dtype=np.int8)}
    nodes = [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             h.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
             h.make_node("MatMul", ["xd", "wd"], ["y"])]
    m = load_proto(_model(nodes, [_vi("x", [2, 16])], [_vi("y", [2, 8])], inits), tmp_path)
    assert not QdqToInteger().run(m)
    assert [n.op_type for n in m.graph].count("MatMul") == 1
    # ... and the same model with symmetric weights is rewritten, with the same outputs.
    inits["wz"] = np.zeros(8, np.int8)
    proto = _model(nodes, [_vi("x", [2, 16])], [_vi("y", [2, 8])], inits)
    check_one(QdqToInteger(), proto, seed=1)
