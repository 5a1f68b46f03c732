"""Regression tests for the fuzzers' findings (issue #19): each was a crash other than a one-line
LeptonError (or a crash of the whole process) and is now a one-line LeptonError naming the cause.

Every reproducer the fuzzers saved (tests/fuzz/corpus/<target>/crash-*) is replayed by
`test_saved_reproducers`; the tests below rebuild each bug's input by hand, so that what is
checked (the error type and what it says) is readable here.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton_ir
from lepton_ir import LeptonError, ModelLoadError, ModelTooLargeError, TextParseError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import targets as T  # noqa: E402

REPRODUCERS = [(name, p) for name in T.TARGETS for p in T.corpus_files(name)
               if p.name.startswith("crash-") and p.suffix != ".txt"]


@pytest.mark.parametrize("target,path", REPRODUCERS, ids=[f"{t}/{p.name}" for t, p in REPRODUCERS])
def test_saved_reproducers(target: str, path: Path) -> None:
    """Every saved finding now ends in success or a one-line LeptonError. Native crashes (a
    signal in onnx's C++ shape inference) are replayed in a child process: a regression would
    kill the test process otherwise."""
    note = path.with_suffix(".txt")
    if note.exists() and note.read_text().startswith("native:"):
        code = (f"import sys; sys.path.insert(0, {str(T.HERE)!r}); import targets as T; "
                f"f = T.classify(T.TARGETS[{target!r}], open({str(path)!r}, 'rb').read()); "
                "print(f.error if f else 'ok')")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr[-2000:])
        return
    finding = T.classify(T.TARGETS[target], path.read_bytes())
    assert finding is None, f"{path}: {finding.error}\n{finding.trace}"


def _one_line(e: BaseException) -> str:
    msg = T.lepton_message(e)
    assert "\n" not in msg and msg.strip(), repr(msg)
    return msg


# ------------------------------------------------------------------------------------------------
# lepton_ir.load
# ------------------------------------------------------------------------------------------------
def _model_with_initializer(t: TensorProto) -> bytes:
    g = helper.make_graph([helper.make_node("Identity", [t.name], ["y"])], "g", [],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[t])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_undefined_element_type_is_refused_at_load() -> None:
    """Was TypeError from numpy_helper on first use ('The element type in the input tensor is UNDEFINED')."""
    t = TensorProto(name="w", data_type=TensorProto.UNDEFINED, dims=[2], raw_data=b"\0" * 4)
    with pytest.raises(ModelLoadError) as e:
        lepton_ir.load(_model_with_initializer(t))
    assert "no element type" in _one_line(e.value)


def test_segmented_tensor_is_refused() -> None:
    """Was ValueError 'Currently not supporting loading segments' on first use."""
    t = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    t.segment.begin, t.segment.end = 0, 2
    with pytest.raises(ModelLoadError) as e:
        lepton_ir.load(_model_with_initializer(t))
    assert "segmented" in _one_line(e.value)


def test_packed_4bit_data_shorter_than_shape() -> None:
    """Was ValueError 'Packed 4-bit data ... is too small for the declared shape' on first use."""
    t = TensorProto(name="w", data_type=TensorProto.UINT4, dims=[34], raw_data=b"\x12")
    with pytest.raises(ModelTooLargeError) as e:
        lepton_ir.load(_model_with_initializer(t))
    assert "declares shape [34]" in _one_line(e.value)
    ok = TensorProto(name="w", data_type=TensorProto.UINT4, dims=[3], raw_data=b"\x12\x03")
    assert lepton_ir.load(_model_with_initializer(ok)).graph.initializers["w"].const.numpy().tolist() == [2, 1, 3]


def test_string_tensor_with_raw_data_only() -> None:
    """Was ValueError 'cannot reshape array of size 0 into shape (1,)': strings in raw_data are ignored."""
    t = TensorProto(name="w", data_type=TensorProto.STRING, dims=[1], raw_data=b"x")
    with pytest.raises(ModelTooLargeError) as e:
        lepton_ir.load(_model_with_initializer(t))
    assert "holds 0" in _one_line(e.value)


def test_invalid_utf8_in_a_string_field() -> None:
    """protobuf returns bytes, not str, for a string field holding invalid UTF-8; was a TypeError
    deep in the importer ("can't concat str to bytes")."""
    good = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
                             opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    bad = good.replace(b"Relu", b"\xf1elu")
    with pytest.raises(ModelLoadError) as e:
        lepton_ir.load(bad)
    assert "NodeProto.op_type is not valid UTF-8" in _one_line(e.value)


def _layer_norm(axis_attr: onnx.AttributeProto) -> bytes:
    n = helper.make_node("LayerNormalization", ["x", "g"], ["y", "m", "inv"])
    n.attribute.append(axis_attr)
    g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
                                     helper.make_tensor_value_info("g", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


@pytest.mark.parametrize("attr", [
    helper.make_attribute("axis", 2**63 - 1),
    helper.make_attribute("axis", 2**31),
    onnx.AttributeProto(name="axis", type=onnx.AttributeProto.UNDEFINED, i=2**56 - 1),  # type lies, i read anyway
], ids=["int64-max", "2**31", "untyped"])
def test_axis_that_crashes_onnx_shape_inference(attr: onnx.AttributeProto) -> None:
    """onnx 1.23's LayerNormalization inference segfaults on these (upstream bug): the process died.
    Run in a child so that a regression is a failure, not a dead test run."""
    data = _layer_norm(attr)
    code = ("import sys, lepton_ir\n"
            "try:\n    lepton_ir.load(sys.stdin.buffer.read())\nexcept lepton_ir.ModelLoadError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, timeout=120)
    assert r.returncode == 0, f"child died with {r.returncode}: {r.stderr[-1000:]!r}"
    assert b"attribute axis is out of range for any tensor rank" in r.stdout


def test_split_num_outputs_mismatch() -> None:
    """onnx 1.23's Split inference aborts (vector index assertion) when num_outputs != #outputs."""
    n = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=0, num_outputs=2)
    g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 4])],
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, None)])
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    code = ("import sys, lepton_ir\n"
            "try:\n    lepton_ir.load(sys.stdin.buffer.read())\nexcept lepton_ir.ModelLoadError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, timeout=120)
    assert r.returncode == 0, f"child died with {r.returncode}: {r.stderr[-1000:]!r}"
    assert b"num_outputs=2 but it has 3 outputs" in r.stdout


# ------------------------------------------------------------------------------------------------
# Text form
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,where", [
    ('model <ir_version=99999999999999999999>\ngraph g(%x: f32[2]) -> (%y) {\n  %y = Relu(%x)\n  return %y\n}', "ir_version"),
    ('model <opset={"": 99999999999999999999}>\ngraph g(%x: f32[2]) -> (%y) {\n  %y = Relu(%x)\n  return %y\n}', "opset"),
    ('graph g(%x: f32[99999999999999999999]) -> (%y) {\n  %y = Relu(%x)\n  return %y\n}', "dimension"),
])
def test_text_integers_beyond_int64(text: str, where: str) -> None:
    """Were accepted by the parser, then ValueError 'Value out of range' from protobuf on export."""
    with pytest.raises(TextParseError) as e:
        lepton_ir.from_text(text)
    msg = _one_line(e.value)
    assert "does not fit in int64" in msg and where in msg


