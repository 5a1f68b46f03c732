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
