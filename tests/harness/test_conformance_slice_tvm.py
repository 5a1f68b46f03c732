"""onnx's own BackendTest through Lepton's tvm-cpu backend, on cases that pass shape-determining
values (Reduce axes, Reshape shape, TopK K, OneHot depth, Split sizes, Pad pads) as graph inputs:
`lepton.onnx_backend` must specialise on them lazily (the `onnx.backend` prepare/run protocol,
unchanged) and TVM must compute the rest (strict: `fallback=False`, no ONNX Runtime stages).

And with fallback on (the backend's default), a few cases of ops TVM has no converter for
(Binarizer, Det, ReverseSequence, TensorScatter, BitCast) must pass: those nodes run on ONNX
Runtime stages of the artifact."""

from __future__ import annotations

import re

import onnx.backend.test

from lepton.onnx_backend import backend_for

# Six cases keep this under a minute (each is a TVM compile); bench/conformance.py runs them all.
SLICE = re.compile(r"^test_(reduce_sum_keepdims_example|reshape_reduced_dims|top_k|onehot_with_axis|"
                   r"constant_pad|split_variable_parts_1d_opset18)_cpu$")

#: cases TVM cannot compile (no converter in its ONNX frontend); they pass only with fallback
FALLBACK_SLICE = re.compile(r"^test_(ai_onnx_ml_binarizer|det_2d|reversesequence_time|tensorscatter|"
                            r"bitcast_float32_to_int32)_cpu$")

STRICT = backend_for("tvm-cpu", "canonicalize", options={"fallback": False})
FALLBACK = backend_for("tvm-cpu", "canonicalize", options={"fallback": True})


def _slice(backend, pattern: re.Pattern, suffix: str) -> dict:
    """onnx's BackendTest classes for `backend`, reduced to the cases `pattern` matches."""
    cases = onnx.backend.test.BackendTest(backend, __name__).test_cases
    kept = {}
    for key, cls in cases.items():
        for name in [n for n in vars(cls) if n.startswith("test_") and not pattern.match(n)]:
            delattr(cls, name)
        if any(n.startswith("test_") for n in vars(cls)):
            cls.__name__ = cls.__qualname__ = key + suffix
            kept[key + suffix] = cls
    return kept


_cases = _slice(STRICT, SLICE, "")
_fallback_cases = _slice(FALLBACK, FALLBACK_SLICE, "Fallback")
globals().update(_cases)
globals().update(_fallback_cases)


def _count(cases: dict) -> int:
    return sum(n.startswith("test_") for c in cases.values() for n in vars(c))


def test_slice_is_not_empty():
    assert _count(_cases) >= 6
    assert _count(_fallback_cases) >= 5


def test_strict_fails_where_fallback_is_needed():
    """The strict path really is strict: a Binarizer (no TVM converter) fails to compile."""
    import numpy as np
    import onnx
    import pytest
    from onnx import TensorProto, helper

    from lepton_backends import BackendError

    node = helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("ai.onnx.ml", 3)])
    onnx.checker.check_model(model)
    with pytest.raises(BackendError, match="fallback is off"):
        STRICT.prepare(model)
    x = np.array([[0.1, 0.6, 0.5], [0.9, -1.0, 2.0]], dtype=np.float32)
    (y,) = FALLBACK.prepare(model).run([x])
    np.testing.assert_array_equal(y, (x > 0.5).astype(np.float32))
