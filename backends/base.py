"""The `Backend` interface, the backend registry, and compiling models into (multi-stage) artifacts.

A backend is one class (as a pass is): a kebab-case `name`, a docstring shown by
`lepton-opt --list-backends`, a frozen dataclass `Options` whose fields are its typed options, a
`lowering_pipeline` of Lepton passes it needs before building, `build()` (write one stage's files,
return its manifest entry) and `load()` (open such a stage for running). Register it with
`@register_backend` or the `lepton.backends` entry-point group; nothing else needs to change for
`lepton-opt --backend NAME`, `lepton.load` and `lepton-run` to use it.

`Backend.compile` and `compile_stages` stage the artifact atomically (`artifact.atomic_dir`) and
write the one manifest format (`artifact.write_manifest`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, TypeVar

from lepton_ir import Model
from lepton_ir.registry import Registry

from .errors import BackendError, BackendOptionError
from .artifact import MANIFEST, atomic_dir, check_output_path, jsonable, sha256_file, write_manifest


#: How a caller runs a backend's lowering pipeline: `run(pipeline_text, model)`. The driver passes
#: one that goes through its PassManager, so the caller's instruments (verify-each, print-IR,
#: --check, timing, the reproducer) see the backend's passes too.
PipelineRunner = Callable[[str, Model], Any]

#: Called (no arguments) inside the staging context right before an artifact is published, after
#: every file is written and every stage opened: raising there discards the staging folder, so
#: nothing is published. The CLI registers one that raises KeyboardInterrupt when Ctrl-C was
#: pressed during the compile, even where a runtime swallowed it (lepton/cli.py `_Interrupts`).
PUBLISH_HOOKS: list[Callable[[], None]] = []


def before_publish() -> None:
    """Run every `PUBLISH_HOOKS` entry (see there)."""
    for hook in list(PUBLISH_HOOKS):
        hook()


class StageRunner(Protocol):
    """What `Backend.load` returns: runs one stage."""

    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A backend without options."""


def _default_runner(pipeline: str, model: Model) -> None:
    from lepton_passes import PassManager

    PassManager(pipeline, verify_each=True).run(model)


