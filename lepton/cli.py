"""Command-line tools: `lepton-opt` (optimize and compile) and `lepton-run` (run an artifact).

Error contract: every user error (a LeptonError, a usage error, a missing or unreadable file, a bad
pipeline) prints exactly one line `<prog>: error: ...` to stderr and exits non-zero: 2 for usage
errors (bad options, bad pipeline text, unknown backend), 1 otherwise. No traceback for those;
anything else is a bug and keeps its traceback (set LEPTON_TRACEBACK=1 to also see the traceback behind
a one-line error, e.g. a crashing pass). Ctrl-C prints `<prog>: interrupted` and exits 130;
outputs are written atomically, so nothing partial is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence


def _interrupted_while_starting(signum: int, frame: Any) -> None:
    """Ctrl-C while the console script is still importing: nothing is written yet, so exit at once
    (130) instead of dying with a traceback; `_guard` installs the real handler (_Interrupts)."""
    os.write(2, f"{os.path.basename(sys.argv[0])}: interrupted\n".encode())
    os._exit(130)


#: Running as the `lepton-opt` / `lepton-run` console script (not `import lepton.cli` in a program).
_CONSOLE_SCRIPT = os.path.basename(sys.argv[0]) in ("lepton-opt", "lepton-run")

if _CONSOLE_SCRIPT:
    import signal as _signal
    import threading as _threading

    if _threading.current_thread() is _threading.main_thread():
        _signal.signal(_signal.SIGINT, _interrupted_while_starting)

import numpy as np

from lepton_ir import LeptonError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A command-line usage error (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: raise instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _one_line(e: BaseException) -> str:
    msg = getattr(e, "summary", None) or str(e) or type(e).__name__
    return " ".join(msg.split())


def _version(prog: str) -> str:
    try:
        from importlib.metadata import version

        return f"{prog} {version('lepton')}"
    except Exception:  # a bare checkout on sys.path, not installed
        return f"{prog} (version unknown)"


def _debugging() -> bool:
    """--debug (or LEPTON_TRACEBACK=1): tracebacks behind one-line errors, TVM's own output shown."""
    return bool(os.environ.get("LEPTON_TRACEBACK"))


def _tool_dir() -> str | None:
    """The folder of the installed `tvm` package (its warnings are TVM's, not ours), without importing it."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("tvm")
        locs = list(spec.submodule_search_locations or []) if spec else []
        return str(Path(locs[0]).resolve()) + os.sep if locs else None
    except Exception:
        return None


class _Interrupts:
    """Ctrl-C: exit 130 (`<prog>: interrupted`), no output half-written and none published.

    Runtimes may swallow the KeyboardInterrupt a Ctrl-C raises inside their callbacks (TVM turns it
    into a RuntimeError, which the backend could take for "TVM cannot compile this" and fall back
    on), so the handler also records it: the publish hook (`lepton_backends.base.PUBLISH_HOOKS`,
    run right before an artifact or .onnx file is published) then refuses to publish, and `_guard`
    reports whatever error came out as the interruption it is. Once the output is committed (the
    publish hook passed) there is nothing left to stop: a later Ctrl-C only says so (`late`) and the
    command finishes (exit 0); a console script ignores Ctrl-C from then on, interpreter teardown
    included (Python would otherwise die of the signal there, exit -2). While an artifact is being
    staged a console script does not raise at all: it removes the staging and exits 130 at once
    (`_exit_now`: an exception raised inside TVM's native code can abort the process).
    """

    def __init__(self) -> None:
        self.hit = False
        self.committed = False
        self.late = False
        self._old: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.committed:
            self.late = True
            return
        self.hit = True
        from lepton_backends.artifact import STAGING

        if STAGING and _CONSOLE_SCRIPT:
            self._exit_now()
        raise KeyboardInterrupt

    @staticmethod
    def _exit_now() -> None:
        """Ctrl-C while an artifact is being built: remove what it staged and exit 130 at once.

        Raising KeyboardInterrupt here would let it surface inside TVM's native code (tvm_ffi polls
        for signals and rethrows them as C++ exceptions), which aborts the process (exit -6, its
        message lost in the held fd 2) where a frame cannot unwind. Nothing is published yet, so
        the staging folders and TVM's temporary folders are all there is to clean up."""
        from lepton_backends.artifact import discard_staging

        discard_staging()
        tvm_utils = sys.modules.get("tvm.support.utils")
        if tvm_utils is not None:
            with contextlib.suppress(Exception):
                tvm_utils.TempDirectory.remove_tempdirs()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            sys.stdout.flush()
        msg = f"{os.path.basename(sys.argv[0])}: interrupted\n"
        with contextlib.suppress(Exception):
            sys.stderr.write(msg)  # the terminal, also while fd 2 is held (_hold_tool_output)
            sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    def before_publish(self) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.committed = True

    def __enter__(self) -> "_Interrupts":
        import signal
        import threading

        from lepton_backends.base import PUBLISH_HOOKS

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        PUBLISH_HOOKS.append(self.before_publish)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        from lepton_backends.base import PUBLISH_HOOKS

        if self.before_publish in PUBLISH_HOOKS:
            PUBLISH_HOOKS.remove(self.before_publish)
        if self._old is not None:
            if self.committed and _CONSOLE_SCRIPT:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # done: nothing to interrupt any more
            else:
                signal.signal(signal.SIGINT, self._old)


