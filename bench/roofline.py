"""Per-kernel roofline of a tvm-cpu build: time per PrimFunc, achieved GFLOP/s or GB/s, machine limits.

* Machine limit (fp32): ``cores x SIMD lanes x FMA units x 2 x clock``. Lanes come from
  /proc/cpuinfo's flags (``avx512f`` -> 16, ``avx2``/``avx`` -> 8, else 4), never assumed; the
  clock is cpuinfo's ``cpu MHz``; ``cores`` is the thread count the bench uses (capped by the
  CPUs). FMA units: 2 per core, except AMD family 25 (Zen 3/4) with AVX-512, whose two 256-bit FMA
  pipes execute one 512-bit FMA per cycle (counted as 1 unit of 16 lanes).
* Memory limit: a measured streaming copy (numpy, one thread, 64 MiB; bytes read + written),
  so it is a floor of what 2 threads can reach, not a datasheet figure.
* Kernel time: the VM's instrument hook records the wall time of every call of every PrimFunc
  over ``repeat`` runs (a callback per call adds ~2 us, small next to the top kernels' ms).
* FLOPs per kernel: TVM's ``estimate_tir_flops`` on the scheduled PrimFunc; bytes: the sizes of
  its parameters (inputs + output), i.e. the compulsory traffic. A kernel whose FLOP/byte is
  below the machine balance (peak FLOP/s over copy bandwidth) is memory-bound and is reported
  in GB/s against the bandwidth, the others in GFLOP/s against the peak.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def cpu_info() -> dict[str, Any]:
    """Model, vendor, family, flags-derived fp32 lanes and clock of this host (/proc/cpuinfo)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = (s.strip() for s in line.split(":", 1))
            fields.setdefault(k, v)
    flags = set(fields.get("flags", "").split())
    lanes = 16 if "avx512f" in flags else 8 if ("avx2" in flags or "avx" in flags) else 4
    vendor, family = fields.get("vendor_id", ""), int(fields.get("cpu family", "0") or 0)
    fma = ("fma" in flags or "avx512f" in flags)
    fma_units = (1 if (vendor == "AuthenticAMD" and family == 25 and lanes == 16) else 2) if fma else 1
    return {"model": fields.get("model name", "?"), "vendor": vendor, "family": family,
            "isa": "avx512" if lanes == 16 else "avx2" if "avx2" in flags else "avx" if lanes == 8 else "sse/neon",
            "lanes": lanes, "fma_units": fma_units, "fma": fma,
            "mhz": float(fields.get("cpu MHz", "0") or 0.0)}


def peak_gflops(info: dict[str, Any], threads: int) -> float:
    """fp32 limit: cores x lanes x FMA units x 2 (multiply + add) x GHz."""
    cores = min(threads, os.cpu_count() or threads)
    per_cycle = info["lanes"] * info["fma_units"] * (2 if info["fma"] else 1)
    return cores * per_cycle * info["mhz"] / 1e3


