"""Fuzz targets for Lepton's untrusted-input readers (issue #19).

Each target turns one byte string into one call of a reader that takes user data:

| target          | entry point                                                       |
|-----------------|-------------------------------------------------------------------|
| `load-bytes`    | `lepton_ir.load(bytes)`, then every initializer's `numpy()`      |
| `load-folder`   | `lepton_ir.load(path)` of a model with external data in a folder |
| `text`          | `lepton_ir.from_text`, then print and export what it accepted     |
| `pipeline`      | `lepton_passes.parse_pipeline`, then the canonical-text round trip|
| `manifest`      | `lepton.load(folder)` on an artifact whose manifest is the input  |
| `calibration`   | `passes/quant/calibration.load_samples` (.npz, folders, random:N), every feed run in ONNX Runtime as calibration does |

The contract (`classify`): a target may return, or raise a `LeptonError` whose message is one
line. Anything else is a *finding*: another exception, a `LeptonError` spanning lines, a run past
`TIME_BOUND_S`, or memory past the address-space bound the runner sets (`MemoryError`).

This module is shared by `bench/fuzz.py` (atheris, coverage-guided) and the pytest files in this
folder (saved corpus, regressions), so that both judge an input the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
REPO = HERE.parent.parent

#: Seconds one input may take before it counts as a hang. Generous: the slowest legitimate input
#: (an ONNX Runtime session on the manifest target) takes milliseconds.
TIME_BOUND_S = 5.0
#: Extra address space (bytes) above what the process holds at start-up before an allocation
#: fails with MemoryError (a finding: a small input must not make us allocate gigabytes).
MEMORY_BOUND = 2 << 30


# ------------------------------------------------------------------------------------------------
# Outcomes
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Finding:
    """One input that broke the contract."""

    kind: str        # "exception", "multi-line-error", "empty-error", "hang", "memory"
    error: str       # exception type and message (first line)
    where: str       # innermost frame in Lepton's code, for de-duplication
    trace: str       # the formatted traceback

    @property
    def key(self) -> str:
        """Two findings with one key are the same bug (same kind, exception type and location)."""
        return f"{self.kind}:{self.error.split(':', 1)[0]}@{self.where}"


class _Hang(BaseException):
    """Raised by the SIGALRM handler in the middle of a target that ran past the time bound.
    A BaseException so that `except Exception` in the code under test cannot swallow it."""


def _alarm(signum: int, frame: object) -> None:
    raise _Hang(f"ran past {TIME_BOUND_S} s")


def _where(tb: traceback.StackSummary) -> str:
    """The innermost frame in Lepton's own packages (else the innermost frame at all)."""
    ours = [f for f in tb if any(p in f.filename for p in ("lepton_ir", "/passes/", "/backends/", "/lepton/"))]
    f = (ours or list(tb) or [None])[-1]
    if f is None:
        return "?"
    return f"{Path(f.filename).name}:{f.lineno}"


def lepton_message(e: BaseException) -> str:
    """The one-line text a user sees for a LeptonError (PipelineError's `summary`: its `str()` is
    three lines on purpose, the CLI prints the summary)."""
    return getattr(e, "summary", None) or str(e)


def classify(target: "Target", data: bytes, *, time_bound: float = TIME_BOUND_S) -> Finding | None:
    """Run `target` on `data`; None if the contract held, else the Finding."""
    from lepton_ir import LeptonError

    use_alarm = threading.current_thread() is threading.main_thread() and time_bound > 0
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, time_bound)
    try:
        target.run(data)
        return None
    except LeptonError as e:
        msg = lepton_message(e)
        if not msg.strip():
            return Finding("empty-error", f"{type(e).__name__}: (empty message)", _where(traceback.extract_tb(e.__traceback__)),
                           traceback.format_exc())
        if "\n" in msg or "\r" in msg:
            return Finding("multi-line-error", f"{type(e).__name__}: {msg.splitlines()[0]}",
                           _where(traceback.extract_tb(e.__traceback__)), traceback.format_exc())
        return None
    except _Hang as e:
        return Finding("hang", f"hang: {e}", _where(traceback.extract_tb(e.__traceback__)), traceback.format_exc())
    except MemoryError as e:
        return Finding("memory", f"MemoryError: {e}", _where(traceback.extract_tb(e.__traceback__)),
                       traceback.format_exc())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - everything else is exactly what we look for
        first = (str(e).splitlines() or [""])[0][:200]
        return Finding("exception", f"{type(e).__name__}: {first}", _where(traceback.extract_tb(e.__traceback__)),
                       traceback.format_exc())
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def bound_memory(extra: int = MEMORY_BOUND) -> None:
    """Cap the address space at what the process uses now plus `extra` (RLIMIT_AS), so an input
    that makes a reader allocate without limit fails with MemoryError instead of taking the host."""
    import resource

    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    now = pages * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (now + extra, resource.RLIM_INFINITY))


