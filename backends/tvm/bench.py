"""Untuned TVM vs ONNX Runtime on a ResNet-18-like convnet (random weights, 1x3x224x224).

Run: ``TVM_NUM_THREADS=2 python -m lepton_backends.tvm.bench [--threads 2] [--naive]``

Both engines get the same thread count; runs alternate between engines in rounds so load from
other processes on a shared machine hits both alike. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison; returns (and prints) the result dict."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=4)
    ap.add_argument("--target", default="native")
    ap.add_argument("--naive", action="store_true", help="also time TVM without schedules (slow)")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts

    import numpy as np
    import tvm

    from lepton_ir.reference import ort_session, random_inputs

    from . import lower, testing
    from .targets import resolve_target

    model = testing.resnet18_like()
    x = random_inputs([{"name": "input", "dtype": "float32", "shape": [1, 3, 224, 224]}])["input"]
    # Optimized: this is a speed comparison with ONNX Runtime as users run it.
    sess = ort_session(model, optimize=True, threads=args.threads)
    ref = sess.run(None, {"input": x})[0]

    target = resolve_target(args.target)
    mod = lower.to_relax(model)
    engines = {"ort": lambda: sess.run(None, {"input": x})}
    result: dict = {"threads": args.threads, "target": str(target)}
    modes = ["auto"] + (["none"] if args.naive else [])
    for mode in modes:
        t0 = time.perf_counter()
        ex = lower.build(mod, target, schedule=mode)
        result[f"tvm_{mode}_compile_s"] = round(time.perf_counter() - t0, 2)
        vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
        xt = tvm.runtime.tensor(x)
        out = vm["main"](xt).numpy()
        result[f"tvm_{mode}_max_abs_err"] = float(np.abs(out - ref).max())
        engines[f"tvm_{mode}"] = (lambda f, a: (lambda: f(a)))(vm["main"], xt)

    times: dict[str, list[float]] = {k: [] for k in engines}
    for f in engines.values():
        f()  # warm-up
    for _ in range(args.rounds):
        for name, f in engines.items():
            n = 1 if name == "tvm_none" else args.per_round
            for _ in range(n):
                t0 = time.perf_counter()
                f()
                times[name].append((time.perf_counter() - t0) * 1e3)
    for name, ts in times.items():
        result[f"{name}_median_ms"] = round(float(np.median(ts)), 2)
        result[f"{name}_min_ms"] = round(float(np.min(ts)), 2)
    # Both statistics: on a shared, loaded machine the minimum is the steadier of the two.
    for mode in modes:
        for stat in ("median", "min"):
            result[f"ratio_tvm_{mode}_over_ort_{stat}"] = round(
                result[f"tvm_{mode}_{stat}_ms"] / result[f"ort_{stat}_ms"], 2
            )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
