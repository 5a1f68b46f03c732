"""The rewrite engine: matching (commutative inputs, constants with predicates, attributes,
multi-output nodes, shared intermediates), rewriting, near-miss reporting, table rules."""

from __future__ import annotations

import numpy as np

import lepton_ir
from lepton_passes.rewrite import Rule, TableRule, apply_rules
from lepton_passes.util import constant_value

HEADER = 'model <ir_version=8, opset={"": 17}>\n'


def parse(body: str) -> lepton_ir.Model:
    m = lepton_ir.from_text(HEADER + body)
    m.verify()
    return m


def ops(m: lepton_ir.Model) -> list[str]:
    return [n.op_type for n in m.graph]


class AddZero(Rule):
    """x + 0 -> x (for the test; not exact for -0.0, which is why it is not a built-in rule)."""

    def pattern(self, op, x):
        return op.Add(x, op.const("zero", lambda a: not a.any()))

    def rewrite(self, op, x, zero):
        return op.Identity(x)


class MulRelu(Rule):
    def pattern(self, op, x, y):
        return op.Relu(op.Mul(x, y, _name="mul"))

    def check(self, m, x, y, mul):
        return None if x.shape == y.shape else "broadcasting Mul"

    def rewrite(self, op, x, y, mul):
        return op.Max(op.Mul(x, y), op.const(np.float32(0)))


def test_commutative_inputs_match_either_order():
    m = parse("""
graph g(%x: f32[4]) -> (%y, %z) {
  %zero = const f32[4] [0.0, 0.0, 0.0, 0.0]
  %y = Add(%x, %zero)
  %z = Add(%zero, %x)
  return %y, %z
}""")
    stats = apply_rules(m, [AddZero()])
    m.verify()
    assert stats.applied == {"AddZero": 2}
    assert ops(m) == ["Identity", "Identity"]
    assert [o.name for o in m.graph.outputs] == ["y", "z"]


def test_constant_predicate_rejects():
    m = parse("""
graph g(%x: f32[4]) -> (%y) {
  %c = const f32[4] [0.0, 1.0, 0.0, 0.0]
  %y = Add(%x, %c)
  return %y
}""")
    assert not apply_rules(m, [AddZero()]).changed


def test_shared_intermediate_is_a_near_miss():
    m = parse("""
graph g(%x: f32[4], %w: f32[4]) -> (%y, %z) {
  %p = Mul(%x, %w)
  %y = Relu(%p)
  %z = Neg(%p)
  return %y, %z
}""")
    stats = apply_rules(m, [MulRelu()], debug=True)
    assert not stats.changed
    assert len(stats.near_misses) == 1 and "other uses" in stats.near_misses[0].reason


def test_check_reason_reported_and_rewrite_applies():
    m = parse("""
graph g(%x: f32[4], %w: f32[4], %b: f32[1]) -> (%y, %z) {
  %p = Mul(%x, %w) : f32[4]
  %y = Relu(%p)
  %q = Mul(%x, %b) : f32[4]
  %z = Relu(%q)
  return %y, %z
}""")
    x = np.array([-1, 2, -3, 4], np.float32)
    w = np.array([1, -1, 2, 0.5], np.float32)
    b = np.array([3], np.float32)
    ref = lepton_ir.evaluate(m, {"x": x, "w": w, "b": b})
    stats = apply_rules(m, [MulRelu()], debug=True)
    m.verify()
    assert stats.applied == {"MulRelu": 1}
    assert [r.reason for r in stats.near_misses] == ["broadcasting Mul"]
    got = lepton_ir.evaluate(m, {"x": x, "w": w, "b": b})
    for k in ref:
        np.testing.assert_array_equal(ref[k], got[k])


class SplitAdd(Rule):
    """Match output 1 of a two-output Split and an attribute constraint."""

    def pattern(self, op, x):
        a, b = op.Split(x, _outputs=2, axis=0, _name="split")
        return op.Add(a, b)

    def rewrite(self, op, x, split):
        a, b = op.Split(x, _outputs=2, axis=0)
        return op.Add(b, a)


def test_multi_output_and_attribute_constraint():
    m = parse("""
graph g(%x: f32[4]) -> (%y, %z) {
  %a, %b = Split(%x) {axis=0, num_outputs=2}
  %y = Add(%a, %b)
  %c, %d = Split(%x) {axis=-1, num_outputs=2}
  %z = Add(%c, %d)
  return %y, %z
}""")
    stats = apply_rules(m, [SplitAdd()], max_sweeps=1)
    m.verify()
    assert stats.applied == {"SplitAdd": 1}  # axis=-1 does not satisfy axis=0


def test_table_rule():
    m = parse("""
graph g(%x: f32[4]) -> (%y) {
  %n = Neg(%x)
  %m = Neg(%n)
  %y = Relu(%m)
  return %y
}""")
    double_neg = TableRule("Neg", lambda n: n.inputs[0].producer() is not None and
                           n.inputs[0].producer().op_type == "Neg",
                           lambda n: n.inputs[0].producer().inputs[0], name="neg-neg")
    stats = apply_rules(m, [double_neg])
    from lepton_passes.base import get_pass

    get_pass("dce")().run(m)
    m.verify()
    assert stats.applied == {"neg-neg": 1} and ops(m) == ["Relu"]


def test_constant_value_helper_reads_constant_nodes():
    m = parse("""
graph g(%x: f32[2]) -> (%y) {
  %c = Constant() {value_floats=[1.0, 2.0]}
  %y = Add(%x, %c)
  return %y
}""")
    add = m.graph.last()
    np.testing.assert_array_equal(constant_value(add.inputs[1]), [1.0, 2.0])
    assert constant_value(add.inputs[0]) is None
