"""Folding Pad into Conv, AveragePool and MaxPool."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_harness import F32, assert_not_fused, fuse_and_check, make_model, node, rand

X = {"x": (F32, [1, 2, 6, 7])}
FEED = {"x": rand(1, 2, 6, 7) + 1.0}  # mostly positive, so a wrong pad value would show
PADS = np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)


def _pad(value: float | None = None, pads: np.ndarray = PADS, mode: str = "constant") -> tuple[list, dict]:
    inits = {"pads": pads}
    ins = ["x", "pads"]
    if value is not None:
        inits["v"] = np.array(value, np.float32)
        ins.append("v")
    return [node("Pad", ins, "p", mode=mode)], inits


@pytest.mark.parametrize("conv_pads", [None, [1, 0, 0, 1]])
@pytest.mark.parametrize("value", [None, 0.0])
def test_pad_into_conv(value: float | None, conv_pads: list | None) -> None:
    nodes, inits = _pad(value)
    kw = {"pads": conv_pads} if conv_pads else {}
    nodes.append(node("Conv", ["p", "w"], "z", **kw))
    fuse_and_check(make_model(nodes, X, ["z"], {**inits, "w": rand(3, 2, 3, 3)}), FEED, applied="pad-into-conv",
                   absent=["Pad"])


def test_pad_into_conv_old_opset_attributes() -> None:
    nodes = [node("Pad", ["x"], "p", pads=[0, 0, 1, 1, 0, 0, 1, 1]), node("Conv", ["p", "w"], "z")]
    fuse_and_check(make_model(nodes, X, ["z"], {"w": rand(3, 2, 3, 3)}, opset=10), FEED, applied="pad-into-conv")


@pytest.mark.parametrize("pool_attrs", [{}, {"pads": [1, 1, 1, 1], "count_include_pad": 1}, {"count_include_pad": 0}])
def test_pad_into_averagepool(pool_attrs: dict) -> None:
    nodes, inits = _pad()
    nodes.append(node("AveragePool", ["p"], "z", kernel_shape=[4, 4], **pool_attrs))
    fuse_and_check(make_model(nodes, X, ["z"], inits), FEED, applied="pad-into-averagepool", absent=["Pad"])


def test_pad_into_maxpool_with_minus_inf() -> None:
    nodes, inits = _pad(-np.inf)
    nodes.append(node("MaxPool", ["p"], "z", kernel_shape=[3, 3]))
    fuse_and_check(make_model(nodes, X, ["z"], inits), {"x": rand(1, 2, 6, 7) - 3.0}, applied="pad-into-maxpool",
                   absent=["Pad"])


# ---- negative cases ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_non_constant_mode_is_not_folded(mode: str) -> None:
    nodes, inits = _pad(mode=mode)
    nodes.append(node("Conv", ["p", "w"], "z"))
    assert_not_fused(make_model(nodes, X, ["z"], {**inits, "w": rand(3, 2, 3, 3)}), FEED, "pad-into-conv",
                     f"mode is {mode}")


def test_nonzero_value_is_not_folded_into_conv() -> None:
    nodes, inits = _pad(1.5)
    nodes.append(node("Conv", ["p", "w"], "z"))
    assert_not_fused(make_model(nodes, X, ["z"], {**inits, "w": rand(3, 2, 3, 3)}), FEED, "pad-into-conv", "not 0")


def test_channel_pads_are_not_folded() -> None:
    nodes, inits = _pad(pads=np.array([0, 1, 1, 1, 0, 0, 1, 1], np.int64))
    nodes.append(node("Conv", ["p", "w"], "z"))
    assert_not_fused(make_model(nodes, X, ["z"], {**inits, "w": rand(3, 3, 3, 3)}), FEED, "pad-into-conv",
                     "channel axis")


def test_negative_pads_are_not_folded() -> None:
    nodes, inits = _pad(pads=np.array([0, 0, -1, 1, 0, 0, 1, 1], np.int64))
    nodes.append(node("Conv", ["p", "w"], "z"))
    assert_not_fused(make_model(nodes, X, ["z"], {**inits, "w": rand(3, 2, 3, 3)}), FEED, "pad-into-conv",
                     "negative")


def test_auto_pad_conv_is_not_folded() -> None:
    nodes, inits = _pad()
    nodes.append(node("Conv", ["p", "w"], "z", auto_pad="SAME_UPPER"))
    assert_not_fused(make_model(nodes, X, ["z"], {**inits, "w": rand(3, 2, 3, 3)}), FEED, "pad-into-conv", "auto_pad")


def test_zero_pad_is_not_folded_into_maxpool() -> None:
    # Padding with 0 makes 0 a candidate maximum; MaxPool's own padding never wins. Inputs are negative.
    nodes, inits = _pad(0.0)
    nodes.append(node("MaxPool", ["p"], "z", kernel_shape=[3, 3]))
    assert_not_fused(make_model(nodes, X, ["z"], inits), {"x": rand(1, 2, 6, 7) - 5.0}, "pad-into-maxpool", "not -inf")


def test_averagepool_excluding_its_own_pads_is_not_folded() -> None:
    nodes, inits = _pad()
    nodes.append(node("AveragePool", ["p"], "z", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0))
    assert_not_fused(make_model(nodes, X, ["z"], inits), FEED, "pad-into-averagepool", "count_include_pad=0")


def test_averagepool_ceil_mode_is_not_folded() -> None:
    nodes, inits = _pad()
    nodes.append(node("AveragePool", ["p"], "z", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1))
    assert_not_fused(make_model(nodes, X, ["z"], inits), FEED, "pad-into-averagepool", "ceil_mode")


def test_shared_pad_is_not_folded() -> None:
    nodes, inits = _pad()
    nodes += [node("Conv", ["p", "w"], "z"), node("Neg", ["p"], "n")]
    assert_not_fused(make_model(nodes, X, ["z", "n"], {**inits, "w": rand(3, 2, 3, 3)}), FEED, "pad-into-conv",
                     "other uses")


def test_pool_pads_reaching_the_kernel_are_not_folded() -> None:
    nodes, inits = _pad()
    nodes.append(node("AveragePool", ["p"], "z", kernel_shape=[2, 2]))
    assert_not_fused(make_model(nodes, X, ["z"], inits), FEED, "pad-into-averagepool", "smaller than the kernel")
