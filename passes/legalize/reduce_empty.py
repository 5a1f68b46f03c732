"""`legalize-reduce-empty`: ReduceMax/ReduceMin over an empty axis as the constant the spec gives.

Reducing over an axis of static size 0 yields, by the spec, the reduction's identity: the lowest
value of the type for ReduceMax (-inf for floats), the highest for ReduceMin; the output depends
on shapes only. TVM 0.27 reads out of bounds instead. With a static input shape and constant axes
the output is that constant; anything else is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import Model

from ..base import Pass, register_pass
from ..util import constant_value, replace_value, static_shape


@register_pass
@dataclass(frozen=True)
class LegalizeReduceEmpty(Pass):
    """ReduceMax/ReduceMin with a static empty reduced axis -> a filled constant."""

    name = "legalize-reduce-empty"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type not in ("ReduceMax", "ReduceMin") or n.domain not in ("", "ai.onnx"):
                    continue
                shape = static_shape(n.inputs[0])
                if shape is None or 0 not in shape or n.inputs[0].dtype is None:
                    continue
                if len(n.inputs) > 1 and n.inputs[1] is not None:
                    axes_v = constant_value(n.inputs[1])
                    if axes_v is None:
                        continue
                    axes = [int(a) for a in np.asarray(axes_v).reshape(-1)]
                else:
                    axes = list(n.attr("axes", None) or [])
                if not axes:
                    if n.attr("noop_with_empty_axes", 0):
                        continue
                    axes = list(range(len(shape)))
                axes = [a + len(shape) if a < 0 else a for a in axes]
                if not any(shape[a] == 0 for a in axes):
                    continue
                keep = int(n.attr("keepdims", 1))
                out_shape = [1 if i in axes else d for i, d in enumerate(shape) if keep or i not in axes]
                dt = np.dtype(n.inputs[0].dtype.numpy())
                lowest = n.op_type == "ReduceMax"
                if dt.kind == "f":
                    fill = -np.inf if lowest else np.inf
                elif dt.kind in "iu":
                    fill = np.iinfo(dt).min if lowest else np.iinfo(dt).max
                else:
                    continue
                out = g.constant(np.full(out_shape, fill, dtype=dt), name="reduce_empty")
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
