"""`lepton_ir.repropagate` / `replace_constant(s)` on text-form models.

The reference for every re-inferred type is what ONNX Runtime actually returns when it runs the
modified model with every intermediate value exposed as an output (or, for `ai.lepton` ops, the
onnx reference evaluator with Lepton's reference kernels): never the shape functions themselves.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import lepton_ir
from lepton_ir import ShapeInferenceError, TensorType, replace_constant, replace_constants, repropagate
from lepton_passes import get_pass

RNG = np.random.default_rng(13)


def const(name: str, *shape: int) -> str:
    a = RNG.standard_normal(shape).astype(np.float32)
    if name.endswith("_v"):  # BatchNormalization variance
        a = np.abs(a) + 0.5
    return f"  %{name} = const f32[{','.join(map(str, shape))}] [{', '.join(repr(float(x)) for x in a.reshape(-1))}]\n"


def resnet_block(batch: str = "2", flatten: str = "flatten") -> lepton_ir.Model:
    """conv1 -> BN -> Relu -> conv2, + a 1x1 shortcut (residual Add), Concat with the Relu,
    GlobalAveragePool, Flatten (or a Shape-computed Reshape), Gemm. %side is outside conv1's cone."""
    head = ('model <ir_version=8, opset={"": 17}>\n'
            f'graph g(%x: f32[{batch},3,8,8]) -> (%y: f32[{batch},10], %gp: f32[{batch},16,1,1], %side) {{\n')
    consts = (const("w1", 8, 3, 3, 3) + const("b1", 8) + "".join(const(f"bn_{k}", 8) for k in "sbmv")
              + const("w2", 8, 8, 3, 3) + const("b2", 8) + const("w3", 8, 3, 1, 1) + const("wg", 16, 10)
              + const("bg", 10))
    if flatten == "flatten":
        flat = "  %f = Flatten(%gp)\n"
    else:  # the torchvision export form: Reshape(x, Concat(Shape(x)[0:1], [-1]))
        flat = ("  %z = const i64[1] [0]\n  %one = const i64[1] [1]\n  %m1 = const i64[1] [-1]\n"
                "  %s = Shape(%gp)\n  %s0 = Slice(%s, %z, %one)\n  %shape = Concat(%s0, %m1) {axis=0}\n"
                "  %f = Reshape(%gp, %shape)\n")
    body = ("  %c1 = Conv(%x, %w1, %b1) {kernel_shape=[3, 3], pads=[1, 1, 1, 1]} <name=\"conv1\">\n"
            "  %n1 = BatchNormalization(%c1, %bn_s, %bn_b, %bn_m, %bn_v) <name=\"bn1\">\n"
            "  %r1 = Relu(%n1)\n"
            "  %c2 = Conv(%r1, %w2, %b2) {kernel_shape=[3, 3], pads=[1, 1, 1, 1]} <name=\"conv2\">\n"
            "  %sc = Conv(%x, %w3) {kernel_shape=[1, 1]}\n"
            "  %a = Add(%c2, %sc) <name=\"residual\">\n"
            "  %cat = Concat(%a, %r1) {axis=1}\n"
            "  %gp = GlobalAveragePool(%cat)\n"
            + flat +
            "  %y = Gemm(%f, %wg, %bg) <name=\"fc\">\n"
            "  %side = Relu(%sc)\n"
            "  return %y, %gp, %side\n}\n")
    m = lepton_ir.from_text(head + consts + body)
    lepton_ir.infer_types(m)
    return m


KEEP = [0, 2, 3, 5, 6, 7]  # conv1 output channels that survive


def prune_conv1(m: lepton_ir.Model) -> None:
    """Drop conv1's output channels outside KEEP: W1, B1, the BN statistics, conv2's input
    channels, and the Gemm rows the Concat routes them to (rows 8.. follow %r1)."""
    init = m.graph.initializers
    arr = {k: v.const.numpy() for k, v in init.items()}
    new = {init["w1"]: arr["w1"][KEEP], init["b1"]: arr["b1"][KEEP], init["w2"]: arr["w2"][:, KEEP],
           init["wg"]: arr["wg"][list(range(8)) + [8 + k for k in KEEP]]}
    new.update({init[f"bn_{k}"]: arr[f"bn_{k}"][KEEP] for k in "sbmv"})
    replace_constants(m, new)


