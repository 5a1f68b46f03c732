"""tvm-cpu falls back to ONNX Runtime for what TVM cannot compile: the capability oracle's verdicts,
the multi-stage artifact, one warning line per fallback region naming the op, and --no-fallback."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton
import lepton_ir
from lepton_ir.reference import compare_outputs, run_ort
from lepton_ir.testing import corpus

pytest.importorskip("tvm")


def _det_model(path: Path) -> Path:
    from lepton_backends.tvm.testing import unsupported_op_chain

    onnx.save(unsupported_op_chain(), path)
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from lepton.cli import opt_main; sys.exit(opt_main())",
                           *args], capture_output=True, text=True, timeout=600)


def test_unsupported_op_runs_on_onnx_runtime(tmp_path: Path) -> None:
    src = _det_model(tmp_path / "det.onnx")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lepton.optimize(str(src), backend="tvm-cpu", output=tmp_path / "art")
    lines = [str(w.message) for w in caught if "run on ONNX Runtime" in str(w.message)]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("tvm-cpu: 1 node(s) (Det) run on ONNX Runtime: Det") and "TVM cannot compile it" in lines[0]
    mf = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert [(s["backend"], s["nodes"]) for s in mf["stages"]] == [("tvm-cpu", 2), ("onnx", 1), ("tvm-cpu", 2)]
    assert "Det" in mf["stages"][1]["fallback_reason"]
    x = np.random.default_rng(0).standard_normal((2, 3, 3)).astype(np.float32)
    got = lepton.load(tmp_path / "art").run({"x": x})
    assert compare_outputs(run_ort(str(src), {"x": x}), list(got.values()), 1e-5, 1e-6) is None


def test_no_fallback_fails_with_the_same_reasons(tmp_path: Path) -> None:
    src = _det_model(tmp_path / "det.onnx")
    r = _cli(str(src), "--backend", "tvm-cpu", "-o", str(tmp_path / "art"), "--no-fallback")
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lepton-opt: error: tvm-cpu: TVM cannot compile 1 node(s)")
    assert "--no-fallback" in lines[0] and "Det" in lines[0] and "TVM cannot compile it" in lines[0]
    assert not (tmp_path / "art").exists()
    r = _cli(str(src), "--backend", "onnx", "-o", str(tmp_path / "x"), "--no-fallback")
    assert r.returncode == 2 and "--no-fallback needs a backend that falls back" in r.stderr


def test_the_oracle_is_cached_per_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lepton_backends.tvm.capability import TvmCapability
    from lepton_backends.tvm.targets import resolve_target

    monkeypatch.setenv("LEPTON_CAPABILITY_CACHE", str(tmp_path / "cap"))
    model = lepton_ir.load(_det_model(tmp_path / "det.onnx"))
    first = TvmCapability(resolve_target("native"))
    v1 = first.check(model)
    assert first.trials == 5
    assert [v1[id(n)].ok for n in model.graph] == [True, True, False, True, True]
    again = TvmCapability(resolve_target("native"))
    v2 = again.check(model)
    assert again.trials == 0 and [v2[id(n)] for n in model.graph] == [v1[id(n)] for n in model.graph]


def test_oracle_rejects_a_node_whose_tvm_result_differs(tmp_path: Path) -> None:
    """The oracle runs each node and compares with ONNX Runtime: a value mismatch is a refusal even
    though TVM compiles it (Mod with fmod=0 on negative operands; docs/conformance.md lists Mod
    among TVM's wrong values)."""
    from lepton_backends.tvm.capability import TvmCapability
    from lepton_backends.tvm.targets import resolve_target

    nodes = [helper.make_node("Mod", ["x", "m"], ["y"], fmod=0)]
    g = helper.make_graph(nodes, "mod", [helper.make_tensor_value_info("x", TensorProto.INT32, [64]),
                                         helper.make_tensor_value_info("m", TensorProto.INT32, [64])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [64])])
    model = lepton_ir.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    rng = np.random.default_rng(0)
    feeds = {"x": rng.integers(-50, 50, 64).astype(np.int32),
             "m": np.where(rng.random(64) < 0.5, -7, 7).astype(np.int32)}
    (node,) = list(model.graph)
    verdict = TvmCapability(resolve_target("native"), cache=False).check(model, feeds)[id(node)]
    want = run_ort(lepton_ir.to_onnx(model), feeds)[0]
    # Independent reference: Python's % has ONNX's fmod=0 semantics (sign of the divisor).
    assert np.array_equal(want, np.asarray(feeds["x"]) % np.asarray(feeds["m"]))
    if verdict.ok:  # TVM got it right on this build: then the artifact must match too
        lepton.optimize(lepton_ir.to_onnx(model), backend="tvm-cpu", output=tmp_path / "m")
        got = lepton.load(tmp_path / "m").run(feeds)["y"]
        assert np.array_equal(got, want)
    else:
        assert "differs from ONNX Runtime" in verdict.reason or "cannot compile" in verdict.reason


def test_silero_vad_compiles_without_binding_and_matches() -> None:
    """silero-vad branches on its sample-rate input (If): with fallback it compiles for tvm-cpu as
    shipped, no bind-inputs by hand, and matches ONNX Runtime on speech-like input."""
    import tempfile

    path = corpus.real_model_path("silero-vad")
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lepton.optimize(str(path), backend="tvm-cpu", output=f"{d}/art")
        feeds = corpus.realistic_inputs("silero-vad")
        runner = lepton.load(f"{d}/art")
        got = runner.run({k: v for k, v in feeds.items() if k in runner.input_names})
        assert compare_outputs(run_ort(str(path), feeds), list(got.values()), 1e-3, 1e-4) is None
