"""Unit tests of the canonicalization passes on text-form fixtures.

Each positive case checks the structure the pass must produce and that ONNX Runtime gives the same
outputs before and after; each negative case checks the pass leaves the graph alone.
"""

from __future__ import annotations

import numpy as np
import pytest

import lepton_ir
from lepton_ir.reference import run_ort
from lepton_passes.base import get_pass

HEADER = 'model <ir_version=8, opset={"": 17}>\n'


def parse(body: str) -> lepton_ir.Model:
    m = lepton_ir.from_text(HEADER + body)
    m.verify()
    return m


def run_pass(body: str, name: str, feeds: dict | None = None, **options) -> tuple[lepton_ir.Model, bool]:
    """Run pass `name` on the fixture; verify; when `feeds` are given, compare ORT outputs."""
    before = parse(body)
    model = parse(body)
    changed = get_pass(name)(**options).run(model)
    model.verify()
    if feeds is not None:
        for a, b in zip(run_ort(before, feeds, optimize=True), run_ort(model, feeds, optimize=True)):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
    return model, changed


def ops(model: lepton_ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


X34 = {"x": np.arange(12, dtype=np.float32).reshape(3, 4) - 5.0}


# -- dce --------------------------------------------------------------------------------------------
def test_dce_removes_unused_chain_and_initializer():
    m, changed = run_pass("""
graph g(%x: f32[3,4]) -> (%y) {
  %w = const f32[4] [1.0, 2.0, 3.0, 4.0]
  %dead1 = Mul(%x, %w)
  %dead2 = Relu(%dead1)
  %y = Relu(%x)
  return %y
}""", "dce", X34)
    assert changed and ops(m) == ["Relu"] and not m.graph.initializers


def test_dce_keeps_graph_outputs_and_subgraph_uses():
    body = """
graph g(%c: bool[], %x: f32[3,4]) -> (%y, %z) {
  %a = Relu(%x)
  %z = Neg(%x)
  %y = If(%c) {
    then_branch=graph t() -> (%t) {
      %t = Abs(%a)
      return %t
    },
    else_branch=graph e() -> (%e) {
      %e = Identity(%x)
      return %e
    }
  }
  return %y, %z
}"""
    m, changed = run_pass(body, "dce", {"c": np.array(True), **X34})
    assert not changed and ops(m) == ["Relu", "Neg", "If"]


# -- cse --------------------------------------------------------------------------------------------
def test_cse_merges_equal_nodes_and_constants():
    m, changed = run_pass("""
graph g(%x: f32[3,4]) -> (%y) {
  %w1 = const f32[4] [1.0, 2.0, 3.0, 4.0]
  %w2 = const f32[4] [1.0, 2.0, 3.0, 4.0]
  %a = Mul(%x, %w1)
  %b = Mul(%x, %w2)
  %y = Add(%a, %b)
  return %y
}""", "cse", X34)
    assert changed and ops(m) == ["Mul", "Add"] and len(m.graph.initializers) == 1
    add = m.graph.last()
    assert add.inputs[0] is add.inputs[1]


@pytest.mark.parametrize("attrs", ["{alpha=0.1} ... {alpha=0.2}", "{alpha=0.0} ... {alpha=-0.0}"])
def test_cse_does_not_merge_different_attributes(attrs):
    a1, a2 = attrs.split(" ... ")
    m, changed = run_pass(f"""
graph g(%x: f32[3,4]) -> (%y) {{
  %a = LeakyRelu(%x) {a1}
  %b = LeakyRelu(%x) {a2}
  %y = Add(%a, %b)
  return %y
}}""", "cse", X34)
    assert not changed and ops(m) == ["LeakyRelu", "LeakyRelu", "Add"]


def test_cse_never_merges_random_ops():
    m, changed = run_pass("""
graph g(%x: f32[3,4]) -> (%y) {
  %a = RandomUniformLike(%x)
  %b = RandomUniformLike(%x)
  %y = Add(%a, %b)
  return %y
}""", "cse")
    assert not changed and ops(m).count("RandomUniformLike") == 2


def test_cse_keeps_both_output_names():
    m, changed = run_pass("""
graph g(%x: f32[3,4]) -> (%y, %z) {
  %y = Relu(%x)
  %z = Relu(%x)
  return %y, %z
}""", "cse", X34)
    assert changed
    assert [o.name for o in m.graph.outputs] == ["y", "z"]


# -- fold-constants -----------------------------------------------------------------------------------
def test_fold_constants_evaluates_constant_subgraph():
    m, changed = run_pass("""
graph g(%x: f32[3,4]) -> (%y) {
  %a = const f32[4] [1.0, 2.0, 3.0, 4.0]
  %two = Constant() {value_float=2.0}
  %b = Mul(%a, %two)
  %c = Sqrt(%b)
  %y = Add(%x, %c)
  return %y
}""", "fold-constants", X34)
    assert changed and ops(m) == ["Add"]
    c = m.graph.last().inputs[1]
    np.testing.assert_allclose(c.const.numpy(), np.sqrt(np.array([2, 4, 6, 8], np.float32)))


def test_fold_constants_respects_size_cap():
    body = """
graph g(%x: f32[3,4]) -> (%y) {
  %shape = const i64[2] [1000, 2000]
  %big = ConstantOfShape(%shape) {value=tensor f32[1] [1.0]}
  %r = ReduceSum(%big) {keepdims=0}
  %y = Add(%x, %r)
  return %y
}"""
    m, changed = run_pass(body, "fold-constants", max_elements=1000)
    assert "ConstantOfShape" in ops(m)
    m, changed = run_pass(body, "fold-constants", X34)  # 2M elements exceed the default cap of 2^20
    assert "ConstantOfShape" in ops(m)
    m, changed = run_pass(body, "fold-constants", X34, max_elements=4_000_000)
    assert ops(m) == ["Add"]


def test_fold_constants_leaves_runtime_inputs_and_overridable_initializers():
    m, changed = run_pass("""
graph g(%x: f32[3,4], %w: f32[4]) -> (%y) {
  %w = const f32[4] [1.0, 2.0, 3.0, 4.0]
  %s = Sqrt(%w)
  %y = Add(%x, %s)
  return %y
}""", "fold-constants", {**X34, "w": np.ones(4, np.float32)})
    assert not changed and ops(m) == ["Sqrt", "Add"]


# -- remove-noops -------------------------------------------------------------------------------------
@pytest.mark.parametrize("node", [
    "%t = Identity(%r)",
    "%t = Dropout(%r)",
    "%t = Cast(%r) {to=1}",
    "%t = Transpose(%r) {perm=[0,1]}",
    "%t = Reshape(%r, %shape)",
    "%t = Pad(%r, %zeros)",
    "%t = Slice(%r, %starts, %ends)",
    "%t = Expand(%r, %shape)",
    "%t = Concat(%r) {axis=0}",
    "%t = Tile(%r, %ones)",
])
def test_remove_noops_removes(node):
    m, changed = run_pass(f"""
graph g(%x: f32[3,4]) -> (%y) {{
  %shape = const i64[2] [3, 4]
  %zeros = const i64[4] [0, 0, 0, 0]
  %ones = const i64[2] [1, 1]
  %starts = const i64[2] [0, 0]
  %ends = const i64[2] [3, 4]
  %r = Relu(%x) : f32[3,4]
  {node} : f32[3,4]
  %y = Neg(%t)
  return %y
}}""", "remove-noops", X34)
    assert changed and ops(m) == ["Relu", "Neg"]


@pytest.mark.parametrize("node", [
    "%t = Cast(%r) {to=10}",                        # f32 -> f16 changes values
    "%t = Transpose(%r) {perm=[1,0]}",
    "%t = Slice(%r, %starts, %ends, %axes, %steps)",  # full range but reversed
    "%t = Dropout(%r, %ratio, %train)",              # training mode
])
def test_remove_noops_keeps_real_work(node):
    m, changed = run_pass(f"""
graph g(%x: f32[4,4]) -> (%y) {{
  %starts = const i64[1] [-1]
  %ends = const i64[1] [-100]
  %axes = const i64[1] [0]
  %steps = const i64[1] [-1]
  %ratio = const f32[] [0.5]
  %train = const bool[] [true]
  %r = Relu(%x) : f32[4,4]
  {node}
  %y = Neg(%t)
  return %y
}}""", "remove-noops")
    assert not changed and len(ops(m)) == 3


def test_remove_noops_keeps_identity_between_input_and_output():
    m, changed = run_pass("""
graph g(%x: f32[3,4]) -> (%y) {
  %y = Identity(%x)
  return %y
}""", "remove-noops", X34)
    assert not changed and ops(m) == ["Identity"]


def test_remove_noops_output_keeps_its_name():
    m, changed = run_pass("""
graph g(%x: f32[3,4]) -> (%y) {
  %r = Relu(%x)
  %y = Identity(%r)
  return %y
}""", "remove-noops", X34)
    assert changed and ops(m) == ["Relu"] and m.graph.outputs[0].name == "y"


# -- simplify-shapes ----------------------------------------------------------------------------------
def test_simplify_shapes_folds_shape_chain_with_symbolic_batch():
    body = """
graph g(%x: f32[N,3,4]) -> (%y) {
  %s = Shape(%x) : i64[3]
  %i1 = const i64[] [1]
  %i2 = const i64[] [2]
  %d1 = Gather(%s, %i1) {axis=0} : i64[]
  %d2 = Gather(%s, %i2) {axis=0} : i64[]
  %p = Mul(%d1, %d2)
  %m1 = const i64[1] [-1]
  %u = Unsqueeze(%p, %axes)
  %axes = const i64[1] [0]
  %shape = Concat(%m1, %u) {axis=0}
  %y = Reshape(%x, %shape)
  return %y
}"""
    # Values may be declared after use in text; the parser resolves names, the verifier orders.
    body = body.replace("  %u = Unsqueeze(%p, %axes)\n  %axes = const i64[1] [0]\n",
                        "  %axes = const i64[1] [0]\n  %u = Unsqueeze(%p, %axes)\n")
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}
    m, changed = run_pass(body, "canonicalize", feeds)
    assert changed and ops(m) == ["Reshape"]
    np.testing.assert_array_equal(m.graph.last().inputs[1].const.numpy(), [-1, 12])


