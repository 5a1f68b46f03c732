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

from typing import Any, Callable

import numpy as np


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
    strides = list(attr.get("strides", [1] * nsp))
    dilations = list(attr.get("dilations", [1] * nsp))
    kernel = list(attr.get("kernel_shape", [int(d) for d in w.ty.shape.values[2:]]))
    pads = list(attr.get("pads", [0] * (2 * nsp)))
    auto_pad = attr.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        shape = [int(d) for d in x.ty.shape.values[2:]] if all(
            isinstance(d, tvm.tirx.IntImm) for d in x.ty.shape.values[2:]) else None
        if shape is None:
            raise tvm.error.OpAttributeInvalid("ConvInteger auto_pad=SAME_* needs static spatial dims")
        pads = _static_same_pads(shape, kernel, strides, dilations, auto_pad == "SAME_LOWER")
    elif auto_pad == "VALID":
        pads = [0] * (2 * nsp)
    elif auto_pad != "NOTSET":
        raise tvm.error.OpAttributeInvalid(f"ConvInteger auto_pad={auto_pad!r}")
    return op(x, w, strides=strides, padding=pads, dilation=dilations, groups=int(attr.get("group", 1)),
              data_layout=data_layout, kernel_layout=kernel_layout, out_dtype="int32")


class _ConvIntegerConverter:
    """Adapter with the ``get_converter(opset)`` interface TVM's importer calls."""

    @classmethod
    def get_converter(cls, opset: int) -> Callable:
        return convert_conv_integer


#: op type -> converter class (``get_converter(opset)``), consulted before TVM's own map.
EXTRA_CONVERTERS: dict[str, Any] = {"ConvInteger": _ConvIntegerConverter}


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
              keep_params_in_input: bool = False, sanitize_input_names: bool = True):
    """``tvm.relax.frontend.onnx.from_onnx`` with Lepton's extra converters (same arguments)."""
    if model.ir_version < 3:
        raise ValueError(f"Model IR version {model.ir_version} not supported. Must be at least after 1.1.0.")
    if opset is None:
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = _importer_class()(shape_dict, dtype_dict, keep_params_in_input=keep_params_in_input,
                                 sanitize=sanitize_input_names)
    return importer.from_onnx(model.graph, opset)
