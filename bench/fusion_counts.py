"""Fusion on the real models: node counts before/after, and outputs through both backends.

For each real model of the corpus (and the shipped digits CNN):

* node counts: original -> `canonicalize` -> `fuse` -> `lower-fused-to-onnx` (pass by pass, in
  process) and the rules that fired;
* end to end through each backend (`--backends`, default `onnx,tvm-cpu`)::

      lepton.optimize(path, passes="canonicalize,fuse", backend=B, output=tmp,
                      input_shapes=<shapes of realistic_inputs>)
      lepton.load(tmp).run(inputs)

  compared with ONNX Runtime (CPU, default session options) on the *original* model. The same model
  is also built with `passes="canonicalize"` alone ("unfused"): a model that a backend cannot
  compile or run without fusion either is reported as `fails unfused too` (a backend or model
  limit), not as a fusion failure.

Tolerances: `onnx` rtol 1e-4, atol 1e-5. `tvm-cpu` rtol 1e-3, atol 1e-4 (the backend's own
contract: TVM reorders float reductions; the table also shows the error of the unfused build).
Cells show the verdict and the max |got - ref| over all float outputs.

    python bench/fusion_counts.py [--backends onnx,tvm-cpu] [--json FILE] [--artifacts DIR]
                                  [--tvm-timeout SECS] [NAME ...]

A tvm-cpu build that takes longer than --tvm-timeout is reported as TIMEOUT (not a failure).

Exit status 1 if any model's fused outputs moved beyond tolerance or a fused build failed where
the unfused build of the same backend works.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import lepton
import lepton_ir
import lepton_passes.fusion  # noqa: F401  (registers fuse and the lowerings)
from lepton_ir import reference
from lepton_ir.testing.corpus import (REAL_MODELS, ModelNotFetchedError, digits_model_path, real_model_path,
                                      realistic_inputs)
from lepton_passes.base import get_pass
from lepton_passes.fusion import fuse_with_report

TOL = {"onnx": (1e-4, 1e-5), "tvm-cpu": (1e-3, 1e-4)}


def run_ort(model: bytes | str, feed: dict[str, np.ndarray], threads: int = 0) -> list[np.ndarray]:
    return reference.run_ort(model, feed, optimize=True, threads=threads or None)


def digits_inputs(batch: int = 4) -> dict[str, np.ndarray]:
    """A batch of digits images (the CNN's input is (N, 1, 8, 8) float32 in [0, 1])."""
    from lepton_ir.testing.corpus import digits_dataset

    try:
        x = np.asarray(digits_dataset()[0], dtype=np.float32)[:batch].reshape(batch, 1, 8, 8)
        if float(x.max()) > 1.0:
            x = x / 16.0
    except Exception:  # the dataset's shape is not what we expect: random images of the same shape
        x = np.random.default_rng(0).random((batch, 1, 8, 8)).astype(np.float32)
    name = lepton_ir.load(Path(digits_model_path()).read_bytes()).graph.inputs[0].name
    return {name: x}


def model_and_inputs(name: str) -> tuple[Path, dict[str, np.ndarray]]:
    if name == "digits":
        return Path(digits_model_path()), digits_inputs()
    return Path(real_model_path(name)), realistic_inputs(name)


def count(model: lepton_ir.Model) -> int:
    return sum(1 for _ in model.graph.all_nodes())


def compare(ref: list[np.ndarray], got: list[np.ndarray], rtol: float, atol: float) -> tuple[bool, float]:
    """(all close, max |got - ref| over float outputs) of outputs in order."""
    ok = len(ref) == len(got)
    worst = 0.0
    for r, g in zip(ref, got):
        g = np.asarray(g)
        if r.shape != g.shape:
            return False, float("inf")
        if r.dtype.kind == "f":
            diff = np.abs(r.astype(np.float64) - g.astype(np.float64))
            worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)))
            ok &= bool(np.allclose(g, r, rtol=rtol, atol=atol))
        else:
            ok &= bool(np.array_equal(r, g))
    return ok, worst


def artifact_dir(root: Path, name: str, backend: str, passes: str) -> Path:
    return root / f"{name}-{backend}-{passes.replace(',', '+')}"


def _build_child(path: str, passes: str, backend: str, out: str, shapes: dict, err: str) -> None:
    try:
        lepton.optimize(path, passes=passes, backend=backend, output=out, input_shapes=shapes)
    except BaseException as e:  # noqa: BLE001  (reported by the parent)
        Path(err).write_text(f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}")
        os._exit(1)
    os._exit(0)


def build(path: Path, feed: dict[str, np.ndarray], passes: str, backend: str, out: Path,
          timeout: float | None = None) -> Any:
    """Optimize + compile into `out` (reused if an artifact is already there) and return
    `lepton.load(out)`. With `timeout`, the build runs in a child process that is killed after
    `timeout` seconds (TimeoutError)."""
    shapes = {k: list(np.shape(v)) for k, v in feed.items()}
    if not (out / "manifest.json").is_file():
        if timeout is None:
            lepton.optimize(str(path), passes=passes, backend=backend, output=str(out), input_shapes=shapes)
        else:
            import multiprocessing

            err = out.parent / f".{out.name}.err"
            err.unlink(missing_ok=True)
            proc = multiprocessing.get_context("fork").Process(
                target=_build_child, args=(str(path), passes, backend, str(out), shapes, str(err)))
            proc.start()
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()
                raise TimeoutError(f"{backend} build with {passes!r} took over {timeout:.0f}s")
            if proc.exitcode != 0:
                raise RuntimeError(err.read_text() if err.is_file() else f"build exited with {proc.exitcode}")
    return lepton.load(out)


