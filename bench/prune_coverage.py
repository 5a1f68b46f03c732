"""How much of each real model `prune` can reach: the share of prunable-weight MACs in non-frozen
channel groups, and why the rest is frozen.

    python bench/prune_coverage.py [models...]       (default: every corpus.REAL_MODELS + digits)

Prunable weights: Conv / ConvTranspose / Gemm / MatMul (and Lepton's fused forms) with a constant
float weight. A layer counts as covered when its output channels or (not depthwise) its input
channels hold at least one free (non-frozen) channel class; `out share` counts output channels only.
MACs are per run at the realistic input shapes (symbolic dims pinned from corpus.realistic_inputs).
Writes bench/results/prune_coverage.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

import lepton_ir
import lepton_ir.testing.corpus as corpus
from lepton_ir.opsem import weight_info
from lepton_passes.prune import analyse
from lepton_passes.prune.deps import WEIGHT_OPS, _dims, _macs
from lepton_passes.util import constant_value

RESULTS = Path(__file__).resolve().parent / "results" / "prune_coverage.json"


def _load(name: str) -> lepton_ir.Model:
    if name == "digits":
        return lepton_ir.load(str(corpus.digits_model_path()))
    m = lepton_ir.load(str(corpus.real_model_path(name)))
    try:
        feeds = corpus.realistic_inputs(name)
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        lepton_ir.pin_input_shapes(m, shapes)
    except Exception as e:  # noqa: BLE001 - keep going with symbolic dims
        print(f"{name}: input shapes not pinned ({e})", file=sys.stderr)
    return m


def _reason_key(r: str) -> str:
    r = re.sub(r"'[^']*'", "'…'", r)
    r = re.sub(r"\([^)]*\)", "(…)", r)
    return re.sub(r"\b\S+\[axis \d+\]|\bdim \d+ of \S+", "value", r)


def coverage(name: str) -> dict:
    t0 = time.perf_counter()
    m = _load(name)
    dg = analyse(m)
    fr = dg.frozen_roots()
    seen = {id(w.node): w for w in dg.weights}
    total = cov = out_cov = 0.0
    not_analysed = 0.0
    frozen_layers = []
    for n in m.graph:
        if (n.domain, n.op_type) not in WEIGHT_OPS:
            continue
        info = weight_info(n)
        w = n.inputs[info.weight] if info is not None else None
        wv = constant_value(w)
        if wv is None or np.asarray(wv).dtype.kind != "f":
            continue
        wu = seen.get(id(n))
        if wu is None:
            mac = _macs(n, info, list(np.shape(wv))) if _dims(n.outputs[0]) is not None else 0.0
            total += mac
            not_analysed += mac
            frozen_layers.append((n.outputs[0].name, mac, "not analysed"))
            continue
        total += wu.macs
        out_free = bool({dg.root(e) for e in wu.out_slot.ids.tolist()} - fr)
        in_free = not wu.depthwise and bool({dg.root(e) for e in wu.in_slot.ids.tolist()} - fr)
        if out_free or in_free:
            cov += wu.macs
        else:
            frozen_layers.append((n.outputs[0].name, wu.macs, "frozen"))
        if out_free:
            out_cov += wu.macs
    reasons = collections.Counter(f"{where.split(' ')[0]}: {_reason_key(r)}" for _, where, r in dg.reasons)
    return {"model": name, "weight_layers": len(dg.weights), "macs": total,
            "share": cov / total if total else 0.0, "out_share": out_cov / total if total else 0.0,
            "not_analysed_share": not_analysed / total if total else 0.0,
            "reasons": reasons.most_common(), "largest_frozen": sorted(frozen_layers, key=lambda x: -x[1])[:5],
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(corpus.REAL_MODELS) + ["digits"])
    args = ap.parse_args()
    rows = []
    for name in args.models:
        try:
            r = coverage(name)
        except corpus.ModelNotFetchedError as e:
            print(f"{name}: skipped ({e})")
            continue
        rows.append(r)
        print(f"{name:<18} layers {r['weight_layers']:>3}  MACs {r['macs'] / 1e6:9.2f} M  covered "
              f"{100 * r['share']:5.1f}%  (output side {100 * r['out_share']:5.1f}%)  {r['seconds']:.1f}s")
        for reason, k in r["reasons"][:8]:
            print(f"      {k:>4} x {reason}")
        for out, mac, why in r["largest_frozen"][:3]:
            print(f"      frozen layer {out} ({mac / 1e6:.2f} M MACs, {why})")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
