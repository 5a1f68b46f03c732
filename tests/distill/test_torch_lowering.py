"""The torch lowering of the IR against ONNX Runtime: real models (digits CNN, magika, MiniLM-L3)
to 1e-4, and single-op models over the attributes that change the arithmetic (pads, auto_pad,
groups, strides, dilations, transposes, modes); parameters vs buffers; the write-back."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton_ir
from lepton_ir.reference import run_ort
from lepton_ir.testing import corpus

from distill_helpers import require_fetched

pytestmark = pytest.mark.timeout(300)


def _lower(model, torch):
    from lepton_passes.distill.torch_lowering import TorchModule

    return TorchModule(model)


def _torch_outputs(model, feeds, torch):
    mod = _lower(model, torch)
    with torch.no_grad():
        return [t.numpy() for t in mod.outputs(feeds)]


def _assert_close(ref, got, tol=1e-4):
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        r, g = np.asarray(r), np.asarray(g)
        assert r.dtype == g.dtype and r.shape == g.shape, (r.dtype, r.shape, g.dtype, g.shape)
        if r.dtype.kind == "f":
            np.testing.assert_allclose(g, r, rtol=tol, atol=tol)
        else:
            np.testing.assert_array_equal(g, r)


# -- real models ----------------------------------------------------------------------------------
def _real(name):
    if name == "digits":
        return corpus.digits_model_path(), {"image": corpus.digits_dataset("test")[0][:64]}
    # The corpus's realistic inputs (batch 1, seed 0). Other magika inputs can differ by ~2e-4:
    # its hand-written LayerNorm takes E[x^2] - E[x]^2 of values ~1e5 in float32, where summation
    # order (MLAS vs oneDNN) shows (docs/distill.md).
    return require_fetched(name), corpus.realistic_inputs(name)


@pytest.mark.parametrize("name", ["digits", "magika", "minilm-l3"])
def test_real_model_equals_ort(name, torch):
    path, feeds = _real(name)
    model = lepton_ir.load(path)
    _assert_close(run_ort(lepton_ir.to_onnx(model), feeds), _torch_outputs(model, feeds, torch))


def test_digits_parameters_and_buffers(torch):
    from lepton_passes.distill.torch_lowering import TorchModule

    model = lepton_ir.load(corpus.digits_model_path())
    mod = TorchModule(model)
    trained = sorted(v.name for v in mod.param_values.values())
    assert trained == sorted(["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "conv2.weight", "conv2.bias",
                              "fc.weight", "fc.bias"])
    buffers = {n for n, _ in mod.named_buffers()}
    assert any("running_mean" in b for b in buffers) and any("running_var" in b for b in buffers)
    assert all(p.requires_grad for p in mod.parameters())


def test_minilm_weights_are_parameters(torch):
    from lepton_passes.distill.torch_lowering import TorchModule

    mod = TorchModule(lepton_ir.load(require_fetched("minilm-l3")))
    names = {v.name for v in mod.param_values.values()}
    assert sum("LayerNorm.weight" in n for n in names) == 7
    assert sum(n.startswith("onnx::MatMul") for n in names) == 18
    assert not any("embeddings.word_embeddings" in n for n in names)  # a Gather table: a buffer


def test_write_back_matches_torch(torch):
    """Change the parameters in torch, write them back, and ONNX Runtime sees the torch model."""
    from lepton_passes.distill.torch_lowering import TorchModule

    model = lepton_ir.load(corpus.digits_model_path())
    X = corpus.digits_dataset("test")[0][:16]
    mod = TorchModule(model)
    with torch.no_grad():
        for p in mod.parameters():
            p.mul_(0.9).add_(0.01)
        want = mod.outputs({"image": X})[0].numpy()
    assert mod.write_back() == 8
    got = run_ort(lepton_ir.to_onnx(model), {"image": X})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    model.verify()


def test_unsupported_op_is_one_line(torch):
    from lepton_passes.distill.torch_lowering import LoweringError, TorchModule

    m = lepton_ir.from_text('''
    model <ir_version=8, opset={"": 17}>
    graph g(%x: f32[4]) -> (%y) {
      %y = Hardmax(%x)
      return %y
    }''')
    with pytest.raises(LoweringError, match="'Hardmax'") as info:
        TorchModule(m)
    assert "\n" not in str(info.value)


# -- single ops -----------------------------------------------------------------------------------
F32 = TensorProto.FLOAT


def _single(op, inputs, consts=None, attrs=None, opset=17, n_out=1, out_types=None):
    """A one-node ONNX model: `inputs` {name: array} are graph inputs, `consts` initializers
    (their order in the node's inputs is inputs, then consts; None keeps an empty slot)."""
    consts = consts or {}
    names, inits, vis = [], [], []
    rng_inputs = {}
    for k, a in list(inputs.items()) + list(consts.items()):
        if a is None:
            names.append("")
            continue
        names.append(k)
        if k in inputs:
            vis.append(helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape))
            rng_inputs[k] = a
        else:
            inits.append(onnx.numpy_helper.from_array(a, k))
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    types = out_types or [F32] * n_out
    graph = helper.make_graph([node], "g", vis, [helper.make_tensor_value_info(o, t, None) for o, t in zip(outs, types)],
                              inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return proto, rng_inputs


R = np.random.default_rng(0)


def _x(*shape):
    return R.standard_normal(shape).astype(np.float32)


CASES = {
    "conv-asym-pads": ("Conv", {"x": _x(1, 4, 9, 7)}, {"w": _x(6, 2, 3, 3), "b": _x(6)},
                       {"group": 2, "pads": [0, 1, 2, 1], "strides": [2, 1]}, 17),
    "conv-same-upper": ("Conv", {"x": _x(2, 3, 10, 9)}, {"w": _x(4, 3, 3, 2)},
                        {"auto_pad": "SAME_UPPER", "strides": [2, 3]}, 17),
    "conv-dilations": ("Conv", {"x": _x(2, 3, 10, 9)}, {"w": _x(4, 3, 3, 2)},
                       {"pads": [2, 1, 1, 0], "strides": [1, 2], "dilations": [2, 3]}, 17),
    "conv-same-lower": ("Conv", {"x": _x(1, 2, 8, 8)}, {"w": _x(2, 2, 4, 4)}, {"auto_pad": "SAME_LOWER"}, 17),
    "conv-depthwise-1d": ("Conv", {"x": _x(2, 4, 11)}, {"w": _x(8, 1, 3), "b": _x(8)}, {"group": 4, "pads": [1, 1]}, 17),
    "convT-pads-outpad": ("ConvTranspose", {"x": _x(1, 4, 5, 6)}, {"w": _x(4, 3, 3, 3), "b": _x(3)},
                          {"strides": [2, 2], "pads": [1, 0, 1, 1], "output_padding": [1, 0]}, 17),
    "convT-groups-dil": ("ConvTranspose", {"x": _x(1, 4, 5, 5)}, {"w": _x(4, 2, 2, 3)},
                         {"group": 2, "dilations": [2, 1], "strides": [1, 2]}, 17),
    "convT-output-shape": ("ConvTranspose", {"x": _x(1, 2, 4, 4)}, {"w": _x(2, 2, 3, 3)},
                           {"strides": [2, 2], "output_shape": [9, 8]}, 17),
    "convT-same-upper": ("ConvTranspose", {"x": _x(1, 2, 4, 5)}, {"w": _x(2, 3, 3, 3)},
                         {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, 17),
    "gemm-trans-alpha-beta": ("Gemm", {"a": _x(5, 3)}, {"b": _x(4, 5), "c": _x(4)},
                              {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, 17),
    "matmul-batched": ("MatMul", {"a": _x(2, 3, 4, 5)}, {"b": _x(5, 6)}, {}, 17),
    "batchnorm": ("BatchNormalization", {"x": _x(2, 3, 4, 4)},
                  {"s": _x(3), "b": _x(3), "m": _x(3), "v": np.abs(_x(3)) + 0.1}, {"epsilon": 1e-3}, 17),
    "layernorm-axis": ("LayerNormalization", {"x": _x(2, 3, 4, 5)}, {"s": _x(4, 5), "b": _x(5)}, {"axis": -2}, 17),
    "maxpool-ceil-pads": ("MaxPool", {"x": _x(1, 2, 9, 8)}, {}, {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                 "pads": [1, 0, 1, 1], "ceil_mode": 1}, 17),
    "maxpool-same": ("MaxPool", {"x": _x(1, 2, 9, 8)}, {}, {"kernel_shape": [2, 3], "auto_pad": "SAME_UPPER",
                                                            "strides": [2, 2]}, 17),
    "maxpool-dilations": ("MaxPool", {"x": _x(1, 2, 9, 8)}, {}, {"kernel_shape": [2, 3], "pads": [1, 1, 0, 1],
                                                                 "dilations": [2, 2]}, 17),
    "avgpool-exclude-pad": ("AveragePool", {"x": _x(1, 2, 7, 7)}, {}, {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                       "pads": [1, 1, 0, 1]}, 17),
    "avgpool-include-pad": ("AveragePool", {"x": _x(1, 2, 7, 6)}, {}, {"kernel_shape": [3, 2], "pads": [1, 1, 1, 0],
                                                                       "count_include_pad": 1}, 17),
    "avgpool-1d": ("AveragePool", {"x": _x(2, 3, 10)}, {}, {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, 17),
    "global-avg": ("GlobalAveragePool", {"x": _x(2, 3, 5, 4)}, {}, {}, 17),
    "softmax-opset11": ("Softmax", {"x": _x(2, 3, 4)}, {}, {"axis": 1}, 11),
    "logsoftmax": ("LogSoftmax", {"x": _x(2, 3, 4)}, {}, {"axis": 1}, 17),
    "hardsigmoid": ("HardSigmoid", {"x": _x(3, 4) * 4}, {}, {"alpha": 0.3, "beta": 0.4}, 17),
    "hardswish": ("HardSwish", {"x": _x(3, 4) * 4}, {}, {}, 17),
    "leakyrelu": ("LeakyRelu", {"x": _x(3, 4)}, {}, {"alpha": 0.2}, 17),
    "gelu-tanh": ("Gelu", {"x": _x(3, 4)}, {}, {"approximate": "tanh"}, 20),
    "clip-inputs": ("Clip", {"x": _x(3, 4)}, {"lo": np.array(-0.5, np.float32), "hi": np.array(0.3, np.float32)}, {}, 17),
    "clip-max-only": ("Clip", {"x": _x(3, 4)}, {"lo": None, "hi": np.array(0.3, np.float32)}, {}, 17),
    "pow": ("Pow", {"x": np.abs(_x(3, 4)) + 0.1}, {"e": np.array(1.7, np.float32)}, {}, 17),
    "slice-neg-step": ("Slice", {"x": _x(5, 6, 7)}, {"s": np.array([-1, 1], np.int64), "e": np.array([-100, 6], np.int64),
                                                     "a": np.array([0, 2], np.int64), "st": np.array([-2, 2], np.int64)},
                       {}, 17),
    "split-sizes": ("Split", {"x": _x(2, 7)}, {"s": np.array([3, 4], np.int64)}, {"axis": 1}, 17, 2),
    "split-num-outputs": ("Split", {"x": _x(2, 7)}, {}, {"axis": 1, "num_outputs": 3}, 18, 3),
    "pad-reflect": ("Pad", {"x": _x(1, 2, 5, 5)}, {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)},
                    {"mode": "reflect"}, 17),
    "pad-edge": ("Pad", {"x": _x(1, 2, 5, 5)}, {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)}, {"mode": "edge"}, 17),
    "pad-constant-neg": ("Pad", {"x": _x(2, 5, 5)}, {"p": np.array([1, -1, 2, 0, 1, -2], np.int64),
                                                     "v": np.array(1.5, np.float32)}, {}, 17),
    "resize-nearest-asym": ("Resize", {"x": _x(1, 2, 3, 4)}, {"roi": None, "sc": np.array([1, 1, 2, 1.5], np.float32)},
                            {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                             "nearest_mode": "floor"}, 17),
    "resize-nearest-halfpixel": ("Resize", {"x": _x(1, 2, 3, 4)}, {"roi": None, "sc": None,
                                                                   "sz": np.array([1, 2, 7, 5], np.int64)},
                                 {"mode": "nearest"}, 17),
    "resize-linear-halfpixel": ("Resize", {"x": _x(1, 2, 3, 4)}, {"roi": None, "sc": np.array([1, 1, 2, 2.5], np.float32)},
                                {"mode": "linear"}, 17),
    "resize-linear-align": ("Resize", {"x": _x(1, 2, 3, 4)}, {"roi": None, "sc": None,
                                                              "sz": np.array([1, 2, 5, 3], np.int64)},
                            {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, 17),
    "reducemean-opset17": ("ReduceMean", {"x": _x(2, 3, 4)}, {}, {"axes": [1, -1], "keepdims": 0}, 17),
    "reducesum-all": ("ReduceSum", {"x": _x(2, 3, 4)}, {}, {"keepdims": 1}, 17),
    "gather-neg": ("Gather", {"x": _x(5, 4)}, {"i": np.array([[0, -1], [2, 3]], np.int64)}, {"axis": 0}, 17),
    "transpose": ("Transpose", {"x": _x(2, 3, 4)}, {}, {"perm": [2, 0, 1]}, 17),
    "flatten": ("Flatten", {"x": _x(2, 3, 4, 5)}, {}, {"axis": 2}, 17),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_single_op_equals_ort(case, torch):
    op, ins, consts, attrs, opset, *rest = CASES[case]
    n_out = rest[0] if rest else 1
    proto, feeds = _single(op, ins, consts, attrs, opset, n_out)
    model = lepton_ir.load(proto)
    _assert_close(run_ort(proto, feeds), _torch_outputs(model, feeds, torch), tol=1e-5)


def test_shape_ops_equal_ort(torch):
    """Shape arithmetic as exported models do it: Shape/Gather/Unsqueeze/Concat/Reshape,
    Expand, ConstantOfShape, Equal/Where, Cast, Squeeze."""
    m = lepton_ir.from_text('''
    model <ir_version=8, opset={"": 17}>
    graph g(%x: f32[N,3,4]) -> (%y, %z, %w) {
      %ax = const i64[1] [0]
      %sh3b = const i64[3] [1, 1, 1]
      %s = Shape(%x)
      %i0 = Constant() {value=tensor i64[] [0]}
      %n = Gather(%s, %i0)
      %u = Unsqueeze(%n, %ax)
      %m1 = Constant() {value=tensor i64[1] [-1]}
      %shp = Concat(%u, %m1) {axis=0}
      %y = Reshape(%x, %shp)
      %sh3 = Constant() {value=tensor i64[3] [2, 1, 4]}
      %cz = ConstantOfShape(%sh3) {value=tensor f32[1] [0.5]}
      %ones = Expand(%x, %sh3b)
      %eq = Equal(%ones, %cz)
      %wh = Where(%eq, %x, %cz)
      %c = Cast(%wh) {to=11}
      %z = Cast(%c) {to=1}
      %sq = Unsqueeze(%z, %ax)
      %w = Squeeze(%sq, %ax)
      return %y, %z, %w
    }''')
    feeds = {"x": np.round(_x(2, 3, 4) * 2) / 4}
    _assert_close(run_ort(lepton_ir.to_onnx(m), feeds), _torch_outputs(m, feeds, torch))
