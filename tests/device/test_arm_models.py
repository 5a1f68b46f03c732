"""Real models compiled with `--backend tvm-arm`, run on the emulated aarch64 device over TVM RPC.

The digits CNN and the smallest real models tvm-cpu compiles (magika, ppocr-cls) are cross-compiled
on the host for cortex-a72 and neoverse-n1 (`lepton.optimize(..., backend="tvm-arm")`), run on the
emulated board through `lepton.remote.RemoteRunner` (directly, and once through an RPC tracker) and
compared with ONNX Runtime on the host (rtol 1e-3, atol 1e-4); plus `lepton-run --rpc` end to end
and its user errors. Real qemu, real TVM RPC, no mocks. Emulation is ~25x slower than native, so
inputs are batch 1.

Shares the device with tests/device/test_emulator.py: 127.0.0.1:$LEPTON_DEVICE_TEST_PORT (9094).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devicetest import TEST_PORT, free_port as _free_port, require_host_packages as _require_host_packages
from lepton import device
from lepton_ir.reference import run_ort

pytestmark = pytest.mark.arm

RTOL, ATOL = 1e-3, 1e-4
TRACKER_KEY = "lepton-aarch64-models"


# ------------------------------------------------------------------------------------------------
# Models and artifacts (compiled once per session and target)
# ------------------------------------------------------------------------------------------------


def _model(name: str) -> tuple[Path, dict[str, np.ndarray]]:
    from lepton_ir.testing import corpus

    if name == "digits":
        x, _ = corpus.digits_dataset("test")
        return corpus.digits_model_path(), {"image": np.ascontiguousarray(x[:1], dtype=np.float32)}
    try:
        path = corpus.real_model_path(name)
    except FileNotFoundError as e:
        pytest.skip(f"{name} is not fetched ({e}); run `python -m lepton_ir.testing.corpus fetch {name}`")
    return path, corpus.realistic_inputs(name, batch=1)


_ARTIFACTS: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="session")
def arm_artifact(tmp_path_factory):
    """artifact(model, target) -> (artifact folder, inputs, ONNX Runtime outputs)."""
    import lepton

    def get(name: str, target: str):
        path, inputs = _model(name)
        if (name, target) not in _ARTIFACTS:
            out = tmp_path_factory.mktemp("arm") / f"{name}-{target}"
            lepton.optimize(str(path), passes="canonicalize", backend="tvm-arm", target=target, output=out,
                            input_shapes={k: list(v.shape) for k, v in inputs.items()})
            _ARTIFACTS[(name, target)] = out
        return _ARTIFACTS[(name, target)], inputs, run_ort(path, inputs, optimize=True)

    return get


def _assert_matches(outputs: dict[str, np.ndarray], ref: list[np.ndarray]) -> None:
    assert len(outputs) == len(ref)
    for (name, got), want in zip(outputs.items(), ref):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,target", [
    ("digits", "cortex-a72"),
    ("digits", "neoverse-n1"),
    ("magika", "cortex-a72"),
    ("magika", "neoverse-n1"),
    # ~20 s to compile on a quiet 2-core host, 60-90 s under load: in the slow run (-m slow) only
    pytest.param("ppocr-cls", "neoverse-n1", marks=pytest.mark.slow),
])
def test_model_on_device(emulator, arm_artifact, name, target, request) -> None:
    from lepton.remote import RemoteRunner

    if name == "ppocr-cls" and "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("ppocr-cls takes 20-90 s to cross-compile; run with -m slow (bench/arm_models.py runs it too)")

    art, inputs, ref = arm_artifact(name, target)
    head = (art / "model.so").read_bytes()[:20]
    assert int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64: really cross-compiled
    with RemoteRunner(art, rpc=f"{emulator[0]}:{emulator[1]}") as r:
        _assert_matches(r.run(inputs), ref)
        if name == "digits":
            stats = r.benchmark(inputs, repeat=3, warmup=1)
            assert stats["timed_on"] == "device" and 0 < stats["median_ms"] <= stats["p90_ms"]


def test_model_through_tracker(arm_artifact) -> None:
    """A host RPC tracker, an emulated server registered under a key, RemoteRunner asking for it."""
    from lepton.remote import RemoteError, RemoteRunner

    _require_host_packages()
    art, inputs, ref = arm_artifact("digits", "cortex-a72")
    server_port = _free_port()
    with device.host_tracker() as tracker_addr:
        with pytest.raises(RemoteError, match="no device with key 'no-such-key'"):
            RemoteRunner(art, tracker=tracker_addr, key="no-such-key")
        with device.EmulatorLease(port=server_port, tracker=tracker_addr, key=TRACKER_KEY):
            # One session only: after a session ends, TVM's server re-registers with the tracker
            # late (up to minutes), so a second request would wait for it.
            with RemoteRunner(art, tracker=tracker_addr, key=TRACKER_KEY, session_timeout=120) as r:
                assert r.address == f"tracker {tracker_addr} key {TRACKER_KEY}"
                _assert_matches(r.run(inputs), ref)


# ------------------------------------------------------------------------------------------------
# lepton-run --rpc end to end
# ------------------------------------------------------------------------------------------------


def _lepton_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from lepton.cli import run_main; sys.exit(run_main())",
                           *args], capture_output=True, text=True, timeout=300)


def _assert_one_line_error(p: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert p.returncode == code, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("lepton-run: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in p.stderr


def test_cli_lepton_run_rpc(emulator, arm_artifact, tmp_path) -> None:
    """The quoted workflow: lepton-opt --backend tvm-arm, then lepton-run --rpc --bench --compare."""
    art, inputs, ref = arm_artifact("digits", "cortex-a72")
    model = str(_model("digits")[0])
    np.savez(tmp_path / "in.npz", **inputs)
    p = _lepton_run(str(art), "--rpc", f"{emulator[0]}:{emulator[1]}", "--inputs", str(tmp_path / "in.npz"),
                    "--output", str(tmp_path / "out.npz"), "--bench", "3", "--warmup", "1", "--compare", model)
    assert p.returncode == 0, p.stderr
    assert "device: 127.0.0.1:" in p.stdout and "aarch64" in p.stdout
    assert "artifact latency on the device" in p.stdout and "compare with ONNX Runtime" in p.stdout
    with np.load(tmp_path / "out.npz") as z:
        np.testing.assert_allclose(z["logits"], ref[0], rtol=RTOL, atol=ATOL)


def test_cli_opt_tvm_arm(tmp_path) -> None:
    """`lepton-opt ... --backend tvm-arm --target cortex-a72 -o out/` writes an aarch64 artifact."""
    from lepton_ir.testing import corpus

    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "lepton.cli", str(corpus.digits_model_path()), "--passes", "fuse",
                        "--backend", "tvm-arm", "--target", "cortex-a72", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    head = (out / "model.so").read_bytes()[:20]
    assert int.from_bytes(head[18:20], "little") == 183
    p = subprocess.run([sys.executable, "-m", "lepton.cli", str(corpus.digits_model_path()),
                        "--backend", "tvm-arm", "--target", "x86-64-avx2", "-o", str(tmp_path / "bad")],
                       capture_output=True, text=True, timeout=300)
    # A target of another backend is a usage error caught before any pass runs, listing tvm-arm's presets.
    assert p.returncode == 2 and "not a tvm-arm target; its targets: cortex-a53" in p.stderr, p.stderr


def test_cli_wrong_arch_artifact(emulator, tmp_path) -> None:
    """An x86 artifact sent to the aarch64 device: one line naming the architecture, exit 1."""
    import lepton
    from lepton_ir.testing import corpus

    out = tmp_path / "x86"
    lepton.optimize(str(corpus.digits_model_path()), passes="canonicalize", backend="tvm-cpu",
                    target="x86-64-avx2", output=out, input_shapes={"image": [1, 1, 8, 8]})
    p = _lepton_run(str(out), "--rpc", f"{emulator[0]}:{emulator[1]}")
    _assert_one_line_error(p, 1, "cannot load")
    assert "x86_64" in p.stderr


def test_cli_rpc_user_errors(arm_artifact, tmp_path) -> None:
    art, _, _ = arm_artifact("digits", "cortex-a72")
    port = _free_port()  # nothing listens there
    _assert_one_line_error(_lepton_run(str(art), "--rpc", f"127.0.0.1:{port}"), 1,
                           f"cannot connect to the RPC server at 127.0.0.1:{port}")
    _assert_one_line_error(_lepton_run(str(art), "--tracker", f"127.0.0.1:{port}", "--key", "k"), 1,
                           f"cannot connect to the RPC tracker at 127.0.0.1:{port}")
    _assert_one_line_error(_lepton_run(str(art), "--tracker", "127.0.0.1:9190"), 2, "--tracker needs --key")
    _assert_one_line_error(_lepton_run(str(art), "--rpc", "127.0.0.1:notaport"), 1, "bad RPC address")
    # a tampered library is refused before anything is uploaded
    bad = tmp_path / "tampered"
    bad.mkdir()
    for f in art.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    with open(bad / "model.so", "ab") as f:
        f.write(b"\0")
    _assert_one_line_error(_lepton_run(str(bad), "--rpc", f"127.0.0.1:{port}"), 1, "model.so does not match its sha256")
