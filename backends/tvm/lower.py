"""ONNX -> Relax -> TVM executable, with search-free schedules so untuned builds are not naive.

Pipeline (CPU; see :func:`pipeline_passes`)::

    DecomposeOpsForInference, CanonicalizeBindings      # BN -> arithmetic on constants
    DispatchSampling, DispatchSortScan                  # TVM's library dispatch for CPU
    LeptonFastErf                                       # erf -> fast_erf polynomial (fast_erf_pass)
    LegalizeOps, AnnotateTIROpPattern, FoldConstant,    # ops -> TIR, fold weight transforms
    FuseOps, FuseTIR                                    # conv/matmul + elementwise epilogue fusion
    [MetaScheduleApplyDatabase]                         # tuned kernels, when a database is given
    ApplyDefaultSchedule(Int8Dot, DepthwiseConv, TiledReduction,
                         dlight.cpu.Reduction, ParallelVectorize)   # see cpu_schedule.py
    RewriteDataflowReshape ... VMShapeLower, AttachGlobalSymbol  # TVM's CPU lowering/finalize

For CUDA targets the schedule step is ``dlight.gpu`` (Matmul, GEMV, Reduction, GeneralReduction,
Fallback) applied inside the target context, as TVM's own CUDA pipeline does.

Weights stay bound as constants (``keep_params_in_input=False``): FoldConstant then pre-computes
every weight-only expression at compile time (Gemm's transposed weights, BN folded into scale and
shift vectors), so no per-inference work remains on the weights, the fused kernels read constants,
and the artifact is one self-contained ``model.so`` whose VM ``main`` takes only the model inputs.
Detached params would add a transform-params step at load time and a second file to ship, and
compile no faster for the model sizes Lepton targets.
"""

from __future__ import annotations

from typing import Any

import onnx

# ONNX TensorProto element type -> TVM dtype string.
_ONNX_TO_TVM_DTYPE = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.UINT16: "uint16",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.UINT32: "uint32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.BOOL: "bool",
}


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The model's real inputs (graph inputs that are not initializers, for old-IR models)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def onnx_dtype(value_info: onnx.ValueInfoProto) -> str:
    """TVM/numpy dtype name of a tensor ValueInfo."""
    elem = value_info.type.tensor_type.elem_type
    if elem not in _ONNX_TO_TVM_DTYPE:
        raise ValueError(f"{value_info.name!r}: unsupported ONNX element type {onnx.TensorProto.DataType.Name(elem)}")
    return _ONNX_TO_TVM_DTYPE[elem]


def onnx_shape(value_info: onnx.ValueInfoProto) -> list[int | str]:
    """Shape of a tensor ValueInfo; symbolic or unknown dims come back as strings ('?' if unnamed)."""
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return dims


def resolved_input_shapes(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None
) -> dict[str, list[int | str]]:
    """Per input: the pinned shape from ``input_shapes`` if given, else the model's own shape.

    Raises:
        ValueError: ``input_shapes`` names an input the model lacks, or its rank/static dims
            disagree with the model.
    """
    inputs = graph_inputs(model)
    names = {i.name for i in inputs}
    pinned = dict(input_shapes or {})
    unknown = sorted(set(pinned) - names)
    if unknown:
        raise ValueError(f"input_shapes names unknown inputs {unknown}; model inputs: {sorted(names)}")
    out: dict[str, list[int | str]] = {}
    for vi in inputs:
        shape = onnx_shape(vi)
        if vi.name in pinned:
            new = [int(d) for d in pinned[vi.name]]
            if shape and len(new) != len(shape):
                raise ValueError(f"input {vi.name!r}: pinned rank {len(new)} != model rank {len(shape)} ({shape})")
            for i, (a, b) in enumerate(zip(shape, new)):
                if isinstance(a, int) and a != b:
                    raise ValueError(f"input {vi.name!r}: dim {i} is {a} in the model, pinned to {b}")
            shape = list(new)
        out[vi.name] = shape
    return out