def test_simplify_shapes_keeps_symbolic_dim():
    m, changed = run_pass("""
graph g(%x: f32[N,3]) -> (%y) {
  %s = Shape(%x) : i64[2]
  %i0 = const i64[] [0]
  %y = Gather(%s, %i0) {axis=0}
  return %y
}""", "simplify-shapes")
    assert not changed and ops(m) == ["Shape", "Gather"]


def test_pin_input_shapes_then_canonicalize_folds():
    m = parse("""
graph g(%x: f32[N,3]) -> (%y) {
  %s = Shape(%x)
  %y = Reshape(%x, %s)
  return %y
}""")
    lepton_ir.pin_input_shapes(m, {"x": [2, 3]})
    get_pass("canonicalize")().run(m)
    m.verify()
    # The Reshape target folds to a constant; the Reshape itself stays because removing it would
    # make the graph output alias the graph input.
    assert ops(m) == ["Reshape"]
    np.testing.assert_array_equal(m.graph.last().inputs[1].const.numpy(), [2, 3])
    assert m.graph.outputs[0].name == "y"


# -- inline-functions --------------------------------------------------------------------------------
FUNC = """
model <ir_version=8, opset={"": 17, "custom": 1}>
graph main(%x: f32[4]) -> (%y: f32[4], %z: f32[4]) {
  %y = custom::ScaledLeakyRelu(%x) {alpha=0.25, scale=3.0}
  %z = custom::ScaledLeakyRelu(%x) {alpha=0.5}
  return %y, %z
}

func custom::ScaledLeakyRelu[alpha, scale=2.0](%x) -> (%out) <opset={"": 17}> {
  %l = LeakyRelu(%x) {alpha: float=@alpha}
  %s = Constant() {value_float: float=@scale}
  %out = Mul(%l, %s)
  return %out
}
"""


