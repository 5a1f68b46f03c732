"""Artifacts: one folder format for every backend, one writer, one reader.

An artifact is a folder holding one or more *stages*. Each stage is what one backend built (an
ONNX file for ONNX Runtime, a TVM library, ...), for one target and one device. A single-stage
artifact keeps its files at the top (`dir` "."); a multi-stage artifact gives each stage a
subfolder. Layout::

    OUT/
      manifest.json          format, format_version, inputs/outputs of the whole artifact, the
                             pipeline, versions, source model sha256, `stages` (below), and the
                             sha256 of every file (paths relative to OUT)
      manifest.json.sha256   sha256 of manifest.json: an edited manifest is refused too
      <files of stage 0>     (or stage0/..., stage1/... for several stages)

A stage entry: `name`, `backend` (the registry name whose `load()` opens it), `dir`, `entry` (its
main file), `target` (backend-specific, e.g. TVM's target JSON), `device` ("host": this machine's
CPU; "cuda": a GPU here; "remote": a device reached over RPC), `inputs`/`outputs` (name, dtype,
shape; symbolic dims as strings), `options` (the backend options, as JSON), `extra`.
Stages run in order; each reads graph inputs or outputs of earlier stages by name.

Writing is atomic (`atomic_dir`): files go to a hidden sibling folder, are fsynced, and the folder
is swapped into place (`renameat2(RENAME_EXCHANGE)` where the kernel has it, else two renames), so
an interrupted or failed compile leaves the previous artifact or none. Reading (`read_manifest`)
verifies every hash before any file is handed to a runtime.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, Sequence

from lepton_ir import LeptonError, ModelLoadError

from .errors import BackendError

MANIFEST = "manifest.json"
MANIFEST_SHA = "manifest.json.sha256"
FORMAT = "lepton-artifact"
#: 2: stages. (1 was one manifest layout per backend.)
FORMAT_VERSION = 2


class ArtifactWriteError(BackendError):
    """The output path cannot take an artifact (a file, or a folder that is not an artifact)."""


# ------------------------------------------------------------------------------------------------
# Hashes, versions, JSON
# ------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def jsonable(value: Any) -> Any:
    """Plain JSON from tuples, TVM containers, dataclasses and the like (anything else: its text)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k.replace("_", "-"): jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    try:
        return [jsonable(v) for v in value]
    except TypeError:
        return str(value)


