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


#: op type -> converter class (``get_converter(opset)``), consulted before TVM's own map.
EXTRA_CONVERTERS: dict[str, Any] = {"ConvInteger": _ConvIntegerConverter, "MatMulInteger": _MatMulIntegerConverter}


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
