"""The IR's mutation API and the invariants `verify()` guards.

Every mutation must leave use lists exact (`Value.uses()` equals what the node inputs say), node
lists consistent, and `verify()` must catch each deliberately broken invariant with a message that
says where (graph, node, value).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_ir
from lepton_ir import (DType, Graph, LeptonError, Model, Node, Shape, TensorType, Value, VerifyError,
                       infer_types, pin_input_shapes)
from lepton_ir.clone import clone_graph
from lepton_ir.reference import ort_session

F32 = DType.FLOAT


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def uses_consistent(g: Graph) -> None:
    """Use lists of every value in `g` (and its subgraphs) equal exactly what node inputs say."""
    expected: dict[int, set[tuple[int, int]]] = {}
    values: dict[int, Value] = {}
    for sub in g.all_graphs():
        for v in sub.values():
            values[id(v)] = v
            expected.setdefault(id(v), set())
    for n in g.all_nodes():
        for i, v in enumerate(n.inputs):
            if v is not None:
                values[id(v)] = v
                expected.setdefault(id(v), set()).add((id(n), i))
    for k, v in values.items():
        got = {(id(n), i) for n, i in v.uses()}
        assert got == expected[k], f"use list of {v!r} is {v.uses()}"


def tensor_in(g: Graph, name: str, shape=(2, 3)) -> Value:
    return g.add_input(Value(name, TensorType(F32, Shape(shape))))


def chain() -> tuple[Graph, Value, Node, Node, Node]:
    """x -> Relu(a) -> Neg(b) -> Abs(c) = output."""
    g = Graph("main")
    x = tensor_in(g, "x")
    a = g.op("Relu", x, name="relu")
    b = g.op("Neg", a, name="neg")
    c = g.op("Abs", b, name="abs")
    c.name = "c"
    g.outputs.append(c)
    return g, x, a.producer(), b.producer(), c.producer()


# ------------------------------------------------------------------------------------------------
# use lists
# ------------------------------------------------------------------------------------------------
def test_use_lists_after_construction() -> None:
    g, x, relu, neg, abs_ = chain()
    assert x.uses() == [(relu, 0)]
    assert relu.output.uses() == [(neg, 0)]
    assert relu.output.users() == [neg]
    uses_consistent(g)
    g.verify()


def test_replace_input() -> None:
    g, x, relu, neg, abs_ = chain()
    neg.replace_input(0, x)
    assert relu.output.uses() == []
    assert set(x.uses()) == {(relu, 0), (neg, 0)}
    neg.replace_input(0, x)  # no-op
    assert x.num_uses() == 2
    neg.replace_input(0, None)  # omitted optional input
    assert neg.inputs == (None,) and x.uses() == [(relu, 0)]
    uses_consistent(g)


def test_same_value_twice_in_one_node() -> None:
    g = Graph("g")
    x = tensor_in(g, "x")
    y = g.op("Add", x, x)
    assert x.uses() == [(y.producer(), 0), (y.producer(), 1)]
    assert x.users() == [y.producer()]
    y.producer().replace_input(1, None)
    assert x.uses() == [(y.producer(), 0)]
    uses_consistent(g)


def test_replace_all_uses_with_including_outputs() -> None:
    g, x, relu, neg, abs_ = chain()
    other = g.op("Sigmoid", relu.output)
    abs_.output.replace_all_uses_with(other)
    assert g.outputs == [other]
    relu.output.replace_all_uses_with(x)
    assert relu.output.num_uses() == 0
    assert {n.op_type for n, _ in x.uses()} == {"Relu", "Neg", "Sigmoid"}
    uses_consistent(g)
    g.remove(relu)
    g.remove(abs_)
    g.sort()
    g.verify()


def test_replace_all_uses_without_outputs() -> None:
    g, x, relu, neg, abs_ = chain()
    y = g.op("Identity", abs_.output)
    abs_.output.replace_all_uses_with(x, outputs=False)
    assert g.outputs == [abs_.output] and y.producer().inputs == (x,)
    relu.output.replace_all_uses_with(relu.output)  # self: no-op
    uses_consistent(g)


def test_set_inputs_and_append_input() -> None:
    g, x, relu, neg, abs_ = chain()
    neg.set_inputs([x, relu.output, None])
    assert neg.inputs == (x, relu.output, None)
    assert (neg, 1) in relu.output.uses() and (neg, 0) not in relu.output.uses()
    neg.set_inputs([relu.output])
    assert x.uses() == [(relu, 0)]
    neg.append_input(x)
    assert x.uses() == [(relu, 0), (neg, 1)]
    uses_consistent(g)
    with pytest.raises(TypeError):
        neg.set_inputs(["x"])  # type: ignore[list-item]


# ------------------------------------------------------------------------------------------------
# insertion
# ------------------------------------------------------------------------------------------------
def test_insert_before_after() -> None:
    g, x, relu, neg, abs_ = chain()
    n1 = Node("Sin", [x], name="sin")
    n2 = Node("Cos", [x], name="cos")
    n3 = Node("Tan", [x], name="tan")
    g.insert_before(neg, [n1, n2])
    g.insert_after(abs_, n3)
    assert [n.name for n in g] == ["relu", "sin", "cos", "neg", "abs", "tan"]
    assert g.last() is n3 and len(g) == 6
    n4 = Node("Exp", [x], name="exp")
    g.insert_before(relu, n4)
    assert g.first() is n4
    with pytest.raises(ValueError):
        g.insert_after(relu, n4)  # already in a graph
    g.verify()


def test_inserting_before_context_keeps_call_order() -> None:
    g, x, relu, neg, abs_ = chain()
    with g.inserting_before(neg):
        s = g.op("Sin", relu.output, name="sin")
        c = g.op("Cos", s, name="cos")
    g.op("Tan", x, name="tan")  # back to appending at the end
    assert [n.name for n in g] == ["relu", "sin", "cos", "neg", "abs", "tan"]
    neg.replace_input(0, c)
    g.verify()


def test_inserting_after_context() -> None:
    g, x, relu, neg, abs_ = chain()
    with g.inserting_after(relu):
        g.op("Sin", relu.output, name="s1")
        g.op("Cos", relu.output, name="s2")
    with g.inserting_after(None):
        g.op("Exp", x, name="front")
    assert [n.name for n in g] == ["front", "relu", "s1", "s2", "neg", "abs"]


def test_inserting_before_anchor_removed_inside_block() -> None:
    g, x, relu, neg, abs_ = chain()
    with g.inserting_before(neg):
        y = g.op("Sin", relu.output, name="sin")
        abs_.replace_input(0, y)
        g.remove(neg)
        g.op("Cos", y, name="cos")
    assert [n.name for n in g] == ["relu", "sin", "cos", "abs"]
    g.verify()


# ------------------------------------------------------------------------------------------------
# removal
# ------------------------------------------------------------------------------------------------
def snapshot(g: Graph):
    return [(n, n.inputs, tuple(tuple(o.uses()) for o in n.outputs)) for n in g], list(g.outputs)


def test_remove_refuses_used_output_and_leaves_graph_unchanged() -> None:
    g, x, relu, neg, abs_ = chain()
    before = snapshot(g)
    with pytest.raises(ValueError, match="still used"):
        g.remove([relu])
    with pytest.raises(ValueError, match="still used"):
        g.remove([neg, relu])  # all or nothing: relu is removable with neg, but abs still reads neg
    assert snapshot(g) == before
    assert x.uses() == [(relu, 0)]
    g.verify()


def test_remove_refuses_graph_output() -> None:
    g, x, relu, neg, abs_ = chain()
    before = snapshot(g)
    with pytest.raises(ValueError, match="graph output"):
        g.remove(abs_)
    assert snapshot(g) == before


def test_remove_group_that_uses_itself() -> None:
    g, x, relu, neg, abs_ = chain()
    g.outputs[:] = [relu.output]
    g.remove([neg, abs_])
    assert [n.name for n in g] == ["relu"] and relu.output.uses() == []
    g.verify()


def test_remove_not_in_graph() -> None:
    g, *_ = chain()
    with pytest.raises(ValueError, match="not in this graph"):
        g.remove(Node("Relu", []))


def test_unsafe_remove() -> None:
    g, x, relu, neg, abs_ = chain()
    g.remove(neg, safe=False)
    with pytest.raises(VerifyError, match=r"node abs \(Abs\): input 0 .*nowhere in scope"):
        g.verify()


def test_iteration_while_removing() -> None:
    g = Graph("g")
    x = tensor_in(g, "x")
    keep = []
    for i in range(10):
        v = g.op("Relu" if i % 2 else "Identity", x, name=f"n{i}")
        keep.append(v)
    g.outputs.extend(v for v in keep if v.producer().op_type == "Relu")
    seen = []
    for n in g:
        seen.append(n.name)
        if n.op_type == "Identity":
            g.remove(n)
    assert seen == [f"n{i}" for i in range(10)]
    assert [n.name for n in g] == [f"n{i}" for i in range(1, 10, 2)]
    assert x.num_uses() == 5
    g.verify()


def test_iteration_while_removing_current_and_next() -> None:
    g = Graph("g")
    x = tensor_in(g, "x")
    outs = [g.op("Relu", x, name=f"n{i}") for i in range(6)]
    g.outputs.append(outs[-1])
    seen = []
    for n in g:
        seen.append(n.name)
        if n.name in ("n1", "n3"):
            g.remove([n, n.next()])
    assert seen == ["n0", "n1", "n3", "n5"]
    assert [n.name for n in g] == ["n0", "n5"]
    g.verify()


def test_iteration_sees_nodes_inserted_after_current() -> None:
    g, x, relu, neg, abs_ = chain()
    seen = []
    for n in g:
        seen.append(n.op_type)
        if n is relu:
            g.insert_after(relu, Node("Sin", [relu.output], name="sin"))
    assert seen == ["Relu", "Sin", "Neg", "Abs"]


# ------------------------------------------------------------------------------------------------
# sort
# ------------------------------------------------------------------------------------------------
def test_sort_is_stable_topological() -> None:
    g, x, relu, neg, abs_ = chain()
    side = g.op("Sin", x, name="side")
    g.outputs.append(side)
    # Move relu to the end: now neg reads a value defined later.
    g.remove(relu, safe=False)
    relu.graph = None
    for i, v in enumerate(relu.inputs):  # re-register uses dropped by the unsafe removal
        relu.replace_input(i, None)
        relu.replace_input(i, v)
    g.append(relu)
    with pytest.raises(VerifyError, match="before it is defined"):
        g.verify()
    g.sort()
    # Stable: of the nodes ready at each step, the earliest in the current order goes first.
    assert [n.name for n in g] == ["side", "relu", "neg", "abs"]
    g.verify()


def test_sort_cycle_raises() -> None:
    g = Graph("g")
    x = tensor_in(g, "x")
    a = g.op("Add", x, x, name="a")
    b = g.op("Relu", a, name="b")
    a.producer().replace_input(1, b)
    with pytest.raises(lepton_ir.GraphCycleError, match="'a'.*'b'|'b'.*'a'"):
        g.sort()


# ------------------------------------------------------------------------------------------------
# verify: each broken invariant is caught, and the message says where
# ------------------------------------------------------------------------------------------------
def test_verify_missing_use() -> None:
    g, x, relu, neg, abs_ = chain()
    relu.output._uses.clear()
    with pytest.raises(VerifyError, match=r"main: node neg \(Neg\).*missing from its use list"):
        g.verify()


def test_verify_stale_use() -> None:
    g, x, relu, neg, abs_ = chain()
    x._uses[(neg, 0)] = None  # says neg reads x; it reads relu's output
    with pytest.raises(VerifyError, match=r"use list of %x names .*Neg.* input 0"):
        g.verify()


def test_verify_use_by_removed_node() -> None:
    g, x, relu, neg, abs_ = chain()
    dead = Node("Exp", [x], name="dead")  # never added to a graph, but registered as a user
    with pytest.raises(VerifyError, match="no longer in any graph"):
        g.verify()
    dead.set_inputs([])
    g.verify()


def test_verify_wrong_producer() -> None:
    g, x, relu, neg, abs_ = chain()
    relu.output._index = 3
    with pytest.raises(VerifyError, match=r"node relu \(Relu\): output 0 .* wrong producer"):
        g.verify()


def test_verify_defined_twice() -> None:
    g, x, relu, neg, abs_ = chain()
    neg.outputs = (relu.output,)
    with pytest.raises(VerifyError, match="defined twice|wrong producer"):
        g.verify()


def test_verify_duplicate_names() -> None:
    g, x, relu, neg, abs_ = chain()
    relu.output.name = "dup"
    neg.output.name = "dup"
    with pytest.raises(VerifyError, match=r"node neg \(Neg\): two values are named 'dup'"):
        g.verify()


def test_verify_use_before_def() -> None:
    g, x, relu, neg, abs_ = chain()
    late = g.op("Sin", x, name="late")
    relu.replace_input(0, late)
    with pytest.raises(VerifyError, match=r"node relu \(Relu\): input 0 .* before it is defined \(defined later"):
        g.verify()


def test_verify_undefined_value() -> None:
    g, x, relu, neg, abs_ = chain()
    stranger = Value("stranger", TensorType(F32, Shape((2, 3))))
    neg.replace_input(0, stranger)
    with pytest.raises(VerifyError, match=r"node neg \(Neg\): input 0 %stranger .*nowhere in scope"):
        g.verify()


def test_verify_output_not_defined() -> None:
    g, *_ = chain()
    g.outputs.append(Value("ghost"))
    with pytest.raises(VerifyError, match=r"main: output 1 %ghost is not defined"):
        g.verify()


def test_verify_corrupt_links_and_count() -> None:
    g, x, relu, neg, abs_ = chain()
    neg._prev = abs_
    with pytest.raises(VerifyError, match="back link"):
        g.verify()
    neg._prev = relu
    g._count += 1
    with pytest.raises(VerifyError, match="node count"):
        g.verify()
    g._count -= 1
    g._tail = neg
    with pytest.raises(VerifyError, match="tail"):
        g.verify()
    g._tail = abs_
    neg.graph = Graph("other")
    with pytest.raises(VerifyError, match="graph link|back link"):
        g.verify()


def test_verify_initializer_problems() -> None:
    g, x, relu, neg, abs_ = chain()
    w = g.constant(np.ones((2, 3), np.float32), "w")
    w.type = TensorType(DType.INT64, Shape((2, 3)))
    with pytest.raises(VerifyError, match=r"initializer %w is typed i64 but holds f32"):
        g.verify()
    w.type = TensorType(F32, Shape((3, 2)))
    with pytest.raises(VerifyError, match=r"initializer %w is typed"):
        g.verify()
    w.type = TensorType(F32, Shape((2, 3)))
    g.initializers["alias"] = w
    with pytest.raises(VerifyError, match="registered as 'alias'"):
        g.verify()


def test_verify_input_of_other_graph() -> None:
    g, *_ = chain()
    other = Graph("other")
    v = tensor_in(other, "foreign")
    g.inputs.append(v)
    with pytest.raises(VerifyError, match="does not belong"):
        g.verify()


def test_verify_model_opset_domain() -> None:
    g, x, relu, neg, abs_ = chain()
    g.op("Frob", x, domain="acme")
    m = Model(g, opset_imports={"": 17})
    with pytest.raises(VerifyError, match="'acme'"):
        m.verify()
    m.opset_imports["acme"] = 1
    m.verify()


# ------------------------------------------------------------------------------------------------
# subgraphs and outer-scope references
# ------------------------------------------------------------------------------------------------
def if_model() -> tuple[Graph, Value, Node, Graph, Graph]:
    """y = If(cond) { then: x_outer + 1 } else { -x_outer } where x_outer is the main graph's Relu."""
    g = Graph("main")
    x = tensor_in(g, "x")
    cond = g.add_input(Value("cond", TensorType(DType.BOOL, Shape(()))))
    r = g.op("Relu", x, name="relu")
    then_g = Graph("then")
    one = then_g.constant(np.float32(1.0), "one")
    t = then_g.op("Add", r, one, name="add")  # outer-scope reference to r
    then_g.outputs.append(t)
    else_g = Graph("else")
    e = else_g.op("Neg", r, name="neg")
    else_g.outputs.append(e)
    node = Node("If", [cond], {"then_branch": then_g, "else_branch": else_g}, name="if")
    g.append(node)
    node.output.name = "y"
    g.outputs.append(node.output)
    return g, r, node, then_g, else_g


