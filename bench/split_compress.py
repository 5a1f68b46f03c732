"""Accuracy of compressed cut tensors (issue #16): magika on real files, split at several cuts,
the cut tensors sent as fp16 or int8 (symmetric, one scale per tensor computed at run time, the
encode/decode nodes `lepton_backends.split.split_models` adds to the head and the tail).

    python bench/split_compress.py [--files N]

Files: bench/quant_accuracy.py's labelled real-file set (test part). For each cut (the split cuts
DADS picks over the bandwidth grid with the measured profile, when the profile database has it,
plus evenly spaced valid cuts), head and tail run in ONNX Runtime; metric: top-1 agreement of
the compressed split with the uncompressed model, and top-1 accuracy against the labels of both.
Writes bench/results/split_compress.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lepton_ir  # noqa: E402
from lepton_backends.split import _runnable, split_models  # noqa: E402
from lepton_ir.cut import Link, NodeCosts, evaluate, valid_cuts  # noqa: E402
from lepton_ir.reference import ort_session  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "split_compress.json"


def run(sess, feed):
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})))


def main() -> None:
    from quant_accuracy import magika_dataset, magika_features_of
    from split_predict import prepared

    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--cuts", type=int, default=6)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    model = _runnable(prepared("magika"))  # fused ops lowered: ONNX Runtime runs the halves
    _, test = magika_dataset()
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(test))[: args.files]
    xs = np.stack([magika_features_of(test[i][0]) for i in pick]).astype(np.int32)
    labels = np.array([test[i][1] for i in pick])
    ref_sess = ort_session(lepton_ir.to_onnx(model))
    out_name = model.graph.outputs[0].name
    ref = np.concatenate([run(ref_sess, {"bytes": x[None]})[out_name] for x in xs]).argmax(-1)
    view = lepton_ir.weighted_view(model)
    ideals = sorted((s for s in valid_cuts(view) if 0 < len(s) < len(model.graph)), key=len)
    chosen = [ideals[int(k)] for k in np.linspace(0, len(ideals) - 1, args.cuts)]
    zero = NodeCosts({i: 0.0 for i in range(len(model.graph))}, {i: 0.0 for i in range(len(model.graph))})
    rows = []
    for s in chosen:
        cut = evaluate(view, s, zero, Link.mbit(10))
        for kind in ("none", "fp16", "int8"):
            head, tail = split_models(model, cut, kind)
            hs, ts = ort_session(lepton_ir.to_onnx(head)), ort_session(lepton_ir.to_onnx(tail))
            top = []
            for x in xs:
                feed = {"bytes": x[None]}
                feed.update(run(hs, feed))
                top.append(run(ts, feed)[out_name].argmax(-1))
            top = np.concatenate(top)
            row = {"edge_nodes": len(s), "uplink": list(cut.uplink), "compress": kind,
                   "wire_bytes": evaluate(view, s, zero, Link.mbit(10), _comp(kind)).uplink_bytes,
                   "agree": float((top == ref).mean()), "acc": float((top == labels).mean()),
                   "ref_acc": float((ref == labels).mean()), "files": len(xs)}
            rows.append(row)
            print(f"edge {len(s):>2}/{len(model.graph)} nodes, send {row['wire_bytes']:>7} B as {kind:<4}: top-1 "
                  f"agreement with the whole model {100 * row['agree']:6.2f}%, accuracy {100 * row['acc']:5.1f}% "
                  f"(whole model {100 * row['ref_acc']:5.1f}%)", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n")


def _comp(kind):
    from lepton_ir.cut import Compression

    return Compression(kind)


if __name__ == "__main__":
    main()
