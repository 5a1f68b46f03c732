"""Coverage-guided fuzzing of Lepton's untrusted-input readers with atheris (libFuzzer).

    python bench/fuzz.py --target load-bytes --seconds 120
    python bench/fuzz.py --target all --seconds 60 --json bench/results/fuzz.json
    python bench/fuzz.py --list

Targets and the contract are in tests/fuzz/targets.py: the only allowed failure is a LeptonError
with a one-line message; anything else (another exception, a run past the time bound, memory past
the bound) is a finding, saved as a reproducer in tests/fuzz/corpus/<target>/crash-<sha1> (with a
.txt note beside it). Fuzzing starts from the target's seeds and that saved corpus; the inputs
libFuzzer keeps as new coverage go to a scratch folder (not the repository).

Prints: inputs tried, inputs per second, findings (total and distinct bugs) and the CPU. Each
target runs in its own process (atheris can only fuzz one function per process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "fuzz"))


def cpu_name() -> str:
    """The CPU's model name, as lscpu prints it (the figures depend on it)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _dict_file(tokens: tuple[bytes, ...], path: Path) -> None:
    """libFuzzer dictionary: one quoted token a line, bytes outside printable ASCII as \\xNN."""
    lines = []
    for t in tokens:
        esc = "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\x{b:02x}" for b in t)
        lines.append(f'"{esc}"')
    path.write_text("\n".join(lines) + "\n")


