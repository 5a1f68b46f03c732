"""`PassManager`: runs a pipeline with instruments (verify, print IR, timing, differential, reproducer).

Every leaf pass run (including those inside `fixpoint(...)`) goes through `PassManager._run_one`:
instruments see `before_pass`, then `after_pass` (which may raise: the verifier and the
differential check do), and on any failure every instrument's `on_failure` is called before the
error propagates. Notes returned by `on_failure` (e.g. the reproducer's folder) are appended to the
error message, so the one line the CLI prints says where to look.

Whether a pass changed the model is not taken on its word: as MLIR's IRPrinting does with
`OperationFingerPrint`, the model is fingerprinted (`lepton_ir.fingerprint`) before and after each
leaf pass and the difference is the truth the manager uses, records and returns, so fixpoints stop
on real convergence and the differential check never skips a pass that did change the model. A
pass whose own answer disagrees gets a `PassChangedMismatchWarning` (a PassChangedMismatchError,
which is a PassError, with `strict_changed=True`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import time
import warnings
from typing import Iterable, Iterator, Sequence

from lepton_ir import LeptonError, Model
from lepton_ir.fingerprint import fingerprint

from .base import Pass, PassError
from .instruments import Instrument, ReproducerInstrument, VerifyInstrument, count_nodes
from .pipeline import Fixpoint, Pipeline, as_pipeline, format_pass


#: Logger for rewrite-level debugging (`lepton-opt --debug-rewrites` shows it on stderr).
REWRITE_LOG = logging.getLogger("lepton_passes.rewrites")

_DEBUG_REWRITES: contextvars.ContextVar[bool] = contextvars.ContextVar("lepton_debug_rewrites", default=False)


def debug_rewrites_enabled() -> bool:
    """True while a PassManager runs with `debug_rewrites=True` (`--debug-rewrites`).

    Rewrite engines read this to collect near misses and log each applied rule to `REWRITE_LOG`.
    """
    return _DEBUG_REWRITES.get()


@contextlib.contextmanager
def debug_rewrites(on: bool = True) -> Iterator[None]:
    """Turn rewrite debugging on (or off) for the enclosed code."""
    token = _DEBUG_REWRITES.set(on)
    try:
        yield
    finally:
        _DEBUG_REWRITES.reset(token)


class PassFailedError(PassError):
    """A pass raised an unexpected exception (a bug in the pass); the cause is chained."""

    def __init__(self, message: str, pass_text: str = "") -> None:
        super().__init__(message)
        self.pass_text = pass_text


class PassChangedMismatchWarning(UserWarning):
    """A pass's returned `changed` disagrees with what it did to the model (a bug in the pass)."""


class PassChangedMismatchError(PassError):
    """PassChangedMismatchWarning as an error, with `PassManager(strict_changed=True)`."""

    def __init__(self, message: str, pass_text: str = "") -> None:
        super().__init__(message)
        self.pass_text = pass_text


@dataclasses.dataclass
class PassRecord:
    """One leaf pass run.

    `changed` is the truth (the model's fingerprint differs after the pass); `reported_changed` is
    what the pass returned. They differ only for a pass that misreports (see
    PassChangedMismatchWarning); `None` means the record was built without a report.
    """

    name: str
    text: str  # canonical text of the pass with its options
    changed: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    reported_changed: bool | None = None

    @property
    def mismatch(self) -> bool:
        """True if the pass's own answer was wrong."""
        return self.reported_changed is not None and self.reported_changed != self.changed


@dataclasses.dataclass
class RunReport:
    """What a PassManager run did: per-pass records and totals."""

    pipeline: str
    records: list[PassRecord] = dataclasses.field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    def table(self) -> str:
        """A per-run table: pass, changed, nodes before -> after, milliseconds."""
        rows = [(r.text, "yes" if r.changed else "no", f"{r.nodes_before} -> {r.nodes_after}",
                 f"{r.seconds * 1e3:.2f}") for r in self.records]
        head = ("pass", "changed", "nodes", "ms")
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*r) for r in rows]
        lines.append(f"total {self.seconds * 1e3:.2f} ms, nodes {self.nodes_before} -> {self.nodes_after}")
        return "\n".join(lines)


