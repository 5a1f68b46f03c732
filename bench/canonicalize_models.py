"""Canonicalize the real models: node counts, outputs against ONNX Runtime, TVM importer acceptance.

    python bench/canonicalize_models.py [--no-tvm] [names...]

For each real model (see lepton_ir.testing.corpus) and the shipped digits model:
run `canonicalize`, export (lepton_ir.to_onnx), and compare ONNX Runtime outputs with the original
model on realistic inputs (rtol 1e-4, atol 1e-5). Then ask TVM's own ONNX importer
(`tvm.relax.frontend.onnx.from_onnx`) to import the model as shipped, and after `canonicalize`
with input shapes pinned to the realistic inputs (`--input-shape`). Exits non-zero if any output mismatches.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import onnx

import lepton_ir
from lepton_ir.testing.corpus import (REAL_MODELS, digits_dataset, digits_model_path, onnx_data_models, real_model_path,
                                      realistic_inputs)
from lepton_ir.reference import run_ort
from lepton_passes.base import get_pass

RTOL, ATOL = 1e-4, 1e-5


def _models(names: list[str]):
    for name in names or ["digits", *REAL_MODELS, "light"]:
        if name == "digits":
            x, _ = digits_dataset("test")
            yield name, digits_model_path(), {"image": x[:8]}
        elif name == "light":  # the ONNX "light" model zoo shipped in the onnx wheel
            for lname, path, inputs, _ in onnx_data_models():
                if lname.startswith("light/"):
                    g = onnx.load(str(path), load_external_data=False).graph
                    inits = {t.name for t in g.initializer}
                    names_ = [i.name for i in g.input if i.name not in inits]
                    yield lname.split("/", 1)[1], path, dict(zip(names_, inputs))
        else:
            yield name, real_model_path(name), realistic_inputs(name)


def _tvm_imports(proto: onnx.ModelProto, shapes: dict) -> str:
    """'ok' if TVM's ONNX importer accepts the model, else the first line of its error."""
    from tvm.relax.frontend.onnx import from_onnx

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from_onnx(proto, shape_dict=shapes, keep_params_in_input=False)
        return "ok"
    except Exception as e:  # the importer raises many kinds; the message is what we report
        msg = (str(e).strip().splitlines() or [type(e).__name__])[-1]
        return f"fails ({type(e).__name__}: {msg[:80]})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--no-tvm", action="store_true", help="skip the TVM importer check")
    args = ap.parse_args(argv)
    bad = 0
    print(f"{'model':<22} {'nodes':>6} {'->':>2} {'after':>6} {'max abs err':>12} {'ok':>3} {'secs':>5}"
          + ("  TVM import: shipped / canonicalized" if not args.no_tvm else ""))
    for name, path, inputs in _models(args.names):
        t0 = time.time()
        model = lepton_ir.load(path)
        before = sum(1 for _ in model.graph.all_nodes())
        # As `lepton-opt --passes canonicalize --backend onnx` does: the model keeps its dynamic
        # dims (pinning is for backends that need static shapes, checked with TVM below).
        get_pass("canonicalize")().run(model)
        model.verify()
        after = sum(1 for _ in model.graph.all_nodes())
        proto = lepton_ir.to_onnx(model)
        ref = run_ort(path, inputs, optimize=True, threads=2)
        got = run_ort(proto, inputs, optimize=True, threads=2)
        err = 0.0
        ok = len(ref) == len(got)
        for a, b in zip(ref, got):
            a, b = np.asarray(a), np.asarray(b)
            ok &= a.shape == b.shape and a.dtype == b.dtype
            if a.size and a.shape == b.shape:
                err = max(err, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
                ok &= bool(np.allclose(a, b, rtol=RTOL, atol=ATOL))
        bad += not ok
        line = f"{name:<22} {before:>6} {'->':>2} {after:>6} {err:>12.3g} {'yes' if ok else 'NO':>3} {time.time() - t0:>5.1f}"
        if not args.no_tvm:
            shapes = {k: list(v.shape) for k, v in inputs.items()}
            pinned = lepton_ir.load(path)
            lepton_ir.pin_input_shapes(pinned, shapes)
            get_pass("canonicalize")().run(pinned)
            line += f"  {_tvm_imports(onnx.load(str(path)), shapes)} / {_tvm_imports(lepton_ir.to_onnx(pinned), shapes)}"
        print(line, flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
