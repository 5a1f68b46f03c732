"""`optimize()`: load a copy of the model, run a pipeline through the PassManager, then a backend.

The input (path, bytes, onnx.ModelProto or lepton_ir.Model) is never modified: the driver always
works on a freshly loaded copy. Pipeline choice: `passes` if given (text or Pipeline; "" runs no
pass), else the backend's `default_pipeline` (the `onnx` backend's when there is no backend). Output: with a backend, `output` is the artifact folder
(written atomically); without one, an `output` ending in `.onnx` gets just the optimized model
(lepton_ir.save, atomic) and any other `output` gets an `onnx` backend artifact. A `.onnx` output
(with no backend or `--backend onnx`) is one file: the model the onnx backend would put in its
artifact, Lepton's `ai.lepton` ops lowered (`lower-fused-to-onnx`), so ONNX Runtime loads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import onnx

import lepton_ir
from lepton_backends import Backend, BackendError, get_backend
from lepton_backends.artifact import check_output_path
from lepton_ir import LeptonError, Model
from lepton_passes import DifferentialInstrument, Instrument, PassManager, Pipeline, RunReport, parse_pipeline
from lepton_passes.canonicalize.pin_input_shapes import parse_shape as _parse_shape
from lepton_passes.instruments import count_nodes

ModelSource = str | os.PathLike | bytes | onnx.ModelProto | Model


@dataclasses.dataclass
class OptimizeResult:
    """What `optimize()` produced."""

    model: Model  # the optimized model (a copy; the input is untouched)
    artifact: Path | None  # the artifact folder (or .onnx file) written, if any
    report: RunReport  # per-pass records
    pipeline: str  # canonical text of the pipeline that ran
    nodes_before: int
    nodes_after: int
    source_sha256: str
    report_file: Path | None = None  # the HTML report written (report=), None if not asked or it failed
    report_summary: str | None = None  # its gains on one line (lepton.report.summary_text)


def load_copy(src: ModelSource) -> tuple[Model, str]:
    """A private Model copy of `src` and the sha256 of its serialized bytes."""
    if isinstance(src, Model):
        data = lepton_ir.to_onnx(src).SerializeToString()
        return lepton_ir.load(data), hashlib.sha256(data).hexdigest()
    if isinstance(src, onnx.ModelProto):
        data = src.SerializeToString()
        return lepton_ir.load(data), hashlib.sha256(data).hexdigest()
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        return lepton_ir.load(data), hashlib.sha256(data).hexdigest()
    if isinstance(src, (str, os.PathLike)):
        model = lepton_ir.load(src)  # reads (memory-maps) the file; never writes it
        h = hashlib.sha256()
        with open(src, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return model, h.hexdigest()
    raise TypeError(f"optimize() takes a path, bytes, onnx.ModelProto or lepton_ir.Model, not {type(src).__name__}")


# `name=1x3x224x224` parsing is the pin-input-shapes pass's; pinning is lepton_ir's (it also
# re-propagates types).
parse_shape = _parse_shape
pin_input_shapes = lepton_ir.pin_input_shapes


def _as_pipeline(passes: str | Pipeline | None, backend: Backend | None) -> Pipeline:
    if isinstance(passes, Pipeline):
        return passes
    if passes is None:
        # No pipeline given: the backend's default; without a backend, the onnx backend's (cleanup).
        passes = (backend or get_backend("onnx")()).default_pipeline
    return parse_pipeline(passes)


class ToleranceInstrument(Instrument):
    """The tolerance the whole pipeline earns: each pass that changed the model and declares a
    tolerance looser than the exact default (`Pass.tolerance(model)`, e.g. quant8's, derived from
    its scales) adds its atol, and the loosest rtol is kept. `record` (the manifest's
    `extra.tolerance`, what `lepton-run --compare` uses) is filled in as passes run, including the
    backend's lowering passes (they run before the manifest is written)."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {}
        self._rtol = 0.0
        self._atol = 0.0
        self._passes: list[str] = []

    def after_pass(self, p: Any, model: Model, changed: bool, seconds: float) -> None:
        from lepton_passes import Pass
        from lepton_passes.pipeline import format_pass

        if not changed:
            return
        try:
            rtol, atol = p.tolerance(model)
        except Exception:  # a tolerance that cannot be derived is not worth failing the compile for
            return
        if (rtol, atol) == Pass.tolerance(p, model):
            return  # an exact rewrite
        self._rtol = max(self._rtol, float(rtol))
        self._atol += float(atol)
        self._passes.append(format_pass(p).split("{")[0])
        self.record.clear()
        self.record.update(rtol=self._rtol, atol=self._atol, passes=self._passes)


