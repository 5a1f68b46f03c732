"""Differential fuzzing (issue #19): random models through a pipeline and a backend, against ONNX
Runtime on the original model.

For every generated model (`lepton_ir.testing.strategies.onnx_models`, derandomized):
`lepton.optimize(model, passes=P, backend=B, output=tmp)`, then `lepton.load(tmp).run(inputs)`
compared with ONNX Runtime (CPU, optimizations off) on the original, within the pipeline's
tolerance (`Pass.tolerance` on the model, as `check_pass` uses). A compile that ends in a
one-line LeptonError is counted as *refused* (legitimate: e.g. an op TVM cannot lower), anything
else that goes wrong is a mismatch: wrong outputs, a crash, an artifact that does not run.
Hypothesis shrinks the first mismatch of each pipeline x backend; the minimal model is saved with
the `lepton-opt` command that reproduces it (tests/fuzz/corpus/differential/<pipeline>-<backend>/).

    python bench/fuzz.py --differential --seconds 60     # per pipeline x backend
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from targets import CORPUS, lepton_message

PIPELINES = ("canonicalize", "fuse", "quant8", "fp16", "legalize")
BACKENDS = ("onnx", "tvm-cpu")


class Mismatch(AssertionError):
    """The artifact's outputs differ from ONNX Runtime's on the original, or the compile broke."""


def _tolerance(pipeline_text: str, model: Any) -> tuple[float, float]:
    from lepton_passes import parse_pipeline

    tols = [q.tolerance(model) for q in parse_pipeline(pipeline_text).passes()]
    return (max(t[0] for t in tols), max(t[1] for t in tols)) if tols else (1e-4, 1e-5)


def run_one(proto: Any, pipeline: str, backend: str, seed: int = 0) -> str:
    """'ok' or 'refused' (one-line LeptonError); raises Mismatch otherwise."""
    import lepton
    import lepton_ir
    from lepton_ir import LeptonError
    from lepton_ir.testing.strategies import inputs_for
    from lepton_passes.testing import _ort, compare_outputs

    feeds = inputs_for(proto, seed)
    ref = _ort(proto, feeds)
    with tempfile.TemporaryDirectory(prefix="lepton-diff-") as tmp:
        out = Path(tmp) / "out"
        try:
            res = lepton.optimize(proto, passes=pipeline, backend=backend, output=out)
        except LeptonError as e:
            msg = lepton_message(e)
            if "\n" in msg:
                raise Mismatch(f"multi-line error: {msg!r}") from None
            return "refused"
        except Exception as e:  # noqa: BLE001 - a crash in the compile is a finding
            raise Mismatch(f"compile crashed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        try:
            got = lepton.load(out).run(dict(feeds))
        except Exception as e:  # noqa: BLE001 - a published artifact must load and run
            raise Mismatch(f"artifact does not run: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from e
        rtol, atol = _tolerance(pipeline, res.model)
        names = [n for n, _ in ref]
        why = compare_outputs(ref, [(n, got[n]) for n in names if n in got], rtol, atol)
        if why:
            raise Mismatch(why)
    return "ok"


def fuzz_combo(pipeline: str, backend: str, seconds: float, log=print) -> dict[str, Any]:
    """Examples for `seconds` (derandomized), shrinking and saving the first mismatch."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from lepton_ir.testing.strategies import onnx_models

    counts = {"pipeline": pipeline, "backend": backend, "examples": 0, "ok": 0, "refused": 0, "mismatches": 0,
              "reproducer": None, "error": None}
    t0 = time.monotonic()
    last: dict[str, Any] = {}

    class _Stop(Exception):
        """Time is up (raised outside hypothesis's view of failures: caught below)."""

    @settings(max_examples=10**6, derandomize=True, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
    @given(proto=onnx_models(max_nodes=8), seed=st.integers(0, 2**16))
    def prop(proto: Any, seed: int) -> None:
        if time.monotonic() - t0 > seconds and not last:
            raise _Stop()
        counts["examples"] += 1
        try:
            counts[run_one(proto, pipeline, backend, seed)] += 1
        except Mismatch as e:
            last.update(proto=proto, seed=seed, error=str(e))
            raise

    try:
        prop()
    except _Stop:
        pass
    except Mismatch:
        counts["mismatches"] = 1
        d = CORPUS / "differential" / f"{re.sub('[^a-z0-9-]', '_', pipeline)}-{backend}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "model.onnx").write_bytes(last["proto"].SerializeToString())
        from lepton_ir.testing.strategies import inputs_for

        np.savez(d / "inputs.npz", **inputs_for(last["proto"], last["seed"]))  # the inputs compared
        tol = re.search(r"\(rtol ([^,]+), atol ([^)]+)\)", last["error"])
        tol_args = f" --rtol {tol.group(1)} --atol {tol.group(2)}" if tol else ""
        cmd = (f"lepton-opt {d / 'model.onnx'} --passes '{pipeline}' --backend {backend} -o /tmp/out && "
               f"lepton-run /tmp/out --inputs {d / 'inputs.npz'} --compare {d / 'model.onnx'}{tol_args}")
        (d / "README.txt").write_text(f"{pipeline} x {backend}: {last['error']}\n\nReproduce:\n  {cmd}\n")
        counts["reproducer"], counts["error"] = str(d), last["error"]
    counts["seconds"] = round(time.monotonic() - t0, 1)
    log(f"differential {pipeline} x {backend}: {counts['examples']} examples ({counts['ok']} ok, {counts['refused']} "
        f"refused with a one-line error), {counts['mismatches']} mismatches"
        + (f": {counts['error']} -> {counts['reproducer']}" if counts["mismatches"] else ""))
    return counts