def test_outer_scope_uses_are_tracked() -> None:
    g, r, node, then_g, else_g = if_model()
    users = {n.name for n in r.users()}
    assert users == {"add", "neg"}
    assert then_g.parent is node and else_g.parent is node
    g.verify()
    uses_consistent(g)
    # The If reads r (through its branches): removing relu is refused.
    with pytest.raises(ValueError, match="still used"):
        g.remove(r.producer())


def test_outer_scope_replace_all_uses() -> None:
    g, r, node, then_g, else_g = if_model()
    x = g.inputs[0]
    r.replace_all_uses_with(x)
    assert {n.name for n in x.users()} == {"relu", "add", "neg"}
    g.remove(r.producer())
    g.verify()


def test_removing_if_drops_subgraph_uses() -> None:
    g, r, node, then_g, else_g = if_model()
    g.outputs[:] = [r]
    g.remove(node)
    assert r.uses() == []
    g.verify()


def test_verify_checks_scope_of_subgraph_references() -> None:
    g, r, node, then_g, else_g = if_model()
    # A value of the *then* branch used from the else branch: not in the else branch's scope.
    then_val = then_g.first().output
    else_g.first().replace_input(0, then_val)
    with pytest.raises(VerifyError, match=r"main/else: node neg \(Neg\): input 0 .*nowhere in scope"):
        g.verify()


