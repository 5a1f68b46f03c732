"""`--check` (the differential instrument) with fused pipelines on every real model.

For each model (the shipped digits CNN and every cached real model, `lepton_ir.testing.corpus`)
and each pipeline (`fuse`, `fuse,quant8`, `fuse,fp16`), runs `lepton.optimize(..., check=True)`
with realistic inputs for the ONNX Runtime runs (`corpus.realistic_inputs`, seed 0; digits: test
images) and, for quant8, calibration on 8 other realistic samples (a folder of .npz files, seeds
1..8; digits: the calib split). Models below opset 13 are converted to opset 13 first
(`onnx.version_converter`, what quant8's error asks for: ppocr-rec's Squeeze). Prints one line
per run and writes bench/results/check_models.json.

    python bench/check_models.py [MODEL ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import lepton
from lepton_ir import LeptonError
from lepton_ir.testing import corpus

PIPELINES = ("fuse", "fuse,quant8", "fuse,fp16")
RESULTS = Path(__file__).resolve().parent / "results" / "check_models.json"


def model_and_data(name: str, calib_dir: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The model's path and its check inputs; calibration samples written to `calib_dir`."""
    calib_dir.mkdir(parents=True, exist_ok=True)
    if name == "digits":
        x, _ = corpus.digits_dataset("test")
        cx, _ = corpus.digits_dataset("calib")
        for i in range(8):
            np.savez(calib_dir / f"s{i:02d}.npz", image=cx[i:i + 1])
        return corpus.digits_model_path(), {"image": x[:4]}
    for i in range(8):
        np.savez(calib_dir / f"s{i:02d}.npz", **corpus.realistic_inputs(name, seed=i + 1))
    path = corpus.real_model_path(name)
    import onnx

    proto = onnx.load(str(path))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:  # quant8 needs opset 13 (per-axis DequantizeLinear): convert, as its error says
        from onnx import version_converter

        path = calib_dir.parent / f"{name}-opset13.onnx"
        onnx.save(version_converter.convert_version(proto, 13), str(path))
    return path, corpus.realistic_inputs(name, seed=0)


def check(name: str, pipeline: str, tmp: Path) -> dict[str, object]:
    calib = tmp / f"calib-{name}"
    path, inputs = model_and_data(name, calib)
    passes = pipeline.replace("quant8", f'quant8{{calib="{calib}",progress=false}}')
    t0 = time.perf_counter()
    try:
        r = lepton.optimize(str(path), passes=passes, check=True, check_inputs=inputs)
        ok, msg = True, f"{r.nodes_before} -> {r.nodes_after} nodes"
    except LeptonError as e:
        ok, msg = False, " ".join(str(getattr(e, "summary", None) or e).split())[:300]
    return {"model": name, "pipeline": pipeline, "ok": ok, "detail": msg, "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str]) -> int:
    names = argv or ["digits"] + [n for n in corpus.REAL_MODELS if _cached(n)]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            for pipeline in PIPELINES:
                row = check(name, pipeline, Path(d))
                rows.append(row)
                print(f"{name:<18} {pipeline:<12} {'ok' if row['ok'] else 'FAIL'}  {row['seconds']:>6.1f}s  {row['detail']}",
                      flush=True)
    if not argv:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


def _cached(name: str) -> bool:
    try:
        corpus.real_model_path(name)
        return True
    except corpus.ModelNotFetchedError:
        return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
