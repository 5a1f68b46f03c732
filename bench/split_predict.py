"""Must-show 3 of issue #16: predicted vs measured latency of cloud-edge cuts.

    python bench/split_predict.py [digits] [magika] [--rpc 127.0.0.1:9098] [--all-cuts]

For each model (batch pinned to 1, canonicalize + fuse: as the split backend sees it): the per-node
profile (`lepton_backends.split.profile_model`, through the profile database: measured once), then
for each cut measured (the distinct DADS cuts over the bandwidth grid 1..1000 Mbit/s at RTT 0.5,
5 and 20 ms, plus edge-only, cloud-only and the first third of the nodes; `--all-cuts`: every valid cut,
digits has 9, measured always):
* the head (edge nodes) compiled whole by tvm-arm and timed on the device over RPC
  (`RemoteRunner.benchmark`, timed on the device), the tail (cloud nodes) compiled whole by
  tvm-cpu and timed on this host;
* every figure is the least of its runs (on a shared, loaded host the least-disturbed one);
* predicted = the cut's modeled edge + cloud ms (sum of per-node figures, call overhead once per
  side); measured = head ms + tail ms. The transfer is modeled in both (`bytes * 8 / bandwidth +
  RTT`, at 20 Mbit/s, RTT 5 ms here): the end-to-end error is |pred - meas| / meas with it added.
Edge figures come from the emulated Cortex-A72 (qemu-user): not ARM speed, only the ratios mean
something. Writes bench/results/split_predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import lepton
import lepton_ir
from lepton_backends.split import (SplitBackend, _runnable, name_values, profile_model, record_values, split_models,
                                   time_host_artifact)
from lepton_ir.cut import BANDWIDTH_GRID, Link, dads_cut, evaluate, valid_cuts

RESULTS = Path(__file__).resolve().parent / "results" / "split_predict.json"
LINK = Link.mbit(20, 5.0)


def prepared(name: str):
    from lepton_ir.testing import corpus
    from lepton_passes import PassManager

    if name == "digits":
        m, shapes = lepton_ir.load(corpus.digits_model_path()), {"image": [1, 1, 8, 8]}
    elif name == "magika":
        m, shapes = lepton_ir.load(corpus.real_model_path("magika")), {"bytes": [1, 2048]}
    else:
        raise SystemExit(f"unknown model {name}")
    lepton_ir.pin_input_shapes(m, shapes)
    PassManager(SplitBackend.default_pipeline, verify_each=False).run(m)
    name_values(m)
    return m


def feeds_for(name: str, model) -> dict:
    if name == "magika":
        from lepton_ir.testing import corpus

        data = Path(os.__file__).read_bytes()  # a real Python file
        return {"bytes": corpus.magika_features(data).reshape(1, -1).astype(np.int32)}
    from lepton_ir.reference import random_inputs

    return random_inputs(model, seed=0)


def measure_cut(model, cut, values, rpc: str, repeat: int) -> dict:
    from lepton.remote import RemoteRunner

    head, tail = split_models(model, cut)
    out = {"edge_meas_ms": 0.0, "cloud_meas_ms": 0.0}
    with tempfile.TemporaryDirectory(prefix="split-predict-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if head is not None:
            a = Path(tmp) / "head"
            lepton.optimize(head, passes="", backend="tvm-arm", target="cortex-a72", output=a)
            with RemoteRunner(a, rpc=rpc) as r:
                b = r.benchmark({k: values[k] for k in r.input_names}, repeat=repeat, warmup=2)
            out["edge_meas_ms"] = b["min_ms"]
            out["edge_timed_on"] = b.get("timed_on")
        if tail is not None:
            a = Path(tmp) / "tail"
            lepton.optimize(tail, passes="", backend="tvm-cpu", output=a)
            out["cloud_meas_ms"] = time_host_artifact(a, values, repeat)["ms"]
    return out


def cuts_to_measure(model, prof, all_cuts: bool):
    view = lepton_ir.weighted_view(model)
    costs = prof.costs()
    n = len(model.graph)
    if all_cuts:
        return view, [evaluate(view, s, costs, LINK) for s in valid_cuts(view)]
    seen = {}
    for rtt in (0.5, 5.0, 20.0):
        for b in BANDWIDTH_GRID:
            c = dads_cut(view, costs, Link.mbit(b, rtt))
            seen.setdefault(c.edge_nodes, c)
    # edge-only, cloud-only, and a forced mid-model split (the first third of the nodes in graph
    # order: a prefix of a topological order is always a valid edge set).
    for s in (frozenset(range(n)), frozenset(), frozenset(range(n // 3))):
        seen.setdefault(s, evaluate(view, s, costs, LINK))
    return view, [evaluate(view, s, costs, LINK) for s in seen]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=["digits", "magika"])
    ap.add_argument("--rpc", default="127.0.0.1:9098")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--repeat-magika", type=int, default=3, help="magika's edge runs take seconds on the emulator")
    ap.add_argument("--all-cuts", action="store_true")
    args = ap.parse_args()
    opts = SplitBackend.parse_options({"edge-rpc": args.rpc})
    results = []
    for name in args.models:
        model = prepared(name)
        feeds = feeds_for(name, model)
        t0 = time.perf_counter()
        prof = profile_model(model, opts, feeds=feeds)
        print(f"{name}: {len(model.graph)} nodes; profile {time.perf_counter() - t0:.0f} s "
              f"({prof.measured} measured, {prof.reused} from the database); call overhead edge "
              f"{prof.edge_call_ms:.3f} ms, cloud {prof.cloud_call_ms:.3f} ms")
        values = record_values(model, feeds)
        view, cuts = cuts_to_measure(model, prof, args.all_cuts or name == "digits")
        rows = []
        for cut in cuts:
            m = measure_cut(model, cut, values, args.rpc, args.repeat_magika if name == "magika" else args.repeat)
            pred_c = cut.edge_ms + cut.cloud_ms
            meas_c = m["edge_meas_ms"] + m["cloud_meas_ms"]
            pred = cut.latency_ms
            meas = meas_c + cut.transfer_ms
            row = {"model": name, "edge_nodes": len(cut.edge_nodes), "cloud_nodes": len(cut.cloud_nodes),
                   "kind": cut.kind, "uplink_bytes": cut.uplink_bytes, "edge_pred_ms": cut.edge_ms,
                   "cloud_pred_ms": cut.cloud_ms, "transfer_ms": cut.transfer_ms, **m,
                   "pred_ms": pred, "meas_ms": meas, "err_e2e": abs(pred - meas) / meas,
                   "err_compute": abs(pred_c - meas_c) / meas_c if meas_c else 0.0}
            rows.append(row)
            print(f"  {cut.kind:<10} edge {len(cut.edge_nodes):>2}/{len(model.graph)} nodes, sends {cut.uplink_bytes:>7} B: "
                  f"edge pred {cut.edge_ms:8.3f} meas {m['edge_meas_ms']:8.3f} | cloud pred {cut.cloud_ms:7.3f} "
                  f"meas {m['cloud_meas_ms']:7.3f} | link {cut.transfer_ms:7.3f} | e2e pred {pred:8.3f} "
                  f"meas {meas:8.3f} ms: {100 * row['err_e2e']:5.1f}% (compute alone {100 * row['err_compute']:5.1f}%)",
                  flush=True)
        errs = [r["err_e2e"] for r in rows]
        print(f"{name}: {len(rows)} cuts, e2e error median {100 * np.median(errs):.1f}%, max {100 * max(errs):.1f}%; "
              f"within 15%: {sum(e <= 0.15 for e in errs)}/{len(errs)}")
        results += rows
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