def _guard(prog: str, body: Callable[[], int]) -> int:
    """Run `body`, turning user errors into one stderr line and an exit code."""
    from lepton_backends import BackendError
    from lepton_backends.errors import BackendOptionError
    from lepton_passes import PipelineError

    tool_dir = _tool_dir()

    def show_warning(message, category, filename, lineno, file=None, line=None):  # one line per warning
        if tool_dir and str(filename).startswith(tool_dir) and not _debugging():
            return  # TVM's own chatter ("Renaming name ..."): shown with --debug / LEPTON_TRACEBACK=1
        print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    old_show = warnings.showwarning
    warnings.showwarning = show_warning
    interrupts = _Interrupts()
    try:
        with interrupts:
            try:
                code = body()
                if interrupts.late:
                    print(f"{prog}: interrupted after the output was published (it is complete)", file=sys.stderr)
                return code
            except BaseException:
                if interrupts.hit:  # whatever a runtime made of the KeyboardInterrupt
                    raise KeyboardInterrupt from None
                raise
    except UsageError as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (PipelineError, BackendError) as e:
        usage = isinstance(e, (PipelineError, BackendOptionError)) or "unknown backend" in str(e)
        code = EXIT_USAGE if usage else EXIT_ERROR
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return code
    except LeptonError as e:
        if os.environ.get("LEPTON_TRACEBACK"):  # for pass authors: the full story behind the one line
            traceback.print_exc()
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:  # missing/unreadable files, full disks, permissions
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"{prog}: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        warnings.showwarning = old_show


