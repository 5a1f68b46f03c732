"""MetaSchedule tuning with a persistent JSON database.

``tune`` extracts the fused TIR kernels of a Relax module (the same fusion :func:`lower.build`
uses), skips every kernel the database already holds a measured record for, and tunes only the
rest. Tuning a model twice, or two models sharing kernels, therefore never re-tunes a known
workload. :func:`lower.build` with ``database=`` then uses the tuned kernels and falls back to
the search-free schedules for the others.

The database is keyed by each kernel's structural hash; the target only has to match between
``tune`` and ``build`` (use :func:`tuning_target` for both, which pins ``num-cores``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator


@dataclasses.dataclass
class TuneResult:
    """What :func:`tune` did."""

    database: Any  # tvm.s_tir.meta_schedule.database.JSONDatabase
    target: Any  # the tvm.target.Target tuned for (pass it to build)
    tasks_total: int
    tasks_tuned: list[str]
    tasks_skipped: list[str]  # already in the database
    new_records: int  # measured candidates added to the database by this call
    trials: int = 0  # candidates measured by this call (including failed builds/runs)
    seconds: float = 0.0  # wall time of this call
    interrupted: bool = False  # Ctrl-C stopped the search; the records so far were kept
    baseline: int = 0  # kernels whose search-free schedule was measured and recorded first


_BUILD_FUNC = "lepton.tvm.meta_schedule_build"
_EXPORT_FUNC = "lepton.tvm.meta_schedule_export"


def _register_build_func(cross_cc: str | None = None) -> None:
    """Register MetaSchedule's build step without its ``import tvm.s_tir.tensor_intrin``.

    Runs in each builder worker (the LocalBuilder initializer). TVM's default build function
    imports ``tvm.s_tir.tensor_intrin`` on every call, which takes 60-100 s on the 2-core CI
    machine -- longer than the builder's timeout, so every candidate failed with "Timeout".
    The kernels MetaSchedule's default CPU rules produce for float models use no tensor
    intrinsics, so nothing is lost.
    """
    from tvm_ffi import register_global_func

    def build(mod, target, _params):
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm_build(mod, target=target)

    register_global_func(_BUILD_FUNC, build, override=True)

    def export(mod) -> str:
        # A shared library linked by the (cross) compiler: the remote device loads it directly
        # (MetaSchedule's default exports a .tar the device would have to link itself, and an
        # emulated or embedded board has no linker).
        import tempfile

        import tvm

        path = os.path.join(tempfile.mkdtemp(prefix="lepton-ms-"), "kernel.so")
        mod.export_library(path, fcompile=tvm.support.cc.cross_compiler(cross_cc) if cross_cc else None)
        return path

    register_global_func(_EXPORT_FUNC, export, override=True)


def _direct_session(rpc_config: Any) -> Any:
    """MetaSchedule session factory for a device reached directly (no tracker).

    MetaSchedule's RPCRunner only asks trackers for devices; with ``--rpc HOST:PORT`` the host and
    port ride in the config's tracker fields and this connects to the server itself.
    """
    from tvm import rpc

    return rpc.connect(rpc_config.tracker_host, int(rpc_config.tracker_port),
                       session_timeout=rpc_config.session_timeout_sec)


def _host_filled_arguments(session: Any, device: Any, args_info: Any, alloc_repeat: int) -> list:
    """MetaSchedule argument allocation that fills the device tensors with data sent from the host.

    MetaSchedule's default calls ``tvm.contrib.random.random_fill_for_measure`` on the device,
    which TVM runtimes built without ``USE_RANDOM`` (the aarch64 runtime wheel on the emulated
    device, many board builds) do not have.
    """
    import numpy as np
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    rng = np.random.default_rng(0)

    def fill(arr: Any) -> None:
        dtype, shape = str(arr.dtype), [int(d) for d in arr.shape]
        if dtype.startswith("float"):
            data = rng.uniform(-1.0, 1.0, shape).astype(dtype)
        elif dtype == "bool":
            data = rng.integers(0, 2, shape).astype(bool)
        else:
            data = rng.integers(0, 8, shape).astype(dtype)
        arr.copyfrom(data)

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def remote_runner(*, rpc: str | None = None, tracker: str | None = None, key: str | None = None,
                  session_timeout: int = 120) -> Any:
    """A MetaSchedule ``RPCRunner`` measuring on a remote device: directly (``rpc="HOST:PORT"``)
    or through a tracker (``tracker="HOST:PORT"`` and ``key``).

    One measurement session at a time: a board (or the emulated one) runs one kernel at a time.
    """
    from tvm.s_tir import meta_schedule as ms

    if bool(rpc) == bool(tracker):
        raise ValueError("remote tuning needs exactly one of rpc=HOST:PORT or tracker=HOST:PORT")
    if tracker and not key:
        raise ValueError("remote tuning through a tracker needs a device key")
    host, _, port = (rpc or tracker or "").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"remote tuning: expected HOST:PORT, got {rpc or tracker!r}")
    cfg = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=key or "direct",
                              session_timeout_sec=session_timeout)
    return ms.runner.RPCRunner(
        rpc_config=cfg,
        evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=0),
        f_create_session=_direct_session if rpc else None,
        f_alloc_argument=_host_filled_arguments,
        max_workers=1,
    )


_TENSOR_INTRIN = "tvm.s_tir.tensor_intrin"


def rule_kind(target: Any) -> str:
    """The MetaSchedule rule set TVM 0.27 picks for ``target`` (its ``GetRuleKindFromTarget``).

    For an x86 LLVM target it asks LLVM which features the target's ``mcpu``/``mattr`` imply:
    AVX-512 VNNI or AVX-VNNI -> ``"vnni"`` (int8 kernels tensorized with ``dot_16x4_vnni``),
    AVX-512F+BW -> ``"avx512"`` (``dot_16x4_avx512``), else ``"llvm"`` (no intrinsic). aarch64
    targets tune with the generic rules (see :func:`_space`), so they are ``"llvm"`` here too.
    Other kinds (cuda, ...) return their kind name.
    """
    import tvm

    if target.kind.name != "llvm":
        return target.kind.name
    if str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return "llvm"
    has = tvm.get_global_func("target.target_has_feature")
    if has("avx512vnni", target) or has("avxvnni", target):
        return "vnni"
    if has("avx512f", target) and has("avx512bw", target):
        return "avx512"
    return "llvm"


# The tensor intrinsics each rule kind's MultiLevelTilingWithIntrin rule looks up by name.
RULE_INTRINSICS = {"vnni": ("dot_16x4_vnni",), "avx512": ("dot_16x4_avx512",)}


def register_x86_intrinsics() -> None:
    """Register TVM's x86 tensor intrinsics (``dot_16x4_vnni``, ``dot_16x4_avx512``) alone.

    ``import tvm.s_tir.tensor_intrin`` registers every target's intrinsics through TVMScript
    (1-4 minutes on the 2-core machine); its ``x86`` module alone takes about 0.3 s. The package's
    ``__init__`` is bypassed with a placeholder package whose ``__path__`` is the real folder,
    so only ``x86.py`` runs; a later full import finds that submodule already loaded and does not
    register it twice. Idempotent.
    """
    import importlib
    import types

    sub = _TENSOR_INTRIN + ".x86"
    if sub in sys.modules:
        return
    if _TENSOR_INTRIN in sys.modules:  # the real package (or our placeholder): import normally
        importlib.import_module(sub)
        return
    import tvm.s_tir

    stub = types.ModuleType(_TENSOR_INTRIN)
    stub.__path__ = [os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin")]
    sys.modules[_TENSOR_INTRIN] = stub
    try:
        importlib.import_module(sub)
    finally:
        if sys.modules.get(_TENSOR_INTRIN) is stub:
            del sys.modules[_TENSOR_INTRIN]


@contextlib.contextmanager
def _without_tensor_intrin_import(target: Any) -> Iterator[None]:
    """Make ``import tvm.s_tir.tensor_intrin`` cheap while MetaSchedule contexts are made.

    ``TuneContext.__init__`` imports that package, which registers every tensor intrinsic of
    every target (CUDA, ROCm, RISC-V vector lengths, ...) through TVMScript: 1-4 minutes on the
    2-core machine before the first trial. For LLVM targets a placeholder package stands in for
    it, and only the intrinsics the target's rule set needs are registered: an x86 target whose
    CPU has AVX-512 (BW) or VNNI gets TVM's x86 rule set, which tensorizes int8 kernels with
    ``dot_16x4_avx512`` / ``dot_16x4_vnni`` and fails at once ("TensorIntrin ... is not
    registered") without them, so :func:`register_x86_intrinsics` registers those (0.3 s).
    aarch64 targets with dotprod/i8mm keep the full import, as do non-LLVM targets (set
    ``LEPTON_TVM_TENSOR_INTRIN=1`` to always keep it). Already imported: nothing to do.
    """
    import types

    name = _TENSOR_INTRIN
    keep = os.environ.get("LEPTON_TVM_TENSOR_INTRIN") == "1" or name in sys.modules
    kind = "llvm"
    try:
        attrs = " ".join(str(a) for a in target.attrs.get("mattr", []) or [])
        keep = keep or target.kind.name != "llvm" or any(f in attrs for f in ("dotprod", "i8mm", "amx"))
        kind = rule_kind(target)
    except Exception:
        keep = True
    if keep:
        yield
        return
    if kind in RULE_INTRINSICS:
        register_x86_intrinsics()
    stub = types.ModuleType(name)
    stub.__doc__ = "placeholder installed by lepton_backends.tvm.tune (see _without_tensor_intrin_import)"
    sys.modules[name] = stub
    try:
        yield
    finally:
        if sys.modules.get(name) is stub:
            del sys.modules[name]


def _space(target: Any) -> Any:
    """MetaSchedule design space for ``target``.

    aarch64 targets get MetaSchedule's generic LLVM rules (tiling, parallel/vectorize/unroll;
    NEON through LLVM's vectorizer) instead of its ARM rule set: with TVM 0.27 the ARM set failed
    while sampling the first candidates ("old_rv != nullptr && new_rv != nullptr" in
    parallel_for_dynamic) on every float kernel tried, and it needs the tensor-intrinsic import
    that costs minutes here.
    """
    from tvm.s_tir import meta_schedule as ms

    if target.kind.name == "llvm" and str(target.attrs.get("mtriple", "")).startswith("aarch64"):
        return ms.space_generator.PostOrderApply(sch_rules="llvm", postprocs="llvm", mutator_probs="llvm")
    return "post-order-apply"


def _seed_default_schedules(tasks: list, target: Any, db: Any, builder: Any, runner: Any) -> int:
    """Measure each kernel's search-free schedule (cpu_schedule.py) and record it in ``db``.

    MetaSchedule builds with the fastest record of a kernel. Without this, a short search would
    replace a good hand-written schedule by the best of a few random candidates, i.e. tuning
    could make a model slower; with the search-free schedule recorded as one more measured
    candidate (its schedule trace replays at build time), a tuned kernel only wins when it ran
    faster on the same runner. The records also seed the evolutionary search's first population.
    Returns the number of kernels recorded.
    """
    from tvm.s_tir import meta_schedule as ms

    from .cpu_schedule import default_cpu_rules

    if target.kind.name != "llvm":
        return 0
    picked = []
    with target:
        for t in tasks:
            func = t.dispatched[0]["main"]
            for rule in default_cpu_rules():
                try:
                    sch = rule.apply(func, target, False)
                except Exception:  # a rule that cannot handle this kernel: try the next one
                    sch = None
                if isinstance(sch, list):
                    sch = sch[0] if sch else None
                if sch is not None:
                    picked.append((t, sch))
                    break
    if not picked:
        return 0
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, sch in picked])
    runs, kept = [], []
    for (t, sch), b in zip(picked, built):
        if b.error_msg is None:
            args = ms.arg_info.ArgInfo.from_prim_func(t.dispatched[0]["main"])
            runs.append(ms.runner.RunnerInput(b.artifact_path, "cpu", args))
            kept.append((t, sch, args))
    n = 0
    for (t, sch, args), fut in zip(kept, runner.run(runs) if runs else []):
        res = fut.result()
        if res.error_msg is None and res.run_secs:
            wl = db.commit_workload(t.dispatched[0])
            db.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, res.run_secs, target, args))
            n += 1
    return n


def _static_kernel(mod: Any) -> bool:
    """True when no PrimFunc in ``mod`` has a symbolic shape variable.

    TVM 0.27's Python PrimFunc exposes no buffer map; TVMScript declares each free symbolic
    dimension as ``N = TypeVar("N")`` ahead of the function, which is what this looks for.
    """
    import re

    from tvm import tirx

    return not any(isinstance(f, tirx.PrimFunc) and re.search(r"^\w+ = TypeVar\(", f.script(), re.M)
                   for f in mod.functions.values())


def tuning_target(target: Any) -> "tvm.target.Target":  # noqa: F821
    """``target`` resolved, with ``num-cores`` set for CPU targets (MetaSchedule needs it)."""
    import tvm

    from .targets import resolve_target

    t = target if isinstance(target, tvm.target.Target) else resolve_target(target)
    if t.kind.name == "llvm" and "num-cores" not in t.attrs:
        d = dict(t.export())
        d["num-cores"] = os.cpu_count() or 1
        d.pop("keys", None)
        d.pop("tag", None)
        t = tvm.target.Target(d)
    return t


def target_hash(target: Any) -> str:
    """Short stable hash of the tuning target (kind, CPU/arch attributes, ``num-cores``)."""
    t = tuning_target(target)
    return hashlib.sha256(str(t).encode()).hexdigest()[:16]


def default_database_dir(target: Any) -> Path:
    """Default database folder for ``target``: ``$LEPTON_TUNING_DIR/<target-hash>``, else
    ``$XDG_CACHE_HOME/lepton/tuning/<target-hash>`` (``~/.cache/lepton/tuning/<target-hash>``).

    One folder per target, shared by every model: kernels already tuned for one model are reused
    by the next.
    """
    root = os.environ.get("LEPTON_TUNING_DIR")
    if root:
        base = Path(root).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = Path(cache).expanduser() / "lepton" / "tuning"
    return base / target_hash(target)


LOCK_FILE = ".lock"


@contextlib.contextmanager
def database_lock(database_dir: str | os.PathLike, *, exclusive: bool = True,
                  log: Callable[[str], None] | None = None) -> Iterator[None]:
    """``flock`` on ``database_dir/.lock``: exclusive while tuning (writes), shared while loading.

    MetaSchedule's JSON database appends records that refer to workloads by their line number
    in ``database_workload.json``, so two writers interleaving would corrupt it. A tuning call
    therefore holds the exclusive lock from opening the database (so it sees every record a
    previous writer committed) to its last write; a second compile waits, then finds the first
    one's kernels already tuned.
    """
    import fcntl

    d = Path(database_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                log(f"waiting for the tuning database lock ({d}): another compile is tuning")
            fcntl.flock(fd, mode)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def open_database(database_dir: str | os.PathLike) -> Any:
    """Open (creating if needed) the JSON tuning database in ``database_dir``.

    Takes the shared lock while the files are read, so a concurrent tuner's half-written line
    is never loaded.
    """
    with database_lock(database_dir, exclusive=False):
        return _open_unlocked(database_dir)


DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


def _cut_torn_tail(path: Path) -> bool:
    """Cut a last line that a writer killed mid-append left without its newline.

    MetaSchedule appends one JSON line per workload and record; a torn last line makes its loader
    fail the whole database ("Unexpected end of string"), losing every good record before it.
    Records only ever refer to complete workload lines (a record is written after its workload),
    so dropping the torn line loses only what was never committed. Safe under the shared lock
    too: a torn tail with no exclusive holder means its writer is gone, and every repairer cuts
    at the same place.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        pos = size
        while pos > 0:  # scan back for the last newline, 64 KiB at a time (files grow to MBs)
            start = max(0, pos - (1 << 16))
            f.seek(start)
            i = f.read(pos - start).rfind(b"\n")
            if i >= 0:
                pos = start + i + 1
                break
            pos = start
        f.truncate(pos)
        f.flush()
        os.fsync(f.fileno())
    return True


def _open_unlocked(database_dir: str | os.PathLike) -> Any:
    from tvm.s_tir import meta_schedule as ms

    Path(database_dir).mkdir(parents=True, exist_ok=True)
    # A record tuned for an AVX-512/VNNI CPU may tensorize an int8 kernel; replaying its trace at
    # build time looks the intrinsic up by name, so register them (0.3 s, once per process).
    register_x86_intrinsics()
    for name in DATABASE_FILES:
        _cut_torn_tail(Path(database_dir) / name)
    return ms.database.JSONDatabase(work_dir=str(database_dir), module_equality="structural")


def _fmt_s(sec: float) -> str:
    sec = max(0, int(round(sec)))
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class _Interrupted(Exception):
    """Raised from the measure callback to stop MetaSchedule after a Ctrl-C."""


def _progress_callback(total: int, n_tasks: int, names: list[str], state: dict, log: Callable[[str], None] | None):
    """A MetaSchedule measure callback: progress line with ETA; stops the search after Ctrl-C."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            state["trials"] += len(measure_candidates)
            state["tasks_seen"].add(int(task_id))
            done = state["trials"]
            el = time.perf_counter() - state["t0"]
            eta = el / done * max(total - done, 0) if done else 0.0
            if log and not os.environ.get("LEPTON_NO_PROGRESS"):  # `lepton-opt --quiet`
                name = names[int(task_id)] if 0 <= int(task_id) < len(names) else str(task_id)
                log(f"tuning: {done}/{total} trials, kernel {len(state['tasks_seen'])}/{n_tasks} ({name}), "
                    f"{_fmt_s(el)} elapsed, ETA {_fmt_s(eta)}")
            if state["interrupted"]:
                raise _Interrupted()

    return _Progress()


@contextlib.contextmanager
def _sigint_to_flag(state: dict, log: Callable[[str], None] | None) -> Iterator[None]:
    """First Ctrl-C sets ``state['interrupted']`` (tuning stops after the current batch and the
    model is still built); a second one aborts (KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        state["interrupted"] = True
        signal.signal(signal.SIGINT, old if callable(old) else signal.default_int_handler)
        if log:
            log("interrupted: stopping after the current batch and building with the best kernels so far "
                "(Ctrl-C again to abort)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def stderr_log(prefix: str = "tvm-cpu") -> Callable[[str], None]:
    """A ``log`` function printing ``prefix: message`` lines to stderr."""

    def log(msg: str) -> None:
        print(f"{prefix}: {msg}", file=sys.stderr, flush=True)

    return log


def fused_module(mod: Any, target: Any) -> Any:
    """Run the build pipeline up to kernel fusion (before scheduling): the kernels ``build`` sees."""
    from tvm.s_tir import dlight as dl

    from . import lower

    passes = lower.pipeline_passes(target)
    cut = next(i for i, p in enumerate(passes) if isinstance(p, dl.ApplyDefaultSchedule))
    with target:
        for p in passes[:cut]:
            mod = p(mod)
    return mod


def tune(
    mod: Any,
    target: Any,
    trials: int,
    database_dir: str | os.PathLike | None = None,
    *,
    trials_per_task: int | None = None,
    trials_per_iter: int = 16,
    only: list[str] | None = None,
    seed: int | None = 0,
    log: Callable[[str], None] | None = None,
    runner: Any = None,
    cross_cc: str | None = None,
) -> TuneResult:
    """Tune the kernels of ``mod`` for ``target`` with MetaSchedule, persisting to ``database_dir``.

    Args:
        mod: Relax module from :func:`lower.to_relax`.
        target: target (preset name, JSON, dict or ``tvm.target.Target``).
        trials: total measurement budget over all kernels still to tune.
        database_dir: JSON database folder (``database_workload.json``,
            ``database_tuning_record.json``); reused across calls and models. Default:
            :func:`default_database_dir`.
        trials_per_task: cap per kernel (default: ``trials`` split evenly, at least one iteration).
        trials_per_iter: candidates measured per search iteration.
        only: optional substrings; tune only kernels whose name contains one (e.g. ``["conv2d"]``).
        seed: search seed, for reproducibility.
        log: called with one-line progress messages (e.g. :func:`stderr_log`); ``None``: quiet.
        runner: MetaSchedule runner measuring the candidates (default: this host, a
            ``LocalRunner``); :func:`remote_runner` measures on a remote device over TVM RPC.
        cross_cc: C cross compiler linking candidates for a remote device of another
            architecture (e.g. ``aarch64-linux-gnu-gcc``).

    The exclusive database lock is held for the whole call (see :func:`database_lock`). A Ctrl-C
    (in the main thread) stops the search after the current batch: the records measured so far
    are already in the database and the result has ``interrupted=True``; a second Ctrl-C aborts.

    Returns:
        :class:`TuneResult`; build with ``lower.build(mod, result.target, database=result.database)``.
    """
    from tvm.s_tir import meta_schedule as ms

    t_start = time.perf_counter()
    tgt = tuning_target(target)
    database_dir = Path(database_dir) if database_dir is not None else default_database_dir(tgt)
    fused = fused_module(mod, tgt)
    tasks = ms.relax_integration.extract_tasks(fused, tgt)
    if only:
        tasks = [t for t in tasks if any(s in t.task_name for s in only)]
    dynamic = [t.task_name for t in tasks if not _static_kernel(t.dispatched[0])]
    if dynamic:
        # MetaSchedule cannot tune kernels over symbolic shapes (its search fails on them, taking
        # the whole tuning run down): they keep the search-free schedules.
        tasks = [t for t in tasks if t.task_name not in set(dynamic)]
        if log:
            log(f"{len(dynamic)} kernels have symbolic shapes and are not tuned (pin input shapes, e.g. "
                f"--input-shape, to tune them): {', '.join(dynamic[:5])}{' ...' if len(dynamic) > 5 else ''}")
    state = {"trials": 0, "tasks_seen": set(), "interrupted": False, "t0": time.perf_counter(), "baseline": 0}
    with database_lock(database_dir, exclusive=True, log=log):
        db = _open_unlocked(database_dir)
        todo, skipped = [], []
        for t in tasks:
            # A workload is "known" when it has a measured record; a workload committed by an
            # interrupted run without records is tuned again.
            if db.has_workload(t.dispatched[0]) and db.query_tuning_record(t.dispatched[0], tgt, t.task_name) is not None:
                skipped.append(t.task_name)
            else:
                todo.append(t)
        before = len(db)
        if log:
            log(f"tuning database {database_dir}: {len(tasks)} kernels, {len(skipped)} already tuned, "
                f"{len(todo) if trials > 0 else 0} to tune")
        if todo and trials > 0:
            # Every kernel still to tune gets its share of the budget (at least one measurement),
            # so a finished run leaves none of them unmeasured and the next compile with the same
            # database measures nothing new.
            per_task = trials_per_task or max(1, trials // len(todo))
            trials_per_iter = max(1, min(trials_per_iter, per_task))
            trials = max(trials, len(todo)) if not trials_per_task else trials
            total = min(trials, per_task * len(todo))
            with _sigint_to_flag(state, log), _without_tensor_intrin_import(tgt):
                if log:
                    log(f"tuning: preparing MetaSchedule for {len(todo)} kernels, {total} trials")
                contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    todo, work_dir=str(database_dir), seed=seed, space=_space(tgt)
                )
                workers = max(1, min(2, os.cpu_count() or 1))
                builder = ms.builder.LocalBuilder(
                    f_build=_BUILD_FUNC, f_export=_EXPORT_FUNC,
                    initializer=functools.partial(_register_build_func, cross_cc),
                    max_workers=workers, timeout_sec=60,
                )
                if runner is None:
                    runner = ms.runner.LocalRunner(timeout_sec=60)
                seeded = state["baseline"] = _seed_default_schedules(todo, tgt, db, builder, runner)
                if log:
                    log(f"tuning: measured the search-free schedules of {seeded}/{len(todo)} kernels as the baseline "
                        "records (a tuned kernel replaces one only if it measured faster)")
                callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
                callbacks.append(_progress_callback(total, len(todo), [t.task_name for t in todo], state, log))
                state["t0"] = time.perf_counter()
                try:
                    if not state["interrupted"]:
                        ms.tune_tasks(
                            builder=builder,
                            runner=runner,
                            tasks=contexts,
                            task_weights=weights,
                            work_dir=str(database_dir),
                            max_trials_global=trials,
                            max_trials_per_task=per_task,
                            num_trials_per_iter=trials_per_iter,
                            database=db,
                            measure_callbacks=callbacks,
                        )
                except BaseException:
                    # After a Ctrl-C the error may come back wrapped by TVM's FFI (or from a worker
                    # that saw the signal too): the records so far are in the database either way.
                    if not state["interrupted"]:
                        raise
            # Re-open so the returned database holds exactly what is on disk.
            db = _open_unlocked(database_dir)
    return TuneResult(
        database=db,
        target=tgt,
        tasks_total=len(tasks),
        tasks_tuned=[t.task_name for t in todo] if trials > 0 else [],
        tasks_skipped=skipped,
        new_records=len(db) - before,
        trials=state["trials"],
        seconds=time.perf_counter() - t_start,
        interrupted=state["interrupted"],
        baseline=state["baseline"],
    )
