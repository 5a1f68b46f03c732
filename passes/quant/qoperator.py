"""`qdq-to-qoperator`: turn QDQ groups into explicit integer operators.

    DQ(x) -> Conv(DQ(w), DQ(b)) -> Q   ==>  QLinearConv(x_q, .., w_q, .., y_s, y_zp, b_q)
    DQ(a) -> MatMul(DQ(b))      -> Q   ==>  QLinearMatMul(a_q, .., b_q, .., y_s, y_zp)

ONNX Runtime performs the same fusion itself at session creation; this pass makes it explicit in
the IR for backends that do not (and for inspection). A group is converted only when the op's output
feeds nothing but its QuantizeLinear and every DequantizeLinear has the expected shape of
parameters (the bias int32 with zero point 0, as quant8 produces). Dead DequantizeLinear nodes and
constants are removed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import Model, Node, Value

from ..base import Pass, register_pass
from ..util import constant_value, replace_value
from .tolerance import qdq_tolerance


def _dq(v: Value | None) -> Node | None:
    p = v.producer() if v is not None else None
    return p if p is not None and p.op_type == "DequantizeLinear" and len(p.inputs) >= 3 and p.inputs[2] is not None \
        else None


@register_pass
@dataclass(frozen=True)
class QdqToQOperator(Pass):
    """Convert QDQ Conv/MatMul groups into QLinearConv/QLinearMatMul."""

    name = "qdq-to-qoperator"
    idempotent = True

    def tolerance(self, model: Model) -> tuple[float, float]:
        """The integer kernels compute the QDQ form's result up to the requantization rounding of
        each op (at most one output step where the QDQ simulation and the kernel round differently),
        so the derived QDQ bound applies with k = 2 (see tolerance.py)."""
        return qdq_tolerance(model, 2.0)

    def run(self, model: Model) -> bool:
        g = model.graph
        changed = False
        for n in list(g):
            if n.op_type not in ("Conv", "MatMul") or n.domain not in ("", "ai.onnx") or n.graph is not g:
                continue
            out = n.outputs[0]
            users = out.users()
            if len(users) != 1 or users[0].op_type != "QuantizeLinear" or out.is_graph_output():
                continue
            q = users[0]
            dx, dw = _dq(n.inputs[0]), _dq(n.inputs[1])
            if dx is None or dw is None or len(q.inputs) < 3 or q.inputs[2] is None:
                continue
            if dx.attr("axis") is not None and np.size(constant_value(dx.inputs[1])) != 1:
                continue
            xq, xs, xz = dx.inputs[:3]
            wq, ws, wz = dw.inputs[:3]
            ys, yz = q.inputs[1], q.inputs[2]
            if n.op_type == "Conv":
                ins = [xq, xs, xz, wq, ws, wz, ys, yz]
                if len(n.inputs) > 2 and n.inputs[2] is not None:
                    db = _dq(n.inputs[2])
                    bq = constant_value(db.inputs[0]) if db is not None else None
                    if bq is None or bq.dtype != np.int32:
                        continue
                    ins.append(db.inputs[0])
                new = Node("QLinearConv", ins, {k: a for k, a in n.attrs.items()}, name=n.name)
            else:
                if np.size(constant_value(ws)) not in (1, (wq.shape.dims[-1] if wq.shape is not None else -1)):
                    continue
                new = Node("QLinearMatMul", [xq, xs, xz, wq, ws, wz, ys, yz], name=n.name)
            new.outputs[0].type = q.outputs[0].type
            g.insert_before(q, new)
            replace_value(q.outputs[0], new.outputs[0])
            g.remove(q)
            g.remove(n)
            changed = True
        if changed:
            # Drop DequantizeLinear nodes and constants nothing reads any more.
            for node in list(g):
                if node.op_type == "DequantizeLinear" and not any(o.num_uses() or o.is_graph_output() for o in node.outputs):
                    g.remove(node)
            for name, v in list(g.initializers.items()):
                if not v.num_uses() and not v.is_graph_output() and v not in g.inputs:
                    g.remove_initializer(name)
        return changed
