"""Fault injection on everything Lepton writes (issue #19).

    python bench/fault_injection.py                       # every writer, default kill points
    python bench/fault_injection.py --writer artifact-onnx --points 40
    python bench/fault_injection.py --writer disk --json bench/results/faults.json

Writers and what is checked:

* `artifact-onnx`, `artifact-tvm`: `lepton-opt lepton/data/digits_cnn.onnx -o OUT` with the onnx /
  tvm-cpu backend, alternating two pipelines so the old and the new artifact differ; SIGKILL (to
  the whole process group) after a random delay. Then OUT must be the previous artifact or the
  complete new one: `read_manifest` verifies every hash and `lepton.load` opens and runs it.
  Finally an uninterrupted rerun must succeed and leave no staging folder behind.
* `calibration`: the same with `quant8{calib=FOLDER}` (64 .npy samples), killed while it calibrates.
* `tuning-db`: a writer process takes the tuning database's exclusive lock and commits records with
  MetaSchedule's own JSONDatabase (what `tune()` does after each measured batch), printing each
  commit; it is killed at a random point. The database must load (`open_database`), hold every
  record the writer acknowledged, and take a rerun's records.
* `tuning-concurrent`: two writers at once into one database: no record lost.
* `disk`: a 200 KiB tmpfs filled up, and a read-only mount: one-line error, non-zero exit, the old
  artifact intact, no staging folder left. Needs root (mount); skipped otherwise.

Prints per writer: kill points tried, how many landed inside the write (a staging folder or a torn
line was left), corrupt outputs (goal 0), lost records (goal 0), failed reruns (goal 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
DIGITS = REPO / "lepton" / "data" / "digits_cnn.onnx"
ENV = {**os.environ, "LEPTON_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}


def lepton_opt(*args: str) -> list[str]:
    """The lepton-opt command line (through this interpreter, so the test's install is used)."""
    return [sys.executable, "-c", "import sys; from lepton.cli import opt_main; sys.exit(opt_main())", *args]


# ------------------------------------------------------------------------------------------------
# Checking an output folder
# ------------------------------------------------------------------------------------------------
def artifact_identity(out: Path) -> str | None:
    """The artifact's pipeline (what tells the two alternating writes apart), after verifying it
    fully: every hash (`read_manifest`), opened by its backend and run once (`lepton.load`).
    None when there is no folder; raises when the folder is not a complete, loadable artifact."""
    if not out.exists():
        return None
    import numpy as np

    import lepton
    from lepton_backends import read_manifest

    manifest = read_manifest(out)
    runner = lepton.load(out)
    runner.run({"image": np.zeros((1, 1, 8, 8), np.float32)})
    return str(manifest.get("pipeline"))


def staging_left(out: Path) -> list[Path]:
    """Staging folders of `out` (`.OUT.tmp-PID-*`) present now."""
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


def _kill_group(p: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=REPO)


# ------------------------------------------------------------------------------------------------
# Artifact writers (onnx, tvm-cpu, calibration)
# ------------------------------------------------------------------------------------------------
def calibration_folder(root: Path, n: int = 64) -> Path:
    """`n` digits-shaped .npy samples (one per file): enough that calibrating takes a while."""
    import numpy as np

    d = root / "calib"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(d / f"s{i:03d}.npy", rng.random((1, 8, 8), dtype=np.float32))
    return d


def artifact_commands(writer: str, out: Path, root: Path) -> list[list[str]]:
    """The two alternating commands of a writer (each writes `out`, with different pipelines)."""
    if writer == "artifact-onnx":
        return [lepton_opt(str(DIGITS), "--passes", p, "--backend", "onnx", "-o", str(out))
                for p in ("canonicalize", "canonicalize,fuse")]
    if writer == "artifact-tvm":
        return [lepton_opt(str(DIGITS), "--passes", p, "--backend", "tvm-cpu", "-o", str(out))
                for p in ("canonicalize", "canonicalize,fuse")]
    if writer == "calibration":
        calib = calibration_folder(root)
        return [lepton_opt(str(DIGITS), "--passes", f"quant8{{calib={calib},calibration={m}}}", "--backend", "onnx",
                           "-o", str(out)) for m in ("minmax", "entropy")]
    raise ValueError(writer)


#: System calls that can be kill points: everything the artifact writer does to the file system.
SYSCALLS = "mkdir,openat,write,fsync,chmod,fchmodat,rename,renameat,renameat2,unlink,unlinkat,rmdir"


def write_syscalls(cmd: list[str], out: Path) -> list[tuple[str, int]]:
    """The writer's file-system calls from the moment it creates its staging folder to its exit,
    as (syscall, ordinal among that process's calls of that name): kill points for strace.

    Found with one traced dry run. `strace -e inject=NAME:signal=KILL:when=N` then kills the
    process exactly at its N-th NAME call (counted per thread; only the main thread writes
    artifacts), so every point lands inside the write instead of mostly in start-up.
    """
    import re

    with tempfile.NamedTemporaryFile("r", suffix=".strace") as log:
        subprocess.run(["strace", "-f", "--seccomp-bpf", "-qq", "-e", f"trace={SYSCALLS}", "-o", log.name, "--", *cmd],
                       capture_output=True, env=ENV, cwd=REPO, timeout=900, check=True)
        lines = log.read().splitlines()
    pat = re.compile(r"^(\d+)\s+([a-z0-9_]+)\(")
    parsed = [(m.group(1), m.group(2), ln) for ln in lines if (m := pat.match(ln))]
    if not parsed:
        return []
    main = parsed[0][0]
    counts: dict[str, int] = {}
    points, started = [], False
    for pid, name, ln in parsed:
        if pid != main:
            continue
        counts[name] = counts.get(name, 0) + 1
        if not started and name == "mkdir" and f"/.{out.name}.tmp-" in ln:
            started = True
        if started:
            points.append((name, counts[name]))
    return points


def _canonical(cmd: list[str]) -> str:
    """The pipeline of a command as the manifest records it (canonical text)."""
    from lepton_passes import parse_pipeline

    return str(parse_pipeline(cmd[cmd.index("--passes") + 1]))


def fault_artifact(writer: str, points: int, seed: int = 0, log=print) -> dict[str, Any]:
    """Kill a writer `points` times; check the output after each kill.

    With strace, 3 in 4 kill points are system calls inside the write (see `write_syscalls`),
    the rest random moments of the whole run (start-up, passes, compiling); without strace all are
    random moments."""
    rng = random.Random(seed)
    res = {"writer": writer, "kill_points": 0, "in_write": 0, "corrupt": 0, "failed_reruns": 0,
           "stale_staging_after_rerun": 0, "states": {"old": 0, "new": 0, "absent": 0}, "problems": []}
    with tempfile.TemporaryDirectory(prefix=f"lepton-faults-{writer}-") as tmp:
        root = Path(tmp)
        out = root / "out"
        cmds = artifact_commands(writer, out, root)
        t0 = time.monotonic()
        r = _run(cmds[0])
        duration = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"{writer}: the uninterrupted write failed: {r.stderr.strip()}")
        current = artifact_identity(out)
        # Kill points inside the write, per command (the two differ: fuse changes what is written).
        sys_points = [write_syscalls(c, out) if shutil.which("strace") else [] for c in cmds]
        res["syscall_points_per_write"] = [len(x) for x in sys_points]
        res["by_syscall"] = {}
        for i in range(points):
            k = (i + 1) % 2
            cmd = cmds[k]
            expected_new = _canonical(cmd)
            finished = False
            if sys_points[k] and i % 4 != 0:
                name, nth = rng.choice(sys_points[k])
                res["by_syscall"][name] = res["by_syscall"].get(name, 0) + 1
                p = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={name}",
                                      "-e", f"inject={name}:signal=KILL:when={nth}", "--", *cmd],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=REPO,
                                     start_new_session=True)
                p.wait(timeout=900)
                killed = bool(staging_left(out)) or p.returncode != 0
                res["in_write"] += killed
                finished = not killed
            else:
                # A random moment of the whole run (start-up, passes, compile, write).
                delay = duration * rng.uniform(0.0, 1.1)
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=REPO,
                                     start_new_session=True)
                try:
                    p.wait(timeout=delay)
                    finished = True
                except subprocess.TimeoutExpired:
                    res["in_write"] += bool(staging_left(out))  # staging folder there at the kill
                    _kill_group(p)
            res["kill_points"] += 1
            try:
                state = artifact_identity(out)
            except Exception as e:  # noqa: BLE001 - any failure to verify or load is a corrupt output
                res["corrupt"] += 1
                res["problems"].append(f"kill {i} after {delay:.2f}s: output corrupt: {type(e).__name__}: {e}")
                state = "corrupt"
            if state == current:
                res["states"]["old"] += 1
            elif state == expected_new:
                res["states"]["new"] += 1
            elif state is None:
                res["states"]["absent"] += 1
                res["corrupt"] += 1  # an artifact was there before: losing it is a failure too
                res["problems"].append(f"kill {i}: the previous artifact is gone")
            elif state != "corrupt":
                res["corrupt"] += 1
                res["problems"].append(f"kill {i}: output is neither the old nor the new artifact ({state!r})")
            if finished and p.returncode != 0:
                res["problems"].append(f"kill {i}: the run exited {p.returncode} before the kill")
            if finished:
                res["finished_before_kill"] = res.get("finished_before_kill", 0) + 1
            current = state if state not in (None, "corrupt") else current
        # A rerun after the last kill succeeds and removes what the killed writers left.
        r = _run(cmds[0])
        if r.returncode != 0 or artifact_identity(out) != _canonical(cmds[0]):
            res["failed_reruns"] += 1
            res["problems"].append(f"rerun failed: {r.stderr.strip()[-300:]}")
        res["stale_staging_after_rerun"] = len(staging_left(out))
        res["run_seconds"] = round(duration, 2)
    log(_summary(res))
    return res