# ------------------------------------------------------------------------------------------------
# Artifact manifests
# ------------------------------------------------------------------------------------------------
def _sealed(folder: Path, manifest: dict) -> None:
    text = json.dumps(manifest)
    (folder / "manifest.json").write_text(text)
    (folder / "manifest.json.sha256").write_text(hashlib.sha256(text.encode()).hexdigest() + "\n")


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, dict]:
    from lepton_backends import get_backend

    out = tmp_path / "art"
    get_backend("onnx")().compile(lepton_ir.from_text(T._TINY), out)
    return out, json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("edit,expect", [
    (lambda m: m.pop("inputs"), "manifest inputs is not a list"),                        # was KeyError 'inputs'
    (lambda m: m["outputs"][0].pop("name"), "outputs[0] is not a tensor"),               # was KeyError 'name'
    (lambda m: m["stages"].__setitem__(0, "onnx"), "stage 0 is not an object"),          # was AttributeError
    (lambda m: m["stages"][0].__setitem__("inputs", {"x": 1}), "stage 0 inputs is not a list"),
    (lambda m: m["stages"][0]["outputs"][0].__setitem__("shape", [-1]), "malformed shape"),
    (lambda m: m["stages"][0].__setitem__("device", ["host"]), "device"),
    (lambda m: m["stages"][0].__setitem__("backend", 3), "no backend name"),
])
def test_sealed_manifest_with_wrong_types(artifact, edit, expect: str) -> None:
    """A manifest can be sealed and still wrong (hand-written, another tool): one-line errors."""
    import lepton

    folder, manifest = artifact
    edit(manifest)
    _sealed(folder, manifest)
    with pytest.raises(ModelLoadError) as e:
        lepton.load(folder)
    assert expect in _one_line(e.value)


