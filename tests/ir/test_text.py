"""Tests of the text form (`lepton_ir.text`): fixtures, errors, lossless round trips, corpus sweeps.

The round-trip contract checked throughout:
- print(parse(print(m))) == print(m), summarised (default) and full (`max_inline_elements=None`);
- parse(print(m, max_inline_elements=None)) exported with `to_onnx` behaves bit-identically in ONNX
  Runtime (and, for a hand-built model using every IR feature, exports the same ONNX message).

Set LEPTON_TEXT_ORT_ALL=1 to run the ONNX Runtime check on every conformance case instead of a
deterministic sample of about 300.
"""

from __future__ import annotations

import os
import pathlib
import re
import time
import warnings

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

import lepton_ir
from lepton_ir import AttrType, DType, Graph, LeptonError, Model, TensorType, TextParseError, Value
from lepton_ir.reference import ort_session
from lepton_ir.text import SummarizedTensor, parse_graph, parse_model, print_graph, print_model

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
FIXTURE_FILES = sorted(FIXTURES.glob("*.lep"))


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def roundtrip(m: Model, max_inline: int | None = 16) -> tuple[str, Model]:
    """Print, parse, verify, print again; assert the two texts are identical."""
    s1 = print_model(m, max_inline_elements=max_inline)
    m2 = parse_model(s1)
    m2.verify()
    s2 = print_model(m2, max_inline_elements=max_inline)
    if s1 != s2:
        import difflib

        diff = "\n".join(list(difflib.unified_diff(s1.splitlines(), s2.splitlines(), lineterm="", n=1))[:40])
        pytest.fail(f"print-parse-print differs:\n{diff}")
    return s1, m2


def ort_run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray] | list) -> list:
    sess = ort_session(proto, optimize=True)
    if isinstance(feeds, list):
        feeds = {i.name: x for i, x in zip(sess.get_inputs(), feeds)}
    return sess.run(None, feeds)


def bit_identical(a, b) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(bit_identical(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is b
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == object:
        return a.tolist() == b.tolist()
    return a.tobytes() == b.tobytes()


def canonical(msg):
    """Rewrite every TensorProto's data as raw_data, so messages compare by content not encoding."""
    if isinstance(msg, onnx.TensorProto):
        if msg.data_type not in (TP.STRING, TP.UNDEFINED):
            arr = nh.to_array(msg)
            n = nh.from_array(arr)
            for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "raw_data"):
                msg.ClearField(f)
            msg.raw_data = n.raw_data
            for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                getattr(msg, f).extend(getattr(n, f))
        return msg
    for _, val in msg.ListFields():
        if hasattr(val, "ListFields"):
            canonical(val)
        elif hasattr(val, "__len__") and not isinstance(val, (str, bytes)):
            for x in val:
                if hasattr(x, "ListFields"):
                    canonical(x)
    return msg


def fixture(name: str) -> Model:
    m = parse_model((FIXTURES / name).read_text())
    m.verify()
    return m


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[p.stem for p in FIXTURE_FILES])
def test_fixture_round_trips(path: pathlib.Path) -> None:
    m = parse_model(path.read_text())
    m.verify()
    for mi in (16, None):
        roundtrip(m, mi)
    onnx.checker.check_model(lepton_ir.to_onnx(m), full_check=True)


