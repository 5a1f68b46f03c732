"""Every real model (plus the digits CNN) compiled with ``tvm-cuda`` for sm_80 and sm_90.

    python bench/cuda_models.py [--archs sm_80,sm_90] [--models a,b] [--timeout 1200]
                                [--json bench/results/cuda_models.json]

Compiling needs nvcc, not a GPU: each artifact must carry device code compiled for exactly its
arch (a fatbin holding the sm_XX cubin and PTX, checked by reading the fatbin's own headers with
``lepton_backends.tvm.cuda.fatbin_archs``) and its manifest must verify (every file hashed).
Running the artifacts needs a GPU machine: ``scripts/cuda_check.sh`` (this host has none).
Prints a table: model, arch, compile seconds, kernels, fatbin archs, status. Each compile runs in a
child process with a time limit so a runaway compile cannot take the sweep down.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import json, sys
import lepton
from lepton_backends.tvm import read_manifest
from lepton_backends.tvm.cuda import fatbin_archs
path, arch, out, shapes, passes = sys.argv[1:6]
lepton.optimize(path, passes=passes, backend="tvm-cuda", target=arch, output=out, input_shapes=json.loads(shapes))
m = read_manifest(out)  # verifies every hash, fatbins included
info = m["extra"]["cuda"]
archs = sorted({a for f in info["kernels"].values() for a in fatbin_archs(open(f"{out}/{f}", "rb").read())["elf"]})
ptx = sorted({a for f in info["kernels"].values() for a in fatbin_archs(open(f"{out}/{f}", "rb").read())["ptx"]})
print(json.dumps({"kernels": len(info["kernels"]), "elf": archs, "ptx": ptx, "device_code": info["device_code"]}))
"""


def _model(name: str) -> tuple[Path, dict[str, list[int]], str]:
    from lepton_ir.testing import corpus

    if name == "digits":
        return corpus.digits_model_path(), {"image": [1, 1, 8, 8]}, "canonicalize"
    shapes = {k: list(v.shape) for k, v in corpus.tvm_feeds(name, corpus.realistic_inputs(name, batch=1)).items()}
    return corpus.real_model_path(name), shapes, corpus.tvm_passes(name)


def main() -> int:
    from lepton_ir.testing import corpus
    from lepton_backends.tvm.cuda import nvcc_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="sm_80,sm_90")
    ap.add_argument("--models", default=",".join(["digits", *corpus.REAL_MODELS]))
    ap.add_argument("--timeout", type=float, default=1200, help="per-compile limit in seconds")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON here")
    args = ap.parse_args()
    if nvcc_path() is None:
        print("cuda_models: nvcc not found (install the CUDA toolkit); tvm-cuda needs it", file=sys.stderr)
        return 2
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lepton-cuda-bench-") as tmp:
        for name in args.models.split(","):
            path, shapes, passes = _model(name)
            for arch in args.archs.split(","):
                out = Path(tmp) / f"{name}-{arch}"
                row = {"model": name, "arch": arch, "compile_s": None, "kernels": None, "elf": None, "ptx": None,
                       "status": ""}
                t0 = time.perf_counter()
                try:
                    p = subprocess.run([sys.executable, "-c", _CHILD, str(path), arch, str(out), json.dumps(shapes),
                                        passes], capture_output=True, text=True, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    row.update(compile_s=round(time.perf_counter() - t0, 1), status=f"timed out ({args.timeout:.0f} s)")
                    rows.append(row)
                    print(f"[cuda_models] {name} {arch}: {row['status']}", flush=True)
                    continue
                row["compile_s"] = round(time.perf_counter() - t0, 1)
                res = next((json.loads(ln) for ln in reversed(p.stdout.splitlines()) if ln.startswith("{")), None)
                if p.returncode != 0 or res is None:
                    why = [ln for ln in p.stderr.splitlines() if ln.strip() and "Warning" not in ln]
                    row["status"] = "FAIL: " + (why[-1] if why else f"exit {p.returncode}")[:120]
                else:
                    row.update(kernels=res["kernels"], elf=res["elf"], ptx=res["ptx"])
                    good = res["device_code"] == "fatbin" and res["elf"] == [arch] and res["ptx"] == [arch]
                    row["status"] = "ok" if good else "WRONG ARCH"
                rows.append(row)
                print(f"[cuda_models] {name} {arch}: {row['status']} ({row['compile_s']} s)", flush=True)
    print()
    print("| model | arch | compile s | kernels | cubin archs | PTX archs | status |")
    print("|---|---|---:|---:|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['arch']} | {r['compile_s']} | {r['kernels'] if r['kernels'] is not None else '-'} | "
              f"{','.join(r['elf'] or []) or '-'} | {','.join(r['ptx'] or []) or '-'} | {r['status']} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if rows and all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