# ------------------------------------------------------------------------------------------------
# lepton-opt
# ------------------------------------------------------------------------------------------------
def opt_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lepton-opt", description="Optimize an ONNX model with a pass pipeline and compile it "
                "with a backend. Pipeline syntax: docs/pipelines.md.")
    p.add_argument("model", nargs="?", help="input .onnx file (never modified)")
    p.add_argument("--version", action="version", version=_version("lepton-opt"))
    p.add_argument("--passes", metavar="PIPELINE",
                   help="pass pipeline, e.g. 'fuse,fixpoint(canonicalize,cse)' "
                        "(default: the backend's default pipeline)")
    p.add_argument("--load-plugin", metavar="MODULE", action="append", default=[],
                   help="import this Python module first, for the passes or backends it registers (a plugin "
                        "that is not installed, e.g. in a reproducer command); repeatable")
    p.add_argument("--backend", metavar="NAME", help="backend to compile with (see --list-backends); "
                   "default 'onnx' when -o is a folder")
    p.add_argument("--target", metavar="T", help="backend target (e.g. a TVM target string)")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="artifact folder to write (atomically), or a .onnx file: just the optimized model, "
                        "Lepton's fused ops lowered for ONNX Runtime (no backend, or --backend onnx)")
    p.add_argument("--input-shape", metavar="NAME=DIMS", action="append", default=[],
                   help="fix an input's shape, e.g. image=1x3x224x224 (repeatable)")
    p.add_argument("--option", metavar="KEY=VALUE", action="append", default=[],
                   help="backend option (repeatable; see --list-backends)")
    p.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass (stderr)")
    p.add_argument("--print-ir-after-change", action="store_true",
                   help="print the IR after each pass that changed it (stderr)")
    p.add_argument("--time-passes", action="store_true", help="print a per-pass timing table (stderr)")
    p.add_argument("--check", action="store_true",
                   help="differential check: run ONNX Runtime before/after each pass and name the first pass "
                        "that changes outputs beyond its tolerance")
    p.add_argument("--no-verify-each", action="store_true", help="skip IR verification after each pass")
    p.add_argument("--reproducer-dir", metavar="DIR",
                   help="where a failing pass's reproducer folder goes (default: the temp folder)")
    p.add_argument("--list-passes", action="store_true", help="list passes with their options and exit")
    p.add_argument("--list-backends", action="store_true", help="list backends and exit")
    p.add_argument("--debug-rewrites", action="store_true",
                   help="log rewrite decisions, applied rules and near misses (logger 'lepton_passes') to stderr")
    p.add_argument("--quiet", action="store_true", help="no progress output (calibration, tuning); warnings, "
                   "errors and the summary line stay")
    p.add_argument("--debug", action="store_true", help="show what the tools print during a compile (TVM's own "
                   "warnings and dumps, hidden otherwise) and the traceback behind a one-line error "
                   "(as LEPTON_TRACEBACK=1)")
    p.add_argument("--tune", metavar="TRIALS", type=int,
                   help="tvm-cpu/tvm-arm: MetaSchedule-tune kernels not yet in the tuning database with this many "
                        "trials (0: only reuse the database); progress on stderr; a first Ctrl-C while tuning stops "
                        "tuning and still builds with the kernels found so far, a second one aborts (exit 130)")
    p.add_argument("--tuning-db", metavar="PATH",
                   help="tvm-cpu: tuning database folder (default ~/.cache/lepton/tuning/<target-hash>, shared by "
                        "all models)")
    p.add_argument("--tune-rpc", metavar="HOST:PORT",
                   help="measure tuning candidates on the device behind this TVM RPC server (e.g. `lepton-device "
                        "emulate`); needed to tune for a cross target such as --backend tvm-arm")
    p.add_argument("--tune-tracker", metavar="HOST:PORT",
                   help="measure tuning candidates on a device taken from this TVM RPC tracker (needs --tune-key)")
    p.add_argument("--tune-key", metavar="KEY", help="device key to ask --tune-tracker for")
    p.add_argument("--no-fallback", action="store_true",
                   help="tvm-*: fail (with the reasons) instead of running what TVM cannot compile on ONNX Runtime")
    p.add_argument("--report", metavar="PATH.html",
                   help="write an HTML report: passes, latency against ONNX Runtime, output deviation, accuracy "
                        "(with --report-data), quant8's per-layer error, stages (docs/report.md)")
    p.add_argument("--report-data", metavar="DATA.npz",
                   help="inputs for --report (one array per model input, samples on the first axis) and optionally "
                        "`labels` for top-1 accuracy (default: seeded random inputs)")
    return p


def format_pass_list() -> str:
    """The `--list-passes` text: every pass, its one-line doc and its options."""
    from lepton_passes import describe_options, list_passes, pass_origin

    lines = ["Passes:"]
    passes = list_passes()
    if not passes:
        lines.append("  (none registered)")
    width = max([len(n) for n in passes] + [8])
    for name, cls in passes.items():
        origin = pass_origin(name)
        plugin = f"  [{origin}]" if origin.startswith("entry point") else ""
        lines.append(f"  {name:<{width}}  {cls.summary()}{plugin}")
        for opt, typ, default, help_ in describe_options(cls):
            lines.append(f"      {opt}: {typ} = {default}" + (f"  -- {help_}" if help_ else ""))
    lines.append("  fixpoint(...)" + " " * max(width - 13, 0) + "  re-run the enclosed passes until none changes "
                 "the model; option max-iterations: int = 10")
    return "\n".join(lines)