def test_conv_bn_matches_numpy() -> None:
    m = fixture("conv_bn.lep")
    g = m.graph
    assert [n.op_type for n in g] == ["Conv", "BatchNormalization", "Relu"]
    assert g.inputs[0].type == TensorType(DType.FLOAT, lepton_ir.Shape(["N", 3, 4, 4]))
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    (got,) = ort_run(lepton_ir.to_onnx(m), {"x": x})
    c = {k: g.initializers[k].const.numpy() for k in ("w", "b", "scale", "shift", "mean", "var")}
    conv = np.einsum("nchw,oc->nohw", x, c["w"][:, :, 0, 0]) + c["b"][None, :, None, None]
    bn = (conv - c["mean"][None, :, None, None]) / np.sqrt(c["var"][None, :, None, None] + 1e-5)
    want = np.maximum(bn * c["scale"][None, :, None, None] + c["shift"][None, :, None, None], 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert g.nodes[1].attrs["epsilon"].type == AttrType.FLOAT


def test_if_outer_scope_reference() -> None:
    m = fixture("if_outer_scope.lep")
    node = m.graph.nodes[0]
    then_g = node.attrs["then_branch"].value
    x, one = m.graph.inputs[1], m.graph.initializers["one"]
    add = then_g.nodes[0]
    assert add.inputs[0] is x and add.inputs[1] is one  # the outer values themselves, not copies
    assert (add, 0) in x.uses() and then_g.parent is node
    proto = lepton_ir.to_onnx(m)
    xs = np.array([1, 2, 3], np.float32)
    assert ort_run(proto, {"cond": np.array(True), "x": xs})[0].tolist() == [2, 3, 4]
    assert ort_run(proto, {"cond": np.array(False), "x": xs})[0].tolist() == [0, 1, 2]


def test_loop() -> None:
    m = fixture("loop.lep")
    loop = m.graph.nodes[0]
    assert loop.inputs[1] is None  # omitted condition
    final, partials = ort_run(lepton_ir.to_onnx(m), {"trip": np.array(3, np.int64),
                                                     "init": np.zeros(2, np.float32)})
    assert final.tolist() == [1.5, 6.0]
    assert partials.tolist() == [[0.5, 2.0], [1.0, 4.0], [1.5, 6.0]]


def test_function_with_attribute_refs() -> None:
    m = fixture("function_attr_refs.lep")
    f = m.functions[("custom", "ScaledLeakyRelu", "")]
    assert f.attributes == ["alpha"]
    assert f.attribute_defaults["scale"].value == 2.0
    leaky = f.graph.nodes[0]
    a = leaky.attrs["alpha"]
    assert a.ref == "alpha" and a.type == AttrType.FLOAT and a.value is None
    x = np.array([-2, -1, 1, 2], np.float32)
    y, z = ort_run(lepton_ir.to_onnx(m), {"x": x})
    assert y.tolist() == [-1.5, -0.75, 3.0, 6.0]
    assert z.tolist() == [-2.0, -1.0, 2.0, 4.0]


def test_split_and_omitted_inputs_outputs() -> None:
    m = fixture("split_omitted.lep")
    split, clip, ln = m.graph.nodes
    assert len(split.outputs) == 3
    assert clip.inputs[1] is None
    assert ln.outputs[1].name == ""  # omitted optional output
    text = print_model(m)
    assert "Clip(%a, _, %hi)" in text and "%n, _, %inv = LayerNormalization" in text
    x = np.arange(24, dtype=np.float32).reshape(6, 4) / 10
    outs = ort_run(lepton_ir.to_onnx(m), {"x": x})
    assert np.array_equal(outs[1], x[2:4]) and np.array_equal(outs[2], x[4:6])
    assert outs[4].shape == (2, 1)


def test_quoted_and_unnamed_names() -> None:
    m = fixture("quoted_names.lep")
    g = m.graph
    assert g.name == "torch-jit export"
    assert [v.name for v in g.inputs] == ["input:0", "0"]
    add, relu, neg = g.nodes
    assert add.output.name is None  # %0 is an unnamed value
    assert relu.output.name == "layer.1/Relu_output_0" and relu.name == "/layer.1/Relu"
    assert neg.doc == 'a "quoted"\ndoc \U0001f600'
    assert g.inputs[0].shape.dims == ("N", "seq len")
    text = print_model(m)
    assert '%"0": f32[N,"seq len"]' in text and "%0 = Add(" in text
    proto = lepton_ir.to_onnx(m)
    a = np.ones((2, 3), np.float32)
    assert ort_run(proto, {"input:0": a, "0": -3 * a})[0].tolist() == [[-0.0] * 3] * 2


def test_every_dtype_inline() -> None:
    m = fixture("all_dtypes.lep")
    inits = m.graph.initializers
    f32 = inits["f32"].const.numpy()
    assert f32.dtype == np.float32 and np.signbit(f32[1]) and np.isnan(f32[4]) and f32[2] == np.inf
    assert inits["f64"].const.numpy().tolist() == [0.1, 1e-300, -2.5]
    assert inits["i64"].const.numpy().tolist() == [-(2**63), 2**63 - 1]
    assert inits["u64"].const.numpy().tolist() == [2**64 - 1]
    assert inits["b"].const.numpy().tolist() == [[True], [False]]
    assert inits["s"].const.numpy().tolist() == ["text", "", b"\xff"]
    assert inits["c64"].const.numpy().tolist() == [1 + 2j]
    assert inits["c128"].const.numpy().tolist() == [1 + 2j]
    assert inits["i4"].const.numpy().astype(np.int64).tolist() == [-8, 0, 7]
    assert inits["u2"].const.numpy().astype(np.int64).tolist() == [0, 3]
    assert inits["f4"].const.numpy().astype(np.float32).tolist() == [1.5, -6.0]
    for name, dtype in (("bf16", DType.BFLOAT16), ("e4m3", DType.FLOAT8E4M3FN), ("e8m0", DType.FLOAT8E8M0)):
        assert inits[name].const.dtype == dtype
    assert inits["bf16"].const.numpy().astype(np.float32).tolist() == [1.0, -2.5]
    text = print_model(m)
    # Readable where exact, bytes where not (bf16, float8, int4, complex ...).
    assert "%f32 = const f32[5] [1.5, -0.0, inf, -inf, nan]" in text
    assert "%f16 = const f16[3] [0.1, 65500.0, -1.0]" in text  # float16(0.1) prints its shortest form
    assert re.search(r'%bf16 = const bf16\[2\] b64"', text)
    assert re.search(r'%i4 = const i4\[3\] b64"', text)
    # Every dtype survives export and re-import by onnx.
    proto = lepton_ir.to_onnx(m)
    for tp in proto.graph.initializer:
        if tp.data_type == TP.STRING:
            continue
        want = inits[tp.name].const.numpy()
        got = nh.to_array(tp)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), tp.name


