"""The Backend registry, atomic artifact folders, the `onnx` backend and `lepton.load`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import lepton
import lepton_ir
from lepton_backends import (MANIFEST, Backend, BackendError, atomic_dir, get_backend, list_backends,
                             register_backend)
from lepton_ir import ModelLoadError


def make_model() -> lepton_ir.Model:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    g = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], "g", [x], [y], [b])
    return lepton_ir.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# -- registry ------------------------------------------------------------------------------------------
def test_onnx_backend_is_registered() -> None:
    assert "onnx" in list_backends()
    cls = get_backend("onnx")
    assert cls.name == "onnx" and cls.summary() and isinstance(cls.default_pipeline, str)


def test_unknown_backend_lists_known_ones() -> None:
    with pytest.raises(BackendError, match="unknown backend 'nope'; known backends: .*onnx"):
        get_backend("nope")


def test_duplicate_backend_name_is_an_error() -> None:
    class Again(Backend):
        name = "onnx"

    with pytest.raises(BackendError, match="duplicate backend name 'onnx'"):
        register_backend(Again)


def test_register_rejects_bad_names() -> None:
    class Bad(Backend):
        name = "Not_Kebab"

    with pytest.raises(BackendError, match="kebab-case"):
        register_backend(Bad)


# -- the onnx backend ------------------------------------------------------------------------------------
def test_compile_writes_model_and_manifest(tmp_path: Path) -> None:
    m = make_model()
    out = get_backend("onnx")().compile(m, tmp_path / "art", pipeline_text="tb-x", source_sha256="ab" * 32)
    assert out == tmp_path / "art"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "manifest.json.sha256", "model.onnx"]
    mf = json.loads((out / MANIFEST).read_text())
    assert mf["backend"] == "onnx" and mf["format"] == "lepton-artifact" and mf["pipeline"] == "tb-x"
    assert mf["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 3]}]
    assert mf["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["N", 3]}]
    assert mf["files"] == {"model.onnx": sha(out / "model.onnx")}
    assert mf["source_sha256"] == "ab" * 32
    assert {"lepton", "onnx", "onnxruntime"} <= set(mf["versions"]) and mf["versions"]["onnxruntime"] == ort.__version__
    assert [s["backend"] for s in mf["stages"]] == ["onnx"] and mf["stages"][0]["entry"] == "model.onnx"
    assert (out / "manifest.json.sha256").read_text().strip() == sha(out / MANIFEST)
    assert leftovers(tmp_path) == []
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.zeros((2, 3), np.float32)})
    np.testing.assert_array_equal(y, [[1, 2, 3], [1, 2, 3]])


def test_external_data_option(tmp_path: Path) -> None:
    out = get_backend("onnx")().compile(make_model(), tmp_path / "art", options={"external-data": True})
    mf = json.loads((out / MANIFEST).read_text())
    assert set(mf["files"]) == {"model.onnx", "model.onnx.data"}
    assert lepton.load(out).run({"x": np.zeros((1, 3), np.float32)})["y"].tolist() == [[1, 2, 3]]


def test_unknown_backend_option_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="backend 'onnx' has no option.*fast.*its options: external-data"):
        get_backend("onnx")().compile(make_model(), tmp_path / "art", options={"fast": 1})
    assert not (tmp_path / "art").exists()


def test_existing_artifact_is_replaced(tmp_path: Path) -> None:
    be = get_backend("onnx")()
    be.compile(make_model(), tmp_path / "art", pipeline_text="first")
    (tmp_path / "art" / "stale.txt").write_text("old")
    be.compile(make_model(), tmp_path / "art", pipeline_text="second")
    assert json.loads((tmp_path / "art" / MANIFEST).read_text())["pipeline"] == "second"
    assert not (tmp_path / "art" / "stale.txt").exists()
    assert leftovers(tmp_path) == []


def test_refuses_to_replace_a_folder_that_is_not_an_artifact(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(BackendError, match="not a Lepton artifact"):
        get_backend("onnx")().compile(make_model(), precious)
    assert (precious / "thesis.tex").read_text() == "years of work"
    (tmp_path / "file").write_text("x")
    with pytest.raises(BackendError, match="is a file"):
        get_backend("onnx")().compile(make_model(), tmp_path / "file")


# -- atomicity ---------------------------------------------------------------------------------------------
class HalfWriter(Backend):
    """Writes one file, then fails (not registered)."""

    name = "tb-half"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def build(self, model: lepton_ir.Model, staging: Path, **kw: Any) -> dict:
        (staging / "part.bin").write_bytes(b"\0" * 1000)
        raise self.exc


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failed_compile_leaves_nothing(tmp_path: Path, exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        HalfWriter(exc).compile(make_model(), tmp_path / "art")
    assert not (tmp_path / "art").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failed_compile_keeps_the_previous_artifact(tmp_path: Path, exc: BaseException) -> None:
    get_backend("onnx")().compile(make_model(), tmp_path / "art", pipeline_text="good")
    before = {p.name: sha(p) for p in (tmp_path / "art").iterdir()}
    with pytest.raises(type(exc)):
        HalfWriter(exc).compile(make_model(), tmp_path / "art")
    assert {p.name: sha(p) for p in (tmp_path / "art").iterdir()} == before
    assert leftovers(tmp_path) == []


def test_atomic_dir_directly(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "out") as st:
        (st / MANIFEST).write_text("{}")
        assert not (tmp_path / "out").exists()  # invisible until complete
    assert (tmp_path / "out" / MANIFEST).exists()


# -- lepton.load ------------------------------------------------------------------------------------------
def test_load_runs_an_onnx_artifact(tmp_path: Path) -> None:
    out = get_backend("onnx")().compile(make_model(), tmp_path / "art")
    runner = lepton.load(out)
    res = runner.run({"x": np.ones((2, 3), np.float32)})
    assert list(res) == ["y"]
    np.testing.assert_array_equal(res["y"], [[2, 3, 4], [2, 3, 4]])
    with pytest.raises(lepton_ir.LeptonError, match="missing \\['x'\\]"):
        runner.run({"z": np.ones((2, 3), np.float32)})


def test_load_detects_tampering_and_non_artifacts(tmp_path: Path) -> None:
    out = get_backend("onnx")().compile(make_model(), tmp_path / "art")
    with open(out / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelLoadError, match="does not match its sha256"):
        lepton.load(out)
    with pytest.raises(ModelLoadError, match="not a Lepton artifact"):
        lepton.load(tmp_path)


def test_load_refuses_an_edited_manifest(tmp_path: Path) -> None:
    """Every artifact kind seals its manifest: editing it (here: the inputs) is refused."""
    out = get_backend("onnx")().compile(make_model(), tmp_path / "art")
    mf = json.loads((out / MANIFEST).read_text())
    mf["outputs"][0]["name"] = "z"
    (out / MANIFEST).write_text(json.dumps(mf))
    with pytest.raises(ModelLoadError, match="manifest.json does not match its sha256"):
        lepton.load(out)


def test_artifact_folders_are_world_readable(tmp_path: Path) -> None:
    out = get_backend("onnx")().compile(make_model(), tmp_path / "art")
    assert (out.stat().st_mode & 0o777) == 0o755
