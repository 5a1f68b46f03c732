"""Activation fusion into ai.lepton::FusedConv / FusedGemm / FusedMatMul, and its lowerings."""

from __future__ import annotations

import numpy as np
import pytest

import lepton_ir
from fusion_harness import F32, assert_not_fused, fuse_and_check, fuse_with_report, lower_fused, make_model, node, rand

# (activation nodes reading "y" and writing "z", extra initializers, expected activation name)
ACTS = {
    "relu": ([node("Relu", ["y"], "z")], {}, "Relu"),
    "tanh": ([node("Tanh", ["y"], "z")], {}, "Tanh"),
    "sigmoid": ([node("Sigmoid", ["y"], "z")], {}, "Sigmoid"),
    "leakyrelu": ([node("LeakyRelu", ["y"], "z", alpha=0.2)], {}, "LeakyRelu"),
    "hardsigmoid": ([node("HardSigmoid", ["y"], "z", alpha=0.3, beta=0.4)], {}, "HardSigmoid"),
    "relu6": ([node("Clip", ["y", "lo", "hi"], "z")], {"lo": np.float32(0), "hi": np.float32(6)}, "Clip"),
    "clip-min-only": ([node("Clip", ["y", "lo"], "z")], {"lo": np.float32(-0.5)}, "Clip"),
    "hardswish": ([node("HardSwish", ["y"], "z")], {}, "HardSwish"),
    "silu": ([node("Sigmoid", ["y"], "s"), node("Mul", ["y", "s"], "z")], {}, "SiLU"),
    "hardswish-hardsigmoid": ([node("HardSigmoid", ["y"], "s", alpha=1 / 6, beta=0.5), node("Mul", ["s", "y"], "z")],
                              {}, "HardSwish"),
    "hardswish-clip": ([node("Add", ["y", "three"], "a"), node("Clip", ["a", "lo", "six"], "c"),
                        node("Mul", ["y", "c"], "m"), node("Div", ["m", "six"], "z")],
                       {"three": np.float32(3), "lo": np.float32(0), "six": np.float32(6)}, "HardSwish"),
}

PRODUCERS = {
    "Conv": ([node("Conv", ["x", "w", "b"], "y", pads=[1, 1, 1, 1], strides=[1, 1])],
             {"x": (F32, [1, 3, 5, 5])}, {"w": rand(4, 3, 3, 3, seed=1), "b": rand(4, seed=2)}),
    "Gemm": ([node("Gemm", ["x", "w", "b"], "y", transB=1, alpha=0.5)],
             {"x": (F32, [3, 6])}, {"w": rand(4, 6, seed=1), "b": rand(4, seed=2)}),
    "MatMul": ([node("MatMul", ["x", "w"], "y")], {"x": (F32, [2, 3, 6])}, {"w": rand(6, 4, seed=1)}),
}


def _feed(inputs: dict) -> dict:
    return {k: rand(*shape, seed=3) * 3 for k, (_, shape) in inputs.items()}


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("producer", list(PRODUCERS))
def test_activation_fusion(producer: str, act: str) -> None:
    pnodes, inputs, inits = PRODUCERS[producer]
    anodes, ainits, name = ACTS[act]
    proto = make_model(pnodes + anodes, inputs, ["z"], {**inits, **ainits}, opset=14)
    model, _ = fuse_and_check(proto, _feed(inputs), applied=f"fuse-{producer.lower()}-",
                              ops=[f"ai.lepton::Fused{producer}"])
    fused = [n for n in model.graph if n.domain == "ai.lepton"]
    assert len(fused) == 1 and fused[0].attr("activation") == name
    assert len(model.graph) == 1, [n.qualified_op for n in model.graph]


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "leakyrelu", "hardsigmoid", "relu6", "hardswish"])
def test_conv_lowers_to_ort_fused_conv(act: str) -> None:
    pnodes, inputs, inits = PRODUCERS["Conv"]
    anodes, ainits, _ = ACTS[act]
    model = lepton_ir.load(make_model(pnodes + anodes, inputs, ["z"], {**inits, **ainits}, opset=14))
    fuse_with_report(model)
    lower_fused(model, ort=True)
    assert [n.qualified_op for n in model.graph] == ["com.microsoft::FusedConv"]
    assert model.opset_imports.get("com.microsoft") == 1 and "ai.lepton" not in model.opset_imports


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "leakyrelu", "hardsigmoid"])
def test_gemm_lowers_to_ort_fused_gemm(act: str) -> None:
    pnodes, inputs, inits = PRODUCERS["Gemm"]
    anodes, ainits, _ = ACTS[act]
    model = lepton_ir.load(make_model(pnodes + anodes, inputs, ["z"], {**inits, **ainits}, opset=14))
    fuse_with_report(model)
    lower_fused(model, ort=True)
    assert [n.qualified_op for n in model.graph] == ["com.microsoft::FusedGemm"]


