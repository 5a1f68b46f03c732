"""`lepton_ir.analysis.shape_determining_inputs` on text-IR graphs.

The analysis decides which inputs a static-shape backend may bind to constants; reporting a data
input would let constant folding compute a model's answer, so the negative cases matter most.
"""

from __future__ import annotations

import lepton_ir
from lepton_ir.analysis import shape_determining_inputs

HEADER = 'model <ir_version=8, opset={"": 18}>\n'


def sd(body: str) -> list[str]:
    m = lepton_ir.from_text(HEADER + body)
    m.verify()
    return shape_determining_inputs(m.graph)


def test_reduce_axes_input_is_shape_determining_data_is_not():
    assert sd("""
graph g(%x: f32[3,4], %axes: i64[1]) -> (%y) {
  %y = ReduceSum(%x, %axes) {keepdims=1}
  return %y
}""") == ["axes"]


def test_chain_of_int_ops_into_reshape_shape():
    # rows -> Cast -> Unsqueeze -> Concat -> Reshape.shape: every use ends at a shape operand.
    assert sd("""
graph g(%x: f32[3,4], %rows: i32[]) -> (%y) {
  %zero = const i64[1] [0]
  %minus1 = const i64[1] [-1]
  %r64 = Cast(%rows) {to=7}
  %r1 = Unsqueeze(%r64, %zero)
  %shape = Concat(%r1, %minus1) {axis=0}
  %y = Reshape(%x, %shape)
  return %y
}""") == ["rows"]


def test_input_also_used_as_data_is_not_bound():
    # `s` is both Reshape's shape and an addend of the output: it is data.
    assert sd("""
graph g(%x: f32[2,3], %s: i64[2]) -> (%y, %z) {
  %y = Reshape(%x, %s)
  %one = const i64[2] [1, 1]
  %z = Add(%s, %one)
  return %y, %z
}""") == []


def test_input_that_is_a_graph_output_is_data():
    assert sd("""
graph g(%x: f32[2,3], %s: i64[2]) -> (%y, %s) {
  %y = Reshape(%x, %s)
  return %y, %s
}""") == []


def test_pads_are_shape_determining_constant_value_is_data():
    assert sd("""
graph g(%x: f32[2,3], %pads: i64[4], %v: f32[]) -> (%y) {
  %y = Pad(%x, %pads, %v) {mode="constant"}
  return %y
}""") == ["pads"]


def test_range_operands_are_data():
    # Range's start/delta are also the values of its output: binding them would bind the answer.
    assert sd("""
graph g(%a: f32[], %b: f32[], %d: f32[]) -> (%y) {
  %y = Range(%a, %b, %d)
  return %y
}""") == []


def test_several_shape_inputs_and_unused_input():
    assert sd("""
graph g(%x: f32[5,4], %k: i64[1], %depth: i64[], %idx: i64[3], %unused: i64[1]) -> (%v, %i, %h) {
  %v, %i = TopK(%x, %k)
  %vals = const f32[2] [0.0, 1.0]
  %h = OneHot(%idx, %depth, %vals)
  return %v, %i, %h
}""") == ["k", "depth"]


def test_use_inside_a_subgraph_counts_as_data():
    assert sd("""
graph g(%c: bool[], %x: f32[2,3], %s: i64[2]) -> (%y) {
  %y = If(%c) {
    then_branch=graph t() -> (%t) {
      %t = Reshape(%x, %s)
      return %t
    },
    else_branch=graph e() -> (%e) {
      %e = Identity(%x)
      return %e
    }
  }
  return %y
}""") == []


def test_flow_op_feeding_data_makes_the_input_data():
    # axes -> Add -> ReduceSum.axes is fine, but the same Add also feeds a Cast that is an output.
    assert sd("""
graph g(%x: f32[3,4], %a: i64[1]) -> (%y, %w) {
  %one = const i64[1] [1]
  %ax = Add(%a, %one)
  %y = ReduceSum(%x, %ax)
  %w = Cast(%ax) {to=1}
  return %y, %w
}""") == []