def symbolic_inputs_warning(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None,
                            backend: str = "tvm-cpu") -> str | None:
    """One line telling the user to pin symbolic input dims, or None when every dim is static.

    Why a warning and not symbolic code: the search-free schedules (cpu_schedule.py) tile by
    constant extents and give up on symbolic ones, so every kernel of a symbolic build stays
    TVM's naive single-threaded loop nest, and MetaSchedule does not tune them either. Measured
    (docs/tvm-backend.md, "Symbolic dims"; ``bench/tvm_speed.py --no-tune --symbolic``): a
    ResNet-18-like with its batch left symbolic ran 20-45x slower than pinned to batch 1.
    Getting within the 1.2x that would make a warning unnecessary needs every rule to handle
    symbolic extents (tail loops, a runtime tile choice); pinning costs the user one flag. The suggested shape puts 1 for each
    symbolic dim (what deployments on one device run); the user picks the real sizes.
    """
    shapes = resolved_input_shapes(model, input_shapes)
    sym = {name: shape for name, shape in shapes.items() if any(not isinstance(d, int) for d in shape)}
    if not sym:
        return None
    shown = ",".join(f"{name}={'x'.join(str(d) if isinstance(d, int) else '1' for d in shape)}"
                     for name, shape in sym.items())
    dims = "; ".join(f"{name}: {[d for d in shape if not isinstance(d, int)]}" for name, shape in sym.items())
    return (f"{backend}: symbolic input dims ({dims}) get TVM's naive single-threaded kernels (ResNet-18-like: 20-45x "
            f"slower than pinned); pin them: --input-shape {shown} (1 for each symbolic dim; use your sizes)")


def to_relax(model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None,
             target: Any = None) -> "tvm.IRModule":  # noqa: F821
    """Import an ONNX model into a Relax ``IRModule`` with weights bound as constants.

    Args:
        model: the ONNX model.
        input_shapes: optional ``{input name: shape}`` pinning symbolic dims (e.g. batch). Pinned
            shapes let TVM specialise every kernel; symbolic ones stay as Relax shape variables.
        target: the target (preset name, dict or ``tvm.target.Target``) the module will be built
            for. It selects the tensorized int8 kernels for ConvInteger/MatMulInteger
            (``int8_kernels``); None lowers integer ops generically (any target can build that).
    """
    # TVM's importer plus the converters it lacks (ConvInteger; see converters.py).
    from .converters import from_onnx

    shapes = resolved_input_shapes(model, input_shapes)
    # from_onnx takes only int dims here; inputs left symbolic are omitted so the importer keeps
    # their dim_params as Relax shape variables.
    shape_dict = {name: list(shape) for name, shape in shapes.items() if all(isinstance(d, int) for d in shape)}
    dtype_dict = {vi.name: onnx_dtype(vi) for vi in graph_inputs(model)}
    if target is not None and not hasattr(target, "kind"):
        from .targets import resolve_target

        target = resolve_target(target)
    mod = from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict, keep_params_in_input=False,
                    target=target)
    return mod


def _gpu(target) -> bool:
    return "gpu" in [str(k) for k in target.keys]


def pipeline_passes(target: "tvm.target.Target", *, schedule: str = "auto", database: Any = None,  # noqa: F821
                    layout: str = "nchw") -> list:
    """The Relax passes :func:`build` runs for ``target``, as a list (see the module docstring).

    Args:
        target: the TVM target.
        schedule: ``"auto"`` (search-free schedules) or ``"none"`` (TVM's naive loop nests, for
            comparisons).
        database: optional MetaSchedule database whose tuned kernels replace the default schedules.
        layout: ``"nchw"`` (default) or ``"nchwc"``: dense convs in NCHW[x]c with weights packed
            at compile time (CPU only; see layout.py).
    """
    from tvm import relax
    from tvm.relax import backend
    from tvm.s_tir import dlight as dl

    from . import cpu_schedule
    from . import layout as layout_mod

    if schedule not in ("auto", "none"):
        raise ValueError(f"schedule must be 'auto' or 'none', not {schedule!r}")
    if layout not in layout_mod.LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(layout_mod.LAYOUTS)}, not {layout!r}")
    packed = layout == layout_mod.NCHWC and not _gpu(target)
    passes: list = [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        backend.DispatchSampling(),
        backend.DispatchSortScan(),
    ]
    if not _gpu(target):
        passes.append(fast_erf_pass())
    if packed:
        # After BN is decomposed (its scale/shift become element-wise ops the layout flows through).
        passes.append(layout_mod.convert_layout_pass(target))
    passes += [
        relax.transform.LegalizeOps(layout_mod.legalize_map() if packed else None),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]
    if database is not None:
        passes.append(_ApplyDatabase(database))
    gpu = _gpu(target)
    if gpu:
        # GPU kernels need thread bindings to compile at all, so "none" is not an option there.
        passes.append(dl.ApplyDefaultSchedule(*cpu_schedule.default_gpu_rules()))
    elif schedule == "auto":
        passes.append(dl.ApplyDefaultSchedule(*cpu_schedule.default_cpu_rules()))
    passes += [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
    ]
    if gpu:
        passes.append(relax.transform.RewriteCUDAGraph())
    passes += [
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]
    return passes


