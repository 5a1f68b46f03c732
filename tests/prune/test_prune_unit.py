"""prune on small text-form models: each dependency rule, removal against masking, the record."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lepton_ir
from lepton_passes import PassManager, parse_pipeline
from lepton_passes.prune import PRUNE_KEY, Prune, analyse, detect_simd, read_record

from prune_helpers import const, copy, dims, ints, model, outputs, prune_vs_mask


def chain():
    return model("(%x: f32[1,3,8,8]) -> (%y)", [
        const("w1", [8, 3, 3, 3], 1), const("b1", [8], 2),
        const("w2", [8, 8, 3, 3], 3), const("b2", [8], 4),
        const("w3", [4, 8, 1, 1], 5),
        "  %c1 = Conv(%x, %w1, %b1) {pads=[1, 1, 1, 1]}",
        "  %r1 = Relu(%c1)",
        "  %c2 = Conv(%r1, %w2, %b2) {pads=[1, 1, 1, 1]}",
        "  %r2 = Relu(%c2)",
        "  %y = Conv(%r2, %w3)",
    ], "%y")


def test_chain_removes_channels_physically():
    pruned, rec = prune_vs_mask(chain(), ratio=0.5)
    assert dims(pruned, "c1") == [1, 4, 8, 8] and dims(pruned, "c2") == [1, 4, 8, 8]
    assert dims(pruned, "w2")[:2] == [4, 4]
    assert dims(pruned, "y") == [1, 4, 8, 8]  # graph output keeps its width
    assert rec["removed_channels"] == 8 and rec["macs_after"] < rec["macs_before"]


def test_ratio_zero_is_identity():
    m = chain()
    lepton_ir.infer_types(m)
    before = lepton_ir.to_text(m)
    assert Prune(ratio=0.0).run(m) is False and lepton_ir.to_text(m) == before
    assert Prune(ratio=0.3, multiple=64).run(m) is False and lepton_ir.to_text(m) == before  # rounds to all
    assert PRUNE_KEY not in m.metadata_props


def test_residual_add_merges_groups():
    m = model("(%x: f32[1,4,6,6]) -> (%y)", [
        const("w0", [8, 4, 1, 1], 1), const("wa", [8, 8, 3, 3], 2), const("wb", [8, 8, 3, 3], 3),
        const("wo", [2, 8, 1, 1], 4),
        "  %s = Conv(%x, %w0)",
        "  %a = Conv(%s, %wa) {pads=[1, 1, 1, 1]}",
        "  %ra = Relu(%a)",
        "  %b = Conv(%ra, %wb) {pads=[1, 1, 1, 1]}",
        "  %sum = Add(%s, %b)",
        "  %y = Conv(%sum, %wo)",
    ], "%y")
    pruned, rec = prune_vs_mask(m, ratio=0.5)
    # the trunk (s, b, sum) lost the same channels; the inner channel (a) its own
    assert dims(pruned, "s")[1] == dims(pruned, "b")[1] == dims(pruned, "sum")[1] == 4
    assert dims(pruned, "a")[1] == 4
    trunk = next(g for g in rec["groups"] if any(r["value"] == "sum" for r in g["slots"]))
    removed = {r["value"]: r["removed"] for r in trunk["slots"]}
    assert removed["s"] == removed["b"] == removed["sum"]


def test_concat_offsets_and_split():
    m = model("(%x: f32[1,3,6,6]) -> (%y, %z)", [
        const("wa", [4, 3, 1, 1], 1), const("wb", [6, 3, 1, 1], 2), const("wc", [5, 10, 1, 1], 3),
        const("wd", [2, 6, 1, 1], 4), const("we", [2, 4, 1, 1], 5),
        "  %a = Conv(%x, %wa)", "  %b = Conv(%x, %wb)",
        "  %cat = Concat(%a, %b) {axis=1}",
        "  %y = Conv(%cat, %wc)",
        ints("sizes", [4, 6]),
        "  %p, %q = Split(%cat, %sizes) {axis=1}",
        "  %z1 = Conv(%q, %wd)",
        "  %z2 = Conv(%p, %we)",
        "  %z = Add(%z1, %z2)",
    ], "%y, %z")
    pruned, _ = prune_vs_mask(m, ratio=0.5)
    a, b = dims(pruned, "a")[1], dims(pruned, "b")[1]
    assert a < 4 and b < 6 and dims(pruned, "cat")[1] == a + b
    assert dims(pruned, "p")[1] == a and dims(pruned, "q")[1] == b


def test_depthwise_couples_input_and_output():
    m = model("(%x: f32[1,3,8,8]) -> (%y)", [
        const("w1", [8, 3, 1, 1], 1), const("wd", [16, 1, 3, 3], 2), const("bd", [16], 3),
        const("w2", [4, 16, 1, 1], 4),
        "  %a = Conv(%x, %w1)",
        "  %d = Conv(%a, %wd, %bd) {group=8, pads=[1, 1, 1, 1]}",  # multiplier 2
        "  %r = Relu(%d)",
        "  %y = Conv(%r, %w2)",
    ], "%y")
    pruned, _ = prune_vs_mask(m, ratio=0.5)
    conv = next(n for n in pruned.graph if n.outputs[0].name == "d")
    assert conv.attr("group") == 4 and dims(pruned, "a")[1] == 4 and dims(pruned, "d")[1] == 8


def test_grouped_conv_keeps_divisibility():
    m = model("(%x: f32[1,3,6,6]) -> (%y)", [
        const("w1", [8, 3, 1, 1], 1), const("wg", [8, 4, 3, 3], 2), const("w2", [2, 8, 1, 1], 3),
        "  %a = Conv(%x, %w1)",
        "  %g = Conv(%a, %wg) {group=2, pads=[1, 1, 1, 1]}",
        "  %y = Conv(%g, %w2)",
    ], "%y")
    pruned, _ = prune_vs_mask(m, ratio=0.5)
    conv = next(n for n in pruned.graph if n.outputs[0].name == "g")
    assert conv.attr("group") == 2
    cin, cout = dims(pruned, "a")[1], dims(pruned, "g")[1]
    assert cin % 2 == 0 and cout % 2 == 0 and cin < 8 and cout < 8


def test_squeeze_excite_block():
    m = model("(%x: f32[1,3,8,8]) -> (%y)", [
        const("w0", [8, 3, 3, 3], 1), const("ws", [4, 8, 1, 1], 2), const("bs", [4], 3),
        const("we", [8, 4, 1, 1], 4), const("be", [8], 5), const("wo", [3, 8, 1, 1], 6),
        "  %t = Conv(%x, %w0) {pads=[1, 1, 1, 1]}",
        "  %p = GlobalAveragePool(%t)",
        "  %s = Conv(%p, %ws, %bs)", "  %sr = Relu(%s)",
        "  %e = Conv(%sr, %we, %be)", "  %gate = HardSigmoid(%e)",
        "  %m = Mul(%t, %gate)",
        "  %y = Conv(%m, %wo)",
    ], "%y")
    pruned, _ = prune_vs_mask(m, ratio=0.5)
    assert dims(pruned, "t")[1] == dims(pruned, "e")[1] == dims(pruned, "m")[1] == 4
    assert dims(pruned, "s")[1] == 2  # the squeeze width is its own group


def test_flatten_into_gemm_strides():
    m = model("(%x: f32[2,1,4,4]) -> (%y)", [
        const("w1", [6, 1, 3, 3], 1), const("b1", [6], 2), const("bs", [6], 3, positive=True),
        const("bb", [6], 4), const("mu", [6], 5), const("var", [6], 6, positive=True),
        const("wf", [6 * 16, 5], 7), const("bf", [5], 8),
        "  %c = Conv(%x, %w1, %b1) {pads=[1, 1, 1, 1]}",
        "  %n = BatchNormalization(%c, %bs, %bb, %mu, %var)",
        "  %r = Relu(%n)",
        "  %f = Flatten(%r) {axis=1}",
        "  %y = Gemm(%f, %wf, %bf)",
    ], "%y")
    pruned, _ = prune_vs_mask(m, ratio=0.5)
    assert dims(pruned, "c")[1] == 3 and dims(pruned, "f") == [2, 48] and dims(pruned, "wf") == [48, 5]
    assert dims(pruned, "bs") == [3]


def test_reshape_into_matmul_and_gemm_transb():
    m = model("(%x: f32[2,2,4,4]) -> (%y)", [
        const("w1", [4, 2, 1, 1], 1), const("wg", [3, 64], 2), const("pc", [4, 1, 1], 3),
        ints("shape", [2, 64]),
        "  %c = Conv(%x, %w1)",
        "  %a = Add(%c, %pc)",  # per-channel constant
        "  %f = Reshape(%a, %shape)",
        "  %y = Gemm(%f, %wg) {transB=1}",
    ], "%y")
    pruned, _ = prune_vs_mask(m, ratio=0.5)
    assert dims(pruned, "f") == [2, 32] and dims(pruned, "pc") == [2, 1, 1]


def test_ffn_matmul_gelu():
    m = model("(%x: f32[2,5,8]) -> (%y)", [
        const("w1", [8, 16], 1), const("b1", [16], 2), const("w2", [16, 8], 3), const("b2", [8], 4),
        "  %h = MatMul(%x, %w1)", "  %hb = Add(%h, %b1)",
        "  %g = Gelu(%hb)" if False else "  %g = Erf(%hb)",
        "  %o = MatMul(%g, %w2)", "  %y = Add(%o, %b2)",
    ], "%y")
    pruned, _ = prune_vs_mask(m, ratio=0.25)
    assert dims(pruned, "w1") == [8, 12] and dims(pruned, "w2") == [12, 8] and dims(pruned, "b1") == [12]


def test_layernorm_over_channels_is_pruned_with_its_parameters():
    m = model("(%x: f32[2,5,8]) -> (%y)", [
        const("w1", [8, 16], 1), const("s", [16], 2, positive=True), const("b", [16], 3), const("w2", [16, 4], 4),
        "  %h = MatMul(%x, %w1)",
        "  %n = LayerNormalization(%h, %s, %b) {axis=-1}",
        "  %y = MatMul(%n, %w2)",
    ], "%y")
    p = copy(m)
    Prune(ratio=0.5, multiple=1).run(p)
    assert dims(p, "s") == [8] and dims(p, "w2") == [8, 4]
    q = copy(m)
    Prune(ratio=0.5, multiple=1, prune_layernorm=False).run(q)
    assert dims(q, "s") == [16]


def test_unknown_op_freezes_and_debug_says_why(capsys):
    m = model("(%x: f32[1,3,6,6]) -> (%y)", [
        const("w1", [8, 3, 1, 1], 1), const("w2", [2, 8, 1, 1], 2),
        "  %a = Conv(%x, %w1)",
        "  %s = Softmax(%a) {axis=1}",  # mixes the channel axis
        "  %y = Conv(%s, %w2)",
    ], "%y")
    p = copy(m)
    assert Prune(ratio=0.5, multiple=1, debug=True).run(p) is False
    err = capsys.readouterr().err
    assert "Softmax" in err and "mixes the channel axis" in err
    assert dims(p, "a")[1] == 8


def test_multiple_rounds_kept_channels():
    m = model("(%x: f32[1,3,4,4]) -> (%y)", [
        const("w1", [32, 3, 1, 1], 1), const("w2", [2, 32, 1, 1], 2),
        "  %a = Conv(%x, %w1)", "  %r = Relu(%a)", "  %y = Conv(%r, %w2)",
    ], "%y")
    for mult, want in ((8, 24), (16, 32), (1, 23)):  # 32 * 0.7 = 22.4, kept rounded up
        p = copy(m)
        Prune(ratio=0.3, multiple=mult).run(p)
        assert dims(p, "a")[1] == want, mult
    assert Prune(target="avx512").lanes == 16 and Prune(target="avx2").lanes == 8 and Prune().lanes == 8
    assert detect_simd() in ("avx512", "avx2", "neon", "sse")


def test_macs_target_and_pipeline_text():
    m = chain()
    p = copy(m)
    PassManager(parse_pipeline("prune{macs=0.5,multiple=1}")).run(p)
    rec = read_record(p)
    assert rec["macs_after"] <= 0.5 * rec["macs_before"] + 1e-6
    assert rec["macs_after"] > 0.2 * rec["macs_before"]
    assert str(parse_pipeline("prune{ratio=0.3},reconstruct")) == "prune,reconstruct"


def test_record_and_importance_variants():
    m = chain()
    for imp in ("l1", "l2", "random", "activation"):
        p = copy(m)
        Prune(ratio=0.5, multiple=1, importance=imp, calib="random:4").run(p)
        rec = json.loads(p.metadata_props[PRUNE_KEY])
        assert rec["importance"] == imp and rec["removed_channels"] == 8
        layers = {r["output"]: r for r in rec["layers"]}
        assert layers["c2"]["pruned_in"] and len(layers["c2"]["kept_out"]) == 4
        assert layers["y"]["kept_out"] is None


def test_pruning_twice_composes_the_record():
    p = copy(chain())
    Prune(ratio=0.5, multiple=1).run(p)
    Prune(ratio=0.5, multiple=1).run(p)
    rec = read_record(p)
    kept = {r["output"]: r for r in rec["layers"]}["c1"]["kept_out"]
    assert len(kept) == 2 and all(0 <= k < 8 for k in kept) and dims(p, "c1")[1] == 2


def test_invalid_options():
    with pytest.raises(Exception, match="ratio"):
        parse_pipeline("prune{ratio=1.5}")
    with pytest.raises(Exception, match="macs"):
        parse_pipeline("prune{macs=0}")


def test_reshape_merging_positions_into_channels():
    # magika's pattern: [1, 8, 4] (positions x channels) -> [1, 2, 16]: channel c feeds columns o*4 + c
    m = model("(%x: f32[1,8,3]) -> (%y)", [
        const("w1", [3, 4], 1), const("w2", [16, 2], 2), ints("shape", [1, 2, 16]),
        "  %h = MatMul(%x, %w1)", "  %r = Relu(%h)",
        "  %f = Reshape(%r, %shape)",
        "  %y = MatMul(%f, %w2)",
    ], "%y")
    pruned, _ = prune_vs_mask(m, ratio=0.5)
    assert dims(pruned, "h") == [1, 8, 2] and dims(pruned, "f") == [1, 2, 8] and dims(pruned, "w2") == [8, 2]


def test_decomposed_layernorm_mean_is_rescaled():
    m = model("(%x: f32[2,8]) -> (%y)", [
        const("w1", [8, 8], 1), const("w2", [8, 3], 2),
        "  %inv = const f32[] [0.125]", ints("ax", [1]),
        "  %h = MatMul(%x, %w1)",
        "  %s = ReduceSum(%h, %ax) {keepdims=1}",
        "  %mu = Mul(%s, %inv)",
        "  %c = Sub(%h, %mu)",
        "  %y = MatMul(%c, %w2)",
    ], "%y")
    p = copy(m)
    Prune(ratio=0.5, multiple=1).run(p)
    assert dims(p, "h") == [2, 4]
    x = {"x": np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)}
    h = x["x"] @ np.asarray(next(v for v in p.graph.initializers.values() if v.name == "w1").const.numpy())
    (y,) = outputs(p, x)
    w2 = np.asarray(next(v for v in p.graph.initializers.values() if v.name == "w2").const.numpy())
    np.testing.assert_allclose(y, (h - h.mean(1, keepdims=True)) @ w2, rtol=1e-5, atol=1e-5)
    q = copy(m)
    assert not Prune(ratio=0.5, multiple=1, prune_layernorm=False).run(q)


def test_attention_whole_heads():
    # 2 heads of 4 over an 8-wide hidden state: Q with the exporters' computed head shape, K/V constant
    m = model("(%x: f32[1,4,8]) -> (%y)", [
        const("win", [8, 8], 9), const("wq", [8, 8], 1), const("wk", [8, 8], 2), const("wv", [8, 8], 3),
        const("bq", [8], 4), const("wo", [8, 8], 5), const("wout", [8, 3], 6),
        ints("hs", [1, 4, 2, 4]), ints("ms", [1, 4, 8]), ints("i0", [0]), ints("i1", [1]),
        ints("nh", [2]), ints("hd", [4]), ints("ax0", [0]),
        "  %h = MatMul(%x, %win)",
        "  %q0 = MatMul(%h, %wq)", "  %q = Add(%q0, %bq)",
        "  %k = MatMul(%h, %wk)", "  %v = MatMul(%h, %wv)",
        "  %sh = Shape(%q)", "  %g0 = Gather(%sh, %i0) {axis=0}", "  %g1 = Gather(%sh, %i1) {axis=0}",
        "  %qs = Concat(%g0, %g1, %nh, %hd) {axis=0}",
        "  %q4 = Reshape(%q, %qs)", "  %k4 = Reshape(%k, %hs)", "  %v4 = Reshape(%v, %hs)",
        "  %qt = Transpose(%q4) {perm=[0, 2, 1, 3]}", "  %kt = Transpose(%k4) {perm=[0, 2, 3, 1]}",
        "  %vt = Transpose(%v4) {perm=[0, 2, 1, 3]}",
        "  %s = MatMul(%qt, %kt)", "  %p = Softmax(%s) {axis=-1}",
        "  %c = MatMul(%p, %vt)", "  %ct = Transpose(%c) {perm=[0, 2, 1, 3]}",
        "  %cm = Reshape(%ct, %ms)",
        "  %o = MatMul(%cm, %wo)", "  %r = Relu(%o)",
        "  %y = MatMul(%r, %wout)",
    ], "%y")
    pruned, _ = prune_vs_mask(m, ratio=0.5)
    assert dims(pruned, "q4") == [1, 4, 1, 4] and dims(pruned, "wq")[1] == 4 and dims(pruned, "bq") == [4]
    assert dims(pruned, "cm") == [1, 4, 4] and dims(pruned, "wo")[0] == 4
    assert dims(pruned, "s")[1] == 1  # one head left
