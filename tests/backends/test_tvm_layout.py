"""tvm-cpu: symbolic-dim warning and the NCHWc layout option (real TVM, ONNX Runtime references)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

pytest.importorskip("tvm")

import lepton  # noqa: E402
from lepton_backends.tvm import testing  # noqa: E402

RTOL, ATOL = 1e-3, 1e-4


def _compile(model: onnx.ModelProto, tmp_path, name: str, **kw) -> tuple[object, list[str]]:
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lepton.optimize(str(path), passes="canonicalize", backend=kw.pop("backend", "tvm-cpu"),
                        output=str(tmp_path / name), **kw)
    return lepton.load(str(tmp_path / name)), [str(w.message) for w in caught]


# ---------------------------------------------------------------------------------------------
# Symbolic dims: a one-line warning naming the --input-shape to pass


def test_symbolic_batch_warns_with_the_shape_to_pin(tmp_path):
    model = testing.symbolic_batch_mlp()
    runner, msgs = _compile(model, tmp_path, "sym")
    hints = [m for m in msgs if "symbolic input dims" in m]
    assert len(hints) == 1, msgs
    assert "--input-shape x=1x12 " in hints[0] and "\n" not in hints[0]
    # still a working (symbolic) artifact: the warning does not change what is built
    x = np.random.default_rng(0).standard_normal((3, 12)).astype(np.float32)
    np.testing.assert_allclose(runner.run({"x": x})["y"], testing.ort_run(model, {"x": x})["y"], rtol=RTOL, atol=ATOL)


def test_pinned_batch_does_not_warn(tmp_path):
    _, msgs = _compile(testing.symbolic_batch_mlp(), tmp_path, "pin", input_shapes={"x": [1, 12]})
    assert not [m for m in msgs if "symbolic input dims" in m], msgs


# ---------------------------------------------------------------------------------------------
# layout=nchwc: packed convs, layout carried through element-wise ops, pooling, concat, adds


def _convnet(kind: str, c: int = 32, size: int = 12) -> onnx.ModelProto:
    """Small convnets with the structures the layout has to carry (c a multiple of 8 and 16)."""
    from onnx import TensorProto, helper

    b = testing._Builder(7)
    x = b.op("Relu", [b.bn(b.conv("input", 3, c, 3), c)])  # RGB stem: 3 channels stay NCHW
    if kind == "residual":
        y = b.op("Relu", [b.bn(b.conv(x, c, c, 3), c)])
        y = b.bn(b.conv(y, c, c, 3, bias=False), c)
        x = b.op("Relu", [b.op("Add", [x, y])])
        x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        x = b.conv(x, c, 2 * c, 3, stride=2)  # strided packed conv
    elif kind == "depthwise":
        w = (b.rng.standard_normal((c, 1, 3, 3)) * 0.3).astype(np.float32)
        x = b.op("Conv", [x, b.const(w)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=c)
        x = b.op("Clip", [b.bn(x, c), b.const(np.float32(0.0)), b.const(np.float32(6.0))])
        x = b.conv(x, c, c, 1)  # pointwise after depthwise: NCHW -> packed
    elif kind == "grouped":
        w = (b.rng.standard_normal((c, c // 4, 3, 3)) * 0.3).astype(np.float32)
        x = b.op("Relu", [b.op("Conv", [x, b.const(w)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4)])
        x = b.conv(x, c, c, 3)
    elif kind == "concat":
        left = b.op("Relu", [b.conv(x, c, c, 1)])
        right = b.op("Relu", [b.conv(x, c, c, 3)])
        x = b.op("Concat", [left, right], axis=1)
        x = b.op("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
        x = b.conv(x, 2 * c, c, 3)
    else:
        raise ValueError(kind)
    x = b.op("GlobalAveragePool", [x])
    b.op("Flatten", [x])
    b.nodes[-1].output[0] = "y"
    return b.model([helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2 * c if kind == "residual" else c])],
                   f"layout_{kind}")


def _packed_kernels(model: onnx.ModelProto) -> list[str]:
    """Names of the PrimFuncs the nchwc pipeline makes (to check the layout was really applied)."""
    import tvm
    from lepton_backends.tvm import lower
    from lepton_backends.tvm.targets import resolve_target

    target = resolve_target("native")
    mod = lower.make_pipeline(target, layout="nchwc")(lower.to_relax(model, target=target))
    return [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]


@pytest.mark.parametrize("kind", ["residual", "depthwise", "grouped", "concat"])
def test_nchwc_matches_onnx_runtime(tmp_path, kind):
    model = _convnet(kind)
    x = {"input": np.random.default_rng(1).standard_normal((1, 3, 12, 12)).astype(np.float32)}
    ref = testing.ort_run(model, x)["y"]
    runner, _ = _compile(model, tmp_path, kind, layout="nchwc")
    np.testing.assert_allclose(runner.run(x)["y"], ref, rtol=RTOL, atol=ATOL)
    names = _packed_kernels(model)
    assert any("conv2d_NCHWc" in n for n in names), names  # the packed conv really is there


def test_nchwc_keeps_unpackable_convs_nchw():
    # 3 input channels (RGB stem) and the depthwise conv cannot be packed: they stay NCHW convs
    names = _packed_kernels(_convnet("depthwise"))
    assert any("conv2d_NCHWc" in n for n in names), names
    assert sum(1 for n in names if "conv2d" in n and "NCHWc" not in n) >= 2, names