class Backend:
    """Base of all backends. Subclasses set `name`, a docstring, `default_pipeline`, `Options`,
    and implement `build()` and `load()`; `lowering_pipeline()` when they need Lepton passes."""

    #: Registry name, used by `--backend NAME`.
    name: ClassVar[str] = ""
    #: Pipeline text the driver runs when the user gives no `--passes` (before `compile`).
    default_pipeline: ClassVar[str] = ""
    #: The backend's options: a frozen dataclass; `metadata={"help": ...}` documents a field.
    Options: ClassVar[type] = NoOptions

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def parse_options(cls, options: Any = None) -> Any:
        """`Options` from a mapping (option or field names; text values parsed as in pipelines)."""
        from lepton_passes.pipeline import build_options

        return build_options(cls.Options, options, owner=f"backend {cls.name!r}", error=BackendOptionError)

    @classmethod
    def describe_options(cls) -> list[tuple[str, str, str, str]]:
        """(option, type, default, help) rows, as `--list-backends` shows them."""
        from lepton_passes.pipeline import describe_fields

        return describe_fields(cls.Options)

    # -- what subclasses implement -------------------------------------------------------------
    def check_target(self, target: str | None) -> None:
        """Refuse a `--target` this backend cannot compile for, before any pass runs (raise
        BackendOptionError: a usage error). Default: accept anything (checked at build time)."""

    def quant_target(self, target: str | None) -> str | None:
        """The instruction set `quant8` should quantize for (its `target` option: x86, x86-vnni,
        arm) when compiling for `target`; None: leave quant8's default. The driver applies it to
        quant8 passes whose text gives no `target=`."""
        return None

    def lowering_pipeline(self, target: str | None, options: Any) -> str:
        """Lepton passes run (on a copy of the model) before `build`; "" for none."""
        return ""

    def build(self, model: Model, staging: Path, *, target: str | None, options: Any) -> dict[str, Any]:
        """Write one stage's files into the empty folder `staging`; return its manifest entry:
        at least `entry`, `inputs`, `outputs` (lists of {name, dtype, shape}); optionally
        `target`, `device`, `extra`. `backend`, `options`, `name` and `dir` are filled in."""
        raise NotImplementedError

    def loads_here(self, stage: Mapping[str, Any]) -> bool:
        """Whether `load()` can open `stage` on this machine (used to check an artifact before it
        is published): by default when the stage runs on this host."""
        return stage.get("device", "host") == "host"

    def load(self, folder: Path, stage: dict[str, Any]) -> StageRunner:
        """Open a stage this backend built (files in `folder`, already hash-verified) for running.
        `stage` is `artifact.stage_view(manifest, i)`: the stage entry plus the artifact's fields."""
        raise NotImplementedError

    # -- compiling ------------------------------------------------------------------------------
    def build_stage(self, model: Model, folder: Path, *, target: str | None = None, options: Any = None,
                    run_pipeline: PipelineRunner | None = None) -> dict[str, Any]:
        """Lower (a copy of) `model` with `lowering_pipeline` through `run_pipeline`, build it into
        `folder` and return the stage's manifest entry. The caller's model is never modified."""
        opts = self.parse_options(options)
        work, lowering = self.lower(model, target, opts, run_pipeline)
        return self.stage_entry(self.build(work, folder, target=target, options=opts), target, opts, lowering)

    def stage_entry(self, built: Mapping[str, Any], target: str | None, options: Any, lowering: str = "") -> dict[str, Any]:
        """`build()`'s result completed into a manifest stage entry (backend, target, device,
        options, the lowering pipeline that ran)."""
        stage = dict(built)
        stage.setdefault("backend", self.name)
        stage.setdefault("target", target)
        stage.setdefault("device", "host")
        stage["options"] = jsonable(options)
        if lowering:
            stage["lowering"] = lowering
        return stage

    def lower(self, model: Model, target: str | None, options: Any, run_pipeline: PipelineRunner | None = None
              ) -> tuple[Model, str]:
        """A lowered copy of `model` (or `model` itself when there is nothing to lower) and the
        lowering pipeline's text."""
        lowering = self.lowering_pipeline(target, options)
        if not lowering:
            return model, ""
        from lepton_ir.clone import clone_model

        work = clone_model(model)
        (run_pipeline or _default_runner)(lowering, work)
        return work, lowering

    def compile(self, model: Model, out_dir: str | os.PathLike, *, target: str | None = None,
                options: Any = None, pipeline_text: str = "", source_sha256: str | None = None,
                run_pipeline: PipelineRunner | None = None, extra: Mapping[str, Any] | None = None) -> Path:
        """Write a single-stage artifact for `model` to `out_dir` atomically and return its path.

        `pipeline_text` (the passes that ran before) and `source_sha256` (of the source model's
        bytes) are recorded in the manifest, and `extra` (JSON-able) as its `extra` field.
        """
        self.parse_options(options)  # option errors before any staging folder exists
        check_output_path(out_dir)
        with atomic_dir(out_dir) as staging:
            built = self.build_stages(model, staging, target=target, options=options, run_pipeline=run_pipeline)
            entries = [entry for _, entry in built]
            # Only a backend that split the model needs the model's own inputs and outputs
            # restated (a single stage already has them all, in its backend's own spelling);
            # the model's outputs, not the last stage's: an earlier stage can produce some of them
            multi = len(entries) > 1
            manifest = write_manifest(staging, entries, pipeline=pipeline_text,
                                      source_sha256=source_sha256, extra=extra,
                                      graph_inputs=_graph_inputs(model) if multi else None,
                                      outputs=[v.name for v in model.graph.outputs] if multi else None)
            check_loads(staging, manifest, [be for be, _ in built])
            before_publish()
        return Path(out_dir)

    def build_stages(self, model: Model, staging: Path, *, target: str | None = None, options: Any = None,
                     run_pipeline: PipelineRunner | None = None) -> list[tuple["Backend", dict[str, Any]]]:
        """The stages `compile` writes into `staging`, each with the backend that loads it: one stage
        (`name` "main", files at the top) unless a backend splits the model (the TVM backends hand
        the parts they cannot compile to ONNX Runtime: backends/tvm/partition.py)."""
        stage = self.build_stage(model, staging, target=target, options=options, run_pipeline=run_pipeline)
        stage.update(name="main", dir=".", nodes=len(model.graph))
        return [(self, stage)]


def _graph_inputs(model: Model) -> list[dict[str, Any]]:
    """The model's inputs as manifest specs (name, dtype, shape)."""
    from .onnx_backend import model_signature

    return model_signature(model)[0]


