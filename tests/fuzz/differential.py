"""Differential fuzzing (issue #19): random models through a pipeline and a backend, against ONNX
Runtime on the original model.

For every generated model (`lepton_ir.testing.strategies.onnx_models`, derandomized):
`lepton.optimize(model, passes=P, backend=B, output=tmp)`, then `lepton.load(tmp).run(inputs)`
compared with ONNX Runtime (CPU, optimizations off) on the original, within the pipeline's
tolerance (`Pass.tolerance` on the model, as `check_pass` uses). A compile that ends in a
one-line LeptonError is counted as *refused* (legitimate: e.g. an op TVM cannot lower), anything
else that goes wrong is a mismatch: wrong outputs, a crash, an artifact that does not run.

* Each example runs in a child process (`Worker`): a native crash (a signal in ONNX Runtime's or
  TVM's C++ code) or a hang ends the child, not the fuzzer, and becomes a finding like any other.
* `quant8` calibrates on samples drawn the way the compared inputs are (`inputs_for`, the value
  ranges the generator declares), the compared sample among them: its tolerance is only claimed
  for data inside the calibrated ranges (passes/quant/tolerance.py), and calibrating on
  standard-normal `random:8` samples while comparing on inputs in [0.1, 2] measured clipping, not
  quant8 (the first quant8 x onnx finding; tests/fuzz/corpus/differential/quant8-onnx/README.txt).
* `prune` is lossy by design: its artifact is compared with ONNX Runtime on the pruned model
  (exact pipeline output), and with the original only for output names, dtypes and shapes.

Hypothesis shrinks each mismatch; the minimal model is saved with the inputs, the calibration
samples and the `lepton-opt` command that reproduce it (tests/fuzz/corpus/differential/
<pipeline>-<backend>[-N]/, `case.json` for the replaying regression test). After a mismatch the
search restarts from another seed until the time is up, so one combination can report several
distinct findings (keyed by the error with numbers stripped).

    python bench/fuzz.py --differential --seconds 60     # per pipeline x backend
"""

from __future__ import annotations

import json
import os
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from targets import CORPUS, lepton_message

PIPELINES = ("canonicalize", "fuse", "quant8", "fp16", "legalize", "prune")
BACKENDS = ("onnx", "tvm-cpu")
LOSSY = ("prune",)  # outputs change by design: compared with ORT on the pipeline's own output
CALIB_SAMPLES = 8
EXAMPLE_TIMEOUT_S = 300.0  # one compile + run in the child; past it the child is killed (a hang)


class Mismatch(AssertionError):
    """The artifact's outputs differ from ONNX Runtime's on the original, or the compile broke."""


def _tolerance(pipeline_text: str, model: Any) -> tuple[float, float]:
    from lepton_passes import parse_pipeline

    tols = [q.tolerance(model) for q in parse_pipeline(pipeline_text).passes()]
    return (max(t[0] for t in tols), max(t[1] for t in tols)) if tols else (1e-4, 1e-5)


def write_calibration(proto: Any, feeds: Mapping[str, np.ndarray], seed: int, folder: Path) -> Path:
    """`CALIB_SAMPLES` .npz samples in `folder`: the compared feeds and draws of the same ranges."""
    from lepton_ir.testing.strategies import inputs_for

    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "s00.npz", **feeds)
    for i in range(1, CALIB_SAMPLES):
        np.savez(folder / f"s{i:02d}.npz", **inputs_for(proto, seed + 7919 * i))
    return folder


def pipeline_text(pipeline: str, calib: Path | None) -> str:
    """The pipeline as run: quant8 with the calibration folder."""
    if calib is not None and pipeline == "quant8":
        return f"quant8{{calib={calib}}}"
    return pipeline


