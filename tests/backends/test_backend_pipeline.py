"""Backends' lowering pipelines run as nested PassManager runs: the caller's instruments (timing,
print-IR, the differential check, the reproducer, verify-each) see the backend's passes too."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest

import lepton
import lepton_ir
from lepton_backends import Backend, register_backend
from lepton_backends.onnx_backend import OnnxBackend
from lepton_passes import (DifferentialInstrument, Pass, PassFailedError, PrintIRInstrument, TimingInstrument,
                           register_pass)

DIGITS = Path(lepton.__file__).parent / "data" / "digits_cnn.onnx"


@register_pass
@dataclasses.dataclass(frozen=True)
class _Explode(Pass):
    """Test pass: fails like a buggy lowering pass would."""

    name = "tbp-explode"

    def run(self, model: lepton_ir.Model) -> bool:
        raise ZeroDivisionError("lowering bug")


@register_backend
class _ExplodingBackend(OnnxBackend):
    """Test backend whose lowering pipeline contains a failing pass."""

    name = "tbp-exploding"

    def lowering_pipeline(self, target: str | None, options: Any) -> str:
        return "canonicalize,tbp-explode"


def test_backend_passes_are_timed_and_printed(tmp_path: Path) -> None:
    timing = TimingInstrument()
    ir = io.StringIO()
    res = lepton.optimize(DIGITS, passes="fuse", backend="onnx", output=tmp_path / "art",
                          instruments=[timing, PrintIRInstrument(ir, only_changed=True)])
    texts = [r.text for r in res.report.records]
    assert texts == ["fuse", "lower-fused-to-onnx"]  # the user's pass, then the backend's
    assert all(r.changed for r in res.report.records)
    assert "lower-fused-to-onnx" in timing.table()
    assert "IR after lower-fused-to-onnx" in ir.getvalue()
    # The backend lowered a copy: the result's model keeps its fused form, the artifact has none.
    assert any(n.domain == "ai.lepton" for n in res.model.graph)
    saved = lepton_ir.load(tmp_path / "art" / "model.onnx")
    assert not any(n.domain == "ai.lepton" for n in saved.graph)


def test_differential_check_covers_the_backend_pipeline(tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    check = DifferentialInstrument()
    res = lepton.optimize(DIGITS, passes="", backend="tvm-cpu", output=tmp_path / "art", instruments=[check],
                          input_shapes=None, **{"input-shapes": {"image": [2, 1, 8, 8]}})
    texts = [r.text for r in res.report.records]
    assert texts[0].startswith("pin-input-shapes") and "canonicalize" in texts
    assert check.checked >= 1  # ONNX Runtime ran after the backend's passes that changed the model


def test_failing_backend_pass_writes_a_reproducer_and_no_artifact(tmp_path: Path) -> None:
    with pytest.raises(PassFailedError) as e:
        lepton.optimize(DIGITS, passes="", backend="tbp-exploding", output=tmp_path / "art",
                        reproducer_dir=tmp_path / "repro")
    msg = str(e.value)
    assert "pass 'tbp-explode' failed: ZeroDivisionError: lowering bug" in msg and "reproducer written to" in msg
    (folder,) = list((tmp_path / "repro").iterdir())
    assert (folder / "pipeline.txt").read_text().strip() == "tbp-explode"
    assert lepton_ir.load(folder / "input.onnx").graph  # the model just before the failing pass
    assert not (tmp_path / "art").exists()


def test_backend_options_are_typed_and_checked_before_any_work(tmp_path: Path) -> None:
    from lepton_backends import BackendError, get_backend

    opts = get_backend("tvm-cpu").parse_options({"tune-trials": "8", "input-shapes": "x=1x3x4x4,y=2"})
    assert opts.tune_trials == 8 and opts.input_shapes == {"x": (1, 3, 4, 4), "y": (2,)}
    with pytest.raises(BackendError, match="has no option 'tune-trial' \\(did you mean 'tune-trials'\\?\\)"):
        lepton.optimize(DIGITS, backend="tvm-cpu", output=tmp_path / "a", tune_trial=3)
    with pytest.raises(BackendError, match="option tune-trials of backend 'tvm-cpu': expected a non-negative"):
        lepton.optimize(DIGITS, backend="tvm-cpu", output=tmp_path / "a", tune_trials=-1)
    with pytest.raises(BackendError, match="option schedule .* expected one of auto\\|"):
        lepton.optimize(DIGITS, backend="tvm-cpu", output=tmp_path / "a", schedule="fast")
    # A choice spelled like a pipeline keyword (`none`) is still that choice, from text and from Python.
    assert get_backend("tvm-cpu").parse_options({"schedule": "none"}).schedule == "none"
    assert not (tmp_path / "a").exists()


def test_a_backend_without_frozen_options_is_refused() -> None:
    from lepton_backends import BackendError

    class Loose(Backend):
        name = "tbp-loose"
        Options = dict  # not a dataclass

    with pytest.raises(BackendError, match="Options must be a frozen dataclass"):
        register_backend(Loose)
