"""`legalize-col2im`: Col2Im as a grouped ConvTranspose with one-hot kernels, for TVM.

TVM 0.27's importer has no Col2Im. Col2Im scatters each column entry (c, k, l) of the input
[N, C*K, L] (K = prod(block_shape), L = prod of the sliding-block counts L_d) back to its image
position and sums overlaps. That is exactly ConvTranspose of the input reshaped to
[N, C*K, L_1, ..., L_n] with group=C and a kernel [C*K, 1, *block] whose entry (c*K + k) is the
one-hot block at position k, with the op's strides/dilations/pads; its output size
(L_d - 1)*stride - pads + dilation*(b_d - 1) + 1 is the image size. Needs constant image_shape and
block_shape (shape-determining, so bindable) and a static channel count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import Model

from ..base import Pass, register_pass
from ..util import constant_value, replace_value


@register_pass
@dataclass(frozen=True)
class LegalizeCol2Im(Pass):
    """Col2Im(x, const image_shape, const block_shape) -> Reshape + ConvTranspose(group=C)."""

    name = "legalize-col2im"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type != "Col2Im" or n.domain not in ("", "ai.onnx") or len(n.inputs) != 3:
                    continue
                x, img_v, blk_v = n.inputs
                img, blk = constant_value(img_v), constant_value(blk_v)
                if x is None or img is None or blk is None or x.shape is None or x.dtype is None:
                    continue
                img = [int(v) for v in np.asarray(img).reshape(-1)]
                blk = [int(v) for v in np.asarray(blk).reshape(-1)]
                nd = len(img)
                ck = x.shape.dims[1] if len(x.shape.dims) == 3 else None
                k = int(np.prod(blk))
                if not isinstance(ck, int) or k == 0 or ck % k or len(blk) != nd:
                    continue
                c = ck // k
                strides = list(n.attr("strides", None) or [1] * nd)
                dil = list(n.attr("dilations", None) or [1] * nd)
                pads = list(n.attr("pads", None) or [0] * (2 * nd))
                counts = [(img[d] + pads[d] + pads[nd + d] - dil[d] * (blk[d] - 1) - 1) // strides[d] + 1
                          for d in range(nd)]
                w = np.zeros([ck, 1, *blk], dtype=x.dtype.numpy())
                for ch in range(c):
                    for j in range(k):
                        w[(ch * k + j, 0, *np.unravel_index(j, blk))] = 1
                with g.inserting_before(n):
                    shape = g.constant(np.array([0, ck, *counts], dtype=np.int64), name="col2im_shape")
                    cols = g.op("Reshape", x, shape)
                    out = g.op("ConvTranspose", cols, g.constant(w, name="col2im_onehot"), group=c,
                               strides=strides, dilations=dil, pads=pads, kernel_shape=blk)
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
