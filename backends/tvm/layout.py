"""NCHW[x]c layout for CPU convolutions (the tvm-cpu ``layout=nchwc`` option).

Two Relax-level pieces, used by :func:`lower.pipeline_passes` when the option is on:

* :func:`convert_layout_pass` -- TVM's ``relax.transform.ConvertLayout`` with a per-call choice
  (:func:`_choose`): a dense conv (``groups == 1``) whose input and output channels are both
  multiples of the block ``x`` (the SIMD width in fp32 lanes: 8 with AVX2, 16 with AVX-512) is
  asked for data ``NCHW{x}c`` and weights ``OIHW{x}i{x}o``; every other conv (the RGB stem's 3
  input channels, depthwise and grouped convs, whose ``DepthwiseConv`` schedule works on NCHW)
  stays NCHW. ConvertLayout carries the layout through the element-wise ops, pooling, concat and
  residual adds that follow, and inserts ``layout_transform`` only where a consumer needs NCHW
  (and at the model boundary). The weights' ``layout_transform`` is applied to constants, so the
  FoldConstant after LegalizeOps repacks every weight once, at compile time.
* :func:`legalize_map` -- TVM 0.27's LegalizeOps refuses sub-indexed conv2d layouts ("channel
  chunk ... cannot be legalized by TOPI at this moment"), so packed convs are lowered with
  ``topi.nn.conv2d_NCHWc`` (output ``[n, oc/x, oh, ow, x]``, reduction over ``ic, kh, kw``).

The schedule of the packed conv is cpu_schedule's ``TiledReduction``: the innermost output axis
is the ``x``-wide output-channel block (one register), and the reuse axis it finds is the output
width (the packed weights do not depend on it), i.e. an ``ow-block x oc-block`` outer-product
register tile with the epilogue computed from the accumulators.
"""

from __future__ import annotations

from typing import Any

NCHWC = "nchwc"
LAYOUTS = ("nchw", NCHWC)


def block_size(target: Any) -> int:
    """The channel block ``x``: fp32 SIMD lanes of ``target`` (8 on AVX2, 16 on AVX-512)."""
    from .cpu_schedule import vector_lanes

    return vector_lanes(target, 32)


def _ty(expr):
    """The Relax type of ``expr`` (``ty`` in TVM 0.27; ``struct_info`` before)."""
    return expr.ty if hasattr(expr, "ty") else expr.struct_info


def _static_dim(expr, axis: int) -> int | None:
    from tvm import tirx

    shape = getattr(_ty(expr), "shape", None)
    values = getattr(shape, "values", None)
    if values is None or axis >= len(values):
        return None
    dim = values[axis]
    return int(dim) if isinstance(dim, tirx.IntImm) else None


def _dtype_or(dtype, default: str) -> str:
    """An attribute dtype, or ``default`` when unset (printed as "", "None" or "void")."""
    s = "" if dtype is None else str(dtype)
    return default if s in ("", "None", "void") else s


def _choose(call, block: int) -> dict[str, list[str]]:
    """Desired layouts for one conv2d call (``layout_cb`` of ConvertLayout)."""
    if getattr(call.op, "name", "") != "relax.nn.conv2d":
        return {}  # other ops follow their inputs' layout (ConvertLayout's inference)
    keep = {"relax.nn.conv2d": ["NCHW", "OIHW"]}
    attrs = call.attrs
    if (str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW" or int(attrs.groups) != 1
            or _dtype_or(attrs.out_dtype, "float32") != "float32"):
        return keep
    cin, cout = _static_dim(call.args[0], 1), _static_dim(call.args[1], 0)
    if str(_ty(call.args[0]).dtype) != "float32" or not cin or not cout or cin % block or cout % block:
        return keep
    return {"relax.nn.conv2d": [f"NCHW{block}c", f"OIHW{block}i{block}o"]}


def convert_layout_pass(target: Any):
    """ConvertLayout to NCHW{x}c for the dense convs that fit the block (see the module docstring)."""
    from tvm import relax

    block = block_size(target)
    return relax.transform.ConvertLayout({"relax.nn.conv2d": [f"NCHW{block}c", f"OIHW{block}i{block}o"]},
                                         layout_cb=lambda call: _choose(call, block))


def _legalize_conv2d(bb, call):
    """LegalizeOps rule for conv2d: packed layouts via ``topi.nn.conv2d_NCHWc``, the rest as TVM's."""
    from tvm import topi
    from tvm.relax.transform.legalize_ops import nn as legalize_nn

    a = call.attrs
    data_layout, out_layout = str(a.data_layout), str(a.out_layout or a.data_layout)
    if len(data_layout) == 4:
        return legalize_nn._nn_conv2d(bb, call)
    out_dtype = _dtype_or(a.out_dtype, str(_ty(call.args[0]).dtype))
    return bb.call_te(topi.nn.conv2d_NCHWc, call.args[0], call.args[1], a.strides, a.padding, a.dilation,
                      data_layout, out_layout, out_dtype, primfunc_name_hint="conv2d_NCHWc")


def legalize_map() -> dict:
    """Custom LegalizeOps entries for the packed layout."""
    return {"relax.nn.conv2d": _legalize_conv2d}
