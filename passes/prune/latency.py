"""`prune{latency=L}`: keep L of the latency *measured* on ONNX Runtime on this host.

The search is a bisection on the uniform channel ratio (as `macs=`), but every step is judged by
timing: the candidate is pruned on a copy of the model and run in ONNX Runtime (CPU provider, its
default graph optimizations, i.e. the NCHWc layout transform on x86) against the unpruned model,
the two interleaved (A, B, A, B, ...) so that load on a shared machine hits both alike, and the
median ratio decides. Every measured point goes into the record's ``latency_table`` (ratio, MACs
kept, latency kept), the measured latency-vs-ratio table of this model on this host.

Only ONNX Runtime is timed here: `lepton_passes` may not import the backends (layering). Other
backends (tvm-cpu, tvm-arm) are measured by bench/prune_latency.py on the result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from lepton_ir import Model

log = logging.getLogger("lepton_passes.prune")


@dataclass
class LatencyPoint:
    """One measured candidate: uniform ratio, share of MACs kept, share of latency kept."""

    ratio: float
    macs_kept: float
    latency_kept: float

    def as_dict(self) -> dict:
        return {"ratio": round(self.ratio, 4), "macs_kept": round(self.macs_kept, 4),
                "latency_kept": round(self.latency_kept, 4)}


def ort_latency_session(proto, threads: int):
    """An ORT session as users run it (default graph optimizations on), `threads` intra-op threads."""
    import onnxruntime as ort

    from lepton_ir.reference import ort_session, session_options

    so = session_options(optimize=True, threads=threads)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.inter_op_num_threads = 1
    return ort_session(proto, options=so)


def interleaved_ratio(base, cand, feeds: dict[str, np.ndarray], *, reps: int = 15,
                      min_seconds: float = 0.0) -> tuple[float, float, float]:
    """(median cand/base time ratio over interleaved pairs, median base s, median cand s).

    `base` and `cand` are open ORT sessions; each pair times one run of each, alternating which
    goes first, so a burst of load hits both. Runs at least `reps` pairs and `min_seconds`.
    """
    from lepton_ir.reference import feed_for

    fb, fc = feed_for(base, feeds), feed_for(cand, feeds)
    for _ in range(2):  # warm-up: first runs allocate and pick kernels
        base.run(None, fb)
        cand.run(None, fc)
    tb: list[float] = []
    tc: list[float] = []
    start = time.perf_counter()
    k = 0
    while k < reps or time.perf_counter() - start < min_seconds:
        order = ((base, fb, tb), (cand, fc, tc)) if k % 2 == 0 else ((cand, fc, tc), (base, fb, tb))
        for sess, f, out in order:
            t = time.perf_counter()
            sess.run(None, f)
            out.append(time.perf_counter() - t)
        k += 1
    ratios = np.array(tc) / np.array(tb)
    return float(np.median(ratios)), float(np.median(tb)), float(np.median(tc))


def plan_for_latency(model: Model, plan_at, keep_latency: float, max_ratio: float,
                     feeds: dict[str, np.ndarray], *, threads: int = 1, reps: int = 15, steps: int = 6):
    """(plan, table): the smallest uniform ratio whose measured ORT latency is <= keep_latency.

    `plan_at(m, ratio)` returns (plan over `m`'s own analysis, pruned copy as ONNX proto or None
    for the model itself). Bisection over [0, max_ratio] in `steps` measured steps; when even
    `max_ratio` misses the budget the deepest cut is returned (with a warning).
    """
    import lepton_ir

    base_proto = lepton_ir.to_onnx(model)
    base = ort_latency_session(base_proto, threads)
    table: list[LatencyPoint] = []

    def measure(ratio: float):
        plan, proto = plan_at(ratio)
        if not plan.removed:
            return plan, 1.0
        cand = ort_latency_session(proto, threads)
        r, _, _ = interleaved_ratio(base, cand, feeds, reps=reps)
        table.append(LatencyPoint(ratio, plan.macs_after / max(plan.macs_before, 1e-30), r))
        log.debug("prune: latency ratio %.3f -> %.3f of the latency, %.3f of the MACs", ratio, r,
                  table[-1].macs_kept)
        return plan, r

    top, r_top = measure(max_ratio)
    if r_top > keep_latency:
        log.warning("prune: latency=%g not reachable (%.3f of the latency left at ratio %g)", keep_latency,
                    r_top, max_ratio)
        return top, table
    lo, hi, best = 0.0, max_ratio, top
    for _ in range(steps):
        mid = (lo + hi) / 2
        p, r = measure(mid)
        if r <= keep_latency:
            hi, best = mid, p
        else:
            lo = mid
    return best, table


__all__ = ["LatencyPoint", "plan_for_latency", "interleaved_ratio", "ort_latency_session"]