def run_backend(name: str, path: Path, feed: dict[str, np.ndarray], ref: list[np.ndarray], passes: str,
                backend: str, tmp: Path, timeout: float | None) -> dict[str, Any]:
    """{status: ok|MISMATCH|ERROR, err, secs, msg}."""
    rtol, atol = TOL[backend]
    t0 = time.perf_counter()
    try:
        runner = build(path, feed, passes, backend, artifact_dir(tmp, name, backend, passes),
                       timeout if backend == "tvm-cpu" else None)
        outs = runner.run(feed)
        got = [outs[n] for n in runner.output_names]
    except TimeoutError as e:
        return {"status": "TIMEOUT", "err": None, "secs": time.perf_counter() - t0, "msg": str(e)}
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        return {"status": "ERROR", "err": None, "secs": time.perf_counter() - t0, "msg": f"{type(e).__name__}: {msg}"}
    ok, worst = compare(ref, got, rtol, atol)
    return {"status": "ok" if ok else "MISMATCH", "err": worst, "secs": time.perf_counter() - t0, "msg": ""}


def counts(path: Path) -> dict[str, Any]:
    """Node counts pass by pass, rules applied, fused and lowered op histograms."""
    model = lepton_ir.load(path.read_bytes())
    n0 = count(model)
    get_pass("canonicalize")().run(model)
    n1 = count(model)
    stats = fuse_with_report(model, debug=False)
    n2 = count(model)
    fused = collections.Counter(n.qualified_op for n in model.graph.all_nodes() if n.domain)
    get_pass("lower-fused-to-onnx")().run(model)
    n3 = count(model)
    lowered = collections.Counter(n.qualified_op for n in model.graph.all_nodes() if n.domain)
    return {"original": n0, "canonicalize": n1, "fuse": n2, "lowered": n3, "rules": dict(stats.applied),
            "fused_ops": dict(fused), "lowered_ops": dict(lowered)}


def one(name: str, backends: list[str], tmp: Path, timeout: float | None) -> dict[str, Any]:
    path, feed = model_and_inputs(name)
    row: dict[str, Any] = {"model": name}
    row.update(counts(path))
    ref = run_ort(str(path), feed)
    for be in backends:
        row[be] = run_backend(name, path, feed, ref, "canonicalize,fuse", be, tmp, timeout)
        row[f"{be}-unfused"] = run_backend(name, path, feed, ref, "canonicalize", be, tmp, timeout)
    return row


def verdict(row: dict[str, Any], be: str) -> tuple[str, bool]:
    """(cell text, counts as a fusion failure)."""
    r = row.get(be)
    if r is None:
        return "-", False
    base = row[f"{be}-unfused"]
    if r["status"] == "TIMEOUT":
        return "TIMEOUT", False
    if base["status"] == "ERROR":
        return ("fails unfused too" if r["status"] == "ERROR" else f"{r['status']} (unfused fails)"), False
    if r["status"] in ("ERROR", "TIMEOUT"):
        return r["status"], r["status"] == "ERROR"
    return f"{r['status']} {r['err']:.1e}", r["status"] != "ok"


def print_table(rows: list[dict[str, Any]], backends: list[str]) -> None:
    cols = ["model", "orig", "canon", "fuse", "lowered"]
    for be in backends:
        cols += [f"{be} fused", f"{be} unfused"]
    lines = []
    for row in rows:
        if "skipped" in row or "failed" in row:
            lines.append([row["model"], row.get("skipped") or row.get("failed")] + [""] * (len(cols) - 2))
            continue
        cells = [row["model"], str(row["original"]), str(row["canonicalize"]), str(row["fuse"]), str(row["lowered"])]
        for be in backends:
            b = row[f"{be}-unfused"]
            cells += [verdict(row, be)[0], b["status"] + (" %.1e" % b["err"] if b["err"] is not None else "")]
        lines.append(cells)
    widths = [max(len(c), *(len(x[i]) for x in lines)) if lines else len(c) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for cells in lines:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |")
    print()
    for row in rows:
        if "rules" not in row:
            continue
        print(f"{row['model']}: rules " + (", ".join(f"{k} x{v}" for k, v in sorted(row["rules"].items())) or "none"))
        if row["lowered_ops"]:
            print("    lowered ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(row["lowered_ops"].items())))
        for be in (*backends, *(f"{b}-unfused" for b in backends)):
            r = row.get(be)
            if r and r["msg"]:
                print(f"    {be}: {r['msg']}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--backends", default="onnx,tvm-cpu")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--artifacts", help="keep the artifacts here and reuse those already there (default: a temp dir)")
    ap.add_argument("--tvm-timeout", type=float, default=600.0,
                    help="seconds per tvm-cpu build before it is reported as TIMEOUT (default 600)")
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    names = args.names or [*REAL_MODELS, "digits"]
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as d:
        root = Path(args.artifacts) if args.artifacts else Path(d)
        root.mkdir(parents=True, exist_ok=True)
        for name in names:
            t0 = time.perf_counter()
            try:
                row = one(name, backends, root, args.tvm_timeout)
            except ModelNotFetchedError as e:
                rows.append({"model": name, "skipped": f"skipped: {e}"})
                continue
            except Exception as e:  # one broken model must not hide the others
                rows.append({"model": name, "failed": f"FAILED: {type(e).__name__}: {e}"})
                failed.append(name)
                continue
            rows.append(row)
            bad = [be for be in backends if verdict(row, be)[1]]
            if bad:
                failed.append(f"{name} ({', '.join(bad)})")
            print(f"{name}: done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    print_table(rows, backends)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"tolerances": TOL, "rows": rows}, indent=1, default=str))
    print("all fused outputs match" if not failed else f"mismatch or failure: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