class PassManager:
    """Run a pipeline over a model with instruments.

    `pipeline` may be a Pipeline, its text, a Pass or a list of passes. `verify_each=True` adds a
    VerifyInstrument first (IR checked before the first pass and after every pass).
    `reproducer_dir`, when set, adds a ReproducerInstrument writing failure folders under it.
    `debug_rewrites=True` makes `debug_rewrites_enabled()` true while the passes run.
    `strict_changed=True` turns a pass misreporting whether it changed the model into a
    PassChangedMismatchError (by default: a PassChangedMismatchWarning, and the run goes on with
    the truth).
    """

    def __init__(self, pipeline: Pipeline | str | Pass | Sequence[Pass | Fixpoint], *, verify_each: bool = True,
                 instruments: Iterable[Instrument] = (), reproducer_dir: str | None = None,
                 debug_rewrites: bool = False, strict_changed: bool = False) -> None:
        self.pipeline = as_pipeline(pipeline)
        self.debug_rewrites = debug_rewrites
        self.strict_changed = strict_changed
        self.instruments: list[Instrument] = []
        if verify_each:
            self.instruments.append(VerifyInstrument())
        self.instruments.extend(instruments)
        if reproducer_dir is not None and not any(isinstance(i, ReproducerInstrument) for i in self.instruments):
            self.instruments.append(ReproducerInstrument(reproducer_dir))
        self._report: RunReport | None = None

    def run(self, model: Model) -> RunReport:
        """Run the pipeline on `model` in place and return the report. Errors name the pass."""
        with self.session(model) as report:
            self.run_nested(self.pipeline, model)
        return report

    @contextlib.contextmanager
    def session(self, model: Model) -> Iterator[RunReport]:
        """One run: instruments' `before_run` on entry, `after_run` on exit. Inside it,
        `run_nested` runs pipelines (the main one, then e.g. a backend's lowering on a copy of the
        model) with the same instruments, into the same report, so verify-each, print-IR, the
        differential check, timing and the reproducer see every pass."""
        report = RunReport(pipeline=str(self.pipeline), nodes_before=count_nodes(model))
        self._report = report
        t0 = time.perf_counter()
        for inst in self.instruments:
            inst.before_run(model, self.pipeline)
        yield report
        report.seconds = time.perf_counter() - t0
        report.nodes_after = count_nodes(model)
        for inst in self.instruments:
            inst.after_run(model, report)

    def run_nested(self, pipeline: Pipeline | str, model: Model) -> bool:
        """Run `pipeline` on `model` inside the current `session` (see there); True if it changed."""
        if self._report is None:
            raise PassError("PassManager.run_nested needs an open session (PassManager.session(model))")
        with debug_rewrites(self.debug_rewrites):
            return as_pipeline(pipeline).run(model, self._run_one)

    def _run_one(self, p: Pass, model: Model) -> bool:
        assert self._report is not None
        text = format_pass(p)
        try:
            for inst in self.instruments:
                inst.before_pass(p, model)
            before = count_nodes(model)
            # Taken after the before_pass hooks, so only the pass itself is between the two prints.
            fp_before = fingerprint(model)
            t0 = time.perf_counter()
            try:
                reported = bool(p.run(model))
            except LeptonError:
                raise
            except Exception as e:  # a bug in the pass: keep the cause, name the pass
                raise PassFailedError(f"pass {text!r} failed: {type(e).__name__}: {e}", text) from e
            dt = time.perf_counter() - t0
            changed = fingerprint(model) != fp_before
            rec = PassRecord(p.name, text, changed, dt, before, count_nodes(model), reported_changed=reported)
            self._report.records.append(rec)
            if reported != changed:
                self._misreported(text, reported)
            for inst in self.instruments:
                inst.after_pass(p, model, changed, dt)
            return changed
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            notes = []
            for inst in self.instruments:
                try:
                    note = inst.on_failure(p, model, e)
                except Exception as inner:  # a failing instrument must not mask the real error
                    note = f"({type(inst).__name__} failed too: {inner})"
                if note:
                    notes.append(note)
            if notes and e.args:
                e.args = (f"{e.args[0]}; " + "; ".join(notes),) + tuple(e.args[1:])
            raise

    def _misreported(self, text: str, reported: bool) -> None:
        """Report a pass whose returned `changed` is wrong: warn, or raise with strict_changed."""
        what = "modified the model" if not reported else "left the model unchanged"
        msg = f"pass {text!r} returned changed={reported} but {what}"
        if self.strict_changed:
            raise PassChangedMismatchError(msg, text)
        # stacklevel 1: the pass is the culprit, not any caller frame; the message names it.
        warnings.warn(msg, PassChangedMismatchWarning, stacklevel=1)