def run_one(proto: Any, pipeline: str, backend: str, seed: int = 0,
            feeds: Mapping[str, np.ndarray] | None = None, work: Path | None = None) -> str:
    """'ok' or 'refused' (one-line LeptonError); raises Mismatch otherwise. In this process:
    `Worker.run` calls it in a child. `work` (default: a temporary folder) receives the artifact
    and the calibration samples."""
    from lepton_ir.testing.strategies import inputs_for

    feeds = dict(feeds) if feeds is not None else inputs_for(proto, seed)
    if work is None:
        with tempfile.TemporaryDirectory(prefix="lepton-diff-") as tmp:
            return run_one(proto, pipeline, backend, seed, feeds, Path(tmp))
    import lepton
    from lepton_ir import LeptonError
    from lepton_passes.instruments import run_onnxruntime
    from lepton_passes.testing import _ort, compare_outputs

    ref = _ort(proto, feeds)
    calib = write_calibration(proto, feeds, seed, work / "calib") if pipeline == "quant8" else None
    text = pipeline_text(pipeline, calib)
    out = work / "out"
    try:
        res = lepton.optimize(proto, passes=text, backend=backend, output=out)
    except LeptonError as e:
        msg = lepton_message(e)
        if "\n" in msg:
            raise Mismatch(f"multi-line error: {msg!r}") from None
        return "refused"
    except Exception as e:  # noqa: BLE001 - a crash in the compile is a finding
        raise Mismatch(f"compile crashed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    try:
        got = lepton.load(out).run(dict(feeds))
    except Exception as e:  # noqa: BLE001 - a published artifact must load and run
        raise Mismatch(f"artifact does not run: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from e
    names = [n for n, _ in ref]
    if pipeline in LOSSY:
        # Names, dtypes and shapes against the original (infinite tolerance), values against ORT
        # on what the pipeline made, within the backend's float tolerance.
        why = compare_outputs(ref, [(n, got[n]) for n in names if n in got], 1e30, 1e30)
        if why is None:
            ref = list(zip(names, run_onnxruntime(res.model, feeds)))
            rtol, atol = _tolerance("canonicalize", res.model)
            why = compare_outputs(ref, [(n, got[n]) for n in names if n in got], rtol, atol)
    else:
        rtol, atol = _tolerance(text, res.model)
        why = compare_outputs(ref, [(n, got[n]) for n in names if n in got], rtol, atol)
    if why:
        raise Mismatch(why)
    return "ok"


# ------------------------------------------------------------------------------------------------
# The child process
# ------------------------------------------------------------------------------------------------
def _serve(conn: Any, log_path: str) -> None:
    """Child loop: receive (model bytes, pipeline, backend, seed), answer (status, detail)."""
    import onnx

    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)  # TVM's and ORT's native chatter (and a crash's C stack) go to the log
    os.environ.setdefault("LEPTON_NO_PROGRESS", "1")
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        data, pipeline, backend, seed, feeds = job
        if pipeline == "!crash":  # the harness's own check that a native crash is caught
            import ctypes

            ctypes.string_at(0)
        try:
            conn.send((run_one(onnx.load_from_string(data), pipeline, backend, seed, feeds), ""))
        except Mismatch as e:
            conn.send(("mismatch", str(e)))
        except BaseException as e:  # noqa: BLE001 - the harness itself failed: report, keep serving
            conn.send(("mismatch", f"harness error: {type(e).__name__}: {str(e)[:300]}"))


def _crash_site(log_path: str) -> str:
    """The innermost named frame of a native crash in the child's log, when it printed one."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()[-80:]
    except OSError:
        return ""
    frames = [ln.strip() for ln in lines if re.search(r"(onnxruntime|tvm|libstdc|\.so)", ln)]
    return frames[0][:200] if frames else (lines[-1][:200] if lines else "")


class Worker:
    """One child process running `run_one` (a fresh interpreter: no forked TVM/ORT thread pools);
    restarted after a crash or a hang."""

    def __init__(self, timeout: float = EXAMPLE_TIMEOUT_S) -> None:
        self.timeout = timeout
        self.log = tempfile.NamedTemporaryFile(prefix="lepton-diff-child-", suffix=".log", delete=False).name
        self.proc: Any = None
        self.conn: Any = None
        self.starts = 0

    def _start(self) -> None:
        # A plain `python -c` child over a socket pair (not multiprocessing's spawn, which re-runs
        # the parent's __main__: a pytest or bench entry point, or nothing when that is stdin).
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        Path(self.log).write_text("")
        parent, child = socket.socketpair()
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
                "from multiprocessing.connection import Connection; import differential as D; "
                f"D._serve(Connection({child.fileno()}), {self.log!r})")
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[child.fileno()],
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        child.close()
        self.conn = Connection(parent.detach())
        self.starts += 1

    def run(self, data: bytes, pipeline: str, backend: str, seed: int,
            feeds: Mapping[str, np.ndarray] | None = None) -> tuple[str, str]:
        """(status, detail): status ok / refused / mismatch / crash / hang. `feeds`: the inputs
        compared (default `inputs_for(model, seed)`)."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.conn.send((data, pipeline, backend, seed, None if feeds is None else dict(feeds)))
            if self.conn.poll(self.timeout):
                return self.conn.recv()
            self.close(kill=True)
            return "hang", f"hang: no answer within {self.timeout:.0f} s"
        except (EOFError, OSError):
            pass  # the child died: a crash, below
        try:
            code = self.proc.wait(10)
        except Exception:  # noqa: BLE001
            self.close(kill=True)
            code = None
        site = _crash_site(self.log)
        self.proc = None
        try:
            name = signal.Signals(-code).name if code is not None and code < 0 else f"exit {code}"
        except ValueError:
            name = f"signal {-code}"
        return "crash", f"native crash ({name}) in the compile or the run" + (f": {site}" if site else "")

    def close(self, kill: bool = False) -> None:
        import subprocess

        if self.proc is not None:
            if not kill:
                try:
                    self.conn.send(None)
                    self.proc.wait(10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: TVM's worker pools too
                self.proc.wait(10)
        if self.conn is not None:
            self.conn.close()
        self.proc = self.conn = None

    def __del__(self) -> None:  # best effort: the log is scratch
        try:
            self.close(kill=True)
            os.unlink(self.log)
        except Exception:  # noqa: BLE001
            pass


def _key(error: str) -> str:
    """De-duplication key of a finding: its message without numbers and names in quotes."""
    return re.sub(r"'[^']*'", "'_'", re.sub(r"[-+]?\d[\d.e+-]*", "N", error))[:120]


def save_reproducer(proto: Any, seed: int, pipeline: str, backend: str, error: str, folder: Path) -> Path:
    """Model, inputs, calibration samples, case.json and a README with the reproducing command."""
    from lepton_ir.testing.strategies import inputs_for

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(proto.SerializeToString())
    feeds = inputs_for(proto, seed)
    np.savez(folder / "inputs.npz", **feeds)  # the inputs compared
    calib = write_calibration(proto, feeds, seed, folder / "calib") if pipeline == "quant8" else None
    rel = folder.relative_to(CORPUS.parent.parent.parent) if folder.is_relative_to(CORPUS.parent.parent.parent) else folder
    text = pipeline_text(pipeline, rel / "calib" if calib else None)
    (folder / "case.json").write_text(json.dumps({"pipeline": pipeline, "backend": backend, "seed": seed,
                                                  "error": error}, indent=2) + "\n")
    tol = re.search(r"\(rtol ([^,]+), atol ([^)]+)\)", error)
    tol_args = f" --rtol {tol.group(1)} --atol {tol.group(2)}" if tol else ""
    cmd = (f"lepton-opt {rel / 'model.onnx'} --passes '{text}' --backend {backend} -o /tmp/out && "
           f"lepton-run /tmp/out --inputs {rel / 'inputs.npz'} --compare {rel / 'model.onnx'}{tol_args}")
    (folder / "README.txt").write_text(f"{pipeline} x {backend}: {error}\n\nReproduce:\n  {cmd}\n")
    return folder


def fuzz_combo(pipeline: str, backend: str, seconds: float, log=print, worker: Worker | None = None,
               save_root: Path | None = None) -> dict[str, Any]:
    """Examples for `seconds` (derandomized rounds), shrinking and saving each distinct mismatch."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    from lepton_ir.testing.strategies import onnx_models

    own = worker is None
    worker = worker or Worker()
    save_root = save_root or CORPUS / "differential"
    counts: dict[str, Any] = {"pipeline": pipeline, "backend": backend, "examples": 0, "ok": 0, "refused": 0,
                              "mismatches": 0, "shrink_runs": 0, "crashes": 0, "findings": []}
    t0 = time.monotonic()
    seen: set[str] = set()

    class _Stop(Exception):
        """Time is up (raised outside hypothesis's view of failures: caught below)."""

    for rnd in range(1000):
        if time.monotonic() - t0 > seconds:
            break
        state: dict[str, Any] = {"first": None, "last": None}

        @hseed(rnd)
        @settings(max_examples=10**6, deadline=None, database=None, print_blob=False,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate, Phase.shrink])
        @given(proto=onnx_models(max_nodes=8), seed=st.integers(0, 2**16))
        def prop(proto: Any, seed: int) -> None:
            shrinking = state["first"] is not None
            if not shrinking and time.monotonic() - t0 > seconds:
                raise _Stop()
            if shrinking:
                counts["shrink_runs"] += 1
                if time.monotonic() - state["t"] > max(120.0, seconds):  # shrinking bounded too
                    return
            status, detail = worker.run(proto.SerializeToString(), pipeline, backend, seed)
            if not shrinking:
                counts["examples"] += 1
                if status in ("ok", "refused"):
                    counts[status] += 1
            if status in ("ok", "refused"):
                return
            err = detail
            if shrinking and _key(err) != _key(state["first"]["error"]):
                return  # shrink toward the same finding, not another one
            if not shrinking:
                state["first"] = {"error": err}
                state["t"] = time.monotonic()
                counts["crashes"] += status in ("crash", "hang")
            state["last"] = {"proto": proto, "seed": seed, "error": err}
            raise Mismatch(err)

        try:
            prop()
            break  # generation exhausted without a failure: nothing more to find this way
        except _Stop:
            break
        except Exception:  # noqa: BLE001 - Mismatch, or hypothesis's Flaky when a bounded shrink replays
            if state["first"] is None:
                raise
            last = state["last"] or {}
            key = _key(state["first"]["error"])
            if key in seen or not last:
                continue
            seen.add(key)
            counts["mismatches"] += 1
            base = f"{re.sub('[^a-z0-9-]', '_', pipeline)}-{backend}"
            n = 1
            while (save_root / (base if n == 1 else f"{base}-{n}")).exists():  # never overwrite a saved one
                n += 1
            folder = save_reproducer(last["proto"], last["seed"], pipeline, backend, last["error"],
                                     save_root / (base if n == 1 else f"{base}-{n}"))
            counts["findings"].append({"error": last["error"], "reproducer": str(folder)})
            log(f"  finding: {last['error']} -> {folder}")
    if own:
        worker.close()
    counts["seconds"] = round(time.monotonic() - t0, 1)
    counts["worker_starts"] = worker.starts
    log(f"differential {pipeline} x {backend}: {counts['examples']} examples ({counts['ok']} ok, {counts['refused']} "
        f"refused with a one-line error), {counts['mismatches']} distinct mismatches"
        + (f" ({counts['crashes']} native crashes/hangs)" if counts["crashes"] else "")
        + "".join(f"\n  {f['error']} -> {f['reproducer']}" for f in counts["findings"]))
    return counts