class _Extra(Mapping[str, Any]):
    """The manifest's `extra` as a live view: read when the manifest is written, after the
    backend's lowering passes ran (their tolerance counts too)."""

    def __init__(self, tolerance: ToleranceInstrument) -> None:
        self._tol = tolerance

    def _dict(self) -> dict[str, Any]:
        return {"tolerance": dict(self._tol.record)} if self._tol.record else {}

    def __getitem__(self, key: str) -> Any:
        return self._dict()[key]

    def __iter__(self):
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())


def _quant_target(pipeline: Pipeline, backend: Backend | None, target: str | None) -> Pipeline:
    """quant8 passes whose `target=` the text left to its default get the backend's instruction
    set (`Backend.quant_target`, e.g. `arm` for tvm-arm or an aarch64 --target)."""
    from lepton_passes.pipeline import Fixpoint, given_options

    qt = backend.quant_target(target) if backend is not None else None
    if qt is None:
        return pipeline

    def walk(p: Pipeline) -> Pipeline:
        items: list[Any] = []
        for it in p:
            if isinstance(it, Fixpoint):
                items.append(dataclasses.replace(it, body=walk(it.body)))
                continue
            given = given_options(it)
            if it.name == "quant8" and given is not None and "target" not in given and \
                    getattr(it, "target", qt) != qt:
                new = dataclasses.replace(it, target=qt)
                object.__setattr__(new, "_lepton_given_options", given | {"target"})
                items.append(new)
            else:
                items.append(it)
        return Pipeline(items)

    return walk(pipeline)


def check_input_shapes(model: Model, shapes: Mapping[str, Sequence[int]], unpinned: Model | None = None) -> None:
    """Pinned input shapes every node can take: the model's shape inference (ONNX's, strict) runs on
    the pinned model before any pass, and a node whose inputs do not fit (a Concat of 17 and 16
    rows) is a one-line error naming it and the --input-shape given. When `unpinned` (the model
    before pinning) fails strict inference too, the shapes are not to blame and nothing is said
    (ONNX's strict mode refuses some models ONNX Runtime runs)."""
    import onnx.shape_inference

    def infer(m: Model) -> None:
        onnx.shape_inference.infer_shapes(lepton_ir.to_onnx(m), check_type=True, strict_mode=True, data_prop=True)

    try:
        infer(model)
    except Exception as e:  # InferenceError / ValidationError: ONNX's message names the node
        if unpinned is not None:
            try:
                infer(unpinned)
            except Exception:
                return

        given = " ".join(f"{k}={'x'.join(str(d) for d in v)}" for k, v in shapes.items())
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise LeptonError(f"--input-shape {given}: the model cannot take this shape: {first}") from None


def _write_onnx_file(work: Model, output: str | os.PathLike, be: Backend | None, backend_opts: Mapping[str, Any],
                     pm: PassManager) -> Path:
    """`-o x.onnx`: the model the `onnx` backend would put in its artifact, as one file.

    Lepton's own `ai.lepton` ops (what `fuse` makes) are lowered first with the onnx backend's
    lowering pipeline (`lower-fused-to-onnx`: ONNX Runtime contrib ops where ORT has a kernel,
    standard ops otherwise), on a copy, as a nested run of the caller's PassManager, so the file
    is a model ONNX Runtime loads and `onnx.checker` accepts. Written atomically (lepton_ir.save).
    """
    onnx_be = be if be is not None else get_backend("onnx")()
    opts = onnx_be.parse_options(dict(backend_opts))
    lowered, _ = onnx_be.lower(work, None, opts, lambda text, m: pm.run_nested(text, m))
    from lepton_backends.base import before_publish

    before_publish()
    lepton_ir.save(lowered, output, external_data=True if getattr(opts, "external_data", False) else None)
    return Path(output)