# ------------------------------------------------------------------------------------------------
# Targets
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Target:
    name: str
    doc: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    #: modules atheris instruments for coverage feedback (the code under test)
    instrument: tuple[str, ...]
    #: libFuzzer dictionary tokens (format keywords the byte mutator would rarely invent)
    tokens: tuple[bytes, ...] = ()


_WORK: Path | None = None


def workdir() -> Path:
    """A per-process scratch folder (in /dev/shm when there is one: the folder targets write a
    few files per input and a RAM disk keeps that from dominating the run)."""
    global _WORK
    if _WORK is None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        _WORK = Path(tempfile.mkdtemp(prefix=f"lepton-fuzz-{os.getpid()}-", dir=base))
        import atexit

        atexit.register(shutil.rmtree, _WORK, True)
    return _WORK


def _fixture_models() -> list[bytes]:
    """Serialized ONNX models: the text fixtures (subgraphs, functions, all dtypes) and the digits CNN."""
    import lepton_ir

    out = []
    for p in sorted((REPO / "tests" / "ir" / "fixtures").glob("*.lep")):
        try:
            out.append(lepton_ir.to_onnx(lepton_ir.from_text(p.read_text())).SerializeToString())
        except Exception:  # a fixture the exporter refuses is simply not a seed
            continue
    out.append((REPO / "lepton" / "data" / "digits_cnn.onnx").read_bytes())
    return out


# -- load-bytes --------------------------------------------------------------------------------
#: Initializers above this many bytes are not materialised (the memory bound is for the reader,
#: not for a legitimately large weight).
_NUMPY_LIMIT = 64 << 20


def run_load_bytes(data: bytes) -> None:
    import lepton_ir

    model = lepton_ir.load(data)
    _touch_tensors(model)


def _touch_tensors(model: object) -> None:
    """Decode every initializer: lazy tensors must not carry a crash past import."""
    for t in model.graph.initializers.values():  # type: ignore[attr-defined]
        if t.const is not None and t.const.nbytes <= _NUMPY_LIMIT:
            t.const.numpy()


# -- load-folder -------------------------------------------------------------------------------
DATA_NAME = "model.onnx.data"


def frame(*parts: bytes) -> bytes:
    """Length-prefixed parts (4-byte little-endian length each, the last part takes the rest)."""
    out = b""
    for p in parts[:-1]:
        out += struct.pack("<I", len(p)) + p
    return out + parts[-1]


def unframe(data: bytes, n: int) -> list[bytes]:
    """Inverse of `frame` for `n` parts; short inputs give empty parts (every input is valid)."""
    parts, pos = [], 0
    for _ in range(n - 1):
        (ln,) = struct.unpack("<I", data[pos:pos + 4].ljust(4, b"\0"))
        pos += 4
        parts.append(data[pos:pos + ln])
        pos += ln
    parts.append(data[pos:])
    return parts


def _folder_dir() -> Path:
    d = workdir() / "folder"
    if not d.exists():
        d.mkdir()
        (d / "sub").mkdir()
        # Bait for mutated locations: a symlink leaving the folder and one to a folder.
        os.symlink("/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/passwd", d / "link.data")
        os.symlink("/etc", d / "linkdir")
    return d


