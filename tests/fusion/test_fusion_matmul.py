"""MatMul + Add to Gemm, Transpose into Gemm / MatMul, and MatMul scaling."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_harness import F32, assert_not_fused, fuse_and_check, fuse_with_report, make_model, node, rand


@pytest.mark.parametrize("bias_shape", [(4,), (1, 4), (3, 4), (3, 1), ()])
def test_matmul_add_to_gemm(bias_shape: tuple) -> None:
    proto = make_model([node("MatMul", ["a", "w"], "y"), node("Add", ["c", "y"], "z")], {"a": (F32, [3, 5])}, ["z"],
                       {"w": rand(5, 4), "c": rand(*bias_shape, seed=2) if bias_shape else np.float32(0.3)})
    fuse_and_check(proto, {"a": rand(3, 5)}, applied="matmul-add-to-gemm", ops=["Gemm"], absent=["MatMul", "Add"])


def test_matmul_add_with_runtime_bias_to_gemm() -> None:
    proto = make_model([node("MatMul", ["a", "b"], "y"), node("Add", ["y", "c"], "z")],
                       {"a": (F32, [3, 5]), "b": (F32, [5, 4]), "c": (F32, [4])}, ["z"])
    fuse_and_check(proto, {"a": rand(3, 5), "b": rand(5, 4), "c": rand(4)}, applied="matmul-add-to-gemm")


def test_batched_matmul_add_is_not_gemm() -> None:
    proto = make_model([node("MatMul", ["a", "w"], "y"), node("Add", ["y", "c"], "z")], {"a": (F32, [2, 3, 5])},
                       ["z"], {"w": rand(5, 4), "c": rand(4)})
    assert_not_fused(proto, {"a": rand(2, 3, 5)}, "matmul-add-to-gemm", "not both 2-D")


def test_bias_broadcasting_the_output_up_is_not_gemm() -> None:
    proto = make_model([node("MatMul", ["a", "w"], "y"), node("Add", ["y", "c"], "z")], {"a": (F32, [3, 5])}, ["z"],
                       {"w": rand(5, 4), "c": rand(2, 3, 4)})
    assert_not_fused(proto, {"a": rand(3, 5)}, "matmul-add-to-gemm", "rank > 2")
    proto = make_model([node("MatMul", ["a", "w"], "y"), node("Add", ["y", "c"], "z")], {"a": (F32, [1, 5])}, ["z"],
                       {"w": rand(5, 4), "c": rand(3, 4)})
    assert_not_fused(proto, {"a": rand(1, 5)}, "matmul-add-to-gemm", "does not broadcast")


def test_shared_matmul_is_not_gemm() -> None:
    proto = make_model([node("MatMul", ["a", "w"], "y"), node("Add", ["y", "c"], "z"), node("Relu", ["y"], "r")],
                       {"a": (F32, [3, 5])}, ["z", "r"], {"w": rand(5, 4), "c": rand(4)})
    assert_not_fused(proto, {"a": rand(3, 5)}, "matmul-add-to-gemm", "other uses")


@pytest.mark.parametrize("which", ["a", "b"])
@pytest.mark.parametrize("flag", [0, 1])
def test_transpose_into_gemm(which: str, flag: int) -> None:
    a, b = rand(3, 5), rand(5, 4, seed=1)
    if which == "a":
        a_in = a if flag else a.T.copy()  # Transpose(a_in) must be what Gemm reads
        nodes = [node("Transpose", ["p"], "t", perm=[1, 0]), node("Gemm", ["t", "b"], "z", transA=flag)]
        feed = {"p": a_in, "b": b}
    else:
        b_in = b if flag else b.T.copy()
        nodes = [node("Transpose", ["p"], "t", perm=[1, 0]), node("Gemm", ["a", "t"], "z", transB=flag)]
        feed = {"a": a, "p": b_in}
    inputs = {k: (F32, list(v.shape)) for k, v in feed.items()}
    fuse_and_check(make_model(nodes, inputs, ["z"]), feed, applied=f"transpose-{which}-into-gemm",
                   absent=["Transpose"])


@pytest.mark.parametrize("which", ["a", "b"])
def test_transpose_into_matmul_2d(which: str) -> None:
    if which == "a":
        nodes = [node("Transpose", ["p"], "t"), node("MatMul", ["t", "q"], "z")]
        feed = {"p": rand(5, 3), "q": rand(5, 4)}
    else:
        nodes = [node("Transpose", ["q"], "t", perm=[1, 0]), node("MatMul", ["p", "t"], "z")]
        feed = {"p": rand(3, 5), "q": rand(4, 5)}
    inputs = {k: (F32, list(v.shape)) for k, v in feed.items()}
    fuse_and_check(make_model(nodes, inputs, ["z"]), feed, applied=f"transpose-{which}-into-matmul-2d",
                   ops=["Gemm"], absent=["Transpose", "MatMul"])


@pytest.mark.parametrize("which", ["a", "b"])
def test_transpose_into_batched_matmul(which: str) -> None:
    if which == "a":
        nodes = [node("Transpose", ["p"], "t", perm=[0, 2, 1]), node("MatMul", ["t", "q"], "z")]
        feed = {"p": rand(2, 5, 3), "q": rand(2, 5, 4)}
    else:
        nodes = [node("Transpose", ["q"], "t", perm=[0, 1, 3, 2]), node("MatMul", ["p", "t"], "z")]
        feed = {"p": rand(2, 2, 3, 5), "q": rand(2, 2, 4, 5)}
    inputs = {k: (F32, list(v.shape)) for k, v in feed.items()}
    fuse_and_check(make_model(nodes, inputs, ["z"]), feed, applied=f"transpose-{which}-into-matmul-batched",
                   ops=["ai.lepton::FusedMatMul"], absent=["Transpose"])


def test_transpose_not_swapping_last_axes_is_kept() -> None:
    nodes = [node("Transpose", ["p"], "t", perm=[1, 0, 2]), node("MatMul", ["t", "q"], "z")]
    feed = {"p": rand(3, 2, 5), "q": rand(2, 5, 4)}
    proto = make_model(nodes, {k: (F32, list(v.shape)) for k, v in feed.items()}, ["z"])
    assert_not_fused(proto, feed, "transpose-a-into-matmul-batched", "does not only swap")


def test_shared_transpose_is_kept() -> None:
    nodes = [node("Transpose", ["p"], "t"), node("Gemm", ["t", "q"], "z"), node("Neg", ["t"], "n")]
    feed = {"p": rand(5, 3), "q": rand(5, 4)}
    proto = make_model(nodes, {k: (F32, list(v.shape)) for k, v in feed.items()}, ["z", "n"])
    assert_not_fused(proto, feed, "transpose-a-into-gemm", "other uses")


@pytest.mark.parametrize("op", ["Mul", "Div"])
def test_matmul_scale(op: str) -> None:
    nodes = [node("MatMul", ["q", "k"], "y"), node(op, ["y", "s"], "z")]
    feed = {"q": rand(2, 3, 4), "k": rand(2, 4, 3)}
    proto = make_model(nodes, {k: (F32, list(v.shape)) for k, v in feed.items()}, ["z"], {"s": np.float32(8.0)})
    fuse_and_check(proto, feed, applied=f"matmul-{op.lower()}-scale", ops=["ai.lepton::FusedMatMul"])


def test_matmul_scale_needs_a_scalar() -> None:
    nodes = [node("MatMul", ["q", "k"], "y"), node("Mul", ["y", "s"], "z")]
    feed = {"q": rand(2, 3, 4), "k": rand(2, 4, 3)}
    proto = make_model(nodes, {k: (F32, list(v.shape)) for k, v in feed.items()}, ["z"], {"s": rand(3)})
    assert_not_fused(proto, feed, "matmul-mul-scale", "not a constant scalar")


@pytest.mark.parametrize("opset", [9, 13])
def test_transpose_into_matmul_2d_old_opset_needs_c(opset: int) -> None:
    # Gemm's C is optional only from opset 11 (found on onnx's test_Linear_no_bias, opset 9).
    nodes = [node("Transpose", ["w"], "t", perm=[1, 0]), node("MatMul", ["p", "t"], "z")]
    proto = make_model(nodes, {"p": (F32, [3, 5])}, ["z"], {"w": rand(4, 5)}, opset=opset)
    fuse_and_check(proto, {"p": rand(3, 5)}, applied="transpose-b-into-matmul-2d", ops=["Gemm"])


def test_matmul_add_is_not_gemm_before_opset_7() -> None:
    proto = make_model([node("MatMul", ["a", "w"], "y"), node("Add", ["y", "c"], "z")], {"a": (F32, [3, 5])}, ["z"],
                       {"w": rand(5, 4), "c": rand(4)}, opset=6)
    import lepton_ir
    model = lepton_ir.load(proto)
    stats = fuse_with_report(model)
    assert not stats.applied and any("opset 7" in m.reason for m in stats.near_misses)
