"""Op semantics for channel bookkeeping: where an op's weight, bias and channels live.

Two tables, both plain dicts built by comprehension from a few op families:

* `WEIGHT_OPS`: ops that contract a weight over input channels into output channels (Conv,
  ConvTranspose, Gemm, MatMul, Lepton's fused forms, the quantized forms). `weight_info(node)`
  resolves an entry against a node's attributes (group, transB, ...) into a `WeightInfo`.
* `PASS_THROUGH`: ops whose output carries an input axis index for index (element-wise ops with
  broadcasting, BatchNormalization and its per-channel parameters, pooling, Resize, Pad where the
  axis is not padded, Transpose, Q/DQ, ...). `passes_channel_through(node, i, axis)` says which
  output axis carries axis `axis` of input `i`, or None when the op mixes or resizes that axis.

The shape of this knowledge follows Torch-Pruning's `dependency/` module: a pruning pass groups
(value, axis) pairs that must lose the same indices. `WeightInfo` gives the edges across a
weight op (output channels: W's `out_axis`, the bias, the output's `act_axis`; input channels:
W's `in_axis` and the data input's `data_axis`, related through `group`), `PASS_THROUGH` the
identity edges, and `in_to_out_channels` / `out_channel_index` / `in_channel_index` /
`expand_out_channels` the index mappings for grouped and transposed layouts.

Axes are non-negative where the rank is known (from the weight's constant or type); otherwise a
MatMul-style "last axis" stays negative, numpy style.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .ir import Node, Value

# --------------------------------------------------------------------------------------------------
# Weight ops
# --------------------------------------------------------------------------------------------------

#: Layout families. conv: W (Cout, Cin/group, k...); conv_transpose: W (Cin, Cout/group, k...);
#: gemm: B (K, N) or (N, K) with transB; matmul: B (..., K, N), or (..., N, K) with transB.
KINDS = ("conv", "conv_transpose", "gemm", "matmul")


@dataclass(frozen=True)
class _Entry:
    """One row of WEIGHT_OPS: input positions and the layout family (attributes resolve the rest)."""

    kind: str
    data: int                       # the activation input
    weight: int
    bias: int | None = None         # 1-D over output channels
    out_params: tuple[int, ...] = ()  # other inputs that are per output channel when 1-D (scales, zero points)
    in_params: tuple[int, ...] = ()   # inputs that are per input channel when 1-D (none today; kept for symmetry)


_STD = ("", "ai.onnx")
_LEPTON = "ai.lepton"

#: (domain, op_type) -> entry. QLinearConv: (x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp, B);
#: ConvInteger: (x, w, x_zp, w_zp); MatMulInteger: (A, B, a_zp, b_zp);
#: QLinearMatMul: (a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp).
WEIGHT_OPS: dict[tuple[str, str], _Entry] = {
    **{(d, op): e for d in _STD for op, e in {
        "Conv": _Entry("conv", 0, 1, 2),
        "ConvTranspose": _Entry("conv_transpose", 0, 1, 2),
        "Gemm": _Entry("gemm", 0, 1, 2),
        "MatMul": _Entry("matmul", 0, 1),
        "QLinearConv": _Entry("conv", 0, 3, 8, out_params=(4, 5)),
        "ConvInteger": _Entry("conv", 0, 1, out_params=(3,)),
        "MatMulInteger": _Entry("matmul", 0, 1, out_params=(3,)),
        "QLinearMatMul": _Entry("matmul", 0, 3, out_params=(4, 5)),
    }.items()},
    (_LEPTON, "FusedConv"): _Entry("conv", 0, 1, 2),
    (_LEPTON, "FusedGemm"): _Entry("gemm", 0, 1, 2),
    (_LEPTON, "FusedMatMul"): _Entry("matmul", 0, 1),
}


@dataclass(frozen=True)
class WeightInfo:
    """Where the channels of one weight op live.

    `out_axis` / `in_axis`: axes of the weight indexing output / input channels. For grouped
    convs they index channels *within a group* on one of the two axes (Conv: `in_axis` holds
    Cin/group; ConvTranspose: `out_axis` holds Cout/group): use `out_channel_index`,
    `in_channel_index` and `in_to_out_channels` rather than indexing directly.
    `act_axis`: the output's channel axis; `data_axis`: the data input's channel axis.
    `bias`: input index of the 1-D per-output-channel bias; `out_params`: other inputs that are
    per output channel when 1-D (quantization scales and zero points).
    """

    kind: str
    data: int
    weight: int
    out_axis: int
    in_axis: int
    bias: int | None
    group: int
    act_axis: int
    data_axis: int
    out_params: tuple[int, ...] = ()

    def out_channels(self, w_shape: Sequence[int]) -> int:
        """Number of output channels for a weight of shape `w_shape`."""
        n = int(w_shape[self.out_axis])
        return n * self.group if self.kind == "conv_transpose" else n

    def in_channels(self, w_shape: Sequence[int]) -> int:
        """Number of input channels the weight reads."""
        n = int(w_shape[self.in_axis])
        return n * self.group if self.kind == "conv" else n

    def is_depthwise(self, w_shape: Sequence[int]) -> bool:
        """group == Cin == Cout / multiplier: every input channel feeds its own output channels."""
        cin, cout = self.in_channels(w_shape), self.out_channels(w_shape)
        return self.group > 1 and self.group == cin and cout % cin == 0


def _rank_of(v: Value | None) -> int | None:
    if v is None:
        return None
    if v.const is not None:
        return len(v.const.shape)
    s = v.shape
    return len(s) if s is not None else None


def weight_info(node: Node) -> WeightInfo | None:
    """The channel layout of `node`'s weight, or None if the op has no weight in WEIGHT_OPS."""
    e = WEIGHT_OPS.get((node.domain, node.op_type))
    if e is None or len(node.inputs) <= e.weight:
        return None
    bias = e.bias if e.bias is not None and len(node.inputs) > e.bias and node.inputs[e.bias] is not None else None
    group = int(node.attr("group", 1) or 1) if e.kind in ("conv", "conv_transpose") else 1
    if e.kind == "conv":
        out_axis, in_axis, act, data = 0, 1, 1, 1
    elif e.kind == "conv_transpose":
        out_axis, in_axis, act, data = 1, 0, 1, 1
    elif e.kind == "gemm":
        tb = bool(node.attr("transB", 0))
        out_axis, in_axis = (0, 1) if tb else (1, 0)
        act, data = 1, (0 if node.attr("transA", 0) else 1)
    else:  # matmul: contract the second-to-last axis of B with the last of A
        tb, ta = bool(node.attr("transB", 0)), bool(node.attr("transA", 0))  # FusedMatMul only
        out_axis, in_axis = (-2, -1) if tb else (-1, -2)
        act, data = -1, (-2 if ta else -1)
        r = _rank_of(node.inputs[e.weight])
        if r is not None and r >= 2:
            out_axis, in_axis = out_axis % r, in_axis % r
        ra = _rank_of(node.inputs[e.data])
        if ra is not None and ra >= 2:
            data %= ra
        ro = _rank_of(node.outputs[0]) or (max(ra, r) if ra is not None and r is not None else None)
        if ro is not None and ro >= 1:
            act %= ro
    return WeightInfo(e.kind, e.data, e.weight, out_axis, in_axis, bias, group, act, data, e.out_params)


