"""quant8's derived tolerance: the error a range-squeezing op (Sigmoid) reads from its quantized
input survives its output quantizer (the ppocr-det `fuse,quant8` case), and the differential check
with that tolerance still catches wrong quantizations on the shipped digits CNN."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import lepton_ir
from lepton_ir.testing import corpus
from lepton_passes import DifferentialInstrument, DifferentialMismatchError, PassManager, get_pass, run_onnxruntime
from lepton_passes.quant import Quant8
from lepton_passes.util import constant_value

from qfixtures import calib_file, load_proto


def _logits_sigmoid_proto(bias_in_conv: bool) -> onnx.ModelProto:
    """x -> Conv (wide logits, about +-30) -> Sigmoid; the bias inside the Conv (what `fuse` makes
    of ppocr-det's ConvTranspose + Add) or as a separate Add."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 3, 3, 3)) * 3.0).astype(np.float32)
    b = (rng.standard_normal(4) * 2.0).astype(np.float32)
    if bias_in_conv:
        nodes = [h.make_node("Conv", ["x", "W", "B"], ["z"], pads=[1, 1, 1, 1])]
    else:
        b = b.reshape(1, 4, 1, 1)
        nodes = [h.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), h.make_node("Add", ["c", "B"], ["z"])]
    nodes.append(h.make_node("Sigmoid", ["z"], ["y"]))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 16, 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 16, 16])],
                     [nh.from_array(w, "W"), nh.from_array(b, "B")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_a_quantized_sigmoid_keeps_the_error_of_its_logits(tmp_path):
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    calib = calib_file(tmp_path, {"x": xs[:8]})
    tols = {}
    for inline in (True, False):
        proto = _logits_sigmoid_proto(inline)
        fm = load_proto(proto, tmp_path, f"f{inline}.onnx")
        qm = load_proto(proto, tmp_path, f"q{inline}.onnx")
        p = Quant8(calib=calib, calibration="minmax", progress=False)
        assert p.run(qm)
        sig = next(n for n in qm.graph if n.op_type == "Sigmoid")
        # with the bias inside the Conv the Sigmoid runs quantized (its output has a quantizer)
        assert any(u.op_type == "QuantizeLinear" for u in sig.outputs[0].users()) == inline
        logit_dq = sig.inputs[0].producer() if inline else sig.inputs[0].producer().inputs[0].producer()
        s_logits = float(constant_value(logit_dq.inputs[1]))
        _, atol = p.tolerance(qm)
        # the logits' step, through Sigmoid's slope of 1/4, not the output's 1/255 step
        assert atol >= p.tolerance_k * s_logits / 4
        worst = max(float(np.abs(run_onnxruntime(fm, {"x": x[None]})[0] - run_onnxruntime(qm, {"x": x[None]})[0]).max())
                    for x in xs[8:])
        assert worst <= atol, (inline, worst, atol)
        if inline:  # the output quantizer's step alone (what was derived before) does not cover it
            assert worst > p.tolerance_k * np.sqrt(3) / 255
        tols[inline] = atol
    # fusing the bias into the Conv changes what is quantized, not the error bound's order
    assert 0.5 < tols[True] / tols[False] < 2.0


@dataclasses.dataclass(frozen=True)
class _WrongQuant8(Quant8):
    """quant8 followed by one wrong-quantization bug."""

    bug: str = ""

    def run(self, model) -> bool:
        changed = super().run(model)
        g = model.graph
        dqs = [n for n in g if n.op_type == "DequantizeLinear"]
        consts = [(n, constant_value(n.inputs[0])) for n in dqs]
        if self.bug == "weight-scales-permuted":  # per-channel scales applied to the wrong channels
            n = next(n for n, c in consts if c is not None and c.dtype == np.int8 and np.size(constant_value(n.inputs[1])) > 1)
            n.replace_input(1, g.constant(constant_value(n.inputs[1])[::-1].copy()))
        elif self.bug == "zero-point":  # an activation's zero point of the other signedness
            acts = [n for n, c in consts if c is None]
            dq = acts[len(acts) // 2]
            zp = constant_value(dq.inputs[2])
            z = g.constant(np.asarray(0 if int(zp) == 128 else 128, zp.dtype))
            dq.inputs[0].producer().replace_input(2, z)
            dq.replace_input(2, z)
        elif self.bug == "bias-scale":  # an int32 bias dequantized with the wrong scale
            n = next(n for n, c in consts if c is not None and c.dtype == np.int32)
            n.replace_input(1, g.constant((constant_value(n.inputs[1]) * 4).astype(np.float32)))
        return changed


@pytest.mark.parametrize("bug", ["", "weight-scales-permuted", "zero-point", "bias-scale"])
def test_the_check_catches_a_wrong_quantization_of_the_digits_cnn(tmp_path, bug):
    path = corpus.require_real_model("digits")
    x, _ = corpus.digits_dataset("test")
    cx, _ = corpus.digits_dataset("calib")
    calib = calib_file(tmp_path, {"image": cx[:8]})
    model = lepton_ir.load(str(path))
    pm = PassManager([get_pass("fuse")(), _WrongQuant8(calib=calib, progress=False, bug=bug)],
                     instruments=[DifferentialInstrument({"image": x[:4]})])
    if not bug:
        pm.run(model)  # the right quantization passes `fuse,quant8` under its derived tolerance
        return
    with pytest.raises(DifferentialMismatchError, match="beyond its tolerance"):
        pm.run(model)
