"""quant8 models of the real corpus on the emulated aarch64 device against the host's int8 result.

    python bench/quant_arm.py [--models magika,minilm-l3,ppocr-cls,ppocr-det]
                              [--targets cortex-a72,neoverse-n1] [--calib 8] [--port 9096]
                              [--json bench/results/quant_arm.json]

Each model is quantized once with `quant8` (defaults: x86 settings, u8 activations, 7-bit weights;
calibrated on `--calib` realistic inputs from lepton_ir.testing.corpus, seeds 1..N), then

* compiled with tvm-cpu for this host and run here (AVX2 int8 kernels where they apply), and
* compiled with tvm-arm for each target and run on the emulated device over RPC: Cortex-A72 has no
  dotprod (generic int8 path), Neoverse-N1 has it (`sdot` kernels; the count of sdot instructions
  in its library is reported),

on a realistic input (seed 0), and the device outputs are compared with the host's: max abs
difference, and that difference in units of the output's quantization step when the output comes
out of a DequantizeLinear. Integer compute is exact on both sides; the float requantization steps
(Cast, Mul by the scale, QuantizeLinear's rounding) may round differently across ISAs, which moves
a value by at most one step at a rounding boundary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("LEPTON_NO_PROGRESS", "1")


def _quantize(name: str, calib: int, work: Path):
    import lepton_ir
    from lepton_ir.testing import corpus
    from lepton_passes.quant import Quant8

    # One .npz per sample (a folder): realistic inputs differ in length between seeds (tokens).
    folder = work / f"{name}-calib"
    folder.mkdir()
    for s in range(1, calib + 1):
        np.savez(folder / f"{s:03d}.npz", **corpus.realistic_inputs(name, batch=1, seed=s))
    m = lepton_ir.load(str(corpus.real_model_path(name)))
    Quant8(calib=str(folder), progress=False).run(m)
    path = work / f"{name}-q8.onnx"
    lepton_ir.save(m, str(path))
    return m, path


def _output_steps(model) -> list[float | None]:
    """Per graph output, the scale of the DequantizeLinear producing it (None for float outputs)."""
    from lepton_passes.util import constant_value

    steps = []
    for out in model.graph.outputs:
        p = out.producer()
        scale = constant_value(p.inputs[1]) if p is not None and p.op_type == "DequantizeLinear" else None
        steps.append(float(np.asarray(scale).reshape(-1)[0]) if scale is not None and np.size(scale) == 1 else None)
    return steps


def _compile(path: Path, backend: str, target: str, out: Path, passes: str, shapes: dict) -> float:
    import lepton

    t0 = time.perf_counter()
    lepton.optimize(str(path), passes=passes, backend=backend, target=target, output=str(out), input_shapes=shapes)
    return time.perf_counter() - t0


def _sdot_count(lib: Path) -> int | None:
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if not objdump:
        return None
    asm = subprocess.run([objdump, "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in asm.splitlines() if "\tsdot\t" in line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="magika,minilm-l3,ppocr-cls,ppocr-det")
    ap.add_argument("--targets", default="cortex-a72,neoverse-n1")
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--port", type=int, default=9096)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "quant_arm.json"))
    args = ap.parse_args()

    from lepton import device
    from lepton.remote import RemoteRunner
    from lepton_backends.tvm import load_artifact
    from lepton_ir.testing import corpus

    work = Path(tempfile.mkdtemp(prefix="lepton-quant-arm-"))
    rows = []
    with device.EmulatorLease(port=args.port) as (host, port):
        for name in args.models.split(","):
            model, qpath = _quantize(name, args.calib, work)
            steps = _output_steps(model)
            inputs = corpus.realistic_inputs(name, batch=1, seed=0)
            feeds = corpus.tvm_feeds(name, inputs)
            passes = corpus.tvm_passes(name)
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            hc = _compile(qpath, "tvm-cpu", "native", work / f"{name}-host", passes, shapes)
            host_out = list(load_artifact(work / f"{name}-host").run(feeds).values())
            print(f"[quant_arm] {name}: host int8 compiled in {hc:.1f} s", file=sys.stderr, flush=True)
            for target in args.targets.split(","):
                art = work / f"{name}-{target}"
                tc = _compile(qpath, "tvm-arm", target, art, passes, shapes)
                with RemoteRunner(art, rpc=f"{host}:{port}", session_timeout=600) as r:
                    t0 = time.perf_counter()
                    dev_out = list(r.run(feeds).values())
                    run_s = time.perf_counter() - t0
                diffs = [float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                         if np.size(a) else 0.0 for a, b in zip(dev_out, host_out)]
                in_steps = [d / s if s else None for d, s in zip(diffs, steps)]
                bit_exact = all(np.array_equal(a, b) for a, b in zip(dev_out, host_out))
                row = {"model": name, "target": target, "compile_s": round(tc, 1), "device_run_s": round(run_s, 2),
                       "max_abs_diff": max(diffs), "diff_in_output_steps": in_steps, "bit_exact": bit_exact,
                       "sdot_instructions": _sdot_count(art / "model.so")}
                rows.append(row)
                print(f"[quant_arm] {json.dumps(row)}", file=sys.stderr, flush=True)

    print(f"{'model':<12} {'target':<12} {'compile s':>9} {'run s':>6} {'max |dev - host|':>17} "
          f"{'in output steps':>16} {'bit-exact':>9} {'sdot':>5}")
    for r in rows:
        st = ", ".join("-" if s is None else f"{s:.2f}" for s in r["diff_in_output_steps"])
        print(f"{r['model']:<12} {r['target']:<12} {r['compile_s']:>9} {r['device_run_s']:>6} "
              f"{r['max_abs_diff']:>17.3g} {st:>16} {str(r['bit_exact']):>9} {str(r['sdot_instructions']):>5}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
