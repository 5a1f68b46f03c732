"""`optimize()`: load a copy of the model, run a pipeline through the PassManager, then a backend.

The input (path, bytes, onnx.ModelProto or lepton_ir.Model) is never modified: the driver always
works on a freshly loaded copy. Pipeline choice: `passes` if given (text or Pipeline; "" runs no
pass), else the backend's `default_pipeline` (the `onnx` backend's when there is no backend). Output: with a backend, `output` is the artifact folder
(written atomically); without one, an `output` ending in `.onnx` gets just the optimized model
(lepton_ir.save, atomic) and any other `output` gets an `onnx` backend artifact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
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


def optimize(model: ModelSource, passes: str | Pipeline | None = None, backend: str | Backend | None = None,
             output: str | os.PathLike | None = None, *, target: str | None = None,
             input_shapes: Mapping[str, Sequence[int]] | None = None, check: bool = False,
             instruments: Iterable[Instrument] = (), verify_each: bool = True,
             reproducer_dir: str | os.PathLike | None = None, check_inputs: Mapping[str, Any] | None = None,
             debug_rewrites: bool = False, **options: Any) -> OptimizeResult:
    """Optimize `model` with pipeline `passes` and (optionally) compile it with `backend` into `output`.

    `check=True` adds the differential instrument (ONNX Runtime before/after every pass, inputs
    `check_inputs` or generated). `reproducer_dir` turns on failure reproducers written there.
    `debug_rewrites=True` lets rewrite engines log their decisions (`lepton_passes.debug_rewrites_enabled`).
    Remaining keyword `options` go to the backend (e.g. `external_data=True` -> `external-data`).
    """
    be: Backend | None
    if backend is None and output is not None and not str(output).endswith(".onnx"):
        backend = "onnx"
    if isinstance(backend, str):
        be = get_backend(backend)()
    else:
        be = backend
    if be is not None and output is None:
        raise BackendError(f"backend {be.name!r} needs an output folder (-o OUT)")
    if options and be is None:
        raise BackendError(f"backend options given without a backend: {', '.join(options)}")
    pipeline = _as_pipeline(passes, be)
    backend_opts = {k.replace("_", "-"): v for k, v in options.items()}
    if be is not None:
        be.parse_options(backend_opts)  # option errors before any slow step
        assert output is not None
        check_output_path(output)  # and a bad output path too
    if output is not None and isinstance(model, (str, os.PathLike)):
        src, dst = Path(model).resolve(), Path(output).resolve()
        if src == dst or dst in src.parents:
            # Replacing the output would overwrite or delete the input model.
            raise LeptonError(f"output {output} would overwrite the input model {model}; choose another -o")

    work, source_sha = load_copy(model)
    if input_shapes:
        pin_input_shapes(work, input_shapes)
    insts = list(instruments)
    if check:
        insts.append(DifferentialInstrument(check_inputs))
    nodes_before = count_nodes(work)
    pm = PassManager(pipeline, verify_each=verify_each, instruments=insts,
                     reproducer_dir=str(reproducer_dir) if reproducer_dir is not None else None,
                     debug_rewrites=debug_rewrites)
    artifact: Path | None = None
    # One PassManager session for the user's pipeline and the backend's lowering pipeline (run by
    # the backend on its copy of the model), so every instrument sees both.
    with pm.session(work) as report:
        pm.run_nested(pipeline, work)
        nodes_after = count_nodes(work)
        if be is not None:
            assert output is not None
            artifact = be.compile(work, output, target=target, options=backend_opts, pipeline_text=str(pipeline),
                                  source_sha256=source_sha, run_pipeline=lambda text, m: pm.run_nested(text, m))
        elif output is not None:
            lepton_ir.save(work, output)
            artifact = Path(output)
    return OptimizeResult(work, artifact, report, str(pipeline), nodes_before, nodes_after, source_sha)
