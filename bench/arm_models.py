"""Every real model (plus the digits CNN) compiled with tvm-arm and run on the emulated aarch64 device.

    python bench/arm_models.py [--targets cortex-a72,neoverse-n1] [--port 9095] [--models a,b] [--repeat 3]

Prints a table: emulator set-up time (cold = image build + start, cached = start only), per model
and target the cross-compile time, device run time (median of --repeat after 1 warm-up, timed on
the device: emulated, ~25x slower than a real board, so NOT ARM performance), and the max abs error
against ONNX Runtime on the host. A model TVM cannot compile is listed with the reason.
`--cold` rebuilds the image first (`lepton-device build --force`, ~60-110 s).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _inputs(name: str):
    from lepton_ir.testing import corpus

    if name == "digits":
        x, _ = corpus.digits_dataset("test")
        return corpus.digits_model_path(), {"image": np.ascontiguousarray(x[:1], dtype=np.float32)}
    return corpus.real_model_path(name), corpus.realistic_inputs(name, batch=1)


def main() -> int:
    from lepton_ir.testing import corpus

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="cortex-a72,neoverse-n1")
    ap.add_argument("--models", default=",".join(["digits", *corpus.REAL_MODELS]))
    ap.add_argument("--port", type=int, default=9095)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--session-timeout", type=float, default=300, help="end a device session after this many s")
    ap.add_argument("--cold", action="store_true", help="rebuild the device image first and time it")
    ap.add_argument("--compile-timeout", type=float, default=900, help="skip a model whose compile takes longer (s)")
    args = ap.parse_args()

    import onnxruntime as ort

    import lepton
    from lepton import device
    from lepton.remote import RemoteRunner

    rows = []
    if args.cold:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lepton.device", "build", "--force"], check=True)
        print(f"emulator image build (cold): {time.perf_counter() - t0:.1f} s", flush=True)
    already = device.server_info(args.port) is not None
    t0 = time.perf_counter()
    with device.EmulatorLease(port=args.port) as (host, port):
        setup = time.perf_counter() - t0
        print(f"emulator start ({'already running' if already else 'cached image'}): {setup:.1f} s", flush=True)
        work = Path(tempfile.mkdtemp(prefix="lepton-arm-bench-"))
        for name in args.models.split(","):
            try:
                path, inputs = _inputs(name)
            except FileNotFoundError:
                rows.append((name, "-", "-", "-", "-", "not fetched"))
                continue
            so = ort.SessionOptions()
            so.log_severity_level = 3
            ref = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, inputs)
            for target in args.targets.split(","):
                out = work / f"{name}-{target}"
                t0 = time.perf_counter()
                # In a child process so a compile that runs away can be cut off.
                code = ("import lepton, json, sys; lepton.optimize(sys.argv[1], passes='canonicalize', "
                        "backend='tvm-arm', target=sys.argv[2], output=sys.argv[3], "
                        "input_shapes=json.loads(sys.argv[4]))")
                import json

                shapes = json.dumps({k: list(v.shape) for k, v in inputs.items()})
                try:
                    p = subprocess.run([sys.executable, "-c", code, str(path), target, str(out), shapes],
                                       capture_output=True, text=True, timeout=args.compile_timeout)
                except subprocess.TimeoutExpired:
                    rows.append((name, target, f">{args.compile_timeout:.0f}", "-", "-", "compile timed out"))
                    continue
                tc = time.perf_counter() - t0
                if p.returncode != 0:
                    why = [ln for ln in p.stderr.splitlines() if ln.strip() and "Warning" not in ln]
                    rows.append((name, target, f"{tc:.1f}", "-", "-", (why[-1] if why else "failed")[:90]))
                    continue
                try:
                    with RemoteRunner(out, rpc=f"{host}:{port}", session_timeout=args.session_timeout) as r:
                        got = r.run(inputs)
                        stats = r.benchmark(inputs, repeat=args.repeat, warmup=1)
                except Exception as e:  # noqa: BLE001
                    rows.append((name, target, f"{tc:.1f}", "-", "-", str(e).splitlines()[-1][:90]))
                    continue
                err = max((float(np.max(np.abs(g.astype(np.float64) - w))) if g.size else 0.0)
                          for g, w in zip(got.values(), ref))
                ok = all(np.allclose(g, w, rtol=1e-3, atol=1e-4) for g, w in zip(got.values(), ref))
                rows.append((name, target, f"{tc:.1f}", f"{stats['median_ms']:.1f}", f"{err:.3g}",
                             "ok" if ok else "MISMATCH"))
                print("  " + " | ".join(rows[-1]), flush=True)
    print()
    print("| model | target | compile s | device ms (emulated) | max abs err | status |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
