"""`legalize-dynamic-quantize-lstm`: com.microsoft::DynamicQuantizeLSTM in standard ops must give what
ONNX Runtime's own kernel gives (the reference: ORT running the original contrib op).

Weights are quantized in numpy the way `onnxruntime.quantization.quantize_dynamic` does (int8
symmetric with reduce_range, per tensor or per output column, or uint8; transposed to
[dirs, K, 4h]); one case runs `quantize_dynamic` itself on a float LSTM.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_ir
from lepton_ir.reference import run_ort
from lepton_passes.base import get_pass
from lepton_passes.legalize.dynamic_quantize_lstm import why_not

RTOL, ATOL = 1e-3, 1e-4


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    # ORT splits batches > 1 over its threads and quantizes each chunk separately (see the pass's
    # docstring); one thread is the whole-batch arithmetic the rewrite reproduces.
    return run_ort(model, feeds, optimize=True, threads=1)


def _quantize_weight(w: np.ndarray, per_channel: bool, unsigned: bool):
    """[dirs, 4h, K] float -> ([dirs, K, 4h] quantized, scale, zero point) like quantize_dynamic."""
    dirs = w.shape[0]
    axes = (2,) if per_channel else (1, 2)
    if unsigned:
        # asymmetric uint8: the kernel wants one zero point per direction, and a [dirs, 4h] zero
        # point tensor all equal (across directions too)
        red = None if per_channel else (1, 2)
        lo = np.minimum(w.min(axis=red, keepdims=True), 0)
        hi = np.maximum(w.max(axis=red, keepdims=True), 0)
        scale = ((hi - lo) / 255).astype(np.float32)
        zp = np.rint(-lo / scale).astype(np.uint8)
        if per_channel:
            scale = np.broadcast_to(scale, (dirs, w.shape[1], 1)).copy()
            scale[:, ::2] *= np.float32(1.25)  # distinct column scales
            zp = np.broadcast_to(zp, scale.shape)
        q = np.clip(np.rint(w / scale) + zp, 0, 255).astype(np.uint8)
        zp = np.broadcast_to(zp, scale.shape).copy()
    else:
        # reduce_range's 7-bit int8 ([-64, 64]): full-range int8 pairs can saturate ORT's int16
        # intermediate sums on AVX2 CPUs without VNNI (see the pass's docstring)
        scale = (np.abs(w).max(axis=axes, keepdims=True) / 64).astype(np.float32)
        q = np.clip(np.rint(w / scale), -64, 64).astype(np.int8)
        zp = np.zeros(scale.shape, dtype=np.int8)
    shape = (dirs, w.shape[1]) if per_channel else (dirs,)
    return np.ascontiguousarray(q.transpose(0, 2, 1)), scale.reshape(shape), zp.reshape(shape)


def _dq_lstm_model(*, seq=5, batch=1, inp=6, hidden=4, direction="forward", bias=False, init=False,
                   per_channel=False, unsigned=False, seed=0):
    """(model, feeds) for one DynamicQuantizeLSTM with Y, Y_h, Y_c as graph outputs."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    w = rng.standard_normal((dirs, 4 * hidden, inp)).astype(np.float32) * 0.5
    r = rng.standard_normal((dirs, 4 * hidden, hidden)).astype(np.float32) * 0.5
    wq, ws, wz = _quantize_weight(w, per_channel, unsigned)
    rq, rs, rz = _quantize_weight(r, per_channel, unsigned)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((wq, "W"), (rq, "R"), (ws, "ws"), (wz, "wz"), (rs, "rs"), (rz, "rz"))]
    names = ["x", "W", "R", "", "", "", "", ""]
    feeds = {"x": rng.standard_normal((seq, batch, inp)).astype(np.float32)}
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, inp])]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal((dirs, 8 * hidden)).astype(np.float32), "B"))
        names[3] = "B"
    if init:
        for k, n in ((5, "h0"), (6, "c0")):
            names[k] = n
            feeds[n] = rng.standard_normal((dirs, batch, hidden)).astype(np.float32)
            graph_inputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, [dirs, batch, hidden]))
    node = helper.make_node("DynamicQuantizeLSTM", names + ["ws", "wz", "rs", "rz"], ["y", "yh", "yc"],
                            domain="com.microsoft", hidden_size=hidden, direction=direction)
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "yh", "yc")]
    g = helper.make_graph([node], "g", graph_inputs, outs, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return model, feeds


def _legalized(model: onnx.ModelProto, pass_name: str = "legalize") -> onnx.ModelProto:
    m = lepton_ir.load(model)
    assert get_pass(pass_name)().run(m)
    m.verify()
    gone = ("LSTM", "MatMulInteger") if pass_name == "legalize" else ("LSTM",)
    left = [(n.domain, n.op_type) for n in m.graph.all_nodes() if n.domain not in ("", "ai.onnx") or n.op_type in gone]
    assert not left, left
    return lepton_ir.to_onnx(m)


def _check(model, feeds):
    """Both forms: the pass alone (MatMulInteger left to the runtime, as for TVM) and `legalize`."""
    ref = _ort(model, feeds)
    for pass_name in ("legalize-dynamic-quantize-lstm", "legalize"):
        got = _ort(_legalized(model, pass_name), feeds)
        assert len(got) == len(ref) == 3
        for k, (g, r) in enumerate(zip(got, ref)):
            assert g.shape == r.shape, k
            np.testing.assert_allclose(g, r, rtol=RTOL, atol=ATOL, err_msg=f"{pass_name}: output {k}")


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("bias,init", [(False, False), (True, True)], ids=["plain", "bias+init"])
def test_matches_onnxruntime(direction, bias, init):
    model, feeds = _dq_lstm_model(direction=direction, bias=bias, init=init)
    _check(model, feeds)


@pytest.mark.parametrize("per_channel,unsigned", [(True, False), (False, True), (True, True)],
                         ids=["per-channel", "uint8", "uint8-per-channel"])
def test_weight_quantization_forms(per_channel, unsigned):
    model, feeds = _dq_lstm_model(direction="bidirectional", bias=True, init=True, per_channel=per_channel,
                                  unsigned=unsigned, seed=1)
    _check(model, feeds)


def test_batch_and_long_sequence_stay_close():
    """Errors could compound over steps: 24 steps, batch 3, hidden 16, all optional inputs."""
    model, feeds = _dq_lstm_model(seq=24, batch=3, inp=10, hidden=16, direction="bidirectional", bias=True,
                                  init=True, per_channel=True, seed=2)
    _check(model, feeds)


def test_quantization_is_not_a_float_lstm():
    """The reference really is quantized: a float LSTM on dequantized weights differs from it by far
    more than the tolerance, so matching it is not an accident of small quantization noise."""
    model, feeds = _dq_lstm_model(seq=8, inp=16, hidden=8, direction="forward", bias=True, init=True, seed=3)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w = (inits["W"].astype(np.float32) * inits["ws"][:, None, None]).transpose(0, 2, 1)
    r = (inits["R"].astype(np.float32) * inits["rs"][:, None, None]).transpose(0, 2, 1)
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0", "c0"], ["y", "yh", "yc"], hidden_size=8)
    fl = helper.make_graph([node], "f", list(model.graph.input), list(model.graph.output),
                           [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"),
                            [t for t in model.graph.initializer if t.name == "B"][0]])
    float_model = helper.make_model(fl, opset_imports=[helper.make_opsetid("", 17)])
    ref = _ort(model, feeds)[0]
    assert np.abs(_ort(float_model, feeds)[0] - ref).max() > 10 * ATOL
    np.testing.assert_allclose(_ort(_legalized(model), feeds)[0], ref, rtol=RTOL, atol=ATOL)


def test_quantize_dynamic_output(tmp_path):
    """End to end with ONNX Runtime's quantizer: a float LSTM through quantize_dynamic."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(4)
    hidden, inp = 8, 12
    w = numpy_helper.from_array(rng.standard_normal((2, 4 * hidden, inp)).astype(np.float32) * 0.3, "W")
    r = numpy_helper.from_array(rng.standard_normal((2, 4 * hidden, hidden)).astype(np.float32) * 0.3, "R")
    b = numpy_helper.from_array(rng.standard_normal((2, 8 * hidden)).astype(np.float32) * 0.1, "B")
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "yh", "yc"], hidden_size=hidden,
                            direction="bidirectional")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [7, 1, inp])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "yh", "yc")],
                          [w, r, b])
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, reduce_range=True)
    q = onnx.load(str(dst))
    assert [n.op_type for n in q.graph.node] == ["DynamicQuantizeLSTM"]
    _check(q, {"x": rng.standard_normal((7, 1, inp)).astype(np.float32)})


def test_all_zero_input_uses_scale_one():
    """An all-zero X (ORT: scale 1, zero point 0) must not turn into NaNs (ONNX's
    DynamicQuantizeLinear would divide by a zero scale)."""
    model, feeds = _dq_lstm_model(direction="bidirectional", bias=True)
    feeds["x"][:] = 0
    got = _ort(_legalized(model), feeds)
    assert all(np.isfinite(g).all() for g in got)
    for g, r in zip(got, _ort(model, feeds)):
        np.testing.assert_allclose(g, r, rtol=RTOL, atol=ATOL)


def test_unknown_sequence_length_is_left_alone():
    model, _ = _dq_lstm_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "S"
    m = lepton_ir.load(model)
    assert not get_pass("legalize-dynamic-quantize-lstm")().run(m)
    node = next(iter(m.graph))
    assert node.op_type == "DynamicQuantizeLSTM" and "not static" in why_not(node)


def test_registered_idempotent_and_part_of_legalize():
    model, _ = _dq_lstm_model(direction="bidirectional", bias=True)
    m = lepton_ir.load(model)
    p = get_pass("legalize-dynamic-quantize-lstm")()
    assert p.run(m) and not p.run(m)
    assert not any(n.op_type == "DynamicQuantizeLSTM" for n in m.graph.all_nodes())
    # under `legalize`, the MatMulIntegers it emits are legalized too (it runs before legalize-integer-ops)
    _legalized(model, "legalize")