def format_backend_list() -> str:
    from lepton_backends import list_backends

    from lepton_backends.base import REGISTRY

    lines = ["Backends:"]
    for name, cls in list_backends().items():
        origin = REGISTRY.origin(name)
        plugin = f"  [{origin}]" if origin.startswith("entry point") else ""
        lines.append(f"  {name:<10}  {cls.summary()}{plugin}")
        lines.append(f"      default pipeline: {cls.default_pipeline or '(none)'}")
        for opt, typ, default, help_ in cls.describe_options():
            lines.append(f"      --option {opt}=...: {typ} = {default}" + (f"  -- {help_}" if help_ else ""))
    return "\n".join(lines)


def _parse_option(text: str) -> tuple[str, str]:
    """`KEY=VALUE`; the backend converts VALUE to its option's type (Backend.parse_options)."""
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise UsageError(f"bad --option {text!r}: expected KEY=VALUE")
    return key, value


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (so captured/redirected stderr works)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _log_rewrites_to_stderr() -> None:
    lg = logging.getLogger("lepton_passes")
    if not any(isinstance(h, _StderrHandler) for h in lg.handlers):
        lg.addHandler(_StderrHandler())
    lg.setLevel(logging.DEBUG)


def _load_plugin(module: str) -> None:
    """Import a module that registers passes/backends (`--load-plugin`); a failure is a usage error."""
    import importlib

    try:
        importlib.import_module(module)
    except LeptonError:
        raise
    except Exception as e:  # ImportError, or whatever the plugin's own import raised: one line
        raise UsageError(f"--load-plugin {module}: cannot import it: {type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]}") from None


def _opt(args: argparse.Namespace) -> int:
    from lepton.driver import optimize, parse_shape
    from lepton_backends import get_backend
    from lepton_passes import PrintIRInstrument, TimingInstrument, parse_pipeline

    for mod in args.load_plugin:  # first: the plugin's passes are then listed and parsed like any
        _load_plugin(mod)
    if args.list_passes or args.list_backends:
        if args.list_passes:
            print(format_pass_list())
        if args.list_backends:
            print(format_backend_list())
        return EXIT_OK
    if not args.model:
        raise UsageError("the following arguments are required: MODEL (or --list-passes / --list-backends)")
    # Validate everything cheap before touching the model: usage errors come first and exit 2.
    pipeline = parse_pipeline(args.passes) if args.passes is not None else None
    # `--backend 'split{edge=cortex-a72,bandwidth=20mbit}'`: options spelled inside braces, as in pipelines.
    from lepton_backends.split import parse_spec

    backend_name, spec_options = parse_spec(args.backend) if args.backend else (None, {})
    backend = get_backend(backend_name)() if backend_name else None
    try:
        shapes = dict(parse_shape(s) for s in args.input_shape)
    except LeptonError as e:
        raise UsageError(str(e)) from None
    options = {**spec_options, **dict(_parse_option(o) for o in args.option)}
    if (args.tune_rpc or args.tune_tracker or args.tune_key) and args.tune is None:
        raise UsageError("--tune-rpc/--tune-tracker/--tune-key go with --tune TRIALS")
    if args.tune_rpc and args.tune_tracker:
        raise UsageError("give --tune-rpc or --tune-tracker, not both")
    if args.tune_tracker and not args.tune_key:
        raise UsageError("--tune-tracker needs --tune-key KEY")
    if args.tune is not None or args.tuning_db is not None:
        if args.tune is not None and args.tune < 0:
            raise UsageError("--tune takes a non-negative number of trials")
        if backend is None or "tune-trials" not in {row[0] for row in backend.describe_options()}:
            raise UsageError("--tune/--tuning-db need a backend that tunes (--backend tvm-cpu)")
        if args.tune is not None:
            options["tune-trials"] = args.tune
        if args.tuning_db is not None:
            options["tuning-db"] = args.tuning_db
        for opt, val in (("tune-rpc", args.tune_rpc), ("tune-tracker", args.tune_tracker), ("tune-key", args.tune_key)):
            if val:
                options[opt] = val
    if args.no_fallback:
        if backend is None or "fallback" not in {row[0] for row in backend.describe_options()}:
            raise UsageError("--no-fallback needs a backend that falls back (--backend tvm-cpu, tvm-arm, tvm-cuda)")
        options["fallback"] = False
    if backend is not None and args.output is None:
        raise UsageError(f"--backend {args.backend} needs -o OUT")
    if args.target and backend is None and not (args.output and not args.output.endswith(".onnx")):
        raise UsageError("--target needs a backend (--backend NAME)")
    if not Path(args.model).exists():
        raise LeptonError(f"{args.model}: no such file")
    if args.report_data and not args.report:
        raise UsageError("--report-data goes with --report PATH.html")
    if args.report and Path(args.report).is_dir():
        raise UsageError(f"--report {args.report} is a folder; give the HTML file to write")
    if args.report_data:
        from lepton.report import load_report_data

        load_report_data(args.report_data)  # a missing or unreadable file: one line before any slow step
    if args.debug_rewrites:
        _log_rewrites_to_stderr()
    if args.debug:
        os.environ["LEPTON_TRACEBACK"] = "1"
    if args.quiet:
        os.environ["LEPTON_NO_PROGRESS"] = "1"

    instruments: list[Any] = []
    if args.print_ir_after_all or args.print_ir_after_change:
        instruments.append(PrintIRInstrument(_STDERR, only_changed=not args.print_ir_after_all))
    timing = TimingInstrument(_STDERR) if args.time_passes else None
    if timing is not None:
        instruments.append(timing)
    repro = args.reproducer_dir or tempfile.gettempdir()
    t0 = time.perf_counter()
    with _hold_tool_output(not _debugging()):
        result = optimize(args.model, pipeline, backend, args.output, target=args.target,
                          input_shapes=shapes or None, check=args.check, instruments=instruments,
                          verify_each=not args.no_verify_each, reproducer_dir=repro,
                          debug_rewrites=args.debug_rewrites, report=args.report,
                          report_data=args.report_data, **options)
    dt = time.perf_counter() - t0
    print(summary_line(args.model, result, dt, checked=args.check))
    if result.report_file is not None:
        print(f"wrote report {result.report_file}: {result.report_summary}")
    return EXIT_OK


