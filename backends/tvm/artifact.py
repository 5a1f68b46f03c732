"""Compiled-model artifacts: a directory holding ``model.so`` and ``manifest.json``.

Layout::

    OUT/
      model.so              # TVM Relax VM executable (weights embedded as constants)
      manifest.json         # inputs/outputs, target JSON, pipeline, versions, sha256 of files
      manifest.json.sha256  # sha256 of manifest.json (so an edited manifest is refused too)

Writing is atomic: everything is written into a hidden sibling temporary directory, fsynced, and
only then swapped into place (``renameat2(RENAME_EXCHANGE)`` where the kernel has it, else two
renames). An interrupted write leaves ``OUT`` as it was (plus, at worst, a hidden
``.OUT.tmp-*`` directory, which the next write of ``OUT`` removes).

Loading verifies every sha256 before the library is opened, so a tampered or truncated file is
refused before any of its code runs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

MANIFEST = "manifest.json"
MANIFEST_SHA = "manifest.json.sha256"
LIBRARY = "model.so"
FORMAT = "lepton-artifact"  # shared with the onnx backend (backends/onnx_backend.py)
FORMAT_VERSION = 1
BACKEND = "tvm-cpu"


class ArtifactError(RuntimeError):
    """A missing, malformed or tampered artifact."""


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


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_sha256(model: "onnx.ModelProto | bytes | str | os.PathLike") -> str:  # noqa: F821
    """sha256 of an ONNX model: of its serialized bytes, or of the file at a path."""
    if isinstance(model, (str, os.PathLike)):
        return sha256_file(model)
    if isinstance(model, bytes):
        return hashlib.sha256(model).hexdigest()
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def _jsonable(value: Any) -> Any:
    """Target.export() holds tuples and TVM containers; make them plain JSON."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): _jsonable(v) for k, v in value.items()}
    try:
        return [_jsonable(v) for v in value]
    except TypeError:
        return str(value)