def out_channel_index(info: WeightInfo, w_shape: Sequence[int], o: int) -> tuple:
    """Index of the weight entries that produce output channel `o` (for W[...] = ...)."""
    idx: list = [slice(None)] * len(w_shape)
    if info.kind == "conv_transpose":
        cout_g, cin_g = int(w_shape[1]), int(w_shape[0]) // info.group
        g = o // cout_g
        idx[0], idx[1] = slice(g * cin_g, (g + 1) * cin_g), o % cout_g
    else:
        idx[info.out_axis] = o
    return tuple(idx)


def in_channel_index(info: WeightInfo, w_shape: Sequence[int], c: int) -> tuple:
    """Index of the weight entries that read input channel `c`."""
    idx: list = [slice(None)] * len(w_shape)
    if info.kind == "conv":
        cin_g, cout_g = int(w_shape[1]), int(w_shape[0]) // info.group
        g = c // cin_g
        idx[0], idx[1] = slice(g * cout_g, (g + 1) * cout_g), c % cin_g
    else:
        idx[info.in_axis] = c
    return tuple(idx)


def in_to_out_channels(info: WeightInfo, w_shape: Sequence[int], c: int) -> range:
    """The output channels input channel `c` contributes to: all of them unless grouped, else
    its group's block of Cout/group (for depthwise: the `multiplier` channels c*m .. c*m+m-1)."""
    cin, cout = info.in_channels(w_shape), info.out_channels(w_shape)
    if info.group == 1:
        return range(cout)
    g = c // (cin // info.group)
    per = cout // info.group
    return range(g * per, (g + 1) * per)


