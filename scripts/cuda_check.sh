#!/usr/bin/env bash
# Run tvm-cuda artifacts on this machine's GPU and compare them with ONNX Runtime (CPU).
#
#   scripts/cuda_check.sh [ARCH] [MODEL ...]     # ARCH default: from the GPU (sm_80 on A100, sm_90 on H100/H200)
#
# Compiles each model (digits CNN + cached real models that tvm-cpu compiles) with
# `--backend tvm-cuda --target ARCH` (needs nvcc here: it builds the fatbins), then loads every
# artifact with lepton_backends.tvm.cuda.load_cuda_artifact, which hands TVM the precompiled
# fatbins (no NVRTC/nvcc at load), runs it, times it (median of 20 after 3 warm-up) and compares
# with ONNX Runtime (rtol 1e-3, atol 1e-4). Exit 0 when every model matches. Also runs the GPU test
# of tests/backends/test_tvm_cuda.py.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH="${1:-auto}"; shift || true
OUT="${CUDA_CHECK_OUT:-$(mktemp -d /tmp/lepton-cuda-check.XXXXXX)}"
python - "$ARCH" "$OUT" "$@" <<'PY'
import sys, time
import numpy as np, onnxruntime as ort, tvm
import lepton
from lepton_ir.testing import corpus
from lepton_backends.tvm.cuda import load_cuda_artifact

arch, out, names = sys.argv[1], sys.argv[2], sys.argv[3:] or ["digits", "magika", "ppocr-cls", "silero-vad-ifless"]
dev = tvm.cuda(0)
if not dev.exist:
    sys.exit("cuda_check: no CUDA GPU visible to TVM")
if arch == "auto":
    arch = "sm_" + str(dev.compute_version).replace(".", "")
    arch = arch if arch in ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90") else "sm_80"
print(f"GPU: {dev.device_name} (compute {dev.compute_version}); target {arch}; artifacts in {out}")
bad = 0
print(f"{'model':20} {'compile s':>9} {'gpu ms':>9} {'ort cpu ms':>10} {'max abs err':>11}  ok")
for name in names:
    if name == "digits":
        x, _ = corpus.digits_dataset("test")
        path, inputs = corpus.digits_model_path(), {"image": np.ascontiguousarray(x[:1], np.float32)}
    else:
        try:
            path, inputs = corpus.real_model_path(name), corpus.realistic_inputs(name, batch=1)
        except FileNotFoundError:
            print(f"{name:20} not fetched (python -m lepton_ir.testing.corpus fetch {name})"); continue
    t0 = time.perf_counter()
    lepton.optimize(str(path), passes="canonicalize", backend="tvm-cuda", target=arch, output=f"{out}/{name}",
                    input_shapes={k: list(v.shape) for k, v in inputs.items()})
    tc = time.perf_counter() - t0
    r = load_cuda_artifact(f"{out}/{name}")
    got = r.run(inputs)
    gpu = r.benchmark(inputs, repeat=20, warmup=3)["median_ms"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, inputs)
    t = []
    for i in range(23):
        t0 = time.perf_counter(); sess.run(None, inputs); t.append((time.perf_counter() - t0) * 1e3)
    err, ok = 0.0, True
    for g, w in zip(got.values(), want):
        err = max(err, float(np.max(np.abs(g.astype(np.float64) - w))) if g.size else 0.0)
        ok = ok and np.allclose(g, w, rtol=1e-3, atol=1e-4)
    bad += not ok
    print(f"{name:20} {tc:9.1f} {gpu:9.3f} {np.median(t[3:]):10.3f} {err:11.3g}  {'yes' if ok else 'NO'}")
sys.exit(1 if bad else 0)
PY
python -m pytest tests/backends/test_tvm_cuda.py -q -m gpu -p no:cacheprovider
