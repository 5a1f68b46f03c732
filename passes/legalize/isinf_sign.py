"""`legalize-isinf-sign`: IsInf with detect_negative=0 or detect_positive=0, for TVM.

TVM 0.27's IsInf converter ignores both attributes (it reports every infinity). The spec's
one-signed forms are IsInf(x) And x > 0 (detect_negative=0) and IsInf(x) And x < 0
(detect_positive=0); with both 0 the result is all false.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import Model

from ..base import Pass, register_pass
from ..util import replace_value


@register_pass
@dataclass(frozen=True)
class LegalizeIsInfSign(Pass):
    """IsInf(detect_negative=0 | detect_positive=0) -> And(IsInf(x), x > 0 | x < 0)."""

    name = "legalize-isinf-sign"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type != "IsInf" or n.domain not in ("", "ai.onnx") or n.inputs[0] is None:
                    continue
                neg, pos = int(n.attr("detect_negative", 1)), int(n.attr("detect_positive", 1))
                if (neg and pos) or n.inputs[0].dtype is None:
                    continue
                x = n.inputs[0]
                zero = g.constant(np.array(0, dtype=x.dtype.numpy()), name="isinf_zero")
                with g.inserting_before(n):
                    inf = g.op("IsInf", x)
                    if pos:
                        out = g.op("And", inf, g.op("Greater", x, zero))
                    elif neg:
                        out = g.op("And", inf, g.op("Less", x, zero))
                    else:
                        out = g.op("And", inf, g.op("Not", inf))
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
