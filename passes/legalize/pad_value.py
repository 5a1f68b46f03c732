"""`legalize-pad-value`: constant-mode Pad whose constant_value is a run-time input, for TVM.

TVM 0.27's Pad converter reads constant_value as a constant. The padded value is data, so it is
not bound; instead: out = Where(mask, Pad(x, pads), value), where mask = Pad(ones_like(x), pads)
is 1 on the copied elements and 0 on the padding. Exact for any value (inf/NaN included).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import DType, Model

from ..base import Pass, register_pass
from ..util import is_constant, replace_value


@register_pass
@dataclass(frozen=True)
class LegalizePadValue(Pass):
    """Pad(x, pads, non-constant value[, axes]) -> Where(Pad(ones), Pad(x, pads), value)."""

    name = "legalize-pad-value"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type != "Pad" or n.domain not in ("", "ai.onnx") or len(n.inputs) < 3:
                    continue
                x, pads, value = n.inputs[:3]
                axes = n.inputs[3] if len(n.inputs) > 3 else None
                mode = n.attr("mode", "constant")
                mode = mode.decode() if isinstance(mode, bytes) else mode
                if x is None or value is None or is_constant(value) or mode != "constant" or x.dtype is None:
                    continue
                rest = [pads, None] + ([axes] if axes is not None else [])
                with g.inserting_before(n):
                    one = g.constant(np.array(1, dtype=x.dtype.numpy()), name="pad_one")
                    ones = g.op("Expand", one, g.op("Shape", x))
                    mask = g.op("Cast", g.op("Pad", ones, *rest, mode="constant"), to=int(DType.BOOL))
                    out = g.op("Where", mask, g.op("Pad", x, *rest, mode="constant"), value)
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
