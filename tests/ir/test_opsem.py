"""`lepton_ir.opsem` checked against ONNX Runtime, never against itself.

For every weight op: perturbing the weight slice the table names for output channel `o` (and the
bias entry, and per-channel quantization parameters) changes exactly output channel `o` on the
declared activation axis; perturbing data input channel `c` changes exactly the output channels
`in_to_out_channels` says; zeroing the weight slice named for input channel `c` makes the output
blind to that input channel. For every pass-through entry: perturbing one index of an input axis
changes exactly that index of the declared output axis, and where the table says None, ORT shows
the index is not carried through. Ops of the `ai.lepton` domain run after `lower-fused-to-standard`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import lepton_ir
from lepton_ir import DType, Graph, Model, Node, Shape, TensorType, Value
from lepton_ir.opsem import (PASS_THROUGH, WEIGHT_OPS, expand_out_channels, in_channel_index, in_to_out_channels,
                             out_channel_index, passes_channel_through, weight_info)
from lepton_passes import get_pass

OPSET = 21
F, U8, I8, I32, B = np.float32, np.uint8, np.int8, np.int32, np.bool_


class OneOp:
    """A one-node model whose operands are graph inputs (fed to ORT) or constants."""

    def __init__(self, op: str, operands: list[Any], attrs: dict | None = None, domain: str = "",
                 positive: tuple[int, ...] = ()) -> None:
        rng = np.random.default_rng(len(op) * 7 + len(operands))
        g = Graph("g")
        self.feeds: dict[str, np.ndarray] = {}
        vals: list[Value | None] = []
        for i, spec in enumerate(operands):
            if spec is None:
                vals.append(None)
            elif isinstance(spec, np.ndarray):  # constant operand (pads, scales, ...)
                vals.append(g.constant(spec, name=f"c{i}"))
            else:
                shape, dt = spec
                a = _random(rng, shape, dt, i in positive)
                v = Value(f"in{i}", TensorType(DType.from_numpy(np.dtype(dt)), Shape(list(shape))))
                g.add_input(v)
                self.feeds[v.name] = a
                vals.append(v)
        self.node = Node(op, vals, attrs or {}, domain=domain)
        self.node.outputs[0].name = "y"
        g.append(self.node)
        g.outputs.append(self.node.outputs[0])
        self.model = Model(g, opset_imports={"": OPSET, "ai.lepton": 1})
        lepton_ir.infer_types(self.model)
        runnable = self.model
        if domain:
            # Lower a copy: the table is queried on the fused node itself.
            runnable = lepton_ir.from_text(lepton_ir.to_text(self.model, max_inline_elements=None))
            get_pass("lower-fused-to-standard")().run(runnable)
            lepton_ir.infer_types(runnable)
        self.sess = ort.InferenceSession(lepton_ir.to_onnx(runnable).SerializeToString(),
                                         providers=["CPUExecutionProvider"])
        self.y0 = self.run({})

    def run(self, changes: dict[int, np.ndarray]) -> np.ndarray:
        feeds = dict(self.feeds)
        for i, a in changes.items():
            feeds[f"in{i}"] = a
        return self.sess.run(None, feeds)[0]

    def operand(self, i: int) -> np.ndarray:
        return self.feeds[f"in{i}"]

    def changed(self, y: np.ndarray, axis: int) -> set[int]:
        """Indices along `axis` of the output where `y` differs from the unperturbed output."""
        diff = ~np.isclose(y, self.y0, equal_nan=True) if y.dtype.kind == "f" else y != self.y0
        d = np.moveaxis(diff, axis, 0).reshape(diff.shape[axis], -1)
        return {int(i) for i in np.nonzero(d.any(axis=1))[0]}


def _random(rng: np.random.Generator, shape: tuple, dt: Any, positive: bool) -> np.ndarray:
    if dt == F:
        mag = rng.uniform(0.5, 1.5, shape)
        return (mag if positive else mag * rng.choice([-1.0, 1.0], shape)).astype(F)
    if dt == U8:
        return rng.integers(118, 139, shape).astype(U8)
    if dt == I8:
        return rng.integers(-20, 21, shape).astype(I8)
    if dt == I32:
        return rng.integers(-50, 51, shape).astype(I32)
    return rng.integers(0, 2, shape).astype(B)


def _perturbed(a: np.ndarray, index: tuple, negate: bool = False) -> np.ndarray:
    """`a` with the entries at `index` visibly changed (bools flipped, ints moved in range;
    `negate` for comparisons, whose outputs a shift of all entries may leave as they were)."""
    a = a.copy()
    if negate:
        a[index] = -10 * a[index]
    elif a.dtype == B:
        a[index] = ~a[index]
    elif a.dtype == U8:
        a[index] = a[index] - 60
    elif a.dtype.kind in "iu":
        a[index] = a[index] + 40
    else:
        a[index] = a[index] - 3.0
    return a


def _along(a: np.ndarray, axis: int, c: int) -> tuple:
    idx: list[Any] = [slice(None)] * a.ndim
    idx[axis] = c
    return tuple(idx)


# --------------------------------------------------------------------------------------------------
# Weight ops
# --------------------------------------------------------------------------------------------------

WEIGHT_CASES: dict[str, tuple] = {
    "conv": ("Conv", [((1, 4, 5, 5), F), ((6, 4, 3, 3), F), ((6,), F)], {}),
    "conv-1d": ("Conv", [((1, 4, 7), F), ((5, 4, 3), F), ((5,), F)], {}),
    "conv-grouped": ("Conv", [((1, 4, 5, 5), F), ((6, 2, 3, 3), F), ((6,), F)], {"group": 2}),
    "conv-depthwise-x2": ("Conv", [((1, 3, 5, 5), F), ((6, 1, 3, 3), F), ((6,), F)], {"group": 3}),
    "conv-transpose": ("ConvTranspose", [((1, 4, 3, 3), F), ((4, 5, 2, 2), F), ((5,), F)], {}),
    "conv-transpose-grouped": ("ConvTranspose", [((1, 4, 3, 3), F), ((4, 3, 2, 2), F), ((6,), F)], {"group": 2}),
    "gemm": ("Gemm", [((3, 4), F), ((4, 5), F), ((5,), F)], {}),
    "gemm-transB": ("Gemm", [((3, 4), F), ((5, 4), F), ((5,), F)], {"transB": 1}),
    "gemm-transA": ("Gemm", [((4, 3), F), ((4, 5), F), ((5,), F)], {"transA": 1}),
    "matmul": ("MatMul", [((3, 4), F), ((4, 5), F)], {}),
    "matmul-rank3": ("MatMul", [((2, 3, 4), F), ((4, 5), F)], {}),
    "fused-conv": ("FusedConv", [((1, 4, 5, 5), F), ((6, 2, 3, 3), F), ((6,), F)],
                   {"group": 2, "activation": "Tanh", "activation_params": []}),
    "fused-gemm": ("FusedGemm", [((3, 4), F), ((5, 4), F), ((5,), F)],
                   {"transB": 1, "activation": "LeakyRelu", "activation_params": [0.1]}),
    "fused-matmul": ("FusedMatMul", [((2, 3, 4), F), ((5, 4), F)], {"transB": 1, "alpha": 0.5}),
    "conv-integer": ("ConvInteger", [((1, 4, 5, 5), U8), ((6, 4, 3, 3), I8), np.array(128, U8)], {}),
    "matmul-integer": ("MatMulInteger", [((3, 4), U8), ((4, 5), I8), np.array(128, U8), ((5,), I8)], {}),
    "qlinear-conv": ("QLinearConv", [((1, 4, 5, 5), U8), np.array(0.1, F), np.array(128, U8), ((6, 4, 3, 3), I8),
                                     ((6,), F), np.zeros(6, I8), np.array(0.2, F), np.array(128, U8), ((6,), I32)], {}),
    "qlinear-matmul": ("QLinearMatMul", [((3, 4), U8), np.array(0.1, F), np.array(128, U8), ((4, 5), I8),
                                         ((5,), F), np.zeros(5, I8), np.array(0.05, F), np.array(128, U8)], {}),
}
_LEPTON_OPS = {"FusedConv", "FusedGemm", "FusedMatMul"}


@pytest.fixture(scope="module", params=sorted(WEIGHT_CASES))
def weight_case(request) -> OneOp:
    op, operands, attrs = WEIGHT_CASES[request.param]
    # QLinear weight scales must be positive.
    pos = (4,) if op.startswith("QLinear") else ()
    return OneOp(op, operands, attrs, domain="ai.lepton" if op in _LEPTON_OPS else "", positive=pos)


def test_every_weight_entry_has_a_case():
    covered = {(("ai.lepton" if op in _LEPTON_OPS else ""), op) for op, _, _ in WEIGHT_CASES.values()}
    assert {k for k in WEIGHT_OPS if k[0] != "ai.onnx"} == covered


def test_output_channel_slices_bias_and_per_channel_params(weight_case: OneOp):
    t = weight_case
    info = weight_info(t.node)
    assert info is not None
    w = t.operand(info.weight)
    y_axis = info.act_axis
    assert 0 <= y_axis < t.y0.ndim
    cout = info.out_channels(w.shape)
    assert t.y0.shape[y_axis] == cout
    per_channel = [i for i in ((info.bias,) if info.bias is not None else ()) + info.out_params
                   if f"in{i}" in t.feeds]
    for o in range(cout):
        y = t.run({info.weight: _perturbed(w, out_channel_index(info, w.shape, o))})
        assert t.changed(y, y_axis) == {o}, f"weight slice of output channel {o}"
        for i in per_channel:
            y = t.run({i: _perturbed(t.operand(i), (o,))})
            assert t.changed(y, y_axis) == {o}, f"input {i} entry {o}"


def test_input_channels_reach_the_declared_outputs(weight_case: OneOp):
    t = weight_case
    info = weight_info(t.node)
    w, x = t.operand(info.weight), t.operand(info.data)
    assert 0 <= info.data_axis < x.ndim
    cin = info.in_channels(w.shape)
    assert x.shape[info.data_axis] == cin
    for c in range(cin):
        xp = _perturbed(x, _along(x, info.data_axis, c))
        assert t.changed(t.run({info.data: xp}), info.act_axis) == set(in_to_out_channels(info, w.shape, c))
        # With the weight entries named for channel c zeroed, channel c is not read at all.
        w0 = w.copy()
        # MatMulInteger reads (B - b_zp): "zero" is the column's zero point there.
        w0[in_channel_index(info, w.shape, c)] = t.feeds.get("in3", 0) if t.node.op_type == "MatMulInteger" else 0
        t0 = t.run({info.weight: w0})
        assert np.array_equal(t.run({info.weight: w0, info.data: xp}), t0), f"input channel {c}"


def test_grouped_conv_rules():
    dw = weight_info(OneOp(*WEIGHT_CASES["conv-depthwise-x2"]).node)
    assert dw.group == 3 and dw.is_depthwise((6, 1, 3, 3))
    assert [list(in_to_out_channels(dw, (6, 1, 3, 3), c)) for c in range(3)] == [[0, 1], [2, 3], [4, 5]]
    grouped = weight_info(OneOp(*WEIGHT_CASES["conv-grouped"]).node)
    assert not grouped.is_depthwise((6, 2, 3, 3))
    ct = weight_info(OneOp(*WEIGHT_CASES["conv-transpose-grouped"]).node)
    assert (ct.out_axis, ct.in_axis, ct.out_channels((4, 3, 2, 2)), ct.in_channels((4, 3, 2, 2))) == (1, 0, 6, 4)


def test_expand_out_channels_scales_exactly_one_channel(weight_case: OneOp):
    """Scaling W by expand(e_o) (one-hot) is the same as keeping only output channel o's slice."""
    t = weight_case
    info = weight_info(t.node)
    w = t.operand(info.weight).astype(F)  # the layout, not the dtype, is under test
    for o in range(info.out_channels(w.shape)):
        onehot = np.zeros(info.out_channels(w.shape), F)
        onehot[o] = 1
        want = np.zeros_like(w)
        want[out_channel_index(info, w.shape, o)] = w[out_channel_index(info, w.shape, o)]
        assert np.array_equal(w * expand_out_channels(info, w.shape, onehot), want)


