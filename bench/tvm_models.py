"""Coverage of the ``tvm-cpu`` backend on real models (and the digits CNN).

Each model goes through ``lepton.optimize(path, passes=corpus.tvm_passes(name), backend="tvm-cpu", ...)``
(``canonicalize``; silero-vad binds its sample rate first, see ``corpus.BOUND_INPUTS``)
with its input shapes pinned to those of ``realistic_inputs``; the artifact is run with
``lepton.load(out).run(inputs)`` and compared with ONNX Runtime on the original model
(rtol 1e-3, atol 1e-4). Prints a table (nodes, compile s, max abs err, ok) and failure reasons.

    python bench/tvm_models.py [NAME ...] [--json bench/results/tvm_models.json]

Each model is compiled in a child process (``--one NAME``) so that a crash or hang in TVM does
not take the whole run down, and a per-model time limit (``--timeout``) applies.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RTOL, ATOL = 1e-3, 1e-4
DIGITS = "digits-cnn"


def model_names() -> list[str]:
    from lepton_ir.testing.corpus import REAL_MODELS

    return [DIGITS, *REAL_MODELS]


def model_and_inputs(name: str) -> tuple[Path, dict[str, np.ndarray]]:
    """Path of the model and realistic inputs for it."""
    from lepton_ir.testing import corpus

    if name == DIGITS:
        path = corpus.digits_model_path()
        x, _ = corpus.digits_dataset("test")
        import onnx

        m = onnx.load(str(path), load_external_data=False)
        inp = [i for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}][0]
        batch = 8
        return path, {inp.name: np.ascontiguousarray(x[:batch]).astype(np.float32)}
    return corpus.real_model_path(name), corpus.realistic_inputs(name)


def ort_reference(path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    from lepton_ir.reference import run_ort

    return run_ort(path, inputs, optimize=True, threads=2)


def compare(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, bool, str]:
    """(max abs error, ok, reason)."""
    if len(ref) != len(got):
        return float("nan"), False, f"{len(got)} outputs, ONNX Runtime gives {len(ref)}"
    worst, ok, why = 0.0, True, ""
    for k, (a, b) in enumerate(zip(ref, got)):
        b = np.asarray(b)
        if a.shape != b.shape:
            return float("nan"), False, f"output {k}: shape {b.shape} != {a.shape}"
        if a.size == 0:
            continue
        if a.dtype.kind in "fiub":
            d = np.abs(a.astype(np.float64) - b.astype(np.float64))
            worst = max(worst, float(np.nanmax(d)) if d.size else 0.0)
            if not np.allclose(b.astype(np.float64), a.astype(np.float64), rtol=RTOL, atol=ATOL, equal_nan=True):
                ok, why = False, f"output {k} differs (max abs {float(np.nanmax(d)):.3g})"
    return worst, ok, why


def ort_sensitivity(path: Path, inputs: dict[str, np.ndarray]) -> float:
    """Max abs change of ONNX Runtime's own outputs when every float input moves by one ulp.

    Some models amplify rounding: ddddocr-old re-quantizes activations with DynamicQuantizeLinear
    after every conv, so a 1-ulp difference anywhere (TVM's sigmoid differs from ORT's by 1 ulp on
    44% of elements) can flip a quantization step that later layers multiply. When ORT disagrees
    with itself by more than the tolerance under a 1-ulp input change, no other implementation can
    be held to that tolerance; :func:`judge` then asks for the same argmax and an error within 3x
    this sensitivity, and says so in the row.
    """
    nudged = {k: np.nextafter(v, np.array(np.inf, v.dtype)) if v.dtype.kind == "f" else v for k, v in inputs.items()}
    ref, moved = ort_reference(path, inputs), ort_reference(path, nudged)
    return max((float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0)
               for a, b in zip(ref, moved))


def judge(path: Path, inputs: dict[str, np.ndarray], ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, bool, str]:
    """:func:`compare`, falling back to the sensitivity-bound check for ill-conditioned models."""
    err, ok, why = compare(ref, got)
    if ok or not np.isfinite(err) or not any(np.issubdtype(a.dtype, np.floating) for a in ref):
        return err, ok, why
    sens = ort_sensitivity(path, inputs)
    limit = max(ATOL + RTOL * float(np.abs(a).max()) for a in ref if a.size)
    if sens <= limit:
        return err, ok, why
    same_argmax = all(np.array_equal(np.asarray(b).argmax(-1), a.argmax(-1)) for a, b in zip(ref, got) if a.ndim)
    if same_argmax and err <= 3 * sens:
        return err, True, (f"ill-conditioned: ONNX Runtime moves by {sens:.3g} under a 1-ulp input change; "
                           f"error {err:.3g} <= 3x that, same argmax")
    return err, False, why + f" (ONNX Runtime's own 1-ulp sensitivity {sens:.3g})"


def run_one(name: str, out_root: Path) -> dict:
    """Compile, run and compare one model in this process; returns a result row."""
    import onnx

    import lepton

    path, inputs = model_and_inputs(name)
    m = onnx.load(str(path), load_external_data=False)
    row = {"model": name, "nodes": len(m.graph.node), "compile_s": None, "max_abs_err": None, "ok": False, "reason": ""}
    from lepton_ir.testing.corpus import tvm_feeds, tvm_passes

    feeds = tvm_feeds(name, inputs)  # bound inputs are compiled in
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    out = out_root / name
    t0 = time.perf_counter()
    try:
        lepton.optimize(str(path), passes=tvm_passes(name) if name != DIGITS else "canonicalize",
                        backend="tvm-cpu", output=str(out), input_shapes=shapes)
    except Exception as e:  # report, do not crash the sweep
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        row["reason"] = "compile: " + " ".join(str(e).split())[:300]
        return row
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    try:
        runner = lepton.load(str(out))
        got = runner.run(feeds)
    except Exception as e:
        row["reason"] = "run: " + " ".join(str(e).split())[:300]
        return row
    ref = ort_reference(path, inputs)
    err, ok, why = judge(path, inputs, ref, list(got.values()))
    row.update(max_abs_err=err, ok=ok, reason=why)
    return row


def _child(name: str, timeout: float, out_root: Path) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--out", str(out_root)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "nodes": None, "compile_s": round(time.perf_counter() - t0, 1), "max_abs_err": None,
                "ok": False, "reason": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"model": name, "nodes": None, "compile_s": None, "max_abs_err": None, "ok": False,
            "reason": f"child exited {p.returncode}: {tail[:300]}"}


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<20} {'nodes':>6} {'compile s':>10} {'max abs err':>12} {'ok':>4}")
    for r in rows:
        err = "-" if r["max_abs_err"] is None else f"{r['max_abs_err']:.3g}"
        cs = "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        print(f"{r['model']:<20} {r['nodes'] if r['nodes'] is not None else '-':>6} {cs:>10} {err:>12} "
              f"{'yes' if r['ok'] else 'NO':>4}")
    for r in rows:
        if r["reason"]:
            print(f"  {r['model']}: {r['reason']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="models (default: all real models and digits-cnn)")
    ap.add_argument("--one", metavar="NAME", help=argparse.SUPPRESS)
    ap.add_argument("--out", metavar="DIR", help="artifact folder root (default: a temporary folder)")
    ap.add_argument("--timeout", type=float, default=900, help="per-model limit in seconds (default 900)")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", "2")
    if args.one:
        row = run_one(args.one, Path(args.out or tempfile.mkdtemp(prefix="lepton-tvm-models-")))
        print(json.dumps(row), flush=True)
        return 0
    names = args.names or model_names()
    with tempfile.TemporaryDirectory(prefix="lepton-tvm-models-") as tmp:
        out_root = Path(args.out) if args.out else Path(tmp)
        rows = []
        for n in names:
            r = _child(n, args.timeout, out_root)
            print(f"[tvm_models] {n}: {'ok' if r['ok'] else 'FAIL'} ({r['compile_s']} s) {r['reason']}", flush=True)
            rows.append(r)
    print_table(rows)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
