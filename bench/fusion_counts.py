"""Fusion on the real models: node counts before/after and an ONNX Runtime output check.

Meant to live at bench/fusion_counts.py (see the fusion issue); kept here until it is moved. For
each real model of the corpus (and the shipped digits CNN) it runs `canonicalize`, `fuse` and
`lower-fused-to-onnx`, prints the node count after each step and which rules fired, and checks
the lowered model's outputs against ONNX Runtime on the original (rtol 1e-4, atol 1e-5).

    python tests/fusion/fusion_counts.py [NAME ...]

Exit status 1 if any model's outputs moved beyond tolerance or a step failed.
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import lepton_ir
import lepton_passes.fusion  # noqa: F401  (registers fuse and the lowerings)
from lepton_ir.testing.corpus import (REAL_MODELS, ModelNotFetchedError, digits_model_path, real_model_path,
                                      realistic_inputs)
from lepton_passes.base import get_pass
from lepton_passes.fusion import fuse_with_report

RTOL, ATOL = 1e-4, 1e-5


def run_ort(model_bytes: bytes, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return [np.asarray(x) for x in sess.run(None, {k: v for k, v in feed.items() if k in names})]


def digits_inputs(model: lepton_ir.Model) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for v in model.graph.inputs:
        if v.name in model.graph.initializers:
            continue
        dims = [d if isinstance(d, int) else 4 for d in v.shape.dims]
        out[v.name] = rng.random(dims).astype(np.float32)
    return out


def count(model: lepton_ir.Model) -> int:
    return sum(1 for _ in model.graph.all_nodes())


def one(name: str, path: Path, feed: dict[str, np.ndarray] | None) -> bool:
    original = path.read_bytes()
    model = lepton_ir.load(original)
    if feed is None:
        feed = digits_inputs(model)
    n0 = count(model)
    t0 = time.perf_counter()
    get_pass("canonicalize")().run(model)
    note = ""
    try:
        run_ort(lepton_ir.to_onnx(model).SerializeToString(), feed)
    except Exception as e:  # keep measuring fusion even if canonicalize (not ours) broke the model
        note = f"  [canonicalize output does not run in ORT ({str(e).splitlines()[0][:90]}...); fused without it]"
        model = lepton_ir.load(original)
    n1 = count(model)
    stats = fuse_with_report(model, debug=False)
    n2 = count(model)
    fused_ops = collections.Counter(n.qualified_op for n in model.graph.all_nodes() if n.domain)
    get_pass("lower-fused-to-onnx")().run(model)
    n3 = count(model)
    secs = time.perf_counter() - t0
    lowered_ops = collections.Counter(n.qualified_op for n in model.graph.all_nodes() if n.domain)
    ref = run_ort(original, feed)
    got = run_ort(lepton_ir.to_onnx(model).SerializeToString(), feed)
    ok = len(ref) == len(got)
    worst = 0.0
    for r, g in zip(ref, got):
        if r.shape != g.shape:
            ok = False
            continue
        if r.dtype.kind == "f":
            diff = np.abs(r.astype(np.float64) - g.astype(np.float64)) - RTOL * np.abs(r.astype(np.float64))
            worst = max(worst, float(diff.max(initial=0.0)))
            ok &= bool(np.allclose(g, r, rtol=RTOL, atol=ATOL))
        else:
            ok &= bool(np.array_equal(r, g))
    print(f"{name:18s} nodes {n0:4d} -> canonicalize {n1:4d} -> fuse {n2:4d} -> lowered {n3:4d}  "
          f"({secs:.1f}s)  outputs {'OK' if ok else 'MISMATCH'} (max excess over rtol: {worst:.2e}){note}")
    if stats.applied:
        print("    rules:   " + ", ".join(f"{k} x{v}" for k, v in sorted(stats.applied.items())))
    if fused_ops:
        print("    fused:   " + ", ".join(f"{k} x{v}" for k, v in sorted(fused_ops.items())))
    if lowered_ops:
        print("    lowered: " + ", ".join(f"{k} x{v}" for k, v in sorted(lowered_ops.items())))
    return ok


def main(argv: list[str]) -> int:
    names = argv or [*REAL_MODELS, "digits"]
    failed = []
    for name in names:
        try:
            if name == "digits":
                ok = one(name, Path(digits_model_path()), None)
            else:
                ok = one(name, Path(real_model_path(name)), realistic_inputs(name))
        except ModelNotFetchedError as e:
            print(f"{name:18s} skipped: {e}")
            continue
        except Exception as e:  # report and go on: one broken model must not hide the others
            print(f"{name:18s} FAILED: {type(e).__name__}: {e}")
            ok = False
        if not ok:
            failed.append(name)
    print("all outputs match" if not failed else f"mismatch or failure: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
