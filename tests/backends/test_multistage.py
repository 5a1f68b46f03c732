"""Multi-stage artifacts: a model cut into stages (lepton_ir.split_stages), each compiled by its own
backend into one artifact (lepton_backends.compile_stages), run by lepton.load and lepton-run like
any artifact, and checked against ONNX Runtime on the whole original model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lepton
import lepton_ir
from lepton_backends import MANIFEST, StageSpec, compile_stages
from lepton_ir import ModelLoadError
from lepton_ir.testing import corpus

pytest.importorskip("tvm")

DIGITS = Path(lepton.__file__).parent / "data" / "digits_cnn.onnx"


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN cut after the first conv block: stage 1 on tvm-cpu, stage 2 on onnx."""
    model = lepton_ir.load(DIGITS)
    head, tail = lepton_ir.split_stages(model, [["relu1"]])
    assert head.outputs == ["relu1"] and tail.inputs == ["relu1"]
    out = tmp_path_factory.mktemp("ms") / "art"
    compile_stages([StageSpec(head.model, "tvm-cpu", options={"input-shapes": {"image": [4, 1, 8, 8]}}),
                    StageSpec(tail.model, "onnx")], out, pipeline_text="split-by-hand")
    return out


def test_manifest_lists_the_stages(two_stage: Path) -> None:
    mf = json.loads((two_stage / MANIFEST).read_text())
    assert mf["backend"] == "multi-stage" and mf["pipeline"] == "split-by-hand"
    assert [(s["name"], s["backend"], s["device"], s["dir"]) for s in mf["stages"]] == [
        ("stage0", "tvm-cpu", "host", "stage0"), ("stage1", "onnx", "host", "stage1")]
    assert [i["name"] for i in mf["inputs"]] == ["image"] and [o["name"] for o in mf["outputs"]] == ["logits"]
    # The tensor passed between the stages, with its type, on both sides of the border.
    assert mf["stages"][0]["outputs"] == [{"name": "relu1", "dtype": "float32", "shape": [4, 8, 8, 8]}]
    assert [i["name"] for i in mf["stages"][1]["inputs"]] == ["relu1"]
    assert set(mf["files"]) == {"stage0/model.so", "stage1/model.onnx"}
    assert mf["stages"][0]["lowering"].startswith("pin-input-shapes")


def test_lepton_load_runs_the_stages_and_matches_ort(two_stage: Path) -> None:
    x, _ = corpus.digits_dataset("test")
    feeds = {"image": x[:4].astype(np.float32)}
    runner = lepton.load(two_stage)
    assert [type(r).__name__ for _, r in runner.stages] == ["TvmRunner", "OrtRunner"]
    got = runner.run(feeds)
    assert list(got) == ["logits"]
    np.testing.assert_allclose(got["logits"], _ort(DIGITS, feeds), rtol=1e-4, atol=1e-5)
    with pytest.raises(lepton_ir.LeptonError, match="missing \\['image'\\]"):
        runner.run({"x": feeds["image"]})


def test_lepton_run_runs_it_and_compares(two_stage: Path, tmp_path: Path) -> None:
    x, _ = corpus.digits_dataset("test")
    np.savez(tmp_path / "in.npz", image=x[:4].astype(np.float32))
    r = subprocess.run([sys.executable, "-c", "import sys; from lepton.cli import run_main; sys.exit(run_main())",
                        str(two_stage), "--inputs", str(tmp_path / "in.npz"), "--compare", str(DIGITS),
                        "--output", str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "compare with ONNX Runtime: logits: max abs" in r.stdout
    with np.load(tmp_path / "out.npz") as z:
        np.testing.assert_allclose(z["logits"], _ort(DIGITS, {"image": x[:4].astype(np.float32)}), rtol=1e-4,
                                   atol=1e-5)


def test_a_tampered_stage_is_refused(two_stage: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(two_stage, copy)
    with open(copy / "stage1" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelLoadError, match="stage1/model.onnx does not match its sha256"):
        lepton.load(copy)


def test_three_stages_across_a_residual_model(tmp_path: Path) -> None:
    """onnx -> tvm-cpu -> onnx on a model with a skip connection: the last stage reads a value the
    first stage produced (not only the previous stage's), and stages may recompute."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)
    w = onnx.numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "w"], ["c"]), helper.make_node("Tanh", ["c"], ["d"]),
             helper.make_node("Add", ["d", "a"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w])
    model = lepton_ir.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    src = tmp_path / "m.onnx"
    lepton_ir.save(model, src)
    stages = lepton_ir.split_stages(model, [["a"], ["c"]])
    assert stages[2].inputs == ["a", "c"]
    out = compile_stages([StageSpec(stages[0].model, "onnx"), StageSpec(stages[1].model, "tvm-cpu"),
                          StageSpec(stages[2].model, "onnx")], tmp_path / "art")
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    np.testing.assert_allclose(lepton.load(out).run({"x": x})["y"], _ort(src, {"x": x}), rtol=1e-5, atol=1e-6)


def test_an_artifact_its_runtime_refuses_is_never_published(tmp_path: Path) -> None:
    """silero-vad pinned to 1x512: ONNX Runtime refuses the exported model (an If branch's LSTM
    types), so the onnx backend must fail and leave the previous artifact in place."""
    path = corpus.real_model_path("silero-vad")
    out = tmp_path / "art"
    lepton.optimize(str(path), backend="onnx", output=out)  # unpinned: loads fine
    before = json.loads((out / MANIFEST).read_text())
    with pytest.raises(lepton_ir.LeptonError, match="does not load in its own runtime, so it was not written"):
        lepton.optimize(str(path), backend="onnx", output=out, input_shapes={"input": [1, 512]})
    assert json.loads((out / MANIFEST).read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    lepton.load(out)
