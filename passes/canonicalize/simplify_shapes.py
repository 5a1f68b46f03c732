"""`simplify-shapes`: replace Shape/Size of statically known shapes by constants.

Exported models compute reshape targets at run time (Shape -> Gather -> Unsqueeze -> Concat ->
Reshape). Where the shapes are known (static, or pinned with `--input-shape`), `Shape` becomes a
constant and `fold-constants` folds the rest of the chain, leaving a Reshape with a constant
target that every backend understands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import Model, Node, Value

from ..base import Pass, register_pass
from ..rewrite import TableRule, apply_rules
from ..util import constant_value


def _shape_slice(n: Node) -> tuple[int, ...] | None:
    s = n.inputs[0].shape if n.inputs[0] is not None else None
    if s is None:
        return None
    r = len(s)
    start = n.attr("start", 0)
    end = n.attr("end", r)
    start = max(0, min(r, start + r if start < 0 else start))
    end = max(0, min(r, end + r if end < 0 else end))
    dims = s.dims[start:end]
    if not all(isinstance(d, int) for d in dims):
        return None
    return tuple(dims)  # type: ignore[return-value]


def _shape_const(n: Node) -> Value:
    dims = _shape_slice(n)
    assert n.graph is not None
    return n.graph.constant(np.array(dims, dtype=np.int64), name=(n.outputs[0].name or "shape"))


def _size_const(n: Node) -> Value:
    assert n.graph is not None
    return n.graph.constant(np.array(n.inputs[0].shape.numel(), dtype=np.int64), name="size")


def _picked_dims(n: Node) -> np.ndarray | None:
    """For Gather(Shape(x), const idx) along axis 0: the picked dims, if all are known ints."""
    src = n.inputs[0]
    p = src.producer() if src is not None else None
    if p is None or p.op_type != "Shape" or p.attrs or n.attr("axis", 0) != 0:
        return None
    idx = constant_value(n.inputs[1])
    s = p.inputs[0].shape
    if idx is None or s is None:
        return None
    dims = s.dims
    flat = np.asarray(idx).ravel().tolist()
    if any(not -len(dims) <= i < len(dims) for i in flat):
        return None
    picked = [dims[i] for i in flat]
    if not all(isinstance(d, int) for d in picked):
        return None
    return np.array(picked, dtype=np.int64).reshape(np.shape(idx))


def _gather_const(n: Node) -> Value:
    assert n.graph is not None
    return n.graph.constant(_picked_dims(n), name="dims")


def _range_one_element_operands(n: Node) -> bool:
    """Range takes scalars; exporters (and onnx's own AffineGrid function body) feed it 1-element
    1-D tensors, which runtimes accept only while they cannot see the shape. Once folding makes the
    shape visible, ONNX Runtime rejects the model, so canonicalize makes the operands scalars."""
    return any(v is not None and v.shape is not None and tuple(v.shape.dims) == (1,) for v in n.inputs)


def _range_with_scalars(n: Node) -> Value:
    g = n.graph
    assert g is not None
    ins = []
    with g.inserting_before(n):
        for v in n.inputs:
            if v is not None and v.shape is not None and tuple(v.shape.dims) == (1,):
                sq = g.op("Squeeze", v)
                sq.type = type(v.type)(v.type.dtype, type(v.shape)(()))
                ins.append(sq)
            else:
                ins.append(v)
        out = g.op("Range", *ins)
    return out


RULES = [
    TableRule("Shape", lambda n: _shape_slice(n) is not None, _shape_const, name="shape-of-static"),
    TableRule("Size", lambda n: n.inputs[0].shape is not None and n.inputs[0].shape.is_static, _size_const,
              name="size-of-static"),
    TableRule("Gather", lambda n: _picked_dims(n) is not None, _gather_const, name="gather-of-shape"),
    TableRule("Range", _range_one_element_operands, _range_with_scalars, name="range-scalar-operands"),
]


@register_pass
@dataclass(frozen=True)
class SimplifyShapes(Pass):
    """Turn Shape/Size (and Gather of Shape) of known dims into constants, so shape chains fold."""

    name = "simplify-shapes"
    idempotent = True

    def run(self, model: Model) -> bool:
        return apply_rules(model, RULES).changed