def test_nan_payloads_and_odd_strings_are_exact() -> None:
    arr = np.array([1.0, np.nan, -0.0, np.inf], np.float32)
    arr.view(np.uint32)[1] = 0x7FC00123
    g = Graph("g")
    c = g.constant(arr, "c")
    s = g.constant(np.array(["ok", b"\xff\x00", "tab\there \u2028"], dtype=object), "s", dtype=DType.STRING)
    g.outputs = [c, s]
    m = Model(g)
    text, m2 = roundtrip(m)
    assert 'b64"' in text.splitlines()[2]  # the NaN payload forces the byte form
    got = m2.graph.initializers["c"].const.numpy()
    assert got.tobytes() == arr.tobytes()
    assert m2.graph.initializers["s"].const.numpy().tolist() == ["ok", b"\xff\x00", "tab\there \u2028"]
    assert "\u2028" not in text  # non-printable characters are escaped: one record per line


# ------------------------------------------------------------------------------------------------
# a model using every IR feature: exports the very same ONNX message after a round trip
# ------------------------------------------------------------------------------------------------
def kitchen_sink() -> onnx.ModelProto:
    f32 = TP.FLOAT
    nan_payload = np.array([1.0, np.nan, -0.0, np.inf], np.float32)
    nan_payload.view(np.uint32)[1] = 0x7FC00123
    w = nh.from_array(np.arange(4, dtype=np.float32).reshape(2, 2), "w")
    w.doc_string = "weight doc"
    big = nh.from_array(np.linspace(0, 1, 40, dtype=np.float32).reshape(5, 8), "big")
    strs = oh.make_tensor("strs", TP.STRING, [3], [b"plain", b"\xff\xfe odd", "ünï \"q\"\n".encode()])
    sp = oh.make_sparse_tensor(nh.from_array(np.array([1.5, 2.5], np.float32), "sp"),
                               nh.from_array(np.array([1, 5], np.int64), "sp_idx"), [2, 3])
    sub = oh.make_graph([oh.make_node("Add", ["xin", "w"], ["sub_out"])], "sub body",
                        [oh.make_tensor_value_info("xin", f32, [2, 2])],
                        [oh.make_tensor_value_info("sub_out", f32, [2, 2])])
    then_g = oh.make_graph([oh.make_node("Mul", ["a/b:0", "w"], ["t_out"])], "then",
                           [], [oh.make_tensor_value_info("t_out", f32, None)])
    tp = oh.make_sequence_type_proto(oh.make_tensor_type_proto(TP.INT64, ["K"]))
    attrs = dict(
        f=0.1, i=-7, s="hello\tworld", s_bytes=b"\x80\x81", t=nh.from_array(nan_payload, "tt"),
        g=sub, fs=[1.0, 2.5], is_=[1, 2, 3], ss=["a", "b"], ts=[nh.from_array(np.array([1, 2], np.int8))],
        gs=[sub], sp=sp, sps=[sp], tp=tp,
        tps=[tp, oh.make_optional_type_proto(oh.make_tensor_type_proto(f32, None))],
    )
    n1 = oh.make_node("FusedConv", ["a/b:0", "w", ""], ["fc", "", "fc2"], name="fused 1", domain="com.microsoft",
                      doc_string="a node doc", **attrs)
    n1.metadata_props.add(key="origin", value="layer1")
    n1.attribute.append(oh.make_attribute("empty_floats", [], attr_type=onnx.AttributeProto.FLOATS))
    n2 = oh.make_node("If", ["c"], ["if_out"], then_branch=then_g, else_branch=then_g)
    n3 = oh.make_node("Relu", ["fc"], ["0"], domain="ai.onnx")
    n4 = oh.make_node("custom_fn", ["0"], ["fn_out"], domain="custom", alpha=0.5)
    n5 = oh.make_node("Identity", ["strs"], ["strs_out"])
    g = oh.make_graph(
        [n1, n2, n3, n4, n5], "kitchen sink",
        [oh.make_tensor_value_info("a/b:0", f32, ["N", "batch size", None], doc_string="input doc"),
         oh.make_tensor_value_info("c", TP.BOOL, []),
         oh.make_value_info("sq", oh.make_sequence_type_proto(oh.make_tensor_type_proto(f32, None))),
         oh.make_value_info("op", oh.make_optional_type_proto(oh.make_tensor_type_proto(TP.INT64, []))),
         oh.make_value_info("mp", oh.make_map_type_proto(TP.INT64, oh.make_tensor_type_proto(f32, [1]))),
         oh.make_value_info("spi", oh.make_sparse_tensor_type_proto(f32, [3, 3])),
         oh.make_tensor_value_info("w", f32, [2, 2])],
        [oh.make_tensor_value_info("fn_out", f32, None, doc_string="out doc"),
         oh.make_tensor_value_info("if_out", f32, None), oh.make_tensor_value_info("fc2", f32, None),
         oh.make_tensor_value_info("strs_out", TP.STRING, [3])],
        initializer=[w, big, strs], doc_string="graph doc", sparse_initializer=[sp],
        value_info=[oh.make_tensor_value_info("fc", f32, None, doc_string="fc doc")])
    g.metadata_props.add(key="gk", value="gv")
    qa = g.quantization_annotation.add()
    qa.tensor_name = "fc"
    qa.quant_parameter_tensor_names.add(key="SCALE_TENSOR", value="w")
    fn = oh.make_function("custom", "custom_fn", ["x"], ["y"],
                          [oh.make_node("LeakyRelu", ["x"], ["y"], alpha=0.0)],
                          [oh.make_opsetid("", 17)], attributes=["alpha"], doc_string="fn doc")
    ref = fn.node[0].attribute[0]
    ref.ClearField("f")
    ref.ref_attr_name = "alpha"
    fn.attribute_proto.append(oh.make_attribute("beta", 2.0))
    fn.value_info.append(oh.make_tensor_value_info("y", f32, None))
    fn.metadata_props.add(key="fk", value="fv")
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("ai.onnx", 17), oh.make_opsetid("com.microsoft", 1),
                                        oh.make_opsetid("custom", 1)], functions=[fn],
                      producer_name="kitchen", producer_version="1.0", domain="test.domain", model_version=3,
                      doc_string="model doc")
    m.ir_version = 10
    m.metadata_props.add(key="k", value="v \u2028 odd")
    ti = m.training_info.add()
    ti.algorithm.CopyFrom(sub)
    return m