def test_ops_without_weights():
    assert weight_info(OneOp("Relu", [((1, 3, 4, 4), F)]).node) is None


# --------------------------------------------------------------------------------------------------
# Pass-through ops
# --------------------------------------------------------------------------------------------------

X4 = ((1, 3, 4, 4), F)
C3 = ((3, 1, 1), F)
V3 = ((3,), F)
# name -> (op, operands, attrs, {(input, axis): expected output axis or None}, positive inputs, domain)
_UNARY_ATTRS = {"Cast": {"to": int(DType.FLOAT16)}}
PASS_CASES: dict[str, tuple] = {
    **{op.lower(): (op, [X4], _UNARY_ATTRS.get(op, {}), {(0, 1): 1, (0, 3): 3}, (), "")
       for d, op in PASS_THROUGH if d == "" and PASS_THROUGH[(d, op)].__name__ == "_first_only"},
    **{op.lower(): (op, [X4, C3], {"fmod": 1} if op == "Mod" else {}, {(0, 1): 1, (1, 0): 1, (1, 1): None}, (), "")
       for op in ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Greater", "Less", "GreaterOrEqual",
                  "LessOrEqual", "Mod")},
    **{op.lower(): (op, [((1, 3, 4, 4), B), ((3, 1, 1), B)], {}, {(0, 1): 1, (1, 0): 1, (1, 2): None}, (), "")
       for op in ("Xor", "Equal")},
    "sum": ("Sum", [X4, C3, X4], {}, {(0, 2): 2, (1, 0): 1, (2, 1): 1}, (), ""),
    "mean": ("Mean", [X4, ((4,), F)], {}, {(0, 3): 3, (1, 0): 3, (0, 1): 1}, (), ""),
    "where": ("Where", [((1, 3, 4, 4), B), C3, X4], {}, {(0, 1): 1, (1, 0): 1, (2, 1): 1, (1, 2): None}, (), ""),
    "batchnorm": ("BatchNormalization", [((2, 3, 4, 4), F), V3, V3, V3, V3], {},
                  {(0, 0): 0, (0, 1): 1, (0, 2): 2, (1, 0): 1, (2, 0): 1, (3, 0): 1, (4, 0): 1}, (4,), ""),
    "maxpool": ("MaxPool", [X4], {"kernel_shape": [2, 2], "strides": [2, 2]}, {(0, 1): 1, (0, 2): None}, (), ""),
    "averagepool": ("AveragePool", [X4], {"kernel_shape": [2, 2]}, {(0, 1): 1, (0, 3): None}, (), ""),
    "lppool": ("LpPool", [X4], {"kernel_shape": [2, 2], "p": 2}, {(0, 1): 1, (0, 2): None}, (), ""),
    "globalaveragepool": ("GlobalAveragePool", [((2, 3, 4, 4), F)], {}, {(0, 0): 0, (0, 1): 1, (0, 2): None}, (), ""),
    "globalmaxpool": ("GlobalMaxPool", [X4], {}, {(0, 1): 1, (0, 3): None}, (), ""),
    "globallppool": ("GlobalLpPool", [X4], {}, {(0, 1): 1, (0, 2): None}, (), ""),
    "pad-spatial": ("Pad", [X4, np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64)], {}, {(0, 1): 1, (0, 2): None}, (), ""),
    "pad-channels": ("Pad", [X4, np.array([0, 1, 0, 0, 0, 0, 0, 0], np.int64)], {}, {(0, 1): None, (0, 3): 3}, (), ""),
    "pad-axes": ("Pad", [X4, np.array([1, 0, 1, 0], np.int64), None, np.array([2, 3], np.int64)], {},
                 {(0, 1): 1, (0, 2): None, (0, 3): 3}, (), ""),
    "resize": ("Resize", [X4, None, np.array([1, 1, 2, 2], F)], {}, {(0, 1): 1, (0, 2): None}, (), ""),
    "transpose": ("Transpose", [X4], {"perm": [0, 2, 3, 1]}, {(0, 1): 3, (0, 2): 1, (0, 3): 2}, (), ""),
    "quantize": ("QuantizeLinear", [X4, V3, ((3,), U8)], {"axis": 1}, {(0, 1): 1, (1, 0): 1, (2, 0): 1}, (1,), ""),
    "dequantize": ("DequantizeLinear", [((1, 3, 4, 4), U8), V3, ((3,), U8)], {"axis": 1},
                   {(0, 1): 1, (1, 0): 1, (2, 0): 1}, (1,), ""),
    "lepton-gelu": ("Gelu", [X4], {"approximate": "none"}, {(0, 1): 1}, (), "ai.lepton"),
    "lepton-biasgelu": ("BiasGelu", [X4, ((4,), F)], {"approximate": "tanh"}, {(0, 1): 1, (1, 0): 3}, (), "ai.lepton"),
}


