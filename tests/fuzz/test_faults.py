"""Fault injection on what Lepton writes (issue #19), bounded for CI. `bench/fault_injection.py`
runs the same checks with more kill points; its figures are in docs/hardening.md.

Real processes, real kills: `lepton-opt` is SIGKILLed at chosen system calls of the artifact
write (strace's syscall injection) or at random moments, and the output folder must then be the
old artifact or the complete new one (hashes verified, loaded and run); the tuning database must
load with every acknowledged record after a writer is killed; a full disk and a read-only folder
give one line and leave the old artifact.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("fault_injection",
                                               Path(__file__).resolve().parents[2] / "bench" / "fault_injection.py")
F = importlib.util.module_from_spec(_spec)
sys.modules["fault_injection"] = F
_spec.loader.exec_module(F)  # type: ignore[union-attr]

needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (kill points inside the write)")


def _clean(res: dict) -> None:
    assert res["corrupt"] == 0, res["problems"]
    assert res.get("lost_records", 0) == 0, res["problems"]
    assert res.get("failed_reruns", 0) == 0, res["problems"]
    assert res.get("stale_staging_after_rerun", 0) == 0, res


@needs_strace
def test_kill_during_onnx_artifact_write() -> None:
    res = F.fault_artifact("artifact-onnx", points=6, seed=1, log=lambda s: None)
    _clean(res)
    assert res["kill_points"] == 6
    assert res["in_write"] >= 3, res  # the kills did land inside the write, not only in start-up


@needs_strace
@pytest.mark.slow
def test_kill_during_tvm_artifact_write() -> None:
    res = F.fault_artifact("artifact-tvm", points=4, seed=2, log=lambda s: None)
    _clean(res)
    assert res["in_write"] >= 2, res


@needs_strace
def test_kill_during_calibration() -> None:
    res = F.fault_artifact("calibration", points=4, seed=3, log=lambda s: None)
    _clean(res)


def test_kill_during_tuning_database_write() -> None:
    pytest.importorskip("tvm")
    res = F.fault_tuning_db(points=3, seed=4, per_writer=20, log=lambda s: None)
    _clean(res)
    assert res["kill_points"] == 3


@needs_strace
@pytest.mark.slow
def test_kill_during_a_real_metaschedule_run() -> None:
    """`lepton-opt --tune` itself killed at a write to its database and at a random moment: the
    database loads with every committed record and the rerun reuses them (about 5 min here)."""
    pytest.importorskip("tvm")
    res = F.fault_tuning_real(points=3, seed=5, log=lambda s: None)
    _clean(res)
    assert res["not_reused"] == 0, res["problems"]
    assert res["kill_points"] == 3 and res["in_write"] >= 1, res


def test_two_writers_into_one_database_lose_nothing() -> None:
    pytest.importorskip("tvm")
    res = F.concurrent_tuning(writers=2, per_writer=20, log=lambda s: None)
    assert res["lost_records"] == 0 and res["corrupt"] == 0, res["problems"]


@pytest.mark.skipif(not F.can_mount(), reason="needs root and mount -t tmpfs (disk-full and read-only cases)")
def test_disk_full_and_read_only() -> None:
    res = F.fault_disk(log=lambda s: None)
    assert len(res["cases"]) == 4
    bad = [c for c in res["cases"] if not c["ok"]]
    assert not bad, bad


def test_torn_database_line_written_by_hand_still_loads(tmp_path: Path) -> None:
    """The exact state a kill mid-append leaves: complete records, then half a line."""
    pytest.importorskip("tvm")
    db = tmp_path / "db"
    db.mkdir()
    p = F._db_writer(db, 0.0, 5)
    p.communicate(timeout=300)
    assert p.returncode == 0
    rec = db / "database_tuning_record.json"
    data = rec.read_bytes()
    rec.write_bytes(data[:-25])  # cut into the last record
    assert sorted(F.db_records(db)) == [0.0, 1.0, 2.0, 3.0]
