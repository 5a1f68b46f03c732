"""ONNX op converters Lepton adds to TVM's Relax ONNX importer, and the importer that uses them.

TVM 0.27's ``tvm.relax.frontend.onnx.from_onnx`` has no ConvInteger converter (it has
MatMulInteger), and no argument to pass extra converters: the importer looks every op up in the
module-level ``_get_convert_map()``. Rather than patching that module (global state, visible to
every other caller in the process), :class:`_Importer` subclasses ``ONNXGraphImporter`` and
overrides its two lookups (the unsupported-op check and ``_convert_operator``) to consult
:data:`EXTRA_CONVERTERS` first; :func:`from_onnx` is TVM's ``from_onnx`` wrapper with that
importer. Everything else (initializers, inputs, If subgraphs, all other ops) is TVM's code.

ConvInteger (the integer conv that ``qdq-to-integer`` emits for quant8's QDQ Convs) becomes
``relax.op.nn.conv{1,2,3}d`` on the 8-bit data with ``out_dtype="int32"``:

* zero points: ONNX defines y = sum (x - x_zp) * (w - w_zp) with the input padded by x_zp, i.e. the
  centred input padded with 0. With x_zp = 0 (s8 symmetric activations, and u8 activations after a
  ReLU) the 8-bit tensor goes to the conv as is; otherwise it is centred in int16 first
  (x - x_zp is in [-255, 255]) and the conv's zero padding is the right padding. A non-zero weight
  zero point is subtracted from the weight (folded at compile time for constant weights);
* the weight is stored widened to int32 (see ``convert_conv_integer``: one broadcast load per use
  instead of load + sign-extend + broadcast, ~2.5x faster on AVX2) - the activations, the large
  run-time operand, stay 8-bit;
* the products are formed and summed in int32 by TVM's conv2d compute (operands cast to
  out_dtype), which is what ONNX specifies: no overflow below 2^31 / (255 * 255) = 33000
  products per output.
"""

from __future__ import annotations

import contextvars
from typing import Any, Callable

import numpy as np

#: The int8 dot-product intrinsic of the target being imported for (None: generic int8 lowering);
#: set by :func:`from_onnx` for the duration of one import.
_INT8_INTRIN: contextvars.ContextVar = contextvars.ContextVar("lepton_int8_intrin", default=None)


def _is_zero_const(expr: Any) -> bool:
    """True when ``expr`` is a Relax constant whose values are all 0 (or absent)."""
    import tvm

    if expr is None:
        return True
    return isinstance(expr, tvm.ir.GenericConst) and not np.any(expr.value.numpy())


