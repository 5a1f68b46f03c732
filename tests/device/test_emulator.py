"""The emulated aarch64 device (lepton-device): real qemu-user, real TVM RPC, no mocks.

A conv+gemm ONNX model is cross-compiled on the host for aarch64, uploaded to the emulated board
over TVM RPC (directly and through an RPC tracker), run there, and compared with ONNX Runtime on the
host. The first run builds the device image (~60 s, needs `lepton-device install-host-deps`); later
runs reuse the cache (~/.cache/lepton/device/aarch64 or $LEPTON_DEVICE_CACHE).

Ports: the shared emulator listens on $LEPTON_DEVICE_TEST_PORT (default 9094) so that tests do not
take over a user's emulator on 9090; the tracker test picks free ports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devicetest import TEST_PORT, free_port as _free_port, require_host_packages as _require_host_packages
from lepton import device

pytestmark = pytest.mark.arm

RTOL, ATOL = 1e-3, 1e-4
TRACKER_KEY = "lepton-aarch64-test"


# ------------------------------------------------------------------------------------------------
# The model: conv + relu + flatten + gemm, built with onnx.helper
# ------------------------------------------------------------------------------------------------


def _conv_gemm_model():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "W": rng.standard_normal((4, 3, 3, 3)).astype("float32"),
        "B": rng.standard_normal(4).astype("float32"),
        "W2": (rng.standard_normal((10, 4 * 16 * 16)) * 0.05).astype("float32"),
        "B2": rng.standard_normal(10).astype("float32"),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Flatten", ["r"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "W2", "B2"], ["y"], transB=1),
        ],
        "conv_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="session")
def conv_gemm(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """(aarch64 library, input, ONNX Runtime reference output): compiled once on the host."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from lepton_ir.reference import run_ort

    model = _conv_gemm_model()
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype("float32")
    ref = run_ort(model, {"x": x}, optimize=True)[0]

    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    ex = tvm.compile(from_onnx(model), target=target)
    lib = tmp_path_factory.mktemp("aarch64") / "conv_gemm_aarch64.so"
    # A fresh cross_compiler per export: it mutates its own options list (see the notes).
    ex.export_library(str(lib), fcompile=tvm.support.cc.cross_compiler("aarch64-linux-gnu-gcc"))
    head = lib.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    return lib, x, ref


def _run_remote(remote, lib: Path, x: np.ndarray) -> np.ndarray:
    """Upload, load and run the library on the remote device the way TVM users drive a board."""
    import tvm
    from tvm import relax

    remote.upload(str(lib))
    rlib = remote.load_module(lib.name)
    dev = remote.cpu()
    vm = relax.VirtualMachine(rlib, dev)
    return vm["main"](tvm.runtime.tensor(x, dev)).numpy()


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


def test_device_is_aarch64(emulator) -> None:
    """The remote really is the emulated aarch64 Python (not a host process answering on the port)."""
    from tvm import rpc

    host, port = emulator
    assert (host, port) == ("127.0.0.1", TEST_PORT)
    remote = rpc.connect(host, port)
    assert remote.cpu().exist
    info = device.server_info(port)
    assert info is not None
    cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes()
    assert b"qemu-aarch64" in cmdline


def test_conv_gemm_over_rpc(emulator, conv_gemm) -> None:
    from tvm import rpc

    lib, x, ref = conv_gemm
    remote = rpc.connect(*emulator)
    out = _run_remote(remote, lib, x)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)


def test_conv_gemm_through_tracker(conv_gemm) -> None:
    """A host RPC tracker, an emulated server registered under a key, a client asking for that key."""
    from tvm import rpc

    _require_host_packages()
    lib, x, ref = conv_gemm
    server_port = _free_port()
    with device.host_tracker() as tracker_addr:
        tracker_port = int(tracker_addr.rsplit(":", 1)[1])
        with device.EmulatorLease(port=server_port, tracker=tracker_addr, key=TRACKER_KEY):
            remote = rpc.connect_tracker("127.0.0.1", tracker_port).request(TRACKER_KEY, session_timeout=120)
            out = _run_remote(remote, lib, x)
            np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL)
            del remote  # close the session before the server goes away
        assert device.server_info(server_port) is None  # the lease stopped it


# ------------------------------------------------------------------------------------------------
# Command-line user errors: one line `lepton-device: error: ...`, non-zero exit, no traceback
# ------------------------------------------------------------------------------------------------


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lepton.device", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def _assert_one_line_error(p: subprocess.CompletedProcess, code: int, needle: str) -> None:
    assert p.returncode == code, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("lepton-device: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_cli_unknown_arch() -> None:
    _assert_one_line_error(_cli("emulate", "--arch", "riscv64"), 2, "unknown arch 'riscv64'")


def test_cli_stop_when_nothing_runs(tmp_path) -> None:
    _assert_one_line_error(_cli("stop", "--port", "9", "--cache", str(tmp_path)), 1, "no emulator running on port 9")


def test_cli_tracker_without_key(tmp_path) -> None:
    _assert_one_line_error(_cli("emulate", "--tracker", "127.0.0.1:9190", "--cache", str(tmp_path)), 2,
                           "--tracker needs --key")


def test_cli_missing_host_packages(tmp_path) -> None:
    """With the tools off PATH, `emulate` names the missing packages and the command to install them."""
    env = dict(os.environ, PATH=str(tmp_path))  # python itself is run by absolute path
    p = _cli("emulate", "--cache", str(tmp_path / "cache"), env=env)
    _assert_one_line_error(p, 1, "missing host packages: qemu-user gcc-aarch64-linux-gnu")
    assert "lepton-device install-host-deps" in p.stderr


def test_cli_tracker_unreachable(tmp_path) -> None:
    """A tracker that is not there is reported at once (before any build), not after a timeout."""
    port = _free_port()  # nothing listens there
    p = _cli("emulate", "--port", str(_free_port()), "--tracker", f"127.0.0.1:{port}", "--key", "k",
             "--cache", str(tmp_path))
    _assert_one_line_error(p, 1, f"cannot reach the RPC tracker at 127.0.0.1:{port}")


def test_cli_status(tmp_path) -> None:
    p = _cli("status", "--cache", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "image: none" in p.stdout and "running: none" in p.stdout
