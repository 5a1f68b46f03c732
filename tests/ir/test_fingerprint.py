"""`lepton_ir.fingerprint`: equal for the same model in the same state, different after any edit a
pass could make (nodes, attributes, wiring, names, types, interface, metadata, subgraphs,
functions, constants)."""

from __future__ import annotations

import gc
from typing import Callable

import numpy as np
import pytest
from onnx import TensorProto, helper

import lepton_ir
from lepton_ir import ArrayTensor, Attr, AttrType, DType, Model, Node, Shape, TensorType
from lepton_ir.clone import clone_model
from lepton_ir.fingerprint import Fingerprint, fingerprint


def make_model() -> Model:
    """y = If(c, then: Neg(a), else: Abs(a)) with a = Add(x, b); a local function `lib::Twice`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    then_g = helper.make_graph([helper.make_node("Neg", ["a"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 3])])
    else_g = helper.make_graph([helper.make_node("Abs", ["a"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 3])])
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add"),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Twice", ["a"], ["z"], domain="lib", alpha=2.0)]
    g = helper.make_graph(nodes, "g", [x, c], [y, z], [b])
    twice = helper.make_function("lib", "Twice", ["u"], ["v"], [helper.make_node("Add", ["u", "u"], ["v"])],
                                 [helper.make_opsetid("", 17)], attributes=["alpha"])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("lib", 1)],
                              functions=[twice])
    return lepton_ir.load(proto)


def node(m: Model, op: str) -> Node:
    return next(n for n in m.graph.all_nodes() if n.op_type == op)


def test_equal_for_the_same_model_only() -> None:
    m = make_model()
    fp = fingerprint(m)
    assert isinstance(fp, Fingerprint)
    assert fp == fingerprint(m) and hash(fp) == hash(fingerprint(m))
    lepton_ir.to_onnx(m)
    lepton_ir.to_text(m)
    assert fingerprint(m) == fp  # exporting and printing leave the model as it was
    # Objects enter by identity (as MLIR's operation pointers): a copy is another model.
    assert fingerprint(clone_model(m)) != fp
    assert fingerprint(make_model()) != fp


def _set_attr(m: Model) -> None:
    node(m, "Add").set_attr("note", 1)


def _swap_inputs(m: Model) -> None:
    n = node(m, "Add")
    a, b = n.inputs
    n.set_inputs([b, a])


def _rewire_to_same_name(m: Model) -> None:
    # Another value with the very same name and type: only which value is read differs.
    n = node(m, "Add")
    old = n.inputs[0]
    n.replace_input(0, lepton_ir.Value(old.name, old.type))


def _remove_initializer(m: Model) -> None:
    node(m, "Add").replace_input(1, m.graph.inputs[0])
    m.graph.remove_initializer("b")


def _move_node(m: Model) -> None:
    g = m.graph
    twice = node(m, "Twice")
    g.remove(twice, safe=False)
    g.insert_before(node(m, "If"), twice)


def _edit_subgraph(m: Model) -> None:
    node(m, "Neg").op_type = "Relu"


def _edit_subgraph_attr(m: Model) -> None:
    node(m, "Abs").set_attr("dummy", [1.0, 2.0])


def _edit_function(m: Model) -> None:
    f = next(iter(m.functions.values()))
    next(iter(f.graph)).op_type = "Mul"


def _new_equal_constant(m: Model) -> None:
    v = m.graph.initializers["b"]
    v.const = ArrayTensor(np.array(v.const.numpy()))


EDITS: dict[str, Callable[[Model], None]] = {
    "op_type": lambda m: setattr(node(m, "Add"), "op_type", "Sub"),
    "domain": lambda m: setattr(node(m, "Twice"), "domain", "lib2"),
    "overload": lambda m: setattr(node(m, "Twice"), "overload", "v2"),
    "node name": lambda m: setattr(node(m, "Add"), "name", "plus"),
    "attribute added": _set_attr,
    "attribute value": lambda m: node(m, "Twice").set_attr("alpha", 3.0),
    "attribute value, last bit": lambda m: node(m, "Twice").attrs.__setitem__(
        "alpha", Attr("alpha", AttrType.FLOAT, float(np.nextafter(2.0, 3.0)))),
    "input order": _swap_inputs,
    "wiring, same name": _rewire_to_same_name,
    "node order": _move_node,
    "value name": lambda m: setattr(node(m, "Add").outputs[0], "name", "sum"),
    "value type": lambda m: setattr(node(m, "Add").outputs[0], "type", TensorType(DType.FLOAT, Shape((4, 3)))),
    "graph output": lambda m: m.graph.outputs.pop(),
    "graph input type": lambda m: setattr(m.graph.inputs[0], "type", TensorType(DType.FLOAT, Shape((2, 3)))),
    "initializer removed": _remove_initializer,
    "constant replaced by an equal one": _new_equal_constant,
    "subgraph node": _edit_subgraph,
    "subgraph attribute": _edit_subgraph_attr,
    "function body": _edit_function,
    "function removed": lambda m: m.functions.clear(),
    "opset import": lambda m: m.opset_imports.__setitem__("", 18),
    "metadata": lambda m: m.metadata_props.__setitem__("k", "v"),
    "producer": lambda m: setattr(m, "producer_name", "someone"),
    "graph doc": lambda m: setattr(m.graph, "doc", "hello"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_every_kind_of_edit_changes_the_fingerprint(edit: str) -> None:
    m = make_model()
    before = fingerprint(m)
    EDITS[edit](m)
    assert fingerprint(m) != before


def test_wiring_of_unnamed_values_and_look_alike_nodes() -> None:
    g = lepton_ir.Graph("g")
    x = g.add_input(lepton_ir.Value("x", TensorType(DType.FLOAT, Shape((2,)))))
    p, q = g.op("Neg", x), g.op("Abs", x)
    p.name = q.name = None  # no names to tell them apart
    g.outputs.append(g.op("Sub", p, q))
    m = Model(g)
    before = fingerprint(m)
    sub = node(m, "Sub")
    sub.set_inputs([q, p])
    assert fingerprint(m) != before
    sub.set_inputs([p, q])
    assert fingerprint(m) == before  # back as it was
    # A node replaced by a new one of the same op, inputs and output name is a change.
    neg = node(m, "Neg")
    twin = Node("Neg", [x])
    g.insert_before(neg, twin)
    twin.outputs[0].name, twin.outputs[0].type = p.name, p.type
    p.replace_all_uses_with(twin.outputs[0])
    g.remove(neg)
    assert [n.op_type for n in g] == ["Neg", "Abs", "Sub"]
    assert fingerprint(m) != before


def test_float_attributes_compare_by_bits() -> None:
    m = make_model()
    twice = node(m, "Twice")
    twice.set_attr("alpha", float("nan"))
    before = fingerprint(m)
    twice.set_attr("alpha", float("nan"))  # a new NaN object: NaN != NaN, but the bits are equal
    assert fingerprint(m) == before
    twice.set_attr("alpha", 0.0)
    zero = fingerprint(m)
    twice.set_attr("alpha", -0.0)  # 0.0 == -0.0, but the model says something else
    assert fingerprint(m) != zero


def test_the_fingerprint_keeps_hashed_tensors_alive_so_ids_are_not_reused() -> None:
    # Replace a constant by an equal new tensor after dropping every other reference to the old
    # one. Were the old tensor freed, CPython would tend to place the new one at its address (same
    # id) and the change would go unseen.
    m = make_model()
    v = m.graph.initializers["b"]
    v.const = ArrayTensor(np.array([1.0, 2.0, 3.0], np.float32))
    before = fingerprint(m)
    for _ in range(20):
        v.const = ArrayTensor(np.array([1.0, 2.0, 3.0], np.float32))
        gc.collect()
        assert fingerprint(m) != before


def test_cost_is_linear_in_nodes_not_weights() -> None:
    # One huge constant and a few nodes: hashing must not touch the bytes.
    g = lepton_ir.Graph("g")
    x = g.add_input(lepton_ir.Value("x", TensorType(DType.FLOAT, Shape((4096, 4096)))))
    w = g.constant(np.zeros((4096, 4096), np.float32), "w")  # 64 MiB
    g.outputs.append(g.op("Add", x, w))
    m = Model(g)
    import time

    t0 = time.perf_counter()
    for _ in range(50):
        fingerprint(m)
    assert (time.perf_counter() - t0) / 50 < 0.005  # reading 64 MiB takes ~10 ms or more
