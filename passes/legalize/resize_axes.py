"""`legalize-resize-axes`: Resize with the `axes` attribute (opset 18) rewritten to full rank, for TVM.

TVM 0.27's Resize converter expects roi/scales/sizes for every dimension and ignores `axes`. With
constant roi/scales/sizes and a static input shape, the spec's meaning is spelled out per
dimension: scales 1 and sizes equal to the input dim on the axes not listed, roi [0, 1] there.
`keep_aspect_ratio_policy` (not_larger/not_smaller) is resolved as the spec defines it --
scale = min/max of sizes[i]/in[i] over the axes, out[i] = round(scale * in[i]) -- and only when
every out[i]/in[i] equals that scale (so the interpolation TVM does with sizes is the spec's),
the node becomes a plain `stretch` Resize with those sizes; otherwise it is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import Attr, Model, Node

from ..base import Pass, register_pass
from ..util import constant_value, static_shape


def _full(n: Node, shape: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None] | None:
    """Full-rank (roi, scales, sizes), or None when the node cannot be rewritten exactly."""
    rank = len(shape)
    axes = [a + rank if a < 0 else a for a in n.attr("axes")]
    ins = list(n.inputs) + [None] * (4 - len(n.inputs))
    roi, scales, sizes = (constant_value(v) if v is not None else None for v in ins[1:4])
    if any(v is not None and c is None for v, c in zip(ins[1:4], (roi, scales, sizes))):
        return None  # a run-time roi/scales/sizes
    if scales is not None and scales.size == 0:
        scales = None
    if sizes is not None and sizes.size == 0:
        sizes = None
    full_roi = None
    if roi is not None and roi.size:
        if roi.size != 2 * len(axes):
            return None
        full_roi = np.concatenate([np.zeros(rank), np.ones(rank)]).astype(roi.dtype)
        for k, a in enumerate(axes):
            full_roi[a], full_roi[rank + a] = roi[k], roi[len(axes) + k]
    full_scales = full_sizes = None
    if scales is not None:
        full_scales = np.ones(rank, dtype=scales.dtype)
        full_scales[axes] = scales.reshape(-1)
    elif sizes is not None:
        sizes = sizes.reshape(-1).astype(np.int64)
        policy = n.attr("keep_aspect_ratio_policy", "stretch")
        policy = policy.decode() if isinstance(policy, bytes) else policy
        if policy != "stretch":
            ratios = [sizes[k] / shape[a] for k, a in enumerate(axes)]
            scale = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = np.array([int(scale * shape[a] + 0.5) for a in axes], dtype=np.int64)
            if any(sizes[k] / shape[a] != scale for k, a in enumerate(axes)):
                return None  # TVM would interpolate with out/in, not the spec's common scale
        full_sizes = np.array(shape, dtype=np.int64)
        full_sizes[axes] = sizes
    else:
        return None
    return full_roi, full_scales, full_sizes


@register_pass
@dataclass(frozen=True)
class LegalizeResizeAxes(Pass):
    """Resize(axes=...) with constant roi/scales/sizes -> the equivalent full-rank Resize."""

    name = "legalize-resize-axes"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type != "Resize" or n.domain not in ("", "ai.onnx") or n.attr("axes") is None:
                    continue
                shape = static_shape(n.inputs[0])
                full = _full(n, shape) if shape is not None else None
                if full is None:
                    continue
                roi, scales, sizes = full
                c = lambda a: g.constant(a, name="resize_const") if a is not None else None  # noqa: E731
                with g.inserting_before(n):
                    new_ins = [n.inputs[0], c(roi), c(scales), c(sizes)]
                if sizes is None:
                    new_ins = new_ins[:3]
                n.set_inputs(new_ins)
                del n.attrs["axes"]
                if "keep_aspect_ratio_policy" in n.attrs:
                    n.attrs["keep_aspect_ratio_policy"] = Attr.infer("keep_aspect_ratio_policy", "stretch")
                changed = True
        return changed
