"""Accuracy of int8 quantization on real data: float vs quantized, by task metric.

    python bench/quant_accuracy.py [--quick] [models...]     (models: magika digits minilm ppocr-cls ppocr-det)

* magika: a labelled file set built from real files on this machine (the same walk as
  lepton_ir.testing.corpus: Python stdlib, C headers, /usr/share), labelled by extension as magika's
  content type (extension -> label table of magika 1.0.3's content-type knowledge base, restricted to
  the model's 214 output labels), at most PER_EXT files per extension; files are split by a hash of
  their path into a calibration part (1 in 5) and a disjoint test part. Metric: top-1 accuracy.
* digits: the shipped CNN, test split, calibrated on the "calib" split (disjoint from test).
* minilm: real English sentences (two disjoint sets: calibration, test); metric: cosine similarity
  of the sentence embedding (output "461", mean pooled) of quant8 / quant8-dynamic to float.
* ppocr-cls: rendered text lines (corpus.realistic_inputs), calibration seeds disjoint from test
  seeds; metric: same argmax rate. ppocr-det: rendered text pages; metric: pixel agreement of the
  probability map thresholded at 0.3 (DBNet's threshold), and IoU of the text pixels.

Quantized models run in ONNX Runtime with all optimizations (its integer kernels). Prints a table
and writes bench/results/quant_accuracy.json.
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
import onnxruntime as ort

import lepton_ir
import lepton_ir.testing.corpus as corpus
from lepton_ir.reference import ort_session
from lepton_passes.quant import Quant8, Quant8Dynamic, format_report, quant_report
from lepton_passes.quant.ort_check import integer_kernel_count, ort_optimized_op_counts
from lepton_ir.testing.magika_data import MAGIKA_EXT, MAGIKA_LABELS, PER_EXT  # noqa: F401 (re-exported)
from lepton_ir.testing.magika_data import dataset as magika_dataset, features_of as magika_features_of

RESULTS = Path(__file__).resolve().parent / "results" / "quant_accuracy.json"

def session(model_or_path, threads: int = 2) -> ort.InferenceSession:
    return ort_session(model_or_path, optimize=True, threads=threads)


def quantize(path, calib: dict[str, np.ndarray], **opts) -> lepton_ir.Model:
    m = lepton_ir.load(str(path))
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "calib.npz")
        np.savez(f, **calib)
        Quant8(calib=f, **opts).run(m)
    return m


def kernels(m: lepton_ir.Model) -> dict[str, int]:
    c = ort_optimized_op_counts(lepton_ir.to_onnx(m).SerializeToString())
    return {"integer_kernels": integer_kernel_count(c), "float_conv_matmul": c.get("Conv", 0) + c.get("FusedConv", 0)
            + c.get("MatMul", 0) + c.get("FusedMatMul", 0) + c.get("Gemm", 0)}


# ------------------------------------------------------------------------------------------------
def bench_magika(quick: bool) -> dict:
    path = corpus.real_model_path("magika")
    calib, test = magika_dataset()
    if quick:
        calib, test = calib[:64], test[:400]
    xc = np.stack([magika_features_of(p) for p, _ in calib[:256]])
    xt = np.stack([magika_features_of(p) for p, _ in test])
    yt = np.array([y for _, y in test])
    out = {"files_calib": len(xc), "files_test": len(xt), "extensions": len({os.path.splitext(p)[1] for p, _ in test})}
    fs = session(path)
    pf = np.concatenate([fs.run(None, {"bytes": xt[i:i + 64]})[0] for i in range(0, len(xt), 64)])
    out["float_top1"] = float(np.mean(pf.argmax(1) == yt))
    # entropy_minsqnr20 = the quant8 defaults; the other two show each method without the fallback.
    for method, opts in (("percentile", {"min_sqnr": 0.0}), ("entropy", {"min_sqnr": 0.0}),
                         ("entropy_minsqnr20", {"min_sqnr": 20.0})):
        qm = quantize(path, {"bytes": xc}, calibration=method.split("_")[0], calib_batch=32, **opts)
        qs = session(qm)
        pq = np.concatenate([qs.run(None, {"bytes": xt[i:i + 64]})[0] for i in range(0, len(xt), 64)])
        out[f"int8_{method}_top1"] = float(np.mean(pq.argmax(1) == yt))
        out[f"int8_{method}_drop_points"] = 100 * (out["float_top1"] - out[f"int8_{method}_top1"])
        out[f"int8_{method}_agreement"] = float(np.mean(pq.argmax(1) == pf.argmax(1)))
        out[f"int8_{method}_kernels"] = kernels(qm)
    return out


def bench_digits(quick: bool) -> dict:
    path = corpus.digits_model_path()
    xc, _ = corpus.digits_dataset("calib")
    xt, yt = corpus.digits_dataset("test")
    name = lepton_ir.load(str(path)).graph.inputs[0].name
    fs = session(path)
    pf = fs.run(None, {name: xt})[0]
    out = {"test_images": len(xt), "calib_images": len(xc), "float_acc": float(np.mean(pf.argmax(1) == yt))}
    for method in ("entropy", "percentile", "minmax"):
        qm = quantize(path, {name: xc}, calibration=method, calib_batch=32)
        pq = session(qm).run(None, {name: xt})[0]
        out[f"int8_{method}_acc"] = float(np.mean(pq.argmax(1) == yt))
        out[f"int8_{method}_agreement"] = float(np.mean(pq.argmax(1) == pf.argmax(1)))
        out[f"int8_{method}_kernels"] = kernels(qm)
    return out


# Real English sentences (written for this benchmark); the first half calibrates, the second tests.
SENTENCES = (
    "The train to the airport leaves every twenty minutes.",
    "My grandmother grew tomatoes and beans in her garden.",
    "The museum is closed on Mondays and public holidays.",
    "He forgot his umbrella and came home soaking wet.",
    "Our team finished the project two days ahead of schedule.",
    "Please turn off the lights when you leave the room.",
    "The children built a sandcastle near the water.",
    "She plays the violin in the city orchestra.",
    "The price of coffee has gone up again this year.",
    "We watched the sunset from the top of the hill.",
    "The doctor told him to drink more water and rest.",
    "A new bridge will connect the two sides of the river.",
    "They moved to a small village in the mountains.",
    "The library has thousands of books about history.",
    "I need to buy new shoes before the trip.",
    "The cat is sleeping on the warm windowsill.",
    "Students must submit their essays by next Tuesday.",
    "The restaurant on the corner serves excellent soup.",
    "Heavy rain caused flooding in several streets.",
    "He learned to ride a bicycle when he was six.",
    "The company plans to open three new offices in Asia.",
    "Can you recommend a good book for the holidays?",
    "The software update fixed the problem with the printer.",
    "Birds were singing in the trees outside my window.",
    "The football match was cancelled because of the storm.",
    "She wrote a letter to her friend in Canada.",
    "The bakery sells fresh bread every morning.",
    "Scientists discovered a new species of frog in the forest.",
    "The meeting has been moved to three o'clock.",
    "My brother is studying engineering at the university.",
    "The old lighthouse still guides ships along the coast.",
    "We should leave early to avoid the traffic.",
    "The garden looks beautiful in the spring.",
    "He answered every question on the exam correctly.",
    "The hotel room had a view of the harbour.",
    "A dog is chasing a ball across the park.",
    "The government announced new rules for electric cars.",
    "They celebrated their anniversary with a quiet dinner.",
    "The concert tickets sold out in ten minutes.",
    "Snow covered the roofs of the houses overnight.",
    "The teacher explained the experiment step by step.",
    "I usually read the news on my phone at breakfast.",
    "The river is too cold for swimming in April.",
    "Our neighbours are painting their fence green.",
    "The pilot announced that we would land soon.",
    "This recipe needs two eggs and a cup of flour.",
    "The shop around the corner repairs old watches.",
    "A strong wind blew the leaves off the trees.",
) + corpus._SENTENCES


def _tok(sentences, pad_to: int | None = None):
    toks = [corpus._tokenize(s) for s in sentences]
    n = pad_to or max(map(len, toks))
    ids = np.zeros((len(toks), n), np.int64)
    mask = np.zeros((len(toks), n), np.int64)
    for i, t in enumerate(toks):
        ids[i, :len(t)] = t
        mask[i, :len(t)] = 1
    return ids, mask


def bench_minilm(quick: bool) -> dict:
    path = corpus.real_model_path("minilm-l3")
    half = len(SENTENCES) // 2
    cal, test = SENTENCES[:half], SENTENCES[half:]
    ids, mask = _tok(cal)
    out = {"calib_sentences": len(cal), "test_sentences": len(test)}
    fs = session(path)
    names = [o.name for o in fs.get_outputs()]
    k = names.index("461")

    def emb(s):
        res = []
        for sent in test:
            i, m = _tok([sent])
            res.append(s.run(None, {"input_ids": i, "attention_mask": m})[k][0])
        return np.stack(res)

    ef = emb(fs)

    def cos(e):
        c = np.sum(ef * e, 1) / np.linalg.norm(ef, axis=1) / np.linalg.norm(e, axis=1)
        return {"mean_cosine": float(c.mean()), "min_cosine": float(c.min())}

    variants = {
        "quant8 (defaults: entropy, min-sqnr=20)": dict(),
        "quant8 (entropy, min-sqnr=0)": dict(calibration="entropy", min_sqnr=0.0),
        "quant8 (percentile, min-sqnr=0)": dict(calibration="percentile", min_sqnr=0.0),
        "quant8 (percentile, min-sqnr=20)": dict(calibration="percentile", min_sqnr=20.0),
    }
    for label, opts in variants.items():
        qm = quantize(path, {"input_ids": ids, "attention_mask": mask}, **opts)
        out[label] = {**cos(emb(session(qm))), **kernels(qm)}
    dm = lepton_ir.load(str(path))
    Quant8Dynamic().run(dm)
    out["quant8-dynamic"] = {**cos(emb(session(dm))), **kernels(dm)}
    return out


def bench_ppocr(name: str, quick: bool) -> dict:
    path = corpus.real_model_path(name)
    n_cal, n_test = (8, 8) if quick else (32, 32)
    inp = list(corpus.realistic_inputs(name, 1, seed=0))[0]
    xc = np.concatenate([corpus.realistic_inputs(name, 1, seed=s)[inp] for s in range(n_cal)])
    xt = [corpus.realistic_inputs(name, 1, seed=1000 + s)[inp] for s in range(n_test)]
    fs = session(path)
    pf = [fs.run(None, {inp: x})[0] for x in xt]
    out = {"calib_images": n_cal, "test_images": n_test}
    for method in ("entropy", "percentile"):
        qm = quantize(path, {inp: xc}, calibration=method)
        qs = session(qm)
        pq = [qs.run(None, {inp: x})[0] for x in xt]
        if name == "ppocr-cls":
            out[f"int8_{method}_same_argmax"] = float(np.mean([a.argmax(-1) == b.argmax(-1) for a, b in zip(pf, pq)]))
        else:
            a = np.concatenate([x.ravel() for x in pf]) > 0.3
            b = np.concatenate([x.ravel() for x in pq]) > 0.3
            out[f"int8_{method}_pixel_agreement"] = float(np.mean(a == b))
            out[f"int8_{method}_text_iou"] = float(np.sum(a & b) / max(1, np.sum(a | b)))
            out[f"int8_{method}_map_max_abs_err"] = float(max(np.abs(x - y).max() for x, y in zip(pf, pq)))
        out[f"int8_{method}_kernels"] = kernels(qm)
        if method == "entropy":
            rep = quant_report(lepton_ir.load(str(path)), qm, [{inp: x} for x in xt[:4]])
            out["report_entropy"] = {"outputs": rep["outputs"], "size": rep["size"],
                                     "worst_layers": sorted(rep["layers"], key=lambda r: r["sqnr_db"])[:5]}
            print(format_report(rep, max_layers=5), file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["magika", "digits", "minilm", "ppocr-cls", "ppocr-det"])
    ap.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    args = ap.parse_args()
    os.environ.setdefault("LEPTON_NO_PROGRESS", "1")
    results: dict = {}
    if RESULTS.exists():
        try:
            results = json.loads(RESULTS.read_text())
        except ValueError:
            results = {}
    for name in args.models:
        t0 = time.perf_counter()
        if name == "magika":
            r = bench_magika(args.quick)
        elif name == "digits":
            r = bench_digits(args.quick)
        elif name == "minilm":
            r = bench_minilm(args.quick)
        elif name in ("ppocr-cls", "ppocr-det"):
            r = bench_ppocr(name, args.quick)
        else:
            raise SystemExit(f"unknown model {name}")
        r["seconds"] = round(time.perf_counter() - t0, 1)
        results[name] = r
        print(f"== {name}")
        for k, v in r.items():
            print(f"  {k:<40} {json.dumps(v) if isinstance(v, dict) else (f'{v:.4f}' if isinstance(v, float) else v)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
