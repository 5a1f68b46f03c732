"""Folding BatchNormalization and per-channel Mul/Div/Add/Sub into Conv, ConvTranspose, Gemm, MatMul."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_harness import F32, assert_not_fused, fuse_and_check, fuse_with_report, make_model, node, rand


def _bn_inits(c: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"g": rand(c, seed=seed + 1), "be": rand(c, seed=seed + 2), "mu": rand(c, seed=seed + 3),
            "var": rand(c, seed=seed + 4, positive=True)}


def _conv(c_out: int = 4, c_in: int = 3, bias: bool = True) -> tuple[list, dict]:
    inits = {"w": rand(c_out, c_in, 3, 3, seed=10)}
    ins = ["x", "w"]
    if bias:
        inits["b"] = rand(c_out, seed=11)
        ins.append("b")
    return [node("Conv", ins, "y", pads=[1, 1, 1, 1])], inits


X = {"x": (F32, [2, 3, 6, 6])}
FEED = {"x": rand(2, 3, 6, 6)}


@pytest.mark.parametrize("bias", [True, False])
def test_batchnorm_into_conv(bias: bool) -> None:
    nodes, inits = _conv(bias=bias)
    nodes.append(node("BatchNormalization", ["y", "g", "be", "mu", "var"], "z", epsilon=1e-3))
    m, _ = fuse_and_check(make_model(nodes, X, ["z"], {**inits, **_bn_inits(4)}), FEED,
                          applied="fold-batchnorm-into-conv", absent=["BatchNormalization"])


@pytest.mark.parametrize("group", [1, 3])
def test_batchnorm_into_convtranspose(group: int) -> None:
    inits = {"w": rand(3, 2, 3, 3, seed=5)}
    c_out = 2 * group
    inits["b"] = rand(c_out, seed=6)
    nodes = [node("ConvTranspose", ["x", "w", "b"], "y", group=group, strides=[2, 2]),
             node("BatchNormalization", ["y", "g", "be", "mu", "var"], "z")]
    # onnx's reference ConvTranspose mis-reshapes grouped weights, so only ORT judges group > 1.
    fuse_and_check(make_model(nodes, X, ["z"], {**inits, **_bn_inits(c_out)}), FEED,
                   applied="fold-batchnorm-into-convtranspose", absent=["BatchNormalization"], reference=group == 1)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_batchnorm_into_gemm(trans_b: int) -> None:
    w = rand(5, 4, seed=3)
    inits = {"w": w.T.copy() if trans_b else w, "c": rand(4, seed=4), **_bn_inits(4)}
    nodes = [node("Gemm", ["a", "w", "c"], "y", transB=trans_b, alpha=0.7, beta=1.3),
             node("BatchNormalization", ["y", "g", "be", "mu", "var"], "z")]
    fuse_and_check(make_model(nodes, {"a": (F32, [3, 5])}, ["z"], inits), {"a": rand(3, 5)},
                   applied="fold-batchnorm-into-gemm", absent=["BatchNormalization"])


def test_batchnorm_into_matmul_2d_needs_bias_slot() -> None:
    # BN = scale + shift; MatMul has no bias, so the shift cannot be folded: near miss.
    nodes = [node("MatMul", ["a", "w"], "y"), node("BatchNormalization", ["y", "g", "be", "mu", "var"], "z")]
    assert_not_fused(make_model(nodes, {"a": (F32, [3, 5])}, ["z"], {"w": rand(5, 4), **_bn_inits(4)}),
                     {"a": rand(3, 5)}, "fold-batchnorm-into-matmul", "no bias")


@pytest.mark.parametrize("shape", [(4, 1, 1), (1, 4, 1, 1), (), (1,), (1, 1, 1)])
@pytest.mark.parametrize("op", ["Mul", "Div", "Add", "Sub"])
def test_per_channel_into_conv(op: str, shape: tuple) -> None:
    nodes, inits = _conv()
    inits["k"] = rand(*shape, seed=20, positive=True) if shape else np.array(1.7, np.float32)
    nodes.append(node(op, ["y", "k"], "z"))
    fuse_and_check(make_model(nodes, X, ["z"], inits), FEED, applied=f"fold-{op.lower()}-into-conv", absent=[op])


def test_mul_add_chain_into_conv_without_bias() -> None:
    nodes, inits = _conv(bias=False)
    inits.update(s=rand(4, 1, 1, seed=1), t=rand(4, 1, 1, seed=2))
    nodes += [node("Mul", ["s", "y"], "m"), node("Add", ["m", "t"], "z")]
    fuse_and_check(make_model(nodes, X, ["z"], inits), FEED, applied=["fold-mul-into-conv", "fold-add-into-conv"],
                   absent=["Mul", "Add"])


@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_per_channel_into_gemm_and_convtranspose(op: str) -> None:
    nodes = [node("Gemm", ["a", "w"], "y", transB=1), node(op, ["y", "k"], "z")]
    fuse_and_check(make_model(nodes, {"a": (F32, [3, 5])}, ["z"], {"w": rand(4, 5), "k": rand(4, seed=9)}),
                   {"a": rand(3, 5)}, applied=f"fold-{op.lower()}-into-gemm", absent=[op])
    nodes = [node("ConvTranspose", ["x", "w"], "y"), node(op, ["y", "k"], "z")]
    fuse_and_check(make_model(nodes, X, ["z"], {"w": rand(3, 2, 2, 2), "k": rand(2, 1, 1, seed=9)}), FEED,
                   applied=f"fold-{op.lower()}-into-convtranspose", absent=[op])


def test_mul_into_matmul_batched_input() -> None:
    nodes = [node("MatMul", ["a", "w"], "y"), node("Mul", ["y", "k"], "z")]
    fuse_and_check(make_model(nodes, {"a": (F32, [2, 3, 5])}, ["z"], {"w": rand(5, 4), "k": rand(4, seed=9)}),
                   {"a": rand(2, 3, 5)}, applied="fold-mul-into-matmul", absent=["Mul"])


# ---- negative cases ---------------------------------------------------------------------------------
def test_broadcast_shape_is_not_folded() -> None:
    # (C, H, W) varies over the spatial axes: not per-channel.
    nodes, inits = _conv()
    inits["k"] = rand(4, 6, 6, seed=3)
    nodes.append(node("Mul", ["y", "k"], "z"))
    assert_not_fused(make_model(nodes, X, ["z"], inits), FEED, "fold-mul-into-conv", "varies along axis")


def test_higher_rank_constant_is_not_folded() -> None:
    nodes, inits = _conv()
    inits["k"] = rand(1, 1, 4, 1, 1, seed=3)
    nodes.append(node("Add", ["y", "k"], "z"))
    assert_not_fused(make_model(nodes, X, ["z"], inits), FEED, "fold-add-into-conv", "broadcast the rank-4 output up")


def test_batch_axis_constant_is_not_folded() -> None:
    nodes, inits = _conv()
    inits["k"] = rand(2, 1, 1, 1, seed=3)
    nodes.append(node("Mul", ["y", "k"], "z"))
    assert_not_fused(make_model(nodes, X, ["z"], inits), FEED, "fold-mul-into-conv", "varies along axis 0")


def test_shared_intermediate_is_not_folded() -> None:
    nodes, inits = _conv()
    inits.update(_bn_inits(4))
    nodes += [node("BatchNormalization", ["y", "g", "be", "mu", "var"], "z"), node("Relu", ["y"], "r")]
    assert_not_fused(make_model(nodes, X, ["z", "r"], inits), FEED, "fold-batchnorm-into-conv", "other uses")


def test_conv_output_as_graph_output_is_not_folded() -> None:
    nodes, inits = _conv()
    inits["k"] = rand(4, 1, 1)
    nodes.append(node("Mul", ["y", "k"], "z"))
    assert_not_fused(make_model(nodes, X, ["z", "y"], inits), FEED, "fold-mul-into-conv", "graph output")


def test_non_constant_statistics_are_not_folded() -> None:
    nodes, inits = _conv()
    inits.update(_bn_inits(4))
    del inits["mu"]
    nodes.append(node("BatchNormalization", ["y", "g", "be", "mu", "var"], "z"))
    proto = make_model(nodes, {**X, "mu": (F32, [4])}, ["z"], inits)
    assert_not_fused(proto, {**FEED, "mu": rand(4, seed=8)}, "fold-batchnorm-into-conv", "not constant")


def test_non_constant_weights_are_not_folded() -> None:
    nodes = [node("Conv", ["x", "w"], "y"), node("Mul", ["y", "k"], "z")]
    proto = make_model(nodes, {**X, "w": (F32, [4, 3, 1, 1])}, ["z"], {"k": rand(4, 1, 1)})
    assert_not_fused(proto, {**FEED, "w": rand(4, 3, 1, 1)}, "fold-mul-into-conv", "weights are not constant")


def test_runtime_operand_is_not_folded() -> None:
    nodes, inits = _conv()
    nodes.append(node("Mul", ["y", "k"], "z"))
    proto = make_model(nodes, {**X, "k": (F32, [4, 1, 1])}, ["z"], inits)
    model, stats = assert_not_fused(proto, {**FEED, "k": rand(4, 1, 1)}, "fold-mul-into-conv")


def test_div_by_zero_is_not_folded() -> None:
    nodes, inits = _conv()
    inits["k"] = np.array([1, 0, 2, 3], np.float32).reshape(4, 1, 1)
    nodes.append(node("Div", ["y", "k"], "z"))
    model, stats = assert_not_fused(make_model(nodes, X, ["z"], inits), FEED, "fold-div-into-conv", "zeros")


def test_training_mode_batchnorm_is_not_folded() -> None:
    nodes, inits = _conv()
    inits.update(_bn_inits(4))
    nodes.append(node("BatchNormalization", ["y", "g", "be", "mu", "var"], ["z", "rm", "rv"], training_mode=1))
    proto = make_model(nodes, X, ["z"], inits)
    import lepton_ir

    model = lepton_ir.load(proto)
    stats = fuse_with_report(model)
    assert not stats.applied
    assert any("training_mode" in m.reason for m in stats.near_misses)


def test_mismatching_channel_axis_is_not_folded() -> None:
    # BN normalises axis 1, but a batched MatMul's output channels are on the last axis.
    nodes = [node("MatMul", ["a", "w"], "y"), node("BatchNormalization", ["y", "g", "be", "mu", "var"], "z")]
    proto = make_model(nodes, {"a": (F32, [2, 4, 5])}, ["z"], {"w": rand(5, 3), **_bn_inits(4)})
    assert_not_fused(proto, {"a": rand(2, 4, 5)}, "fold-batchnorm-into-matmul", "channels are elsewhere")
