"""`bind-inputs`: specialise a model on known values of some inputs (they become constants).

Models often take a configuration value as an input (silero-vad's sample rate `sr`) and branch on
it with If nodes. A deployment uses one value; binding it removes the input from the model's
interface and lets `canonicalize` fold the branches away, which static compilers (TVM) need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lepton_ir import ArrayTensor, LeptonError, Model, TensorType, Value

from ..base import Pass, register_pass


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def _parse(binding: str) -> tuple[str, list[int | float]]:
    name, sep, text = binding.partition("=")
    if not sep or not name:
        raise LeptonError(f"bind-inputs: expected NAME=VALUE[:VALUE...], got {binding!r}")
    try:
        # Integer literals stay ints: float() would round int64 values beyond 2**53 (INT64_MAX, the
        # usual "to the end" Slice bound, would wrap to INT64_MIN when cast back).
        return name, [_number(v) for v in text.split(":") if v != ""]
    except ValueError:
        raise LeptonError(f"bind-inputs: value of {name!r} is not a number: {text!r}") from None


@register_pass
@dataclass(frozen=True)
class BindInputs(Pass):
    """Turn the named inputs into constants with the given values (e.g. values=[sr=16000])."""

    name = "bind-inputs"
    idempotent = True
    values: tuple[str, ...] = field(default=(), metadata={
        "help": "NAME=VALUE for a scalar input, NAME=V1:V2:... for a 1-D one"})

    def run(self, model: Model) -> bool:
        g = model.graph
        changed = False
        for binding in self.values:
            name, vals = _parse(binding)
            v = next((i for i in g.inputs if i.name == name and i.const is None), None)
            if v is None:
                continue  # already bound (the pass is idempotent), or a typo caught below
            t = v.type
            if not isinstance(t, TensorType):
                raise LeptonError(f"bind-inputs: input {name!r} is not a tensor")
            arr = np.asarray(vals, dtype=t.dtype.numpy())
            rank = len(t.shape) if t.shape is not None else None
            if rank == 0:
                if arr.size != 1:
                    raise LeptonError(f"bind-inputs: input {name!r} is a scalar, given {len(vals)} values")
                arr = arr.reshape(())
            elif t.shape is not None and t.shape.is_static and tuple(t.shape.dims) != arr.shape:
                raise LeptonError(f"bind-inputs: input {name!r} has shape {t.shape}, given {len(vals)} values")
            const = Value(None, TensorType(t.dtype, None), const=ArrayTensor(arr))
            const.name = g.fresh_name(f"{name}_bound")
            g.add_initializer(const)
            v.replace_all_uses_with(const)
            g.inputs.remove(v)
            changed = True
        known = {i.name for i in g.inputs} | set(g.initializers)
        for binding in self.values:
            name, _ = _parse(binding)
            if name not in known and not any(i.name.startswith(f"{name}_bound") for i in g.initializers.values()):
                raise LeptonError(f"bind-inputs: the model has no input {name!r}")
        return changed