def test_kitchen_sink_is_lossless() -> None:
    m = lepton_ir.load(kitchen_sink())
    text, _ = roundtrip(m)
    roundtrip(m, None)
    for piece in ('com.microsoft::FusedConv(%"a/b:0", %w, _)', "%fc, _, %fc2 =", 'f=0.1,', 's_bytes=b64"gIE="',
                  "empty_floats: floats=[]", "tp=type seq<i64[K]>", "alpha: float=@alpha",
                  "func custom::custom_fn[alpha, beta=2.0](%x) -> (%y)", "%big = const f32[5,8] <sha256:",
                  "ai_onnx_spelling=true", "extra <training_info=[b64", '%sp = sparse [2,3] values=f32[2]'):
        assert piece in text, piece
    want = canonical(lepton_ir.to_onnx(m))
    got = canonical(lepton_ir.to_onnx(parse_model(print_model(m, max_inline_elements=None))))
    assert got.SerializeToString() == want.SerializeToString()


# ------------------------------------------------------------------------------------------------
# summaries, options, unnamed values, graphs
# ------------------------------------------------------------------------------------------------
def test_summarised_constants() -> None:
    g = Graph("g")
    w = g.constant(np.arange(17, dtype=np.float32), "w")
    small = g.constant(np.arange(16, dtype=np.float32), "small")
    g.outputs = [w, small]
    m = Model(g)
    text, m2 = roundtrip(m)
    digest = w.const.digest()
    assert f"%w = const f32[17] <sha256:{digest}>" in text
    assert "%small = const f32[16] [0.0, 1.0," in text
    t = m2.graph.initializers["w"].const
    assert isinstance(t, SummarizedTensor) and t.digest() == digest and t.dtype == DType.FLOAT
    assert t.shape.dims == (17,)
    with pytest.raises(LeptonError, match="summarised"):
        t.numpy()
    with pytest.raises(LeptonError, match="summarised"):
        lepton_ir.to_onnx(m2)
    full = print_model(m, max_inline_elements=None)
    assert "sha256" not in full
    assert print_model(m, max_inline_elements=0).count("sha256") == 2