class _LateStderr:
    """Writes to whatever `sys.stderr` is when it writes: instruments made before
    `_hold_tool_output` swaps the stream still reach the terminal (not the hidden fd 2)."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


_STDERR = _LateStderr()


def _size(n: int) -> str:
    for unit, k in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def _bytes_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def summary_line(model: str, result: Any, seconds: float, *, checked: bool = False) -> str:
    """`m.onnx: 8 -> 5 nodes, 16.4 kB -> 15.9 kB; 3 pass run(s), 2 changed; 1.93 s; wrote out`.

    Sizes: the input file, and what was written (the .onnx file, or every file of the artifact
    folder), or the optimized model serialized when nothing was written. The time is the whole
    command's (passes and compile)."""
    import lepton_ir

    before = Path(model).stat().st_size
    if result.artifact is not None:
        after = _bytes_of(Path(result.artifact))
    else:
        after = lepton_ir.to_onnx(result.model).ByteSize()
    runs = len(result.report.records)
    changed = sum(r.changed for r in result.report.records)
    took = f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.0f} ms"
    line = (f"{model}: {result.nodes_before} -> {result.nodes_after} nodes, {_size(before)} -> {_size(after)}; "
            f"{runs} pass run(s), {changed} changed; {took}")
    if checked:
        line += "; differential check passed"
    if result.artifact is not None:
        line += f"; wrote {result.artifact}"
        mf = Path(result.artifact) / "manifest.json"
        stages = json.loads(mf.read_text()).get("stages", []) if mf.is_file() else []
        if len(stages) > 1:
            kinds = ", ".join(f"{s['backend']} ({s.get('nodes', '?')} nodes)" for s in stages)
            line += f" with {len(stages)} stages: {kinds}"
    return line


