"""Partitioned tvm-arm artifacts on the emulated aarch64 device: the TVM stages run as uploaded
libraries, the ONNX Runtime stages (what TVM cannot compile) in ONNX Runtime on the device, and the
chain matches ONNX Runtime on the host. Real qemu, real TVM RPC, real ONNX Runtime on both sides."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

import lepton
from lepton.remote import RemoteRunner
from lepton_ir.reference import compare_outputs, run_ort

pytestmark = pytest.mark.arm


def _det_model(path: Path) -> Path:
    from lepton_backends.tvm.testing import unsupported_op_chain

    onnx.save(unsupported_op_chain(), path)
    return path


def test_partitioned_arm_artifact_runs_on_the_device(emulator, tmp_path: Path) -> None:
    src = _det_model(tmp_path / "det.onnx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lepton.optimize(str(src), backend="tvm-arm", target="cortex-a72", output=tmp_path / "art")
    assert any("(Det) run on ONNX Runtime" in str(w.message) for w in caught)
    mf = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert [(s["backend"], s["device"]) for s in mf["stages"]] == [
        ("tvm-arm", "remote"), ("onnx", "remote"), ("tvm-arm", "remote")]
    x = np.random.default_rng(0).standard_normal((2, 3, 3)).astype(np.float32)
    with RemoteRunner(tmp_path / "art", rpc=f"{emulator[0]}:{emulator[1]}") as r:
        assert r.library_arch == "aarch64"
        got = r.run({"x": x})
        stats = r.benchmark({"x": x}, repeat=2, warmup=1)
    assert compare_outputs(run_ort(str(src), {"x": x}), list(got.values()), 1e-5, 1e-6) is None
    assert stats["median_ms"] > 0 and "host" in stats["timed_on"]


def test_onnx_runtime_only_artifact_runs_on_the_device(emulator, tmp_path: Path) -> None:
    """silero-vad for tvm-arm as shipped: its If on the sample rate keeps it all on ONNX Runtime,
    which then runs on the device, not on the host."""
    from lepton_ir.testing import corpus

    path = corpus.real_model_path("silero-vad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lepton.optimize(str(path), backend="tvm-arm", target="cortex-a72", output=tmp_path / "vad")
    feeds = corpus.realistic_inputs("silero-vad")
    with RemoteRunner(tmp_path / "vad", rpc=f"{emulator[0]}:{emulator[1]}") as r:
        got = r.run({k: v for k, v in feeds.items() if k in r.input_names})
    assert compare_outputs(run_ort(str(path), feeds), list(got.values()), 1e-3, 1e-4) is None
