"""The `Backend` interface, the backend registry, and atomic artifact folders.

A backend turns an optimized `lepton_ir.Model` into an artifact folder. `Backend.compile` builds the
artifact in a sibling temp folder (`.<name>.tmp-XXXX`) and renames it into place only when it is
complete: an interrupted or failed compile leaves nothing at `out_dir`, and an existing artifact
there is replaced only by a complete new one. Subclasses implement `build()` (write files into the
staging folder) and usually keep the inherited `compile()`.

Backends register with `@register_backend` or through the entry-point group `lepton.backends`
(loaded lazily on the first lookup that misses). Duplicate names are an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, TypeVar

from lepton_ir import LeptonError, Model


class BackendError(LeptonError):
    """A backend cannot be found, configured, or cannot compile the model."""


#: The file every artifact folder holds; its presence marks a folder as replaceable by `compile`.
MANIFEST = "manifest.json"


class Backend:
    """Base of all backends. Subclasses set `name`, a docstring, `default_pipeline`, `option_help`,
    and implement `build()`."""

    #: Registry name, used by `--backend NAME`.
    name: ClassVar[str] = ""
    #: Pipeline text the driver runs when the user gives no `--passes` (before `compile`).
    default_pipeline: ClassVar[str] = ""
    #: Backend options accepted by `compile(options=...)`: name -> help. Others are an error.
    option_help: ClassVar[dict[str, str]] = {}

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def compile(self, model: Model, out_dir: str | os.PathLike, *, target: str | None = None,
                options: Mapping[str, Any] | None = None, pipeline_text: str = "",
                source_sha256: str | None = None) -> Path:
        """Write the artifact for `model` to `out_dir` atomically and return its path.

        `pipeline_text` is recorded in the manifest; `source_sha256` is the hash of the source
        model's bytes (recorded too, when known).
        """
        opts = dict(options or {})
        unknown = sorted(set(opts) - set(self.option_help))
        if unknown:
            known = ", ".join(sorted(self.option_help)) or "none"
            raise BackendError(f"backend {self.name!r} has no option(s) {', '.join(unknown)}; its options: {known}")
        with atomic_dir(out_dir) as staging:
            self.build(model, staging, target=target, options=opts, pipeline_text=pipeline_text,
                       source_sha256=source_sha256)
        return Path(out_dir)

    def build(self, model: Model, staging: Path, *, target: str | None, options: dict[str, Any],
              pipeline_text: str, source_sha256: str | None) -> None:
        """Write the artifact's files into `staging` (an empty folder)."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------
# Atomic artifact folders
# ------------------------------------------------------------------------------------------------
def _replaceable(path: Path) -> bool:
    """Only an empty folder or a previous artifact may be replaced (never, say, a home folder)."""
    return path.is_dir() and (not any(path.iterdir()) or (path / MANIFEST).is_file())


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `out_dir`; on success rename it to `out_dir`.

    On any exception (KeyboardInterrupt included) the staging folder is removed and `out_dir` is
    left exactly as it was. An existing `out_dir` must be an empty folder or an artifact (holds
    manifest.json); it is swapped out only after the new one is complete.
    """
    out = Path(out_dir)
    if out.exists() and not _replaceable(out):
        what = "a file" if not out.is_dir() else "a folder that is not a Lepton artifact (no manifest.json)"
        raise BackendError(f"{out}: exists and is {what}; refusing to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        yield staging
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, old / "a")  # move aside first: rename onto a non-empty folder fails
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(old / "a", out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj: Any) -> None:
    # default=str: a backend option given from Python may be any object; record its text.
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------
B = TypeVar("B", bound=type)

_REGISTRY: dict[str, type[Backend]] = {}
_ORIGIN: dict[str, str] = {}
_ENTRY_POINTS_LOADED = False
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

#: Modules holding built-in backends, imported on first registry access. backends/tvm adds itself
#: here when ready (e.g. "lepton_backends.tvm").
_BUILTIN_MODULES: list[str] = ["lepton_backends.onnx_backend", "lepton_backends.tvm", "lepton_backends.tvm.arm", "lepton_backends.tvm.cuda"]


def register_backend(cls: B | None = None, *, origin: str | None = None) -> Any:
    """Class decorator: register a Backend subclass under its `name`; duplicates are an error."""

    def deco(c: B) -> B:
        if not (isinstance(c, type) and issubclass(c, Backend)):
            raise BackendError(f"{c!r} is not a subclass of lepton_backends.Backend")
        name = c.name
        if not name or not _NAME_RE.match(name):
            raise BackendError(f"backend {c.__name__} needs a kebab-case `name`, got {name!r}")
        where = origin or f"{c.__module__}.{c.__qualname__}"
        if name in _REGISTRY and _REGISTRY[name] is not c:
            raise BackendError(f"duplicate backend name {name!r}: registered by {_ORIGIN[name]} and by {where}")
        _REGISTRY[name] = c
        _ORIGIN[name] = where
        return c

    return deco(cls) if cls is not None else deco


def _load_builtins() -> None:
    import importlib

    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="lepton.backends"):
        try:
            obj = ep.load()
        except Exception as e:  # name the broken plugin instead of a bare traceback
            raise BackendError(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {e}") from e
        if isinstance(obj, type) and issubclass(obj, Backend):
            if _REGISTRY.get(obj.name) is obj:
                continue
            register_backend(obj, origin=f"entry point {ep.name} ({ep.value})")
        elif callable(obj):
            obj()


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as `name`; BackendError listing the known ones otherwise."""
    _load_builtins()
    if name not in _REGISTRY:
        _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(sorted(_REGISTRY))}") from None


def list_backends() -> dict[str, type[Backend]]:
    """All registered backends (built-in and plugins), by name."""
    _load_builtins()
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))
