"""The attention core Softmax(scale * Q @ K + mask) @ V -> ai.lepton::Attention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusion_harness import F32, assert_not_fused, fuse_and_check, make_model, node, rand

B, NH, S, D = 2, 2, 3, 4
QKV = {"q": (F32, [B, NH, S, D]), "k": (F32, [B, NH, D, S]), "v": (F32, [B, NH, S, D])}
FEED = {"q": rand(B, NH, S, D, seed=1), "k": rand(B, NH, D, S, seed=2), "v": rand(B, NH, S, D, seed=3)}
MASK = (np.array([0, 0, -1e4], np.float32) * np.ones((B, 1, 1, S), np.float32))


def attention_model(scale: str | None = "Div", mask: bool = True, axis: int = -1, k_transposed: bool = False,
                    opset: int = 17, extra: list | None = None, mask_value: np.ndarray = MASK):
    nodes, inits = [], {}
    ins = dict(QKV)
    if k_transposed:  # K given as (B, NH, S, D) and transposed in the graph
        ins["k"] = (F32, [B, NH, S, D])
        nodes.append(node("Transpose", ["k"], "kt", perm=[0, 1, 3, 2]))
        nodes.append(node("MatMul", ["q", "kt"], "s0"))
    else:
        nodes.append(node("MatMul", ["q", "k"], "s0"))
    cur = "s0"
    if scale is not None:
        inits["c"] = np.float32(math.sqrt(D) if scale == "Div" else 1 / math.sqrt(D))
        nodes.append(node(scale, [cur, "c"], "s1"))
        cur = "s1"
    if mask:
        inits["mask"] = mask_value
        nodes.append(node("Add", [cur, "mask"], "s2"))
        cur = "s2"
    nodes += [node("Softmax", [cur], "p", axis=axis), node("MatMul", ["p", "v"], "z")]
    nodes += extra or []
    outs = ["z"] + [n.output[0] for n in (extra or [])]
    return make_model(nodes, ins, outs, inits, opset=opset)


def _feed(k_transposed: bool = False) -> dict:
    if k_transposed:
        return {**FEED, "k": rand(B, NH, S, D, seed=2)}
    return FEED


@pytest.mark.parametrize("scale", ["Div", "Mul", None])
@pytest.mark.parametrize("mask", [True, False])
def test_attention_core(scale: str | None, mask: bool) -> None:
    m, _ = fuse_and_check(attention_model(scale, mask), FEED, applied="attention", ops=["ai.lepton::Attention"],
                          absent=["Softmax"])
    assert len(m.graph) == 1


def test_attention_with_transposed_key_and_old_opset() -> None:
    m, _ = fuse_and_check(attention_model(k_transposed=True, opset=12), _feed(True), applied="attention",
                          ops=["ai.lepton::Attention"], absent=["Transpose"])
    (att,) = list(m.graph)
    assert att.attr("transB") == 1


def test_softmax_over_another_axis_is_not_attention() -> None:
    assert_not_fused(attention_model(axis=2), FEED, "attention", "not the last")


def test_shared_probabilities_are_not_attention() -> None:
    proto = attention_model(extra=[node("Neg", ["p"], "n")])
    assert_not_fused(proto, FEED, "attention", "other uses")


def test_runtime_scale_is_not_attention() -> None:
    proto = attention_model(scale="Div")
    # Make the scale a graph input instead of a constant.
    init = [i for i in proto.graph.initializer if i.name == "c"][0]
    proto.graph.initializer.remove(init)
    from onnx import helper
    proto.graph.input.append(helper.make_tensor_value_info("c", F32, []))
    m, stats = assert_not_fused(proto, {**FEED, "c": np.array(2.0, np.float32)}, "attention")


def test_mask_of_higher_rank_is_not_attention() -> None:
    proto = attention_model(mask_value=np.zeros((1, B, NH, S, S), np.float32))
    assert_not_fused(proto, FEED, "attention", "mask rank")