def expand_out_channels(info: WeightInfo, w_shape: Sequence[int], vec: np.ndarray) -> np.ndarray:
    """A per-output-channel vector laid out over the weight: `W * expand(...)` scales each output
    channel's weights by its entry (for ConvTranspose with groups the channel is split over axes 0
    and 1, so this is a reshape, not a plain broadcast)."""
    vec = np.asarray(vec)
    nd = len(w_shape)
    if info.kind == "conv_transpose":
        g = info.group
        cin, cout_g = int(w_shape[0]), int(w_shape[1])
        v = vec.reshape((g, 1, cout_g) + (1,) * (nd - 2))
        full = np.broadcast_to(v, (g, cin // g, cout_g) + tuple(int(d) for d in w_shape[2:]))
        return full.reshape(tuple(int(d) for d in w_shape))
    shape = [1] * nd
    shape[info.out_axis] = vec.size
    return vec.reshape(shape)


# --------------------------------------------------------------------------------------------------
# Pass-through ops
# --------------------------------------------------------------------------------------------------

#: Rule signature: (node, input index, input axis (non-negative), input rank, output rank) -> output axis.
Rule = Callable[[Node, int, int, int, int], "int | None"]

UNARY = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish",
         "Softplus", "Softsign", "Gelu", "Mish", "ThresholdedRelu", "Abs", "Neg", "Exp", "Log", "Sqrt",
         "Reciprocal", "Floor", "Ceil", "Round", "Erf", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast",
         "Clip")
BROADCAST = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal",
             "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Xor", "Mod")
POOL = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")


def _first_only(n: Node, i: int, a: int, r: int, ro: int) -> int | None:
    # Clip's min/max, Dropout's ratio/training_mode are scalars, not data.
    return a if i == 0 and r == ro else None


def _broadcast(n: Node, i: int, a: int, r: int, ro: int) -> int | None:
    # Numpy broadcasting aligns trailing axes. A dim of 1 against a larger output dim is broadcast:
    # its single index feeds every output index, so it does not carry channels through.
    oa = a + (ro - r)
    v, out = n.inputs[i], n.outputs[0]
    shape = v.const.shape if v is not None and v.const is not None else (v.shape if v is not None else None)
    d_in = shape[a] if shape is not None else None
    d_out = out.shape[oa] if out.shape is not None else None
    if d_in == 1 and d_out != 1:
        return None
    return oa


def _batch_norm(n: Node, i: int, a: int, r: int, ro: int) -> int | None:
    if i == 0:
        return a  # per-channel affine on axis 1, element-wise on every axis
    return 1 if i <= 4 and r == 1 else None  # scale, B, mean, var: 1-D over axis 1


def _pool(n: Node, i: int, a: int, r: int, ro: int) -> int | None:
    return a if i == 0 and a < 2 else None  # batch and channel kept; spatial axes resized/mixed


