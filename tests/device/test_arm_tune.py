"""`lepton-opt --tune N --tune-rpc HOST:PORT`: MetaSchedule measures tvm-arm candidates on the
emulated aarch64 device (RPCRunner, candidates linked by the cross compiler, inputs sent from
the host), and the tuned artifact runs there and matches ONNX Runtime.

Slow (about 2-3 minutes: every candidate is one RPC session on the emulator): `pytest -m slow`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

pytestmark = [pytest.mark.arm, pytest.mark.slow]


def test_tune_on_emulated_device(emulator, tmp_path: Path, request) -> None:
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("remote tuning on the emulator takes minutes; run with -m slow")
    from lepton.remote import RemoteRunner
    from lepton_ir.reference import run_ort
    from lepton_ir.testing import corpus

    host, port = emulator
    model = corpus.digits_model_path()
    out, db = tmp_path / "tuned", tmp_path / "db"
    p = subprocess.run([sys.executable, "-c", "import sys; from lepton.cli import opt_main; sys.exit(opt_main())",
                        str(model), "--input-shape", "image=1x1x8x8", "--backend", "tvm-arm", "--target",
                        "cortex-a72", "-o", str(out), "--tune", "6", "--tune-rpc", f"{host}:{port}",
                        "--tuning-db", str(db)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "tuning: " in p.stderr and "ETA" in p.stderr  # progress was shown
    records = [json.loads(ln) for ln in (db / "database_tuning_record.json").read_text().splitlines() if ln.strip()]
    run_secs = [r[1][1][0] for r in records if r[1][1]]
    # Real measurements from the device (MetaSchedule stores 1e10 for a failed build or run).
    assert run_secs and min(run_secs) < 1.0, run_secs
    x, _ = corpus.digits_dataset("test")
    feed = {"image": np.ascontiguousarray(x[:1], dtype=np.float32)}
    ref = run_ort(model, feed, optimize=True)
    with RemoteRunner(out, rpc=f"{host}:{port}") as r:
        got = list(r.run(feed).values())
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-3, atol=1e-4)
