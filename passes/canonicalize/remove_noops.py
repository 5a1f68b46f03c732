"""`remove-noops`: drop nodes that return their input unchanged (a table of one-line rules)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import Model, Node

from ..base import Pass, register_pass
from ..rewrite import TableRule, apply_rules
from ..util import constant_value, static_shape


def _same_static_shape(n: Node) -> bool:
    a, b = static_shape(n.inputs[0]), static_shape(n.outputs[0])
    return a is not None and a == b and n.inputs[0].dtype == n.outputs[0].dtype


def _interface_safe(n: Node) -> bool | str:
    """Removing `n` must not make a graph output alias an input, initializer, outer value or
    another output: then an Identity is needed anyway."""
    out, src = n.outputs[0], n.inputs[0] if n.inputs else None
    if src is None:
        return "no input"
    if out.is_graph_output() and (src.producer() is None or src.is_graph_output() or src.graph is not out.graph):
        return "output is a graph output that would alias an input or another output"
    return True


def _both(pred):
    def check(n: Node) -> bool | str:
        ok = _interface_safe(n)
        if ok is not True:
            return ok
        return pred(n)
    return check


def _const_all(v, pred) -> bool:
    a = constant_value(v)
    return a is not None and bool(pred(a))


def _dropout_is_noop(n: Node) -> bool:
    if len(n.outputs) > 1 and (n.outputs[1].num_uses() or n.outputs[1].is_graph_output()):
        return False
    if n.attr("is_test") is not None:  # opset < 7
        return bool(n.attr("is_test"))
    training = n.inputs[2] if len(n.inputs) > 2 else None
    return training is None or _const_all(training, lambda a: not a.any())


def _transpose_noop(n: Node) -> bool:
    perm = n.attr("perm")
    if perm is None:
        s = n.inputs[0].shape
        return s is not None and len(s) <= 1
    return list(perm) == list(range(len(perm)))


def _pad_noop(n: Node) -> bool:
    pads = n.attr("pads") if len(n.inputs) < 2 else constant_value(n.inputs[1])
    return pads is not None and not np.any(np.asarray(pads))


def _slice_noop(n: Node) -> bool:
    steps = n.inputs[4] if len(n.inputs) > 4 else None
    if steps is not None and not _const_all(steps, lambda a: (a == 1).all()):
        return False
    return _same_static_shape(n)


def _tile_noop(n: Node) -> bool:
    return _const_all(n.inputs[1], lambda a: (a == 1).all())


def _single_input(n: Node) -> bool:
    return len([v for v in n.inputs if v is not None]) == 1 and len(n.inputs) == 1


RULES = [
    TableRule("Identity", _both(lambda n: True)),
    TableRule("Dropout", _both(_dropout_is_noop)),
    TableRule("Cast", _both(lambda n: n.inputs[0].dtype is not None and n.attr("to") == int(n.inputs[0].dtype))),
    TableRule("CastLike", _both(lambda n: n.inputs[0].dtype is not None and n.inputs[0].dtype == n.inputs[1].dtype)),
    TableRule("Transpose", _both(_transpose_noop)),
    TableRule("Reshape", _both(_same_static_shape)),
    TableRule("Expand", _both(_same_static_shape)),
    TableRule("Squeeze", _both(_same_static_shape)),
    TableRule("Unsqueeze", _both(_same_static_shape)),
    TableRule("Flatten", _both(_same_static_shape)),
    TableRule("Pad", _both(lambda n: _pad_noop(n) and _same_static_shape(n))),
    TableRule("Slice", _both(_slice_noop)),
    TableRule("Tile", _both(_tile_noop)),
    TableRule("Concat", _both(_single_input)),
    TableRule("Sum", _both(_single_input)),
    TableRule("Mean", _both(_single_input)),
    TableRule("Max", _both(_single_input)),
    TableRule("Min", _both(_single_input)),
]


@register_pass
@dataclass(frozen=True)
class RemoveNoops(Pass):
    """Remove Identity, inference Dropout, and Cast/Transpose/Reshape/Pad/Slice/Expand/... that change nothing."""

    name = "remove-noops"
    idempotent = True

    def run(self, model: Model) -> bool:
        return apply_rules(model, RULES).changed
