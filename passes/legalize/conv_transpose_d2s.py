"""`conv-transpose-to-depth-to-space`: a ConvTranspose whose kernel equals its stride as a 1x1 Conv
followed by DepthToSpace.

With kernel == stride == s (no padding, dilation or output padding, group 1) every output pixel
receives exactly one kernel tap from exactly one input pixel:

    y[n, f, s*i + a, s*j + b] = bias[f] + sum_c x[n, c, i, j] * W[c, f, a, b]

which is a 1x1 convolution to F*s*s channels, channel f*s*s + a*s + b holding tap (a, b) of output
channel f, followed by DepthToSpace(blocksize=s, mode="CRD"). The upsampling heads of detection and
segmentation models use exactly this form (PP-OCRv4 det: two 2x2 stride-2 ConvTransposes).

Why: TVM 0.27 lowers ConvTranspose to a direct loop nest our search-free schedules do not handle
well; measured on PP-OCRv4 det (1x3x480x640) its two ConvTransposes took 12 of the model's 55 ms.
A 1x1 conv is what the tuned-for conv schedules handle best, and DepthToSpace is a copy.

The weight must be a constant, or a DequantizeLinear of constants (quant8's QDQ form; it is
dequantized here, which is what the backends' importers do with it anyway). 2-D only (NCHW).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import Model, Node

from ..base import Pass, register_pass
from ..quant.qmath import QParams, dequantize
from ..util import constant_value, replace_value, static_shape


def _ints(node: Node, name: str, default: list[int]) -> list[int]:
    value = node.attr(name, None)
    return [int(v) for v in value] if value is not None else default


def _weight(node: Node) -> np.ndarray | None:
    """The float weight: a constant, or DequantizeLinear(constant, constant scale[, zero point])."""
    w = node.inputs[1]
    value = constant_value(w)
    if value is not None:
        return value
    dq = w.producer()
    if dq is None or dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
        return None
    q = constant_value(dq.inputs[0])
    scale = constant_value(dq.inputs[1])
    has_zp = len(dq.inputs) > 2 and dq.inputs[2] is not None
    zp = constant_value(dq.inputs[2]) if has_zp else None
    if q is None or scale is None or (has_zp and zp is None) or dq.attr("block_size", 0):
        return None  # run-time parameters, or blocked quantization (not produced by our passes)
    zp = np.zeros(scale.shape, q.dtype) if zp is None else zp
    axis = int(dq.attr("axis", 1)) % q.ndim if scale.size > 1 else None
    return dequantize(q, QParams(scale, zp, axis)).astype(scale.dtype)


@register_pass
@dataclass(frozen=True)
class ConvTransposeToDepthToSpace(Pass):
    """ConvTranspose with kernel == stride (2-D, no pads/dilation/output padding, group 1) and a
    constant weight -> Conv 1x1 (+ bias) then DepthToSpace(CRD)."""

    name = "conv-transpose-to-depth-to-space"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type != "ConvTranspose" or n.domain not in ("", "ai.onnx") or len(n.inputs) < 2:
                    continue
                shape = static_shape(n.inputs[0])
                w = _weight(n)
                if shape is None or len(shape) != 4 or w is None or w.ndim != 4:
                    continue
                c, f, kh, kw = w.shape
                strides = _ints(n, "strides", [1, 1])
                if not (kh == kw == strides[0] == strides[1]) or kh < 2:
                    continue
                if (int(n.attr("group", 1)) != 1 or any(_ints(n, "pads", [0] * 4)) or _ints(n, "dilations", [1, 1]) != [1, 1]
                        or any(_ints(n, "output_padding", [0, 0])) or n.attr("output_shape", None) is not None):
                    continue
                auto_pad = n.attr("auto_pad", "NOTSET")
                auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
                if auto_pad not in ("NOTSET", "VALID") or shape[1] != c:
                    continue
                bias = None
                if len(n.inputs) > 2 and n.inputs[2] is not None:
                    bias = constant_value(n.inputs[2])
                    if bias is None:
                        continue
                s = kh
                w1 = np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(f * s * s, c, 1, 1))
                inputs = [n.inputs[0], g.constant(w1.astype(w.dtype), name=f"{n.name or 'convT'}_w1x1")]
                if bias is not None:
                    inputs.append(g.constant(np.repeat(bias.astype(w.dtype), s * s), name=f"{n.name or 'convT'}_b1x1"))
                with g.inserting_before(n):
                    y = g.op("Conv", *inputs, kernel_shape=[1, 1])
                    out = g.op("DepthToSpace", y, blocksize=s, mode="CRD")
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