def test_types_option_and_determinism() -> None:
    m = fixture("conv_bn.lep")
    assert print_model(m) == print_model(m)
    untyped = print_model(m, types=False)
    assert "%c = Conv(%x, %w, %b) {kernel_shape=[1, 1], pads=[0, 0, 0, 0]}\n" in untyped
    assert "graph conv_bn(%x: f32[N,3,4,4]) -> (%y: f32[N,4,4,4])" in untyped  # signatures keep types
    m2 = parse_model(untyped)
    assert m2.graph.nodes[0].output.type is None


def test_unnamed_values_get_stable_numbers() -> None:
    g = Graph("g")
    x = g.add_input(Value(None, TensorType(DType.FLOAT, lepton_ir.Shape([2]))))
    named_zero = g.op("Neg", x, name="n")
    named_zero.name = "0"  # a real ONNX name "0" must not be confused with unnamed %0
    y = g.op("Relu", named_zero)
    body = Graph("body", outputs=[])
    inner = _op_into(body, "Abs", y)
    body.outputs = [inner]
    z = g.op("If", g.op("Cast", x, to=9), then_branch=body, else_branch=Graph("e", outputs=[y]))
    g.outputs = [z]
    m = Model(g)
    text, m2 = roundtrip(m)
    assert "graph g(%0: f32[2]) -> (%3)" in text
    assert '%"0" = Neg(%0)' in text and '%1 = Relu(%"0")' in text and "%4 = Abs(%1)" in text
    assert m2.graph.inputs[0].name is None and m2.graph.nodes[0].output.name == "0"
    text2, _ = roundtrip(m2)
    assert text2 == text


def _op_into(g: Graph, op: str, *inputs: Value) -> Value:
    return g.op(op, *inputs)


def test_print_and_parse_graph() -> None:
    g = fixture("if_outer_scope.lep").graph
    text = print_graph(g)
    assert text.startswith("graph select(")
    g2 = parse_graph(text)
    g2.verify()
    assert print_graph(g2) == text


def test_minimal_text_without_header() -> None:
    m = parse_model("graph g(%x: f32[2]) -> (%y) {\n  %y = Relu(%x)\n  return %y\n}\n")
    m.verify()
    assert m.opset_imports == {"": 17} and m.graph.outputs[0].producer().op_type == "Relu"


