"""Lepton's TVM backend (``tvm-cpu``; CUDA presets compile too): ONNX -> TVM artifact.

Typical use::

    from lepton_backends.tvm import compile_model, load_artifact
    compile_model(onnx_model, "out/resnet", target="native", input_shapes={"x": [1, 3, 224, 224]})
    runner = load_artifact("out/resnet")
    outputs = runner.run({"x": x})

Modules: :mod:`.targets` (presets), :mod:`.lower` (import, pipeline, build),
:mod:`.cpu_schedule` (search-free CPU schedules), :mod:`.artifact` (write/load/run),
:mod:`.tune` (MetaSchedule with a persistent database).

TVM is imported lazily, so ``import lepton_backends.tvm`` is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .artifact import (
    ArtifactError,
    InputError,
    Runner,
    TensorSpec,
    load_artifact,
    model_sha256,
    read_manifest,
)
from .targets import preset_names, resolve_target

# Registers "tvm-cpu" with lepton_backends' registry (cheap: TVM itself is imported lazily).
from . import backend as _backend  # noqa: E402,F401

__all__ = [
    "ArtifactError",
    "InputError",
    "Runner",
    "TensorSpec",
    "build",
    "compile_model",
    "io_specs",
    "load_artifact",
    "model_sha256",
    "preset_names",
    "read_manifest",
    "resolve_target",
    "to_relax",
]


def to_relax(model, input_shapes=None, target=None):
    """See :func:`lepton_backends.tvm.lower.to_relax`."""
    from .lower import to_relax as _to_relax

    return _to_relax(model, input_shapes, target)


def build(mod, target, **kwargs):
    """See :func:`lepton_backends.tvm.lower.build`."""
    from .lower import build as _build

    return _build(mod, target, **kwargs)


def io_specs(model, mod) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input/output specs of a model as compiled: ONNX names, shapes/dtypes from the Relax ``main``.

    Shapes come from the Relax signature so pinned dims (``input_shapes``) are reflected in the
    outputs too; dims that stay symbolic are recorded by their name.
    """
    from tvm import relax

    from .lower import graph_inputs

    main = mod["main"]
    in_names = [vi.name for vi in graph_inputs(model)]
    params = list(main.params)
    if len(params) != len(in_names):
        raise ValueError(f"Relax main takes {len(params)} inputs, the ONNX graph has {len(in_names)}")

    def spec(name: str, sinfo: Any, output: bool = False) -> TensorSpec:
        if not isinstance(sinfo, relax.TensorType):
            raise ValueError(f"{name!r}: only tensor inputs/outputs are supported, got {sinfo}")
        if sinfo.shape is None:
            # Outputs whose shape depends on input values (Slice/Unsqueeze with runtime operands)
            # have a known rank only; record unknown dims. Inputs always carry a shape.
            if not output or sinfo.ndim < 0:
                raise ValueError(f"{name!r}: only tensors of known rank are supported, got {sinfo}")
            return TensorSpec(name, str(sinfo.dtype), tuple("?" for _ in range(sinfo.ndim)))
        dims: list[int | str] = []
        for d in sinfo.shape.values:
            dims.append(int(d) if hasattr(d, "value") else str(d))
        return TensorSpec(name, str(sinfo.dtype), tuple(dims))

    inputs = [spec(n, p.ty) for n, p in zip(in_names, params)]
    ret = main.ret_ty
    rets = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    out_names = [o.name for o in model.graph.output]
    if len(rets) != len(out_names):
        raise ValueError(f"Relax main returns {len(rets)} values, the ONNX graph has {len(out_names)} outputs")
    outputs = [spec(n, s, output=True) for n, s in zip(out_names, rets)]
    return inputs, outputs


def compile_model(
    model,
    out_dir: str | os.PathLike,
    *,
    target: Any = "native",
    input_shapes: dict[str, list[int]] | None = None,
    schedule: str = "auto",
    database: Any = None,
    export_cc: Callable[..., Any] | None = None,
) -> Path:
    """ONNX model -> artifact folder with TVM alone (no Lepton passes): :func:`to_relax`,
    :func:`build`, then the one artifact writer (``lepton_backends.artifact``), atomically.

    For a cross target (e.g. ``"cortex-a72"``) pass ``export_cc`` (e.g.
    ``tvm.support.cc.cross_compiler("aarch64-linux-gnu-gcc")``). ``lepton.optimize(...,
    backend="tvm-cpu")`` is the full path (Lepton's lowering passes first).
    """
    from lepton_backends.artifact import atomic_dir, write_manifest

    from . import lower
    from .artifact import fill_artifact_dir

    tgt = resolve_target(target)
    mod = lower.to_relax(model, input_shapes, target=tgt)
    inputs, outputs = io_specs(model, mod)
    ex = lower.build(mod, tgt, schedule=schedule, database=database)
    with atomic_dir(out_dir) as staging:
        stage = fill_artifact_dir(staging, ex, target=tgt, model=model, input_specs=inputs, output_specs=outputs,
                                  export_cc=export_cc,
                                  tvm_pipeline=lower.pipeline_text(tgt, schedule=schedule, database=database))
        stage.update(name="main", dir=".", options={"schedule": schedule})
        write_manifest(staging, [stage], pipeline="", source_sha256=model_sha256(model))
    return Path(out_dir)