def test_sealed_manifest_naming_the_wrong_backend(artifact) -> None:
    """A verified onnx file opened as a TVM library: TVM's error becomes a one-line LeptonError."""
    import lepton

    folder, manifest = artifact
    manifest["stages"][0]["backend"] = "tvm-cpu"
    manifest["stages"][0]["target"] = {"kind": "llvm"}
    _sealed(folder, manifest)
    with pytest.raises(LeptonError) as e:
        lepton.load(folder)
    _one_line(e.value)


def test_tvm_artifact_error_is_a_lepton_error() -> None:
    """`ArtifactError` was a bare RuntimeError: a user's broken TVM artifact gave a traceback."""
    from lepton_backends.tvm.artifact import ArtifactError

    assert issubclass(ArtifactError, LeptonError) and issubclass(ArtifactError, RuntimeError)


# ------------------------------------------------------------------------------------------------
# Calibration data
# ------------------------------------------------------------------------------------------------
def _samples(model_index: int, calib: str) -> list[dict]:
    from lepton_passes.quant.calibration import load_samples

    model, _ = T._calib_model(model_index)
    feeds, _ = load_samples(model, calib, batch=1)
    return list(feeds)


@pytest.mark.parametrize("content,expect", [
    (b"PK\x03\x04garbage", "not a readable .npz/.npy file"),      # was BadZipFile
    (b"", "not a readable .npz/.npy file"),                        # was EOFError
    (T._npz(x=np.array([object()], dtype=object)), "not a readable"),  # was ValueError (pickled data)
])
def test_unreadable_calibration_file(tmp_path: Path, content: bytes, expect: str) -> None:
    from lepton_passes import PassError

    p = tmp_path / "calib.npz"
    p.write_bytes(content)
    with pytest.raises(PassError) as e:
        _samples(0, str(p))
    assert expect in _one_line(e.value)


def test_npy_header_declaring_more_than_the_file_holds(tmp_path: Path) -> None:
    """A 100-byte file must not make numpy allocate for the shape its header claims."""
    from lepton_passes import PassError

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40, 4)})
    p = tmp_path / "calib.npy"
    p.write_bytes(buf.getvalue() + b"\0" * 16)
    with pytest.raises(PassError) as e:
        _samples(0, str(p))
    assert "declares shape" in _one_line(e.value)


def test_npy_calibration_file_for_a_single_input_model(tmp_path: Path) -> None:
    """Was AttributeError ('numpy.ndarray' object has no attribute 'keys'); now read like a
    one-array .npz."""
    p = tmp_path / "calib.npy"
    np.save(p, np.ones((3, 1, 4), np.float32))
    feeds = _samples(0, str(p))
    assert len(feeds) == 3 and feeds[0]["x"].shape == (1, 4)


@pytest.mark.parametrize("arrays,expect", [
    ({"x": np.ones((2, 1, 4), np.float64)}, "is float64, the model wants float32"),
    ({"x": np.ones((2, 1, 5), np.float32)}, "has shape [1, 5], the model wants ['?', 4]"),
    ({"x": np.float32(1.0)}, "is a scalar"),
    # samples that carry their own batch axis and an empty one: was ValueError from reshape(-1, 0)
    ({"x": np.ones((2, 1, 0), np.float32)}, "has shape [1, 0], the model wants ['?', 4]"),
])
def test_calibration_arrays_that_do_not_fit_the_model(tmp_path: Path, arrays: dict, expect: str) -> None:
    """Were ONNX Runtime errors (multi-line InvalidArgument) in the middle of calibrating."""
    from lepton_passes import PassError

    p = tmp_path / "calib.npz"
    p.write_bytes(T._npz(**arrays))
    with pytest.raises(PassError) as e:
        _samples(0, str(p))
    assert expect in _one_line(e.value)