def test_old_opset_clip_attributes_and_hardswish_decomposition() -> None:
    # Opset 6 Clip carries min/max as attributes; HardSwish (opset 14) must be decomposed at opset 11.
    pnodes, inputs, inits = PRODUCERS["Conv"]
    proto = make_model(pnodes + [node("Clip", ["y"], "z", min=0.0, max=6.0)], inputs, ["z"], inits, opset=10)
    fuse_and_check(proto, _feed(inputs), applied="fuse-conv-clip")
    anodes, ainits, _ = ACTS["hardswish-hardsigmoid"]
    proto = make_model(pnodes + anodes, inputs, ["z"], inits, opset=11)
    fuse_and_check(proto, _feed(inputs), applied="fuse-conv-hardswish")


# ---- negative cases ---------------------------------------------------------------------------------
def test_shared_producer_output_is_not_fused() -> None:
    pnodes, inputs, inits = PRODUCERS["Conv"]
    proto = make_model(pnodes + [node("Relu", ["y"], "z"), node("Neg", ["y"], "n")], inputs, ["z", "n"], inits)
    assert_not_fused(proto, _feed(inputs), "fuse-conv-relu", "other uses")


def test_runtime_clip_bounds_are_not_fused() -> None:
    pnodes, inputs, inits = PRODUCERS["Conv"]
    proto = make_model(pnodes + [node("Clip", ["y", "lo"], "z")], {**inputs, "lo": (F32, [])}, ["z"], inits)
    feed = {**_feed(inputs), "lo": np.array(0.1, np.float32)}
    assert_not_fused(proto, feed, "fuse-conv-clip", "not a constant scalar")


def test_hardsigmoid_with_other_parameters_is_not_hardswish() -> None:
    pnodes, inputs, inits = PRODUCERS["Conv"]
    nodes = pnodes + [node("HardSigmoid", ["y"], "s", alpha=0.2, beta=0.5), node("Mul", ["s", "y"], "z")]
    assert_not_fused(make_model(nodes, inputs, ["z"], inits), _feed(inputs), "fuse-conv-hardswishfromhardsigmoid",
                     "not (1/6, 0.5)")


def test_hardswish_clip_with_wrong_constants_is_not_fused() -> None:
    pnodes, inputs, inits = PRODUCERS["Conv"]
    anodes, ainits, _ = ACTS["hardswish-clip"]
    ainits = {**ainits, "three": np.float32(2.5)}
    assert_not_fused(make_model(pnodes + anodes, inputs, ["z"], {**inits, **ainits}), _feed(inputs),
                     "fuse-conv-hardswishfromclip", "not 3 and 6")


def test_silu_of_a_different_value_is_not_fused() -> None:
    pnodes, inputs, inits = PRODUCERS["Conv"]
    nodes = pnodes + [node("Sigmoid", ["x"], "s"), node("Mul", ["y", "s"], "z")]
    proto = make_model(nodes, {"x": (F32, [1, 4, 5, 5])}, ["z"], {"w": rand(4, 4, 3, 3), "b": rand(4)})
    model, stats = assert_not_fused(proto, {"x": rand(1, 4, 5, 5)}, "fuse-conv-silu")


def test_integer_matmul_is_not_fused() -> None:
    import onnx
    i32 = onnx.TensorProto.INT32
    proto = make_model([node("MatMul", ["x", "w"], "y"), node("Relu", ["y"], "z")], {"x": (i32, [2, 3])}, ["z"],
                       {"w": np.ones((3, 2), np.int32)}, out_type=i32)
    assert_not_fused(proto, {"x": np.arange(6, dtype=np.int32).reshape(2, 3) - 3}, "fuse-matmul-relu",
                     "not a floating-point")
