"""`legalize-lp-normalization`: LpNormalization as x / ReduceL{1,2}(x, axis, keepdims), for TVM.

TVM 0.27's importer has no LpNormalization. The spec's definition is x divided by its L1 or L2
norm along `axis` (default -1), with all-zero slices left at zero; p must be 1 or 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import Model

from ..base import Pass, register_pass
from ..util import replace_value


@register_pass
@dataclass(frozen=True)
class LegalizeLpNormalization(Pass):
    """LpNormalization(p=1|2) -> Div(x, ReduceL1|ReduceL2(x, [axis], keepdims=1))."""

    name = "legalize-lp-normalization"
    idempotent = True

    def run(self, model: Model) -> bool:
        opset = model.opset("") or 17
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if (n.op_type != "LpNormalization" or n.domain not in ("", "ai.onnx") or n.inputs[0] is None
                        or n.inputs[0].dtype is None):
                    continue
                p, axis = int(n.attr("p", 2)), int(n.attr("axis", -1))
                if p not in (1, 2):
                    continue
                reduce = "ReduceL2" if p == 2 else "ReduceL1"
                x = n.inputs[0]
                with g.inserting_before(n):
                    if opset >= 18:  # axes became an input of the Reduce ops in opset 18
                        norm = g.op(reduce, x, g.constant(np.array([axis], np.int64), name="lp_axes"), keepdims=1)
                    else:
                        norm = g.op(reduce, x, axes=[axis], keepdims=1)
                    # A zero norm means an all-zero slice, which the spec (and ORT) leave at 0, not
                    # 0/0 = NaN: divide those by 1 instead.
                    zero = g.constant(np.array(0, dtype=x.dtype.numpy()), name="lp_zero")
                    one = g.constant(np.array(1, dtype=x.dtype.numpy()), name="lp_one")
                    out = g.op("Div", x, g.op("Where", g.op("Equal", norm, zero), one, norm))
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
