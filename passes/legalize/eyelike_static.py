"""`legalize-eyelike`: EyeLike of a statically shaped input as the constant it is, for TVM.

EyeLike's output depends only on its input's shape (and the `dtype`/`k` attributes), never on its
values; TVM 0.27's converter mishandles the `dtype` attribute. With a static input shape the
output is np.eye(rows, cols, k) in the requested type -- what constant folding of a shape-only op
gives any compiler. Inputs of unknown shape are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import DType, Model

from ..base import Pass, register_pass
from ..util import replace_value, static_shape


@register_pass
@dataclass(frozen=True)
class LegalizeEyeLike(Pass):
    """EyeLike(x with a static 2-D shape) -> a constant identity-like matrix."""

    name = "legalize-eyelike"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in list(g):
                if n.op_type != "EyeLike" or n.domain not in ("", "ai.onnx") or n.inputs[0] is None:
                    continue
                shape = static_shape(n.inputs[0])
                code = n.attr("dtype", None)
                dtype = DType(int(code)) if code is not None else n.inputs[0].dtype
                if shape is None or len(shape) != 2 or dtype is None:
                    continue
                arr = np.eye(shape[0], shape[1], k=int(n.attr("k", 0)), dtype=dtype.numpy())
                out = g.constant(arr, name="eyelike")
                replace_value(n.outputs[0], out)
                g.remove(n)
                changed = True
        return changed
