"""The `Pass` base class and the pass registry.

A pass is a small frozen dataclass whose fields are its options (xDSL's ModulePass). It has a
kebab-case `name`, a docstring shown in `lepton-opt --list-passes`, and `run(model) -> bool` that
says whether it changed the model. Passes register with `@register_pass`; plugins register through
the entry-point group `lepton.passes` (loaded lazily, on the first lookup that needs them).

Option fields are named in snake_case in Python and kebab-case in pipeline text
(`per_channel` <-> `per-channel`). Give a field `metadata={"help": "..."}` to document it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, ClassVar, TypeVar

from lepton_ir import LeptonError, Model


class PassError(LeptonError):
    """A pass cannot be found, configured or run as asked."""


_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclasses.dataclass(frozen=True)
class Pass:
    """Base of all passes. Subclasses are frozen dataclasses; fields are options."""

    name: ClassVar[str] = ""
    #: True if running the pass twice gives the same model as running it once (the harness checks).
    idempotent: ClassVar[bool] = False
    #: Bounds on how far outputs may move (the harness and the differential instrument use them).
    #: Exact rewrites keep the defaults; lossy ones (quantization) override `tolerance()`.
    rtol: ClassVar[float] = 1e-4
    atol: ClassVar[float] = 1e-5

    def run(self, model: Model) -> bool:
        """Transform `model` in place; return True if anything changed."""
        raise NotImplementedError

    def __call__(self, model: Model) -> bool:
        return self.run(model)

    def tolerance(self, model: Model) -> tuple[float, float]:
        """(rtol, atol) within which outputs must stay; may depend on the model (e.g. scales)."""
        return (self.rtol, self.atol)

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


P = TypeVar("P", bound=type)

_REGISTRY: dict[str, type[Pass]] = {}
_ORIGIN: dict[str, str] = {}
_ENTRY_POINTS_LOADED = False


def option_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def register_pass(cls: P | None = None, *, origin: str | None = None) -> Any:
    """Class decorator: register a Pass subclass under its `name`. Duplicate names are an error."""

    def deco(c: P) -> P:
        if not (isinstance(c, type) and issubclass(c, Pass)):
            raise PassError(f"{c!r} is not a subclass of lepton_passes.Pass")
        if not dataclasses.is_dataclass(c) or not c.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise PassError(f"pass {c.__name__} must be a frozen dataclass (@dataclass(frozen=True))")
        name = c.name
        if not name or not _NAME_RE.match(name):
            raise PassError(f"pass {c.__name__} needs a kebab-case `name`, got {name!r}")
        where = origin or f"{c.__module__}.{c.__qualname__}"
        if name in _REGISTRY and _REGISTRY[name] is not c:
            raise PassError(f"duplicate pass name {name!r}: registered by {_ORIGIN[name]} and by {where}")
        _REGISTRY[name] = c
        _ORIGIN[name] = where
        return c

    return deco(cls) if cls is not None else deco


def _load_entry_points() -> None:
    """Load plugin passes from the `lepton.passes` entry-point group, once."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="lepton.passes"):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not hide the others; say which one
            raise PassError(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {e}") from e
        if isinstance(obj, type) and issubclass(obj, Pass):
            if obj.name in _REGISTRY and _REGISTRY[obj.name] is obj:
                continue
            register_pass(obj, origin=f"entry point {ep.name} ({ep.value})")
        elif callable(obj):
            obj()  # a function that registers one or more passes itself


def _load_builtins() -> None:
    import importlib

    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


#: Modules holding the built-in passes; imported on first registry access.
_BUILTIN_MODULES: list[str] = ["lepton_passes.canonicalize", "lepton_passes.legalize", "lepton_passes.fusion",
                                   "lepton_passes.quant"]


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as `name`; PassError listing known names otherwise."""
    _load_builtins()
    if name not in _REGISTRY:
        _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PassError(f"unknown pass {name!r}; known passes: {', '.join(sorted(_REGISTRY))}") from None


def list_passes() -> dict[str, type[Pass]]:
    """All registered passes (built-in and plugins), by name."""
    _load_builtins()
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def pass_origin(name: str) -> str:
    return _ORIGIN.get(name, "?")
