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
from typing import Any, ClassVar, TypeVar

from lepton_ir import LeptonError, Model
from lepton_ir.registry import Registry


class PassError(LeptonError):
    """A pass cannot be found, configured or run as asked."""


class PassInputError(PassError):
    """What the user gave a pass is wrong (a calibration file with the wrong arrays, shapes or
    dtypes; shapes the model cannot take): a user error, so no reproducer is written for it
    (reproducers are for passes that fail on a model they should handle)."""


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


def _check_pass_class(c: type) -> str | None:
    if not dataclasses.is_dataclass(c) or not c.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        return f"pass {c.__name__} must be a frozen dataclass (@dataclass(frozen=True))"
    return None


#: Modules holding the built-in passes; imported on first registry access.
_BUILTIN_MODULES: list[str] = ["lepton_passes.canonicalize", "lepton_passes.legalize", "lepton_passes.fusion",
                               "lepton_passes.quant", "lepton_passes.prune",
                               "lepton_passes.distill"]

#: Every pass by name: built-ins, then plugins of the `lepton.passes` entry-point group (lazily).
REGISTRY: Registry[type[Pass]] = Registry("pass", Pass, "lepton.passes", _BUILTIN_MODULES, error=PassError,
                                          check=_check_pass_class, plural="passes")


def option_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def register_pass(cls: P | None = None, *, origin: str | None = None) -> Any:
    """Class decorator: register a Pass subclass under its `name`. Duplicate names are an error."""
    return REGISTRY.decorator(cls, origin=origin)


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as `name`; PassError listing known names otherwise."""
    return REGISTRY.get(name)


def list_passes() -> dict[str, type[Pass]]:
    """All registered passes (built-in and plugins), by name."""
    return REGISTRY.all()


def pass_origin(name: str) -> str:
    return REGISTRY.origin(name)
