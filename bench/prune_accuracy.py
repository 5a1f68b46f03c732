"""Accuracy after structured pruning on real labelled data, with and without training-free recovery.

    python bench/prune_accuracy.py [--macs 0.7] [--quick] [digits] [magika]

* digits: the shipped CNN (lepton/data/digits_cnn.onnx), top-1 on the 360-image test split;
  calibration / reconstruction data: the "calib" split (256 train images, disjoint from test).
* magika: top-1 on real files of this machine labelled by extension (the data set of
  bench/quant_accuracy.py: files hashed 1 in 5 to calibration, the rest to test); calibration
  uses at most 256 of the calibration files.

Variants at the same MAC budget (`prune{macs=M}`; multiple=1 for the digits CNN, whose 8- and
16-channel layers cannot be cut finely in steps of 8, multiple=8 for magika, default M = 0.7, i.e. a 30% MAC cut):
random importance and L1 importance without recovery (baselines), then L1 + `reconstruct`
(bias compensation only, and the ridge refit), and activation-aware importance + refit.
Models run in ONNX Runtime (CPU). Writes bench/results/prune_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import lepton_ir
import lepton_ir.testing.corpus as corpus
from lepton_ir.reference import ort_session
from lepton_passes import PassManager
from lepton_passes.prune import read_record

sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results" / "prune_accuracy.json"


def variants(macs: float, calib: str, batch: int, multiple: int) -> list[tuple[str, str]]:
    p = f"prune{{macs={macs},multiple={multiple}"
    c = f'calib="{calib}",calib-batch={batch}'
    return [
        ("random, no recovery", f"{p},importance=random}}"),
        ("L1, no recovery", f"{p}}}"),
        ("L1 + bias compensation", f"{p}}},reconstruct{{{c},refit=false}}"),
        ("L1 + reconstruct (ridge refit)", f"{p}}},reconstruct{{{c}}}"),
        ("activation + reconstruct", f"{p},importance=activation,{c}}},reconstruct{{{c}}}"),
    ]


def evaluate(path, feeds_calib: dict, predict, label: str, macs: float, batch: int, multiple: int = 8) -> dict:
    out = {}
    base = lepton_ir.load(str(path))
    out["float_top1"] = predict(base)
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "calib.npz")
        np.savez(f, **feeds_calib)
        for name, pipe in variants(macs, f, batch, multiple):
            m = lepton_ir.load(str(path))
            t = time.perf_counter()
            PassManager(pipe).run(m)
            secs = time.perf_counter() - t
            rec = read_record(m)
            acc = predict(m)
            out[name] = {"top1": acc, "macs_kept": rec["macs_after"] / rec["macs_before"], "seconds": secs,
                         "pipeline": pipe.replace(f, "CALIB.npz")}
            print(f"  {label:<7} {name:<32} top-1 {100 * acc:6.2f}%  (float {100 * out['float_top1']:.2f}%)  "
                  f"MACs kept {100 * out[name]['macs_kept']:.1f}%  {secs:.1f}s", flush=True)
    return out


def bench_digits(macs: float, quick: bool) -> dict:
    path = corpus.digits_model_path()
    xc, _ = corpus.digits_dataset("calib")
    xt, yt = corpus.digits_dataset("test")
    name = lepton_ir.load(str(path)).graph.inputs[0].name

    def predict(m):
        s = ort_session(lepton_ir.to_onnx(m))
        return float(np.mean(s.run(None, {name: xt})[0].argmax(1) == yt))

    r = evaluate(path, {name: xc}, predict, "digits", macs, 32, multiple=1)  # 8/16-channel layers
    r.update(test_images=len(xt), calib_images=len(xc))
    return r


def bench_magika(macs: float, quick: bool) -> dict:
    import quant_accuracy as qa

    path = corpus.real_model_path("magika")
    calib, test = qa.magika_dataset()
    if quick:
        calib, test = calib[:64], test[:400]
    xc = np.stack([qa.magika_features_of(p) for p, _ in calib[:256]])
    xt = np.stack([qa.magika_features_of(p) for p, _ in test])
    yt = np.array([y for _, y in test])

    def predict(m):
        s = ort_session(lepton_ir.to_onnx(m), threads=2)
        p = np.concatenate([s.run(None, {"bytes": xt[i:i + 64]})[0] for i in range(0, len(xt), 64)])
        return float(np.mean(p.argmax(1) == yt))

    r = evaluate(path, {"bytes": xc}, predict, "magika", macs, 16)
    r.update(files_test=len(xt), files_calib=len(xc))
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["digits", "magika"])
    ap.add_argument("--macs", type=float, default=0.7)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("LEPTON_NO_PROGRESS", "1")
    res = {"macs": args.macs}
    for m in args.models:
        res[m] = {"digits": bench_digits, "magika": bench_magika}[m](args.macs, args.quick)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