def versions() -> dict[str, str | None]:
    """Versions of the packages an artifact's numbers depend on."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("lepton", "onnx", "onnxruntime", "apache-tvm", "apache-tvm-ffi"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ------------------------------------------------------------------------------------------------
# Atomic folders
# ------------------------------------------------------------------------------------------------
def _replaceable(path: Path) -> bool:
    """Only an empty folder or a previous artifact may be replaced (never, say, a home folder)."""
    return path.is_dir() and (not any(path.iterdir()) or (path / MANIFEST).is_file())


def check_output_path(out_dir: str | os.PathLike) -> None:
    """Raise ArtifactWriteError if `out_dir` exists and must not be replaced (checked early, before
    slow work, and again when publishing)."""
    out = Path(out_dir)
    if out.exists() and not _replaceable(out):
        what = "a file" if not out.is_dir() else "a folder that is not a Lepton artifact (no manifest.json)"
        raise ArtifactWriteError(f"{out}: exists and is {what}; refusing to replace it")


def _fsync_path(path: Path) -> None:
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
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished `tmp` folder to `out`, replacing any existing `out`."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old artifact
        return
    # No RENAME_EXCHANGE (non-Linux, some filesystems): move the old one aside first, so a crash
    # in between leaves it recoverable, never half-written.
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.time_ns()}")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _clean_stale(out: Path) -> None:
    """Remove staging folders left by earlier writes of `out` whose process is gone."""
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


#: Staging folders this process is building right now (`atomic_dir`). The CLI's Ctrl-C handler
#: removes them and exits at once while any exists (lepton/cli.py `_Interrupts`): a build runs
#: TVM's native code, which polls for signals (tvm_ffi's EnvCheckSignals) and throws the
#: KeyboardInterrupt as a C++ exception, and that abort()s the process where a frame cannot unwind.
STAGING: set[Path] = set()


def discard_staging() -> None:
    """Remove every staging folder of `STAGING` (for an exit that skips the unwinding)."""
    for p in list(STAGING):
        shutil.rmtree(p, ignore_errors=True)
        STAGING.discard(p)


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `out_dir`; on success publish it as `out_dir`.

    On any exception (KeyboardInterrupt included) the staging folder is removed and `out_dir` is
    left exactly as it was. An existing `out_dir` must be an empty folder or an artifact.
    """
    out = Path(out_dir).absolute()
    check_output_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    STAGING.add(staging)
    try:
        yield staging
        check_output_path(out)  # someone may have put something there meanwhile
        for root, dirs, files in os.walk(staging):  # data on disk before the rename makes it visible
            for name in files:
                _fsync_path(Path(root) / name)
            for name in dirs:
                os.chmod(Path(root) / name, 0o755)
        os.chmod(staging, 0o755)  # mkdtemp makes 0700; artifacts are shared like any build output
        _fsync_path(staging)
        _publish(staging, out)
        _fsync_path(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        STAGING.discard(staging)


# ------------------------------------------------------------------------------------------------
# The manifest
# ------------------------------------------------------------------------------------------------
def _files_under(root: Path) -> dict[str, str]:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in (MANIFEST, MANIFEST_SHA):
            files[p.relative_to(root).as_posix()] = sha256_file(p)
    return files


def artifact_signature(stages: Sequence[Mapping[str, Any]], outputs: Sequence[str] | None = None
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The inputs and outputs of a chain of stages: inputs are the stage inputs no earlier stage
    produces; outputs are `outputs` (names) or the last stage's outputs."""
    produced: dict[str, dict[str, Any]] = {}
    inputs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for st in stages:
        for spec in st["inputs"]:
            if spec["name"] not in produced and spec["name"] not in seen:
                seen.add(spec["name"])
                inputs.append(dict(spec))
        for spec in st["outputs"]:
            produced[spec["name"]] = dict(spec)
    if outputs is None:
        return inputs, [dict(s) for s in stages[-1]["outputs"]]
    missing = [n for n in outputs if n not in produced]
    if missing:
        raise LeptonError(f"artifact outputs {missing} are produced by no stage")
    return inputs, [produced[n] for n in outputs]


def write_manifest(root: Path, stages: Sequence[Mapping[str, Any]], *, pipeline: str = "",
                   source_sha256: str | None = None, outputs: Sequence[str] | None = None,
                   extra: Mapping[str, Any] | None = None,
                   graph_inputs: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Write manifest.json (+ its sha256) for the stages whose files are already under `root`.

    `graph_inputs` (the compiled model's own input specs, in order) makes the artifact take
    exactly the model's inputs, also those no stage reads: a partitioned model whose unused input
    fed no stage would otherwise refuse the model's own inputs (fuzz finding A, docs/hardening.md).
    A stage's spec of an input wins over the model's (it has the pinned shape)."""
    if not stages:
        raise LeptonError("an artifact needs at least one stage")
    inputs, outs = artifact_signature(stages, outputs)
    if graph_inputs is not None:
        read = {s["name"]: s for s in inputs}
        names = [str(g["name"]) for g in graph_inputs]
        inputs = [read.get(str(g["name"]), dict(g)) for g in graph_inputs] + \
                 [s for s in inputs if s["name"] not in names]
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        # One backend name for tools that only look at the top: the stage's, or "multi-stage".
        "backend": stages[0]["backend"] if len(stages) == 1 else "multi-stage",
        "inputs": inputs,
        "outputs": outs,
        "pipeline": pipeline,
        "source_sha256": source_sha256,
        "versions": versions(),
        "stages": [jsonable(dict(s)) for s in stages],
        "files": _files_under(root),
    }
    if extra:
        manifest["extra"] = jsonable(dict(extra))
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    (root / MANIFEST).write_text(text, encoding="utf-8")
    (root / MANIFEST_SHA).write_text(hashlib.sha256(text.encode()).hexdigest() + "\n", encoding="utf-8")
    return manifest


def _safe_relative(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


_DEVICES = ("host", "cuda", "remote")


def _check_tensor_specs(root: Path, where: str, specs: Any) -> None:
    """`specs` must be a list of {name: str, dtype: str | null, shape: list of int >= 0 | str | null}
    (dtype null: a sequence, optional or map value, which has no single element type)."""
    if not isinstance(specs, list):
        raise ModelLoadError(f"{root}: manifest {where} is not a list")
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or \
                not (spec.get("dtype") is None or isinstance(spec.get("dtype"), str)):
            raise ModelLoadError(f"{root}: manifest {where}[{i}] is not a tensor (name, dtype, shape)")
        shape = spec.get("shape")
        if shape is not None and (not isinstance(shape, list) or not all(
                d is None or isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                for d in shape)):
            raise ModelLoadError(f"{root}: manifest {where}[{i}] ({spec['name']!r}) has a malformed shape {shape!r}")


def _check_schema(root: Path, manifest: dict[str, Any]) -> None:
    """The manifest fields loaders read have the types they expect (a sealed manifest can still be
    hand-written or made by another tool: a wrong type must be a one-line error, not a KeyError
    in a backend's loader)."""
    _check_tensor_specs(root, "inputs", manifest.get("inputs"))
    _check_tensor_specs(root, "outputs", manifest.get("outputs"))
    if not isinstance(manifest.get("pipeline", ""), str):
        raise ModelLoadError(f"{root}: manifest pipeline is not a string")
    for i, st in enumerate(manifest["stages"]):
        if not isinstance(st, dict):
            raise ModelLoadError(f"{root}: manifest stage {i} is not an object")
        for key in ("backend", "entry"):
            if not isinstance(st.get(key), str):
                raise ModelLoadError(f"{root}: manifest stage {i} has no {key} name")
        for key in ("name", "dir"):
            if key in st and not isinstance(st[key], str):
                raise ModelLoadError(f"{root}: manifest stage {i}: {key} is not a string")
        if st.get("device", "host") not in _DEVICES:
            raise ModelLoadError(f"{root}: manifest stage {i}: device {st.get('device')!r} is not one of "
                                 f"{', '.join(_DEVICES)}")
        if st.get("options") is not None and not isinstance(st["options"], dict):
            raise ModelLoadError(f"{root}: manifest stage {i}: options are not an object")
        _check_tensor_specs(root, f"stage {i} inputs", st.get("inputs"))
        _check_tensor_specs(root, f"stage {i} outputs", st.get("outputs"))


def read_manifest(folder: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """The verified manifest of an artifact folder (ModelLoadError naming the problem otherwise).

    Checks: the manifest's own sha256, the format and version, that every listed file exists
    inside the folder and matches its sha256, and that each stage's entry is among the files.
    """
    root = Path(folder)
    mpath = root / MANIFEST
    if not root.is_dir() or not mpath.is_file():
        raise ModelLoadError(f"{root}: not a Lepton artifact folder (no {MANIFEST})")
    raw = mpath.read_bytes()
    if verify:
        shapath = root / MANIFEST_SHA
        if not shapath.is_file():
            raise ModelLoadError(f"{root}: {MANIFEST_SHA} is missing (not a complete artifact)")
        if hashlib.sha256(raw).hexdigest() != shapath.read_text(encoding="utf-8").strip():
            raise ModelLoadError(f"{root}: {MANIFEST} does not match its sha256 (edited or corrupt); refusing to load")
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise ModelLoadError(f"{root}: {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelLoadError(f"{root}: not a Lepton artifact (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{root}: artifact format_version {manifest.get('format_version')!r} is not supported "
                             f"(this Lepton reads {FORMAT_VERSION}); recompile it")
    stages = manifest.get("stages")
    files = manifest.get("files")
    if not isinstance(stages, list) or not stages or not isinstance(files, dict):
        raise ModelLoadError(f"{root}: manifest has no stages or no file list")
    _check_schema(root, manifest)
    for name in files:
        if not isinstance(name, str) or not _safe_relative(name):
            raise ModelLoadError(f"{root}: manifest lists a file outside the artifact: {name!r}")
    if verify:
        for name, want in files.items():
            p = root / name
            if not p.is_file() or p.is_symlink():
                raise ModelLoadError(f"{root}: file {name!r} listed in the manifest is missing")
            if sha256_file(p) != want:
                raise ModelLoadError(f"{root}: {name} does not match its sha256 in the manifest (modified or truncated)")
    for st in stages:
        d = str(st.get("dir", "."))
        if not _safe_relative(d) and d != ".":
            raise ModelLoadError(f"{root}: stage {st.get('name')!r} has a folder outside the artifact: {d!r}")
        entry = (PurePosixPath(d) / str(st.get("entry", ""))).as_posix() if d != "." else str(st.get("entry", ""))
        if entry not in files:
            raise ModelLoadError(f"{root}: stage {st.get('name')!r}: entry {entry!r} is not among the artifact's files")
    return manifest


def stage_dir(folder: str | os.PathLike, stage: Mapping[str, Any]) -> Path:
    """The folder holding a stage's files."""
    d = str(stage.get("dir", "."))
    return Path(folder) if d == "." else Path(folder) / d


def stage_view(manifest: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
    """One stage's entry with the artifact-wide fields (pipeline, versions, files...) beside it:
    what a backend's loader and tools written for single-stage artifacts read."""
    top = {k: v for k, v in manifest.items() if k != "stages"}
    stage = manifest["stages"][index]
    d = str(stage.get("dir", "."))
    if d != ".":  # file names relative to the stage's folder, as its backend wrote them
        top["files"] = {k[len(d) + 1:]: v for k, v in manifest.get("files", {}).items() if k.startswith(d + "/")}
    return {**top, **stage}
