"""Latency follows MACs: measured ONNX Runtime and tvm-cpu latency of pruned real models.

    python bench/prune_latency.py [models...] [--macs 0.7] [--no-tvm] [--repeat 40]

For every real convnet / transformer we have (digits CNN, magika, MiniLM-L3, PP-OCR cls/rec/det) at the
realistic input shapes (corpus.realistic_inputs, batch 1):

* `prune{macs=M,target=native}` (kept channel counts rounded to the SIMD block of the detected CPU: 16
  on AVX-512, 8 on AVX2), and for contrast `multiple=1` (no rounding; ORT only);
* `prune{latency=M}` (the measured target; ORT only);
* latency cut / MAC cut = (1 - t_pruned / t_float) / (1 - MACs kept), goal >= 0.8;
* ORT per-layer times (ORT's profiler, node events matched by name, medians over the runs): a layer
  counts as slower when its median grew by more than 10% and 5 us.

Timing: the float and pruned variants alternate in blocks (bench/timing.py), medians; ORT with one
intra-op thread and its default graph optimizations (NCHWc on x86), tvm-cpu untuned with its default
target. Writes bench/results/prune_latency.json and prints the load average before/after each model.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import lepton_ir
import lepton_ir.testing.corpus as corpus
from lepton_passes import PassManager
from lepton_passes.prune import read_record
from lepton_passes.prune.prune import SIMD_LANES, detect_simd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import medians, timed_blocks  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "prune_latency.json"
MODELS = ["digits", "magika", "minilm-l3", "ppocr-cls", "ppocr-rec", "ppocr-det"]


def load_pinned(name: str) -> tuple[lepton_ir.Model, dict[str, np.ndarray]]:
    if name == "digits":
        m = lepton_ir.load(str(corpus.digits_model_path()))
        x, _ = corpus.digits_dataset("test")
        return m, {m.graph.inputs[0].name: x[:1]}
    m = lepton_ir.load(str(corpus.real_model_path(name)))
    feeds = corpus.realistic_inputs(name)
    lepton_ir.pin_input_shapes(m, {k: list(v.shape) for k, v in feeds.items()})
    return m, feeds


def ort_sess(proto, profile: str | None = None):
    import onnxruntime as ort

    from lepton_ir.reference import ort_session, session_options

    so = session_options(optimize=True, threads=1)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort_session(proto, options=so)


def per_layer(path: str) -> dict[str, float]:
    """Median kernel time (us) per node name from an ORT profile file."""
    ev = json.load(open(path))
    per: dict[str, list[float]] = collections.defaultdict(list)
    for e in ev:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per[e["name"][: -len("_kernel_time")] + " (" + e.get("args", {}).get("op_name", "?") + ")"].append(e["dur"])
    return {k: float(statistics.median(v[2:] or v)) for k, v in per.items()}


def layer_compare(base_proto, pruned_proto, feeds, runs: int, tmp: str) -> dict:
    from lepton_ir.reference import feed_for

    a = ort_sess(base_proto, os.path.join(tmp, "base"))
    b = ort_sess(pruned_proto, os.path.join(tmp, "pruned"))
    fa, fb = feed_for(a, feeds), feed_for(b, feeds)
    for _ in range(runs):  # interleaved, as the totals
        a.run(None, fa)
        b.run(None, fb)
    la, lb = per_layer(a.end_profiling()), per_layer(b.end_profiling())
    common = sorted(set(la) & set(lb))
    slower = [(k, la[k], lb[k]) for k in common if lb[k] > 1.10 * la[k] and lb[k] - la[k] > 5.0]
    slower.sort(key=lambda t: t[2] - t[1], reverse=True)
    return {"layers_matched": len(common), "layers_base": len(la), "layers_pruned": len(lb),
            "slower": [{"node": k, "base_us": x, "pruned_us": y} for k, x, y in slower[:10]],
            "n_slower": len(slower),
            "sum_base_us": sum(la.values()), "sum_pruned_us": sum(lb.values())}


def tvm_pair(base_path: str, pruned_path: str, feeds, tmp: str, repeat: int, name: str) -> dict:
    import lepton

    shapes = {k: list(v.shape) for k, v in feeds.items()}
    mods = {}
    for label, p in (("float", base_path), ("pruned", pruned_path)):
        t0 = time.perf_counter()
        out = os.path.join(tmp, f"tvm-{label}")
        lepton.optimize(p, passes=corpus.tvm_passes(name), backend="tvm-cpu", output=out, input_shapes=shapes)
        mods[label] = lepton.load(out)
        print(f"    tvm-cpu {label} compiled in {time.perf_counter() - t0:.1f}s", flush=True)
    f = corpus.tvm_feeds(name, feeds)
    med = medians(timed_blocks({k: (lambda m=m: m.run(f)) for k, m in mods.items()}, repeat))
    return {"float_ms": med["float"], "pruned_ms": med["pruned"]}


def bench_model(name: str, macs: float, repeat: int, tvm: bool) -> dict:
    print(f"[{name}] load {os.getloadavg()}", flush=True)
    m, feeds = load_pinned(name)
    base_proto = lepton_ir.to_onnx(m)
    row: dict = {"model": name, "load_before": os.getloadavg()}
    variants = {"rounded": f"prune{{macs={macs},target=native}}", "unrounded": f"prune{{macs={macs},multiple=1}}",
                "latency": f"prune{{latency={macs}}}"}
    protos = {}
    for label, pipe in variants.items():
        p = lepton_ir.load(base_proto)
        t0 = time.perf_counter()
        PassManager(pipe).run(p)
        rec = read_record(p) or {"macs_before": 1, "macs_after": 1}
        protos[label] = lepton_ir.to_onnx(p)
        row[label] = {"pipeline": pipe, "macs_kept": rec["macs_after"] / rec["macs_before"],
                      "prune_s": time.perf_counter() - t0, "latency_table": rec.get("latency_table")}
    from lepton_ir.reference import feed_for

    sess = {"float": ort_sess(base_proto), **{k: ort_sess(v) for k, v in protos.items()}}
    fns = {k: (lambda s=s: s.run(None, feed_for(s, feeds))) for k, s in sess.items()}
    med = medians(timed_blocks(fns, repeat))
    row["ort_float_ms"] = med["float"]
    for label in protos:
        r = row[label]
        r["ort_ms"] = med[label]
        r["ort_latency_kept"] = med[label] / med["float"]
        mc = 1 - r["macs_kept"]
        r["ort_cut_per_mac_cut"] = (1 - r["ort_latency_kept"]) / mc if mc > 1e-9 else None
        print(f"  {label:<9} MACs kept {100 * r['macs_kept']:5.1f}%  ORT {med['float']:.3f} -> {med[label]:.3f} ms "
              f"(kept {100 * r['ort_latency_kept']:.1f}%)  cut/MAC cut {r['ort_cut_per_mac_cut']}", flush=True)
    # the per-layer and tvm-cpu checks use the rounded model, or the unrounded one where the
    # rounding leaves nothing to cut (the digits CNN's 8- and 16-channel layers on AVX-512)
    main = "rounded" if row["rounded"]["macs_kept"] < 1 - 1e-9 else "unrounded"
    row["checked"] = main
    with tempfile.TemporaryDirectory() as tmp:
        row[main]["ort_layers"] = layer_compare(base_proto, protos[main], feeds, max(20, repeat // 2), tmp)
        lc = row[main]["ort_layers"]
        print(f"  per-layer ({main}): {lc['layers_matched']} matched, {lc['n_slower']} slower "
              f"{[s['node'] for s in lc['slower'][:3]]}", flush=True)
        if tvm:
            bp, pp = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "pruned.onnx")
            open(bp, "wb").write(base_proto.SerializeToString())
            open(pp, "wb").write(protos[main].SerializeToString())
            try:
                t = tvm_pair(bp, pp, feeds, tmp, repeat, name)
                r = row[main]
                r["tvm_float_ms"], r["tvm_ms"] = t["float_ms"], t["pruned_ms"]
                r["tvm_latency_kept"] = t["pruned_ms"] / t["float_ms"]
                mc = 1 - r["macs_kept"]
                r["tvm_cut_per_mac_cut"] = (1 - r["tvm_latency_kept"]) / mc if mc > 1e-9 else None
                print(f"  tvm-cpu   {t['float_ms']:.3f} -> {t['pruned_ms']:.3f} ms  cut/MAC cut "
                      f"{r['tvm_cut_per_mac_cut']}", flush=True)
            except Exception as e:  # noqa: BLE001 - record and go on with the next model
                row[main]["tvm_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                print(f"  tvm-cpu failed: {row[main]['tvm_error']}", flush=True)
    row["load_after"] = os.getloadavg()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=MODELS)
    ap.add_argument("--macs", type=float, default=0.7)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--no-tvm", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("LEPTON_NO_PROGRESS", "1")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    res = {"cpu": cpu, "simd": detect_simd(), "lanes": SIMD_LANES[detect_simd()], "macs": args.macs, "rows": []}
    old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    by = {r["model"]: r for r in old.get("rows", [])}
    for name in args.models:
        by[name] = bench_model(name, args.macs, args.repeat, not args.no_tvm)
        res["rows"] = [by[k] for k in MODELS if k in by]
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(res, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
