"""`legalize-cumprod`: CumProd (opset 26) unrolled along a static axis into Slice/Mul/Concat, for TVM.

TVM 0.27's importer has no CumProd. With a constant `axis` and a static length L along it, the op
is the running product written out: p_0 = x_0, p_i = p_{i-1} * x_i, multiplied in the same order
as the reference, so float results are bit-identical. `exclusive` shifts the products by one
(starting from 1), `reverse` runs from the end. Lengths above `max_len` are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lepton_ir import Model

from ..base import Pass, register_pass
from ..util import constant_value, replace_value


@register_pass
@dataclass(frozen=True)
class LegalizeCumProd(Pass):
    """CumProd with constant axis and static length -> Slice, Mul and Concat."""

    name = "legalize-cumprod"
    idempotent = True
    max_len: int = field(default=64, metadata={"help": "leave longer scans alone"})

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type != "CumProd" or n.domain not in ("", "ai.onnx") or len(n.inputs) < 2:
                    continue
                x, axis_v = n.inputs[0], constant_value(n.inputs[1])
                if x is None or axis_v is None or x.shape is None or x.dtype is None:
                    continue
                dims = list(x.shape.dims)
                axis = int(np.asarray(axis_v).reshape(-1)[0])
                axis = axis + len(dims) if axis < 0 else axis
                if not 0 <= axis < len(dims) or not isinstance(dims[axis], int) or not 0 < dims[axis] <= self.max_len:
                    continue
                length = dims[axis]
                order = list(range(length))[::-1] if n.attr("reverse", 0) else list(range(length))
                c = lambda a: g.constant(np.asarray(a), name="cumprod_const")  # noqa: E731
                with g.inserting_before(n):
                    parts = {i: g.op("Slice", x, c([i]), c([i + 1]), c([axis])) for i in order}
                    outs: dict[int, object] = {}
                    acc = None
                    for i in order:
                        if n.attr("exclusive", 0):
                            outs[i] = acc if acc is not None else g.op(
                                "Expand", c(np.array(1, dtype=x.dtype.numpy())), g.op("Shape", parts[i]))
                        acc = parts[i] if acc is None else g.op("Mul", acc, parts[i])
                        if not n.attr("exclusive", 0):
                            outs[i] = acc
                    out = outs[0] if length == 1 else g.op("Concat", *[outs[i] for i in range(length)], axis=axis)
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