def run_load_folder(data: bytes) -> None:
    import lepton_ir

    model_bytes, weights = unframe(data, 2)
    d = _folder_dir()
    (d / "model.onnx").write_bytes(model_bytes)
    (d / DATA_NAME).write_bytes(weights)
    (d / "sub" / "w.bin").write_bytes(weights[: len(weights) // 2])
    model = lepton_ir.load(d / "model.onnx")
    _touch_tensors(model)


def seeds_load_folder() -> list[bytes]:
    import lepton_ir

    out = []
    d = workdir() / "seed-folder"
    d.mkdir(exist_ok=True)
    for raw in _fixture_models():
        m = lepton_ir.load(raw)
        if not m.graph.initializers:
            continue
        lepton_ir.save(m, d / "model.onnx", external_data=True)
        data = d / DATA_NAME
        if data.exists():
            out.append(frame((d / "model.onnx").read_bytes(), data.read_bytes()))
    return out


# -- text --------------------------------------------------------------------------------------
def run_text(data: bytes) -> None:
    import lepton_ir

    text = data.decode("utf-8", errors="replace")  # what a text file opened with errors="replace" gives
    model = lepton_ir.from_text(text)
    # What the parser accepts must be printable and exportable: a model that parses and then
    # crashes the exporter was accepted wrongly.
    lepton_ir.to_text(model)
    lepton_ir.to_onnx(model)


def seeds_text() -> list[bytes]:
    import lepton_ir

    out = [p.read_bytes() for p in sorted((REPO / "tests" / "ir" / "fixtures").glob("*.lep"))]
    out.append(lepton_ir.to_text(lepton_ir.load(REPO / "lepton" / "data" / "digits_cnn.onnx")).encode())
    return out


# -- pipeline ----------------------------------------------------------------------------------
def run_pipeline(data: bytes) -> None:
    from lepton_passes import parse_pipeline

    text = data.decode("utf-8", errors="replace")
    p = parse_pipeline(text)
    canon = str(p)
    again = parse_pipeline(canon)
    # docs/pipelines.md promises parse(str(p)) == p and a canonical text printing as itself.
    if again != p or str(again) != canon:
        raise AssertionError(f"canonical text does not round-trip: {text!r} -> {canon!r} -> {str(again)!r}")


def seeds_pipeline() -> list[bytes]:
    texts = [
        "canonicalize", "", "fuse,quant8{calibration=entropy,per-channel=true},fixpoint(canonicalize,cse)",
        "fold-constants{max-elements=4096},dce", "fixpoint(simplify-shapes,fold-constants,remove-noops){max-iterations=5},cse,dce",
        'bind-inputs{values=["sr=16000"]},canonicalize', "quant8{calib=random:8}", "fp16", "legalize",
        "pin-input-shapes{shapes=[\"x=1x3x4x4\"]}", "quant8{percentile=99.9,calibration=percentile}",
        "fuse{label=\"a b\"}", "quant8-dynamic",
    ]
    return [t.encode() for t in texts]


# -- manifest ----------------------------------------------------------------------------------
_TINY = """
model <ir_version=8, opset={"": 17}>
graph tiny(%x: f32[N,4]) -> (%y: f32[N,4]) {
  %w = const f32[4] [0.5, -1.0, 2.0, 0.25]
  %m = Mul(%x, %w) : f32[N,4]
  %y = Relu(%m) : f32[N,4]
  return %y
}
"""


def _template() -> Path:
    """An artifact folder holding the files of every seed manifest: a single-stage onnx artifact at
    the top and a two-stage one's stage folders (the manifest is what the input replaces)."""
    d = workdir() / "artifact"
    if d.exists():
        return d
    import lepton_ir
    from lepton_backends import StageSpec, compile_stages, get_backend

    model = lepton_ir.from_text(_TINY)
    single = workdir() / "single"
    get_backend("onnx")().compile(model, single, pipeline_text="canonicalize")
    multi = workdir() / "multi"
    compile_stages(_two_stages(model), multi)
    shutil.copytree(single, d)
    for p in multi.iterdir():
        if p.is_dir():
            shutil.copytree(p, d / p.name)
    (d / "manifest-multi.json").write_bytes((multi / "manifest.json").read_bytes())
    return d


def _two_stages(model: object) -> list:
    import lepton_ir
    from lepton_backends import StageSpec

    stages = lepton_ir.split_stages(model, [["m"]])  # type: ignore[arg-type]
    return [StageSpec(s.model, "onnx") for s in stages]


def run_manifest(data: bytes) -> None:
    import lepton

    d = _template()
    # First byte: 0xFF leaves the seal out, 0xFE seals something else; else the seal is right
    # (so mutations reach the parser behind the hash check rather than dying on it every time).
    mode, body = (data[0], data[1:]) if data else (0, b"")
    (d / "manifest.json").write_bytes(body)
    seal = d / "manifest.json.sha256"
    if mode == 0xFF:
        seal.unlink(missing_ok=True)
    else:
        digest = hashlib.sha256(body if mode != 0xFE else body + b"x").hexdigest()
        seal.write_text(digest + "\n")
    lepton.load(d)


def seeds_manifest() -> list[bytes]:
    d = _template()
    single = (workdir() / "single" / "manifest.json").read_bytes()
    multi = (d / "manifest-multi.json").read_bytes()
    return [b"\0" + single, b"\0" + multi, b"\xff" + single, b"\xfe" + multi]


# -- calibration -------------------------------------------------------------------------------
_CALIB_MODELS = {
    0: _TINY,
    1: """
model <ir_version=8, opset={"": 17}>
graph two(%a: f32[1,3], %b: i64[2]) -> (%y: f32[1,3]) {
  %c = Cast(%b) {to=1} : f32[2]
  %s = ReduceSum(%c) {keepdims=1} : f32[1]
  %y = Add(%a, %s) : f32[1,3]
  return %y
}
""",
}
_calib_cache: dict[int, tuple[object, object]] = {}


def _calib_model(i: int) -> tuple[object, object]:
    """(model, ONNX Runtime session) for calibration model `i`, built once per process."""
    if i not in _calib_cache:
        import lepton_ir
        from lepton_ir.reference import ort_session

        m = lepton_ir.from_text(_CALIB_MODELS[i])
        _calib_cache[i] = (m, ort_session(lepton_ir.to_onnx(m)))
    return _calib_cache[i]


def run_calibration(data: bytes) -> None:
    """Byte 0: bit 0 picks the model, bits 1-2 the form (0 .npz file, 1 folder, 2 `calib=` text,
    3 .npy file); byte 1: batch. The rest: the file, the folder's files (framed: name byte, then
    the content), or the option text."""
    from lepton_passes.quant.calibration import load_samples

    head, rest = data[:2].ljust(2, b"\0"), data[2:]
    model, sess = _calib_model(head[0] & 1)
    form = (head[0] >> 1) & 3
    batch = head[1] % 5
    d = workdir() / "calib"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    if form == 0 or form == 3:
        path = d / ("calib.npz" if form == 0 else "calib.npy")
        path.write_bytes(rest)
        calib = str(path)
    elif form == 1:
        folder = d / "samples"
        folder.mkdir()
        parts = unframe(rest, 4)
        for i, part in enumerate(parts):
            if not part:
                continue
            ext = ".npy" if part[0] & 1 else ".npz"
            (folder / f"s{i}{ext}").write_bytes(part[1:])
        calib = str(folder)
    else:
        calib = rest.decode("utf-8", errors="replace")
    feeds, n = load_samples(model, calib, batch=batch, limit=8)  # type: ignore[arg-type]
    in_names = {i.name for i in sess.get_inputs()}  # type: ignore[attr-defined]
    for feed in feeds:
        # Calibration hands each feed to ONNX Runtime as is: what the loader accepts must run.
        sess.run(None, {k: v for k, v in feed.items() if k in in_names})  # type: ignore[attr-defined]


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def seeds_calibration() -> list[bytes]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 4)).astype(np.float32)
    a = rng.standard_normal((3, 1, 3)).astype(np.float32)
    b = np.arange(6, dtype=np.int64).reshape(3, 2)
    return [
        bytes([0, 1]) + _npz(x=x),
        bytes([0, 2]) + _npz(anything=x[:, 0]),
        bytes([1, 1]) + _npz(a=a, b=b),
        bytes([2, 1]) + frame(b"\0" + _npz(x=x[0]), b"\1" + _npy(x[1]), b"\1" + _npy(x[2, 0]), b""),
        bytes([3, 1]) + frame(b"\0" + _npz(a=a[0], b=b[0]), b"\0" + _npz(a=a[1], b=b[1]), b"", b""),
        bytes([4, 1]) + b"random:3",
        bytes([5, 0]) + b"random",
        bytes([6, 1]) + _npy(x),
    ]