def ort_shapes(m: lepton_ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The shape ONNX Runtime produces for every node output of `m`."""
    proto = lepton_ir.to_onnx(m)
    have = {o.name for o in proto.graph.output}
    dtypes = {o.name: int(o.dtype) for n in m.graph for o in n.outputs if o.name}
    names = [o for n in proto.graph.node for o in n.output if o and o not in have]
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, dtypes[n], None) for n in names)
    for o in proto.graph.output:
        # Declared output shapes would make ORT check against them; the reference must be ORT's own.
        o.type.tensor_type.ClearField("shape")
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    return {o.name: r.shape for o, r in zip(sess.get_outputs(), outs)}


def ir_dims(m: lepton_ir.Model) -> dict[str, list]:
    return {o.name: list(o.shape.dims) for n in m.graph for o in n.outputs if o.name}


def test_pruned_conv_types_match_onnxruntime():
    m = resnet_block()
    before = ir_dims(m)
    prune_conv1(m)
    got = ir_dims(m)
    ref = ort_shapes(m, {"x": RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)})
    assert got == {k: list(v) for k, v in ref.items()}
    # The change really happened (64 -> 48 in a real model, 8 -> 6 here) and is not a no-op.
    assert before["r1"] == [2, 8, 8, 8] and got["r1"] == [2, 6, 8, 8]
    assert before["cat"] == [2, 16, 8, 8] and got["cat"] == [2, 14, 8, 8] and got["f"] == [2, 14]


def test_graph_output_types_and_declarations_follow():
    m = resnet_block()
    prune_conv1(m)
    gp = m.graph.outputs[1]
    assert list(gp.shape.dims) == [2, 14, 1, 1]
    declared = lepton_ir.to_onnx(m).graph.output[1].type.tensor_type.shape
    assert [d.dim_value for d in declared.dim] == [2, 14, 1, 1]  # the signature said 16


def test_values_outside_the_cone_keep_their_type_objects():
    m = resnet_block()
    g = m.graph
    outside = {v.name: v.type for n in g for v in n.outputs if v.name in ("sc", "side")}
    outside["x"] = g.inputs[0].type
    outside["w3"] = g.initializers["w3"].type
    prune_conv1(m)
    now = {v.name: v.type for v in list(g.inputs) + list(g.initializers.values()) + [o for n in g for o in n.outputs]}
    assert all(now[k] is t for k, t in outside.items())
    assert now["a"] is not None and list(now["a"].shape.dims) == [2, 8, 8, 8]  # inside the cone, same dims


def test_symbolic_batch_and_shape_computed_reshape():
    m = resnet_block(batch="N", flatten="reshape")
    assert list(m.graph.outputs[0].shape.dims) == ["N", 10]
    prune_conv1(m)
    got = ir_dims(m)
    assert got["f"] == ["N", 14] and got["cat"] == ["N", 14, 8, 8]  # data propagated through Shape/Slice/Concat
    ref = ort_shapes(m, {"x": RNG.standard_normal((3, 3, 8, 8)).astype(np.float32)})
    for name, dims in got.items():
        assert [3 if d == "N" else d for d in dims] == list(ref[name]), name


def test_fused_model_repropagates_through_fusedconv():
    m = resnet_block()
    get_pass("fuse")().run(m)
    # conv1 + BN + Relu is one FusedConv now, with new (folded) weight and bias constants.
    fc = next(n for n in m.graph if n.op_type == "FusedConv" and n.inputs[0].name == "x")
    init = m.graph.initializers
    w, b = fc.inputs[1], fc.inputs[2]
    replace_constants(m, {w: w.const.numpy()[KEEP], b: b.const.numpy()[KEEP],
                          init["w2"]: init["w2"].const.numpy()[:, KEEP],
                          init["wg"]: init["wg"].const.numpy()[list(range(8)) + [8 + k for k in KEEP]]})
    got = ir_dims(m)
    # Reference: every value of the fused model evaluated by onnx's reference evaluator with
    # Lepton's numpy kernels (shapes come from running, not from the shape functions).
    probe = lepton_ir.from_text(lepton_ir.to_text(m, max_inline_elements=None))
    probe.graph.outputs[:] = [o for n in probe.graph for o in n.outputs if o.name]
    for o in probe.graph.outputs:
        o.meta.pop("declared_output_type", None)
    ref = lepton_ir.evaluate(probe, {"x": RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)})
    assert got == {k: list(v.shape) for k, v in ref.items()}
    assert list(fc.outputs[0].shape.dims) == [2, 6, 8, 8] and got["cat"] == [2, 14, 8, 8]


@pytest.mark.parametrize("which, node", [
    (["w1"], "conv1"),                       # bias still has 8 entries for 6 output channels
    (["w1", "b1"], "bn1"),                   # BatchNormalization statistics still 8 long
    (["w1", "b1", "bn"], "conv2"),           # conv2's weight still reads 8 input channels
])
def test_contradictory_change_raises_naming_the_node(which: list[str], node: str):
    m = resnet_block()
    init = m.graph.initializers
    names = [f"bn_{k}" for k in "sbmv"] if "bn" in which else []
    names += [w for w in which if w != "bn"]
    with pytest.raises(ShapeInferenceError, match=node) as e:
        replace_constants(m, {init[k]: init[k].const.numpy()[KEEP] for k in names})
    assert "\n" not in str(e.value)


def test_replace_constant_one_at_a_time_and_type_in_step():
    m = resnet_block()
    b = m.graph.initializers["bg"]
    replace_constant(b, np.zeros(10, np.float32), model=m)  # same shape: nothing downstream changes
    assert b.type == TensorType(lepton_ir.DType.FLOAT, lepton_ir.Shape([10]))
    with pytest.raises(ShapeInferenceError, match="fc"):
        replace_constant(b, np.zeros((3, 4), np.float32), model=m)  # C does not broadcast to [2,10]
    with pytest.raises(ShapeInferenceError, match="not an initializer"):
        replace_constant(m.graph.inputs[0], np.zeros(3, np.float32), model=m)


def test_nodes_with_subgraphs_and_unknown_ops_are_refused():
    m = lepton_ir.from_text('''model <ir_version=8, opset={"": 17, "custom": 1}>
graph g(%c: bool[], %x: f32[4]) -> (%y, %z) {
  %w = const f32[4] [1.0, 2.0, 3.0, 4.0]
  %a = Mul(%x, %w)
  %y = If(%c) {
    then_branch=graph t() -> (%t) {
      %t = Relu(%a)
      return %t
    },
    else_branch=graph e() -> (%e) {
      %e = Neg(%a)
      return %e
    }
  } <name="branch">
  %z = custom::Thing(%w) <name="thing">
  return %y, %z
}''')
    w = m.graph.initializers["w"]
    with pytest.raises(ShapeInferenceError, match="If node 'branch'.*subgraphs"):
        replace_constant(w, np.ones(4, np.float32), model=m)
    m.graph.outputs[:] = [m.graph.outputs[1]]
    nodes = list(m.graph)
    m.graph.remove(nodes[1])  # the If
    with pytest.raises(ShapeInferenceError, match="custom::Thing node 'thing'.*register_shape_function"):
        repropagate(m, [w])


def test_registered_shape_function_is_used():
    m = lepton_ir.from_text('''model <ir_version=8, opset={"": 17, "test.repro": 1}>
graph g(%x: f32[4]) -> (%z) {
  %w = const f32[4] [1.0, 2.0, 3.0, 4.0]
  %y = test.repro::Double(%w)
  %z = Add(%x, %y)
  return %z
}''')
    lepton_ir.register_shape_function(
        "test.repro", "Double", lambda n, ins: [TensorType(ins[0].dtype, lepton_ir.Shape([2 * ins[0].shape[0]]))])
    w = m.graph.initializers["w"]
    replace_constant(w, np.ones(2, np.float32), model=m)
    assert list(m.graph.outputs[0].shape.dims) == [4]
    with pytest.raises(ShapeInferenceError, match="Add"):
        replace_constant(w, np.ones(3, np.float32), model=m)  # Double gives 6, which does not broadcast to 4


def test_infer_types_strict_makes_failures_visible():
    text = '''model <ir_version=8, opset={"": 17}>
graph g(%x: f32[2,3], %z: f32[4]) -> (%y) {
  %y = Add(%x, %z)
  return %y
}'''
    m = lepton_ir.from_text(text)
    lepton_ir.infer_types(m)  # default: best-effort, silent, as existing callers expect
    assert m.graph.outputs[0].type is None
    with pytest.raises(ShapeInferenceError, match="Add"):
        lepton_ir.infer_types(lepton_ir.from_text(text), strict=True)


def test_initializer_returned_as_output_and_declared_as_input():
    m = lepton_ir.from_text('''model <ir_version=3, opset={"": 9}>
graph g(%x: f32[3], %w: f32[3]) -> (%y: f32[3], %w: f32[3]) {
  %w = const f32[3] [1.0, 2.0, 3.0]
  %y = Mul(%x, %w)
  return %y, %w
}''')
    w = m.graph.initializers["w"]
    replace_constant(w, np.ones(1, np.float32), model=m)  # broadcasts: y keeps [3]
    proto = lepton_ir.to_onnx(m)
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in list(proto.graph.input) + list(proto.graph.output)}
    assert dims == {"x": [3], "w": [1], "y": [3]}
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [r.shape for r in sess.run(None, {"x": np.ones(3, np.float32)})] == [(3,), (1,)]


LEPTON_OPS = {  # op -> (input shapes, attributes); every op of passes/fusion/ops.py
    "FusedConv": ([[2, 4, 6, 6], [6, 2, 3, 3], [6]], {"group": 2, "strides": [2, 2], "activation": "Relu"}),
    "FusedGemm": ([[3, 4], [5, 4], [5]], {"transB": 1, "activation": "Tanh"}),
    "FusedMatMul": ([[2, 4, 3], [2, 5, 4]], {"transA": 1, "transB": 1, "alpha": 0.5}),
    "Gelu": ([[2, 3, 4]], {"approximate": "tanh"}),
    "BiasGelu": ([[2, 3, 4], [4]], {}),
    "LayerNormalization": ([[2, 3, 4], [4], [4]], {"axis": -1, "epsilon": 1e-5}),
    "SkipLayerNorm": ([[2, 3, 4], [1, 3, 4], [4], [4]], {"epsilon": 1e-5}),
    "Attention": ([[2, 3, 4], [2, 5, 4], [2, 5, 6]], {"transB": 1, "scale": 0.5}),
}


@pytest.mark.parametrize("op", sorted(LEPTON_OPS))
def test_every_lepton_op_has_a_shape_function_matching_its_kernel(op: str):
    from lepton_passes.fusion import ops

    assert set(LEPTON_OPS) == set(ops.SHAPE_FUNCTIONS) == set(ops.REFERENCE_OPS)
    shapes, attrs = LEPTON_OPS[op]
    g = lepton_ir.Graph("g")
    ins = [g.add_input(lepton_ir.Value(f"i{k}", TensorType(lepton_ir.DType.FLOAT, lepton_ir.Shape(s))))
           for k, s in enumerate(shapes)]
    node = lepton_ir.Node(op, ins, attrs, domain="ai.lepton")
    node.outputs[0].name = "y"
    g.append(node)
    g.outputs.append(node.outputs[0])
    m = lepton_ir.Model(g, opset_imports={"": 17, "ai.lepton": 1})
    repropagate(m, ins)
    feeds = {f"i{k}": RNG.standard_normal(s).astype(np.float32) for k, s in enumerate(shapes)}
    ref = lepton_ir.evaluate(m, feeds)["y"]
    assert node.outputs[0].type == TensorType(lepton_ir.DType.FLOAT, lepton_ir.Shape(list(ref.shape)))
