"""TVM stages of Lepton artifacts: ``model.so`` (a Relax VM executable) in an artifact folder.

The folder format, the atomic writer and the verifying reader are ``lepton_backends.artifact``'s,
shared by every backend; this module writes the library and the stage's manifest entry
(:func:`fill_artifact_dir`), reads single-stage TVM artifacts (:func:`read_manifest`,
:func:`load_artifact`) and runs them on this machine's CPU (:class:`Runner`). Loading verifies
every sha256 before the library is opened, so a tampered or truncated file is refused before any
of its code runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from lepton_ir import ModelLoadError

from lepton_backends.artifact import MANIFEST, MANIFEST_SHA, jsonable as _jsonable, sha256_file  # noqa: F401

LIBRARY = "model.so"
#: Registry names of the TVM backends, by what the target is (a CUDA artifact says it is CUDA).
TVM_BACKENDS = ("tvm-cpu", "tvm-arm", "tvm-cuda")


class ArtifactError(ModelLoadError, RuntimeError):
    """A missing, malformed or tampered artifact. A ModelLoadError (so a LeptonError: one line
    from the CLIs, never a traceback); still a RuntimeError for callers that caught it as one."""


class InputError(ValueError):
    """Inputs given to :meth:`Runner.run` do not match the artifact's input specs."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of a model input/output. Symbolic dims are strings."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON form used in the manifest."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TensorSpec":
        """Inverse of :meth:`to_json`."""
        return cls(str(d["name"]), str(d["dtype"]), tuple(d["shape"]))


SpecLike = TensorSpec | Mapping[str, Any]


def _spec(s: SpecLike) -> TensorSpec:
    return s if isinstance(s, TensorSpec) else TensorSpec.from_json(s)


def model_sha256(model: "onnx.ModelProto | bytes | str | os.PathLike") -> str:  # noqa: F821
    """sha256 of an ONNX model: of its serialized bytes, or of the file at a path."""
    if isinstance(model, (str, os.PathLike)):
        return sha256_file(model)
    if isinstance(model, bytes):
        return hashlib.sha256(model).hexdigest()
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def _target_json(target: Any) -> dict[str, Any]:
    if isinstance(target, Mapping):
        return _jsonable(target)
    if isinstance(target, str):
        from .targets import target_dict

        return target_dict(target)
    return _jsonable(target.export())


def backend_for_target(target: Mapping[str, Any]) -> str:
    """The TVM backend name an artifact for `target` (a target dict) belongs to."""
    if target.get("kind") == "cuda":
        return "tvm-cuda"
    triple = str(target.get("mtriple") or "")
    return "tvm-arm" if triple.startswith("aarch64") else "tvm-cpu"


def device_for_target(target: Mapping[str, Any]) -> str:
    """Where a library for `target` runs: this host's CPU, a GPU here, or a remote device (RPC)."""
    if target.get("kind") == "cuda":
        return "cuda"
    return "remote" if _host_can_run(target) else "host"


def fill_artifact_dir(
    directory: Path,
    executable: Any,
    *,
    target: Any,
    model: Any,
    input_specs: Iterable[SpecLike],
    output_specs: Iterable[SpecLike],
    export_cc: Callable[..., Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    tvm_pipeline: str = "",
) -> dict[str, Any]:
    """Write ``model.so`` into ``directory`` and return the stage's manifest entry (the manifest
    itself is written by ``lepton_backends.artifact.write_manifest``, atomically with the rest)."""
    lib_path = directory / LIBRARY
    try:
        if export_cc is not None:
            executable.export_library(str(lib_path), fcompile=export_cc)
        else:
            executable.export_library(str(lib_path))
    except RuntimeError as e:
        # TVM reports a failed link (a full disk, a read-only folder, a missing compiler) as a
        # RuntimeError holding the compiler's whole output: one line of it is what the user needs.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "No space left" in ln or "Read-only" in ln or "Permission denied" in ln),
                   next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "RuntimeError"))
        from lepton_backends.errors import BackendError

        raise BackendError(f"could not write {LIBRARY}: {why[:300]}") from e
    model_info: dict[str, Any]
    if isinstance(model, str):
        model_info = {"name": model}
    else:
        model_info = {
            "name": model.graph.name,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        }
    tdict = _target_json(target)
    stage: dict[str, Any] = {
        "backend": backend_for_target(tdict),
        "entry": LIBRARY,
        "model": model_info,
        "inputs": [_spec(s).to_json() for s in input_specs],
        "outputs": [_spec(s).to_json() for s in output_specs],
        "target": tdict,
        "device": device_for_target(tdict),
        "tvm_pipeline": tvm_pipeline,
    }
    if extra:
        stage["extra"] = _jsonable(dict(extra))
    return stage


