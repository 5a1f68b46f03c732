"""Issue #19, must-show 5: no backend publishes an artifact its own runtime cannot load.

Per backend, models whose artifact would not load (the lead's check in backends/base.py opens
every host stage with the backend's own `load()` before publishing). The invariant tested: the
compile either fails with a one-line `lepton-opt: error:` and leaves no output folder (nor a
staging folder), or the folder it wrote verifies, loads and runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

BACKENDS = ["onnx", "tvm-cpu"]


def _silero() -> Path:
    from lepton_ir.testing.corpus import real_model_path

    try:
        return real_model_path("silero-vad")
    except FileNotFoundError:
        pytest.skip("silero-vad not fetched (python -m lepton_ir.testing.corpus fetch)")


def _custom_op_model(tmp_path: Path) -> Path:
    """A valid ONNX model with an op of an unknown domain: it imports and passes through the
    pipeline (unknown ops are legal IR), but no runtime has a kernel for it."""
    n = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    p = tmp_path / "custom.onnx"
    p.write_bytes(m.SerializeToString())
    return p


def _opt(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from lepton.cli import opt_main; sys.exit(opt_main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def _assert_published_loads_or_refused(r: subprocess.CompletedProcess, out: Path, feeds: dict) -> str:
    leftovers = list(out.parent.glob(f".{out.name}.tmp-*"))
    assert not leftovers, f"staging folders left behind: {leftovers}"
    if r.returncode == 0:
        import lepton

        runner = lepton.load(out)  # verifies every hash, opens every stage with its backend
        runner.run(feeds)
        return "published"
    # One error line; warnings (one line each) may come before it.
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("lepton-opt: warning:")]
    assert len(lines) == 1 and lines[0].startswith("lepton-opt: error:"), r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists(), "a failed compile left an output folder"
    return "refused"


@pytest.mark.parametrize("backend", BACKENDS)
def test_silero_vad_pinned_to_1x512(backend: str, tmp_path: Path) -> None:
    """silero-vad with input pinned to 1x512: ONNX Runtime refuses the model (its LSTM needs rank
    3 inside an If branch), so the onnx backend must not publish it."""
    out = tmp_path / "out"
    r = _opt(str(_silero()), "--input-shape", "input=1x512", "--backend", backend, "-o", str(out))
    feeds = {"input": np.zeros((1, 512), np.float32), "state": np.zeros((2, 1, 128), np.float32),
             "sr": np.array(16000, np.int64)}
    outcome = _assert_published_loads_or_refused(r, out, feeds)
    if backend == "onnx":
        # This is the case the issue names: it must be refused, saying why.
        assert outcome == "refused" and "does not load" in r.stderr, r.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_op_no_runtime_implements(backend: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _opt(str(_custom_op_model(tmp_path)), "--passes", "", "--backend", backend, "-o", str(out))
    outcome = _assert_published_loads_or_refused(r, out, {"x": np.zeros((1, 4), np.float32)})
    assert outcome == "refused"


@pytest.mark.parametrize("backend", BACKENDS)
def test_refusal_keeps_the_previous_artifact(backend: str, tmp_path: Path) -> None:
    """A refused compile into an existing artifact leaves that artifact as it was."""
    import lepton
    from lepton_backends import read_manifest

    out = tmp_path / "out"
    digits = Path(__file__).resolve().parents[2] / "lepton" / "data" / "digits_cnn.onnx"
    first = _opt(str(digits), "--passes", "canonicalize", "--backend", "onnx", "-o", str(out))
    assert first.returncode == 0, first.stderr
    before = read_manifest(out)
    r = _opt(str(_custom_op_model(tmp_path)), "--passes", "", "--backend", backend, "-o", str(out))
    assert r.returncode != 0
    assert read_manifest(out) == before
    lepton.load(out).run({"image": np.zeros((1, 1, 8, 8), np.float32)})
