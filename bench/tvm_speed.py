"""tvm-cpu latency against ONNX Runtime, untuned and tuned, in the same run.

Models: a ResNet-18-like and a MobileNetV2-like convnet (onnx.helper, random weights,
1x3x224x224) and minilm-l3 (real model, realistic inputs); with ``--models`` also the real models
magika, ppocr-cls, ppocr-rec, ppocr-det (lepton_ir.testing.corpus: fetched models, realistic inputs
from corpus.realistic_inputs, batch 1, every shape pinned) and digits (lepton/data's CNN, one
held-out image). Both runtimes use 2 threads
(TVM_NUM_THREADS=2, ORT intra_op_num_threads=2); latency is the median of ``--repeat`` runs,
measured in alternating blocks (ORT, TVM untuned, TVM tuned; bench/timing.py) so that load
changes on a shared machine hit all of them alike and no runtime is timed while the other's
threads still spin.

Per model:
  (a) untuned: TVM/ORT latency ratio (goal: within 2x);
  (b) tuned with ``--trials`` MetaSchedule trials (goal: <= 1.0);
  (c) time to tune (+ compile), and time of a second compile reusing the database (goal: < 60 s,
      zero new trials).

    python bench/tvm_speed.py [--trials 64] [--models resnet18-like,mobilenetv2-like,minilm-l3]
    python bench/tvm_speed.py --no-tune --models mobilenetv2-like   # (a) only: no tuning, 1 compile
    python bench/tvm_speed.py --no-tune --layouts nchw,nchwc --symbolic --models resnet18-like
    python bench/tvm_speed.py --no-tune --models magika,ppocr-cls,ppocr-rec,ppocr-det,digits \
        --json bench/results/tvm_speed_real.json   # real models, untuned, with roofline tables
        # both layouts and a symbolic-batch build side by side, plus the per-kernel roofline tables

``--trials 0`` still compiles three times (reusing whatever the database holds); ``--no-tune``
skips the tuned builds altogether, for checking the search-free schedules quickly.

Writes bench/results/tvm_speed.json (``--json``) and prints a table.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "2")  # before TVM's runtime starts its thread pool

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

THREADS = 2
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/timing.py
MODELS = ("resnet18-like", "mobilenetv2-like", "minilm-l3")
#: Real models (``--models``): the corpus's fetched models plus the digits CNN shipped in lepton/data.
REAL_MODELS = ("magika", "ppocr-cls", "ppocr-rec", "ppocr-det", "digits")


def model_and_inputs(name: str, tmp: Path) -> tuple[Path, dict[str, np.ndarray]]:
    from lepton_backends.tvm import testing

    if name in ("resnet18-like", "mobilenetv2-like"):
        m = testing.resnet18_like() if name == "resnet18-like" else testing.mobilenetv2_like()
        path = tmp / f"{name}.onnx"
        onnx.save(m, str(path))
        from lepton_ir.reference import random_inputs

        return path, random_inputs([{"name": "input", "dtype": "float32", "shape": [1, 3, 224, 224]}])
    from lepton_ir.testing import corpus

    if name == "digits":  # batch 1 of the held-out split, the images the model was trained on
        x, _ = corpus.digits_dataset("test")
        return corpus.digits_model_path(), {_first_input(corpus.digits_model_path()): np.ascontiguousarray(x[:1])}
    # every shape pinned: realistic_inputs builds batch 1 at the model's fixed sizes (see its docs)
    return corpus.real_model_path(name), corpus.realistic_inputs(name)


def _first_input(path: Path) -> str:
    m = onnx.load(str(path))
    init = {t.name for t in m.graph.initializer}
    return next(i.name for i in m.graph.input if i.name not in init)


def kernel_roofline(path: Path, inputs: dict[str, np.ndarray], layout: str, top: int = 5) -> dict:
    """bench/roofline.py's table for the untuned build of ``path`` (lowered in this process: the
    artifact keeps no IRModule to take FLOP counts from)."""
    import lepton_ir
    import roofline
    import tvm

    from lepton_backends.tvm import lower
    from lepton_backends.tvm.backend import prepare_for_tvm
    from lepton_backends.tvm.targets import resolve_target

    shapes = {k: list(v.shape) for k, v in inputs.items()}
    proto = lepton_ir.to_onnx(prepare_for_tvm(lepton_ir.load(str(path)), shapes))
    tgt = resolve_target("native")
    mod = lower.to_relax(proto, shapes, target=tgt)
    lowered = lower.make_pipeline(tgt, layout=layout)(mod)  # the same kernels build() compiles
    ex = lower.build(mod, tgt, layout=layout)
    args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[vi.name])) for vi in lower.graph_inputs(proto)]
    return roofline.roofline(ex, lowered, args, THREADS, top)


def ort_session(path: Path):
    from lepton_ir.reference import ort_session as session

    return session(path, optimize=True, threads=THREADS)


def records(db: Path) -> int:
    f = db / "database_tuning_record.json"
    return sum(1 for ln in f.read_text().splitlines() if ln.strip()) if f.is_file() else 0


def compile_tvm(path: Path, inputs, out: Path, **options) -> float:
    import lepton

    shapes = {k: list(v.shape) for k, v in inputs.items()}
    t0 = time.perf_counter()
    lepton.optimize(str(path), passes="canonicalize", backend="tvm-cpu", output=str(out), input_shapes=shapes,
                    **options)
    return time.perf_counter() - t0


def timed_rounds(fns: dict, inputs, repeat: int, warmup: int = 3) -> dict[str, float]:
    """Median ms per callable, measured in alternating blocks (see bench/timing.py: timing ORT and
    TVM one call each in turn measures each while the other's spinning threads hold a core)."""
    from timing import medians, timed_blocks

    return medians(timed_blocks(fns, repeat, warmup=warmup))


def symbolic_batch_copy(path: Path, tmp: Path) -> Path:
    """``path`` with its inputs' and outputs' first dim made the symbol ``N`` (a batch left open)."""
    m = onnx.load(str(path))
    for vi in list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].dim_param = "N"
    out = tmp / f"{path.stem}-symbolic.onnx"
    onnx.save(m, str(out))
    return out