TARGETS: dict[str, Target] = {
    t.name: t for t in [
        Target("load-bytes", "lepton_ir.load on serialized bytes", run_load_bytes, _fixture_models,
               ("lepton_ir",), (b"\x08\x08", b"\x12\x00", b"\x3a")),
        Target("load-folder", "lepton_ir.load on a folder with external data", run_load_folder, seeds_load_folder,
               ("lepton_ir",), (b"location", b"offset", b"length", b"checksum", DATA_NAME.encode(), b"link.data",
                                b"linkdir/hostname", b"sub/w.bin", b"../", b"/etc/passwd", b"\x00")),
        Target("text", "lepton_ir.from_text (+ print and export of what it accepts)", run_text, seeds_text,
               ("lepton_ir",), (b"model", b"graph", b"func", b"const", b"%", b"->", b"return", b"opset=", b"ir_version=",
                                b"f32[", b"i64[", b"seq<", b"opt<", b"map<", b"{", b"}", b"@", b"\"")),
        Target("pipeline", "lepton_passes.parse_pipeline (+ canonical-text round trip)", run_pipeline, seeds_pipeline,
               ("lepton_passes.pipeline", "lepton_passes.base"),
               (b"fixpoint(", b"{max-iterations=", b"none", b"true", b"false", b"inf", b"nan", b"1e-3", b"[", b"]",
                b"'", b"\"", b"quant8", b"canonicalize", b"calibration=", b"per-channel=")),
        Target("manifest", "lepton.load on an artifact folder whose manifest.json is the input", run_manifest,
               seeds_manifest, ("lepton_backends", "lepton.runtime"),
               (b"\"stages\"", b"\"files\"", b"\"dir\"", b"\"entry\"", b"\"backend\"", b"\"tvm-cpu\"", b"\"onnx\"",
                b"\"inputs\"", b"\"outputs\"", b"\"dtype\"", b"\"shape\"", b"null", b"[]", b"{}", b"\"..\"",
                b"\"stage0\"", b"\"model.onnx\"", b"\"format_version\"", b"2")),
        Target("calibration", "passes/quant/calibration.load_samples (+ ONNX Runtime on every feed)",
               run_calibration, seeds_calibration, ("lepton_passes.quant.calibration",),
               (b"PK\x03\x04", b"\x93NUMPY", b"'descr'", b"'shape'", b"'fortran_order'", b"<f4", b"<i8", b"|O",
                b"random:", b".npy", b"x.npy", b"a.npy", b"b.npy")),
    ]
}


# ------------------------------------------------------------------------------------------------
# Corpus
# ------------------------------------------------------------------------------------------------
def corpus_files(name: str) -> list[Path]:
    """The saved inputs of a target: seeds and every reproducer of a past finding."""
    d = CORPUS / name
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


def reproducer_name(data: bytes) -> str:
    return "crash-" + hashlib.sha1(data).hexdigest()[:16]


def save_reproducer(name: str, data: bytes, finding: Finding, root: Path = CORPUS) -> Path:
    """Write `data` to corpus/<target>/crash-<sha1>, with the finding beside it (.txt) for humans."""
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    p = d / reproducer_name(data)
    p.write_bytes(data)
    p.with_suffix(".txt").write_text(f"{finding.key}\n{finding.error}\n\n{finding.trace}")
    return p


def iter_inputs(name: str) -> Iterator[tuple[str, bytes]]:
    """(label, bytes) for every seed and saved corpus file of a target (.txt notes skipped)."""
    for i, s in enumerate(TARGETS[name].seeds()):
        yield f"seed-{i}", s
    for p in corpus_files(name):
        if p.suffix != ".txt":
            yield p.name, p.read_bytes()
