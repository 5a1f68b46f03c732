"""Small helpers shared by passes: constants, value replacement that keeps the model interface."""

from __future__ import annotations

from typing import Any

import numpy as np

from lepton_ir import ArrayTensor, AttrType, Graph, Node, Tensor, TensorType, Value

_CONSTANT_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints", "value_string",
                   "value_strings")


def constant_tensor(v: Value | None) -> Tensor | None:
    """The constant behind `v`, if it is one: an initializer that is not also a graph input (those
    can be overridden at run time), or the output of a dense `Constant` node."""
    if v is None:
        return None
    if v.const is not None:
        g = v.graph
        if g is not None and any(i is v for i in g.inputs):
            return None
        return v.const
    p = v.producer()
    if p is not None and p.op_type == "Constant" and p.domain == "" and len(p.attrs) == 1:
        a = next(iter(p.attrs.values()))
        if a.ref is not None:
            return None
        if a.name == "value" and a.type == AttrType.TENSOR:
            return a.value
        if a.name == "value_float":
            return ArrayTensor(np.array(a.value, dtype=np.float32))
        if a.name == "value_floats":
            return ArrayTensor(np.array(a.value, dtype=np.float32))
        if a.name == "value_int":
            return ArrayTensor(np.array(a.value, dtype=np.int64))
        if a.name == "value_ints":
            return ArrayTensor(np.array(a.value, dtype=np.int64))
    return None


def constant_value(v: Value | None) -> np.ndarray | None:
    """`constant_tensor(v)` as numpy, or None."""
    t = constant_tensor(v)
    if t is None:
        return None
    try:
        return t.numpy()
    except Exception:  # e.g. a summarised placeholder from the text form
        return None


def is_constant(v: Value | None) -> bool:
    return constant_tensor(v) is not None


def replace_value(old: Value, new: Value) -> None:
    """Make all users and graph outputs read `new` instead of `old`, keeping output names.

    A graph output's name is part of the model's interface. If `old` is a graph output, `new` takes
    its name, unless `new` is itself an input, initializer or another output (then an Identity keeps
    the interface).
    """
    g = old.graph
    was_output = g is not None and old.is_graph_output()
    if not was_output:
        old.replace_all_uses_with(new)
        return
    old.replace_all_uses_with(new, outputs=False)
    needs_copy = new.producer() is None or new.is_graph_output() or new.graph is not g
    if needs_copy:
        ident = Node("Identity", [new])
        ident.outputs[0].type = old.type or new.type
        anchor = old.producer()
        if anchor is not None and anchor.graph is g:
            g.insert_after(anchor, ident)
        else:
            g.append(ident)
        target = ident.outputs[0]
    else:
        target = new
    name = old.name
    if target.type is None:
        target.type = old.type
    for k, o in enumerate(g.outputs):
        if o is old:
            g.outputs[k] = target
    old.name = None if name else old.name
    target.name = name
    if "declared_output_type" in old.meta:
        target.meta["declared_output_type"] = old.meta["declared_output_type"]
    if "output_doc" in old.meta:
        target.meta["output_doc"] = old.meta["output_doc"]


def add_constant(graph: Graph, array: Any, base: str = "const") -> Value:
    """A new initializer (fresh name) in the outermost graph would be visible everywhere, but
    subgraph constants are kept local so a subgraph stays self-contained."""
    return graph.constant(np.asarray(array), name=base)


def tensor_type_of(v: Value) -> TensorType | None:
    return v.type if isinstance(v.type, TensorType) else None


def static_shape(v: Value | None) -> tuple[int, ...] | None:
    t = tensor_type_of(v) if v is not None else None
    if t is None or t.shape is None or not t.shape.is_static:
        return None
    return tuple(t.shape.dims)  # type: ignore[arg-type]


def splice(node: Node, body: Graph, inputs: dict[int, Value], attr_env: Any = None) -> None:
    """Replace `node` by a copy of `body`'s nodes (function inlining, If folding, op expansion).

    `inputs` maps id(formal value of `body`) -> the value to read instead (it is extended with the
    copies). `attr_env` resolves attribute references. The node's outputs are replaced by the
    copies of `body`'s outputs, keeping graph-output names; an output `body` leaves undefined (an
    omitted optional output) must be unused. Then `node` is removed.
    """
    from lepton_ir.clone import clone_node

    g = node.graph
    assert g is not None
    with g.inserting_before(node):
        for n in body:
            g.append(clone_node(n, inputs, attr_env))
    for res, out in zip(body.outputs, node.outputs):
        new = inputs.get(id(res), res if res.graph is not body else None)  # outer values pass through
        if new is None:
            continue
        if new.type is None:
            new.type = out.type
        replace_value(out, new)
    g.remove(node)


def unfuse(model: Any) -> bool:
    """Lower `ai.lepton` fused ops back to standard ONNX ops (for passes that work on standard
    ops, e.g. quantization: QDQ wraps a Conv and its activation separately, and every int8
    kernel re-fuses the activation into its requantization). Returns whether anything changed."""
    if not any(n.domain == "ai.lepton" for n in model.graph.all_nodes()):
        return False
    from .base import get_pass

    return get_pass("lower-fused-to-standard")().run(model)


def infer_types_changed(model: Any) -> bool:
    """`lepton_ir.infer_types(model)`; True if it refined any type.

    A pass that infers types before deciding whether it has work has changed the model even when
    it rewrites nothing: it must report that (the PassManager compares fingerprints, and value
    types are part of them).
    """
    from lepton_ir import infer_types
    from lepton_ir.fingerprint import fingerprint

    before = fingerprint(model)
    infer_types(model)
    return fingerprint(model) != before