def test_inline_functions_substitutes_attributes_and_defaults():
    m = lepton_ir.from_text(FUNC)
    x = {"x": np.array([-2.0, -1.0, 0.5, 3.0], np.float32)}
    ref = run_ort(m, x, optimize=True)
    assert get_pass("inline-functions")().run(m)
    m.verify()
    assert not m.functions and "ScaledLeakyRelu" not in ops(m)
    alphas = sorted(n.attr("alpha") for n in m.graph if n.op_type == "LeakyRelu")
    assert alphas == [0.25, 0.5]
    for a, b in zip(ref, run_ort(m, x, optimize=True)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ref[0], np.where(x["x"] < 0, 0.25 * x["x"], x["x"]) * 3.0)
    np.testing.assert_allclose(ref[1], np.where(x["x"] < 0, 0.5 * x["x"], x["x"]) * 2.0)


# -- canonicalize -----------------------------------------------------------------------------------
def test_canonicalize_is_idempotent_on_real_model():
    from lepton_ir.testing.corpus import digits_model_path

    m = lepton_ir.load(digits_model_path())
    get_pass("canonicalize")().run(m)
    text = lepton_ir.to_text(m)
    assert not get_pass("canonicalize")().run(m)
    assert lepton_ir.to_text(m) == text


# -- fold-if --------------------------------------------------------------------------------------------
IF_BODY = """
graph g(%x: f32[3]) -> (%y) {{
  %c = const bool[] [{cond}]
  %one = const f32[3] [1.0, 1.0, 1.0]
  %y = If(%c) {{
    then_branch=graph t() -> (%t) {{
      %k = const f32[3] [2.0, 2.0, 2.0]
      %t = Mul(%x, %k)
      return %t
    }},
    else_branch=graph e() -> (%e) {{
      %e = Sub(%x, %one)
      return %e
    }}
  }}
  return %y
}}"""


