"""Legalization passes: each rewritten op must give the conformance suite's expected outputs (ONNX
Runtime running the rewritten model), and integer ops must stay bit-exact."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_ir
from lepton_ir.reference import run_ort
from lepton_ir.testing.corpus import conformance_cases, conformance_tolerances
from lepton_passes.base import get_pass

from lepton_passes.legalize.expand_functions import DEFAULT_OPS

LEGALIZED = ("LSTM", "GRU", "RNN", "ConvInteger", "MatMulInteger", *DEFAULT_OPS)
PATTERN = re.compile(r"test_(lstm|gru|rnn|simple_rnn|convinteger|matmulinteger|dynamicquantizelinear|mvn|"
                     r"nllloss|sce_|center_crop_pad|rotary_embedding|celu|blackmanwindow|hammingwindow|"
                     r"hannwindow|swish|swiglu|layer_normalization|attention_)")
# Cases the legalizer must leave alone, with the reason it gives.
LEFT_ALONE = {"test_lstm_with_peepholes": "sequence_lens is a graph input"}

CASES = [c for c in conformance_cases() if PATTERN.match(c[0])]


def test_cases_found():
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conformance_case(case):
    name, model, inputs, outputs = case
    m = lepton_ir.load(model)
    get_pass("legalize")().run(m)
    m.verify()
    left = [n.op_type for n in m.graph.all_nodes() if n.op_type in LEGALIZED]
    if name in LEFT_ALONE:
        assert left, "expected the legalizer to leave this case alone"
        return
    assert not left
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    rtol, atol = conformance_tolerances()[name]
    feeds = dict(zip(names, inputs))
    try:
        run_ort(model, feeds, optimize=True)
    except Exception:
        # ONNX Runtime lacks a kernel the case needs (e.g. bfloat16 arithmetic): check the
        # legalized model with onnx's reference evaluator instead.
        got = list(lepton_ir.evaluate(m, feeds).values())
    else:
        got = run_ort(lepton_ir.to_onnx(m), feeds, optimize=True)
    for g, r in zip(got, outputs):
        r = np.asarray(r)
        assert g.shape == r.shape and g.dtype == r.dtype
        if r.dtype.kind in "iub":
            np.testing.assert_array_equal(g, r)
        else:
            np.testing.assert_allclose(g, r, rtol=max(rtol, 1e-5), atol=max(atol, 1e-6))


@pytest.mark.parametrize("cin,k,zp_w", [(64, 3, 0), (255, 4, 7)])
def test_conv_integer_is_bit_exact_with_large_kernels(cin, k, zp_w):
    """Worst-case magnitudes: sums of (cin*k*k) products of +-255 values, against ORT's own kernel."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, cin, 6, 6), dtype=np.uint8)
    w = rng.integers(0, 256, (8, cin, k, k), dtype=np.uint8)
    x[0, :, :2, :2] = 255  # a corner of maximal products
    w[0] = 0
    nodes = [helper.make_node("ConvInteger", ["x", "w", "xzp", "wzp"], ["y"], pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.uint8(0), "xzp"),
             numpy_helper.from_array(np.uint8(zp_w), "wzp")]
    g = helper.make_graph(nodes, "ci", [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, None)], inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    m = lepton_ir.load(proto)
    assert get_pass("legalize-integer-ops")().run(m)
    np.testing.assert_array_equal(run_ort(lepton_ir.to_onnx(m), {"x": x}, optimize=True)[0], run_ort(proto, {"x": x}, optimize=True)[0])


def test_rnn_with_unknown_sequence_length_is_a_near_miss():
    m = lepton_ir.from_text("""
model <ir_version=8, opset={"": 17}>
graph g(%x: f32[S,1,2], %w: f32[1,3,2], %r: f32[1,3,3]) -> (%y) {
  %y, %h = RNN(%x, %w, %r) {hidden_size=3}
  return %y
}""")
    assert not get_pass("unroll-rnn")().run(m)
    from lepton_passes.legalize.rnn import _why_not

    assert "not static" in _why_not(next(iter(m.graph)))
    lepton_ir.pin_input_shapes(m, {"x": [4, 1, 2]})
    assert get_pass("unroll-rnn")().run(m)
    m.verify()