def read_manifest(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """The verified manifest of a single-stage TVM artifact, as its stage view (the stage's
    entry with the artifact-wide fields beside it: `target`, `inputs`, `files`, `pipeline`, ...).

    Raises:
        ArtifactError: one line naming the missing, extra or tampered file, or a non-TVM artifact.
    """
    from lepton_backends.artifact import read_manifest as read_any, stage_view
    from lepton_ir import ModelLoadError

    root = Path(path)
    try:
        manifest = read_any(root, verify=verify)
    except ModelLoadError as e:
        raise ArtifactError(str(e)) from None
    stages = manifest["stages"]
    if len(stages) != 1 or stages[0].get("backend") not in TVM_BACKENDS:
        raise ArtifactError(f"artifact {root}: not a single-stage TVM artifact (stages: "
                            f"{[s.get('backend') for s in stages]}); open it with lepton.load")
    return stage_view(manifest, 0)


def _host_can_run(target: Mapping[str, Any]) -> str | None:
    """None if this host can run code for ``target``; else why not."""
    import platform

    if target.get("kind") != "llvm":
        return f"target kind {target.get('kind')!r} needs a GPU runner (only CPU artifacts load here)"
    triple = str(target.get("mtriple") or "")
    machine = platform.machine().lower()
    machine = "aarch64" if machine == "arm64" else machine
    if triple and not triple.startswith(machine):
        return f"artifact was compiled for {triple}, this host is {machine}"
    return None


class Runner:
    """Runs a loaded artifact on the CPU through the Relax VM."""

    def __init__(self, path: Path, manifest: dict[str, Any], vm: Any) -> None:
        self.path = path
        self.manifest = manifest
        self.inputs = [TensorSpec.from_json(d) for d in manifest["inputs"]]
        self.outputs = [TensorSpec.from_json(d) for d in manifest["outputs"]]
        self._vm = vm
        self._main = vm["main"]

    def check_inputs(self, inputs: Mapping[str, Any]) -> list[np.ndarray]:
        """Validate ``inputs`` against the input specs; return arrays in argument order.

        Raises:
            InputError: missing or unexpected names, wrong dtype, rank or static dim.
        """
        want = [s.name for s in self.inputs]
        missing = [n for n in want if n not in inputs]
        extra = sorted(set(inputs) - set(want))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing inputs {missing}")
            if extra:
                parts.append(f"unexpected inputs {extra}")
            raise InputError("; ".join(parts) + f" (model inputs: {want})")
        arrays = []
        bound: dict[str, int] = {}  # a symbolic dim must take one value across all inputs
        for spec in self.inputs:
            a = inputs[spec.name]
            if not isinstance(a, np.ndarray):
                a = np.asarray(a)
            if a.dtype != np.dtype(spec.dtype):
                raise InputError(f"input {spec.name!r}: dtype {a.dtype} does not match {spec.dtype}")
            if a.ndim != len(spec.shape) or any(
                isinstance(d, int) and d != got for d, got in zip(spec.shape, a.shape)
            ):
                raise InputError(f"input {spec.name!r}: shape {list(a.shape)} does not match {list(spec.shape)}")
            for d, got in zip(spec.shape, a.shape):
                # Anonymous dims ("?" sanitised to "_" by TVM, onnx's unk__N) are not one symbol.
                if isinstance(d, str) and d not in ("_", "?", "") and not d.startswith("unk__") \
                        and bound.setdefault(d, got) != got:
                    raise InputError(f"input {spec.name!r}: dim {d}={got} but another input has {d}={bound[d]}")
            # np.ascontiguousarray would turn a 0-d input (e.g. silero's ``sr``) into shape [1].
            arrays.append(a if a.flags.c_contiguous else np.array(a, order="C"))
        return arrays

    def _call(self, arrays: list[np.ndarray]) -> Any:
        import tvm

        dev = tvm.cpu()
        return self._main(*[tvm.runtime.tensor(a, dev) for a in arrays])

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run the model: ``{input name: array}`` -> ``{output name: array}``."""
        result = self._call(self.check_inputs(inputs))
        flat = _flatten(result)
        if len(flat) != len(self.outputs):
            raise ArtifactError(f"model returned {len(flat)} outputs, manifest lists {len(self.outputs)}")
        return {spec.name: t.numpy() for spec, t in zip(self.outputs, flat)}

    def benchmark(self, inputs: Mapping[str, Any], repeat: int = 20, warmup: int = 3) -> dict[str, float]:
        """Time ``repeat`` runs after ``warmup`` runs; inputs are copied to TVM once, outside the timing.

        Returns:
            ``{"median_ms": ..., "p90_ms": ..., "min_ms": ..., "repeat": ...}``.
        """
        import tvm

        if repeat < 1:
            raise ValueError("repeat must be >= 1")
        dev = tvm.cpu()
        args = [tvm.runtime.tensor(a, dev) for a in self.check_inputs(inputs)]
        for _ in range(max(0, warmup)):
            self._main(*args)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            self._main(*args)
            times.append((time.perf_counter() - t0) * 1e3)
        return {
            "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90)),
            "min_ms": float(np.min(times)),
            "repeat": repeat,
        }


class _ShapeValue:
    """A shape the VM returns for an ONNX `Shape` output (a tvm_ffi.Shape), as an int64 tensor."""

    def __init__(self, dims: Any) -> None:
        self.dims = [int(d) for d in dims]

    def numpy(self) -> np.ndarray:
        return np.asarray(self.dims, dtype=np.int64)


def _flatten(result: Any) -> list[Any]:
    if hasattr(result, "numpy"):
        return [result]
    if type(result).__name__ == "Shape":  # tvm_ffi.Shape: a model output computed by ONNX Shape
        return [_ShapeValue(result)]
    out: list[Any] = []
    for r in result:
        out.extend(_flatten(r))
    return out


def load_stage(root: Path, stage: Mapping[str, Any]) -> Runner:
    """Open a verified TVM stage (files in ``root``) on this machine's CPU."""
    import tvm
    from tvm.runtime.vm import VirtualMachine  # runtime-only: works without the compiler library

    why = _host_can_run(stage["target"])
    if why:
        raise ArtifactError(f"artifact {root}: cannot run here: {why}")
    entry = root / stage.get("entry", LIBRARY)
    try:
        lib = tvm.runtime.load_module(str(entry))
        vm = VirtualMachine(lib, tvm.cpu())
    except Exception as e:  # verified bytes TVM still refuses (a stage naming a file that is no library)
        raise ArtifactError(f"artifact {root}: TVM cannot load {entry.name}: "
                            f"{(str(e).strip().splitlines() or [type(e).__name__])[-1][:200]}") from None
    return Runner(root, dict(stage), vm)


def load_artifact(path: str | os.PathLike) -> Runner:
    """Verify and load a single-stage TVM artifact for running on this machine's CPU.

    Raises:
        ArtifactError: missing/tampered files (checked before loading any code) or an artifact
            built for another architecture or a GPU.
    """
    root = Path(path)
    return load_stage(root, read_manifest(root, verify=True))
