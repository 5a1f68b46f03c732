"""The ``tvm-cpu`` entry in the project's backend registry (``lepton_backends.get_backend``).

``compile()`` (inherited) stages the artifact atomically through ``lepton_backends.atomic_dir``;
``build()`` exports the IR to ONNX and runs this package's import/lower/build/artifact steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lepton_backends.base import Backend, BackendError, register_backend


def _parse_shapes(value: Any) -> dict[str, list[int]] | None:
    """``input-shapes`` option: a dict, or JSON text like ``{"x": [1, 3, 224, 224]}``."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise BackendError(f"tvm-cpu: input-shapes must be JSON like {{\"x\": [1, 3, 224, 224]}}: {e}") from None
    if not isinstance(value, dict):
        raise BackendError("tvm-cpu: input-shapes must map input names to shapes")
    return {str(k): [int(d) for d in v] for k, v in value.items()}


@register_backend
class TvmCpuBackend(Backend):
    """TVM-compiled shared library for CPUs (model.so + manifest.json); ARM presets cross-compile."""

    name = "tvm-cpu"
    default_pipeline = "canonicalize"
    #: TVM must know shape-determining values (Reshape shape, Reduce axes, ...) at compile time;
    #: lepton.onnx_backend specialises on such inputs (bind-inputs) for backends that say so.
    needs_static_shape_values = True
    option_help = {
        "input-shapes": 'JSON {"input": [dims]} pinning symbolic dims (lets TVM specialise kernels)',
        "schedule": "auto (default: search-free CPU schedules) or none (naive TVM loops)",
        "tuning-db": "folder of a MetaSchedule JSON database to take tuned kernels from (and to tune into); "
                     "default with tune-trials: ~/.cache/lepton/tuning/<target-hash>",
        "tune-trials": "MetaSchedule trials to spend on kernels not yet in the tuning database (0: only reuse it)",
        "cross-cc": "C compiler for cross targets (default aarch64-linux-gnu-gcc for aarch64 targets)",
        "tune-rpc": "HOST:PORT of a TVM RPC server: tuning measures candidates on that device (needed for cross targets)",
        "tune-tracker": "HOST:PORT of a TVM RPC tracker: tuning measures on a device it hands out (with tune-key)",
        "tune-key": "device key to ask the tune-tracker for",
    }

    def build(self, model, staging: Path, *, target: str | None, options: dict[str, Any],
              pipeline_text: str, source_sha256: str | None) -> None:
        """Compile ``model`` (a ``lepton_ir.Model``) for ``target`` (preset/JSON; default native)."""
        import shutil

        import lepton_ir

        from . import io_specs, lower
        from .artifact import fill_artifact_dir
        from .targets import resolve_target

        try:
            tgt = resolve_target(target or "native")
        except ValueError as e:
            raise BackendError(f"{self.name}: {e}") from None
        schedule = str(options.get("schedule", "auto"))
        database = None
        tune_trials = _parse_trials(options.get("tune-trials"))
        db_dir = None
        if options.get("tuning-db") or tune_trials is not None:
            from .tune import default_database_dir, tuning_target

            tgt = tuning_target(tgt)
            db_dir = Path(str(options["tuning-db"])).expanduser() if options.get("tuning-db") else default_database_dir(tgt)
        export_cc = None
        cc = None
        triple = str(tgt.attrs.get("mtriple", "") or "") if tgt.kind.name == "llvm" else ""
        if triple and not triple.startswith(_host_arch()):
            cc = str(options.get("cross-cc") or ("aarch64-linux-gnu-gcc" if triple.startswith("aarch64") else ""))
            if not cc or shutil.which(cc) is None:
                raise BackendError(f"{self.name}: cross target {triple} needs a C cross compiler ({cc or 'cross-cc option'}) on PATH")
            import tvm

            export_cc = tvm.support.cc.cross_compiler(cc)
        onnx_model = lepton_ir.to_onnx(prepare_for_tvm(model, _parse_shapes(options.get("input-shapes"))))
        try:
            mod = lower.to_relax(onnx_model, _parse_shapes(options.get("input-shapes")), target=tgt)
            inputs, outputs = io_specs(onnx_model, mod)
            if db_dir is not None:
                database = _tuned_database(mod, tgt, db_dir, tune_trials, _tuning_runner(options, bool(export_cc)),
                                           cross_cc=cc if export_cc else None)
            ex = lower.build(mod, tgt, schedule=schedule, database=database)
        except BackendError:
            raise
        except Exception as e:  # TVM importer/compiler errors: one line naming the backend
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            raise BackendError(f"{self.name}: TVM could not compile the model: {lines[-1] if lines else type(e).__name__}"
                               + _bind_hint(model)) from e
        text = pipeline_text + ("\n" if pipeline_text else "") + "[tvm]\n" + lower.pipeline_text(tgt, schedule=schedule, database=database)
        fill_artifact_dir(
            staging,
            ex,
            target=tgt,
            model=onnx_model,
            input_specs=inputs,
            output_specs=outputs,
            pipeline_text=text,
            source_model_sha256=source_sha256,
            export_cc=export_cc,
            options=options,
        )


def _bind_hint(model) -> str:
    """A hint naming the inputs that fix shapes/axes (TVM needs those values at compile time)."""
    from lepton_ir.analysis import shape_determining_inputs

    try:
        names = shape_determining_inputs(model.graph)
    except Exception:  # a hint must never mask the real error
        return ""
    if not names:
        return ""
    example = ",".join(f'"{n}=..."' for n in names[:3])
    return (f" (inputs {', '.join(names)} determine shapes or axes, which TVM needs as constants: bind them, "
            f"e.g. --passes 'bind-inputs{{values=[{example}]}},canonicalize')")


def _parse_trials(value: Any) -> int | None:
    """``tune-trials`` option: None when absent, else a non-negative int."""
    if value is None or value == "" or value is False:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise BackendError(f"tvm-cpu: tune-trials must be a non-negative integer, not {value!r}") from None
    if n < 0:
        raise BackendError(f"tvm-cpu: tune-trials must be a non-negative integer, not {n}")
    return n


def _tuning_runner(options: dict[str, Any], cross: bool):
    """MetaSchedule runner for the ``tune-rpc`` / ``tune-tracker`` options (None: measure here).

    A cross target's kernels cannot run on this host, so tuning one needs a remote device.
    """
    rpc, tracker, key = options.get("tune-rpc"), options.get("tune-tracker"), options.get("tune-key")
    trials = _parse_trials(options.get("tune-trials"))
    if not rpc and not tracker:
        if cross and trials:
            raise BackendError("tvm-cpu: tuning for a cross target measures on the device: give tune-rpc HOST:PORT "
                               "(lepton-opt --tune-rpc) or tune-tracker HOST:PORT with tune-key")
        return None
    from .tune import remote_runner

    try:
        return remote_runner(rpc=str(rpc) if rpc else None, tracker=str(tracker) if tracker else None,
                             key=str(key) if key else None)
    except ValueError as e:
        raise BackendError(f"tvm-cpu: {e}") from None


def _tuned_database(mod, tgt, db_dir: Path, trials: int | None, runner=None, cross_cc: str | None = None):
    """The database to build with: tune ``trials`` more candidates into ``db_dir`` first when
    ``trials`` is given (progress on stderr; Ctrl-C keeps what was measured and builds anyway)."""
    from .tune import open_database, stderr_log, tune

    if trials is None:
        return open_database(db_dir)
    log = stderr_log("tvm-cpu")
    res = tune(mod, tgt, trials, db_dir, trials_per_iter=max(1, min(16, trials or 16)), log=log,
               runner=runner, cross_cc=cross_cc)
    log(f"tuning done: {res.trials} trials measured, {res.new_records} new records, "
        f"{len(res.tasks_skipped)}/{res.tasks_total} kernels reused from the database, {res.seconds:.0f} s"
        + (" (interrupted)" if res.interrupted else ""))
    return res.database


#: Lepton passes run on a copy of the model before TVM sees it: lower fused ops (if any), turn
#: quant8's QDQ Conv/MatMul/Gemm groups into ConvInteger/MatMulInteger (int8 x int8 -> int32; TVM
#: would otherwise import them as float compute between dequantize/quantize), legalize the ops TVM's
#: importer lacks, then clean up again (canonicalize), so TVM imports standard ops with constant shapes.
#: `legalize{integer-ops=false}`: TVM lowers MatMulInteger (its importer) and ConvInteger
#: (converters.py) natively with int32 accumulation, so their exact-float rewrite is not wanted.
#: `conv-transpose-to-depth-to-space`: kernel == stride ConvTransposes (upsampling heads) as a 1x1
#: Conv + DepthToSpace, which TVM's schedules run several times faster.
PRE_LOWERING = ("lower-fused-to-standard,qdq-to-integer,conv-transpose-to-depth-to-space,legalize{integer-ops=false},"
                "canonicalize")


def prepare_for_tvm(model, input_shapes: dict[str, list[int]] | None = None):
    """A copy of `model` ready for TVM's importer (the user's model object is left untouched)."""
    import lepton_ir
    from lepton_ir.clone import clone_model
    from lepton_passes import parse_pipeline

    work = clone_model(model)
    if input_shapes:
        lepton_ir.pin_input_shapes(work, input_shapes)
    for p in parse_pipeline(PRE_LOWERING).passes():
        p.run(work)
        # Rewrites can leave a replacement after a user of its output (ddddocr-old's ConvIntegers
        # under legalize-integer-ops did); a stable topological sort repairs the order.
        _sort_graphs(work.graph)
    work.verify()
    return work


def _sort_graphs(graph) -> None:
    """Topologically sort ``graph`` and its subgraphs (stable: a sorted graph is unchanged)."""
    graph.sort()
    for node in list(graph):
        for sub in node.subgraphs():
            _sort_graphs(sub)


def target_dict_for(backend: str, spec: str):
    """`targets.target_dict(spec)`, with a bad spec reported as this backend's one-line error."""
    from .targets import target_dict

    try:
        return target_dict(spec)
    except (ValueError, TypeError) as e:
        raise BackendError(f"{backend}: {e}") from None


def _host_arch() -> str:
    import platform

    m = platform.machine().lower()
    return "aarch64" if m == "arm64" else m