def optimize(model: ModelSource, passes: str | Pipeline | None = None, backend: str | Backend | None = None,
             output: str | os.PathLike | None = None, *, target: str | None = None,
             input_shapes: Mapping[str, Sequence[int]] | None = None, check: bool = False,
             instruments: Iterable[Instrument] = (), verify_each: bool = True,
             reproducer_dir: str | os.PathLike | None = None, check_inputs: Mapping[str, Any] | None = None,
             debug_rewrites: bool = False, report: str | os.PathLike | None = None,
             report_data: str | os.PathLike | Mapping[str, Any] | None = None, **options: Any) -> OptimizeResult:
    """Optimize `model` with pipeline `passes` and (optionally) compile it with `backend` into `output`.

    `check=True` adds the differential instrument (ONNX Runtime before/after every pass, inputs
    `check_inputs` or generated). `reproducer_dir` turns on failure reproducers written there.
    `debug_rewrites=True` lets rewrite engines log their decisions (`lepton_passes.debug_rewrites_enabled`).
    Remaining keyword `options` go to the backend (e.g. `external_data=True` -> `external-data`).
    `report="report.html"` writes the HTML report (lepton.report, docs/report.md): the passes, latency
    against ONNX Runtime, output deviation, accuracy with `report_data` (a .npz of inputs and optionally
    `labels`), quant8's per-layer error, the stages. A report failure is a `ReportWarning`, never an error.
    """
    be: Backend | None
    onnx_file = output is not None and str(output).endswith(".onnx")
    if backend is None and output is not None and not onnx_file:
        backend = "onnx"
    if isinstance(backend, str):
        be = get_backend(backend)()
    else:
        be = backend
    if be is not None and output is None:
        raise BackendError(f"backend {be.name!r} needs an output folder (-o OUT)")
    if onnx_file and be is not None and be.name != "onnx":
        from lepton_backends.errors import BackendOptionError  # a usage error (exit 2)

        raise BackendOptionError(f"backend {be.name!r} writes an artifact folder, not a .onnx file: give -o a folder "
                           f"(a .onnx file is what the onnx backend writes)")
    if options and be is None:
        raise BackendError(f"backend options given without a backend: {', '.join(options)}")
    pipeline = _quant_target(_as_pipeline(passes, be), be, target)
    if be is not None:
        be.check_target(target)  # a bad --target before any slow step
    backend_opts = {k.replace("_", "-"): v for k, v in options.items()}
    if be is not None:
        be.parse_options(backend_opts)  # option errors before any slow step
        assert output is not None
        if not onnx_file:
            check_output_path(output)  # and a bad output path too
    if output is not None and isinstance(model, (str, os.PathLike)):
        src, dst = Path(model).resolve(), Path(output).resolve()
        if src == dst or dst in src.parents:
            # Replacing the output would overwrite or delete the input model.
            raise LeptonError(f"output {output} would overwrite the input model {model}; choose another -o")

    work, source_sha = load_copy(model)
    if input_shapes:
        from lepton_ir.clone import clone_model

        unpinned = clone_model(work)  # shares the weights: O(nodes)
        pin_input_shapes(work, input_shapes)
        check_input_shapes(work, input_shapes, unpinned)
    insts = list(instruments)
    if check:
        insts.append(DifferentialInstrument(check_inputs))
    report_inst = None
    if report is not None:
        from lepton.report import ReportInstrument

        report_inst = ReportInstrument()
        insts.append(report_inst)
    t_start = time.perf_counter()
    tolerance = ToleranceInstrument()
    insts.append(tolerance)
    nodes_before = count_nodes(work)
    pm = PassManager(pipeline, verify_each=verify_each, instruments=insts,
                     reproducer_dir=str(reproducer_dir) if reproducer_dir is not None else None,
                     debug_rewrites=debug_rewrites)
    artifact: Path | None = None
    # One PassManager session for the user's pipeline and the backend's lowering pipeline (run by
    # the backend on its copy of the model), so every instrument sees both.
    with pm.session(work) as run_report:
        pm.run_nested(pipeline, work)
        nodes_after = count_nodes(work)
        if report_inst is not None:
            report_inst.phase = "backend"  # what runs now is the backend's lowering
        if onnx_file:
            assert output is not None
            artifact = _write_onnx_file(work, output, be, backend_opts, pm)
        elif be is not None:
            assert output is not None
            artifact = be.compile(work, output, target=target, options=backend_opts, pipeline_text=str(pipeline),
                                  source_sha256=source_sha, run_pipeline=lambda text, m: pm.run_nested(text, m),
                                  extra=_Extra(tolerance))
    result = OptimizeResult(work, artifact, run_report, str(pipeline), nodes_before, nodes_after, source_sha)
    if report is not None:
        result.report_file, result.report_summary = _write_report(report, model, result, be, target, report_inst,
                                                                  report_data, time.perf_counter() - t_start)
    return result


def _write_report(path: str | os.PathLike, source: ModelSource, result: OptimizeResult, be: Backend | None,
                  target: str | None, inst: Any, data: Any, seconds: float) -> tuple[Path | None, str | None]:
    """The HTML report, or a ReportWarning: a report never breaks the compile it describes."""
    import warnings

    from lepton.report import ReportWarning, make_report, summary_text

    try:
        written, rep = make_report(path, source=source, result=result, backend=be.name if be is not None else None,
                                   target=target, instrument=inst, data=data, compile_seconds=seconds)
        return written, summary_text(rep)
    except Exception as e:  # noqa: BLE001 - any failure: the compile's result stands
        warnings.warn(ReportWarning(f"report {path} not written: {type(e).__name__}: {' '.join(str(e).split())[:300]}"),
                      stacklevel=3)
        return None, None