def fuzz_one(name: str, seconds: float, save_dir: Path, instrument: bool, result_path: Path | None) -> int:
    """Fuzz one target in this process for `seconds`; print and (optionally) write the figures."""
    import atheris

    import targets as T

    target = T.TARGETS[name]
    if instrument:
        # Coverage feedback from the code under test only: instrumenting onnx/numpy too would
        # slow every input down without steering the search toward our parsers.
        with atheris.instrument_imports(include=list(target.instrument)):
            for mod in target.instrument:
                __import__(mod)
    work = Path(tempfile.mkdtemp(prefix=f"lepton-fuzz-{name}-"))
    live, seeds = work / "live", work / "seeds"
    live.mkdir()
    seeds.mkdir()
    for i, (label, data) in enumerate(T.iter_inputs(name)):
        (seeds / f"{i:04d}-{label}").write_bytes(data)
    dict_path = work / "tokens.dict"
    _dict_file(target.tokens, dict_path)

    state = {"n": 0, "findings": 0, "current": None, "started": 0.0}
    distinct: dict[str, dict] = {}
    t0 = time.monotonic()

    def report(exit_code: int) -> None:
        el = time.monotonic() - t0
        res = {"target": name, "inputs": state["n"], "seconds": round(el, 1), "per_second": round(state["n"] / max(el, 1e-9)),
               "findings": state["findings"], "distinct": len(distinct), "bugs": list(distinct.values()),
               "cpu": cpu_name(), "instrumented": instrument}
        print(f"{name}: {state['n']} inputs in {el:.0f} s ({res['per_second']}/s) on {res['cpu']}; "
              f"{state['findings']} findings, {len(distinct)} distinct", flush=True)
        for key, b in distinct.items():
            print(f"  {b['count']:6d} x {key}: {b['error']} -> {b['reproducer']}", flush=True)
        if result_path is not None:
            result_path.write_text(json.dumps(res, indent=2))
        # os._exit skips atexit (libFuzzer owns the process): remove the scratch folders here.
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        if T._WORK is not None:
            shutil.rmtree(T._WORK, ignore_errors=True)
        os._exit(exit_code)

    def watchdog() -> None:
        # SIGALRM cannot interrupt C code (protobuf, numpy): a run stuck there is caught here,
        # saved as a hang reproducer, and ends the run.
        while True:
            time.sleep(0.5)
            cur = state["current"]
            if cur is not None and time.monotonic() - state["started"] > 4 * T.TIME_BOUND_S:
                f = T.Finding("hang", f"hang: stuck past {4 * T.TIME_BOUND_S} s (in native code)", "native", "")
                p = T.save_reproducer(name, cur, f, save_dir)
                distinct[f.key] = {"error": f.error, "count": 1, "reproducer": str(p)}
                state["findings"] += 1
                report(3)

    threading.Thread(target=watchdog, daemon=True).start()

    def test_one(data: bytes) -> None:
        state["n"] += 1
        state["current"], state["started"] = data, time.monotonic()
        f = T.classify(target, data)
        state["current"] = None
        if f is not None:
            state["findings"] += 1
            b = distinct.get(f.key)
            if b is None:
                p = T.save_reproducer(name, data, f, save_dir)
                distinct[f.key] = {"error": f.error, "count": 1, "reproducer": str(p)}
                print(f"FINDING {f.key}: {f.error} (saved {p})", flush=True)
            else:
                b["count"] += 1
        if time.monotonic() - t0 >= seconds:
            report(0)

    T.bound_memory()
    argv = [sys.argv[0], str(live), str(seeds), f"-dict={dict_path}", f"-max_total_time={int(seconds) + 60}",
            "-timeout=0", "-rss_limit_mb=0", "-print_final_stats=0", "-close_fd_mask=0",
            # A native crash (a signal in C++ code) ends the process: libFuzzer saves the input here.
            f"-artifact_prefix={save_dir / name}/native-"]
    (save_dir / name).mkdir(parents=True, exist_ok=True)
    atheris.Setup(argv, test_one)
    atheris.Fuzz()
    report(0)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="all", help="target name, or 'all' (one process each)")
    ap.add_argument("--seconds", type=float, default=60.0, help="time per target")
    ap.add_argument("--save-dir", type=Path, default=REPO / "tests" / "fuzz" / "corpus",
                    help="where reproducers of findings go (corpus/<target>/)")
    ap.add_argument("--no-instrument", action="store_true", help="no coverage instrumentation (faster, blind)")
    ap.add_argument("--json", type=Path, help="write the figures of every target here")
    ap.add_argument("--list", action="store_true", help="list the targets")
    ap.add_argument("--differential", action="store_true",
                    help="differential fuzzing instead: random models through each pipeline x backend against "
                         "ONNX Runtime (--seconds per combination; tests/fuzz/differential.py)")
    ap.add_argument("--pipelines", default="canonicalize,fuse,quant8,fp16,legalize,prune",
                    help="--differential: pipelines (comma-separated)")
    ap.add_argument("--backends", default="onnx,tvm-cpu", help="--differential: backends (comma-separated)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import targets as T

    if args.list:
        for n, t in T.TARGETS.items():
            print(f"{n:12s} {t.doc}")
        return 0
    if args.differential:
        import differential as D

        # One child process serves every combination (restarted after a native crash or a hang):
        # importing TVM and ONNX Runtime once, not per example.
        worker = D.Worker()
        save_root = args.save_dir / "differential"
        res = []
        for p in args.pipelines.split(","):
            for b in args.backends.split(","):
                r = D.fuzz_combo(p, b, args.seconds, worker=worker, save_root=save_root)
                r.update(cpu=cpu_name(), load_average=os.getloadavg())
                res.append(r)
                if args.json:  # after each combination: a long run killed midway keeps its figures
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(res, indent=2))
        worker.close()
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(res, indent=2))
        return 1 if any(r["mismatches"] for r in res) else 0
    if args._child:
        # libFuzzer reads sys.argv for its flags: keep ours out of its sight.
        sys.argv = sys.argv[:1]
        return fuzz_one(args._child, args.seconds, args.save_dir, not args.no_instrument, args._result)
    names = list(T.TARGETS) if args.target == "all" else [args.target]
    unknown = [n for n in names if n not in T.TARGETS]
    if unknown:
        print(f"fuzz.py: error: unknown target {unknown[0]!r}; known: {', '.join(T.TARGETS)}", file=sys.stderr)
        return 2
    results, status = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for n in names:
            rp = Path(tmp) / f"{n}.json"
            cmd = [sys.executable, __file__, "--_child", n, "--seconds", str(args.seconds), "--save-dir", str(args.save_dir),
                   "--_result", str(rp)] + (["--no-instrument"] if args.no_instrument else [])
            # libFuzzer's own chatter goes to stderr; the figures come on stdout.
            rc = subprocess.run(cmd, stderr=subprocess.DEVNULL if not os.environ.get("LEPTON_FUZZ_VERBOSE") else None).returncode
            if rp.exists():
                r = json.loads(rp.read_text())
                results.append(r)
                status |= 1 if r["findings"] else 0
            else:
                native = sorted((args.save_dir / n).glob("native-*"), key=lambda p: p.stat().st_mtime)
                print(f"{n}: the fuzzing process died (exit {rc}, a native crash) without a report"
                      + (f"; input saved as {native[-1]}" if native else ""), flush=True)
                status |= 1
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
