"""Latency of fusion: `canonicalize` vs `canonicalize,fuse` on both backends, and our fused ONNX
against ONNX Runtime's own offline optimization of the same model.

Protocol (all in one process, same inputs, 2 threads):

* artifacts: `lepton.optimize(path, passes=P, backend=B, output=tmp, input_shapes=<shapes of
  realistic_inputs>)` for P in {`canonicalize`, `canonicalize,fuse`} and B in {`onnx`, `tvm-cpu`}.
* ONNX Runtime sessions: CPUExecutionProvider, `intra_op_num_threads=2`, `inter_op_num_threads=1`,
  sequential execution; each `onnx` artifact's model.onnx is run twice:
  - `*-noopt`: `graph_optimization_level=ORT_DISABLE_ALL` (exactly the graph we emit), and
  - `*-ortall`: `ORT_ENABLE_ALL` (ORT's default, what a user of `lepton.load` gets).
* ORT's own optimization: the *original* model is opened once with `ORT_ENABLE_ALL` and
  `optimized_model_filepath=<tmp>/ort_all.onnx` (ORT writes the model after its graph
  optimizations; nothing is run); that file is then opened with `ORT_DISABLE_ALL` (`ort-offline`).
  `ort-online` is the original opened with `ORT_ENABLE_ALL` (what plain ORT users run).
  `ort-offline-pinned`: the same offline protocol on the original with its graph inputs' dims set
  to the benchmark shapes (our artifacts are built with those `input_shapes`, which lets ORT use
  shape-dependent rewrites too; this separates that effect from fusion).
* TVM: `TVM_NUM_THREADS=2` (set before TVM is imported), the artifact's compiled `main` called on
  inputs already copied to the device.
* timing: `--rounds` rounds (default 7); in each round every configuration runs `--warmup` untimed
  then `--iters` timed calls (the configurations interleave, so load from other jobs on the
  machine hits all of them alike; 50 ms of sleep before each configuration lets ORT's and TVM's
  spinning worker threads of the previous one go idle). A configuration's latency is the median over all its timed
  calls; ratios compare medians measured in this same run.

    python bench/fusion_latency.py [--rounds 7] [--iters 10] [--backends onnx,tvm-cpu]
                                   [--artifacts DIR] [--tvm-timeout SECS] [NAME ...]

Writes bench/results/fusion_latency.json and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_counts import artifact_dir, build, model_and_inputs  # noqa: E402

import lepton  # noqa: E402,F401
from lepton_ir.reference import ort_session, session_options  # noqa: E402

THREADS = 2
DEFAULT_MODELS = ["ppocr-det", "ppocr-rec", "ppocr-cls", "minilm-l3", "silero-vad-ifless", "digits"]


def session(model: str, level: ort.GraphOptimizationLevel, optimized_path: str | None = None) -> ort.InferenceSession:
    so = session_options(threads=THREADS)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = level  # the bench compares ORT's own levels
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return ort_session(model, options=so)


def ort_call(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
    names = {i.name for i in sess.get_inputs()}
    f = {k: v for k, v in feed.items() if k in names}
    return lambda: sess.run(None, f)


def tvm_call(runner: Any, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
    import tvm

    inner = getattr(runner, "runner", runner)
    try:
        args = [tvm.runtime.tensor(a, tvm.cpu()) for a in inner.check_inputs(feed)]
        main = inner._main
        return lambda: main(*args)
    except AttributeError:  # no access to the compiled function: time run() (includes input copies)
        return lambda: runner.run(feed)


def pinned_copy(path: Path, feed: dict[str, np.ndarray], dst: Path) -> Path:
    """The original model with its graph inputs' dims fixed to the feed's shapes (what
    `input_shapes=` does in lepton.optimize), saved to `dst`; nothing else changes."""
    import onnx

    m = onnx.load(str(path))
    for i in m.graph.input:
        if i.name in feed and i.type.HasField("tensor_type"):
            shape = np.shape(feed[i.name])
            i.type.tensor_type.ClearField("shape")
            for d in shape:
                i.type.tensor_type.shape.dim.add().dim_value = int(d)
    onnx.save(m, str(dst))
    return dst


def configs(name: str, tmp: Path, backends: list[str], art: Path,
            tvm_timeout: float | None) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    path, feed = model_and_inputs(name)
    calls: dict[str, Callable[[], Any]] = {}
    notes: dict[str, str] = {}
    ALL, NONE = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    calls["ort-online"] = ort_call(session(str(path), ALL), feed)
    offline = tmp / f"{name}-ort_all.onnx"
    session(str(path), ALL, str(offline))
    calls["ort-offline"] = ort_call(session(str(offline), NONE), feed)
    pinned = pinned_copy(path, feed, tmp / f"{name}-pinned.onnx")
    offline_pinned = tmp / f"{name}-pinned-ort_all.onnx"
    session(str(pinned), ALL, str(offline_pinned))
    calls["ort-offline-pinned"] = ort_call(session(str(offline_pinned), NONE), feed)
    for be in backends:
        for passes, tag in (("canonicalize", "canon"), ("canonicalize,fuse", "fused")):
            out = artifact_dir(art, name, be, passes)
            try:
                runner = build(path, feed, passes, be, out, tvm_timeout if be == "tvm-cpu" else None)
            except Exception as e:
                notes[f"{be}-{tag}"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''}"
                continue
            if be == "onnx":
                model = str(out / runner.manifest.get("entry", "model.onnx"))
                calls[f"onnx-{tag}-noopt"] = ort_call(session(model, NONE), feed)
                calls[f"onnx-{tag}-ortall"] = ort_call(session(model, ALL), feed)
            else:
                try:
                    runner.run(feed)
                except Exception as e:
                    notes[f"{be}-{tag}"] = f"run: {type(e).__name__}: {str(e).strip().splitlines()[0][:120]}"
                    continue
                calls[f"{be}-{tag}"] = tvm_call(runner, feed)
    return calls, notes


def measure(calls: dict[str, Callable[[], Any]], rounds: int, iters: int, warmup: int) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, f in calls.items():
            time.sleep(0.05)  # let the previous configuration's spinning worker threads go idle
            for _ in range(warmup):
                f()
            for _ in range(iters):
                t0 = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median_ms": float(np.median(v)), "p10_ms": float(np.percentile(v, 10)),
                "p90_ms": float(np.percentile(v, 90)), "n": len(v)} for k, v in times.items()}


RATIOS = [
    # (label, numerator, denominator): < 1 means the numerator is faster
    ("onnx fused/canon (noopt)", "onnx-fused-noopt", "onnx-canon-noopt"),
    ("onnx fused/canon (ortall)", "onnx-fused-ortall", "onnx-canon-ortall"),
    ("ours fused noopt / ORT offline", "onnx-fused-noopt", "ort-offline"),
    ("ours fused ortall / ORT offline", "onnx-fused-ortall", "ort-offline"),
    ("ours fused ortall / ORT online", "onnx-fused-ortall", "ort-online"),
    ("ours fused noopt / ORT offline pinned", "onnx-fused-noopt", "ort-offline-pinned"),
    ("ours fused ortall / ORT offline pinned", "onnx-fused-ortall", "ort-offline-pinned"),
    ("tvm fused/canon", "tvm-cpu-fused", "tvm-cpu-canon"),
]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--backends", default="onnx,tvm-cpu")
    ap.add_argument("--out", default="bench/results/fusion_latency.json")
    ap.add_argument("--artifacts", help="keep/reuse artifacts here (e.g. those of bench/fusion_counts.py --artifacts)")
    ap.add_argument("--tvm-timeout", type=float, default=600.0, help="seconds per tvm-cpu build (then n/a)")
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        for name in args.names or DEFAULT_MODELS:
            t0 = time.perf_counter()
            try:
                art = Path(args.artifacts) if args.artifacts else Path(d)
                art.mkdir(parents=True, exist_ok=True)
                calls, notes = configs(name, Path(d), backends, art, args.tvm_timeout)
                lat = measure(calls, args.rounds, args.iters, args.warmup)
            except Exception as e:
                results[name] = {"error": f"{type(e).__name__}: {e}"}
                print(f"{name}: FAILED {type(e).__name__}: {e}", file=sys.stderr)
                continue
            ratios = {label: lat[a]["median_ms"] / lat[b]["median_ms"] for label, a, b in RATIOS if a in lat and b in lat}
            results[name] = {"latency": lat, "ratios": ratios, "notes": notes}
            print(f"{name}: done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    cols = ["ort-online", "ort-offline", "ort-offline-pinned", "onnx-canon-noopt", "onnx-fused-noopt", "onnx-canon-ortall",
            "onnx-fused-ortall", "tvm-cpu-canon", "tvm-cpu-fused"]
    print("median ms (2 threads)")
    print("| model | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | {r['error']} |")
            continue
        cells = [f"{r['latency'][c]['median_ms']:.3f}" if c in r["latency"] else "n/a" for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nratios of medians (< 1: first is faster)")
    labels = [label for label, _, _ in RATIOS]
    print("| model | " + " | ".join(labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for name, r in results.items():
        if "error" in r:
            continue
        print(f"| {name} | " + " | ".join(f"{r['ratios'][lb]:.3f}" if lb in r["ratios"] else "n/a" for lb in labels) + " |")
    for name, r in results.items():
        for k, v in r.get("notes", {}).items():
            print(f"    {name} {k}: {v}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"threads": THREADS, "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"), "rounds": args.rounds,
            "iters": args.iters, "warmup": args.warmup, "onnxruntime": ort.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "protocol": __doc__}
    out.write_text(json.dumps({"meta": meta, "models": results}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
