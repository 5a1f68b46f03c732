"""`--check` (the differential instrument) with fused pipelines on every real model.

For each model (the shipped digits CNN and every cached real model, `lepton_ir.testing.corpus`)
and each pipeline (`fuse`, `fuse,quant8`, `fuse,fp16`), runs `lepton.optimize(..., check=True)`
with realistic inputs for the ONNX Runtime runs (`corpus.realistic_inputs`, seed 0; digits: test
images) and, for quant8, calibration on 8 other realistic samples (a folder of .npz files, seeds
1..8; digits: the calib split). Models below opset 13 are converted to opset 13 first
(`onnx.version_converter`, what quant8's error asks for: ppocr-rec's Squeeze). Prints one line
per run, with each changing pass's largest output deviation from the model before it (max abs
error) against the tolerance it was held to (`Pass.tolerance`, the one `--check` uses) and the
share of that tolerance used (max over elements of |d| / (atol + rtol |ref|)); writes
bench/results/check_models.json and, with `--markdown`, prints the table docs/pipelines.md holds.

    python bench/check_models.py [--markdown] [MODEL ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import lepton
from lepton_ir import LeptonError
from lepton_ir.testing import corpus
from lepton_passes import DifferentialInstrument

PIPELINES = ("fuse", "fuse,quant8", "fuse,fp16")
RESULTS = Path(__file__).resolve().parent / "results" / "check_models.json"


def model_and_data(name: str, calib_dir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The model's path and its check inputs; calibration samples written to `calib_dir`."""
    calib_dir.mkdir(parents=True, exist_ok=True)
    if name == "digits":
        x, _ = corpus.digits_dataset("test")
        cx, _ = corpus.digits_dataset("calib")
        for i in range(8):
            np.savez(calib_dir / f"s{i:02d}.npz", image=cx[i:i + 1])
        return corpus.digits_model_path(), {"image": x[:4]}
    for i in range(8):
        np.savez(calib_dir / f"s{i:02d}.npz", **corpus.realistic_inputs(name, seed=i + 1))
    path = corpus.real_model_path(name)
    import onnx

    proto = onnx.load(str(path))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:  # quant8 needs opset 13 (per-axis DequantizeLinear): convert, as its error says
        from onnx import version_converter

        path = calib_dir.parent / f"{name}-opset13.onnx"
        onnx.save(version_converter.convert_version(proto, 13), str(path))
    return path, corpus.realistic_inputs(name, seed=0)


class RecordingCheck(DifferentialInstrument):
    """The differential instrument `--check` adds, also recording, for each pass it accepted, the
    largest deviation and the tolerance (a rejected pass raises with its max abs error)."""

    def __init__(self, inputs: dict[str, np.ndarray]) -> None:
        super().__init__(inputs)
        self.records: list[dict[str, object]] = []

    def after_pass(self, p, model, changed: bool, seconds: float) -> None:
        before = self.reference
        super().after_pass(p, model, changed, seconds)  # raises beyond the tolerance
        if not changed or before is None or self.reference is None:
            return
        rtol, atol = p.tolerance(model)
        err = used = 0.0
        for a, b in zip(before, self.reference):
            a, b = np.asarray(a), np.asarray(b)
            if a.dtype.kind != "f" or a.size == 0:
                continue
            d = np.abs(a.astype(np.float64) - b.astype(np.float64))
            d = np.where(np.isnan(a) & np.isnan(b), 0.0, d)
            err = max(err, float(d.max()))
            used = max(used, float((d / (atol + rtol * np.abs(a.astype(np.float64)))).max()))
        self.records.append({"pass": p.name, "max_abs": err, "rtol": rtol, "atol": atol, "used": used})


def check(name: str, pipeline: str, tmp: Path) -> dict[str, object]:
    calib = tmp / f"calib-{name}"
    path, inputs = model_and_data(name, calib)
    passes = pipeline.replace("quant8", f'quant8{{calib="{calib}",progress=false}}')
    inst = RecordingCheck(inputs)
    t0 = time.perf_counter()
    try:
        r = lepton.optimize(str(path), passes=passes, instruments=[inst])
        ok, msg = True, f"{r.nodes_before} -> {r.nodes_after} nodes"
    except LeptonError as e:
        ok, msg = False, " ".join(str(getattr(e, "summary", None) or e).split())[:300]
        if getattr(e, "pass_name", ""):
            rtol, atol = _tolerance_in(msg)
            inst.records.append({"pass": e.pass_name, "max_abs": e.max_abs, "rtol": rtol, "atol": atol,
                                 "used": float("nan")})
    return {"model": name, "pipeline": pipeline, "ok": ok, "detail": msg, "passes": inst.records,
            "seconds": round(time.perf_counter() - t0, 2)}


def _tolerance_in(msg: str) -> tuple[float, float]:
    """(rtol, atol) from a mismatch message ("... (rtol=0, atol=0.13): ..."), nan when absent."""
    import re

    m = re.search(r"rtol=([^,]+), atol=([^)]+)\)", msg)
    return (float(m.group(1)), float(m.group(2))) if m else (float("nan"), float("nan"))


def markdown(rows: list[dict[str, object]]) -> str:
    """The model x pipeline table of docs/pipelines.md: per run its verdict and, per pass that
    changed the model, the max abs error / the tolerance (share of it used)."""
    lines = ["| model | pipeline | `--check` | per pass: max abs error / tolerance (share used) |", "|---|---|---|---|"]
    for r in rows:
        parts = []
        for rec in r["passes"]:  # type: ignore[union-attr]
            tol = f"atol {rec['atol']:.3g}" + (f" + rtol {rec['rtol']:.3g}" if rec["rtol"] else "")
            u = 100 * float(rec["used"])
            used = "" if u != u else (" (<1%)" if u < 1 else f" ({u:.0f}%)")
            parts.append(f"{rec['pass']} {rec['max_abs']:.2g} / {tol}{used}")
        lines.append(f"| {r['model']} | `{r['pipeline']}` | {'pass' if r['ok'] else '**FAIL**'} | "
                     f"{'; '.join(parts) or 'no pass changed the model'} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    md = "--markdown" in argv
    argv = [a for a in argv if a != "--markdown"]
    names = argv or ["digits"] + [n for n in corpus.REAL_MODELS if _cached(n)]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            for pipeline in PIPELINES:
                row = check(name, pipeline, Path(d))
                rows.append(row)
                errs = "; ".join(f"{r['pass']} {r['max_abs']:.3g}/{r['atol']:.3g}" for r in row["passes"])
                print(f"{name:<18} {pipeline:<12} {'ok' if row['ok'] else 'FAIL'}  {row['seconds']:>6.1f}s  "
                      f"{row['detail']}  [{errs}]", flush=True)
    if not argv:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    if md:
        print(markdown(rows))
    return 0 if all(r["ok"] for r in rows) else 1


def _cached(name: str) -> bool:
    try:
        corpus.real_model_path(name)
        return True
    except corpus.ModelNotFetchedError:
        return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
