"""Every real model through the TVM backends with ONNX Runtime fallback, as shipped (issue #15).

Coverage (default): each model (the digits CNN and every real model of the corpus) is compiled with
``lepton.optimize(path, backend=B, output=...)``: no ``--input-shape``, no ``bind-inputs``, the
backend's default pipeline. What TVM cannot compile runs on ONNX Runtime (a multi-stage artifact).
The artifact is run (``--backend tvm-arm``: on the emulated Cortex-A72 over RPC, ONNX Runtime
stages in ONNX Runtime on the device) on realistic inputs and compared with ONNX Runtime on the
original model on this host (rtol 1e-3, atol 1e-4; ill-conditioned models by tvm_models.judge).

Speed (``--speed``, host only): ONNX Runtime alone, TVM alone (``fallback=false``) and the
partitioned artifact with ``placement=fastest`` (each region timed on both and placed on the
faster), all with the input shapes of the realistic inputs pinned, timed in one process in
alternating blocks (bench/timing.py); ratio = partitioned / min(ORT, TVM), goal <= 1.05.

    python bench/partition_models.py [--backend tvm-cpu|tvm-arm] [--speed] [NAME ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import medians, timed_blocks  # noqa: E402
from tvm_models import DIGITS, judge, model_and_inputs, model_names, ort_reference  # noqa: E402

EMULATOR_PORT = 9097


def _stages(out: Path) -> list[dict]:
    return json.loads((out / "manifest.json").read_text())["stages"]


def _feeds_for(runner_inputs: list[str], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in inputs.items() if k in runner_inputs}


def run_one(name: str, backend: str, out_root: Path, rpc: str | None) -> dict:
    import lepton

    path, inputs = model_and_inputs(name)
    if name == DIGITS:
        inputs = {k: v[:1] for k, v in inputs.items()}
    target = "cortex-a72" if backend == "tvm-arm" else None
    out = out_root / f"{name}-{backend}"
    row: dict = {"model": name, "backend": backend, "compile_s": None, "stages": None, "max_abs_err": None,
                 "ok": False, "reason": "", "fallbacks": []}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            lepton.optimize(str(path), backend=backend, target=target, output=str(out))
        except Exception as e:  # report, do not crash the sweep
            row["compile_s"] = round(time.perf_counter() - t0, 1)
            row["reason"] = "compile: " + " ".join(str(e).split())[:300]
            return row
    row["compile_s"] = round(time.perf_counter() - t0, 1)
    row["fallbacks"] = [" ".join(str(w.message).split())[:200] for w in caught
                        if "run on ONNX Runtime" in str(w.message) or "compiled for batch 1" in str(w.message)]
    stages = _stages(out)
    row["stages"] = [f"{s['backend']}:{s.get('nodes', '-')}" for s in stages]
    row["tvm_nodes"] = sum(int(s.get("nodes") or 0) for s in stages if s["backend"].startswith("tvm"))
    row["ort_nodes"] = sum(int(s.get("nodes") or 0) for s in stages if s["backend"] == "onnx")
    try:
        if rpc:
            from lepton.remote import RemoteRunner

            with RemoteRunner(out, rpc=rpc) as r:
                got = r.run(_feeds_for(r.input_names, inputs))
        else:
            r = lepton.load(out)
            got = r.run(_feeds_for(r.input_names, inputs))
    except Exception as e:
        row["reason"] = "run: " + " ".join(str(e).split())[:300]
        return row
    ref = ort_reference(path, inputs)
    err, ok, why = judge(path, inputs, ref, list(got.values()))
    row.update(max_abs_err=err, ok=ok, reason=why)
    return row


def speed_one(name: str, out_root: Path, repeat: int) -> dict:
    import lepton
    from lepton_ir.reference import ort_session

    path, inputs = model_and_inputs(name)
    if name == DIGITS:
        inputs = {k: v[:1] for k, v in inputs.items()}
    shapes = {k: list(v.shape) for k, v in inputs.items()}
    row: dict = {"model": name, "ort_ms": None, "tvm_ms": None, "partitioned_ms": None, "ratio": None, "stages": None}
    sess = ort_session(str(path), optimize=True, threads=2)
    ort_feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
    fns = {"ort": lambda: sess.run(None, ort_feed)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            lepton.optimize(str(path), backend="tvm-cpu", output=str(out_root / f"{name}-tvm"), input_shapes=shapes,
                            fallback=False)
            tvm = lepton.load(out_root / f"{name}-tvm")
            tvm_feed = _feeds_for(tvm.input_names, inputs)
            fns["tvm"] = lambda: tvm.run(tvm_feed)
        except Exception as e:  # TVM alone cannot compile it: the comparison is with ORT alone
            row["tvm_error"] = " ".join(str(e).split())[:200]
        lepton.optimize(str(path), backend="tvm-cpu", output=str(out_root / f"{name}-fast"), input_shapes=shapes,
                        placement="fastest")
    part = lepton.load(out_root / f"{name}-fast")
    part_feed = _feeds_for(part.input_names, inputs)
    fns["partitioned"] = lambda: part.run(part_feed)
    row["stages"] = [f"{s['backend']}:{s.get('nodes', '-')}" for s in _stages(out_root / f"{name}-fast")]
    med = medians(timed_blocks(fns, repeat))
    row.update(ort_ms=round(med["ort"], 3), tvm_ms=round(med["tvm"], 3) if "tvm" in med else None,
               partitioned_ms=round(med["partitioned"], 3))
    best = min(v for k, v in med.items() if k != "partitioned")
    row["ratio"] = round(med["partitioned"] / best, 3)
    return row


def _child(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, __file__, *args]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": f"timed out after {timeout:.0f} s", "compile_s": round(time.perf_counter() - t0)}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"ok": False, "reason": f"child exited {p.returncode}: {tail[:300]}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="models (default: all real models and digits-cnn)")
    ap.add_argument("--backend", default="tvm-cpu", choices=["tvm-cpu", "tvm-arm"])
    ap.add_argument("--speed", action="store_true", help="hybrid speed instead of coverage (host)")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--rpc", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", "2")
    if args.one:
        out = Path(args.out or tempfile.mkdtemp(prefix="lepton-partition-"))
        row = speed_one(args.one, out, args.repeat) if args.speed else run_one(args.one, args.backend, out, args.rpc)
        print(json.dumps(row), flush=True)
        return 0
    names = args.names or model_names()
    rpc = None
    lease = None
    if args.backend == "tvm-arm" and not args.speed:
        from lepton import device

        lease = device.EmulatorLease(port=EMULATOR_PORT)
        host, port = lease.__enter__()
        rpc = f"{host}:{port}"
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="lepton-partition-") as tmp:
            for n in names:
                extra = ["--speed", "--repeat", str(args.repeat)] if args.speed else ["--backend", args.backend]
                if rpc:
                    extra += ["--rpc", rpc]
                r = _child(["--one", n, "--out", tmp, *extra], args.timeout)
                r.setdefault("model", n)
                rows.append(r)
                print(f"[partition_models] {json.dumps(r)}", flush=True)
    finally:
        if lease is not None:
            lease.__exit__(None, None, None)
    if args.speed:
        print(f"{'model':<18} {'ORT ms':>8} {'TVM ms':>8} {'part. ms':>9} {'ratio':>6}  stages")
        for r in rows:
            print(f"{r['model']:<18} {r.get('ort_ms') or '-':>8} {r.get('tvm_ms') or '-':>8} "
                  f"{r.get('partitioned_ms') or '-':>9} {r.get('ratio') or '-':>6}  {' '.join(r.get('stages') or [])}")
        ok = all(r.get("ratio") is not None and r["ratio"] <= 1.05 for r in rows)
    else:
        print(f"{'model':<18} {'backend':<8} {'compile s':>9} {'TVM nodes':>9} {'ORT nodes':>9} {'max abs err':>11}  ok")
        for r in rows:
            err = "-" if r.get("max_abs_err") is None else f"{r['max_abs_err']:.3g}"
            print(f"{r['model']:<18} {r.get('backend', '-'):<8} {r.get('compile_s') or '-':>9} {r.get('tvm_nodes', '-'):>9} "
                  f"{r.get('ort_nodes', '-'):>9} {err:>11}  {'yes' if r.get('ok') else 'NO'}")
        for r in rows:
            for f in r.get("fallbacks") or []:
                print(f"  {r['model']}: {f}")
            if r.get("reason"):
                print(f"  {r['model']}: {r['reason']}")
        ok = all(r.get("ok") for r in rows)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
