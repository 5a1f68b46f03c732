"""`canonicalize,fuse` end to end through both backends, against ONNX Runtime on the original.

`lepton.optimize(path, passes="canonicalize,fuse", backend=B, output=tmp, input_shapes=...)`, then
`lepton.load(tmp).run(inputs)`. The `onnx` backend lowers the `ai.lepton` ops with
`lower-fused-to-onnx` (contrib ops), `tvm-cpu` with `lower-fused-to-standard`.
Tolerances: onnx rtol 1e-4 / atol 1e-5; tvm-cpu rtol 1e-3 / atol 1e-4 (the TVM backend's contract).
`bench/fusion_counts.py` runs the same check on every real model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lepton
import lepton_passes.fusion  # noqa: F401
from lepton_ir.reference import run_ort

TOL = {"onnx": (1e-4, 1e-5), "tvm-cpu": (1e-3, 1e-4)}
# Small real models: ppocr-cls (MobileNetV3: Conv+BN+HardSwish/HardSigmoid/Relu -> FusedConv) through
# both backends; silero-vad-ifless (Conv+Relu/Sigmoid -> FusedConv, 0-d `sr` input) through onnx
# only: a second real-model TVM build would double the file's runtime (bench/fusion_counts.py
# checks it on tvm-cpu).
REAL = [("ppocr-cls", "onnx"), ("ppocr-cls", "tvm-cpu"), ("silero-vad-ifless", "onnx")]


def _digits() -> tuple[Path, dict[str, np.ndarray]]:
    import lepton_ir
    from lepton_ir.testing.corpus import digits_dataset, digits_model_path

    path = Path(digits_model_path())
    x = np.asarray(digits_dataset()[0][:4], dtype=np.float32).reshape(4, 1, 8, 8)
    return path, {lepton_ir.load(path.read_bytes()).graph.inputs[0].name: x}


def _real(name: str) -> tuple[Path, dict[str, np.ndarray]]:
    from lepton_ir.testing.corpus import ModelNotFetchedError, real_model_path, realistic_inputs

    try:
        return Path(real_model_path(name)), realistic_inputs(name)
    except ModelNotFetchedError as e:
        pytest.skip(str(e))


def _check(path: Path, feed: dict[str, np.ndarray], backend: str, tmp_path: Path) -> lepton.OptimizeResult:
    if backend == "tvm-cpu":
        pytest.importorskip("tvm")
    res = lepton.optimize(str(path), passes="canonicalize,fuse", backend=backend, output=str(tmp_path / "art"),
                          input_shapes={k: list(v.shape) for k, v in feed.items()})
    runner = lepton.load(tmp_path / "art")
    outs = runner.run(feed)
    ref = run_ort(path, feed, optimize=True)
    rtol, atol = TOL[backend]
    assert len(ref) == len(runner.output_names)
    for name, r in zip(runner.output_names, ref):
        np.testing.assert_allclose(outs[name], r, rtol=rtol, atol=atol, err_msg=f"{path.name} {backend} {name}")
    return res


@pytest.mark.parametrize("backend", ["onnx", "tvm-cpu"])
def test_digits_fused_matches_ort(backend: str, tmp_path: Path) -> None:
    path, feed = _digits()
    res = _check(path, feed, backend, tmp_path)
    assert res.nodes_after < res.nodes_before  # Conv+Relu (and Gemm+Relu) fused


@pytest.mark.parametrize(("name", "backend"), REAL)
def test_small_real_model_fused_matches_ort(name: str, backend: str, tmp_path: Path) -> None:
    path, feed = _real(name)
    res = _check(path, feed, backend, tmp_path)
    assert res.nodes_after < res.nodes_before
