"""Ops TVM used to compile to wrong values (the ONNX conformance cases' "wrong values" groups,
docs/partition.md): each small graph runs through `tvm-cpu` and is compared with ONNX Runtime on
inputs that reach the failing values. Fixed lowerings stay on TVM (one stage); patterns
known_wrong.py refuses run on ONNX Runtime, with a one-line reason naming the op, and
`--no-fallback` fails with that reason."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import lepton
from lepton_ir.reference import run_ort

pytest.importorskip("tvm")


def _model(nodes, inputs, outputs, inits=(), opset: int = 18) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=min(onnx.IR_VERSION, 14 if opset >= 28 else 10))


def _compile(tmp_path: Path, model: onnx.ModelProto, **options) -> tuple[Path, Path, list[str]]:
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lepton.optimize(str(src), backend="tvm-cpu", output=tmp_path / "art", **options)
    return src, tmp_path / "art", [str(w.message) for w in caught if "run on ONNX Runtime" in str(w.message)]


def _stages(art: Path) -> list[str]:
    mf = json.loads((art / "manifest.json").read_text())
    return [s["backend"] for s in mf.get("stages", [mf])]


def _check(src: Path, art: Path, feeds: dict[str, np.ndarray], rtol: float = 1e-5, atol: float = 1e-6) -> None:
    want = run_ort(str(src), feeds)
    got = list(lepton.load(art).run(feeds).values())
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert np.asarray(w).shape == np.asarray(g).shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol, equal_nan=True)


# -- fixed lowerings (converters.py): one TVM stage, ONNX Runtime's values -------------------------

def test_reduce_max_of_only_minus_infinity_is_minus_infinity(tmp_path: Path) -> None:
    """TVM's max starts at -FLT_MAX: a fully masked attention row's NaN-robust softmax (ReduceMax,
    Equal -inf, Where) left NaN where ONNX Runtime gives 0."""
    ninf = h.make_tensor("ninf", T.FLOAT, [], [-np.inf])
    zero = h.make_tensor("zero", T.FLOAT, [], [0.0])
    m = _model([h.make_node("ReduceMax", ["x"], ["m"], keepdims=1, axes=[-1]),
                h.make_node("Equal", ["m", "ninf"], ["e"]),
                h.make_node("Softmax", ["x"], ["s"], axis=-1),
                h.make_node("Where", ["e", "zero", "s"], ["y"])],
               [h.make_tensor_value_info("x", T.FLOAT, [2, 3])],
               [h.make_tensor_value_info("y", T.FLOAT, [2, 3]), h.make_tensor_value_info("m", T.FLOAT, [2, 1])],
               [ninf, zero], opset=13)
    src, art, fell = _compile(tmp_path, m)
    assert _stages(art) == ["tvm-cpu"] and not fell
    x = np.array([[-np.inf] * 3, [1, 2, 3]], np.float32)
    got = lepton.load(art).run({"x": x})
    assert not np.isnan(list(got.values())[0]).any()
    _check(src, art, {"x": x})


def test_float_mod_by_an_infinity(tmp_path: Path) -> None:
    m = _model([h.make_node("Mod", ["a", "b"], ["y"], fmod=0)],
               [h.make_tensor_value_info("a", T.FLOAT, [8]), h.make_tensor_value_info("b", T.FLOAT, [8])],
               [h.make_tensor_value_info("y", T.FLOAT, [8])], opset=28)  # float floor-mod: opset 28
    src, art, fell = _compile(tmp_path, m)
    assert _stages(art) == ["tvm-cpu"]
    a = np.array([-3, 3, -1, 1, 5.5, -5.5, 0, 7], np.float32)
    b = np.array([np.inf, np.inf, -np.inf, -np.inf, 2, 2, np.inf, -3], np.float32)
    _check(src, art, {"a": a, "b": b})


def test_nms_run_time_thresholds_are_used(tmp_path: Path) -> None:
    """TVM's importer replaced a run-time score_threshold by 0.0: the low-score box came back."""
    m = _model([h.make_node("NonMaxSuppression", ["boxes", "scores", "k", "iou", "score"], ["sel"])],
               [h.make_tensor_value_info("boxes", T.FLOAT, [1, 6, 4]), h.make_tensor_value_info("scores", T.FLOAT, [1, 1, 6]),
                h.make_tensor_value_info("iou", T.FLOAT, [1]), h.make_tensor_value_info("score", T.FLOAT, [1])],
               [h.make_tensor_value_info("sel", T.INT64, ["n", 3])], [h.make_tensor("k", T.INT64, [1], [3])])
    src, art, _ = _compile(tmp_path, m)
    assert _stages(art) == ["tvm-cpu"]
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, -0.1, 1, 0.9], [0, 10, 1, 11], [0, 10.1, 1, 11.1],
                       [0, 100, 1, 101]]], np.float32)
    scores = np.array([[[0.9, 0.75, 0.6, 0.95, 0.5, 0.3]]], np.float32)
    for iou, score in ((0.5, 0.4), (0.5, 0.0), (0.05, 0.0)):
        _check(src, art, {"boxes": boxes, "scores": scores, "iou": np.array([iou], np.float32),
                          "score": np.array([score], np.float32)})


