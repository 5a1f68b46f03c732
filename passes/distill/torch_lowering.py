"""Lowering of a `lepton_ir.Model` into a `torch.nn.Module` (for training with PyTorch).

`TorchModule(model)` evaluates the model's main graph node by node with torch ops, eagerly, in
graph order. The float initializers that play the role of weights - inputs 1 and 2 of Conv,
ConvTranspose and Gemm, the constant operand of MatMul, BatchNormalization's scale and bias,
LayerNormalization's scale and bias, and the non-scalar constant operand of Mul/Add (per-channel
affine constants) - become `nn.Parameter`s; every other constant (BatchNorm running statistics,
shape constants, embeddings, scalars, Constant nodes) is a buffer. Nodes that read only buffers
are evaluated once at construction (constant folding), so the forward pass does not redo shape
arithmetic on constants.

After training, `write_back()` puts the parameters back into the IR with
`lepton_ir.replace_constants` (one re-propagation for all of them), in each initializer's dtype.

Semantics follow the ONNX operator specs (checked against ONNX Runtime in tests/distill);
BatchNormalization is lowered in its inference form (running statistics are buffers and are not
updated by training). An op without a lowering raises `LoweringError` naming it, at construction.

This module imports torch at import time; `lepton_passes.distill` imports it only inside the
pass's `run`, so the pass registers without torch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import lepton_ir
from lepton_ir import DType, Model, Node, Value

from ..base import PassError


class LoweringError(PassError):
    """The model holds something the torch lowering cannot evaluate (one line)."""


# ---------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------
_TORCH_DTYPES: dict[int, torch.dtype] = {
    DType.FLOAT: torch.float32, DType.DOUBLE: torch.float64, DType.FLOAT16: torch.float16,
    DType.BFLOAT16: torch.bfloat16, DType.INT8: torch.int8, DType.UINT8: torch.uint8,
    DType.INT16: torch.int16, DType.INT32: torch.int32, DType.INT64: torch.int64, DType.BOOL: torch.bool,
    DType.UINT16: torch.uint16, DType.UINT32: torch.uint32, DType.UINT64: torch.uint64,
}


def torch_dtype(code: int) -> torch.dtype:
    try:
        return _TORCH_DTYPES[int(code)]
    except KeyError:
        raise LoweringError(f"torch lowering: element type {DType(int(code)).name} has no torch dtype") from None


def to_torch(a: Any) -> torch.Tensor:
    """A numpy array (or scalar) as a torch tensor (a copy; bfloat16 through float32)."""
    arr = np.asarray(a)
    if arr.dtype.kind in "US O".replace(" ", ""):
        raise LoweringError(f"torch lowering: {arr.dtype} constants have no torch tensor")
    if arr.dtype.name == "bfloat16":
        return torch.from_numpy(arr.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _s(node: Node, name: str, default: str) -> str:
    v = node.attr(name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _same_pads(in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int], upper: bool) -> list[int]:
    """ONNX auto_pad=SAME_UPPER/SAME_LOWER pads as [begin..., end...]."""
    begins, ends = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if upper else big)
        ends.append(big if upper else small)
    return begins + ends


def _window(node: Node, x: torch.Tensor, kernel: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """(strides, dilations, pads [begin..., end...]) of a Conv/pool node on input `x`."""
    nd = len(kernel)
    strides = list(node.attr("strides", None) or [1] * nd)
    dilations = list(node.attr("dilations", None) or [1] * nd)
    auto = _s(node, "auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(list(x.shape[2:]), kernel, strides, dilations, auto == "SAME_UPPER")
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    else:
        pads = list(node.attr("pads", None) or [0] * (2 * nd))
    return strides, dilations, pads


def _torch_pad_list(pads: Sequence[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] over the trailing n axes -> torch F.pad's (bn, en, ..., b1, e1)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [int(pads[i]), int(pads[i + n])]
    return out


def _sym(pads: Sequence[int]) -> list[int] | None:
    n = len(pads) // 2
    return list(pads[:n]) if list(pads[:n]) == list(pads[n:]) else None


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


# ---------------------------------------------------------------------------------------------
# op lowerings: fn(node, inputs, opset) -> list of outputs
# ---------------------------------------------------------------------------------------------
Lowering = Callable[[Node, list, int], list]
OPS: dict[str, Lowering] = {}


def _op(*names: str) -> Callable[[Lowering], Lowering]:
    def deco(fn: Lowering) -> Lowering:
        for n in names:
            OPS[n] = fn
        return fn
    return deco


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Lowering:
    return lambda node, ins, opset: [fn(ins[0])]


for _name, _fn in {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Sqrt": torch.sqrt,
    "Neg": torch.neg, "Reciprocal": torch.reciprocal, "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs,
    "Floor": torch.floor, "Ceil": torch.ceil, "Not": torch.logical_not, "Sin": torch.sin, "Cos": torch.cos,
    "Softplus": F.softplus, "Softsign": F.softsign, "Round": torch.round, "Sign": torch.sign,
    "Identity": lambda x: x, "HardSwish": F.hardswish, "Mish": F.mish,
}.items():
    OPS[_name] = _unary(_fn)


@_op("LeakyRelu")
def _leaky(node, ins, opset):
    return [F.leaky_relu(ins[0], float(node.attr("alpha", 0.01)))]


@_op("Elu")
def _elu(node, ins, opset):
    return [F.elu(ins[0], float(node.attr("alpha", 1.0)))]


@_op("Selu")
def _selu(node, ins, opset):
    a, g = float(node.attr("alpha", 1.67326319217681884765625)), float(node.attr("gamma", 1.05070102214813232421875))
    x = ins[0]
    return [g * torch.where(x > 0, x, a * (torch.exp(x) - 1))]


@_op("HardSigmoid")
def _hsig(node, ins, opset):
    a, b = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    return [torch.clamp(a * ins[0] + b, 0.0, 1.0)]


@_op("Clip")
def _clip(node, ins, opset):
    x = ins[0]
    if opset < 11:
        lo, hi = node.attr("min", None), node.attr("max", None)
    else:
        lo = ins[1] if len(ins) > 1 else None
        hi = ins[2] if len(ins) > 2 else None
    if lo is not None:
        x = torch.maximum(x, lo.to(x.dtype) if isinstance(lo, torch.Tensor) else torch.tensor(lo, dtype=x.dtype))
    if hi is not None:
        x = torch.minimum(x, hi.to(x.dtype) if isinstance(hi, torch.Tensor) else torch.tensor(hi, dtype=x.dtype))
    return [x]


@_op("Gelu")
def _gelu(node, ins, opset):
    return [F.gelu(ins[0], approximate=_s(node, "approximate", "none"))]


def _softmax_like(fn):
    def lower(node, ins, opset):
        x = ins[0]
        if opset >= 13:
            return [fn(x, _axis(int(node.attr("axis", -1)), x.dim()))]
        axis = _axis(int(node.attr("axis", 1)), x.dim())  # opset < 13: coerced to 2-D at axis
        shape = x.shape
        flat = x.reshape(int(np.prod(shape[:axis], dtype=np.int64)), -1)
        return [fn(flat, 1).reshape(shape)]
    return lower


OPS["Softmax"] = _softmax_like(torch.softmax)
OPS["LogSoftmax"] = _softmax_like(torch.log_softmax)


def _binary(fn):
    return lambda node, ins, opset: [fn(ins[0], ins[1])]


def _div(a, b):
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(a, b):
    if a.dtype.is_floating_point and b.dtype != a.dtype:
        b = b.to(a.dtype)
    out = torch.pow(a, b)
    return out.to(a.dtype)


for _name, _fn in {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div, "Pow": _pow,
    "Equal": torch.eq, "Greater": torch.gt, "Less": torch.lt, "GreaterOrEqual": torch.ge, "LessOrEqual": torch.le,
    "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}.items():
    OPS[_name] = _binary(_fn)


def _variadic(fn):
    def lower(node, ins, opset):
        out = ins[0]
        for t in ins[1:]:
            out = fn(out, t)
        return [out]
    return lower


OPS["Max"] = _variadic(torch.maximum)
OPS["Min"] = _variadic(torch.minimum)
OPS["Sum"] = _variadic(torch.add)


@_op("Mean")
def _mean(node, ins, opset):
    return [_variadic(torch.add)(node, ins, opset)[0] / len(ins)]


@_op("Where")
def _where(node, ins, opset):
    return [torch.where(ins[0].to(torch.bool), ins[1], ins[2])]


@_op("Conv")
def _conv(node, ins, opset):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    nd = w.dim() - 2
    if nd not in _CONV:
        raise LoweringError(f"torch lowering: {nd}-D Conv (node {node.name!r}) is not supported")
    strides, dilations, pads = _window(node, x, list(w.shape[2:]))
    sym = _sym(pads)
    if sym is None:
        x = F.pad(x, _torch_pad_list(pads))
        sym = [0] * nd
    return [_CONV[nd](x, w, b, stride=strides, padding=sym, dilation=dilations, groups=int(node.attr("group", 1)))]


@_op("ConvTranspose")
def _conv_transpose(node, ins, opset):
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    nd = w.dim() - 2
    if nd not in _CONVT:
        raise LoweringError(f"torch lowering: {nd}-D ConvTranspose (node {node.name!r}) is not supported")
    kernel = list(w.shape[2:])
    strides = list(node.attr("strides", None) or [1] * nd)
    dilations = list(node.attr("dilations", None) or [1] * nd)
    out_pad = list(node.attr("output_padding", None) or [0] * nd)
    out_shape = node.attr("output_shape", None)
    auto = _s(node, "auto_pad", "NOTSET")
    ins_sp = list(x.shape[2:])
    full = [(n - 1) * s + (k - 1) * d + 1 + op for n, s, k, d, op in zip(ins_sp, strides, kernel, dilations, out_pad)]
    if out_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(out_shape)[-nd:] if out_shape else [n * s for n, s in zip(ins_sp, strides)]
        total = [f - t for f, t in zip(full, target)]
        if auto == "SAME_UPPER":
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            pads = [t - t // 2 for t in total] + [t // 2 for t in total]
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    else:
        pads = list(node.attr("pads", None) or [0] * (2 * nd))
    y = _CONVT[nd](x, w, None, stride=strides, padding=0, dilation=dilations, groups=int(node.attr("group", 1)))
    # output_padding extends the end (bias only there); pads crop: one F.pad with both.
    crop = [-p for p in pads[:nd]] + [op - p for op, p in zip(out_pad, pads[nd:])]
    if any(crop):
        y = F.pad(y, _torch_pad_list(crop))
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * nd)
    return [y]


@_op("Gemm")
def _gemm(node, ins, opset):
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    if int(node.attr("transA", 0)):
        a = a.transpose(0, 1)
    if int(node.attr("transB", 0)):
        b = b.transpose(0, 1)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    y = a @ b
    if alpha != 1.0:
        y = alpha * y
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return [y]


@_op("MatMul")
def _matmul(node, ins, opset):
    return [torch.matmul(ins[0], ins[1])]


@_op("BatchNormalization")
def _bn(node, ins, opset):
    if int(node.attr("training_mode", 0)):
        raise LoweringError(f"torch lowering: BatchNormalization with training_mode=1 (node {node.name!r}) "
                            "is not supported")
    x, scale, bias, mean, var = ins[:5]
    eps = float(node.attr("epsilon", 1e-5))
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = torch.rsqrt(var.reshape(shape) + eps)
    return [(x - mean.reshape(shape)) * (inv * scale.reshape(shape)) + bias.reshape(shape)]


@_op("LayerNormalization")
def _layernorm(node, ins, opset):
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    axis = _axis(int(node.attr("axis", -1)), x.dim())
    eps = float(node.attr("epsilon", 1e-5))
    dims = list(range(axis, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    d = x - mean
    var = (d * d).mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(var + eps)
    y = d * inv * scale
    if bias is not None:
        y = y + bias
    return [y, mean, inv]


def _pool_common(node, x):
    kernel = list(node.attr("kernel_shape"))
    strides, dilations, pads = _window(node, x, kernel)
    return kernel, strides, dilations, pads


@_op("MaxPool")
def _maxpool(node, ins, opset):
    x = ins[0]
    kernel, strides, dilations, pads = _pool_common(node, x)
    nd = len(kernel)
    sym = _sym(pads)
    if sym is None or any(2 * p > k for p, k in zip(sym, kernel)):
        x = F.pad(x, _torch_pad_list(pads), value=-math.inf)
        sym = [0] * nd
    y = _MAXPOOL[nd](x, kernel, strides, sym, dilations, ceil_mode=bool(node.attr("ceil_mode", 0)))
    return [y, None]


@_op("AveragePool")
def _avgpool(node, ins, opset):
    x = ins[0]
    kernel, strides, dilations, pads = _pool_common(node, x)
    if any(d != 1 for d in dilations):
        raise LoweringError(f"torch lowering: AveragePool with dilations (node {node.name!r}) is not supported")
    nd = len(kernel)
    include = bool(node.attr("count_include_pad", 0))
    ceil = bool(node.attr("ceil_mode", 0))
    squeeze = nd == 1
    if squeeze:  # avg_pool1d has no divisor_override: pool 1-D as 2-D
        x = x.unsqueeze(-1)
        kernel, strides, pads = kernel + [1], strides + [1], [pads[0], 0, pads[1], 0]
        nd = 2
    pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
    xp = F.pad(x, _torch_pad_list(pads))
    total = pool(xp, kernel, strides, 0, ceil_mode=ceil, divisor_override=1)
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype)
    mask = F.pad(ones, _torch_pad_list(pads), value=1.0 if include else 0.0)
    count = pool(mask, kernel, strides, 0, ceil_mode=ceil, divisor_override=1)
    y = total / count
    return [y.squeeze(-1) if squeeze else y]


@_op("GlobalAveragePool")
def _gap(node, ins, opset):
    x = ins[0]
    return [x.mean(dim=list(range(2, x.dim())), keepdim=True)]


@_op("GlobalMaxPool")
def _gmp(node, ins, opset):
    x = ins[0]
    return [x.amax(dim=list(range(2, x.dim())), keepdim=True)]


@_op("Flatten")
def _flatten(node, ins, opset):
    x = ins[0]
    axis = _axis(int(node.attr("axis", 1)), x.dim())
    return [x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)]


@_op("Reshape")
def _reshape(node, ins, opset):
    x = ins[0]
    shape = _ints(ins[1]) if opset >= 5 else list(node.attr("shape"))
    if not int(node.attr("allowzero", 0)):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


@_op("Transpose")
def _transpose(node, ins, opset):
    x = ins[0]
    perm = node.attr("perm", None)
    perm = list(perm) if perm is not None else list(reversed(range(x.dim())))
    return [x.permute(perm)]


@_op("Concat")
def _concat(node, ins, opset):
    ts = [t for t in ins if t is not None]
    return [torch.cat(ts, dim=_axis(int(node.attr("axis")), ts[0].dim()))]


@_op("Split")
def _split(node, ins, opset):
    x = ins[0]
    axis = _axis(int(node.attr("axis", 0)), x.dim())
    n_out = len(node.outputs)
    sizes = _ints(ins[1]) if (opset >= 13 and len(ins) > 1 and ins[1] is not None) else node.attr("split", None)
    if not sizes:
        n = int(node.attr("num_outputs", n_out) or n_out)
        dim = x.shape[axis]
        chunk = -(-dim // n)
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    return list(torch.split(x, list(sizes), dim=axis))


def _axes_input(node, ins, opset, since):
    if opset >= since:
        return _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else None
    a = node.attr("axes", None)
    return list(a) if a is not None else None


@_op("Squeeze")
def _squeeze(node, ins, opset):
    x = ins[0]
    axes = _axes_input(node, ins, opset, 13)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = sorted({_axis(a, x.dim()) for a in axes}, reverse=True)
    for a in axes:
        x = x.squeeze(a)
    return [x]


@_op("Unsqueeze")
def _unsqueeze(node, ins, opset):
    x = ins[0]
    axes = _axes_input(node, ins, opset, 13)
    rank = x.dim() + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(a)
    return [x]


@_op("Slice")
def _slice(node, ins, opset):
    x = ins[0]
    if opset < 10:
        starts, ends = list(node.attr("starts")), list(node.attr("ends"))
        axes = node.attr("axes", None)
        steps = None
    else:
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax = _axis(ax, x.dim())
        dim = x.shape[ax]
        st = st + dim if st < 0 else st
        en = en + dim if en < 0 else en
        if sp > 0:
            st, en = min(max(st, 0), dim), min(max(en, 0), dim)
            idx = [slice(None)] * ax + [slice(st, en, sp)]
            x = x[tuple(idx)]
        else:
            st, en = min(max(st, 0), dim - 1), min(max(en, -1), dim - 1)
            x = x.index_select(ax, torch.arange(st, en, sp, dtype=torch.int64))
    return [x]


@_op("Gather")
def _gather(node, ins, opset):
    x, idx = ins[0], ins[1]
    axis = _axis(int(node.attr("axis", 0)), x.dim())
    idx = idx.to(torch.int64)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return [out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))]


@_op("GatherElements")
def _gather_elements(node, ins, opset):
    x, idx = ins[0], ins[1].to(torch.int64)
    axis = _axis(int(node.attr("axis", 0)), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return [torch.gather(x, axis, idx)]


@_op("Shape")
def _shape(node, ins, opset):
    dims = list(ins[0].shape)
    start, end = node.attr("start", None), node.attr("end", None)
    r = len(dims)
    s = 0 if start is None else max(0, min(r, _axis(int(start), r)))
    e = r if end is None else max(0, min(r, _axis(int(end), r)))
    return [torch.tensor(dims[s:e], dtype=torch.int64)]


@_op("Size")
def _size(node, ins, opset):
    return [torch.tensor(ins[0].numel(), dtype=torch.int64)]


@_op("Cast")
def _cast(node, ins, opset):
    return [ins[0].to(torch_dtype(int(node.attr("to"))))]


@_op("CastLike")
def _cast_like(node, ins, opset):
    return [ins[0].to(ins[1].dtype)]


@_op("Dropout")
def _dropout(node, ins, opset):
    x = ins[0]
    return [x, torch.ones(x.shape, dtype=torch.bool)]


def _reduce(fn, since_input: int):
    def lower(node, ins, opset):
        x = ins[0]
        keep = bool(node.attr("keepdims", 1))
        axes = _axes_input(node, ins, opset, since_input)
        if not axes:
            if int(node.attr("noop_with_empty_axes", 0)):
                return [x]
            axes = list(range(x.dim()))
        axes = sorted({_axis(a, x.dim()) for a in axes})
        if x.dim() == 0:
            return [x]
        return [fn(x, axes, keep)]
    return lower


def _prod(x, axes, keep):
    for a in sorted(axes, reverse=True):
        x = torch.prod(x, dim=a, keepdim=keep)
    return x


OPS["ReduceMean"] = _reduce(lambda x, a, k: x.mean(dim=a, keepdim=k), 18)
OPS["ReduceSum"] = _reduce(lambda x, a, k: x.sum(dim=a, keepdim=k), 13)
OPS["ReduceMax"] = _reduce(lambda x, a, k: x.amax(dim=a, keepdim=k), 18)
OPS["ReduceMin"] = _reduce(lambda x, a, k: x.amin(dim=a, keepdim=k), 18)
OPS["ReduceProd"] = _reduce(_prod, 18)
OPS["ReduceSumSquare"] = _reduce(lambda x, a, k: (x * x).sum(dim=a, keepdim=k), 18)
OPS["ReduceL2"] = _reduce(lambda x, a, k: torch.sqrt((x * x).sum(dim=a, keepdim=k)), 18)


@_op("Pad")
def _pad(node, ins, opset):
    x = ins[0]
    mode = _s(node, "mode", "constant")
    if opset >= 11:
        pads = _ints(ins[1])
        value = ins[2] if len(ins) > 2 and ins[2] is not None else None
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
    else:
        pads, value, axes = list(node.attr("pads")), node.attr("value", 0.0), None
    r = x.dim()
    if axes is not None:
        full = [0] * (2 * r)
        for i, a in enumerate(axes):
            a = _axis(a, r)
            full[a], full[a + r] = pads[i], pads[i + len(axes)]
        pads = full
    # torch pads the trailing axes: trim the leading unpadded ones from the list.
    lead = 0
    while lead < r and pads[lead] == 0 and pads[lead + r] == 0:
        lead += 1
    tail = pads[lead:r] + pads[r + lead:]
    if not tail:
        return [x]
    tp = _torch_pad_list(tail)
    if mode == "constant":
        v = 0.0 if value is None else (float(value.reshape(-1)[0]) if isinstance(value, torch.Tensor) else float(value))
        return [F.pad(x, tp, mode="constant", value=v)]
    tmode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    n = len(tail) // 2
    if tmode is None or n > 3 or n > r - 1:
        raise LoweringError(f"torch lowering: Pad mode={mode} over {n} axes (node {node.name!r}) is not supported")
    # torch's non-constant modes want a batch (and channel) axis in front of the padded ones.
    lead_shape = x.shape[:r - n]
    y = F.pad(x.reshape((-1, 1) + tuple(x.shape[r - n:])), tp, mode=tmode)
    return [y.reshape(tuple(lead_shape) + tuple(y.shape[2:]))]


def _resize_coords(mode: str, out_len: int, in_len: int, scale: float) -> torch.Tensor:
    x = torch.arange(out_len, dtype=torch.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros_like(x)
    if mode == "align_corners":
        return x * (in_len - 1) / (out_len - 1) if out_len > 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "half_pixel_symmetric":
        adj = out_len / (scale * in_len)
        center = in_len / 2
        return center * (1 - adj) + (x + 0.5) / scale - 0.5
    raise LoweringError(f"torch lowering: Resize coordinate_transformation_mode={mode} is not supported")


@_op("Resize")
def _resize(node, ins, opset):
    x = ins[0]
    mode = _s(node, "mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise LoweringError(f"torch lowering: Resize mode={mode} (node {node.name!r}) is not supported")
    if int(node.attr("antialias", 0)):
        raise LoweringError(f"torch lowering: Resize with antialias (node {node.name!r}) is not supported")
    ctm = _s(node, "coordinate_transformation_mode", "half_pixel" if opset >= 11 else "asymmetric")
    nearest = _s(node, "nearest_mode", "round_prefer_floor")
    r = x.dim()
    axes_attr = node.attr("axes", None)
    axes = [_axis(a, r) for a in axes_attr] if axes_attr is not None else list(range(r))
    if opset < 11:  # Resize-10: (X, scales)
        scales_t, sizes_t = ins[1], None
    else:
        scales_t = ins[2] if len(ins) > 2 and ins[2] is not None and ins[2].numel() > 0 else None
        sizes_t = ins[3] if len(ins) > 3 and ins[3] is not None and ins[3].numel() > 0 else None
    in_sizes = [x.shape[a] for a in axes]
    if sizes_t is not None:
        if _s(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            raise LoweringError(f"torch lowering: Resize keep_aspect_ratio_policy (node {node.name!r}) is not supported")
        out_sizes = _ints(sizes_t)
        scales = [o / i for o, i in zip(out_sizes, in_sizes)]
    else:
        scales = [float(s) for s in scales_t.reshape(-1).tolist()]
        out_sizes = [int(math.floor(i * s)) for i, s in zip(in_sizes, scales)]
    y = x
    for a, n_in, n_out, s in zip(axes, in_sizes, out_sizes, scales):
        if n_in == n_out and s == 1.0:
            continue
        c = _resize_coords(ctm, n_out, n_in, s)
        if mode == "nearest":
            if nearest == "floor":
                i = torch.floor(c)
            elif nearest == "ceil":
                i = torch.ceil(c)
            elif nearest == "round_prefer_ceil":
                i = torch.floor(c + 0.5)
            else:  # round_prefer_floor
                i = torch.ceil(c - 0.5)
            i = i.clamp(0, n_in - 1).to(torch.int64)
            y = y.index_select(a, i)
        else:
            c = c.clamp(0, n_in - 1)
            i0 = torch.floor(c).to(torch.int64)
            i1 = torch.clamp(i0 + 1, max=n_in - 1)
            w = (c - i0.to(torch.float64)).to(y.dtype)
            shape = [1] * y.dim()
            shape[a] = n_out
            w = w.reshape(shape)
            y = y.index_select(a, i0) * (1 - w) + y.index_select(a, i1) * w
    return [y]


@_op("Expand")
def _expand(node, ins, opset):
    x = ins[0]
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(ins[1])))
    return [x.expand(shape)]


@_op("Tile")
def _tile(node, ins, opset):
    return [ins[0].repeat(_ints(ins[1]))]


def _attr_tensor(node: Node) -> torch.Tensor:
    for key, dt in (("value", None), ("value_float", np.float32), ("value_floats", np.float32),
                    ("value_int", np.int64), ("value_ints", np.int64)):
        v = node.attr(key, None)
        if v is None:
            continue
        if dt is None:
            return to_torch(v.numpy() if hasattr(v, "numpy") else v)
        return to_torch(np.asarray(v, dtype=dt))
    raise LoweringError(f"torch lowering: Constant node {node.name!r} holds no numeric value")


@_op("Constant")
def _constant(node, ins, opset):
    return [_attr_tensor(node)]


@_op("ConstantOfShape")
def _const_of_shape(node, ins, opset):
    v = node.attr("value", None)
    val = to_torch(v.numpy()).reshape(-1) if v is not None else torch.zeros(1, dtype=torch.float32)
    return [torch.full(tuple(_ints(ins[0])), val[0].item(), dtype=val.dtype)]


@_op("Range")
def _range(node, ins, opset):
    start, limit, delta = (t.item() for t in ins[:3])
    return [torch.arange(start, limit, delta, dtype=ins[0].dtype)]


@_op("Trilu")
def _trilu(node, ins, opset):
    k = int(ins[1].item()) if len(ins) > 1 and ins[1] is not None else 0
    return [torch.triu(ins[0], k) if int(node.attr("upper", 1)) else torch.tril(ins[0], k)]


@_op("Einsum")
def _einsum(node, ins, opset):
    return [torch.einsum(_s(node, "equation", ""), *ins)]


@_op("InstanceNormalization")
def _instnorm(node, ins, opset):
    x, scale, bias = ins[:3]
    return [F.instance_norm(x, weight=scale, bias=bias, eps=float(node.attr("epsilon", 1e-5)))]


@_op("PRelu")
def _prelu(node, ins, opset):
    x, slope = ins
    return [torch.where(x >= 0, x, x * slope)]


@_op("DepthToSpace")
def _d2s(node, ins, opset):
    x = ins[0]
    bs = int(node.attr("blocksize"))
    n, c, h, w = x.shape
    if _s(node, "mode", "DCR") == "DCR":
        y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (bs * bs), h * bs, w * bs)]


@_op("SpaceToDepth")
def _s2d(node, ins, opset):
    x = ins[0]
    bs = int(node.attr("blocksize"))
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
    return [y.reshape(n, c * bs * bs, h // bs, w // bs)]


SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(OPS))


# ---------------------------------------------------------------------------------------------
# which constants are trained
# ---------------------------------------------------------------------------------------------
#: (op type -> input positions that are weights when they are float initializers).
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
    "BatchNormalization": (1, 2), "LayerNormalization": (1, 2), "InstanceNormalization": (1, 2),
    "PRelu": (1,),
}
_FLOAT_TYPES = (DType.FLOAT, DType.DOUBLE, DType.FLOAT16, DType.BFLOAT16)


def _is_float_initializer(v: Value | None) -> bool:
    return v is not None and v.const is not None and v.const.dtype in _FLOAT_TYPES


def trainable_values(model: Model) -> list[Value]:
    """The initializers `TorchModule` trains, in graph order of first use (see the module doc)."""
    seen: dict[int, Value] = {}
    for n in model.graph:
        if n.domain not in ("", "ai.onnx"):
            continue
        pos: Iterable[int] = WEIGHT_INPUTS.get(n.op_type, ())
        if n.op_type in ("Mul", "Add"):
            # The non-scalar constant operand of an affine op (per-channel scale or bias); both
            # operands constant is constant arithmetic, not a weight.
            consts = [i for i, v in enumerate(n.inputs) if _is_float_initializer(v)]
            pos = [i for i in consts if n.inputs[i].const.size > 1] if len(consts) == 1 else []
        for i in pos:
            v = n.inputs[i] if i < len(n.inputs) else None
            if _is_float_initializer(v):
                seen.setdefault(id(v), v)
    return list(seen.values())


# ---------------------------------------------------------------------------------------------
# the module
# ---------------------------------------------------------------------------------------------
def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


class TorchModule(nn.Module):
    """`model`'s main graph as a torch module (see the module doc).

    `forward(feeds, want=())` takes a dict {input name: tensor} and returns a dict {name: tensor}
    of the graph outputs plus the values named in `want` (intermediate values, e.g. for feature
    losses). `outputs(feeds)` returns the graph outputs as a tuple, in order.
    """

    def __init__(self, model: Model, trainable: Iterable[Value] | None = None) -> None:
        super().__init__()
        self.model = model
        g = model.graph
        self.opset = int(model.opset("") or 17)
        for n in g:
            if n.domain not in ("", "ai.onnx"):
                raise LoweringError(f"torch lowering: op {n.domain}::{n.op_type} (node {n.name!r}) is not supported")
            if n.op_type not in OPS:
                raise LoweringError(f"torch lowering: op {n.op_type!r} (node {n.name!r}) is not supported "
                                    "(docs/distill.md lists the lowered ops)")
            if n.subgraphs():
                raise LoweringError(f"torch lowering: op {n.op_type!r} with a subgraph (node {n.name!r}) is not supported")
        train = list(trainable) if trainable is not None else trainable_values(model)
        self.params = nn.ParameterDict()
        #: parameter key -> the initializer it came from (for write_back)
        self.param_values: dict[str, Value] = {}
        self._slot: dict[int, tuple[str, str]] = {}  # id(value) -> ("p" | "b", key)
        used: set[str] = set()

        def key_for(v: Value, prefix: str) -> str:
            base = prefix + _safe(v.name or "v")[:60]
            k, i = base, 1
            while k in used:
                k, i = f"{base}_{i}", i + 1
            used.add(k)
            return k

        for v in train:
            k = key_for(v, "p_")
            t = to_torch(v.const.numpy())
            if not t.dtype.is_floating_point:
                raise LoweringError(f"torch lowering: weight {v.name!r} is not floating point")
            self.params[k] = nn.Parameter(t)
            self.param_values[k] = v
            self._slot[id(v)] = ("p", k)
        self._buffers_by_key: dict[str, str] = {}
        for v in g.initializers.values():
            if id(v) in self._slot or v.const is None:
                continue
            if v.const.dtype in (DType.STRING,) or int(v.const.dtype) not in _TORCH_DTYPES:
                continue  # raises only if a node reads it (see _read)
            k = key_for(v, "c_")
            self.register_buffer(k, to_torch(v.const.numpy()), persistent=True)
            self._slot[id(v)] = ("b", k)
        # Fold nodes that read only buffers (and Constant nodes): evaluated once, held as buffers.
        self._plan: list[Node] = []
        for n in g:
            ins = [x for x in n.inputs if x is not None]
            if all(id(x) in self._slot and self._slot[id(x)][0] == "b" for x in ins) and n.op_type not in ("Dropout",):
                outs = self._eval(n, [None if x is None else self._read(x, {}) for x in n.inputs])
                for o, t in zip(n.outputs, outs):
                    if t is not None and isinstance(t, torch.Tensor):
                        k = key_for(o, "f_")
                        self.register_buffer(k, t.detach().clone(), persistent=False)
                        self._slot[id(o)] = ("b", k)
                if all(id(o) in self._slot for o in n.outputs):
                    continue
            self._plan.append(n)
        self._input_names = [v.name for v in g.inputs if id(v) not in self._slot]
        self._output_values = list(g.outputs)
        # Last use of each computed value (index in the plan), to free intermediates early.
        self._last_use: dict[int, int] = {}
        for i, n in enumerate(self._plan):
            for x in n.inputs:
                if x is not None:
                    self._last_use[id(x)] = i

    # -- evaluation --------------------------------------------------------------------------
    def _read(self, v: Value, env: Mapping[int, torch.Tensor]) -> torch.Tensor:
        slot = self._slot.get(id(v))
        if slot is not None:
            return self.params[slot[1]] if slot[0] == "p" else getattr(self, slot[1])
        t = env.get(id(v))
        if t is None:
            raise LoweringError(f"torch lowering: value {v.name!r} has no torch tensor (a non-numeric constant "
                                "or an input that was not fed)")
        return t

    def _eval(self, n: Node, ins: list) -> list:
        try:
            return OPS[n.op_type](n, ins, self.opset)
        except LoweringError:
            raise
        except Exception as e:  # noqa: BLE001 - name the node: a torch error alone says nothing of where
            msg = (str(e).splitlines() or [""])[0][:300]
            raise LoweringError(f"torch lowering: {n.op_type} node {n.name!r} failed: {type(e).__name__}: {msg}") from e

    def forward(self, feeds: Mapping[str, torch.Tensor], want: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        g = self.model.graph
        env: dict[int, torch.Tensor] = {}
        by_name = {v.name: v for v in g.inputs}
        for name in self._input_names:
            if name not in feeds:
                raise LoweringError(f"torch lowering: no feed for model input {name!r}")
            t = feeds[name]
            env[id(by_name[name])] = t if isinstance(t, torch.Tensor) else to_torch(t)
        wanted = {id(v) for v in self._output_values}
        want_ids = {}
        if want:
            names = set(want)
            for v in g.values():
                if v.name in names:
                    want_ids[id(v)] = v.name
            wanted |= set(want_ids)
        keep: dict[int, torch.Tensor] = {}
        for i, n in enumerate(self._plan):
            outs = self._eval(n, [None if x is None else self._read(x, env) for x in n.inputs])
            for o, t in zip(n.outputs, outs):
                if t is not None:
                    env[id(o)] = t
                    if id(o) in wanted:
                        keep[id(o)] = t
            for x in n.inputs:  # free what no later node reads
                if x is not None and self._last_use.get(id(x)) == i and id(x) not in wanted:
                    env.pop(id(x), None)
        result: dict[str, torch.Tensor] = {}
        for v in self._output_values:
            result[v.name] = keep[id(v)] if id(v) in keep else self._read(v, env)
        for vid, name in want_ids.items():
            if vid in keep:
                result[name] = keep[vid]
            else:
                slot = self._slot.get(vid)
                if slot is not None:
                    result[name] = self.params[slot[1]] if slot[0] == "p" else getattr(self, slot[1])
        return result

    def outputs(self, feeds: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
        res = self.forward(feeds)
        return tuple(res[v.name] for v in self._output_values)

    # -- back into the IR ----------------------------------------------------------------------
    def state_arrays(self) -> dict[Value, np.ndarray]:
        """{initializer: trained array in the initializer's dtype} for every parameter."""
        out: dict[Value, np.ndarray] = {}
        for k, v in self.param_values.items():
            a = to_numpy(self.params[k])
            want = v.const.dtype.numpy()
            out[v] = a.astype(want) if a.dtype != want else a.copy()
        return out

    def write_back(self, model: Model | None = None) -> int:
        """Write the parameters into the IR (`lepton_ir.replace_constants`); returns how many
        initializers changed value."""
        arrays = self.state_arrays()
        changed = {v: a for v, a in arrays.items() if not np.array_equal(v.const.numpy(), a)}
        if changed:
            lepton_ir.replace_constants(model or self.model, changed)
        return len(changed)


def lower(model: Model) -> TorchModule:
    """`TorchModule(model)`."""
    return TorchModule(model)