def _target_json(target: Any) -> dict[str, Any]:
    if isinstance(target, Mapping):
        return _jsonable(target)
    if isinstance(target, str):
        from .targets import target_dict

        return target_dict(target)
    return _jsonable(target.export())


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("lepton", "apache-tvm", "apache-tvm-ffi", "onnx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE). False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` directory to ``out``, replacing any existing ``out``."""
    if not out.exists():
        os.rename(tmp, out)  # atomic; fails if someone created out meanwhile (then we retry below)
        return
    if not out.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory")
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old artifact
        return
    # No RENAME_EXCHANGE (non-Linux, old kernel, some filesystems): two renames. The old artifact
    # is moved aside first, so a crash in between leaves it recoverable, never half-written.
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _clean_stale(out: Path) -> None:
    """Remove temp dirs left by earlier interrupted writes of ``out`` (by a dead process)."""
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # writer still alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(p, ignore_errors=True)


def write_artifact(
    out_dir: str | os.PathLike,
    executable: Any,
    *,
    target: Any,
    model: Any,
    input_specs: Iterable[SpecLike],
    output_specs: Iterable[SpecLike],
    pipeline_text: str,
    source_model_sha256: str,
    export_cc: Callable[..., Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a compiled model as an artifact directory, atomically.

    Args:
        out_dir: the directory to create or replace.
        executable: the ``tvm.relax.Executable`` from :func:`lower.build`.
        target: the ``tvm.target.Target`` (or target dict / preset name) it was built for.
        model: the source ``onnx.ModelProto`` or a model name (only its name/opset are recorded).
        input_specs, output_specs: :class:`TensorSpec` or ``{"name","dtype","shape"}`` dicts, in
            the VM's argument / result order.
        pipeline_text: the compilation pipeline, as text (see :func:`lower.pipeline_text`).
        source_model_sha256: sha256 of the source model (see :func:`model_sha256`).
        export_cc: ``fcompile`` for ``export_library`` (e.g.
            ``tvm.support.cc.cross_compiler("aarch64-linux-gnu-gcc")`` when cross-compiling).
        extra: optional extra JSON-able manifest entries (stored under ``"extra"``).

    Returns:
        The artifact directory path.
    """
    out = Path(out_dir).absolute()
    # Never swap out (and delete) something that is not an artifact, e.g. a mistyped home folder.
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / MANIFEST).is_file())):
        what = "a file" if not out.is_dir() else "a non-empty folder without manifest.json"
        raise ArtifactError(f"{out} exists and is {what}; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        fill_artifact_dir(
            tmp,
            executable,
            target=target,
            model=model,
            input_specs=input_specs,
            output_specs=output_specs,
            pipeline_text=pipeline_text,
            source_model_sha256=source_model_sha256,
            export_cc=export_cc,
            extra=extra,
        )
        for p in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        _fsync_dir(tmp)
        _publish(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def fill_artifact_dir(
    directory: Path,
    executable: Any,
    *,
    target: Any,
    model: Any,
    input_specs: Iterable[SpecLike],
    output_specs: Iterable[SpecLike],
    pipeline_text: str,
    source_model_sha256: str | None,
    export_cc: Callable[..., Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the artifact files into an existing empty ``directory`` (no atomicity; see
    :func:`write_artifact`, or the project's ``atomic_dir`` staging folder). Returns the manifest."""
    lib_path = directory / LIBRARY
    if export_cc is not None:
        executable.export_library(str(lib_path), fcompile=export_cc)
    else:
        executable.export_library(str(lib_path))
    model_info: dict[str, Any]
    if isinstance(model, str):
        model_info = {"name": model}
    else:
        model_info = {
            "name": model.graph.name,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        }
    files = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.is_file()}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": BACKEND,
        "entry": LIBRARY,
        "model": model_info,
        "source_sha256": source_model_sha256,
        "inputs": [_spec(s).to_json() for s in input_specs],
        "outputs": [_spec(s).to_json() for s in output_specs],
        "target": _target_json(target),
        "pipeline": pipeline_text,
        "options": _jsonable(dict(options or {})),
        "versions": _versions(),
        "files": files,
    }
    if extra:
        manifest["extra"] = _jsonable(dict(extra))
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (directory / MANIFEST).write_text(text, encoding="utf-8")
    (directory / MANIFEST_SHA).write_text(hashlib.sha256(text.encode()).hexdigest() + "\n", encoding="utf-8")
    return manifest


def read_manifest(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read an artifact's manifest, verifying the sha256 of it and of every file it lists.

    Raises:
        ArtifactError: one line naming the missing, extra or tampered file.
    """
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{root}: not a Lepton TVM artifact (no {MANIFEST})")
    raw = mpath.read_bytes()
    if verify:
        shapath = root / MANIFEST_SHA
        if not shapath.is_file():
            raise ArtifactError(f"artifact {root}: {MANIFEST_SHA} is missing")
        want = shapath.read_text(encoding="utf-8").strip()
        if hashlib.sha256(raw).hexdigest() != want:
            raise ArtifactError(f"artifact {root}: sha256 mismatch for {MANIFEST} (tampered or corrupt); refusing to load")
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"artifact {root}: {MANIFEST} is not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("backend") != BACKEND:
        raise ArtifactError(
            f"artifact {root}: not a {BACKEND} artifact (format {manifest.get('format')!r}, "
            f"backend {manifest.get('backend')!r})"
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"artifact {root}: unsupported format_version {manifest.get('format_version')!r}")
    if verify:
        for name, want in manifest["files"].items():
            p = root / name
            if not p.is_file():
                raise ArtifactError(f"artifact {root}: {name} is missing")
            if sha256_file(p) != want:
                raise ArtifactError(f"artifact {root}: sha256 mismatch for {name} (tampered or corrupt); refusing to load")
        if LIBRARY not in manifest["files"]:
            raise ArtifactError(f"artifact {root}: manifest lists no {LIBRARY}")
    return manifest


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
                if isinstance(d, str) and bound.setdefault(d, got) != got:
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


def _flatten(result: Any) -> list[Any]:
    if hasattr(result, "numpy"):
        return [result]
    out: list[Any] = []
    for r in result:
        out.extend(_flatten(r))
    return out


def load_artifact(path: str | os.PathLike) -> Runner:
    """Verify and load an artifact directory for running on this machine's CPU.

    Raises:
        ArtifactError: missing/tampered files (checked before loading any code) or an artifact
            built for another architecture or a GPU.
    """
    import tvm
    from tvm.runtime.vm import VirtualMachine  # runtime-only: works without the compiler library

    root = Path(path)
    manifest = read_manifest(root, verify=True)
    why = _host_can_run(manifest["target"])
    if why:
        raise ArtifactError(f"artifact {root}: cannot run here: {why}")
    lib = tvm.runtime.load_module(str(root / LIBRARY))
    vm = VirtualMachine(lib, tvm.cpu())
    return Runner(root, manifest, vm)