def test_mish_and_softplus_of_large_negative_inputs(tmp_path: Path) -> None:
    """log(1 + e) lost 1e-3 relative precision for x < -9 (Mish's conformance case)."""
    m = _model([h.make_node("Mish", ["x"], ["y"]), h.make_node("Softplus", ["x"], ["z"])],
               [h.make_tensor_value_info("x", T.FLOAT, [7])],
               [h.make_tensor_value_info("y", T.FLOAT, [7]), h.make_tensor_value_info("z", T.FLOAT, [7])])
    src, art, _ = _compile(tmp_path, m)
    assert _stages(art) == ["tvm-cpu"]
    x = np.array([-30, -15, -9.979998, -4.6, 0, 0.01, 12], np.float32)
    _check(src, art, {"x": x}, rtol=1e-4, atol=0)


# -- refused patterns (known_wrong.py): ONNX Runtime runs them, the reason names the op -------------

def _resize_antialias() -> tuple[onnx.ModelProto, dict[str, np.ndarray], str]:
    m = _model([h.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear", antialias=1)],
               [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 4, 4])], [h.make_tensor_value_info("y", T.FLOAT, None)],
               [h.make_tensor("scales", T.FLOAT, [4], [1, 1, 0.5, 0.5])])
    return m, {"x": np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)}, "antialias"


def _resize_scales() -> tuple[onnx.ModelProto, dict[str, np.ndarray], str]:
    m = _model([h.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")],
               [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 2, 4])], [h.make_tensor_value_info("y", T.FLOAT, None)],
               [h.make_tensor("scales", T.FLOAT, [4], [1, 1, 0.6, 0.6])])
    return m, {"x": np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4)}, "scales"


def _resize_nearest_ties() -> tuple[onnx.ModelProto, dict[str, np.ndarray], str]:
    m = _model([h.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest")],
               [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 2, 2])], [h.make_tensor_value_info("y", T.FLOAT, None)],
               [h.make_tensor("sizes", T.INT64, [4], [1, 1, 7, 8])])
    return m, {"x": np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)}, "non-integer ratio"


def _batchnorm_training() -> tuple[onnx.ModelProto, dict[str, np.ndarray], str]:
    c = 3
    inits = [h.make_tensor(n, T.FLOAT, [c], v) for n, v in
             (("s", [1, 1.5, 2]), ("b", [0, 1, -1]), ("mean", [0.5, 0, -0.5]), ("var", [1, 2, 0.5]))]
    m = _model([h.make_node("BatchNormalization", ["x", "s", "b", "mean", "var"], ["y", "rm", "rv"], training_mode=1)],
               [h.make_tensor_value_info("x", T.FLOAT, [2, c, 4, 5])],
               [h.make_tensor_value_info("y", T.FLOAT, [2, c, 4, 5]), h.make_tensor_value_info("rm", T.FLOAT, [c]),
                h.make_tensor_value_info("rv", T.FLOAT, [c])], inits, opset=15)
    return m, {"x": np.random.default_rng(0).standard_normal((2, c, 4, 5)).astype(np.float32) * 2 + 1}, "training_mode"


def _convtranspose_output_shape() -> tuple[onnx.ModelProto, dict[str, np.ndarray], str]:
    w = np.random.default_rng(1).standard_normal((1, 2, 3, 3)).astype(np.float32)
    m = _model([h.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[3, 2], output_shape=[10, 8])],
               [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 3, 3])], [h.make_tensor_value_info("y", T.FLOAT, None)],
               [h.make_tensor("w", T.FLOAT, w.shape, w.ravel())])
    return m, {"x": np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)}, "output_shape"


@pytest.mark.parametrize("make", [_resize_antialias, _resize_scales, _resize_nearest_ties, _batchnorm_training,
                                  _convtranspose_output_shape], ids=lambda f: f.__name__.lstrip("_"))
def test_known_wrong_patterns_run_on_onnx_runtime(tmp_path: Path, make) -> None:
    from lepton_backends.base import BackendError

    model, feeds, word = make()
    op = model.graph.node[0].op_type
    src, art, fell = _compile(tmp_path, model)
    assert _stages(art) == ["onnx"]
    assert len(fell) == 1 and "\n" not in fell[0]
    assert f"{op}: TVM computes it wrongly" in fell[0] and word in fell[0]
    _check(src, art, feeds)
    with pytest.raises(BackendError, match=f"fallback is off.*{op}: TVM computes it wrongly"):
        lepton.optimize(str(src), backend="tvm-cpu", output=tmp_path / "strict", fallback=False)
    assert not (tmp_path / "strict").exists()


def test_integer_nearest_upsampling_stays_on_tvm(tmp_path: Path) -> None:
    """The Resize rules are narrow: the 2x nearest upsampling of detection models is TVM's."""
    m = _model([h.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
               [h.make_tensor_value_info("x", T.FLOAT, [1, 2, 3, 3])], [h.make_tensor_value_info("y", T.FLOAT, None)],
               [h.make_tensor("scales", T.FLOAT, [4], [1, 1, 2, 2])])
    src, art, fell = _compile(tmp_path, m)
    assert _stages(art) == ["tvm-cpu"] and not fell
    _check(src, art, {"x": np.arange(18, dtype=np.float32).reshape(1, 2, 3, 3)})
