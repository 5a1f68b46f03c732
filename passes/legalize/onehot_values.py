"""`legalize-onehot`: OneHot with run-time `values`, as Equal + Where, for TVM.

TVM 0.27's OneHot converter needs `depth` and `values` constant. `depth` fixes the output shape
(a static compiler needs it; it may be bound with bind-inputs), but `values` = [off, on] is data.
With a constant depth D the op is, per the spec: indices cast to int64, negative ones counted
from the end (i + D), then out = Where(Unsqueeze(idx, axis) == arange(D) along axis, on, off);
indices outside [-D, D) match nothing and give `off`, as the spec says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import DType, Model

from ..base import Pass, register_pass
from ..util import constant_value, is_constant, replace_value


@register_pass
@dataclass(frozen=True)
class LegalizeOneHot(Pass):
    """OneHot(indices, constant depth, non-constant values) -> Cast/Where/Equal/Where."""

    name = "legalize-onehot"
    idempotent = True

    def run(self, model: Model) -> bool:
        opset = model.opset("") or 17
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type != "OneHot" or n.domain not in ("", "ai.onnx") or len(n.inputs) != 3:
                    continue
                idx, depth_v, values = n.inputs
                depth = constant_value(depth_v)
                if idx is None or values is None or depth is None or is_constant(values) or idx.shape is None:
                    continue
                d = int(np.asarray(depth).reshape(-1)[0])
                rank = len(idx.shape.dims) + 1
                axis = int(n.attr("axis", -1))
                axis = axis + rank if axis < 0 else axis
                if not 0 <= axis < rank or d < 0:
                    continue
                c = lambda a: g.constant(np.asarray(a), name="onehot_const")  # noqa: E731
                rng = np.arange(d, dtype=np.int64).reshape([d if k == axis else 1 for k in range(rank)])
                with g.inserting_before(n):
                    i64 = g.op("Cast", idx, to=int(DType.INT64))
                    i64 = g.op("Where", g.op("Less", i64, c(np.int64(0))), g.op("Add", i64, c(np.int64(d))), i64)
                    u = (g.op("Unsqueeze", i64, c([axis])) if opset >= 13 else g.op("Unsqueeze", i64, axes=[axis]))
                    hit = g.op("Equal", u, c(rng))
                    off = g.op("Gather", values, c(np.int64(0)), axis=0)
                    on = g.op("Gather", values, c(np.int64(1)), axis=0)
                    out = g.op("Where", hit, on, off)
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