def test_every_pass_through_entry_has_a_case():
    covered = {(dom, op) for op, _, _, _, _, dom in PASS_CASES.values()}
    assert {k for k in PASS_THROUGH if k[0] != "ai.onnx"} == covered


@pytest.mark.parametrize("name", sorted(PASS_CASES))
def test_pass_through_against_ort(name: str):
    op, operands, attrs, expect, pos, domain = PASS_CASES[name]
    t = OneOp(op, operands, attrs, domain=domain, positive=pos)
    neg = op in ("Greater", "Less", "GreaterOrEqual", "LessOrEqual")
    for (i, axis), want in expect.items():
        got = passes_channel_through(t.node, i, axis)
        assert got == want, f"input {i} axis {axis}"
        a = t.operand(i)
        if want is not None:
            for c in range(a.shape[axis]):
                assert t.changed(t.run({i: _perturbed(a, _along(a, axis, c), neg)}), want) == {c}, f"index {c}"
        else:
            # Not carried: on the output axis aligned with it (numpy broadcasting), some index of
            # the input reaches output indices other than itself.
            oaxis = axis + t.y0.ndim - a.ndim
            seen = [t.changed(t.run({i: _perturbed(a, _along(a, axis, c), neg)}), oaxis) for c in range(a.shape[axis])]
            assert any(s != {c} for c, s in enumerate(seen)), seen


def test_negative_axes_and_unknown_ops():
    t = OneOp("Relu", [X4])
    assert passes_channel_through(t.node, 0, -3) == 1
    assert passes_channel_through(t.node, 0, 4) is None
    assert passes_channel_through(OneOp("Softmax", [X4], {"axis": 1}).node, 0, 1) is None
