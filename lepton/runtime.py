"""Loading compiled artifacts back: `lepton.load(folder)` -> a runner with `run({name: array})`.

For now only `onnx` artifacts (ONNX Runtime, CPU). The manifest's sha256 of each file is checked
before the model is handed to ONNX Runtime, so a truncated or edited artifact is an error, not a
silent wrong answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lepton_backends import MANIFEST, sha256_file
from lepton_ir import LeptonError, ModelLoadError


def _feed(v: Any) -> Any:
    """Tensors as arrays; sequences (lists) and absent optionals (None) as they are, ORT takes both."""
    return v if isinstance(v, list) or v is None else np.asarray(v)


class OrtRunner:
    """Runs an `onnx` artifact with ONNX Runtime."""

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        import onnxruntime as ort

        self.folder = folder
        self.manifest = manifest
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / manifest.get("entry", "model.onnx")), so,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for inputs by name (missing or unknown names are an error)."""
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise LeptonError(f"inputs do not match the model: missing {missing or 'none'}, unknown {extra or 'none'}; "
                              f"expected {self.input_names}")
        try:
            outs = self.session.run(None, {k: _feed(v) for k, v in inputs.items()})
        except Exception as e:  # ORT's messages for bad dtypes/shapes are user errors here
            raise LeptonError(f"ONNX Runtime failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        return dict(zip(self.output_names, outs))

    __call__ = run


def load(artifact: str | os.PathLike, *, rpc: str | None = None, tracker: str | None = None,
         key: str | None = None) -> Any:
    """Open an artifact folder written by a backend and return a runner for it.

    With `rpc="HOST:PORT"` (or `tracker=` and `key=`), the artifact runs on a remote device over
    TVM RPC (e.g. the emulated board of `lepton-device emulate`).
    """
    if rpc is not None or tracker is not None:
        from .remote import load as remote_load

        return remote_load(artifact, rpc=rpc, tracker=tracker, key=key)
    folder = Path(artifact)
    mf = folder / MANIFEST
    if not folder.is_dir() or not mf.is_file():
        raise ModelLoadError(f"{folder}: not a Lepton artifact folder (no {MANIFEST})")
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{mf}: unreadable manifest ({e})") from None
    for name, digest in manifest.get("files", {}).items():
        p = folder / name
        if Path(name).name != name or not p.is_file():
            raise ModelLoadError(f"{folder}: file {name!r} listed in the manifest is missing")
        if sha256_file(p) != digest:
            raise ModelLoadError(f"{folder}: {name} does not match its sha256 in the manifest (modified or truncated)")
    backend = manifest.get("backend")
    if backend == "onnx":
        return OrtRunner(folder, manifest)
    if backend == "tvm-cpu":
        from lepton_backends.tvm import ArtifactError, InputError, load_artifact

        try:
            return _TvmRunner(load_artifact(folder))
        except (ArtifactError, InputError) as e:
            raise ModelLoadError(f"{folder}: {e}") from None
    raise ModelLoadError(f"{folder}: artifacts of backend {backend!r} cannot be loaded (known: onnx, tvm-cpu)")


class _TvmRunner:
    """A TVM artifact runner with the same user-error contract as OrtRunner."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.manifest = runner.manifest
        self.input_names = [i["name"] for i in runner.manifest["inputs"]]
        self.output_names = [o["name"] for o in runner.manifest["outputs"]]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from lepton_backends.tvm import InputError

        try:
            return self.runner.run(inputs)
        except InputError as e:
            raise LeptonError(str(e)) from None

    __call__ = run

    def benchmark(self, inputs: Mapping[str, np.ndarray], repeat: int = 20, warmup: int = 3) -> dict[str, float]:
        return self.runner.benchmark(inputs, repeat=repeat, warmup=warmup)
