"""Accuracy after structured pruning on real labelled data, with and without training-free recovery.

    python bench/prune_accuracy.py [--macs 0.7] [--latency] [--distill] [--arm] [--digits-calib 512] [--quick]
                                   [digits] [magika] [minilm]

* digits: the shipped CNN (lepton/data/digits_cnn.onnx), top-1 on the 360-image test split;
  calibration / reconstruction data: the first --digits-calib (256, at most 512) train images,
  disjoint from test (256 = the "calib" split).
* minilm: MiniLM-L3, mean cosine of the sentence embedding to the float model's, 512 test sentences,
  256 calibration sentences (another seed).
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
#: per model, (calibration feeds, test feeds, labels, output) for the ARM row, set by the bench functions
ARM_DATA: dict = {}
ARM_FILES = [64]


#: set by main(): "macs" (prune{macs=M}) or "latency" (prune{latency=M}, measured on ORT here)
TARGET = {"kind": "macs", "distill": False, "distill_budget": 240, "output_loss": "kl", "samples": 256,
          "digits_calib": 256}


def variants(macs: float, calib: str, batch: int, multiple: int | None, teacher: str = "") -> list[tuple[str, str]]:
    """(row name, pipeline) per variant; multiple=None: the SIMD width with --latency, else 8."""
    # calib-samples: reconstruct's default (256) would otherwise cap a larger set (--digits-calib 512)
    c = f'calib="{calib}",calib-batch={batch},calib-samples={TARGET["samples"]}'
    if TARGET["kind"] == "latency":
        # the measured target times the first calib= batch (`batch` samples), so every variant carries
        # calib= (once: prune's options take each key once) and times the same batch; the rounding follows
        # the detected SIMD width unless multiple= is given
        p = f"prune{{latency={macs},{c}" + (f",multiple={multiple}" if multiple is not None else "")
        act = f"{p},importance=activation"
    else:
        p = f"prune{{macs={macs},multiple={multiple or 8}"
        act = f"{p},importance=activation,{c}"
    out = [
        ("random, no recovery", f"{p},importance=random}}"),
        ("L1, no recovery", f"{p}}}"),
        ("L1 + bias compensation", f"{p}}},reconstruct{{{c},refit=false}}"),
        ("L1 + reconstruct (ridge refit)", f"{p}}},reconstruct{{{c}}}"),
        ("activation, no recovery", f"{act}}}"),
        ("activation + reconstruct", f"{act}}},reconstruct{{{c}}}"),
    ]
    if TARGET["distill"] and teacher:
        d = (f'distill{{teacher="{teacher}",calib="{calib}",epochs=20,batch=16,time-budget={TARGET["distill_budget"]},'
             f'output-loss={TARGET["output_loss"]},threads=2}}')
        out.append(("activation + reconstruct + distill", f"{act}}},reconstruct{{{c}}},{d}"))
    return out


def evaluate(path, feeds_calib: dict, predict, label: str, macs: float, batch: int, multiple: int | None = None) -> dict:
    out = {}
    base = lepton_ir.load(str(path))
    out["float_top1"] = predict(base)
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "calib.npz")
        np.savez(f, **feeds_calib)
        TARGET["samples"] = len(next(iter(feeds_calib.values())))
        teacher = os.path.join(d, "teacher.onnx")
        lepton_ir.save(base, teacher)
        for name, pipe in variants(macs, f, batch, multiple, teacher):
            m = lepton_ir.load(str(path))
            t = time.perf_counter()
            PassManager(pipe).run(m)
            secs = time.perf_counter() - t
            rec = read_record(m) or {"macs_after": 1.0, "macs_before": 1.0}  # nothing removed
            acc = predict(m)
            out[name] = {"top1": acc, "macs_kept": rec["macs_after"] / rec["macs_before"], "seconds": secs,
                         "pipeline": pipe.replace(f, "CALIB.npz").replace(teacher, "FLOAT.onnx"),
                         "latency_table": rec.get("latency_table")}
            if name == "activation + reconstruct":
                out["_best_model"] = lepton_ir.to_onnx(m)
            print(f"  {label:<7} {name:<36} metric {100 * acc:6.2f}%  (float {100 * out['float_top1']:.2f}%)  "
                  f"MACs kept {100 * out[name]['macs_kept']:.1f}%  {secs:.1f}s", flush=True)
    a0, a1, f0 = out["L1, no recovery"]["top1"], out["L1 + reconstruct (ridge refit)"]["top1"], out["float_top1"]
    out["gap_closed_by_reconstruct"] = (a1 - a0) / (f0 - a0) if f0 - a0 > 1e-12 else None
    b0, b1 = out["activation, no recovery"]["top1"], out["activation + reconstruct"]["top1"]
    out["gap_closed_by_reconstruct_activation"] = (b1 - b0) / (f0 - b0) if f0 - b0 > 1e-12 else None
    print(f"  {label:<7} reconstruct closes {out['gap_closed_by_reconstruct']} of the gap left by L1 pruning",
          flush=True)
    return out


def bench_digits(macs: float, quick: bool) -> dict:
    path = corpus.digits_model_path()
    # calib: the first 256 train images (the "calib" split); --digits-calib 512 takes the first 512 of
    # train (still disjoint from test): the ridge refit of the Gemm needs 4 rows per weight column
    xc = corpus.digits_dataset("train")[0][:TARGET["digits_calib"]]
    xt, yt = corpus.digits_dataset("test")
    name = lepton_ir.load(str(path)).graph.inputs[0].name

    def predict(m):
        s = ort_session(lepton_ir.to_onnx(m))
        return float(np.mean(s.run(None, {name: xt})[0].argmax(1) == yt))

    ARM_DATA["digits"] = ({name: xc}, {name: xt}, yt, None)
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

    ARM_DATA["magika"] = ({"bytes": xc}, {"bytes": xt[:ARM_FILES[0]]}, yt[:ARM_FILES[0]], None)
    r = evaluate(path, {"bytes": xc}, predict, "magika", macs, 16)
    r.update(files_test=len(xt), files_calib=len(xc))
    return r


def minilm_data(n_calib: int, n_test: int):
    """Sentence batches (corpus.realistic_inputs: English sentences as token ids, 12 positions)."""
    xc = corpus.realistic_inputs("minilm-l3", batch=n_calib, seed=1)
    xt = corpus.realistic_inputs("minilm-l3", batch=n_test, seed=2)
    return xc, xt


def bench_minilm(macs: float, quick: bool) -> dict:
    """MiniLM-L3: mean cosine of the pooled sentence embedding (output '461') to the float model's."""
    path = corpus.real_model_path("minilm-l3")
    xc, xt = minilm_data(256, 128 if quick else 512)
    ref = ort_session(str(path), threads=2).run(["461"], xt)[0]

    def predict(m):
        e = ort_session(lepton_ir.to_onnx(m), threads=2).run(["461"], xt)[0]
        cos = np.sum(e * ref, 1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
        return float(np.mean(cos))

    TARGET["output_loss"] = "mse"
    try:  # latency= times the first calibration sample (batch 1, 12 tokens)
        r = evaluate(path, xc, predict, "minilm", macs, 16)
    finally:
        TARGET["output_loss"] = "kl"
    r.update(sentences_test=len(xt["input_ids"]), sentences_calib=len(xc["input_ids"]),
             metric="mean cosine of output 461 to the float model")
    return r


def arm_row(name: str, best_pipeline: str, calib: dict, test: dict, labels, out_name: str | None,
            port: int = 9321) -> dict:
    """`prune,reconstruct,fuse,quant8` on the emulated aarch64 device vs the same model on the host."""
    import lepton
    from lepton import device
    from lepton.remote import RemoteRunner
    from lepton_backends.tvm import load_artifact

    work = tempfile.mkdtemp(prefix="prune-arm-")
    f = os.path.join(work, "calib.npz")
    np.savez(f, **calib)
    path = corpus.digits_model_path() if name == "digits" else corpus.real_model_path(name)
    m = lepton_ir.load(str(path))
    pipe = best_pipeline.replace("CALIB.npz", f) + f',fuse,quant8{{calib="{f}"}}'
    t0 = time.perf_counter()
    PassManager(pipe).run(m)
    qpath = os.path.join(work, "q.onnx")
    lepton_ir.save(m, qpath)
    secs = time.perf_counter() - t0
    shapes = {k: list(v.shape) for k, v in test.items()}
    lepton.optimize(qpath, passes="canonicalize", backend="tvm-cpu", target="native", output=os.path.join(work, "host"),
                    input_shapes=shapes)
    lepton.optimize(qpath, passes="canonicalize", backend="tvm-arm", target="cortex-a72",
                    output=os.path.join(work, "arm"), input_shapes=shapes)
    host = list(load_artifact(os.path.join(work, "host")).run(test).values())[0]
    ortq = ort_session(qpath, threads=2).run(None, test)[0]
    with device.EmulatorLease(port=port) as (h, pt):
        with RemoteRunner(os.path.join(work, "arm"), rpc=f"{h}:{pt}", session_timeout=900) as r:
            t1 = time.perf_counter()
            dev = list(r.run(test).values())[0]
            dev_s = time.perf_counter() - t1
    row = {"pipeline": pipe.replace(f, "CALIB.npz"), "passes_s": secs, "device_run_s": dev_s,
           "max_abs_diff_device_vs_host_tvm": float(np.max(np.abs(dev.astype(np.float64) - host))),
           "max_abs_diff_device_vs_ort": float(np.max(np.abs(dev.astype(np.float64) - ortq)))}
    if labels is not None:
        row.update(top1_device=float(np.mean(dev.argmax(1) == labels)), top1_host_tvm=float(np.mean(host.argmax(1) == labels)),
                   top1_ort=float(np.mean(ortq.argmax(1) == labels)),
                   argmax_agreement_device_host=float(np.mean(dev.argmax(1) == host.argmax(1))))
    print(f"  {name} on tvm-arm (emulated cortex-a72): {json.dumps(row)}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["digits", "magika", "minilm"])
    ap.add_argument("--macs", type=float, default=0.7, help="share kept: of the MACs, or with --latency of "
                    "the ORT latency measured here")
    ap.add_argument("--latency", action="store_true", help="prune{latency=M} instead of prune{macs=M}")
    ap.add_argument("--distill", action="store_true", help="add the reconstruct + distill row")
    ap.add_argument("--distill-budget", type=int, default=240, help="distill time-budget= (s)")
    ap.add_argument("--arm", action="store_true", help="add the prune,reconstruct,fuse,quant8 row on the "
                    "emulated aarch64 device (digits: all test images; magika: --arm-files files)")
    ap.add_argument("--arm-files", type=int, default=64)
    ap.add_argument("--digits-calib", type=int, default=256, choices=range(1, 513), metavar="N",
                    help="digits calibration images (first N of the train split, at most 512)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    os.environ.setdefault("LEPTON_NO_PROGRESS", "1")
    ARM_FILES[0] = args.arm_files
    TARGET.update(kind="latency" if args.latency else "macs", distill=args.distill, distill_budget=args.distill_budget,
                  digits_calib=args.digits_calib)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    res = {"macs": args.macs, "target": TARGET["kind"], "cpu": cpu, "load_before": os.getloadavg()}
    out = Path(args.out)
    for m in args.models:
        t0 = time.perf_counter()
        r = {"digits": bench_digits, "magika": bench_magika, "minilm": bench_minilm}[m](args.macs, args.quick)
        r.pop("_best_model", None)
        r["load_after"] = os.getloadavg()
        r["bench_seconds"] = time.perf_counter() - t0
        res[m] = r
        if args.arm and m in ("digits", "magika"):
            try:
                res[m]["arm"] = arm_row(m, r["activation + reconstruct"]["pipeline"], *ARM_DATA[m])
            except Exception as e:  # noqa: BLE001 - record the failure, keep the other rows
                res[m]["arm"] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
                print(f"  {m} on tvm-arm failed: {res[m]['arm']['error']}", flush=True)
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