class _hold_tool_output:
    """Hide what libraries print by themselves during a compile (TVM: "Error converting operator"
    dumps on stdout, C++ log lines on stderr): file descriptors 1 and 2 go to a temporary file,
    while Python's `sys.stderr` (Lepton's warnings, progress, the differential check, --print-ir)
    keeps writing to the terminal and `sys.stdout` to a buffer. `--debug` (LEPTON_TRACEBACK=1)
    turns it off. Only the real standard streams are touched (not a test harness's replacements)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._saved: dict[int, int] = {}
        self._streams: list[tuple[str, Any, Any]] = []
        self._log: Any = None

    def __enter__(self) -> "_hold_tool_output":
        if not self.enabled:
            return self
        import io

        try:
            for fd in (1, 2):
                self._saved[fd] = os.dup(fd)
        except OSError:  # no such descriptor (a daemon): nothing to hide
            for fd in self._saved.values():
                os.close(fd)
            self._saved = {}
            return self
        self._log = tempfile.TemporaryFile()
        for name, fd in (("stdout", 1), ("stderr", 2)):
            stream = getattr(sys, name)
            try:
                real = stream.fileno() == fd
            except (AttributeError, OSError, ValueError):
                real = False
            if not real:
                continue
            stream.flush()
            if name == "stderr":
                new = os.fdopen(os.dup(self._saved[fd]), "w", buffering=1, encoding=stream.encoding,
                                errors="backslashreplace")
            else:
                new = io.StringIO()
            setattr(sys, name, new)
            self._streams.append((name, stream, new))
        for fd in (1, 2):
            os.dup2(self._log.fileno(), fd)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._saved:
            return
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._saved = {}
        for name, old, new in reversed(self._streams):
            with contextlib.suppress(Exception):
                new.flush()
            setattr(sys, name, old)
            if name == "stderr":
                with contextlib.suppress(Exception):
                    new.close()
        self._streams = []
        if self._log is not None:
            self._log.close()


def opt_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lepton-opt`; returns the exit status."""

    def body() -> int:
        return _opt(opt_parser().parse_args(argv))

    return _guard("lepton-opt", body)


# ------------------------------------------------------------------------------------------------
# lepton-run
# ------------------------------------------------------------------------------------------------
def run_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lepton-run", description="Run a compiled Lepton artifact, benchmark it, and compare it "
                "with ONNX Runtime on the original model.")
    p.add_argument("artifact", help="artifact folder written by lepton-opt -o")
    p.add_argument("--version", action="version", version=_version("lepton-run"))
    p.add_argument("--inputs", metavar="IN.npz", help="inputs by name (default: seeded random data from the manifest)")
    p.add_argument("--output", metavar="OUT.npz", help="write the outputs here")
    p.add_argument("--bench", metavar="N", type=int, default=0, help="time N runs (after warm-up) and print "
                   "median and p90 latency")
    p.add_argument("--warmup", metavar="W", type=int, default=3, help="untimed warm-up runs before --bench (default 3)")
    p.add_argument("--compare", metavar="MODEL.onnx", help="compare outputs (and latency with --bench) with "
                   "ONNX Runtime on this model")
    p.add_argument("--rtol", type=float, default=None,
                   help="relative tolerance for --compare (default: the pipeline's, recorded in the manifest "
                        "when it is looser than 1e-3, e.g. quant8's; else 1e-3)")
    p.add_argument("--atol", type=float, default=None,
                   help="absolute tolerance for --compare (default: the pipeline's, recorded in the manifest "
                        "when it is looser than 1e-4; else 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed for generated inputs (default 0)")
    p.add_argument("--rpc", metavar="HOST:PORT", nargs="?", const="127.0.0.1:9090",
                   help="run on a remote device through its TVM RPC server (e.g. `lepton-device emulate`; "
                   "default 127.0.0.1:9090); --bench times on the device")
    p.add_argument("--tracker", metavar="HOST:PORT", help="run on a device taken from this TVM RPC tracker (needs --key)")
    p.add_argument("--key", metavar="KEY", help="device key to request from --tracker (e.g. aarch64)")
    p.add_argument("--session-timeout", metavar="S", type=float, default=0,
                   help="end the remote session after S seconds (default: no limit)")
    p.add_argument("--cloud", metavar="URL", help="a split artifact: its edge half on the --rpc device, its cloud "
                   "half on this lepton-serve of the same artifact; the cut follows the measured link, edge-only "
                   "when the server is unreachable (docs/split.md)")
    return p


