"""tvm-cpu: convs whose output rows do not split into SIMD vectors (magika's 1-D conv written as a
5x1 Conv) are vectorised over output channels (cpu_schedule._channels_last_weights); real TVM,
ONNX Runtime references."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

pytest.importorskip("tvm")

import tvm  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from lepton_backends.tvm import compile_model, cpu_schedule, load_artifact, lower, testing  # noqa: E402
from lepton_backends.tvm.targets import resolve_target  # noqa: E402

RTOL, ATOL = 1e-3, 1e-4


def _row_conv(cin: int = 32, cout: int = 32, length: int = 206, k: int = 5, vertical: bool = True,
              epilogue: bool = True) -> onnx.ModelProto:
    """Conv over a 1-D signal stored as ``[1, cin, length, 1]`` (``vertical``, a kx1 kernel, as
    magika) or ``[1, cin, 1, length]`` (a 1xk kernel); output length - k + 1 = 202 = 2 x 101
    rows, so at most 2-lane vectors along them. With ``epilogue``: bias and a Tanh-GELU-like tail."""
    b = testing._Builder(11)
    kshape = [k, 1] if vertical else [1, k]
    w = (b.rng.standard_normal((cout, cin, *kshape)) * np.sqrt(1.0 / (cin * k))).astype(np.float32)
    ins = ["x", b.const(w)]
    if epilogue:
        ins.append(b.const((0.1 * b.rng.standard_normal(cout)).astype(np.float32), "b"))
    y = b.op("Conv", ins, kernel_shape=kshape)
    if epilogue:
        y = b.op("Mul", [y, b.op("Sigmoid", [y])])
    b.nodes[-1].output[0] = "y"
    xshape = [1, cin, length, 1] if vertical else [1, cin, 1, length]
    oshape = [1, cout, length - k + 1, 1] if vertical else [1, cout, 1, length - k + 1]
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, xshape)],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, oshape)], "row_conv")


def _conv_func(model: onnx.ModelProto, target) -> tvm.tirx.PrimFunc:
    """The model's conv PrimFunc right before the schedule step of the tvm-cpu pipeline."""
    from tvm.s_tir import dlight as dl

    mod = lower.to_relax(model)
    passes = lower.pipeline_passes(target)
    upto = next(i for i, p in enumerate(passes) if isinstance(p, dl.ApplyDefaultSchedule))
    with target:
        for p in passes[:upto]:
            mod = p(mod)
    (f,) = [f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint]
    return f


CASES = {
    "kx1_epilogue": {},
    "kx1_bare": {"epilogue": False},
    "1xk_epilogue": {"vertical": False},
    "kx1_wide": {"cin": 24, "cout": 48, "length": 266},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_row_conv_matches_onnxruntime(case, tmp_path):
    """The whole model built through the backend with the default schedules == ORT."""
    model = _row_conv(**CASES[case])
    art = compile_model(model, tmp_path / case, target="native")
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    got = load_artifact(art).run({"x": x})["y"]
    np.testing.assert_allclose(got, testing.ort_run(model, {"x": x})["y"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("target_name", ["x86-64-avx2", "native"])
def test_row_conv_is_vectorised_over_output_channels(target_name):
    """TiledReduction takes the output channels as its vector axis (weights copied channels-last,
    accumulator channels-innermost) instead of 2-lane vectors along the 202 rows."""
    target = resolve_target(target_name)
    for kwargs in CASES.values():
        f = _conv_func(_row_conv(**kwargs), target)
        with target:
            sch = cpu_schedule.TiledReduction().apply(f, target, False)
        assert sch is not None, kwargs
        text = sch.mod["main"].script()
        assert "_global = T.sblock_alloc_buffer" in text, kwargs  # the channels-last weight copy
        lanes = cpu_schedule.vector_lanes(target)
        # the update loop vectorised over output channels (ff), in whole registers
        widths = [int(w) for w in re.findall(r"ff_1 in T\.vectorized\(T\.int64\((\d+)\)\)", text)]
        assert widths and all(w % lanes == 0 for w in widths), (kwargs, widths)
        assert "T.parallel" in text, kwargs


def test_few_output_pixels_keep_the_row_vectors():
    """A 3x3 conv on a 7x7 map (ResNet's last stage) is not given the per-call weight copy: with
    49 output pixels per weight it would cost about as much as it saves."""
    b = testing._Builder(3)
    y = b.conv("x", 32, 32, 3)
    b.nodes[-1].output[0] = "y"
    model = b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 7, 7])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 7, 7])], "small")
    assert y
    target = resolve_target("x86-64-avx2")
    f = _conv_func(model, target)
    with target:
        sch = cpu_schedule.TiledReduction().apply(f, target, False)
    assert sch is not None and "w_global" not in sch.mod["main"].script()