@pytest.mark.parametrize("calib", ["random:abc", "random:-1", "random:0", "random:\x00", "x" * 5000])
def test_bad_calib_option_text(calib: str) -> None:
    """Were ValueError from int() and OSError (file name too long) from Path.is_file."""
    from lepton_passes import PassError

    with pytest.raises(PassError) as e:
        _samples(0, calib)
    _one_line(e.value)


# ------------------------------------------------------------------------------------------------
# Found by fault injection (tests/fuzz/test_faults.py runs the faults themselves)
# ------------------------------------------------------------------------------------------------
def test_torn_tuning_database_line_is_cut(tmp_path: Path) -> None:
    """A writer killed mid-append leaves a last line without its newline; MetaSchedule's loader
    then refused the whole database ('Unexpected end of string')."""
    from lepton_backends.tvm import tune

    db = tmp_path / "db"
    db.mkdir()
    rec = db / "database_tuning_record.json"
    rec.write_bytes(b'[0, [[], []]]\n[0, [[], [')
    (db / "database_workload.json").write_bytes(b"")
    assert tune._cut_torn_tail(rec)
    assert rec.read_bytes() == b'[0, [[], []]]\n'
    assert not tune._cut_torn_tail(rec)  # a complete file is left alone


# ------------------------------------------------------------------------------------------------
# Found by fault injection into a real MetaSchedule run: `--tune` with the default target failed
# ------------------------------------------------------------------------------------------------
def _host_flags() -> set[str]:
    from lepton_backends.tvm.targets import read_cpu_flags

    return read_cpu_flags()


_X86 = pytest.mark.skipif(__import__("platform").machine().lower() not in ("x86_64", "amd64"),
                          reason="x86 host feature detection")


@_X86
def test_native_target_has_exactly_this_cpus_vector_features() -> None:
    """`native` named skylake-avx512 on this AVX-512 VNNI host: /proc/cpuinfo spells the flag
    `avx512_vnni`, the detection looked for `avx512vnni`. LLVM's view of the target's features
    must match the CPU's flags, both ways (no feature the CPU lacks, none it has left out)."""
    import tvm

    from lepton_backends.tvm.targets import resolve_target

    flags = {f.replace("_", "") for f in _host_flags()}
    has = tvm.get_global_func("target.target_has_feature")
    target = resolve_target("native")
    for feature in ("avx2", "fma", "avx512f", "avx512bw", "avx512vnni"):
        if feature in ("avx512f", "avx512bw", "avx512vnni") and "avx512f" not in flags:
            assert not has(feature, target), (feature, str(target))  # never assumed
            continue
        if feature == "avx512vnni" and {"avx512f", "avx512bw"} - flags:
            continue  # no mcpu has VNNI without AVX-512BW
        assert bool(has(feature, target)) == (feature in flags), (feature, str(target), sorted(flags))


def test_linux_spelling_of_vnni_selects_a_vnni_cpu(tmp_path: Path) -> None:
    from lepton_backends.tvm import targets

    p = tmp_path / "cpuinfo"
    p.write_text("processor\t: 0\nflags\t\t: sse2 avx2 fma avx512f avx512bw avx512_vnni\n\n")
    if __import__("platform").machine().lower() in ("x86_64", "amd64"):
        assert targets.native_target(str(p))["mcpu"] == "cascadelake"


_DESIGN_SPACE = r"""
import json, sys
from lepton_backends.tvm import lower, tune
from tvm.s_tir import meta_schedule as ms
import onnx
from onnx import TensorProto, helper, numpy_helper
import numpy as np
w = (np.random.default_rng(0).standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32)
g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])], "c",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])], [numpy_helper.from_array(w, "w")])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]); m.ir_version = 8
mod = lower.to_relax(m)
out = {}
for name in json.loads(sys.argv[1]):
    tgt = tune.tuning_target(name)
    tasks = ms.relax_integration.extract_tasks(tune.fused_module(mod, tgt), tgt)
    with tune._without_tensor_intrin_import(tgt):
        ctxs, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(tasks, work_dir=sys.argv[2], space=tune._space(tgt))
        spaces = [len(c.generate_design_space()) for c in ctxs]
    out[json.dumps(name)] = {"kind": tune.rule_kind(tgt), "spaces": spaces}
out["full_import"] = "tvm.s_tir.tensor_intrin.cuda" in sys.modules
print(json.dumps(out))
"""