def _generate_inputs(manifest: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    from lepton_ir.reference import random_inputs

    # Symbolic dims 1: the smallest run of the artifact, as `lepton-run` has always made it.
    return random_inputs(manifest.get("inputs", []), seed=seed, dim_size=1)


def _load_npz(path: str) -> dict[str, np.ndarray]:
    if not Path(path).is_file():
        raise LeptonError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise LeptonError(f"{path}: not a readable .npz file ({e})") from None


def _save_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _bench(fn: Callable[[], Any], n: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 90))


def _stage_table(rows: list[dict[str, Any]]) -> str:
    """The per-stage breakdown of a multi-stage artifact (lepton-run --bench)."""
    lines = [f"{'stage':<8} {'backend':<9} {'device':<7} {'nodes':>5} {'in bytes':>10} {'out bytes':>10} {'ms':>9}  why"]
    for r in rows:
        lines.append(f"{str(r['name']):<8} {str(r['backend']):<9} {str(r['device']):<7} {str(r['nodes'] or '-'):>5} "
                     f"{r['bytes_in']:>10} {r['bytes_out']:>10} {r['median_ms']:>9.3f}  {r['reason'][:90]}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    import lepton
    from lepton_ir.reference import compare_outputs, feed_for, ort_session, run_ort

    if args.bench < 0 or args.warmup < 0:
        raise UsageError("--bench and --warmup take non-negative counts")
    remote = bool(args.rpc or args.tracker)
    if args.rpc and args.tracker:
        raise UsageError("give --rpc or --tracker, not both")
    if args.tracker and not args.key:
        raise UsageError("--tracker needs --key (the device key the server registered with)")
    if args.key and not args.tracker:
        raise UsageError("--key is only used with --tracker")
    if args.cloud:  # the edge runtime of a split artifact (lepton/split_runtime.py): timed end to end, here
        from lepton.split_runtime import SplitRunner

        runner = SplitRunner(args.artifact, args.cloud, rpc=args.rpc, tracker=args.tracker, key=args.key)
        remote = False
    elif remote:
        from lepton.remote import RemoteRunner

        runner = RemoteRunner(args.artifact, rpc=args.rpc, tracker=args.tracker, key=args.key,
                              session_timeout=args.session_timeout)
        print(f"device: {runner.address} ({runner.target_triple or runner.library_arch}); "
              f"connect {runner.connect_s:.2f} s, upload+load {runner.upload_s:.2f} s")
    else:
        runner = lepton.load(args.artifact)
    inputs = _load_npz(args.inputs) if args.inputs else _generate_inputs(runner.manifest, args.seed)
    outputs = runner.run(inputs)
    for name, arr in outputs.items():
        stats = f" min {arr.min():.4g} max {arr.max():.4g}" if arr.size and arr.dtype.kind in "fiu" else ""
        print(f"output {name}: {arr.dtype} {list(arr.shape)}{stats}")
    if args.output:
        _save_npz(args.output, outputs)
        print(f"wrote {args.output}")
    median = None
    if args.bench and remote:
        stats = runner.benchmark(inputs, repeat=args.bench, warmup=args.warmup)
        median, p90 = stats["median_ms"], stats["p90_ms"]
        print(f"artifact latency on the device (timed on the {stats['timed_on']}): median {median:.3f} ms, "
              f"p90 {p90:.3f} ms ({args.bench} runs, {args.warmup} warm-up)")
    elif args.bench:
        median, p90 = _bench(lambda: runner.run(inputs), args.bench, args.warmup)
        print(f"artifact latency: median {median:.3f} ms, p90 {p90:.3f} ms ({args.bench} runs, {args.warmup} warm-up)")
    if args.bench and hasattr(runner, "profile") and len(runner.manifest.get("stages", [])) > 1:
        print(_stage_table(runner.profile(inputs, repeat=args.bench, warmup=args.warmup)))
    if args.compare:
        if not Path(args.compare).is_file():
            raise LeptonError(f"{args.compare}: no such file")
        rtol, atol, why = compare_tolerance(runner.manifest, args.rtol, args.atol)
        try:
            # Optimized: --bench compares latency with ONNX Runtime as users run it.
            sess = ort_session(args.compare, optimize=True)
            feed = feed_for(sess, inputs)
            ref = run_ort(sess, feed)
        except Exception as e:  # ORT rejecting the reference model is the user's problem, one line
            raise LeptonError(f"{args.compare}: ONNX Runtime cannot run it: {str(e).splitlines()[0] if str(e) else e}") \
                from None
        got = list(outputs.values())
        bad = compare_outputs(ref, got, rtol, atol)
        diffs = []
        for k, (a, b) in enumerate(zip(ref, got)):
            if a.shape == b.shape and a.dtype.kind in "fiu" and a.size:
                d = np.abs(a.astype(np.float64) - b.astype(np.float64))
                diffs.append(f"{list(outputs)[k]}: max abs {d.max():.3g}")
        print("compare with ONNX Runtime: " + ("; ".join(diffs) or "no numeric outputs") +
              f" (rtol {rtol:g}, atol {atol:g}{why})")
        if args.bench:
            rmed, rp90 = _bench(lambda: sess.run(None, feed), args.bench, args.warmup)
            if remote:  # different machines (and maybe an emulated one): a ratio would mean nothing
                print(f"onnxruntime latency on this host: median {rmed:.3f} ms, p90 {rp90:.3f} ms "
                      "(not comparable with the device's)")
            else:
                print(f"onnxruntime latency: median {rmed:.3f} ms, p90 {rp90:.3f} ms" +
                      (f"; the artifact is {speed_ratio(median, rmed)} than ONNX Runtime" if median else ""))
        if bad is not None:
            name = list(outputs)[bad.index] if 0 <= bad.index < len(outputs) else "?"
            raise LeptonError(f"output {name!r} differs from ONNX Runtime on {args.compare}: {bad.reason} "
                              f"(max abs {bad.max_abs:.3g}, max rel {bad.max_rel:.3g}; "
                              f"rtol {rtol:g}, atol {atol:g}{why})")
    return EXIT_OK


DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-4


def compare_tolerance(manifest: dict[str, Any], rtol: float | None, atol: float | None) -> tuple[float, float, str]:
    """(rtol, atol, note) for `lepton-run --compare`: the ones given; else the pipeline's tolerance the
    manifest records (`extra.tolerance`, written by lepton-opt from each lossy pass's `tolerance()`)
    where it is looser than the defaults 1e-3 / 1e-4; else the defaults."""
    rec = (manifest.get("extra") or {}).get("tolerance") if isinstance(manifest.get("extra"), dict) else None
    note = ""
    r, a = DEFAULT_RTOL, DEFAULT_ATOL
    if isinstance(rec, dict) and (rtol is None or atol is None):
        try:
            pr, pa = float(rec.get("rtol", 0)), float(rec.get("atol", 0))
        except (TypeError, ValueError):
            pr = pa = 0.0
        if pr > r or pa > a:
            r, a = max(r, pr), max(a, pa)
            passes = ", ".join(str(x) for x in rec.get("passes", [])) or "the pipeline"
            note = f": the tolerance of {passes}, recorded at compile time"
    if rtol is not None:
        r = rtol
    if atol is not None:
        a = atol
    if rtol is not None and atol is not None:
        note = ""
    return r, a, note


def speed_ratio(artifact_ms: float, ort_ms: float) -> str:
    """`2.5x faster` / `1.3x slower` (the artifact against ONNX Runtime, by median latency)."""
    if artifact_ms <= 0 or ort_ms <= 0:
        return "as fast"
    if artifact_ms <= ort_ms:
        return f"{ort_ms / artifact_ms:.1f}x faster"
    return f"{artifact_ms / ort_ms:.1f}x slower"


def run_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lepton-run`; returns the exit status."""

    def body() -> int:
        return _run(run_parser().parse_args(argv))

    return _guard("lepton-run", body)


if __name__ == "__main__":  # python -m lepton.cli ... behaves like lepton-opt
    sys.exit(opt_main())
