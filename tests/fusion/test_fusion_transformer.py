"""Transformer patterns: LayerNorm from its decomposition, Gelu (Erf/Tanh forms), bias-Gelu, skip LayerNorm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusion_harness import F32, assert_not_fused, fuse_and_check, make_model, node, rand

H = 8
X = {"x": (F32, [2, 3, H])}
FEED = {"x": rand(2, 3, H) * 2 + 0.5}


def _reduce(name: str, src: str, axes: list[int], opset: int, keepdims: int = 1) -> tuple[list, dict]:
    if opset >= 18:
        return [node("ReduceMean", [src, f"{name}_axes"], name, keepdims=keepdims)], {
            f"{name}_axes": np.array(axes, np.int64)}
    return [node("ReduceMean", [src], name, axes=axes, keepdims=keepdims)], {}


def layernorm_model(*, opset: int = 17, variance: str = "pow", axes: list[int] = (-1,), axes2: list[int] | None = None,
                    eps_inside: bool = True, tail: bool = True, keepdims: int = 1, exponent: float = 2.0,
                    inputs: dict = X, gamma_shape: tuple = (H,), runtime_gamma: bool = False):
    axes = list(axes)
    nodes, inits = [], {"eps": np.float32(1e-5), "two": np.float32(exponent)}
    n, i = _reduce("mean", "x", axes, opset, keepdims)
    nodes += n; inits.update(i)
    nodes.append(node("Sub", ["x", "mean"], "d"))
    if variance == "pow":
        nodes.append(node("Pow", ["d", "two"], "sq"))
    else:
        nodes.append(node("Mul", ["d", "d"], "sq"))
    n, i = _reduce("var", "sq", axes2 if axes2 is not None else axes, opset)
    nodes += n; inits.update(i)
    if eps_inside:
        nodes += [node("Add", ["var", "eps"], "ve"), node("Sqrt", ["ve"], "std")]
    else:  # eps after the square root: a different function
        nodes += [node("Sqrt", ["var"], "s0"), node("Add", ["s0", "eps"], "std")]
    nodes.append(node("Div", ["d", "std"], "nrm" if tail else "z"))
    if tail:
        nodes += [node("Mul", ["nrm", "gamma"], "sc"), node("Add", ["sc", "beta"], "z")]
        inits["beta"] = rand(H, seed=2)
        if not runtime_gamma:
            inits["gamma"] = rand(*gamma_shape, seed=1)
    ins = dict(inputs)
    if runtime_gamma:
        ins["gamma"] = (F32, list(gamma_shape))
    return make_model(nodes, ins, ["z"], inits, opset=opset)


@pytest.mark.parametrize("opset", [12, 17, 18])
@pytest.mark.parametrize("variance", ["pow", "mul"])
def test_layernorm_from_decomposition(opset: int, variance: str) -> None:
    want = "LayerNormalization" if opset >= 17 else "ai.lepton::LayerNormalization"
    m, _ = fuse_and_check(layernorm_model(opset=opset, variance=variance), FEED, applied="layernorm", ops=[want],
                          absent=["ReduceMean", "Sqrt", "Div"])
    assert len(m.graph) == 1, [n.qualified_op for n in m.graph]


def test_layernorm_without_affine_tail() -> None:
    fuse_and_check(layernorm_model(tail=False), FEED, applied="layernorm-from-pow", ops=["LayerNormalization"])


def test_layernorm_over_two_trailing_axes() -> None:
    fuse_and_check(layernorm_model(axes=[-2, -1], tail=False), FEED, applied="layernorm-from-pow")
    fuse_and_check(layernorm_model(axes=[1, 2], tail=False), FEED, applied="layernorm-from-pow")


def test_layernorm_with_unknown_shape_takes_size_from_gamma() -> None:
    # Exporters with dynamic shapes leave x's dims unknown; gamma says the normalised size.
    proto = layernorm_model(inputs={"x": (F32, ["b", "s", "h"])}, opset=12)
    m, _ = fuse_and_check(proto, FEED, applied="layernorm-affine-from-pow", ops=["ai.lepton::LayerNormalization"])


# ---- negative cases ---------------------------------------------------------------------------------
def test_epsilon_after_sqrt_is_not_layernorm() -> None:
    assert_not_fused(layernorm_model(eps_inside=False), FEED, "layernorm")


def test_mismatching_axes_are_not_layernorm() -> None:
    assert_not_fused(layernorm_model(axes=[-1], axes2=[-2, -1]), FEED, "layernorm", "different axes")


def test_leading_axes_are_not_layernorm() -> None:
    assert_not_fused(layernorm_model(axes=[1]), FEED, "layernorm", "not the last")


def test_wrong_exponent_is_not_layernorm() -> None:
    assert_not_fused(layernorm_model(exponent=3.0), FEED, "layernorm", "exponent")


def test_keepdims_zero_is_not_layernorm() -> None:
    # Sub(x, mean) with keepdims=0 broadcasts the mean along the wrong axis (legal for cubes only).
    feed = {"x": rand(3, 3, 3)}
    proto = layernorm_model(axes=[-1], keepdims=0, tail=False, inputs={"x": (F32, [3, 3, 3])})
    assert_not_fused(proto, feed, "layernorm", "keepdims=0")


def test_runtime_gamma_is_not_folded_into_layernorm() -> None:
    proto = layernorm_model(runtime_gamma=True)
    m, stats = assert_not_fused(proto, {**FEED, "gamma": rand(H)}, "layernormalization-scale-fold", "not constant")
    assert any(n.op_type == "LayerNormalization" for n in m.graph)  # the core still fuses


def test_gamma_over_batch_axes_is_not_folded() -> None:
    proto = layernorm_model(gamma_shape=(3, H))
    assert_not_fused(proto, FEED, "layernormalization-scale-fold", "non-normalised axes")


# ---- Gelu ---------------------------------------------------------------------------------------------
def gelu_erf_model(variant: str, opset: int = 17, sqrt2: float = math.sqrt(2.0), inputs: dict = X):
    inits = {"one": np.float32(1.0), "half": np.float32(0.5)}
    if variant.startswith("div"):
        nodes = [node("Div", ["x", "k"], "a")]
        inits["k"] = np.float32(sqrt2)
    else:
        nodes = [node("Mul", ["k", "x"], "a")]
        inits["k"] = np.float32(1 / sqrt2)
    nodes += [node("Erf", ["a"], "e"), node("Add", ["e", "one"], "p")]
    if variant.endswith("half-outer"):
        nodes += [node("Mul", ["x", "p"], "m"), node("Mul", ["m", "half"], "z")]
    else:
        nodes += [node("Mul", ["x", "half"], "m"), node("Mul", ["m", "p"], "z")]
    return make_model(nodes, inputs, ["z"], inits, opset=opset)


def gelu_tanh_model(variant: str = "half-inner", opset: int = 17, c: float = 0.044715):
    inits = {"three": np.float32(3), "c": np.float32(c), "k": np.float32(math.sqrt(2 / math.pi)),
             "one": np.float32(1), "half": np.float32(0.5)}
    nodes = [node("Pow", ["x", "three"], "x3"), node("Mul", ["x3", "c"], "cx3"), node("Add", ["x", "cx3"], "in"),
             node("Mul", ["in", "k"], "ki"), node("Tanh", ["ki"], "t"), node("Add", ["t", "one"], "p")]
    if variant == "half-outer":
        nodes += [node("Mul", ["x", "p"], "m"), node("Mul", ["m", "half"], "z")]
    else:
        nodes += [node("Mul", ["half", "x"], "m"), node("Mul", ["m", "p"], "z")]
    return make_model(nodes, X, ["z"], inits, opset=opset)


@pytest.mark.parametrize("variant", ["div-half-outer", "div-half-inner", "mul-half-outer", "mul-half-inner"])
@pytest.mark.parametrize("opset", [17, 20])
def test_gelu_erf(variant: str, opset: int) -> None:
    want = "Gelu" if opset >= 20 else "ai.lepton::Gelu"
    m, _ = fuse_and_check(gelu_erf_model(variant, opset), FEED, applied=f"gelu-erf-{variant}", ops=[want],
                          absent=["Erf"])
    assert len(m.graph) == 1


@pytest.mark.parametrize("variant", ["half-outer", "half-inner"])
@pytest.mark.parametrize("opset", [17, 20])
def test_gelu_tanh(variant: str, opset: int) -> None:
    m, _ = fuse_and_check(gelu_tanh_model(variant, opset), FEED, applied=f"gelu-tanh-{variant}", absent=["Tanh"])
    (g,) = list(m.graph)
    assert g.op_type == "Gelu" and g.attr("approximate") in ("tanh", b"tanh")


def test_gelu_with_wrong_constant_is_not_fused() -> None:
    assert_not_fused(gelu_erf_model("div-half-outer", sqrt2=math.sqrt(3.0)), FEED, "gelu-erf", "expected 1.41421")
    assert_not_fused(gelu_tanh_model(c=0.05), FEED, "gelu-tanh", "expected 0.044715")


def test_gelu_with_shared_intermediate_is_not_fused() -> None:
    proto = gelu_erf_model("div-half-outer")
    proto.graph.node.append(node("Neg", ["e"], "n"))
    proto.graph.output.append(proto.graph.output[0].__class__(name="n", type=proto.graph.output[0].type))
    assert_not_fused(proto, FEED, "gelu-erf", "other uses")


@pytest.mark.parametrize("tanh", [False, True])
@pytest.mark.parametrize("opset", [17, 20])
def test_bias_gelu(tanh: bool, opset: int) -> None:
    proto = gelu_tanh_model(opset=opset) if tanh else gelu_erf_model("div-half-outer", opset)
    # Put a bias Add in front: x -> Add(bias, x0).
    for n in proto.graph.node:
        n.input[:] = ["xb" if i == "x" else i for i in n.input]
    proto.graph.node.insert(0, node("Add", ["bias", "x"], "xb"))
    from onnx import numpy_helper
    proto.graph.initializer.append(numpy_helper.from_array(rand(H, seed=5), "bias"))
    m, _ = fuse_and_check(proto, FEED, applied="bias-gelu", ops=["ai.lepton::BiasGelu"])
    assert len(m.graph) == 1


def test_bias_gelu_with_matrix_bias_is_not_fused() -> None:
    proto = gelu_erf_model("div-half-outer")
    for n in proto.graph.node:
        n.input[:] = ["xb" if i == "x" else i for i in n.input]
    proto.graph.node.insert(0, node("Add", ["x", "bias"], "xb"))
    from onnx import numpy_helper
    proto.graph.initializer.append(numpy_helper.from_array(rand(3, H, seed=5), "bias"))
    assert_not_fused(proto, FEED, "bias-gelu", "not a constant vector")


# ---- skip LayerNorm -----------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("beta", [True, False])
def test_skip_layernorm(rank: int, beta: bool) -> None:
    shape = [2, 3, 4, H][-rank:]
    ins = ["s", "g", "b"] if beta else ["s", "g"]
    nodes = [node("Add", ["x", "r"], "s"), node("LayerNormalization", ins, "z", epsilon=1e-6)]
    inits = {"g": rand(H, seed=1), "b": rand(H, seed=2)} if beta else {"g": rand(H, seed=1)}
    proto = make_model(nodes, {"x": (F32, shape), "r": (F32, shape)}, ["z"], inits)
    m, _ = fuse_and_check(proto, {"x": rand(*shape), "r": rand(*shape, seed=4)}, applied="skip-layernorm",
                          ops=["ai.lepton::SkipLayerNorm"])


def test_skip_layernorm_from_decomposed_layernorm_old_opset() -> None:
    proto = layernorm_model(opset=12)
    for n in proto.graph.node:
        n.input[:] = ["xs" if i == "x" else i for i in n.input]
    proto.graph.node.insert(0, node("Add", ["x", "r"], "xs"))
    proto.graph.input.append(proto.graph.input[0].__class__(name="r", type=proto.graph.input[0].type))
    m, _ = fuse_and_check(proto, {**FEED, "r": rand(2, 3, H, seed=9)}, applied=["layernorm", "skip-layernorm"],
                          ops=["ai.lepton::SkipLayerNorm"])
    assert len(m.graph) == 1


@pytest.mark.parametrize("shapes", [([2, 3, H], [3, H]), ([1, 3, H], [2, 3, H]), (["b", "s", H], ["c", "s", H])])
def test_skip_layernorm_with_broadcast_or_unproven_shapes(shapes: tuple) -> None:
    # Fused (the op broadcasts like Add) but lowered to Add + LayerNormalization for ORT, whose
    # SkipLayerNormalization kernel needs equal shapes.
    nodes = [node("Add", ["x", "r"], "s"), node("LayerNormalization", ["s", "g"], "z")]
    proto = make_model(nodes, {"x": (F32, shapes[0]), "r": (F32, shapes[1])}, ["z"], {"g": rand(H)})
    cx = [d if isinstance(d, int) else 2 for d in shapes[0]]
    cr = [d if isinstance(d, int) else 2 for d in shapes[1]]
    m, _ = fuse_and_check(proto, {"x": rand(*cx), "r": rand(*cr, seed=3)}, applied="skip-layernorm")
    import lepton_ir
    from fusion_harness import copy
    from fusion_harness import lower_fused
    low = copy(m)
    lower_fused(low, ort=True)
    assert "com.microsoft::SkipLayerNormalization" not in [n.qualified_op for n in low.graph]


def test_skip_layernorm_with_mismatching_hidden_size_is_not_fused() -> None:
    nodes = [node("Add", ["x", "r"], "s"), node("LayerNormalization", ["s", "g"], "z")]
    proto = make_model(nodes, {"x": (F32, [2, 3, "h"]), "r": (F32, [2, 3, "h"])}, ["z"], {"g": rand(H)})
    assert_not_fused(proto, {"x": rand(2, 3, H), "r": rand(2, 3, H)}, "skip-layernorm", "hidden size")


def test_skip_layernorm_over_two_axes_is_not_fused() -> None:
    nodes = [node("Add", ["x", "r"], "s"), node("LayerNormalization", ["s", "g"], "z", axis=-2)]
    proto = make_model(nodes, {"x": (F32, [2, 3, H]), "r": (F32, [2, 3, H])}, ["z"], {"g": rand(3, H)})
    assert_not_fused(proto, {"x": rand(2, 3, H), "r": rand(2, 3, H)}, "skip-layernorm", "last axis")


def test_skip_layernorm_with_shared_sum_is_not_fused() -> None:
    nodes = [node("Add", ["x", "r"], "s"), node("LayerNormalization", ["s", "g"], "z"), node("Neg", ["s"], "n")]
    proto = make_model(nodes, {"x": (F32, [2, 3, H]), "r": (F32, [2, 3, H])}, ["z", "n"], {"g": rand(H)})
    assert_not_fused(proto, {"x": rand(2, 3, H), "r": rand(2, 3, H)}, "skip-layernorm", "other uses")
