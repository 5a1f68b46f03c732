"""Every real model (plus the digits CNN) compiled with tvm-arm and run on the emulated aarch64 device.

    python bench/arm_models.py [--targets cortex-a72,neoverse-n1] [--via rpc,tracker] [--port 9095]
                               [--models a,b] [--repeat 3] [--json bench/results/arm_models.json]

Each artifact runs over a direct RPC connection (``--via rpc``) and through an RPC tracker
(``--via tracker``: a host ``tvm.exec.rpc_tracker`` on loopback, the emulated server registered
under a key, ``RemoteRunner(tracker=..., key=...)`` asking the tracker for it; the emulated server
is restarted per artifact because TVM's server re-registers with the tracker late after a session).

Prints a table: emulator set-up time (cold = image build + start, cached = start only), per model
and target the cross-compile time, device run time (median of --repeat after 1 warm-up, timed on
the device: emulated, ~25x slower than a real board, so NOT ARM performance), and the max abs error
against ONNX Runtime on the host. A model TVM cannot compile is listed with the reason.
`--cold` rebuilds the image first (`lepton-device build --force`, ~60-110 s).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvm_models import judge  # noqa: E402  (same comparison as the tvm-cpu sweep)


def _inputs(name: str):
    from lepton_ir.testing import corpus

    if name == "digits":
        x, _ = corpus.digits_dataset("test")
        return corpus.digits_model_path(), {"image": np.ascontiguousarray(x[:1], dtype=np.float32)}
    return corpus.real_model_path(name), corpus.realistic_inputs(name, batch=1)


def _feeds_and_pipeline(name: str, inputs: dict) -> tuple[dict, str]:
    """Inputs the artifact takes (bound ones removed) and the passes to compile with."""
    from lepton_ir.testing import corpus

    if name == "digits":
        return inputs, "canonicalize"
    return corpus.tvm_feeds(name, inputs), corpus.tvm_passes(name)


def _run_remote(art: Path, inputs: dict, how: dict, repeat: int, session_timeout: float):
    from lepton.remote import RemoteRunner

    with RemoteRunner(art, session_timeout=session_timeout, **how) as r:
        got = r.run(inputs)
        stats = r.benchmark(inputs, repeat=repeat, warmup=1)
    return got, stats


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
    ap.add_argument("--via", default="rpc,tracker", help="rpc, tracker or both (default)")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    args = ap.parse_args()
    vias = [v for v in args.via.split(",") if v]
    if not set(vias) <= {"rpc", "tracker"}:
        ap.error("--via takes rpc and/or tracker")

    from lepton import device
    from lepton_ir.reference import run_ort

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
                rows.append((name, "-", "-", "-", "-", "-", "not fetched"))
                continue
            ref = run_ort(path, inputs, optimize=True)
            feeds, passes = _feeds_and_pipeline(name, inputs)
            for target in args.targets.split(","):
                out = work / f"{name}-{target}"
                t0 = time.perf_counter()
                # In a child process so a compile that runs away can be cut off.
                code = ("import lepton, json, sys; lepton.optimize(sys.argv[1], passes=sys.argv[5], "
                        "backend='tvm-arm', target=sys.argv[2], output=sys.argv[3], "
                        "input_shapes=json.loads(sys.argv[4]))")
                shapes = json.dumps({k: list(v.shape) for k, v in feeds.items()})
                try:
                    p = subprocess.run([sys.executable, "-c", code, str(path), target, str(out), shapes, passes],
                                       capture_output=True, text=True, timeout=args.compile_timeout)
                except subprocess.TimeoutExpired:
                    rows.append((name, target, "-", f">{args.compile_timeout:.0f}", "-", "-", "compile timed out"))
                    continue
                tc = time.perf_counter() - t0
                if p.returncode != 0:
                    why = [ln for ln in p.stderr.splitlines() if ln.strip() and "Warning" not in ln]
                    rows.append((name, target, "-", f"{tc:.1f}", "-", "-", (why[-1] if why else "failed")[:90]))
                    continue
                for via in vias:
                    try:
                        if via == "rpc":
                            got, stats = _run_remote(out, feeds, {"rpc": f"{host}:{port}"}, args.repeat,
                                                     args.session_timeout)
                        else:
                            with device.host_tracker() as taddr, \
                                    device.EmulatorLease(port=args.port + 1, tracker=taddr, key="lepton-bench"):
                                got, stats = _run_remote(out, feeds, {"tracker": taddr, "key": "lepton-bench"},
                                                         args.repeat, args.session_timeout)
                    except Exception as e:  # noqa: BLE001
                        rows.append((name, target, via, f"{tc:.1f}", "-", "-", str(e).splitlines()[-1][:90]))
                        continue
                    # rtol 1e-3 / atol 1e-4, or the sensitivity bound for ill-conditioned models
                    err, ok, why = judge(path, inputs, [np.asarray(a) for a in ref], list(got.values()))
                    status = ("ok" if not why else "ok (ill-conditioned, see tvm_models.judge)") if ok else "MISMATCH"
                    rows.append((name, target, via, f"{tc:.1f}", f"{stats['median_ms']:.1f}", f"{err:.3g}", status))
                    print("  " + " | ".join(rows[-1]), flush=True)
    print()
    print("| model | target | via | compile s | device ms (emulated) | max abs err | status |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        keys = ("model", "target", "via", "compile_s", "device_ms", "max_abs_err", "status")
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([dict(zip(keys, r)) for r in rows], indent=1) + "\n")
    return 0 if rows and all(r[-1].startswith("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