def test_verify_subgraph_reference_to_later_outer_value() -> None:
    g, r, node, then_g, else_g = if_model()
    late = g.op("Sin", g.inputs[0], name="late")
    else_g.first().replace_input(0, late)  # defined in main after the If
    with pytest.raises(VerifyError, match="main/else"):
        g.verify()
    g.sort()  # subgraph uses count as dependencies: Sin moves before the If
    assert [n.name for n in g] == ["relu", "late", "if"]
    g.verify()


def test_verify_subgraph_parent_link() -> None:
    g, r, node, then_g, else_g = if_model()
    then_g.parent = None
    with pytest.raises(VerifyError, match="subgraph 'then_branch' has a wrong parent link"):
        g.verify()


def test_subgraph_round_trip_through_onnx_and_ort() -> None:
    g, r, node, then_g, else_g = if_model()
    m = Model(g, opset_imports={"": 17})
    infer_types(m)  # a graph built by hand has no output types; export needs them for the checker
    assert g.outputs[0].type == TensorType(F32, Shape((2, 3)))
    proto = lepton_ir.to_onnx(m)
    onnx.checker.check_model(proto, full_check=True)
    sess = ort_session(proto, optimize=True)
    xv = np.array([[-1, 2, 3], [4, -5, 6]], np.float32)
    (yt,) = sess.run(None, {"x": xv, "cond": np.array(True)})
    (ye,) = sess.run(None, {"x": xv, "cond": np.array(False)})
    np.testing.assert_array_equal(yt, np.maximum(xv, 0) + 1)
    np.testing.assert_array_equal(ye, -np.maximum(xv, 0))