# ------------------------------------------------------------------------------------------------
# Tuning database
# ------------------------------------------------------------------------------------------------
#: A writer committing records the way tune() does: under the exclusive lock, MetaSchedule's
#: JSONDatabase, one workload then records; each record's run_secs = [tag + i] identifies it.
#: Prints "ok i" after each commit returns (an acknowledged record must survive any kill).
_DB_WRITER = r"""
import sys
import time
from pathlib import Path
import tvm
from tvm import te
import tvm.s_tir as s_tir
from tvm.s_tir import meta_schedule as ms
from lepton_backends.tvm.tune import database_lock, _open_unlocked
db_dir, tag, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
A = te.placeholder((64,), name="A")
B = te.compute((64,), lambda i: A[i] * 2.0 + 1.0, name="B")
mod = tvm.IRModule({"main": te.create_prim_func([A, B])})
trace = s_tir.Schedule(mod).trace
target = tvm.target.Target("llvm")
args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
print("start", flush=True)
with database_lock(db_dir, exclusive=True):
    db = _open_unlocked(db_dir)
    wl = db.commit_workload(mod)
    for i in range(n):
        db.commit_tuning_record(ms.database.TuningRecord(trace, wl, [tag + i], target, args))
        print("ok", i, flush=True)
        time.sleep(0.005)  # tune() commits after each measured batch (seconds apart), not in a burst
"""


