"""Speed of int8 in ONNX Runtime: our `onnx`-path int8 vs ORT float vs ORT's own quantize_static.

    python bench/quant_speed.py [--repeat N] [--tvm | --tvm-only] [models...]   (resnet18 ppocr-det minilm-l3)

Same process, same machine, ONNX Runtime CPU with intra_op_num_threads=2 and all graph
optimizations, median latency of --repeat runs after warm-up; the variants are timed round-robin
(one run of each per round) so that load from other processes hits all of them alike. Variants:

* ``ort-float``       the float model as shipped;
* ``lepton-quant8``   `quant8` (our QDQ model, exported with lepton_ir.to_onnx; ORT fuses it into
                      its integer kernels at session creation);
* ``ort-static``      `onnxruntime.quantization.quantize_static` of the same float model with the
                      same calibration samples (QDQ, per-channel, reduce_range as ours on x86);
* for minilm-l3 also ``lepton-quant8-dynamic`` and ORT's ``quantize_dynamic``.

Each variant's output is compared with float on the timing input (cosine / agreement), so a fast
but wrong model shows. Models: a ResNet-18-like convnet built with onnx.helper (random He-init
weights, BN already folded, 1x3x224x224), PP-OCRv4 det (1x3x480x640 rendered page) and MiniLM-L3
(batch 1, 64 tokens). Results go to bench/results/quant_speed.json.

``--tvm`` adds, in the same run, the TVM side (tvm-cpu, native
target, search-free schedules, TVM_NUM_THREADS=2), timed round-robin with ORT float as the anchor:

* ``tvm-float``           the float model;
* ``tvm-int8``            quant8 (same settings as above) through tvm-cpu's default path:
                          ``qdq-to-integer`` -> ConvInteger/MatMulInteger -> the tensorized int8
                          kernels of backends/tvm/int8_kernels.py (AVX2 vpmaddubsw/vpmaddwd here;
                          ``LEPTON_TVM_INT8_DOT=0`` for the generic int32 loops), float requantization;
* ``ort-static``          ONNX Runtime running ``quantize_static``'s model of the same float model
                          with the same samples (``tvm_int8_vs_ort_static`` = its time / tvm-int8's);
* ``tvm-qdq-float``       the same QDQ model imported without ``qdq-to-integer`` (what tvm-cpu did
                          before: TVM's importer makes float conv/matmul between dequantize/quantize);
* for minilm-l3 also ``tvm-int8-dynamic``: quant8-dynamic (DynamicQuantizeLinear + MatMulInteger),
  and ``ort-dynamic``: ONNX Runtime running ``quantize_dynamic``'s model.

Results under ``<model>.tvm`` in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/timing.py
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import lepton_ir
import lepton_ir.testing.corpus as corpus
from lepton_ir.reference import ort_session
from lepton_passes.quant import Quant8, Quant8Dynamic
from lepton_passes.quant.ort_check import integer_kernel_count, ort_optimized_op_counts

RESULTS = Path(__file__).resolve().parent / "results" / "quant_speed.json"
THREADS = 2
os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))  # before TVM's runtime starts its thread pool


def resnet18_like(seed: int = 0) -> onnx.ModelProto:
    """ResNet-18 topology (BN folded into conv bias), random He-init weights, 1x3x224x224 -> 1000."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = [0]

    def conv(x, cin, cout, k, s, relu=True):
        count[0] += 1
        i = count[0]
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        inits.extend([nh.from_array(w, f"w{i}"), nh.from_array(b, f"b{i}")])
        nodes.append(h.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[k, k], strides=[s, s],
                                 pads=[k // 2] * 4))
        if not relu:
            return f"c{i}"
        nodes.append(h.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        return f"r{i}"

    x = conv("x", 3, 64, 7, 2)
    nodes.append(h.make_node("MaxPool", [x], ["pool0"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, cin = "pool0", 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            s = 2 if stage > 0 and block == 0 else 1
            y = conv(x, cin, cout, 3, s)
            y = conv(y, cout, cout, 3, 1, relu=False)
            skip = conv(x, cin, cout, 1, s, relu=False) if (s != 1 or cin != cout) else x
            n = len(nodes)
            nodes.append(h.make_node("Add", [y, skip], [f"add{n}"]))
            nodes.append(h.make_node("Relu", [f"add{n}"], [f"out{n}"]))
            x, cin = f"out{n}", cout
    nodes.append(h.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(h.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(nh.from_array((rng.standard_normal((1000, 512)) * np.sqrt(1.0 / 512)).astype(np.float32), "fc_w"))
    inits.append(nh.from_array(np.zeros(1000, np.float32), "fc_b"))
    nodes.append(h.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1))
    g = h.make_graph(nodes, "resnet18_like", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 224, 224])],
                     [h.make_tensor_value_info("logits", T.FLOAT, [1, 1000])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def _session(data: bytes | str) -> ort.InferenceSession:
    return ort_session(data, optimize=True, threads=THREADS)


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict]) -> None:
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def _ort_static(proto_path: str, calib_feeds: list[dict], d: str) -> str:
    """ONNX Runtime's own static quantizer on the same samples, per-channel and reduce_range like
    ours on x86 (QDQ, u8 activations, s8 weights); returns the model's path under ``d``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    out = os.path.join(d, "ort_static.onnx")
    quantize_static(proto_path, out, _Reader(calib_feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def _ort_dynamic(proto_path: str, d: str) -> str:
    """ONNX Runtime's quantize_dynamic (per-channel, reduce_range); returns the model's path."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = os.path.join(d, "ort_dynamic.onnx")
    quantize_dynamic(proto_path, out, per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
    return out


def bench(name: str, proto_path: str, calib_feeds: list[dict], feed: dict, repeat: int, out_index: int,
          transformer: bool = False) -> dict:
    res: dict = {}
    variants: dict[str, bytes | str] = {"ort-float": proto_path}
    with tempfile.TemporaryDirectory() as d:
        # Ours: same calibration samples, written as .npz (first axis = samples).
        npz = os.path.join(d, "calib.npz")
        np.savez(npz, **{k: np.concatenate([f[k] for f in calib_feeds]) for k in calib_feeds[0]})
        m = lepton_ir.load(proto_path)
        t0 = time.perf_counter()
        opts = dict(calibration="entropy", min_sqnr=20.0) if transformer else dict(calibration="percentile")
        Quant8(calib=npz, progress=False, **opts).run(m)
        res["lepton_quant8_seconds"] = round(time.perf_counter() - t0, 1)
        variants["lepton-quant8"] = lepton_ir.to_onnx(m).SerializeToString()
        # ONNX Runtime's own static quantizer, same samples, per-channel and reduce_range like ours.
        t0 = time.perf_counter()
        variants["ort-static"] = _ort_static(proto_path, calib_feeds, d)
        res["ort_static_seconds"] = round(time.perf_counter() - t0, 1)
        if transformer:
            dm = lepton_ir.load(proto_path)
            Quant8Dynamic().run(dm)
            variants["lepton-quant8-dynamic"] = lepton_ir.to_onnx(dm).SerializeToString()
            variants["ort-dynamic"] = _ort_dynamic(proto_path, d)
        # All sessions first, then timed in alternating blocks (bench/timing.py): load from other
        # processes hits every variant alike, and no session is timed while another one's
        # threads still spin. (Strict one-call round-robin, used before, let each ORT session's
        # spinning workers slow the next: ORT float on the ResNet read 55 ms instead of 21.)
        from timing import timed_blocks

        sessions = {label: _session(data) for label, data in variants.items()}
        outs = {label: sess.run(None, feed) for label, sess in sessions.items()}
        fns = {label: (lambda sess=sess: sess.run(None, feed)) for label, sess in sessions.items()}
        times = {k: [t / 1000.0 for t in v] for k, v in timed_blocks(fns, repeat, warmup=2).items()}
        ref = outs["ort-float"][out_index]
        for label, data in variants.items():
            data_b = data if isinstance(data, bytes) else Path(data).read_bytes()
            counts = ort_optimized_op_counts(data_b, THREADS)
            y = outs[label][out_index]
            # min_ms too: on a shared machine the fastest run is the least disturbed one.
            item = {"median_ms": round(statistics.median(times[label]) * 1000.0, 3),
                    "min_ms": round(min(times[label]) * 1000.0, 3),
                    "cosine_to_float": round(_cos(ref, y), 5),
                    "integer_kernels": integer_kernel_count(counts), "model_bytes": len(data_b)}
            if name == "resnet18":  # a classifier: does the top class survive?
                item["same_argmax"] = bool(np.argmax(ref) == np.argmax(y))
            res[label] = item
    f = res["ort-float"]["median_ms"]
    fmin = res["ort-float"]["min_ms"]
    for label in variants:
        res[label]["speedup_vs_float"] = round(f / res[label]["median_ms"], 2)
        res[label]["speedup_vs_float_min"] = round(fmin / res[label]["min_ms"], 2)
    res["lepton_vs_ort_static"] = round(res["ort-static"]["median_ms"] / res["lepton-quant8"]["median_ms"], 2)
    res["load_average_1min"] = os.getloadavg()[0]
    return res


def _tvm_vm(model: "lepton_ir.Model", shapes: dict[str, list[int]], integer: bool = True):
    """Compile `model` for the native CPU as tvm-cpu does; return a callable running it.

    integer=False imports the QDQ model without `qdq-to-integer` (tvm-cpu's former pre-lowering:
    lower-fused-to-standard, legalize, canonicalize), the float-compute baseline."""
    import tvm
    from tvm import relax

    from lepton_backends.tvm import lower
    from lepton_backends.tvm.backend import prepare_for_tvm
    from lepton_ir.clone import clone_model
    from lepton_passes import get_pass

    if integer:
        work = prepare_for_tvm(model, shapes)
    else:
        work = clone_model(model)
        lepton_ir.pin_input_shapes(work, shapes)
        for name in ("lower-fused-to-standard", "legalize", "canonicalize"):
            get_pass(name)().run(work)
            work.graph.sort()
    mod = lower.to_relax(lepton_ir.to_onnx(work), shapes, target="native")
    vm = relax.VirtualMachine(lower.build(mod, "native"), tvm.cpu())
    names = [v.name for v in model.graph.inputs if v.name not in model.graph.initializers]

    def run(feed: dict) -> list[np.ndarray]:
        out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(feed[n])) for n in names])
        outs = list(out) if not hasattr(out, "numpy") else [out]
        return [o.numpy() for o in outs]

    return run


def bench_tvm(name: str, proto_path: str, calib_feeds: list[dict], feed: dict, repeat: int, out_index: int,
              transformer: bool = False) -> dict:
    """TVM float vs TVM int8 (and the QDQ float-compute import), ORT float as the anchor."""
    res: dict = {"tvm_threads": int(os.environ["TVM_NUM_THREADS"]), "target": "native", "repeat": repeat}
    shapes = {k: list(v.shape) for k, v in feed.items()}
    with tempfile.TemporaryDirectory() as d:
        npz = os.path.join(d, "calib.npz")
        np.savez(npz, **{k: np.concatenate([f[k] for f in calib_feeds]) for k in calib_feeds[0]})
        fm = lepton_ir.load(proto_path)
        qm = lepton_ir.load(proto_path)
        opts = dict(calibration="entropy", min_sqnr=20.0) if transformer else dict(calibration="percentile")
        Quant8(calib=npz, progress=False, **opts).run(qm)
        models = {"tvm-float": (fm, True), "tvm-int8": (qm, True), "tvm-qdq-float": (qm, False)}
        if transformer:
            dm = lepton_ir.load(proto_path)
            Quant8Dynamic().run(dm)
            # Round trip: quant8-dynamic types its scalar scale/zero point with a tuple shape (),
            # which pin_input_shapes cannot read; the reloaded model has proper types.
            models["tvm-int8-dynamic"] = (lepton_ir.load(lepton_ir.to_onnx(dm)), True)
        fns: dict = {"ort-float": (lambda s=_session(proto_path): s.run(None, feed))}
        # ONNX Runtime's own int8 models in the same timed run: the "no slower than ORT" goal.
        ort_static = _session(_ort_static(proto_path, calib_feeds, d))
        fns["ort-static"] = lambda: ort_static.run(None, feed)
        if transformer:
            ort_dynamic = _session(_ort_dynamic(proto_path, d))
            fns["ort-dynamic"] = lambda: ort_dynamic.run(None, feed)
        for label, (m, integer) in models.items():
            t0 = time.perf_counter()
            fn = _tvm_vm(m, shapes, integer)
            res[f"{label}_compile_s"] = round(time.perf_counter() - t0, 1)
            fns[label] = (lambda fn=fn: fn(feed))
            print(f"[quant_speed] {name}: compiled {label} in {res[f'{label}_compile_s']} s", file=sys.stderr,
                  flush=True)
        outs = {label: fn() for label, fn in fns.items()}
        # Alternating blocks, not single calls: ORT's and TVM's threads spin after a run, so strict
        # interleaving times each runtime while the other still holds a core (bench/timing.py).
        from timing import timed_blocks

        times = {k: [t / 1000.0 for t in v] for k, v in timed_blocks(fns, repeat, warmup=2).items()}
        ref = outs["ort-float"][out_index]
        for label in fns:
            res[label] = {"median_ms": round(statistics.median(times[label]) * 1000.0, 3),
                          "min_ms": round(min(times[label]) * 1000.0, 3),
                          "cosine_to_ort_float": round(_cos(ref, outs[label][out_index]), 5)}
        f = res["tvm-float"]["median_ms"]
        for label in fns:
            res[label]["speedup_vs_tvm_float"] = round(f / res[label]["median_ms"], 2)
        # The integer path's agreement with ORT running the same QDQ model (its integer kernels).
        q_ort = _session(lepton_ir.to_onnx(qm).SerializeToString()).run(None, feed)[out_index]
        res["tvm_int8_vs_ort_static"] = round(res["ort-static"]["median_ms"] / res["tvm-int8"]["median_ms"], 2)
        if transformer:
            res["tvm_int8_dynamic_vs_ort_dynamic"] = round(
                res["ort-dynamic"]["median_ms"] / res["tvm-int8-dynamic"]["median_ms"], 2)
        res["tvm_int8_max_abs_diff_vs_ort_qdq"] = float(np.max(np.abs(outs["tvm-int8"][out_index] - q_ort)))
        res["cpu_flags"] = _cpu_isa()
    res["load_average_1min"] = os.getloadavg()[0]
    return res


def _cpu_isa() -> str:
    """The int8-relevant x86 extensions this CPU has (from /proc/cpuinfo)."""
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    want = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512bw")
    return " ".join(f for f in want if f in flags) or "none of avx2/avx512/vnni"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["resnet18", "ppocr-det", "minilm-l3"])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--calib", type=int, default=16, help="calibration samples")
    ap.add_argument("--tvm", action="store_true", help="also time tvm-cpu float vs int8 (and ORT's own int8 models) in the same run")
    ap.add_argument("--tvm-only", action="store_true", help="only the TVM comparison (skips the ORT variants)")
    args = ap.parse_args()
    results = {"threads": THREADS, "repeat": args.repeat, "onnxruntime": ort.__version__}
    if RESULTS.exists():
        try:
            old = json.loads(RESULTS.read_text())
            # --tvm-only keeps the ORT entries (and the repeat count they were measured with).
            results = {**old, **results} if not args.tvm_only else {**results, **old}
        except ValueError:
            pass
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        for name in args.models:
            if name == "resnet18":
                path = os.path.join(d, "resnet18.onnx")
                onnx.save(resnet18_like(), path)
                # Random weights: any input distribution is as good as another; a fixed one is kept.
                cal = [{"x": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(args.calib)]
                feed = {"x": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
                r = {} if args.tvm_only else bench(name, path, cal, feed, args.repeat, 0)
                if args.tvm or args.tvm_only:
                    r["tvm"] = bench_tvm(name, path, cal, feed, args.repeat, 0)
            elif name == "ppocr-det":
                path = str(corpus.real_model_path(name))
                page = lambda s: {"x": corpus._ppocr_normalise(corpus._text_page(480, 640, np.random.default_rng(s), 6),
                                                              np.random.default_rng(s))[None].astype(np.float32)}
                cal = [page(s) for s in range(args.calib)]
                feed = page(10_000)
                r = {} if args.tvm_only else bench(name, path, cal, feed, args.repeat, 0)
                if args.tvm or args.tvm_only:
                    r["tvm"] = bench_tvm(name, path, cal, feed, args.repeat, 0)
            elif name == "minilm-l3":
                path = str(corpus.real_model_path(name))
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                from quant_accuracy import SENTENCES, _tok

                ids, mask = _tok(SENTENCES[: args.calib], pad_to=64)
                cal = [{"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]} for i in range(len(ids))]
                tid, tmask = _tok([" ".join(SENTENCES[-4:])], pad_to=64)
                feed = {"input_ids": tid[:, :64], "attention_mask": tmask[:, :64]}
                r = {} if args.tvm_only else bench(name, path, cal, feed, args.repeat, 3, transformer=True)
                if args.tvm or args.tvm_only:
                    r["tvm"] = bench_tvm(name, path, cal, feed, args.repeat, 3, transformer=True)
            else:
                raise SystemExit(f"unknown model {name}")
            # A run without --tvm keeps the model's earlier TVM section (and --tvm-only its ORT one).
            keep = results.get(name, {}) if args.tvm_only else {k: v for k, v in results.get(name, {}).items() if k == "tvm"}
            results[name] = {**keep, **r}
            print(f"== {name}")
            for k, v in r.items():
                print(f"  {k:<24} {json.dumps(v)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