def copy_bandwidth_gbs(mib: int = 64, repeat: int = 5) -> float:
    """Streaming copy bandwidth (GB/s, read + write), best of ``repeat``."""
    a = np.ones(mib * 2**20 // 4, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * a.nbytes / best / 1e9


def kernel_costs(mod) -> dict[str, dict[str, float]]:
    """Per PrimFunc of a lowered module (after the schedule): estimated FLOPs and parameter bytes."""
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    out = {}
    for gv, f in mod.functions_items():
        if not isinstance(f, tvm.tirx.PrimFunc):
            continue
        try:
            flops = float(estimate_tir_flops(tvm.IRModule({"main": f})))
        except Exception:  # dynamic extents: no estimate
            flops = float("nan")
        nbytes = 0
        for p in f.params:
            # TVM 0.27: a PrimFunc's params are buffer-typed vars (shape, dtype); older: buffer_map
            buf = f.buffer_map.get(p) if hasattr(f, "buffer_map") else p
            shape = getattr(buf, "shape", None)
            if shape is None:
                continue
            n = 1
            for d in shape:
                n *= int(d) if isinstance(d, tvm.tirx.IntImm) else 0
            nbytes += n * tvm.runtime.DataType(str(buf.dtype)).bits // 8
        out[gv.name_hint] = {"flops": flops, "bytes": float(nbytes)}
    return out


def kernel_times(ex, args: list, repeat: int = 10) -> dict[str, dict[str, float]]:
    """Per PrimFunc symbol: total ms per model run and calls per run, timed with the VM instrument."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    vm = VirtualMachine(ex, tvm.cpu())
    vm["main"](*args)  # warm-up (thread pool, first-touch of workspaces)
    acc: dict[str, list[float]] = {}
    start: dict[str, float] = {}

    def instrument(func, symbol, before, ret, *a):
        now = time.perf_counter()
        if before:
            start[symbol] = now
        else:
            acc.setdefault(symbol, []).append(now - start.pop(symbol, now))
        return 0

    vm.set_instrument(tvm.runtime.convert(instrument) if hasattr(tvm.runtime, "convert") else instrument)
    for _ in range(repeat):
        vm["main"](*args)
    # VM builtins (allocations, shape checks) are not kernels
    return {k: {"ms": 1e3 * sum(v) / repeat, "calls": len(v) / repeat} for k, v in acc.items()
            if not str(k).startswith("vm.")}


def roofline(ex, mod, args: list, threads: int, top: int = 5, repeat: int = 10) -> dict[str, Any]:
    """The top ``top`` kernels by measured time, with achieved rate against the machine limit."""
    info = cpu_info()
    peak, bw = peak_gflops(info, threads), copy_bandwidth_gbs()
    costs = kernel_costs(mod)
    times = kernel_times(ex, args, repeat)
    total = sum(t["ms"] for t in times.values())
    rows = []
    for name, t in sorted(times.items(), key=lambda kv: -kv[1]["ms"])[:top]:
        c = costs.get(name)
        if c is None or t["ms"] <= 0:
            rows.append({"kernel": name, "ms": t["ms"], "share": t["ms"] / total})
            continue
        flops, nbytes = c["flops"] * t["calls"], c["bytes"] * t["calls"]
        intensity = flops / nbytes if nbytes else float("inf")
        memory_bound = intensity < peak / bw
        rate = (nbytes / t["ms"] / 1e6) if memory_bound else (flops / t["ms"] / 1e6)
        limit = bw if memory_bound else peak
        rows.append({"kernel": name, "ms": t["ms"], "share": t["ms"] / total, "calls": t["calls"],
                     "gflop": flops / 1e9, "flop_per_byte": intensity, "bound": "memory" if memory_bound else "compute",
                     "achieved": rate, "unit": "GB/s" if memory_bound else "GFLOP/s", "limit": limit,
                     "fraction": rate / limit})
    return {"cpu": info, "threads": threads, "peak_gflops": peak, "copy_gbs": bw, "kernel_ms_total": total,
            "kernels": rows}


def format_table(model: str, layout: str, r: dict[str, Any]) -> str:
    """Text table of :func:`roofline`'s result."""
    c = r["cpu"]
    lines = [f"roofline {model} (layout {layout}): {c['model']}, {c['isa']} {c['lanes']} fp32 lanes x "
             f"{c['fma_units']} FMA x 2 x {r['threads']} cores x {c['mhz'] / 1e3:.2f} GHz = "
             f"{r['peak_gflops']:.0f} GFLOP/s; copy {r['copy_gbs']:.1f} GB/s; kernels {r['kernel_ms_total']:.2f} ms/run",
             f"  {'kernel':<46} {'ms':>7} {'share':>6} {'GFLOP':>7} {'F/B':>6} {'achieved':>16} {'of limit':>8}"]
    for k in r["kernels"]:
        if "achieved" not in k:
            lines.append(f"  {k['kernel'][:46]:<46} {k['ms']:>7.3f} {k['share']:>6.1%}  (no cost estimate)")
            continue
        lines.append(f"  {k['kernel'][:46]:<46} {k['ms']:>7.3f} {k['share']:>6.1%} {k['gflop']:>7.3f} "
                     f"{k['flop_per_byte']:>6.1f} {k['achieved']:>8.1f} {k['unit']:<7} {k['fraction']:>8.1%}")
    return "\n".join(lines)