def db_records(db_dir: Path) -> list[float]:
    """run_secs[0] of every record in the database, loaded the way compiles load it."""
    from lepton_backends.tvm.tune import open_database

    db = open_database(db_dir)
    return [float(r.run_secs[0]) for r in db.get_all_tuning_records()]


def _db_writer(db_dir: Path, tag: float, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _DB_WRITER, str(db_dir), str(tag), str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=ENV, start_new_session=True)


def fault_tuning_db(points: int, seed: int = 0, per_writer: int = 30, log=print) -> dict[str, Any]:
    """Kill a database writer at random points; every acknowledged record must load afterwards."""
    rng = random.Random(seed)
    res = {"writer": "tuning-db", "kill_points": 0, "in_write": 0, "corrupt": 0, "lost_records": 0,
           "failed_reruns": 0, "problems": []}
    with tempfile.TemporaryDirectory(prefix="lepton-faults-db-") as tmp:
        db_dir = Path(tmp) / "db"
        db_dir.mkdir()
        t0 = time.monotonic()
        p = _db_writer(db_dir, 0.0, per_writer)
        p.communicate(timeout=600)
        duration = time.monotonic() - t0
        acked: set[float] = {float(i) for i in range(per_writer)}
        for k in range(points):
            tag = 1000.0 * (k + 1)
            p = _db_writer(db_dir, tag, per_writer)
            # Kill right after the writer acknowledged a random commit (plus up to 2 ms), so the
            # kill lands in the middle of the commit sequence rather than in TVM's start-up.
            k_at = rng.randrange(-1, per_writer - 1)
            got: list[int] = []
            assert p.stdout is not None
            for line in p.stdout:
                w = line.split()
                if w and w[0] == "ok":
                    got.append(int(w[1]))
                if (k_at < 0 and w == ["start"]) or (got and got[-1] >= k_at >= 0):
                    break
            time.sleep(rng.uniform(0, 0.002))
            _kill_group(p)
            rest = p.stdout.read().split()
            got += [int(rest[j + 1]) for j in range(len(rest) - 1) if rest[j] == "ok"]
            acked |= {tag + i for i in got}
            res["kill_points"] += 1
            res["in_write"] += len(got) < per_writer  # killed before its last commit
            try:
                have = set(db_records(db_dir))
            except Exception as e:  # noqa: BLE001 - a database that does not load is corrupt
                res["corrupt"] += 1
                res["problems"].append(f"kill {k}: database does not load: {type(e).__name__}: {str(e)[-200:]}")
                continue
            lost = acked - have
            res["lost_records"] += len(lost)
            if lost:
                res["problems"].append(f"kill {k}: {len(lost)} acknowledged records missing")
        # Rerun: a full writer succeeds and all its records are there.
        p = _db_writer(db_dir, 1e7, per_writer)
        p.communicate(timeout=600)
        try:
            have = set(db_records(db_dir))
            if p.returncode != 0 or not {1e7 + i for i in range(per_writer)} <= have:
                res["failed_reruns"] += 1
        except Exception as e:  # noqa: BLE001
            res["failed_reruns"] += 1
            res["problems"].append(f"rerun: database does not load: {e}")
        res["run_seconds"] = round(duration, 2)
    log(_summary(res))
    return res