def test_comments_and_whitespace_are_insignificant() -> None:
    a = parse_model("graph g(%x: f32[2]) -> (%y) { %y = Relu(%x) return %y }")
    b = parse_model("# header\ngraph   g ( %x :f32 [ 2 ] )->( %y ) {  # body\n\n  %y=Relu ( %x )  # relu\n"
                    "  return  %y\n}\n# trailing\n")
    assert print_model(a) == print_model(b)


def test_hand_written_attribute_forms() -> None:
    m = parse_model("""
    graph g(%x: f32[2]) -> (%y) {
      %y = Foo(%x) {i=3, f=2.5, fi: float=2, fl=[1, 2.5], e: ints=[], s="a", t=tensor i64[2] [1, 2],
                    ty=type seq<f32[?]>, r: int=@r}
      return %y
    }""")
    attrs = m.graph.nodes[0].attrs
    kinds = {k: a.type for k, a in attrs.items()}
    assert kinds == {"i": AttrType.INT, "f": AttrType.FLOAT, "fi": AttrType.FLOAT, "fl": AttrType.FLOATS,
                     "e": AttrType.INTS, "s": AttrType.STRING, "t": AttrType.TENSOR, "ty": AttrType.TYPE_PROTO,
                     "r": AttrType.INT}
    assert attrs["fi"].value == 2.0 and attrs["fl"].value == [1.0, 2.5] and attrs["r"].ref == "r"


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------
ERRORS = [
    ("graph g(%x: f32[2]) -> (%y) {\n  %y = Relu(%z)\n  return %y\n}", r"line 2, col 13: undefined value %z"),
    ("graph g(%x: f32[2]) -> (%y) {\n  %y = Relu(%x)\n}", r"line 3, col 1: missing 'return' before '}'"),
    ("graph g(%x: f99[2]) -> () {\n return\n}", r"line 1, col 13: unknown element type 'f99'"),
    ("graph g() -> (%y) {\n  %y = const f32[3] [1.0, 2.0]\n  return %y\n}",
     r"line 2, col 21: f32\[3\] needs 3 elements, found 2"),
    ("graph g() -> (%y) {\n  %y = const i8[1] [300]\n  return %y\n}", r"line 2, col 21: 300 is out of range for i8"),
    ("graph g(%x: f32) -> (%y) {\n  %y = Relu(%x)\n  %y = Relu(%x)\n  return %y\n}",
     r"line 3, col 3: value %y is already defined"),
    ('graph g(%x: f32) -> (%y) {\n  %y = Foo(%x) {s="abc}\n  return %y\n}',
     r"line 2, col 19: unterminated string literal"),
    ("graph g(%x: f32) -> (%y) {\n  %y = Foo(%x) {e=[]}\n  return %y\n}",
     r"line 2, col 19: an empty list attribute needs its kind"),
    ("graph g(%x: f32) -> (%y) {\n  %y = Foo(%x) {a=1, a=2}\n  return %y\n}",
     r"line 2, col 22: attribute 'a' is given twice"),
    ("graph g(%x: f32) -> (%y) {\n  %y = Relu(%x)\n  return %x\n}",
     r"line 3, col 3: return values do not match the outputs in the graph signature"),
    ("graph g(%x: f32) -> (%y) {\n  %y = Relu(%x) $\n  return %y\n}", r"line 2, col 17: unexpected character '\$'"),
    ('graph g() -> (%y) {\n  %y = const u8[2] b64"AA=="\n  return %y\n}',
     r"line 2, col 20: u8\[2\] needs 2 bytes, the b64 literal holds 1"),
    ('graph g(%x: f32) -> (%y) {\n  %y = Foo(%x) {s="\\q"}\n  return %y\n}',
     r"line 2, col 20: unknown escape sequence \\q"),
    ("model <ir_version=\"8\">\ngraph g() -> () {\n return\n}", r"line 1, col 7: property 'ir_version' has the wrong"),
    ("graph g(%x: f32) -> (%y) {\n  %y = Relu(%x)\n  return %y\n}\nextra_stuff",
     r"line 5, col 1: expected 'func', 'extra' or end of input"),
    ("graph g(%x: seq<f32) -> () {\n return\n}", r"line 1, col 20: expected '>' to close the type"),
    ("graph g(%x: f32) -> (%y) {\n  %y = com.microsoft::Foo(%x)\n  return %y\n}",
     r"line 2, col 8: domain 'com.microsoft' of Foo is not in the model's opset imports"),
    ("graph g() -> (%y) {\n  %y = const f32[1] [1e39]\n  return %y\n}", r"line 2, col 22: 1e39 is out of range"),
    ("graph g(%x: f32) -> (%x) {\n  return _\n}", r"line 2, col 10: a graph output cannot be omitted"),
    ("graph g() -> (%w) {\n  %w = const f32[2] [1.0, 2.0] : f32[3]\n  return %w\n}",
     r"line 2, col 34: type f32\[3\] does not match the constant f32\[2\]"),
]