def test_tuning_design_space_for_the_detected_cpu(tmp_path: Path) -> None:
    """MetaSchedule picks its x86 rule set from the target's features (AVX-512 -> dot_16x4_avx512,
    VNNI -> dot_16x4_vnni intrinsics); the fast path that skips the 1-4 minute tensor-intrinsic
    import registered none, so `--tune` with the default target failed on every AVX-512 host
    ("TensorIntrin 'dot_16x4_avx512' is not registered"). In a fresh process (the intrinsics
    registered by an earlier test would hide it), the design space of a conv kernel is made for
    the detected CPU and each x86 preset, with the rule set the features call for."""
    pytest.importorskip("tvm")
    names = ["native", "x86-64-avx2", "x86-64-avx512", {"kind": "llvm", "mtriple": "x86_64-linux-gnu",
                                                         "mcpu": "cascadelake"}]
    r = subprocess.run([sys.executable, "-c", _DESIGN_SPACE, json.dumps(names), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert not out.pop("full_import")  # still the fast path
    assert all(v["spaces"] and min(v["spaces"]) > 0 for v in out.values()), out
    assert out['"x86-64-avx2"']["kind"] == "llvm"
    assert out['"x86-64-avx512"']["kind"] == "avx512"
    assert out[json.dumps(names[3])]["kind"] == "vnni"
    if __import__("platform").machine().lower() in ("x86_64", "amd64"):
        flags = {f.replace("_", "") for f in _host_flags()}
        want = ("vnni" if {"avx512f", "avx512bw", "avx512vnni"} <= flags or "avxvnni" in flags
                else "avx512" if {"avx512f", "avx512bw"} <= flags else "llvm")
        assert out['"native"']["kind"] == want, (out, sorted(flags))


@pytest.mark.slow
def test_tune_with_the_default_target(tmp_path: Path) -> None:
    """`lepton-opt --backend tvm-cpu --tune` with the default (detected) target tunes a small
    model end to end (no fallback), the artifact matches ONNX Runtime, and a second compile
    into the same database reuses every kernel (0 to tune). About 45 s here."""
    pytest.importorskip("tvm")
    m = _tiny_conv(tmp_path / "conv.onnx")
    db, out = tmp_path / "db", tmp_path / "out"
    cmd = [sys.executable, "-c", "import sys; from lepton.cli import opt_main; sys.exit(opt_main())", str(m),
           "--backend", "tvm-cpu", "--tune", "4", "--tuning-db", str(db), "--no-fallback"]
    r = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0 already tuned, 1 to tune" in r.stderr and "tuning done" in r.stderr, r.stderr
    import lepton
    from lepton_backends.tvm.testing import ort_run

    x = np.random.default_rng(1).standard_normal((1, 8, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(lepton.load(out).run({"x": x})["y"], ort_run(onnx.load(m), {"x": x})["y"],
                               rtol=1e-4, atol=1e-4)
    r = subprocess.run([*cmd, "-o", str(tmp_path / "out2")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "1 already tuned, 0 to tune" in r.stderr, r.stderr[-3000:]


def _tiny_conv(path: Path) -> Path:
    from onnx import numpy_helper

    w = (np.random.default_rng(0).standard_normal((16, 8, 3, 3)) * 0.1).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                           helper.make_node("Relu", ["c"], ["y"])], "one_conv",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


# ------------------------------------------------------------------------------------------------
# Found by differential fuzzing (tests/fuzz/differential.py, bench/fuzz.py --differential)
# ------------------------------------------------------------------------------------------------
import differential as D  # noqa: E402

DIFF_CASES = sorted(p.parent for p in (T.CORPUS / "differential").glob("*/case.json"))


@pytest.fixture(scope="module")
def worker():
    w = D.Worker(timeout=600)
    yield w
    w.close()


@pytest.mark.parametrize("folder", DIFF_CASES, ids=[p.name for p in DIFF_CASES])
def test_saved_differential_reproducers(folder: Path, worker) -> None:
    """Every saved differential finding now compiles and matches ONNX Runtime on its saved inputs
    within the pipeline's tolerance (or is refused in one line), run in a child process: a native
    crash would otherwise take the test process down."""
    case = json.loads((folder / "case.json").read_text())
    feeds = dict(np.load(folder / "inputs.npz"))
    status, detail = worker.run((folder / "model.onnx").read_bytes(), case["pipeline"], case["backend"],
                                case["seed"], feeds)
    assert status in ("ok", "refused"), f"{folder.name}: {status}: {detail}"


def test_quant8_mismatch_was_clipping_outside_the_calibrated_range() -> None:
    """quant8 x onnx: the harness calibrated on standard-normal samples and compared on inputs
    in [0.1, 2]; the whole error was the MatMul's output beyond the calibrated maximum (clipped).
    Calibrated on the compared distribution, quant8 is within its derived tolerance."""
    from lepton_ir.reference import random_inputs

    folder = T.CORPUS / "differential" / "quant8-onnx"
    proto = onnx.load(folder / "model.onnx")
    feeds = dict(np.load(folder / "inputs.npz"))
    w = onnx.numpy_helper.to_array(proto.graph.initializer[0]).astype(np.float64)
    ref = feeds["input_0"].astype(np.float64) @ w
    model = lepton_ir.load(proto.SerializeToString())
    calibrated_max = max(float((random_inputs(model, seed=i, dim_size=2)["input_0"] @ w).max()) for i in range(8))
    assert ref.max() - calibrated_max == pytest.approx(0.215, abs=0.002)  # the reported error, all clipping
    assert D.run_one(proto, "quant8", "onnx", 0, feeds) == "ok"


def test_fp16_tolerance_covers_a_batchnorm_that_amplifies_rounding() -> None:
    """fp16 x onnx: a BatchNormalization with variance 0.02 multiplies the float16 rounding of its
    input by 9.9 near a zero output; the tolerance now scales atol by that gain."""
    from lepton_passes.quant.fp16 import _error_gain

    import lepton_passes

    folder = T.CORPUS / "differential" / "fp16-onnx"
    proto = onnx.load(folder / "model.onnx")
    model = lepton_ir.load(proto.SerializeToString())
    lepton_passes.parse_pipeline("fp16").run(model)
    assert _error_gain(model) == pytest.approx(9.9066, rel=1e-3)
    rtol, atol = next(iter(lepton_passes.parse_pipeline("fp16").passes())).tolerance(model)
    assert atol == pytest.approx(rtol * 9.9066, rel=1e-3)
    assert D.run_one(proto, "fp16", "onnx", 0, dict(np.load(folder / "inputs.npz"))) == "ok"


def test_native_crash_in_an_example_is_a_finding_not_a_dead_fuzzer(worker) -> None:
    """fp16 x onnx once killed the whole fuzzer (SIGSEGV in native code, input lost): examples
    now run in a child process; a crash is reported with its signal and the next example runs."""
    status, detail = worker.run(b"", "!crash", "onnx", 0)
    assert status == "crash" and "SIGSEGV" in detail, (status, detail)
    folder = T.CORPUS / "differential" / "quant8-onnx"
    status, _ = worker.run((folder / "model.onnx").read_bytes(), "canonicalize", "onnx", 0)
    assert status == "ok"


def test_partitioned_artifact_keeps_the_models_inputs_and_outputs(worker, tmp_path) -> None:
    """Finding A (every pipeline x tvm-cpu): a model with an unused input whose Expand TVM cannot
    compile is partitioned into tvm-cpu + onnx stages; the artifact's interface came from the
    stages (the unused input, read by none, was dropped; the outputs were the last stage's: 1 of 3).
    It now takes the model's inputs and gives its outputs, equal to ONNX Runtime."""
    import onnxruntime as ort

    import lepton

    folder = T.CORPUS / "differential" / "canonicalize-tvm-cpu"
    feeds = dict(np.load(folder / "inputs.npz"))
    out = tmp_path / "art"
    with pytest.warns(UserWarning):
        lepton.optimize(str(folder / "model.onnx"), passes="canonicalize", backend="tvm-cpu", output=str(out))
    runner = lepton.load(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["stages"]) == 2
    assert [i["name"] for i in manifest["inputs"]] == ["input_0", "input_1"]
    got = runner.run(feeds)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert sorted(got) == sorted(names)
    for name, want in zip(names, sess.run(None, feeds)):
        np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)


def test_quant8_tolerance_counts_the_gain_of_exp() -> None:
    """Finding B (quant8 x onnx): Relu -> MatMul -> Exp; the float Exp multiplies the MatMul's
    quantization error by exp of its largest input, which the MatMul's output quantizer bounds:
    (255 - 56) * scale = 1.93. The derived atol (0.380) covers the observed error (0.105); with Exp
    counted as 1 it was 0.055."""
    import lepton_passes

    folder = T.CORPUS / "differential" / "quant8-onnx-2"
    model = lepton_ir.load(str(folder / "model.onnx"))
    pl = lepton_passes.parse_pipeline(f"quant8{{calib={folder / 'calib'}}}")
    pl.run(model)
    _, atol = next(iter(pl.passes())).tolerance(model)
    assert atol == pytest.approx(0.0549758 * np.exp(1.934), rel=0.01)
    assert D.run_one(onnx.load(folder / "model.onnx"), "quant8", "onnx", 0, dict(np.load(folder / "inputs.npz"))) == "ok"


def test_quant8_tolerance_counts_the_gain_of_an_unfolded_batchnorm() -> None:
    """quant8 x onnx, third: Conv -> BatchNormalization with the Conv's output also a graph
    output (so the BN is not folded); the float BN multiplies the Conv's output quantization
    error by |scale| / sqrt(var + eps) = 10.2 on its worst channel, which the tolerance counted as 1."""
    import lepton_passes
    from lepton_passes.quant.tolerance import _gain

    folder = T.CORPUS / "differential" / "quant8-onnx-3"
    model = lepton_ir.load(str(folder / "model.onnx"))
    bn = next(n for n in model.graph if n.op_type == "BatchNormalization")
    proto = onnx.load(folder / "model.onnx")
    init = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    want = np.max(np.abs(init["bn_scale_16"]) / np.sqrt(init["bn_var_19"].astype(np.float64) + 1e-5))
    assert _gain(bn) == pytest.approx(want, rel=1e-6) and want > 10
    pl = lepton_passes.parse_pipeline(f"quant8{{calib={folder / 'calib'}}}")
    pl.run(model)
    assert D.run_one(proto, "quant8", "onnx", 0, dict(np.load(folder / "inputs.npz"))) == "ok"


def test_quant8_zero_range_keeps_the_consumers_bias_fine() -> None:
    """quant8 x onnx, fourth: a tensor that is 0 on every calibration sample (Sub(x, x)) got the
    activation scale 1, so its Conv's int32 bias (scale s_in * s_w) was as coarse as the weights
    (0.007 off). A zero range now gets scale 1/255: the bias is within the derived tolerance."""
    from lepton_passes.quant.qmath import activation_qparams

    assert float(activation_qparams(0.0, 0.0, signed=False).scale) == pytest.approx(1 / 255)
    assert float(activation_qparams(0.0, 0.0, signed=True).scale) == pytest.approx(1 / 127)
    folder = T.CORPUS / "differential" / "quant8-onnx-4"
    assert D.run_one(onnx.load(folder / "model.onnx"), "quant8", "onnx", 0, dict(np.load(folder / "inputs.npz"))) == "ok"


def test_quant8_tolerance_counts_the_clip_calibration_chose() -> None:
    """quant8 x onnx, sixth: entropy calibration clipped a Conv's output range to [-0.79, 0.79]
    where its calibration data reached -1.20; compared on that data the error is the clip (0.41),
    which the tolerance (output step only: 0.035) did not count. The clip is now recorded and counted."""
    import lepton_passes
    from lepton_passes.quant.tolerance import CLIP_META

    folder = T.CORPUS / "differential" / "quant8-onnx-6"
    model = lepton_ir.load(str(folder / "model.onnx"))
    pl = lepton_passes.parse_pipeline(f"quant8{{calib={folder / 'calib'}}}")
    pl.run(model)
    clips = {n.outputs[0].name: n.inputs[1].meta[CLIP_META] for n in model.graph
             if n.op_type == "DequantizeLinear" and CLIP_META in n.inputs[1].meta}
    assert max(clips.values()) == pytest.approx(1.2007 - 0.79, abs=0.02), clips
    _, atol = next(iter(pl.passes())).tolerance(model)
    assert atol > 0.41
    assert D.run_one(onnx.load(folder / "model.onnx"), "quant8", "onnx", 0, dict(np.load(folder / "inputs.npz"))) == "ok"