def concurrent_tuning(writers: int = 2, per_writer: int = 30, log=print) -> dict[str, Any]:
    """`writers` processes commit into one database at once: every record must be there after."""
    res = {"writer": "tuning-concurrent", "writers": writers, "records": writers * per_writer, "lost_records": 0,
           "corrupt": 0, "problems": []}
    with tempfile.TemporaryDirectory(prefix="lepton-faults-dbc-") as tmp:
        db_dir = Path(tmp) / "db"
        db_dir.mkdir()
        procs = [_db_writer(db_dir, 1000.0 * w, per_writer) for w in range(writers)]
        for p in procs:
            p.communicate(timeout=600)
            if p.returncode != 0:
                res["problems"].append(f"a writer exited {p.returncode}")
        try:
            have = set(db_records(db_dir))
        except Exception as e:  # noqa: BLE001
            res["corrupt"] = 1
            res["problems"].append(f"database does not load: {e}")
            have = set()
        want = {1000.0 * w + i for w in range(writers) for i in range(per_writer)}
        res["lost_records"] = len(want - have)
    log(f"tuning-concurrent: {writers} writers x {per_writer} records at once: {res['lost_records']} lost, "
        f"{res['corrupt']} corrupt")
    return res


# ------------------------------------------------------------------------------------------------
# A real MetaSchedule run writing the tuning database
# ------------------------------------------------------------------------------------------------
def conv_model(path: Path, channels: tuple[int, ...], size: int = 16) -> Path:
    """A chain of 3x3 Conv+Relu layers (one fused TVM kernel each), input `x` [1, c0, size, size]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(len(channels))
    nodes, inits, prev = [], [], "x"
    for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
        w = (rng.standard_normal((cout, cin, 3, 3)) * 0.1).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    nodes[-1].output[0] = "y"
    g = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels[0], size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels[-1], size, size])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _db_lines(db_dir: Path) -> tuple[list[bytes], list[bytes]]:
    """(workload lines, record lines) of a JSON database: the complete (newline-ended) lines."""
    out = []
    for name in ("database_workload.json", "database_tuning_record.json"):
        p = db_dir / name
        data = p.read_bytes() if p.exists() else b""
        out.append(data.splitlines(keepends=True)[: data.count(b"\n")])
    return out[0], out[1]


def _conv_artifact_ok(out: Path) -> str | None:
    """None when `out` is absent; 'ok' when it verifies, loads and runs; raises otherwise."""
    if not out.exists():
        return None
    import numpy as np

    import lepton
    from lepton_backends import read_manifest

    manifest = read_manifest(out)
    shape = manifest["inputs"][0]["shape"]
    lepton.load(out).run({"x": np.zeros(shape, np.float32)})
    return "ok"


def fault_tuning_real(points: int, seed: int = 0, trials: int = 2, log=print) -> dict[str, Any]:
    """SIGKILL a real `lepton-opt --backend tvm-cpu --tune` run while MetaSchedule writes its database.

    The database starts with another model's tuned records (what an earlier compile left). Kill
    points: 2 in 3 are the N-th write() to the record or the workload file (strace `-P FILE
    -e inject=write:signal=KILL:when=N`: the process dies exactly as it is about to append that
    line), the rest random moments of the whole run (start-up, the baseline measurements, the
    search, the build, the artifact write). After each kill: the database must load
    (`open_database`) holding every complete line (no record lost, the earlier model's included);
    an uninterrupted rerun must succeed, append to it (the file before the rerun is a prefix of
    the file after), reuse every kernel that had a committed record ("K already tuned"), and
    leave an artifact that loads and runs.
    """
    from lepton_backends.tvm.tune import open_database

    rng = random.Random(seed)
    res: dict[str, Any] = {"writer": "tuning-real", "kill_points": 0, "in_write": 0, "corrupt": 0, "lost_records": 0,
                           "failed_reruns": 0, "not_reused": 0, "by_point": {}, "problems": []}
    with tempfile.TemporaryDirectory(prefix="lepton-faults-tune-") as tmp:
        root = Path(tmp)
        old_model = conv_model(root / "old.onnx", (4, 4))
        model = conv_model(root / "model.onnx", (8, 16, 8))  # two kernels to tune

        def cmd(db: Path, out: Path, src: Path = model) -> list[str]:
            return lepton_opt(str(src), "--backend", "tvm-cpu", "--tune", str(trials), "--tuning-db", str(db),
                              "--no-fallback", "-o", str(out))

        base = root / "base"
        r = _run(cmd(base, root / "old-out", old_model), timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"tuning-real: tuning the first model failed: {r.stderr.strip()[-500:]}")
        base_wl, base_rec = _db_lines(base)
        # One uninterrupted run: how long it takes and how many lines it appends.
        dry = root / "dry"
        shutil.copytree(base, dry)
        t0 = time.monotonic()
        r = _run(cmd(dry, root / "dry-out"), timeout=1800)
        duration = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(f"tuning-real: the uninterrupted run failed: {r.stderr.strip()[-500:]}")
        wl, rec = _db_lines(dry)
        n_wl, n_rec = len(wl) - len(base_wl), len(rec) - len(base_rec)
        res.update(run_seconds=round(duration, 1), workload_lines=n_wl, record_lines=n_rec)
        log(f"tuning-real: one run {duration:.0f} s, appends {n_wl} workload and {n_rec} record lines")
        out = root / "out"
        for k in range(points):
            db = root / f"db{k}"
            shutil.copytree(base, db)
            if k % 3 != 2 and shutil.which("strace"):
                fname, n = (("database_tuning_record.json", rng.randint(1, n_rec)) if rng.random() < 0.75 or not n_wl
                            else ("database_workload.json", rng.randint(1, n_wl)))
                point = f"write {n} of {fname.split('_', 1)[1].split('.')[0]}"
                p = subprocess.Popen(["strace", "-qq", "-o", "/dev/null", "-P", str(db / fname), "-e", "trace=write",
                                      "-e", f"inject=write:signal=KILL:when={n}", "--", *cmd(db, out)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=REPO,
                                     start_new_session=True)
                try:
                    p.wait(timeout=1800)
                finally:
                    _kill_group(p)  # MetaSchedule's builder/runner workers outlive the killed parent
                killed = p.returncode != 0
                res["by_point"]["write"] = res["by_point"].get("write", 0) + 1
            else:
                delay = duration * rng.uniform(0.0, 1.05)
                point = f"{delay:.1f} s in"
                p = subprocess.Popen(cmd(db, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                                     cwd=REPO, start_new_session=True)
                try:
                    p.wait(timeout=delay)
                    killed = False
                except subprocess.TimeoutExpired:
                    killed = True
                _kill_group(p)
                res["by_point"]["random"] = res["by_point"].get("random", 0) + 1
            res["kill_points"] += 1
            wl_k, rec_k = _db_lines(db)
            res["in_write"] += killed and len(rec_k) - len(base_rec) < n_rec
            # The database loads, and holds every complete line, the earlier model's first.
            try:
                loaded = len(open_database(db).get_all_tuning_records())
            except Exception as e:  # noqa: BLE001 - a database that does not load is corrupt
                res["corrupt"] += 1
                res["problems"].append(f"kill {k} ({point}): database does not load: {type(e).__name__}: {str(e)[-200:]}")
                continue
            wl_k, rec_k = _db_lines(db)  # after open_database's repair of a torn tail
            lost = (len(rec_k) - loaded) + (0 if rec_k[: len(base_rec)] == base_rec else len(base_rec))
            res["lost_records"] += max(lost, 0)
            if lost:
                res["problems"].append(f"kill {k} ({point}): {lost} committed records not loaded")
            # Kernels of this model with a committed record: what the rerun must reuse.
            committed = {json.loads(line)[0] for line in rec_k[len(base_rec):]} - set(range(len(base_wl)))
            before = (db / "database_tuning_record.json").read_bytes()
            try:
                state = _conv_artifact_ok(out)
            except Exception as e:  # noqa: BLE001 - a half-written artifact
                res["corrupt"] += 1
                res["problems"].append(f"kill {k} ({point}): artifact corrupt: {type(e).__name__}: {e}")
            r = _run(cmd(db, out), timeout=1800)
            after = (db / "database_tuning_record.json").read_bytes()
            import re

            m = re.search(r"(\d+) kernels, (\d+) already tuned", r.stderr)
            reused = int(m.group(2)) if m else -1
            try:
                state = _conv_artifact_ok(out)
            except Exception as e:  # noqa: BLE001
                state = f"{type(e).__name__}: {e}"
            if r.returncode != 0 or state != "ok":
                res["failed_reruns"] += 1
                res["problems"].append(f"kill {k} ({point}): rerun failed: {r.stderr.strip()[-300:]} / {state}")
            if not after.startswith(before):
                res["lost_records"] += 1
                res["problems"].append(f"kill {k} ({point}): the rerun rewrote committed records")
            if reused != len(committed):
                res["not_reused"] += 1
                res["problems"].append(f"kill {k} ({point}): rerun reused {reused} kernels, {len(committed)} had records")
            log(f"  kill {k}: {point}: killed={killed}, {len(rec_k) - len(base_rec)}/{n_rec} records committed, "
                f"{len(committed)} kernels -> rerun reused {reused}")
            shutil.rmtree(db, ignore_errors=True)
    log(_summary(res) + f", not reused {res['not_reused']}")
    return res


# ------------------------------------------------------------------------------------------------
# Disk full, read-only
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(size: str, root: Path) -> Iterator[Path]:
    """A fresh tmpfs of `size` mounted at root/mnt (root only), unmounted after."""
    mnt = root / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def can_mount() -> bool:
    """Root and a working `mount -t tmpfs` (containers may refuse it)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tmpfs("64k", Path(tmp)):
                return True
        except (subprocess.CalledProcessError, OSError):
            return False


def _fill(mnt: Path, leave: int) -> None:
    """Fill the file system at `mnt` until about `leave` bytes are free."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(mnt / "filler", "wb") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * max(0, free - leave))


def _one_line_error(r: subprocess.CompletedProcess) -> bool:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("lepton-opt: warning:")]
    return r.returncode != 0 and len(lines) == 1 and lines[0].startswith("lepton-opt: error:") \
        and "Traceback" not in r.stderr


def fault_disk(log=print) -> dict[str, Any]:
    """Disk full (new output, replacing an artifact) and read-only mounts."""
    res: dict[str, Any] = {"writer": "disk", "cases": [], "corrupt": 0, "problems": []}
    if not can_mount():
        res["skipped"] = "needs root and mount -t tmpfs"
        log("disk: skipped (needs root and mount -t tmpfs)")
        return res

    def case(name: str, r: subprocess.CompletedProcess, out: Path, want: str | None) -> None:
        ok_err = _one_line_error(r)
        try:
            state = artifact_identity(out)
        except Exception as e:  # noqa: BLE001
            state = f"corrupt ({e})"
        left = staging_left(out)
        good = ok_err and state == want and not left
        res["cases"].append({"case": name, "exit": r.returncode, "stderr": r.stderr.strip(), "output": state,
                             "staging_left": len(left), "ok": good})
        if not good:
            res["corrupt"] += state != want or bool(left)
            res["problems"].append(f"{name}: exit {r.returncode}, stderr {r.stderr.strip()[-300:]!r}, output {state!r}, "
                                   f"{len(left)} staging folders left")
        log(f"disk: {name}: exit {r.returncode}, {'one-line error' if ok_err else 'NOT a one-line error'}: "
            f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}; output {'intact' if state == want else state}"
            f"{'' if not left else f', {len(left)} staging folders left'}")

    with tempfile.TemporaryDirectory(prefix="lepton-faults-disk-") as tmp:
        root = Path(tmp)
        # 1. full disk, no previous output
        with tmpfs("200k", root) as mnt:
            _fill(mnt, 8 << 10)
            out = mnt / "out"
            case("disk full, new artifact", _run(lepton_opt(str(DIGITS), "--passes", "canonicalize", "--backend", "onnx",
                                                             "-o", str(out))), out, None)
        shutil.rmtree(root / "mnt", ignore_errors=True)
        # 2. full disk while replacing an artifact: the old one stays
        with tmpfs("200k", root) as mnt:
            out = mnt / "out"
            r = _run(lepton_opt(str(DIGITS), "--passes", "canonicalize", "--backend", "onnx", "-o", str(out)))
            if r.returncode != 0:
                res["problems"].append(f"could not write the first artifact: {r.stderr}")
            _fill(mnt, 8 << 10)
            case("disk full, replacing an artifact", _run(lepton_opt(str(DIGITS), "--passes", "canonicalize,fuse",
                                                                     "--backend", "tvm-cpu", "-o", str(out))),
                 out, "canonicalize")
        shutil.rmtree(root / "mnt", ignore_errors=True)
        # 3. read-only mount holding an artifact
        with tmpfs("1m", root) as mnt:
            out = mnt / "out"
            _run(lepton_opt(str(DIGITS), "--passes", "canonicalize", "--backend", "onnx", "-o", str(out)))
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
            case("read-only folder, replacing an artifact", _run(lepton_opt(str(DIGITS), "--passes", "canonicalize,fuse",
                                                                            "--backend", "onnx", "-o", str(out))),
                 out, "canonicalize")
            case("read-only folder, new artifact", _run(lepton_opt(str(DIGITS), "--passes", "canonicalize",
                                                                   "--backend", "onnx", "-o", str(mnt / "new"))),
                 mnt / "new", None)
    return res


def _summary(res: dict[str, Any]) -> str:
    extra = "".join(f", {k.replace('_', ' ')} {res[k]}" for k in ("lost_records", "failed_reruns",
                                                                    "stale_staging_after_rerun") if k in res)
    states = f" (after the kill: {res['states']})" if "states" in res else ""
    return (f"{res['writer']}: {res['kill_points']} kill points, {res['in_write']} inside the write, "
            f"{res['corrupt']} corrupt outputs{extra}{states}")


WRITERS = ("artifact-onnx", "artifact-tvm", "calibration", "tuning-db", "tuning-real", "tuning-concurrent", "disk")
DEFAULT_POINTS = {"artifact-onnx": 40, "artifact-tvm": 15, "calibration": 25, "tuning-db": 25, "tuning-real": 12}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writer", action="append", choices=WRITERS, help="writer to test (repeatable; default: all)")
    ap.add_argument("--points", type=int, help="kill points per writer (default per writer)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    results = []
    for w in args.writer or WRITERS:
        n = args.points or DEFAULT_POINTS.get(w, 0)
        if w.startswith("artifact") or w == "calibration":
            results.append(fault_artifact(w, n, args.seed))
        elif w == "tuning-db":
            results.append(fault_tuning_db(n, args.seed))
        elif w == "tuning-real":
            results.append(fault_tuning_real(n, args.seed))
        elif w == "tuning-concurrent":
            results.append(concurrent_tuning())
        else:
            results.append(fault_disk())
    for r in results:
        for p in r.get("problems", []):
            print(f"  {r['writer']}: {p}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    bad = sum(r.get("corrupt", 0) + r.get("lost_records", 0) + r.get("failed_reruns", 0) + r.get("not_reused", 0)
              for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