@pytest.mark.parametrize("text,message", ERRORS, ids=[m.split(": ", 1)[1][:40] for _, m in ERRORS])
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(TextParseError) as info:
        parse_model(text)
    msg = str(info.value)
    assert "\n" not in msg
    assert re.match(message, msg), msg


def test_mangled_text_raises_only_text_parse_errors() -> None:
    """Random damage to valid texts gives TextParseError (or a valid model), never another error."""
    import random

    texts = [p.read_text() for p in FIXTURE_FILES] + [print_model(lepton_ir.load(kitchen_sink()))]
    pieces = ["%", '"', "<", ">", "[", "]", "{", "}", "(", ")", ",", "=", ":", "?", "_", "@x", 'b64"', "1.5",
              "-3", "nan", "graph", "const", "sparse", "tensor", "type", "seq<", "f32", "::", "->", "return",
              "%0", '%"q"', "\n", "#", "<sha256:ab>", "i4", "u8[2]", "model", "func", "extra", "\\u{110000}"]
    rng = random.Random(0)
    for _ in range(2000):
        t = rng.choice(texts)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(t))
            op = rng.random()
            if op < 0.33:
                t = t[:i] + t[i + rng.randint(1, 5):]
            elif op < 0.66:
                t = t[:i] + rng.choice(pieces) + t[i:]
            else:
                t = t[:i] + rng.choice(pieces) + t[i + rng.randint(1, 3):]
        try:
            parse_model(t).verify()
        except TextParseError as e:
            assert re.match(r"line \d+, col \d+: \S", str(e)) and "\n" not in str(e)


# ------------------------------------------------------------------------------------------------
# property tests
# ------------------------------------------------------------------------------------------------
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(name=names, doc=st.text(max_size=20), dim=names)
def test_any_name_and_doc_round_trips(name: str, doc: str, dim: str) -> None:
    g = Graph(name)
    x = g.add_input(Value(name, TensorType(DType.FLOAT, lepton_ir.Shape([dim, None, 3])), doc=doc))
    y = g.op("Relu", x)
    y.name = name + "_out"
    g.outputs = [y]
    m = Model(g, doc=doc, metadata_props={name: doc})
    _, m2 = roundtrip(m)
    assert m2.graph.name == name and m2.graph.inputs[0].name == name and m2.graph.inputs[0].doc == doc
    assert m2.graph.inputs[0].shape.dims == (dim, None, 3) and m2.metadata_props == {name: doc}


@settings(max_examples=60, deadline=None)
@given(bits=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20),
       dtype=st.sampled_from([np.float32, np.float16, np.float64]))
def test_any_float_bits_round_trip(bits: list[int], dtype) -> None:
    raw = np.array(bits, np.uint32)
    arr = {np.float32: raw.view(np.float32), np.float16: raw.astype(np.uint16).view(np.float16),
           np.float64: (raw.astype(np.uint64) * 2654435761).view(np.float64)}[dtype]
    g = Graph("g")
    g.outputs = [g.constant(arr, "c")]
    _, m2 = roundtrip(Model(g), None)
    assert m2.graph.initializers["c"].const.numpy().tobytes() == arr.tobytes()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_models_run_bit_identically(data) -> None:
    from lepton_ir.testing.strategies import inputs_for, onnx_models

    proto = data.draw(onnx_models(max_nodes=8))
    m = lepton_ir.load(proto)
    roundtrip(m)
    roundtrip(m, None)
    feeds = inputs_for(proto, seed=0)
    got = ort_run(lepton_ir.to_onnx(parse_model(print_model(m, max_inline_elements=None))), feeds)
    assert bit_identical(ort_run(proto, feeds), got)


