"""Speed and memory of lepton_ir's ONNX import + export, against onnx's own load + save.

Two models:

* ``minilm-l3`` - the largest real model (69 MB, mostly weights);
* ``chain50k``  - a generated graph of 50,000 nodes (12,500 blocks of MatMul 16x16 -> Add -> Mul
  -> Relu, each with its own small weights), which stresses per-node and per-value overhead.

Each measurement runs in a fresh Python subprocess (so one run's heap, caches and mapped pages do
not inflate the next) that imports everything first, then does exactly one ``load + save``:

* lepton: ``lepton_ir.load(path)`` + ``lepton_ir.save(model, out)`` (default options, so ONNX shape
  inference on import is included);
* onnx:   ``onnx.load(path)`` + ``onnx.save(model, out)``.

Time is wall clock of that pair (``time.perf_counter``). Memory is the peak RSS increase: the
kernel's RSS high-water mark is reset just before the pair (``echo 5 > /proc/self/clear_refs``),
and ``VmHWM`` after it minus ``VmRSS`` before it (both from /proc/self/status) is what the
operation added at its peak. Memory-mapped weight pages
that are touched count in RSS, so mapped weights are not free in this measure. The two tools
alternate, ``--runs`` times each (default 5); the table shows medians, and the ratios are
lepton / onnx (time) and lepton peak / weight bytes (memory), the goals being <= 2x and <= 1.3x.

Run from the repository root::

    python bench/bench_io.py            # writes bench/results/io.json
    python bench/bench_io.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Run from a checkout; a worker timing another lepton_ir (--baseline) puts that one first.
sys.path.insert(0, os.environ.get("BENCH_IO_CODE") or str(ROOT))

TIME_GOAL = 2.0
MEM_GOAL = 1.3


# ------------------------------------------------------------------------------------------------
# The generated model
# ------------------------------------------------------------------------------------------------
def make_chain(path: str, blocks: int = 12500, width: int = 16, seed: int = 0) -> None:
    """Write a ladder of `blocks` x (MatMul, Add, Mul, Relu) = 4*blocks nodes, each op with its own
    weight (width x width for MatMul, width for Add/Mul), float32, opset 17."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    cur = "x"
    for i in range(blocks):
        w = numpy_helper.from_array((rng.standard_normal((width, width)) * 0.25).astype(np.float32), f"w{i}")
        b = numpy_helper.from_array(rng.standard_normal(width).astype(np.float32) * 0.1, f"b{i}")
        s = numpy_helper.from_array((1.0 + rng.standard_normal(width) * 0.01).astype(np.float32), f"s{i}")
        inits += [w, b, s]
        nodes += [
            helper.make_node("MatMul", [cur, f"w{i}"], [f"m{i}"], name=f"matmul{i}"),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
            helper.make_node("Mul", [f"a{i}", f"s{i}"], [f"p{i}"], name=f"mul{i}"),
            helper.make_node("Relu", [f"p{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        cur = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_io")
    onnx.save(model, path)


def weight_bytes(path: str) -> int:
    """Bytes of initializer data in the model (what 'weight bytes' means in the memory ratio)."""
    import onnx

    m = onnx.load(path)
    total = 0
    for t in m.graph.initializer:
        if t.raw_data:
            total += len(t.raw_data)
        else:
            arr = onnx.numpy_helper.to_array(t)
            total += arr.nbytes
    return total


# ------------------------------------------------------------------------------------------------
# One measurement (runs in a fresh subprocess)
# ------------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0).

    Without this the peak would include whatever importing onnx/onnxruntime once touched and
    freed, which can exceed the operation's own peak and hide it.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(tool: str, src: str, dst: str) -> dict[str, float]:
    import gc

    import onnx

    import lepton_ir

    gc.collect()
    exact = _reset_peak()
    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    if tool == "lepton":
        m = lepton_ir.load(src)
        lepton_ir.save(m, dst)
    else:
        m = onnx.load(src)
        onnx.save(m, dst)
    dt = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    return {"seconds": dt, "peak_rss_increase": (peak - base) * 1024, "hwm_reset": exact}


def measure(tool: str, src: str, dst: str, code: str | None = None) -> dict[str, float]:
    """One fresh-subprocess measurement; `code`: a folder holding another `lepton_ir` to time
    instead of this checkout's (for before/after numbers)."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
        env["BENCH_IO_CODE"] = code
    out = subprocess.run([sys.executable, __file__, "--worker", tool, src, dst], capture_output=True, text=True,
                         check=False, cwd=ROOT if code is None else code, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{tool} worker failed on {src}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
def bench(name: str, src: str, runs: int, tmp: str, baseline: str | None = None) -> dict[str, object]:
    wb = weight_bytes(src)
    samples: dict[str, list[dict[str, float]]] = {"lepton": [], "onnx": []}
    if baseline:
        samples["baseline"] = []
    for _ in range(runs):
        for tool in samples:  # alternate so drift (load, thermal, page cache) hits all alike
            samples[tool].append(measure("lepton" if tool == "baseline" else tool, src,
                                         os.path.join(tmp, f"out_{tool}.onnx"),
                                         baseline if tool == "baseline" else None))
    row: dict[str, object] = {"model": name, "file_bytes": os.path.getsize(src), "weight_bytes": wb, "runs": runs}
    for tool, ss in samples.items():
        row[f"{tool}_seconds"] = statistics.median(s["seconds"] for s in ss)
        row[f"{tool}_peak_bytes"] = statistics.median(s["peak_rss_increase"] for s in ss)
        row[f"{tool}_seconds_all"] = [round(s["seconds"], 4) for s in ss]
    row["time_ratio"] = row["lepton_seconds"] / row["onnx_seconds"]  # type: ignore[operator]
    if baseline:
        row["baseline_time_ratio"] = row["baseline_seconds"] / row["onnx_seconds"]  # type: ignore[operator]
        row["baseline_mem_ratio"] = row["baseline_peak_bytes"] / wb  # type: ignore[operator]
    row["lepton_mem_ratio"] = row["lepton_peak_bytes"] / wb  # type: ignore[operator]
    row["onnx_mem_ratio"] = row["onnx_peak_bytes"] / wb  # type: ignore[operator]
    row["time_goal_met"] = row["time_ratio"] <= TIME_GOAL  # type: ignore[operator]
    row["mem_goal_met"] = row["lepton_mem_ratio"] <= MEM_GOAL  # type: ignore[operator]
    return row


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        print(json.dumps(worker(*argv[1:4])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "io.json"))
    ap.add_argument("--only", choices=["minilm-l3", "chain50k"], action="append")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also time the lepton_ir package found in DIR (e.g. `git archive HEAD lepton_ir | "
                         "tar -x -C DIR`) for before/after numbers")
    args = ap.parse_args(argv)
    import lepton_ir.testing.corpus as corpus

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_io_") as tmp:
        models: list[tuple[str, str]] = []
        if not args.only or "minilm-l3" in args.only:
            models.append(("minilm-l3", str(corpus.real_model_path("minilm-l3"))))
        if not args.only or "chain50k" in args.only:
            chain = os.path.join(tmp, "chain50k.onnx")
            make_chain(chain)
            models.append(("chain50k", chain))
        for name, src in models:
            rows.append(bench(name, src, args.runs, tmp, args.baseline))
    MiB = 2**20
    print(f"{'model':<10} {'weights':>9} {'onnx s':>8} {'lepton s':>8} {'time x':>7} "
          f"{'onnx peak':>10} {'lepton peak':>11} {'onnx/w':>7} {'lepton/w':>8}  goals(<=2x, <=1.3x)")
    for r in rows:
        print(f"{r['model']:<10} {r['weight_bytes'] / MiB:>7.1f}MB {r['onnx_seconds']:>8.3f} {r['lepton_seconds']:>8.3f} "
              f"{r['time_ratio']:>6.2f}x {r['onnx_peak_bytes'] / MiB:>8.1f}MB {r['lepton_peak_bytes'] / MiB:>9.1f}MB "
              f"{r['onnx_mem_ratio']:>6.2f}x {r['lepton_mem_ratio']:>7.2f}x  "
              f"time {'ok' if r['time_goal_met'] else 'MISSED'}, memory {'ok' if r['mem_goal_met'] else 'MISSED'}")
    if args.baseline:
        print(f"baseline ({args.baseline}):")
        for r in rows:
            print(f"{r['model']:<10} {'':>9} {r['onnx_seconds']:>8.3f} {r['baseline_seconds']:>8.3f} "
                  f"{r['baseline_time_ratio']:>6.2f}x {'':>10} {r['baseline_peak_bytes'] / MiB:>9.1f}MB "
                  f"{'':>7} {r['baseline_mem_ratio']:>7.2f}x")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"method": "fresh subprocess per measurement; time = perf_counter around load+save; memory = "
                      "VmHWM after (reset via /proc/self/clear_refs just before) minus VmRSS before; "
                      "medians of runs; ratios lepton/onnx (time) and peak/weight bytes (memory)",
            "python": sys.version.split()[0], "time_goal": TIME_GOAL, "mem_goal": MEM_GOAL}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
