"""Profiling on the emulated Cortex-A72 (the `arm` tests: needs `lepton-device`'s host packages)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_ir
from lepton_backends.split import SplitOptions, profile_model

pytestmark = pytest.mark.arm
PORT = 9098


@pytest.fixture(scope="module")
def edge():
    if shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("needs qemu-user and the aarch64 cross compiler (lepton-device install-host-deps)")
    from lepton.device import EmulatorLease

    with EmulatorLease(port=PORT) as (host, port):
        yield f"{host}:{port}"


def test_profile_on_the_emulator_then_from_the_database(edge, tmp_path, monkeypatch):
    monkeypatch.setenv("LEPTON_NO_PROGRESS", "1")
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal([64, 64]).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
                          "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = lepton_ir.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    opts = SplitOptions(edge_rpc=edge, profiles=str(tmp_path), repeat=2)
    first = profile_model(model, opts)
    assert first.measured == 6 and first.reused == 0  # overhead + 2 nodes, on each side
    assert all(np.isfinite(v) and v >= 0 for v in first.edge_ms.values())
    assert first.edge_call_ms > 0 and first.raw_edge_ms[0] > 0
    again = profile_model(model, opts)
    assert again.measured == 0 and again.reused == 6 and again.edge_ms == first.edge_ms