# ------------------------------------------------------------------------------------------------
# corpus sweeps
# ------------------------------------------------------------------------------------------------
def _conformance():
    from lepton_ir.testing.corpus import _collected

    return _collected()


def test_conformance_corpus_round_trips() -> None:
    """Every ONNX conformance case: print-parse-print identical, summarised and full (< 60 s)."""
    cases = _conformance()
    start = time.perf_counter()
    failures = []
    for case in cases:
        try:
            m = lepton_ir.load(case.model)
            for mi in (16, None):
                s1 = print_model(m, max_inline_elements=mi)
                m2 = parse_model(s1)
                m2.verify()
                if print_model(m2, max_inline_elements=mi) != s1:
                    failures.append(f"{case.name} ({mi}): text differs")
        except Exception as e:  # collect all, report together
            failures.append(f"{case.name}: {type(e).__name__}: {e}")
    elapsed = time.perf_counter() - start
    assert len(cases) >= 1884
    assert not failures, f"{len(failures)} of {len(cases)} failed:\n" + "\n".join(failures[:20])
    assert elapsed < 60, f"sweep took {elapsed:.1f} s"


def test_onnx_data_models_round_trip() -> None:
    from lepton_ir.testing.corpus import _data_model_entries

    entries, _ = _data_model_entries(("light", "simple", "pytorch-converted", "pytorch-operator"))
    assert len(entries) >= 140
    failures = []
    for kind, name, path in entries:
        try:
            m = lepton_ir.load(path)
            for mi in (16, None):
                s1 = print_model(m, max_inline_elements=mi)
                m2 = parse_model(s1)
                m2.verify()
                if print_model(m2, max_inline_elements=mi) != s1:
                    failures.append(f"{kind}/{name} ({mi}): text differs")
        except Exception as e:
            failures.append(f"{kind}/{name}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures[:20])


def test_onnx_data_models_run_bit_identically() -> None:
    from lepton_ir.testing.corpus import onnx_data_models

    checked = 0
    for dm in onnx_data_models(("simple", "pytorch-converted", "pytorch-operator")):
        if "#" in dm.name:
            continue
        proto = onnx.load(str(dm.model_path))
        try:
            want = ort_run(proto, dm.inputs)
        except Exception:
            continue  # ONNX Runtime cannot run the original either
        m = lepton_ir.load(dm.model_path)
        got = ort_run(lepton_ir.to_onnx(parse_model(print_model(m, max_inline_elements=None))), dm.inputs)
        assert bit_identical(want, got), dm.name
        checked += 1
    assert checked >= 90


REAL_MODEL_NAMES = ["ppocr-det", "ppocr-rec", "ppocr-cls", "magika", "silero-vad", "silero-vad-ifless",
                    "minilm-l3", "ddddocr-old"]


@pytest.mark.parametrize("name", REAL_MODEL_NAMES)
def test_real_models(name: str) -> None:
    """Real pretrained models (when fetched): round trips, and bit-identical ORT runs for small ones."""
    import lepton_ir.testing.corpus as corpus

    path = corpus.require_real_model(name)
    m = lepton_ir.load(path)
    roundtrip(m)
    if path.stat().st_size > 5_000_000:
        return  # the full-mode check of the big ones costs seconds each; the small ones cover it
    full, m2 = roundtrip(m, None)
    feeds = corpus.realistic_inputs(name)
    assert bit_identical(ort_run(onnx.load(str(path)), feeds), ort_run(lepton_ir.to_onnx(m2), feeds))


def test_conformance_cases_run_bit_identically() -> None:
    """parse(print(full)) -> to_onnx gives ONNX Runtime outputs bit-identical to the original."""
    from lepton_ir.testing.corpus import conformance_cases

    everything = os.environ.get("LEPTON_TEXT_ORT_ALL") == "1"
    checked = 0
    for k, case in enumerate(conformance_cases()):
        if not everything and k % 6:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want = ort_run(case.model, case.inputs)
        except Exception:
            continue  # ONNX Runtime cannot run the original (unsupported op or type)
        m = parse_model(print_model(lepton_ir.load(case.model), max_inline_elements=None))
        got = ort_run(lepton_ir.to_onnx(m), case.inputs)
        assert bit_identical(want, got), case.name
        checked += 1
    assert checked >= (1500 if everything else 250)