def _static_same_pads(shape: list[int], kernel: list[int], strides: list[int], dilations: list[int],
                      lower: bool) -> list[int]:
    """ONNX auto_pad SAME_UPPER/SAME_LOWER as explicit [begin..., end...] pads (static shapes)."""
    begins, ends = [], []
    for size, k, s, d in zip(shape, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begins.append(big if lower else small)
        ends.append(small if lower else big)
    return begins + ends


def convert_conv_integer(bb, inputs, attr: dict, params) -> Any:
    """ONNX ConvInteger -> Relax conv with int32 accumulation (see the module docstring)."""
    import tvm
    from tvm import relax

    x, w = inputs[0], inputs[1]
    x_zp = inputs[2] if len(inputs) > 2 else None
    w_zp = inputs[3] if len(inputs) > 3 else None
    ndim = x.ty.ndim
    ops = {3: (relax.op.nn.conv1d, "NCW", "OIW"), 4: (relax.op.nn.conv2d, "NCHW", "OIHW"),
           5: (relax.op.nn.conv3d, "NCDHW", "OIDHW")}
    if ndim not in ops:
        raise tvm.error.OpNotImplemented(f"ConvInteger with a rank-{ndim} input")
    op, data_layout, kernel_layout = ops[ndim]
    nsp = ndim - 2
    strides = list(attr.get("strides", [1] * nsp))
    dilations = list(attr.get("dilations", [1] * nsp))
    w_shape = [int(d) for d in w.ty.shape.values] if all(
        isinstance(d, tvm.tirx.IntImm) for d in w.ty.shape.values) else None
    kernel = list(attr.get("kernel_shape", w_shape[2:] if w_shape else []))
    pads = _conv_pads(x, attr, kernel, strides, dilations, nsp)
    fast = _tensorized_conv(bb, x, x_zp, w, w_zp, attr, strides, pads, dilations)
    if fast is not None:
        return fast
    if not _is_zero_const(x_zp):
        # Centre in int16: exact for both 8-bit types, and the conv's zero padding is then x_zp.
        x = bb.normalize(relax.op.subtract(relax.op.astype(x, "int16"), relax.op.astype(x_zp, "int16")))
    # The weight is widened to int32 (a constant: folded at compile time, so it costs only the
    # storage float weights would take). The kernel broadcasts one weight against a vector of
    # activations; an int8 weight needs load + sign-extend + broadcast each time, an int32 one a
    # single broadcast load. Measured on AVX2 (3x3 convs, 2 threads): u8 x s8 2.7x slower than
    # float at 128-256 channels, u8 x s32 1.0-1.3x float. The values are still the 8-bit ones.
    w = relax.op.astype(w, "int32")
    if not _is_zero_const(w_zp):
        wz = relax.op.astype(w_zp, "int32")
        if w_zp.ty.ndim == 1:  # per output channel
            wz = relax.op.reshape(wz, [-1] + [1] * (ndim - 1))
        w = relax.op.subtract(w, wz)
    w = bb.normalize(w)
    return op(x, w, strides=strides, padding=pads, dilation=dilations, groups=int(attr.get("group", 1)),
              data_layout=data_layout, kernel_layout=kernel_layout, out_dtype="int32")


def _conv_pads(x, attr: dict, kernel: list[int], strides: list[int], dilations: list[int], nsp: int) -> list[int]:
    """ConvInteger's explicit [begin..., end...] pads, resolving ``auto_pad``."""
    import tvm

    pads = list(attr.get("pads", [0] * (2 * nsp)))
    auto_pad = attr.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        shape = [int(d) for d in x.ty.shape.values[2:]] if all(
            isinstance(d, tvm.tirx.IntImm) for d in x.ty.shape.values[2:]) else None
        if shape is None or len(kernel) != nsp:
            raise tvm.error.OpAttributeInvalid("ConvInteger auto_pad=SAME_* needs static spatial dims")
        return _static_same_pads(shape, kernel, strides, dilations, auto_pad == "SAME_LOWER")
    if auto_pad == "VALID":
        return [0] * (2 * nsp)
    if auto_pad != "NOTSET":
        raise tvm.error.OpAttributeInvalid(f"ConvInteger auto_pad={auto_pad!r}")
    return pads


def _const_weight(w, w_zp, axis: int) -> np.ndarray | None:
    """The constant weight with its (constant) zero point subtracted, or None if not constant.
    A 1-D zero point with several values is per channel along ``axis`` (ConvInteger: 0, the
    output channels; MatMulInteger: -1, the output columns)."""
    import tvm

    if not isinstance(w, tvm.ir.GenericConst):
        return None
    value = w.value.numpy().astype(np.int32)
    if w_zp is not None:
        if not isinstance(w_zp, tvm.ir.GenericConst):
            return None
        zp = w_zp.value.numpy().astype(np.int32)
        if zp.ndim == 1 and value.ndim >= 2 and zp.size > 1:
            shape = [1] * value.ndim
            shape[axis] = -1
            zp = zp.reshape(shape)
        value = value - zp
    if value.min(initial=0) < -128 or value.max(initial=0) > 127:
        return None  # a centred u8 weight can exceed int8: generic path
    return value.astype(np.int8)


def _tensorized_conv(bb, x, x_zp, w, w_zp, attr, strides, pads, dilations):
    """ConvInteger on the target's int8 dot-product instructions (int8_kernels), or None."""
    from . import int8_kernels

    intrin = _INT8_INTRIN.get()
    if intrin is None or int(attr.get("group", 1)) != 1 or x.ty.ndim != 4:
        return None
    weight = _const_weight(w, w_zp, axis=0)
    if weight is None:
        return None
    return int8_kernels.conv2d(bb, x, x_zp, weight, strides=strides, pads=pads, dilations=dilations,
                               intrin=intrin)


def convert_matmul_integer(bb, inputs, attr: dict, params) -> Any:
    """ONNX MatMulInteger: the tensorized kernel (int8_kernels) for a constant 2-D weight on a
    target with int8 dot products, else TVM's own converter."""
    from tvm.relax.frontend.onnx import onnx_frontend as of

    from . import int8_kernels

    intrin = _INT8_INTRIN.get()
    a, b = inputs[0], inputs[1]
    a_zp = inputs[2] if len(inputs) > 2 else None
    b_zp = inputs[3] if len(inputs) > 3 else None
    if intrin is not None and b.ty.ndim == 2:
        weight = _const_weight(b, b_zp, axis=-1)
        if weight is not None:
            fast = int8_kernels.matmul(bb, a, a_zp, weight, intrin=intrin)
            if fast is not None:
                return fast
    return of._get_convert_map()["MatMulInteger"].get_converter(10)(bb, inputs, attr, params)


class _MatMulIntegerConverter:
    """Adapter with the ``get_converter(opset)`` interface TVM's importer calls."""

    @classmethod
    def get_converter(cls, opset: int) -> Callable:
        return convert_matmul_integer


class _ConvIntegerConverter:
    """Adapter with the ``get_converter(opset)`` interface TVM's importer calls."""

    @classmethod
    def get_converter(cls, opset: int) -> Callable:
        return convert_conv_integer


def _fix_reduce_max(bb, inputs, attr: dict, y, tvm_convert: Callable, params) -> Any:
    """ReduceMax on floats: TVM's max starts from the lowest finite value, so a slice of only -inf
    gives -FLT_MAX where ONNX gives -inf (the NaN-robust softmax of fully masked attention rows
    compares that max with -inf, so it left NaN rows that ONNX Runtime zeroes). The same reduction
    over "x is not -inf" (int8 0/1) is 0 exactly on those slices."""
    from tvm import relax

    x = inputs[0]
    dtype = x.ty.dtype
    if not str(dtype).startswith(("float", "bfloat")):
        return y
    ninf = relax.const(float("-inf"), dtype)
    y = bb.normalize(y)
    finite = bb.normalize(relax.op.astype(relax.op.not_equal(x, ninf), "int8"))
    flag = bb.normalize(tvm_convert(bb, [finite, *inputs[1:]], attr, params))
    return relax.op.where(relax.op.equal(flag, relax.const(0, "int8")), ninf, y)


def _fix_floor_mod(bb, inputs, attr: dict, y, tvm_convert: Callable, params) -> Any:
    """Mod with fmod=0 on floats: TVM's floor_mod computes a - floor(a / b) * b, NaN for an infinite
    divisor b; ONNX (numpy's mod) gives a when a and b have the same sign (or a is 0), else b."""
    from tvm import relax

    a, b = inputs[0], inputs[1]
    if attr.get("fmod", 0) or not str(a.ty.dtype).startswith(("float", "bfloat")):
        return y
    zero = relax.const(0.0, a.ty.dtype)
    inf_b = relax.op.logical_and(relax.op.isinf(b), relax.op.isfinite(a))
    same = relax.op.logical_or(relax.op.equal(a, zero),
                               # not equal(): LLVM cannot compare two booleans as floats
                               relax.op.logical_not(relax.op.logical_xor(relax.op.greater(a, zero),
                                                                         relax.op.greater(b, zero))))
    return relax.op.where(inf_b, relax.op.where(same, a, b), y)


class _PostFixed:
    """TVM's own converter for an op, with its result corrected by ``fix`` (same interface)."""

    def __init__(self, op: str, fix: Callable, **kw: Any) -> None:
        self.op, self.fix, self.kw = op, fix, kw

    def get_converter(self, opset: int) -> Callable:
        from tvm.relax.frontend.onnx import onnx_frontend as of

        tvm_convert = of._get_convert_map()[self.op].get_converter(opset)

        def convert(bb, inputs, attr, params):
            y = tvm_convert(bb, inputs, attr, params)
            return self.fix(bb, inputs, attr, y, tvm_convert, params, **self.kw)

        return convert


def _runtime_operand(x: Any, params) -> bool:
    """True for an operand whose value is known only at run time (not a constant or a parameter)."""
    import tvm
    from tvm import relax

    if x is None or isinstance(x, tvm.ir.GenericConst):
        return False
    return not (isinstance(x, relax.Var) and x.name in params[1])


def convert_nms(bb, inputs, attr: dict, params) -> Any:
    """ONNX NonMaxSuppression: TVM's converter replaces a run-time iou_threshold or score_threshold
    by a default (0.5, 0.0), silently; TVM's op takes them as tensors, so pass them through. (A
    run-time max_output_boxes_per_class fixes the output's size: known_wrong.py refuses it.)"""
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as of

    tvm_convert = of._get_convert_map()["NonMaxSuppression"].get_converter(10)
    live = [i for i in (3, 4) if len(inputs) > i and _runtime_operand(inputs[i], params)]
    if not live:
        return tvm_convert(bb, inputs, attr, params)
    boxes = inputs[0]
    if attr.get("center_point_box", 0) != 0:  # as TVM's converter: centre/size boxes to corners
        parts = relax.op.split(boxes, 4, axis=2)
        two = relax.const(2.0, boxes.ty.dtype)
        half_w, half_h = parts[2] / two, parts[3] / two
        boxes = relax.op.concat([parts[1] - half_h, parts[0] - half_w, parts[1] + half_h, parts[0] + half_w], axis=2)
    limits = []
    for i, default in ((2, 0), (3, 0.5), (4, 0.0)):
        x = inputs[i] if len(inputs) > i else None
        if i in live:
            limits.append(bb.normalize(relax.op.astype(relax.op.reshape(x, ()), "float32")))
            continue
        # Constant operands: TVM's converter's reading of them (it takes a constant, a parameter
        # or nothing); run it on the other inputs only for these values.
        value = default
        if x is not None:
            import tvm

            c = x if isinstance(x, tvm.ir.GenericConst) else params[1][x.name][1]
            value = (c.value if hasattr(c, "value") else c).numpy().item()
        limits.append(relax.const(int(value), "int64") if i == 2 else relax.const(float(value), "float32"))
    nms = bb.normalize(relax.op.vision.all_class_non_max_suppression(boxes, inputs[1], *limits, output_format="onnx"))
    return bb.emit(relax.TupleGetItem(nms, 0))


class _NmsConverter:
    """Adapter with the ``get_converter(opset)`` interface TVM's importer calls."""

    @classmethod
    def get_converter(cls, opset: int) -> Callable:
        return convert_nms


def _softplus(x: Any) -> Any:
    """log(1 + e^x) to float precision: TVM's converters compute log(1 + e) with e = e^-|x|, whose
    rounding of 1 + e costs up to 1e-3 relative error once e < 1e-4 (x < -9: Mish's conformance
    case). Below e = 1e-2 the series e - e^2/2 + e^3/3 is used (relative error under e^3/4 =
    2.5e-7); above, 1 + e rounds to a relative 6e-6 at most. (Goldberg's log(u) * e / (u - 1) does
    not survive TVM's simplifier, which cancels (1 + e) - 1 inside the fused kernel.)"""
    from tvm import relax

    dtype = x.ty.dtype
    c = lambda v: relax.const(v, dtype)  # noqa: E731
    e = relax.op.exp(relax.op.negative(relax.op.abs(x)))
    series = relax.op.multiply(e, relax.op.subtract(c(1.0), relax.op.multiply(
        e, relax.op.subtract(c(0.5), relax.op.divide(e, c(3.0))))))
    log1p = relax.op.where(relax.op.less(e, c(1e-2)), series, relax.op.log(relax.op.add(c(1.0), e)))
    return relax.op.add(relax.op.maximum(x, c(0.0)), log1p)


class _SoftplusConverter:
    """ONNX Softplus (any opset) with :func:`_softplus`."""

    @classmethod
    def get_converter(cls, opset: int) -> Callable:
        return lambda bb, inputs, attr, params: _softplus(inputs[0])


class _MishConverter:
    """ONNX Mish: x * tanh(softplus(x)) with :func:`_softplus`."""

    @classmethod
    def get_converter(cls, opset: int) -> Callable:
        from tvm import relax

        def convert(bb, inputs, attr, params):
            x = inputs[0]
            sp = bb.normalize(_softplus(x))
            # TVM's tanh is a rational approximation that loses relative precision on tiny inputs
            # (2.6% at tanh(3e-7)): below 1e-3, tanh(s) = s - s^3/3 to 3e-7 relative.
            c = lambda v: relax.const(v, x.ty.dtype)  # noqa: E731
            small = relax.op.multiply(sp, relax.op.subtract(c(1.0), relax.op.divide(relax.op.multiply(sp, sp), c(3.0))))
            return relax.op.multiply(x, relax.op.where(relax.op.less(sp, c(1e-3)), small, relax.op.tanh(sp)))

        return convert


#: op type -> converter class (``get_converter(opset)``), consulted before TVM's own map.
EXTRA_CONVERTERS: dict[str, Any] = {"ConvInteger": _ConvIntegerConverter, "MatMulInteger": _MatMulIntegerConverter,
                                    "ReduceMax": _PostFixed("ReduceMax", _fix_reduce_max),
                                    "Mod": _PostFixed("Mod", _fix_floor_mod), "NonMaxSuppression": _NmsConverter,
                                    "Softplus": _SoftplusConverter, "Mish": _MishConverter}


def _importer_class():
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend as of

    class _Importer(of.ONNXGraphImporter):
        """TVM's ONNX importer, with :data:`EXTRA_CONVERTERS` looked up first."""

        def _check_for_unsupported_ops(self, graph) -> None:
            # TVM's check only knows its own map: hand it a copy without the ops we convert.
            import onnx

            if not any(n.op_type in EXTRA_CONVERTERS for n in graph.node):
                return super()._check_for_unsupported_ops(graph)
            rest = onnx.GraphProto()
            rest.node.extend(n for n in graph.node if n.op_type not in EXTRA_CONVERTERS)
            return super()._check_for_unsupported_ops(rest)

        def _convert_operator(self, op_name, inputs, attrs, opset):
            conv = EXTRA_CONVERTERS.get(op_name)
            if conv is None:
                return super()._convert_operator(op_name, inputs, attrs, opset)
            sym = conv.get_converter(opset)(self.bb, inputs, attrs, [self._nodes, self._params])
            return self.bb.normalize(sym) if isinstance(sym, relax.Expr) else sym

    return _Importer


def from_onnx(model, shape_dict=None, dtype_dict="float32", opset: int | None = None,
              keep_params_in_input: bool = False, sanitize_input_names: bool = True, target: Any = None):
    """``tvm.relax.frontend.onnx.from_onnx`` with Lepton's extra converters (same arguments), plus
    ``target``: the ``tvm.target.Target`` compiled for, which picks the tensorized int8 kernels
    (``int8_kernels.select``); None keeps integer ops on the generic lowering."""
    if model.ir_version < 3:
        raise ValueError(f"Model IR version {model.ir_version} not supported. Must be at least after 1.1.0.")
    if opset is None:
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = _importer_class()(shape_dict, dtype_dict, keep_params_in_input=keep_params_in_input,
                                 sanitize=sanitize_input_names)
    from . import int8_kernels

    token = _INT8_INTRIN.set(int8_kernels.select(target))
    try:
        return importer.from_onnx(model.graph, opset)
    finally:
        _INT8_INTRIN.reset(token)