@dataclasses.dataclass
class StageSpec:
    """One stage of a multi-stage artifact: a model and the backend (with target and options)
    that compiles it. Stages run in order; each reads graph inputs or earlier stages' outputs by
    name (e.g. the stages `lepton_ir.split_stages` cuts a model into)."""

    model: Model
    backend: str | Backend
    target: str | None = None
    options: Any = None
    name: str | None = None


def compile_stages(stages: Sequence[StageSpec], out_dir: str | os.PathLike, *, pipeline_text: str = "",
                   source_sha256: str | None = None, outputs: Sequence[str] | None = None,
                   run_pipeline: PipelineRunner | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Compile every stage with its backend into one artifact folder (atomically).

    Each stage's files go to a subfolder named after the stage (`stage0`, ... by default).
    `outputs` names the artifact's outputs (default: the last stage's). `lepton.load` and
    `lepton-run` run the result like any artifact.
    """
    if not stages:
        raise BackendError("compile_stages needs at least one stage")
    backends = [s.backend if isinstance(s.backend, Backend) else get_backend(s.backend)() for s in stages]
    names = [s.name or f"stage{i}" for i, s in enumerate(stages)]
    if len(set(names)) != len(names):
        raise BackendError(f"stage names must be unique, got {names}")
    for be, s in zip(backends, stages):
        be.parse_options(s.options)
    check_output_path(out_dir)
    with atomic_dir(out_dir) as staging:
        entries = []
        for be, s, name in zip(backends, stages, names):
            folder = staging / name
            folder.mkdir()
            entry = be.build_stage(s.model, folder, target=s.target, options=s.options, run_pipeline=run_pipeline)
            entry.update(name=name, dir=name)
            entries.append(entry)
        manifest = write_manifest(staging, entries, pipeline=pipeline_text, source_sha256=source_sha256,
                                  outputs=outputs, extra=extra)
        check_loads(staging, manifest, backends)
        before_publish()
    return Path(out_dir)


def check_loads(folder: Path, manifest: Mapping[str, Any], backends: Sequence[Backend]) -> None:
    """Open every stage that runs on this host with its own backend's `load()` before the artifact
    is published: no artifact its runtime refuses ever appears at the output path (the staging
    folder is discarded with the error). Stages for a GPU or a remote device cannot be opened here;
    their files were hash-sealed, and `lepton-run --rpc` checks the library's architecture."""
    from .artifact import stage_dir, stage_view

    for i, (be, stage) in enumerate(zip(backends, manifest["stages"])):
        if not be.loads_here(stage):
            continue
        try:
            be.load(stage_dir(folder, stage), stage_view(manifest, i))
        except Exception as e:  # whatever the runtime says, in one line, naming the stage
            first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            first = first.replace(str(folder) + "/", "")  # the staging folder's name means nothing to the user
            where = f"stage {stage.get('name')!r} " if len(manifest["stages"]) > 1 else ""
            raise BackendError(f"{be.name}: the {where}artifact does not load in its own runtime, so it was not "
                               f"written: {first}") from e


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------
B = TypeVar("B", bound=type)


def _check_backend_class(c: type) -> str | None:
    opts = getattr(c, "Options", None)
    if not (isinstance(opts, type) and dataclasses.is_dataclass(opts) and opts.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        return f"backend {c.__name__}: Options must be a frozen dataclass (@dataclass(frozen=True))"
    return None


#: Modules holding built-in backends, imported on first registry access.
_BUILTIN_MODULES: list[str] = ["lepton_backends.onnx_backend", "lepton_backends.tvm", "lepton_backends.tvm.arm",
                               "lepton_backends.tvm.cuda", "lepton_backends.split"]

#: Every backend by name: built-ins, then plugins of the `lepton.backends` entry-point group.
REGISTRY: Registry[type[Backend]] = Registry("backend", Backend, "lepton.backends", _BUILTIN_MODULES,
                                             error=BackendError, check=_check_backend_class)


def register_backend(cls: B | None = None, *, origin: str | None = None) -> Any:
    """Class decorator: register a Backend subclass under its `name`; duplicates are an error."""
    return REGISTRY.decorator(cls, origin=origin)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as `name`; BackendError listing the known ones otherwise."""
    return REGISTRY.get(name)


def list_backends() -> dict[str, type[Backend]]:
    """All registered backends (built-in and plugins), by name."""
    return REGISTRY.all()


__all__ = ["Backend", "BackendError", "NoOptions", "StageSpec", "StageRunner", "PipelineRunner", "compile_stages",
           "register_backend", "get_backend", "list_backends", "atomic_dir", "sha256_file", "MANIFEST"]