@pytest.mark.parametrize("cond,op", [("true", "Mul"), ("false", "Sub")])
def test_fold_if_inlines_taken_branch(cond, op):
    m, changed = run_pass(IF_BODY.format(cond=cond), "fold-if", {"x": np.array([1, 2, 3], np.float32)})
    assert changed and ops(m) == [op] and m.graph.outputs[0].name == "y"


def test_fold_if_keeps_runtime_condition():
    body = IF_BODY.format(cond="true").replace("graph g(%x: f32[3])", "graph g(%x: f32[3], %c: bool[])")
    body = body.replace("  %c = const bool[] [true]\n", "")
    m, changed = run_pass(body, "fold-if")
    assert not changed and ops(m) == ["If"]


def test_range_operands_become_scalars():
    m, changed = run_pass("""
graph g(%n: i64[4]) -> (%y) {
  %z = const i64[] [0]
  %one = const i64[] [1]
  %sp = const i64[2] [2, 2]
  %a, %b = Split(%n, %sp) {axis=0} : i64[2], i64[2]
  %i = const i64[1] [1]
  %lim = Gather(%a, %i) {axis=0} : i64[1]
  %y = Range(%z, %lim, %one)
  return %y
}""", "simplify-shapes", {"n": np.array([2, 5, 1, 1], np.int64)})
    assert changed and ops(m) == ["Split", "Gather", "Squeeze", "Range"]


# -- bind-inputs ----------------------------------------------------------------------------------------
def test_bind_inputs_makes_a_constant_and_folds_the_branch():
    m = parse(IF_BODY.format(cond="true").replace("graph g(%x: f32[3])", "graph g(%x: f32[3], %c: bool[])")
              .replace("  %c = const bool[] [true]\n", ""))
    assert get_pass("bind-inputs")(values=("c=0",)).run(m)
    get_pass("canonicalize")().run(m)
    m.verify()
    assert [v.name for v in m.graph.inputs] == ["x"] and ops(m) == ["Sub"]
    x = {"x": np.array([1, 2, 3], np.float32)}
    np.testing.assert_array_equal(run_ort(m, x, optimize=True)[0], x["x"] - 1)


@pytest.mark.parametrize("binding,msg", [("nope=1", "no input 'nope'"), ("x", "NAME=VALUE"),
                                         ("x=a", "not a number"), ("x=1:2", "shape")])
def test_bind_inputs_errors(binding, msg):
    m = parse("""
graph g(%x: f32[3]) -> (%y) {
  %y = Relu(%x)
  return %y
}""")
    with pytest.raises(lepton_ir.LeptonError, match=msg):
        get_pass("bind-inputs")(values=(binding,)).run(m)
