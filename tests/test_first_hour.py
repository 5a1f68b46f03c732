"""Issue #18, "the user's first hour": what a new user meets in the first commands they type.

Real parts only: the console scripts in subprocesses (or their entry points in-process), ONNX
Runtime, onnx.checker, TVM, the emulated device.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import lepton
from lepton.cli import opt_main, run_main
from lepton_ir.testing import corpus

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "lepton" / "data" / "digits_cnn.onnx"
BIN = Path(sys.executable).parent
PIPELINES = ["canonicalize", "fuse", "quant8", "quant8-dynamic", "fp16", "legalize", "fuse,quant8", "fuse,fp16"]


def script(name: str) -> list[str]:
    """The pip-generated console script (python shebang) next to this interpreter."""
    exe = BIN / name
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lepton.cli"]


def run_cli(name: str, *args: str, timeout: float = 300, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    return subprocess.run(script(name) + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "LEPTON_NO_PROGRESS": "1", **(env or {})})


def one_error_line(stderr: str, prog: str = "lepton-opt") -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def digits_calib(tmp_path: Path) -> Path:
    """8 real digits images (the calib split), one .npz per sample."""
    d = tmp_path / "calib"
    d.mkdir(exist_ok=True)
    x, _ = corpus.digits_dataset("calib")
    for i in range(8):
        np.savez(d / f"s{i}.npz", image=x[i:i + 1])
    return d


def assert_standard_onnx(path: Path) -> None:
    """ONNX Runtime loads it and onnx.checker's full check (with strict shape inference) accepts it."""
    assert path.is_file(), f"{path} is not a file"
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert not [n.op_type for n in proto.graph.node if n.domain == "ai.lepton"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, _ = corpus.digits_dataset("test")
    (y,) = sess.run(None, {"image": x[:2]})
    assert y.shape == (2, 10) and np.isfinite(y).all()


# -- 1. every .onnx Lepton writes is standard ONNX ----------------------------------------------------
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_every_written_onnx_loads_in_ort_and_passes_the_checker(pipeline: str, tmp_path: Path, capsys) -> None:
    """Per built-in pipeline on the digits CNN, the three ways of getting a .onnx out of lepton-opt:
    `-o x.onnx`, `--backend onnx -o x.onnx` (a file, not a folder) and `--backend onnx -o folder`
    (the artifact's model.onnx)."""
    calib = digits_calib(tmp_path)
    passes = pipeline.replace("quant8", f"quant8{{calib={calib},progress=false}}") if "quant8-" not in pipeline \
        else pipeline
    plain, named, folder = tmp_path / "plain.onnx", tmp_path / "named.onnx", tmp_path / "art"
    assert opt_main([str(DIGITS), "--passes", passes, "-o", str(plain)]) == 0
    assert opt_main([str(DIGITS), "--passes", passes, "--backend", "onnx", "-o", str(named)]) == 0
    assert opt_main([str(DIGITS), "--passes", passes, "--backend", "onnx", "-o", str(folder)]) == 0
    capsys.readouterr()
    for path in (plain, named, folder / "model.onnx"):
        assert_standard_onnx(path)
    assert named.is_file() and (folder / "manifest.json").is_file()
    if "fuse" in pipeline and "quant8" not in pipeline:  # fused ops were there and were lowered
        kinds = {n.op_type for n in onnx.load(str(plain)).graph.node}
        assert "FusedConv" in kinds or "Conv" in kinds


def test_onnx_file_with_another_backend_is_a_usage_error(tmp_path: Path) -> None:
    r = run_cli("lepton-opt", str(DIGITS), "--backend", "tvm-cpu", "-o", str(tmp_path / "m.onnx"))
    assert r.returncode == 2 and "writes an artifact folder" in one_error_line(r.stderr)
    assert not (tmp_path / "m.onnx").exists()


# -- 2. --check with fused pipelines ----------------------------------------------------------------
def _check(name: str, pipeline: str, tmp_path: Path) -> lepton.OptimizeResult:
    calib = tmp_path / f"calib-{name}"
    calib.mkdir()
    if name == "digits":
        x, _ = corpus.digits_dataset("calib")
        for i in range(8):
            np.savez(calib / f"s{i}.npz", image=x[i:i + 1])
        path, inputs = DIGITS, {"image": corpus.digits_dataset("test")[0][:4]}
    else:
        for i in range(8):
            np.savez(calib / f"s{i}.npz", **corpus.realistic_inputs(name, seed=i + 1))
        path, inputs = corpus.real_model_path(name), corpus.realistic_inputs(name, seed=0)
    passes = pipeline.replace("quant8", f'quant8{{calib="{calib}",progress=false}}')
    return lepton.optimize(str(path), passes=passes, check=True, check_inputs=inputs)


@pytest.mark.parametrize("name", ["digits", "ppocr-cls"])
@pytest.mark.parametrize("pipeline", ["fuse", "fuse,quant8", "fuse,fp16"])
def test_check_passes_on_fused_pipelines(name: str, pipeline: str, tmp_path: Path) -> None:
    """The differential instrument runs ONNX Runtime on a lowered copy when the IR holds ai.lepton
    ops (it failed on every pipeline containing `fuse`); realistic inputs, real calibration data.
    bench/check_models.py runs every real model."""
    if name != "digits":
        try:
            corpus.real_model_path(name)
        except corpus.ModelNotFetchedError:
            pytest.skip(f"{name} not fetched ({corpus.FETCH_COMMAND})")
    r = _check(name, pipeline, tmp_path)
    assert any(rec.changed for rec in r.report.records)
    assert any(n.domain == "ai.lepton" for n in r.model.graph.all_nodes()) or "quant8" in pipeline \
        or "fp16" in pipeline


def test_check_cli_on_fuse(tmp_path: Path) -> None:
    r = run_cli("lepton-opt", str(DIGITS), "--passes", "canonicalize,fuse", "--check", "-o", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "differential check passed" in r.stdout


def test_check_still_catches_a_wrong_fused_op(tmp_path: Path) -> None:
    """The lowered copy is what ORT runs, so a fused op that computes the wrong thing is still caught:
    a pass that swaps the FusedConv activation Relu for Sigmoid fails the check, naming it."""
    import dataclasses

    from lepton_passes import Pass, register_pass
    from lepton_passes.instruments import DifferentialMismatchError

    @register_pass
    @dataclasses.dataclass(frozen=True)
    class TfhBreakFused(Pass):
        """Swap FusedConv's activation."""

        name = "tfh-break-fused"

        def run(self, model) -> bool:
            for n in model.graph:
                if n.domain == "ai.lepton" and n.op_type == "FusedConv":
                    n.set_attr("activation", "Sigmoid")
                    return True
            return False

    m = lepton.optimize(str(DIGITS), passes="fuse")
    assert any(n.op_type == "FusedConv" for n in m.model.graph)
    with pytest.raises(DifferentialMismatchError, match="tfh-break-fused"):
        lepton.optimize(str(DIGITS), passes="fuse,tfh-break-fused", check=True,
                        check_inputs={"image": corpus.digits_dataset("test")[0][:4]})


# -- 8. Ctrl-C during a TVM compile ------------------------------------------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _restore_previous(out: Path, tmp_path: Path) -> None:
    """(Re)write the previous artifact: an onnx-backend compile of the digits model."""
    r = run_cli("lepton-opt", str(DIGITS), "--backend", "onnx", "-o", str(out))
    assert r.returncode == 0, r.stderr


def _started(p: subprocess.Popen, timeout: float = 120) -> float:
    """Wait until the console script runs Lepton's code: lepton.cli takes over SIGINT before it
    imports numpy, so numpy's extension mapped into the process is the observable sign (before that
    the interpreter itself is starting, e.g. importing site-packages' .pth files, where no program
    can turn Ctrl-C into anything but Python's own KeyboardInterrupt). Returns the time waited."""
    t0 = time.perf_counter()
    maps = Path(f"/proc/{p.pid}/maps")
    while time.perf_counter() - t0 < timeout and p.poll() is None:
        try:
            if "_multiarray_umath" in maps.read_text():
                break
        except OSError:
            pass
        time.sleep(0.005)
    return time.perf_counter() - t0


def test_ctrl_c_at_random_points_of_a_tvm_compile(tmp_path: Path) -> None:
    """SIGINT at several points of `lepton-opt digits --backend tvm-cpu` (importing, lowering,
    TVM's import and compile, the capability checks, writing the artifact): always exit 130 and
    `interrupted`, no traceback, the previous artifact left exactly as it was, no staging folder."""
    out = tmp_path / "art"
    _restore_previous(out, tmp_path)
    before = _sha(out / "manifest.json")
    # When does a full compile publish? (time until a manifest naming tvm-cpu appears)
    base = tmp_path / "base"
    p = subprocess.Popen(script("lepton-opt") + [str(DIGITS), "--backend", "tvm-cpu", "-o", str(base)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _started(p)
    t0 = time.perf_counter()
    published = None
    while p.poll() is None:
        if published is None and (base / "manifest.json").exists():
            published = time.perf_counter() - t0
        time.sleep(0.02)
    assert p.returncode == 0, p.stderr.read()
    published = published or (time.perf_counter() - t0)
    rng = random.Random(18)
    # early (importing Lepton, TVM), during the lowering / TVM import / compile, near the end
    points = [0.0, 0.05 * published, 0.3 * published, 0.6 * published, 0.85 * published]
    points += [rng.uniform(0.0, 0.85 * published) for _ in range(2)]
    interrupted = 0
    for delay in points:
        before = _sha(out / "manifest.json")
        p = subprocess.Popen(script("lepton-opt") + [str(DIGITS), "--backend", "tvm-cpu", "-o", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Watch for the publish, to tell a signal that came too late (a run faster than the
        # baseline) from one the program failed to honour.
        seen: dict[str, float] = {}

        def watch() -> None:
            while p.poll() is None and "t" not in seen:
                try:
                    if _sha(out / "manifest.json") != before:
                        seen["t"] = time.perf_counter()
                except OSError:  # mid-swap
                    pass
                time.sleep(0.002)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _started(p)
        time.sleep(delay)
        t_sig = time.perf_counter()
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
        watcher.join()
        where = f"SIGINT after {delay:.2f} s of ~{published:.2f} s"
        if "t" in seen and seen["t"] < t_sig:  # published before the signal: nothing left to stop
            assert p.returncode == 0 and "Traceback" not in stderr, f"{where} (late): {p.returncode} {stderr}"
            assert json.loads((out / "manifest.json").read_text())["backend"] == "tvm-cpu"
            _restore_previous(out, tmp_path)
            continue
        if p.returncode == 0:  # the signal came between the commit point and the rename
            assert "interrupted after the output was published (it is complete)" in stderr, f"{where}: {stderr}"
            _restore_previous(out, tmp_path)
            continue
        interrupted += 1
        assert p.returncode == 130, f"{where}: exit {p.returncode}\n{stderr}"
        assert stderr.strip().splitlines()[-1] == "lepton-opt: interrupted", f"{where}: {stderr}"
        assert "Traceback" not in stderr and "RuntimeError" not in stderr, f"{where}: {stderr}"
        assert _sha(out / "manifest.json") == before, f"{where}: the artifact was replaced"
        assert json.loads((out / "manifest.json").read_text())["backend"] == "onnx"
        assert not [q.name for q in tmp_path.iterdir() if q.name.startswith(".art")], where
        assert lepton.load(str(out)).run({"image": corpus.digits_dataset("test")[0][:1]})
    assert interrupted >= 4


# -- 3. calibration data errors: one line, no reproducer ----------------------------------------------
@pytest.mark.parametrize("arrays, needle", [
    ({"image": np.zeros((4, 1, 9, 8), np.float32)}, "array for input 'image' has shape [1, 1, 9, 8], the model wants"),
    ({"image": np.zeros((4, 1, 8, 8), np.float64)}, "array for input 'image' is float64, the model wants float32"),
    ({"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.zeros((4,), np.float32)},
     "no array for model input 'image' (has ['x', 'y']); the input wants float32 [?, 1, 8, 8]"),
])
def test_bad_calibration_file_is_one_line_and_no_reproducer(arrays, needle, tmp_path: Path) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, **arrays)
    repro = tmp_path / "repro"
    out = tmp_path / "q.onnx"
    r = run_cli("lepton-opt", str(DIGITS), "--passes", f"quant8{{calib={calib}}}", "-o", str(out),
                "--reproducer-dir", str(repro))
    assert r.returncode == 1
    assert needle in one_error_line(r.stderr)
    assert not out.exists()
    assert not repro.exists() or not list(repro.iterdir()), "a user error wrote a reproducer"


def test_failing_pass_still_writes_a_reproducer(tmp_path: Path) -> None:
    """Reproducers stay for real pass failures (a crashing pass is not a user error)."""
    import dataclasses

    from lepton_passes import Pass, register_pass

    @register_pass
    @dataclasses.dataclass(frozen=True)
    class TfhCrash(Pass):
        """Crashes."""

        name = "tfh-crash"

        def run(self, model) -> bool:
            raise ZeroDivisionError("oops")

    repro = tmp_path / "repro"
    assert opt_main([str(DIGITS), "--passes", "tfh-crash", "-o", str(tmp_path / "x.onnx"),
                     "--reproducer-dir", str(repro)]) == 1
    assert len(list(repro.iterdir())) == 1


# -- 4. --input-shape checked by shape inference; symbolic dims calibration needs ------------------
def _unet_like(path: Path) -> Path:
    """x [N,3,H,W] -> MaxPool/2 -> Resize x2 -> Concat with x: odd H or W cannot concatenate."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("MaxPool", ["images"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="down"),
             helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest", name="up"),
             helper.make_node("Concat", ["images", "u"], ["y"], axis=1, name="skip_concat")]
    g = helper.make_graph(nodes, "g", [x], [y], [scales])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_input_shape_the_model_cannot_take_names_the_node(tmp_path: Path) -> None:
    model = _unet_like(tmp_path / "unet.onnx")
    out = tmp_path / "o.onnx"
    r = run_cli("lepton-opt", str(model), "--input-shape", "images=1x3x33x47", "-o", str(out))
    assert r.returncode == 1
    line = one_error_line(r.stderr)
    assert "--input-shape images=1x3x33x47" in line and "skip_concat" in line
    assert not out.exists()
    r = run_cli("lepton-opt", str(model), "--input-shape", "images=1x3x32x48", "-o", str(out))
    assert r.returncode == 0, r.stderr


def test_random_calibration_names_the_symbolic_dims_and_the_input_shape(tmp_path: Path) -> None:
    """A 5x5 Conv cannot run on the 2x2 images random calibration makes of symbolic H, W."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[5, 5]),
                           helper.make_node("Relu", ["c"], ["y"])], "g", [x], [y], [w])
    model = tmp_path / "conv5.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    repro = tmp_path / "repro"
    r = run_cli("lepton-opt", str(model), "--passes", "quant8", "-o", str(tmp_path / "q.onnx"),
                "--reproducer-dir", str(repro))
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("lepton-opt: error:")]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "symbolic dims H, N, W to 2" in err[0] and "--input-shape x=?x3x?x?" in err[0]
    assert not repro.exists() or not list(repro.iterdir())
    r = run_cli("lepton-opt", str(model), "--passes", "quant8", "--input-shape", "x=1x3x16x16",
                "-o", str(tmp_path / "q.onnx"))
    assert r.returncode == 0, r.stderr


# -- 5. the backend's target carries into quant8 ------------------------------------------------------
def test_tvm_arm_quantizes_for_arm(tmp_path: Path) -> None:
    calib = digits_calib(tmp_path)
    r = lepton.optimize(str(DIGITS), passes=f"fuse,quant8{{calib={calib},progress=false}}", backend="tvm-arm",
                        target="cortex-a72", output=str(tmp_path / "arm"))
    assert "target=arm" in r.pipeline
    mf = json.loads((tmp_path / "arm" / "manifest.json").read_text())
    assert "quant8{" in mf["pipeline"] and "target=arm" in mf["pipeline"]
    # arm: signed (s8) activations; x86 (quant8's default): u8
    zps = [n for n in r.model.graph if n.op_type == "QuantizeLinear"]
    assert zps and all(n.outputs[0].dtype.name.lower() == "int8" for n in zps)
    # An explicit target= is the user's choice and stays.
    r2 = lepton.optimize(str(DIGITS), passes=f"quant8{{calib={calib},target=x86,progress=false}}",
                         backend="tvm-arm", target="cortex-a72", output=str(tmp_path / "arm2"))
    assert "target=arm" not in r2.pipeline
    assert all(n.outputs[0].dtype.name.lower() == "uint8" for n in r2.model.graph if n.op_type == "QuantizeLinear")


# -- 6. lepton-run --compare uses the pipeline's tolerance --------------------------------------------
def test_compare_on_int8_artifact_uses_the_recorded_tolerance(tmp_path: Path) -> None:
    calib = digits_calib(tmp_path)
    out = tmp_path / "int8"
    r = run_cli("lepton-opt", str(DIGITS), "--passes", f"fuse,quant8{{calib={calib}}}", "-o", str(out))
    assert r.returncode == 0, r.stderr
    tol = json.loads((out / "manifest.json").read_text())["extra"]["tolerance"]
    assert tol["passes"] == ["quant8"] and tol["atol"] > 1e-3
    x, _ = corpus.digits_dataset("test")
    np.savez(tmp_path / "in.npz", image=x[:8])
    r = run_cli("lepton-run", str(out), "--inputs", str(tmp_path / "in.npz"), "--compare", str(DIGITS))
    assert r.returncode == 0, r.stderr
    assert "the tolerance of quant8, recorded at compile time" in r.stdout
    # Explicit tolerances win: the int8 error is far above 1e-4.
    r = run_cli("lepton-run", str(out), "--inputs", str(tmp_path / "in.npz"), "--compare", str(DIGITS),
                "--rtol", "1e-3", "--atol", "1e-4")
    assert r.returncode == 1 and "differs from ONNX Runtime" in one_error_line(r.stderr, "lepton-run")
    # An exact pipeline records nothing and keeps the defaults.
    r = run_cli("lepton-opt", str(DIGITS), "--passes", "fuse", "-o", str(tmp_path / "f32"))
    assert "tolerance" not in (json.loads((tmp_path / "f32" / "manifest.json").read_text()).get("extra") or {})


# -- 7. device stop, target presets, did-you-mean, --version, exit 2 ----------------------------------
@pytest.mark.parametrize("backend, listed, not_listed", [
    ("tvm-arm", "cortex-a53, cortex-a55, cortex-a72, cortex-a76, neoverse-n1, neoverse-v1", "sm_80"),
    ("tvm-cuda", "sm_75, sm_80, sm_86, sm_89, sm_90", "cortex-a72"),
    ("tvm-cpu", "native, x86-64-avx2, x86-64-avx512", "sm_80"),
])
def test_unknown_target_lists_the_backends_own_presets(backend, listed, not_listed, tmp_path: Path) -> None:
    r = run_cli("lepton-opt", str(DIGITS), "--backend", backend, "--target", "cortex-a99", "-o", str(tmp_path / "o"))
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert f"its targets: {listed}" in line and not_listed not in line.split("its targets:")[1].split("(")[0]
    assert not (tmp_path / "o").exists()
    if backend == "tvm-arm":
        assert "(did you mean 'cortex-a" in line


def test_pass_option_typo_says_did_you_mean(tmp_path: Path) -> None:
    r = run_cli("lepton-opt", str(DIGITS), "--passes", "quant8{calbration=entropy}", "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2
    assert "unknown option 'calbration' for pass 'quant8' (did you mean 'calibration'?)" in one_error_line(r.stderr)


@pytest.mark.parametrize("prog", ["lepton-opt", "lepton-run", "lepton-device"])
def test_version(prog: str) -> None:
    from importlib.metadata import version

    r = run_cli(prog, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"{prog} {version('lepton')}", r.stdout + r.stderr


@pytest.mark.parametrize("args", [[], ["bogus"], ["emulate", "--port", "x"], ["stop", "--all", "--port", "9"],
                                  ["emulate", "--arch", "riscv"]])
def test_lepton_device_usage_errors_exit_2(args) -> None:
    r = run_cli("lepton-device", *args)
    assert r.returncode == 2, r.stderr
    one_error_line(r.stderr, "lepton-device")


def _device_image() -> Path:
    from lepton import device

    cache = device.cache_dir(None)
    if not device.image_is_current(cache):
        pytest.skip("no current emulated-device image (lepton-device build)")
    return cache / "image"


def test_lepton_device_stop_stops_what_status_shows(tmp_path: Path) -> None:
    """A private cache (the built image linked in) so only this test's emulators are seen."""
    from tests.device.devicetest import free_port

    cache = tmp_path / "dev"
    cache.mkdir()
    (cache / "image").symlink_to(_device_image())
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    try:
        for port in ports:
            r = run_cli("lepton-device", "emulate", "--port", str(port), "--cache", str(cache))
            assert r.returncode == 0, r.stderr
        r = run_cli("lepton-device", "status", "--cache", str(cache))
        assert all(f"127.0.0.1:{p}" in r.stdout for p in ports)
        r = run_cli("lepton-device", "stop", "--cache", str(cache))  # which one?
        assert r.returncode == 2 and "give --port PORT or --all" in one_error_line(r.stderr, "lepton-device")
        r = run_cli("lepton-device", "stop", "--port", str(ports[0]), "--cache", str(cache))
        assert r.returncode == 0 and f"stopped 127.0.0.1:{ports[0]}" in r.stdout
        r = run_cli("lepton-device", "stop", "--cache", str(cache))  # the one status shows
        assert r.returncode == 0 and f"stopped 127.0.0.1:{ports[1]}" in r.stdout, r.stderr
        assert "running: none" in run_cli("lepton-device", "status", "--cache", str(cache)).stdout
        r = run_cli("lepton-device", "emulate", "--port", str(ports[0]), "--cache", str(cache))
        assert r.returncode == 0, r.stderr
        r = run_cli("lepton-device", "stop", "--all", "--cache", str(cache))
        assert r.returncode == 0 and f"stopped 127.0.0.1:{ports[0]}" in r.stdout
        assert "running: none" in run_cli("lepton-device", "status", "--cache", str(cache)).stdout
    finally:
        run_cli("lepton-device", "stop", "--all", "--cache", str(cache))


# -- 9. the summary line, speed wording, progress, TVM's own output ------------------------------------
def test_summary_line_gives_sizes_nodes_and_time(tmp_path: Path) -> None:
    out = tmp_path / "f.onnx"
    r = run_cli("lepton-opt", str(DIGITS), "--passes", "canonicalize,fuse", "-o", str(out))
    assert r.returncode == 0, r.stderr
    size_in = DIGITS.stat().st_size / 1024
    size_out = out.stat().st_size / 1024
    m = re.fullmatch(rf"{re.escape(str(DIGITS))}: 8 -> 5 nodes, ([\d.]+) kB -> ([\d.]+) kB; \d+ pass run\(s\), "
                     rf"\d+ changed; [\d.]+ (ms|s); wrote {re.escape(str(out))}", r.stdout.strip())
    assert m, r.stdout
    assert abs(float(m.group(1)) - size_in) < 0.1 and abs(float(m.group(2)) - size_out) < 0.1


def test_lepton_run_says_faster_or_slower_than_onnx_runtime(tmp_path: Path) -> None:
    out = tmp_path / "a"
    assert run_cli("lepton-opt", str(DIGITS), "--backend", "onnx", "-o", str(out)).returncode == 0
    r = run_cli("lepton-run", str(out), "--bench", "20", "--compare", str(DIGITS))
    assert r.returncode == 0, r.stderr
    assert re.search(r"the artifact is \d+\.\dx (faster|slower) than ONNX Runtime", r.stdout), r.stdout
    assert "speedup" not in r.stdout


def test_calibration_progress_is_plain_off_a_terminal_and_quiet_silences_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LEPTON_NO_PROGRESS"}
    cmd = script("lepton-opt") + [str(DIGITS), "--passes", "quant8{calib=random:4}", "-o", str(tmp_path / "q.onnx")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "calibrating [" not in r.stderr
    r = subprocess.run(cmd + ["--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "calibrating" not in r.stderr


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """On a pseudo-terminal the bar is drawn (carriage returns), so the non-terminal case above is a choice."""
    import pty

    code = ("import sys; from lepton_passes.quant.calibration import Progress\n"
            "p = Progress(3)\nfor _ in range(3): p.update()\np.close()\n")
    env = {k: v for k, v in os.environ.items() if k != "LEPTON_NO_PROGRESS"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: stderr is the pty
        os.execve(sys.executable, [sys.executable, "-c", code], env)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    os.waitpid(pid, 0)
    assert b"\rcalibrating [" in data and b"3/3" in data


def test_tvm_chatter_is_hidden_unless_debug(tmp_path: Path) -> None:
    """TVM's importer warns "Renaming name a.b to a_b" for every dotted name and prints dumps itself;
    none of it reaches the user without --debug."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("in.put", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("out.put", TensorProto.FLOAT, [2, 4])
    g = helper.make_graph([helper.make_node("Relu", ["in.put"], ["r.1"]), helper.make_node("Sigmoid", ["r.1"], ["out.put"])],
                          "g", [x], [y])
    model = tmp_path / "dotted.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    r = run_cli("lepton-opt", str(model), "--backend", "tvm-cpu", "-o", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert "Renaming name" not in r.stderr and r.stderr.strip() == "", r.stderr
    assert len(r.stdout.strip().splitlines()) == 1
    r = run_cli("lepton-opt", str(model), "--backend", "tvm-cpu", "-o", str(tmp_path / "b"), "--debug")
    assert r.returncode == 0 and "Renaming name in.put to in_put" in r.stderr


def test_hold_tool_output_hides_fd_writes_but_not_lepton_messages(tmp_path: Path) -> None:
    code = ("import os, sys\nfrom lepton.cli import _hold_tool_output\n"
            "with _hold_tool_output(True):\n"
            "    print('tool stdout print')\n    os.write(1, b'tool fd1\\n')\n    os.write(2, b'tool fd2\\n')\n"
            "    print('lepton message', file=sys.stderr)\n"
            "print('after')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "after\n" and r.stderr == "lepton message\n"


def test_fp16_leaves_an_already_quantized_model_alone(tmp_path: Path) -> None:
    """ddddocr-old ships int8 (DynamicQuantizeLinear): fp16 fed it float16, which ONNX Runtime
    refuses, and float16 values move int8 rounding steps anyway. Now: a warning, float32 kept,
    and `--check` passes (bench/check_models.py runs ddddocr-old itself)."""
    calib = digits_calib(tmp_path)
    with pytest.warns(UserWarning, match="already quantized"):
        r = lepton.optimize(str(DIGITS), passes=f"quant8{{calib={calib},progress=false}},fp16", check=True,
                            check_inputs={"image": corpus.digits_dataset("test")[0][:4]})
    assert not any(v.dtype is not None and v.dtype.name == "FLOAT16" for n in r.model.graph for v in n.outputs)


def test_print_ir_and_timing_still_reach_stderr_while_tool_output_is_held(tmp_path: Path) -> None:
    """The instruments are made before fd 2 is redirected: they must still write to the terminal."""
    r = run_cli("lepton-opt", str(DIGITS), "--passes", "fuse", "--print-ir-after-all", "--time-passes",
                "--backend", "tvm-cpu", "-o", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert "// ----- IR after fuse -----" in r.stderr and "===- pass timing -===" in r.stderr
    assert "// ----- IR after lower-fused-to-standard -----" in r.stderr  # the backend's lowering too