def _const_ints(v: Value | None) -> list[int] | None:
    if v is None or v.const is None:
        return None
    return [int(x) for x in np.asarray(v.const.numpy()).reshape(-1)]


def _pad(n: Node, i: int, a: int, r: int, ro: int) -> int | None:
    if i != 0:
        return None
    pads = n.attr("pads") if "pads" in n.attrs else _const_ints(n.inputs[1] if len(n.inputs) > 1 else None)
    if pads is None:
        return None
    axes = _const_ints(n.inputs[3]) if len(n.inputs) > 3 else None
    axes = [x % r for x in axes] if axes is not None else list(range(r))
    if a not in axes:
        return a
    k = axes.index(a)
    return a if pads[k] == 0 and pads[k + len(axes)] == 0 else None


def _resize(n: Node, i: int, a: int, r: int, ro: int) -> int | None:
    if i != 0:
        return None
    v, out = n.inputs[0], n.outputs[0]
    d_in = v.shape[a] if v.shape is not None else None
    d_out = out.shape[a] if out.shape is not None and len(out.shape) == r else None
    if isinstance(d_in, int) and d_in == d_out:
        return a
    # Without static types: the constant scales/sizes say whether the axis keeps its extent.
    scales = n.inputs[2] if len(n.inputs) > 2 else (n.inputs[1] if len(n.inputs) == 2 else None)
    if scales is not None and scales.const is not None and scales.const.numpy().size == r and "axes" not in n.attrs:
        return a if float(np.asarray(scales.const.numpy()).reshape(-1)[a]) == 1.0 else None
    return None


def _transpose(n: Node, i: int, a: int, r: int, ro: int) -> int | None:
    perm = n.attr("perm")
    perm = list(range(r))[::-1] if perm is None else [int(p) for p in perm]
    return perm.index(a)


def _quant(n: Node, i: int, a: int, r: int, ro: int) -> int | None:
    if i == 0:
        return a
    # A 1-D scale / zero point is per-axis along `axis` (default 1) of the data.
    return int(n.attr("axis", 1)) % ro if r == 1 and not n.attr("block_size", 0) else None


#: (domain, op_type) -> rule.
PASS_THROUGH: dict[tuple[str, str], Rule] = {
    **{(d, op): _first_only for d in _STD for op in UNARY},
    **{(d, op): _broadcast for d in _STD for op in BROADCAST},
    **{(d, op): _pool for d in _STD for op in POOL},
    **{(d, op): r for d in _STD for op, r in {
        "BatchNormalization": _batch_norm, "Pad": _pad, "Resize": _resize, "Transpose": _transpose,
        "QuantizeLinear": _quant, "DequantizeLinear": _quant}.items()},
    (_LEPTON, "Gelu"): _first_only,
    (_LEPTON, "BiasGelu"): _broadcast,  # bias is 1-D over the last axis
}


def passes_channel_through(node: Node, input_index: int, axis: int) -> int | None:
    """The axis of `node`'s output 0 whose index equals the index on `axis` of input
    `input_index`, or None when the op mixes, resizes or broadcasts that axis (or is unknown).

    `axis` may be negative (counted from the input's end). Needs the input's rank (its constant or
    type); ranks unknown give None.
    """
    rule = PASS_THROUGH.get((node.domain, node.op_type))
    if rule is None or input_index >= len(node.inputs):
        return None
    v = node.inputs[input_index]
    r = _rank_of(v)
    if r is None or not -r <= axis < r:
        return None
    ro = _rank_of(node.outputs[0])
    if ro is None:
        ro = max((x for x in map(_rank_of, node.inputs) if x is not None), default=r)
    return rule(node, input_index, axis % r, r, ro)


__all__ = ["WeightInfo", "WEIGHT_OPS", "PASS_THROUGH", "weight_info", "passes_channel_through",
           "out_channel_index", "in_channel_index", "in_to_out_channels", "expand_out_channels"]
