"""The ``tvm-cpu`` backend (``tvm-arm`` and ``tvm-cuda`` subclass it): a stage holding a TVM library.

``lowering_pipeline`` (Lepton passes, run by the caller's PassManager on a copy of the model) makes
the model importable: pinned input shapes, fused ops lowered, QDQ groups turned into integer ops,
legalizations, cleanup. ``build`` imports it into Relax, optionally tunes, compiles and writes
``model.so``; ``load`` opens such a stage on this machine.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal, Mapping

from lepton_backends.base import Backend, BackendError, register_backend


def _parse_shapes(value: Any) -> dict[str, tuple[int, ...]] | None:
    """``input-shapes``: a dict, JSON text like ``{"x": [1, 3, 224, 224]}``, or ``x=1x3x224x224[,y=...]``."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f'expected JSON like {{"x": [1, 3, 224, 224]}} ({e})') from None
        else:
            from lepton_passes.canonicalize.pin_input_shapes import parse_shape

            value = dict(parse_shape(part) for part in text.split(",") if part.strip())
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of input names to shapes")
    try:
        return {str(k): tuple(int(d) for d in v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise ValueError("shapes must be lists of ints") from None


def _non_negative(value: Any) -> int | None:
    if value is None or value == "" or value is False:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError("expected a non-negative integer") from None
    if n < 0 or isinstance(value, bool) or (isinstance(value, float) and value != n):
        raise ValueError("expected a non-negative integer")
    return n


def _opt(default: Any = None, help: str = "", **meta: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass(frozen=True)
class TvmOptions:
    """Options of the TVM backends (tvm-cpu, tvm-arm, tvm-cuda)."""

    input_shapes: dict[str, tuple[int, ...]] | None = _opt(
        help='pin symbolic input dims so TVM specialises kernels: x=1x3x224x224[,y=...] or JSON {"x": [1, 3, 224, 224]}',
        parse=_parse_shapes, type="shapes")
    schedule: Literal["auto", "none"] = _opt("auto", "auto: search-free CPU schedules (GPU: dlight rules); none: naive TVM loops")
    layout: Literal["nchw", "nchwc"] = _opt("nchw", "nchwc: dense convs in NCHW[x]c (x = fp32 SIMD lanes) with weights "
                                                 "packed at compile time (CPU targets; docs/tvm-backend.md)")
    tuning_db: str | None = _opt(help="folder of a MetaSchedule JSON database to take tuned kernels from (and to tune "
                                      "into); default with tune-trials: ~/.cache/lepton/tuning/<target-hash>")
    tune_trials: int | None = _opt(help="MetaSchedule trials to spend on kernels not yet in the tuning database "
                                        "(0: only reuse it)", parse=_non_negative, type="int")
    cross_cc: str | None = _opt(help="C compiler for cross targets (default aarch64-linux-gnu-gcc for aarch64 targets)")
    tune_rpc: str | None = _opt(help="HOST:PORT of a TVM RPC server: tuning measures candidates on that device "
                                     "(needed for cross targets)")
    tune_tracker: str | None = _opt(help="HOST:PORT of a TVM RPC tracker: tuning measures on a device it hands out "
                                         "(with tune-key)")
    tune_key: str | None = _opt(help="device key to ask the tune-tracker for")
    fallback: bool = _opt(True, "when TVM cannot compile the whole model, run the parts it cannot on ONNX Runtime "
                                "(a multi-stage artifact; one warning per region); false: fail with the reasons")
    min_region: int = _opt(2, "TVM regions with fewer nodes go to ONNX Runtime too (a border costs more than "
                              "they gain)", parse=lambda v: _positive(v))
    min_compute_ratio: float = _opt(0.0, "TVM regions doing fewer operations per byte crossing their border go to "
                                         "ONNX Runtime too (0: no floor)")
    placement: Literal["capability", "fastest"] = _opt(
        "capability", "capability: TVM runs all it can; fastest: each region (the whole model when it compiles) "
                      "is timed on TVM and on ONNX Runtime on this host and placed where it ran faster")


def _positive(value: Any) -> int:
    n = _non_negative(value)
    if not n:
        raise ValueError("expected a positive integer")
    return n


class TvmCompileError(BackendError):
    """TVM's importer or compiler refused the model (the partitioner then asks per node)."""


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


def lowering_text(input_shapes: Mapping[str, Any] | None) -> str:
    """PRE_LOWERING, preceded by `pin-input-shapes` when shapes are given."""
    if not input_shapes:
        return PRE_LOWERING
    from lepton_passes.canonicalize.pin_input_shapes import format_shape
    from lepton_passes.pipeline import format_value

    shapes = [format_shape(k, v) for k, v in input_shapes.items()]
    return f"pin-input-shapes{{shapes={format_value(shapes)}}}," + PRE_LOWERING


@register_backend
class TvmCpuBackend(Backend):
    """TVM-compiled shared library for CPUs (model.so + manifest.json); search-free schedules, optional tuning."""

    name = "tvm-cpu"
    default_pipeline = "canonicalize"
    Options = TvmOptions
    #: TVM must know shape-determining values (Reshape shape, Reduce axes, ...) at compile time;
    #: lepton.onnx_backend specialises on such inputs (bind-inputs) for backends that say so.
    needs_static_shape_values = True

    def lowering_pipeline(self, target: str | None, options: TvmOptions) -> str:
        return lowering_text(options.input_shapes)

    #: The target when --target is not given.
    default_target = "native"

    def check_target(self, target: str | None) -> None:
        """A preset name this backend does not know is a usage error listing this backend's presets
        (with "did you mean"); JSON targets and presets of the right kind pass (build checks the rest)."""
        from lepton_backends.errors import BackendOptionError
        from lepton_ir.registry import did_you_mean

        from .targets import backend_presets, preset_names, target_dict

        spec = (target or self.default_target).strip()
        if spec.startswith("{"):
            return
        own = backend_presets(self.name)
        if spec in preset_names():
            d = target_dict(spec)
            kind_ok = {"tvm-arm": d.get("kind") == "llvm" and str(d.get("mtriple", "")).startswith("aarch64"),
                       "tvm-cuda": d.get("kind") == "cuda"}.get(self.name, d.get("kind") == "llvm")
            if kind_ok:
                return
            raise BackendOptionError(f"{self.name}: target {spec!r} is not a {self.name} target; its targets: "
                                     f"{', '.join(own)}{_other_backends_hint(self.name)}")
        raise BackendOptionError(f"{self.name}: unknown target {spec!r}{did_you_mean(spec, own)}; its targets: "
                                 f"{', '.join(own)} (or a JSON target dict){_other_backends_hint(self.name)}")

    def quant_target(self, target: str | None) -> str | None:
        """quant8 for arm when the code is for aarch64 (tvm-arm, or tvm-cpu with an ARM target or
        on an aarch64 host); x86-vnni for an x86 target with AVX-512 VNNI; else x86 (quant8's default)."""
        from .targets import target_dict

        if self.name == "tvm-cuda":
            return None
        try:
            d = target_dict(target or self.default_target)
        except (ValueError, TypeError):
            return None
        triple = str(d.get("mtriple", "") or "")
        if d.get("kind") != "llvm":
            return None
        if triple.startswith("aarch64") or (not triple and _host_arch() == "aarch64"):
            return "arm"
        mcpu = str(d.get("mcpu", "") or "")
        mattr = " ".join(map(str, d.get("mattr", []) or []))
        if mcpu in ("cascadelake", "cooperlake", "icelake-server", "sapphirerapids") or "avx512vnni" in mattr:
            return "x86-vnni"
        return "x86"

    def resolve(self, target: str | None):
        """The TVM target for `target` (preset, JSON or TVM string; default `default_target`)."""
        from .targets import resolve_target

        try:
            return resolve_target(target or self.default_target)
        except ValueError as e:
            raise BackendError(f"{self.name}: {e}") from None

    def build(self, model, staging: Path, *, target: str | None, options: TvmOptions) -> dict[str, Any]:
        """Compile ``model`` (a lowered ``lepton_ir.Model``) for ``target`` into ``staging``."""
        import shutil

        import lepton_ir

        from . import io_specs, lower
        from .artifact import fill_artifact_dir

        tgt = self.resolve(target)
        schedule = options.schedule
        database = None
        tune_trials = options.tune_trials
        db_dir = None
        if options.tuning_db or tune_trials is not None:
            from .tune import default_database_dir, tuning_target

            tgt = tuning_target(tgt)
            db_dir = Path(options.tuning_db).expanduser() if options.tuning_db else default_database_dir(tgt)
        export_cc = None
        cc = None
        triple = str(tgt.attrs.get("mtriple", "") or "") if tgt.kind.name == "llvm" else ""
        if triple and not triple.startswith(_host_arch()):
            cc = options.cross_cc or ("aarch64-linux-gnu-gcc" if triple.startswith("aarch64") else "")
            if not cc or shutil.which(cc) is None:
                raise BackendError(f"{self.name}: cross target {triple} needs a C cross compiler ({cc or 'cross-cc option'}) on PATH")
            import tvm

            export_cc = tvm.support.cc.cross_compiler(cc)
        model.verify()
        onnx_model = lepton_ir.to_onnx(model)
        shapes = {k: list(v) for k, v in options.input_shapes.items()} if options.input_shapes else None
        try:
            mod = lower.to_relax(onnx_model, shapes, target=tgt)
            inputs, outputs = io_specs(onnx_model, mod)
            if db_dir is not None:
                database = _tuned_database(mod, tgt, db_dir, tune_trials, _tuning_runner(options, bool(export_cc)),
                                           cross_cc=cc if export_cc else None)
            ex = lower.build(mod, tgt, schedule=schedule, database=database, layout=options.layout)
        except BackendError:
            raise
        except Exception as e:  # TVM importer/compiler errors: one line naming the backend
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            raise TvmCompileError(f"{self.name}: TVM could not compile the model: "
                                  f"{lines[-1] if lines else type(e).__name__}" + _bind_hint(model)) from e
        if tgt.kind.name == "llvm" and (hint := lower.symbolic_inputs_warning(onnx_model, shapes, self.name)):
            import warnings

            warnings.warn(hint, stacklevel=2)  # CPU schedules need static extents: see the function
        return fill_artifact_dir(staging, ex, target=tgt, model=onnx_model, input_specs=inputs, output_specs=outputs,
                                 export_cc=export_cc,
                                 tvm_pipeline=lower.pipeline_text(tgt, schedule=schedule, database=database,
                                                                  layout=options.layout))

    def build_stages(self, model, staging: Path, *, target: str | None = None, options: Any = None,
                     run_pipeline=None) -> list[tuple[Backend, dict[str, Any]]]:
        """One TVM stage; or, when TVM cannot compile the whole model, TVM and ONNX Runtime stages
        (partition.py), unless the `fallback` option is off."""
        opts = self.parse_options(options)
        work, lowering = self.lower(model, target, opts, run_pipeline)
        from .known_wrong import known_wrong_nodes

        wrong = known_wrong_nodes(work)
        if wrong:  # TVM would compile these to wrong values: the oracle's partition sends them to ORT
            from .partition import partitioned_stages

            why = "; ".join(dict.fromkeys(wrong.values()))
            return partitioned_stages(self, work, staging, target=target, options=opts, lowering=lowering,
                                      whole_error=TvmCompileError(f"{self.name}: {why}"))
        try:
            entry = self.stage_entry(self.build(work, staging, target=target, options=opts), target, opts, lowering)
        except TvmCompileError as e:
            for p in list(staging.iterdir()):  # whatever the failed build left
                p.unlink() if p.is_file() else None
            from .partition import batch_pins, partitioned_stages

            pins = batch_pins(model) if opts.input_shapes is None else None
            if pins:
                # A symbolic batch dim is what most often stops TVM (Reshapes to runtime shapes):
                # specialise it to 1, as deployments on one device run, and say how to choose.
                import warnings

                shown = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in pins.items())
                warnings.warn(f"{self.name}: the model does not compile with a symbolic batch dim; compiled for batch 1 "
                              f"(--input-shape {shown}; pass --input-shape to choose another)", stacklevel=2)
                return self.build_stages(model, staging, target=target,
                                         options=dataclasses.replace(opts, input_shapes={k: tuple(v) for k, v in pins.items()}),
                                         run_pipeline=run_pipeline)
            return partitioned_stages(self, work, staging, target=target, options=opts, lowering=lowering,
                                      whole_error=e)
        entry.update(name="main", dir=".", nodes=len(work.graph))
        if opts.placement == "fastest":
            from .partition import partitioned_stages

            return partitioned_stages(self, work, staging, target=target, options=opts, lowering=lowering,
                                      whole_error=None)
        return [(self, entry)]

    def load(self, folder: Path, stage: dict[str, Any]):
        from lepton_ir import ModelLoadError

        from .artifact import ArtifactError, load_stage

        try:
            return TvmRunner(load_stage(folder, stage))
        except ArtifactError as e:
            raise ModelLoadError(str(e)) from None


class TvmRunner:
    """A TVM stage runner with the same user-error contract as the ONNX Runtime one."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.manifest = runner.manifest
        self.input_names = [i["name"] for i in runner.manifest["inputs"]]
        self.output_names = [o["name"] for o in runner.manifest["outputs"]]

    def run(self, inputs):
        from lepton_ir import LeptonError

        from .artifact import InputError

        try:
            return self.runner.run(inputs)
        except InputError as e:
            raise LeptonError(str(e)) from None

    __call__ = run

    def benchmark(self, inputs, repeat: int = 20, warmup: int = 3) -> dict[str, float]:
        return self.runner.benchmark(inputs, repeat=repeat, warmup=warmup)


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


def _tuning_runner(options: TvmOptions, cross: bool):
    """MetaSchedule runner for the ``tune-rpc`` / ``tune-tracker`` options (None: measure here).

    A cross target's kernels cannot run on this host, so tuning one needs a remote device.
    """
    rpc, tracker, key = options.tune_rpc, options.tune_tracker, options.tune_key
    if not rpc and not tracker:
        if cross and options.tune_trials:
            raise BackendError("tvm-cpu: tuning for a cross target measures on the device: give tune-rpc HOST:PORT "
                               "(lepton-opt --tune-rpc) or tune-tracker HOST:PORT with tune-key")
        return None
    from .tune import remote_runner

    try:
        return remote_runner(rpc=rpc, tracker=tracker, key=key)
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


def prepare_for_tvm(model, input_shapes: Mapping[str, Any] | None = None):
    """A copy of `model` lowered as the TVM backends lower it (the user's model is left untouched)."""
    from lepton_ir.clone import clone_model
    from lepton_passes import PassManager

    work = clone_model(model)
    PassManager(lowering_text(_parse_shapes(input_shapes) if input_shapes else None)).run(work)
    return work


def _other_backends_hint(backend: str) -> str:
    others = {"tvm-cpu": "ARM cores: --backend tvm-arm; NVIDIA GPUs: --backend tvm-cuda",
              "tvm-arm": "x86: --backend tvm-cpu; NVIDIA GPUs: --backend tvm-cuda",
              "tvm-cuda": "CPUs: --backend tvm-cpu or tvm-arm"}.get(backend)
    return f" ({others})" if others else ""


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