def bench_model(name: str, trials: int | None, db: Path, tmp: Path, repeat: int, layouts: list[str] = ("nchw",),
                symbolic: bool = False, roofline_top: int = 0) -> dict:
    """One model's row; ``trials=None`` measures the untuned build only (no tuning, no database).

    With ``trials=None``: one untuned artifact per layout in ``layouts`` ("untuned" is NCHW,
    "untuned_nchwc" the packed layout), optionally one with the batch dim left symbolic
    ("untuned_symbolic"), all timed in the same alternating blocks as ORT; ``roofline_top`` > 0
    adds bench/roofline.py's per-kernel table for each layout.
    """
    import lepton

    path, inputs = model_and_inputs(name, tmp)
    row: dict = {"model": name, "trials_budget": trials}
    print(f"[tvm_speed] {name}: untuned compile...", file=sys.stderr, flush=True)
    row["untuned_compile_s"] = compile_tvm(path, inputs, tmp / f"{name}-untuned")
    if trials is None:
        sess = ort_session(path)
        variants = {"untuned": lepton.load(str(tmp / f"{name}-untuned"))}
        for lay in layouts:
            if lay == "nchw":
                continue
            print(f"[tvm_speed] {name}: untuned compile, layout {lay}...", file=sys.stderr, flush=True)
            row[f"untuned_{lay}_compile_s"] = compile_tvm(path, inputs, tmp / f"{name}-untuned-{lay}", layout=lay)
            variants[f"untuned_{lay}"] = lepton.load(str(tmp / f"{name}-untuned-{lay}"))
        if symbolic and name != "minilm-l3":
            print(f"[tvm_speed] {name}: untuned compile, batch left symbolic...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the symbolic-dims warning is what is measured here
                lepton.optimize(str(symbolic_batch_copy(path, tmp)), passes="canonicalize", backend="tvm-cpu",
                                output=str(tmp / f"{name}-untuned-symbolic"))
            row["untuned_symbolic_compile_s"] = time.perf_counter() - t0
            variants["untuned_symbolic"] = lepton.load(str(tmp / f"{name}-untuned-symbolic"))
        ref = sess.run(None, inputs)
        for label, r in variants.items():
            got = list(r.run(inputs).values())
            row[f"{label}_max_abs_err"] = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                                              for a, b in zip(ref, got))
        fns = {"ort": lambda: sess.run(None, inputs)}
        fns.update({label: (lambda r=r: r.run(inputs)) for label, r in variants.items()})
        med = timed_rounds(fns, inputs, repeat)
        row["ort_ms"] = med["ort"]
        for label in variants:
            row[f"{label}_ms"] = med[label]
            row[f"{label}_ratio"] = med[label] / med["ort"]
        if "untuned_symbolic" in variants:
            row["symbolic_vs_pinned"] = med["untuned_symbolic"] / med["untuned"]
        if roofline_top:
            import roofline

            row["roofline"] = {}
            for lay in layouts:
                r = kernel_roofline(path, inputs, lay, roofline_top)
                row["roofline"][lay] = r
                print(roofline.format_table(name, lay, r), flush=True)
        return row
    r0 = records(db)
    print(f"[tvm_speed] {name}: tuning with {trials} trials into {db}...", file=sys.stderr, flush=True)
    row["tune_and_compile_s"] = compile_tvm(path, inputs, tmp / f"{name}-tuned", tune_trials=trials,
                                            tuning_db=str(db))
    row["new_records_first"] = records(db) - r0
    r1 = records(db)
    print(f"[tvm_speed] {name}: second compile with the same database...", file=sys.stderr, flush=True)
    row["second_compile_s"] = compile_tvm(path, inputs, tmp / f"{name}-tuned2", tune_trials=trials,
                                          tuning_db=str(db))
    row["new_records_second"] = records(db) - r1

    # Latency in a fresh process: the tuning run leaves MetaSchedule's worker pools and thread
    # state behind, which slowed ONNX Runtime 3x (MiniLM 4.5 ms vs 1.3 ms) in the first runs.
    np.savez(tmp / f"{name}-inputs.npz", **inputs)
    print(f"[tvm_speed] {name}: timing in a fresh process...", file=sys.stderr, flush=True)
    p = subprocess.run([sys.executable, __file__, "--measure", str(path), str(tmp / f"{name}-inputs.npz"),
                        str(tmp / f"{name}-untuned"), str(tmp / f"{name}-tuned2"), "--repeat", str(repeat)],
                       capture_output=True, text=True, check=True)
    row.update(json.loads(p.stdout.strip().splitlines()[-1]))
    return row