def test_loop_outer_scope_import() -> None:
    # Loop body reading an outer initializer; uses are tracked across the import.
    w = numpy_helper.from_array(np.float32(2.0), "w")
    body = helper.make_graph(
        [helper.make_node("Mul", ["acc_in", "w"], ["acc_out"]), helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [])])
    # (cond given explicitly: onnx's reference Loop mishandles an omitted one.)
    graph = helper.make_graph([helper.make_node("Loop", ["n", "c", "a"], ["y"], body=body)], "main",
                              [helper.make_tensor_value_info("n", TensorProto.INT64, []),
                               helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                               helper.make_tensor_value_info("a", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [w])
    m = lepton_ir.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    wv = m.graph.initializers["w"]
    assert [n.op_type for n in wv.users()] == ["Mul"]
    assert wv.users()[0].graph.parent.op_type == "Loop"
    m.verify()
    out = lepton_ir.evaluate(m, {"n": np.array(3, np.int64), "c": np.array(True), "a": np.array(1.5, np.float32)})
    assert float(out["y"]) == 12.0


# ------------------------------------------------------------------------------------------------
# constants, names, cloning
# ------------------------------------------------------------------------------------------------
def test_constant_and_fresh_name() -> None:
    g, x, relu, neg, abs_ = chain()
    c1 = g.constant(np.arange(3, dtype=np.float32), "k")
    c2 = g.constant(np.arange(3, dtype=np.float32), "k")
    c3 = g.constant([1, 2], dtype=DType.INT64)
    assert c1.name == "k" and c2.name != "k" and c2.name.startswith("k")
    assert c3.type == TensorType(DType.INT64, Shape((2,)))
    assert c1.is_initializer() and c1.graph is g and c1.producer() is None
    names = {v.name for v in g.values()}
    for base in ("x", "relu", "k", "c"):
        fresh = g.fresh_name(base)
        assert fresh not in names
        names.add(fresh)
    assert g.fresh_name("brand_new") == "brand_new"
    assert g.fresh_name("brand_new") != "brand_new"
    with pytest.raises(ValueError, match="already defined"):
        g.add_initializer(Value("k", const=c1.const))
    g.verify()


def test_fresh_name_avoids_subgraph_and_outer_names() -> None:
    g, r, node, then_g, else_g = if_model()
    inner = then_g.first().output
    inner.name = "inner_name"
    g.meta.pop("_names", None)
    assert g.fresh_name("inner_name") != "inner_name"
    r.name = "outer_name"
    else_g.meta.pop("_names", None)
    assert else_g.fresh_name("outer_name") != "outer_name"


def test_remove_initializer() -> None:
    g, x, relu, neg, abs_ = chain()
    k = g.constant(np.ones(3, np.float32), "k")
    y = g.op("Identity", k)
    with pytest.raises(ValueError, match="still used"):
        g.remove_initializer("k")
    g.remove(y.producer())
    g.remove_initializer("k")
    assert "k" not in g.initializers
    g.verify()


def test_clone_graph_is_deep_and_independent() -> None:
    g, r, node, then_g, else_g = if_model()
    vmap: dict[int, Value] = {}
    c = clone_graph(g, vmap)
    c.verify()
    assert len(c) == len(g)
    cr = vmap[id(r)]
    assert cr is not r and cr.producer().graph is c
    # The cloned branches read the cloned Relu, not the original.
    assert {n.name for n in r.users()} == {"add", "neg"}
    cif = c.last()
    assert cif.op_type == "If" and cif is not node
    assert {u.graph.parent for u in cr.users()} == {cif}
    # Constants are shared (immutable), structure is not.
    assert cif.attr("then_branch").initializers["one"].const is then_g.initializers["one"].const
    c.remove(c.last(), safe=False)
    g.verify()
    # Export of the clone still runs.
    m2 = Model(clone_graph(g, {}), opset_imports={"": 17})
    infer_types(m2)
    onnx.checker.check_model(lepton_ir.to_onnx(m2), full_check=True)


def test_clone_graph_with_outer_vmap() -> None:
    g, r, node, then_g, else_g = if_model()
    g2 = Graph("host")
    x2 = tensor_in(g2, "x2")
    vmap = {id(r): x2}
    copy = clone_graph(else_g, vmap)
    assert copy.first().inputs == (x2,)


# ------------------------------------------------------------------------------------------------
# types: infer_types and pin_input_shapes
# ------------------------------------------------------------------------------------------------
def sym_model() -> Model:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x, z], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return lepton_ir.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_infer_types_fills_new_nodes() -> None:
    m = sym_model()
    y = m.graph.outputs[0]
    assert y.shape is not None and y.shape.dims == ("N", 4)
    t = m.graph.op("Transpose", y, perm=[1, 0])
    assert t.type is None
    infer_types(m)
    assert t.type == TensorType(F32, Shape((4, "N")))


def test_pin_input_shapes_substitutes_symbols() -> None:
    m = sym_model()
    pin_input_shapes(m, {"x": [3, 4]})
    g = m.graph
    assert g.inputs[0].shape.dims == (3, 4)
    assert g.inputs[1].shape.dims == (3, 4)  # same symbol N, bound everywhere
    assert g.outputs[0].shape.dims == (3, 4)
    assert all(v.shape.dims == (3, 4) for n in g for v in n.outputs)


def test_pin_input_shapes_errors() -> None:
    m = sym_model()
    with pytest.raises(LeptonError, match="no input named 'nope'.*'x'"):
        pin_input_shapes(m, {"nope": [1, 4]})
    with pytest.raises(LeptonError, match="'x' has rank 2, given 3"):
        pin_input_shapes(m, {"x": [1, 4, 1]})
    with pytest.raises(LeptonError, match="fixed shape"):
        pin_input_shapes(m, {"x": [1, 5]})
    with pytest.raises(LeptonError, match="'N' bound to both"):
        pin_input_shapes(m, {"x": [2, 4], "z": [3, 4]})
    with pytest.raises(LeptonError, match="negative"):
        pin_input_shapes(m, {"x": [-1, 4]})
    with pytest.raises(LeptonError):
        pin_input_shapes(m, {"w": [4, 4]})  # an initializer is not an input to pin
    for e in (LeptonError("a\nb"),):
        assert "\n" not in str(e)


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------
def test_evaluate_matches_onnxruntime() -> None:
    rng = np.random.default_rng(0)
    m = sym_model()
    g = m.graph
    y = g.outputs[0]
    s = g.op("Softmax", y, axis=-1)
    g.outputs[:] = [y, s]
    s.name = "s"
    feeds = {"x": rng.standard_normal((3, 4)).astype(np.float32), "z": rng.standard_normal((3, 4)).astype(np.float32)}
    got = lepton_ir.evaluate(m, feeds)
    proto = lepton_ir.to_onnx(m)
    sess = ort_session(proto, optimize=True)
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    assert set(got) == set(want) == {"y", "s"}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_evaluate_graph_alone_and_unknown_op() -> None:
    g = Graph("g")
    x = tensor_in(g, "x")
    g.outputs.append(g.op("Relu", x))
    out = lepton_ir.evaluate(g, {"x": np.array([[-1, 2, 3], [4, -5, 6]], np.float32)})
    (v,) = out.values()
    np.testing.assert_array_equal(v, [[0, 2, 3], [4, 0, 6]])
    g.outputs[:] = [g.op("Frob", x, domain="acme")]
    with pytest.raises(lepton_ir.UnsupportedError, match="acme::Frob"):
        lepton_ir.evaluate(g, {"x": np.zeros((2, 3), np.float32)})
