"""`legalize-space-to-depth-crd`: SpaceToDepth with mode="CRD" as Reshape/Transpose/Reshape, for TVM.

TVM 0.27's SpaceToDepth converter ignores `mode` and always produces the DCR channel order. CRD
(opset 25) orders output channels as c * b * b + bh * b + bw: reshape [N, C, H/b, b, W/b, b],
transpose to [N, C, b, b, H/b, W/b], reshape [N, C*b*b, H/b, W/b]. Needs a static input shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import Model

from ..base import Pass, register_pass
from ..util import replace_value, static_shape


@register_pass
@dataclass(frozen=True)
class LegalizeSpaceToDepthCrd(Pass):
    """SpaceToDepth(mode=CRD) with a static 4-D input -> Reshape, Transpose, Reshape."""

    name = "legalize-space-to-depth-crd"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type != "SpaceToDepth" or n.domain not in ("", "ai.onnx"):
                    continue
                mode = n.attr("mode", "DCR")
                mode = mode.decode() if isinstance(mode, bytes) else mode
                shape = static_shape(n.inputs[0])
                b = int(n.attr("blocksize", 1))
                if mode != "CRD" or shape is None or len(shape) != 4 or shape[2] % b or shape[3] % b:
                    continue
                nb, c, h, w = shape
                c64 = lambda a: g.constant(np.array(a, dtype=np.int64), name="s2d_shape")  # noqa: E731
                with g.inserting_before(n):
                    t = g.op("Reshape", n.inputs[0], c64([nb, c, h // b, b, w // b, b]))
                    t = g.op("Transpose", t, perm=[0, 1, 3, 5, 2, 4])
                    out = g.op("Reshape", t, c64([nb, c * b * b, h // b, w // b]))
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