def measure(path: str, inputs_npz: str, untuned_dir: str, tuned_dir: str, repeat: int) -> dict:
    """Errors against ORT and median latencies of ORT, the untuned and the tuned artifact."""
    import lepton

    inputs = dict(np.load(inputs_npz))
    sess = ort_session(Path(path))
    untuned, tuned = lepton.load(untuned_dir), lepton.load(tuned_dir)
    ref = sess.run(None, inputs)
    row: dict = {}
    for label, r in (("untuned", untuned), ("tuned", tuned)):
        got = list(r.run(inputs).values())
        row[f"{label}_max_abs_err"] = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                                          for a, b in zip(ref, got))
    med = timed_rounds({"ort": lambda: sess.run(None, inputs), "untuned": lambda: untuned.run(inputs),
                        "tuned": lambda: tuned.run(inputs)}, inputs, repeat)
    row.update(ort_ms=med["ort"], untuned_ms=med["untuned"], tuned_ms=med["tuned"],
               untuned_ratio=med["untuned"] / med["ort"], tuned_ratio=med["tuned"] / med["ort"])
    return row


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<18} {'ORT ms':>8} {'untuned ms':>11} {'ratio':>6} {'tuned ms':>9} {'ratio':>6} "
          f"{'trials':>6} {'tune+compile s':>14} {'2nd compile s':>13} {'new trials 2nd':>14}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<18} error: {r['error']}")
            continue
        if "tuned_ms" not in r:  # --no-tune
            extra = "".join(f"; {k[:-3]} {r[k]:.2f} ms ({r[k[:-3] + '_ratio']:.2f})" for k in r
                            if k.startswith("untuned_") and k.endswith("_ms"))
            print(f"{r['model']:<18} {r['ort_ms']:>8.2f} {r['untuned_ms']:>11.2f} {r['untuned_ratio']:>6.2f}"
                  f"  (not tuned; untuned compile {r['untuned_compile_s']:.1f} s{extra})")
            continue
        print(f"{r['model']:<18} {r['ort_ms']:>8.2f} {r['untuned_ms']:>11.2f} {r['untuned_ratio']:>6.2f} "
              f"{r['tuned_ms']:>9.2f} {r['tuned_ratio']:>6.2f} {r['trials_budget']:>6} "
              f"{r['tune_and_compile_s']:>14.1f} {r['second_compile_s']:>13.1f} {r['new_records_second']:>14}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per model (default 64)")
    ap.add_argument("--no-tune", action="store_true", help="untuned builds only: skip tuning and the tuned "
                    "compiles (--trials is ignored)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS + REAL_MODELS)}")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per variant (default 20)")
    ap.add_argument("--layouts", default="nchw", help="with --no-tune: comma-separated tvm-cpu layouts to build "
                    "and time side by side (nchw, nchwc; default nchw)")
    ap.add_argument("--symbolic", action="store_true", help="with --no-tune: also time a build with the convnets' "
                    "batch dim left symbolic (against the pinned one)")
    ap.add_argument("--roofline", type=int, default=5, metavar="N", help="with --no-tune: per-kernel roofline "
                    "table of the top N kernels per layout (0: none; default 5)")
    ap.add_argument("--tuning-db", metavar="DIR", help="database folder (default: a fresh temporary one, so "
                    "the trial budget is really spent)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "tvm_speed.json"))
    ap.add_argument("--measure", nargs=4, metavar=("MODEL", "INPUTS", "UNTUNED", "TUNED"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure, repeat=args.repeat)))
        return 0
    names = [n for n in args.models.split(",") if n]
    rows = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lepton-tvm-speed-") as tmp_s:
        tmp = Path(tmp_s)
        db = Path(args.tuning_db) if args.tuning_db else tmp / "tuning-db"
        for n in names:
            try:
                rows.append(bench_model(n, None if args.no_tune else args.trials, db, tmp, args.repeat,
                                        layouts=[x for x in args.layouts.split(",") if x], symbolic=args.symbolic,
                                        roofline_top=args.roofline))
            except Exception as e:  # keep the other models' figures
                rows.append({"model": n, "error": " ".join(str(e).split())[:300]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            _write(args, rows, t_all, final=False)  # partial results survive an interrupted run
    print_table(rows)
    _write(args, rows, t_all, final=True)
    print(f"wrote {args.json}")
    return 0


_LOAD_START = os.getloadavg()


def _cpu_model() -> str:
    from roofline import cpu_info

    c = cpu_info()
    return f"{c['model']} ({c['isa']})"


def _write(args, rows: list[dict], t_all: float, final: bool) -> None:
    out = {
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "cpu": _cpu_model(),
                    "loadavg_start": _LOAD_START,
                    "loadavg_end": os.getloadavg(), "threads": THREADS},
        "trials_per_model": None if args.no_tune else args.trials,
        "repeat": args.repeat,
        "total_s": time.perf_counter() - t_all,
        "complete": final,
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
