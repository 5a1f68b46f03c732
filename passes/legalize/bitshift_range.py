"""`legalize-bitshift-range`: BitShift with out-of-range shift amounts, as opset 28 defines them.

ONNX (opset 28) defines shifts by a negative amount or by >= the bit width: LEFT gives 0, RIGHT
gives the sign fill (-1 for negative signed values, else 0). TVM lowers BitShift to LLVM shifts,
where those amounts are undefined (x86 takes the amount modulo the width). The rewrite keeps
TVM's shift for in-range amounts and selects the defined result otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import Model, Node

from ..base import Pass, register_pass
from ..util import constant_value, replace_value


def _guarded(n: Node) -> bool:
    """Whether `n` is already the shift this pass guards: its only use is Where(Less(s, w)[ And ...], n, fill)."""
    uses = n.outputs[0].uses()
    if len(uses) != 1 or uses[0][0].op_type != "Where" or uses[0][1] != 1:
        return False
    cond = uses[0][0].inputs[0].producer() if uses[0][0].inputs[0] is not None else None
    if cond is not None and cond.op_type == "And" and cond.inputs[0] is not None:
        cond = cond.inputs[0].producer()
    return cond is not None and cond.op_type == "Less" and cond.inputs[0] is n.inputs[1]


@register_pass
@dataclass(frozen=True)
class LegalizeBitShiftRange(Pass):
    """BitShift(x, s) -> Where(0 <= s < width, BitShift(x, s), spec value for out-of-range s)."""

    name = "legalize-bitshift-range"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type != "BitShift" or n.domain not in ("", "ai.onnx") or len(n.inputs) != 2:
                    continue
                x, s = n.inputs
                if x is None or s is None or x.dtype is None or _guarded(n):
                    continue
                dt = np.dtype(x.dtype.numpy())
                width = dt.itemsize * 8
                known = constant_value(s)
                if known is not None and ((known >= 0) & (known < width)).all():
                    continue  # constant in-range shifts (the usual case) need no guard
                direction = n.attr("direction", "LEFT")
                direction = direction.decode() if isinstance(direction, bytes) else direction
                c = lambda a: g.constant(np.asarray(a, dtype=dt), name="shift_const")  # noqa: E731
                with g.inserting_before(n):
                    shifted = g.op("BitShift", x, s, direction=direction)
                    ok = g.op("Less", s, c(width))
                    if dt.kind == "i":
                        ok = g.op("And", ok, g.op("GreaterOrEqual", s, c(0)))
                    if direction == "RIGHT" and dt.kind == "i":
                        fill = g.op("BitShift", x, c(width - 1), direction="RIGHT")  # the sign fill
                    else:
                        fill = c(0)
                    out = g.op("Where", ok, shifted, fill)
                out.type = n.outputs[0].type
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