def fast_erf_pass():
    """A Relax module pass replacing ``relax.erf`` by TOPI's ``fast_erf`` polynomial (CPU targets).

    LegalizeOps lowers erf to a scalar libm call per element on LLVM targets. Measured on this
    host (AVX2, 2 threads) over the 64x1536 GELU input of a MiniLM layer: 1.18 ms for erf against
    0.025 ms for fast_erf, whose largest absolute error over [-6, 6] is 3.3e-7 (erf is in
    [-1, 1]; float32 rounding alone is 6e-8). MiniLM-L3 has three such GELUs. TVM's own
    ``FastMathTransform`` also swaps exp, tanh and softmax; only erf is swapped here (the others
    were not measured to need it). CUDA targets keep erf: it maps to the device's erff.
    """
    import tvm
    from tvm import relax, topi

    @relax.expr_functor.mutator
    class _FastErf(relax.PyExprMutator):
        def visit_call_(self, call):  # noqa: N802  (TVM's visitor naming)
            call = super().visit_call_(call)
            if isinstance(call, relax.Call) and getattr(call.op, "name", "") == "relax.erf":
                return self.builder_.call_te(topi.fast_erf, call.args[0])
            return call

    @tvm.transform.module_pass(opt_level=0, name="LeptonFastErf")
    def _pass(mod, _ctx):
        mutator = _FastErf(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                mutator.builder_.update_func(gv, mutator.visit_expr(func))
        return mutator.builder_.get()

    return _pass


class _ApplyDatabase:
    """MetaScheduleApplyDatabase run with ``database`` made current (a Relax module pass)."""

    def __init__(self, database: Any) -> None:
        self.database = database

    def __call__(self, mod, ctx=None):
        from tvm import relax

        with self.database:
            return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)

    @property
    def info(self):  # lets tvm.transform.Sequential-style printing name it
        return type("I", (), {"name": "MetaScheduleApplyDatabase"})()


def pipeline_text(target: "tvm.target.Target", *, schedule: str = "auto", database: Any = None,  # noqa: F821
                  layout: str = "nchw") -> str:
    """A human-readable, stable description of the pipeline (stored in artifact manifests)."""
    from . import cpu_schedule

    names = []
    for p in pipeline_passes(target, schedule=schedule, database=database, layout=layout):
        if isinstance(p, _ApplyDatabase):
            names.append("MetaScheduleApplyDatabase")
            continue
        name = p.info.name
        if name == "ConvertLayout":  # only added for layout=nchwc
            from .layout import block_size

            name += f"(NCHW{block_size(target)}c)"
        if name == "ApplyDefaultSchedule":
            rules = cpu_schedule.default_gpu_rules() if _gpu(target) else cpu_schedule.default_cpu_rules()
            name += "(" + ", ".join(_rule_name(r) for r in rules) + ")"
        names.append(name)
    return "\n".join(names)


def _rule_name(rule) -> str:
    rule = getattr(rule, "rule", rule)  # cpu_schedule.Guarded wraps a dlight rule
    mod = type(rule).__module__
    if ".dlight.gpu" in mod:
        return f"dlight.gpu.{type(rule).__name__}"
    if ".dlight.cpu" in mod:
        return f"dlight.cpu.{type(rule).__name__}"
    return f"lepton.{type(rule).__name__}"


def make_pipeline(target: "tvm.target.Target", *, schedule: str = "auto", database: Any = None,  # noqa: F821
                  layout: str = "nchw"):
    """A single module pass running :func:`pipeline_passes` inside ``target``'s context."""
    import tvm

    passes = pipeline_passes(target, schedule=schedule, database=database, layout=layout)

    @tvm.transform.module_pass(opt_level=0, name="LeptonTVMPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        # dlight rules and LegalizeOps read Target.current(); the context makes them see ours.
        with target:
            for p in passes:
                mod = p(mod)
        return mod

    return _pipeline


def build(
    mod: "tvm.IRModule",  # noqa: F821
    target: "str | dict | tvm.target.Target",  # noqa: F821
    *,
    schedule: str = "auto",
    database: Any = None,
    layout: str = "nchw",
) -> "tvm.relax.Executable":  # noqa: F821
    """Compile a Relax module (from :func:`to_relax`) into a VM executable for ``target``.

    Args:
        mod: the Relax module.
        target: a ``tvm.target.Target``, a preset name or a target JSON string/dict.
        schedule: ``"auto"`` (default; search-free schedules) or ``"none"`` (naive; CPU only).
        database: optional MetaSchedule database (see :mod:`.tune`) to apply tuned kernels from.
        layout: ``"nchw"`` (default) or ``"nchwc"`` (see :func:`pipeline_passes`).

    Returns:
        The ``tvm.relax.Executable``; export with ``executable.export_library(path)``.
    """
    import tvm

    from .targets import resolve_target

    if not isinstance(target, tvm.target.Target):
        target = resolve_target(target)
    pipeline = make_pipeline(target, schedule=schedule, database=database, layout=layout)
    return tvm.compile(mod, target=target, relax_pipeline=pipeline)
