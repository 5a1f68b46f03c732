"""`pin-input-shapes`: fix the dims of graph inputs (as `--input-shape` does) and re-infer types.

A pass so that backends can put it at the front of their lowering pipeline: static compilers
(TVM) specialise kernels on known dims, and the pinning then shows in `--print-ir-after-change`,
the timing table and reproducers like every other step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lepton_ir import LeptonError, Model, pin_input_shapes

from ..base import Pass, register_pass


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`name=1x3x224x224` -> ("name", (1, 3, 224, 224)); LeptonError if malformed."""
    name, eq, dims = text.rpartition("=")
    try:
        if not eq or not name:
            raise ValueError
        shape = tuple(int(d) for d in dims.lower().split("x")) if dims.strip() else ()
        if any(d < 0 for d in shape):
            raise ValueError
    except ValueError:
        raise LeptonError(f"bad input shape {text!r}: expected NAME=DxDx... with non-negative ints, "
                          "e.g. image=1x3x224x224") from None
    return name, shape


def format_shape(name: str, dims: tuple[int, ...] | list[int]) -> str:
    """The inverse of `parse_shape`."""
    return f"{name}={'x'.join(str(int(d)) for d in dims)}"


@register_pass
@dataclass(frozen=True)
class PinInputShapes(Pass):
    """Fix graph input shapes, e.g. shapes=[image=1x3x224x224] (symbolic dims bound everywhere)."""

    name = "pin-input-shapes"
    idempotent = True
    shapes: tuple[str, ...] = field(default=(), metadata={"help": "NAME=DxDx... per input"})

    def __post_init__(self) -> None:
        for s in self.shapes:
            parse_shape(s)

    def run(self, model: Model) -> bool:
        if not self.shapes:
            return False
        wanted = dict(parse_shape(s) for s in self.shapes)
        by_name = {v.name: v for v in model.graph.inputs}
        before = {n: (by_name[n].shape.dims if n in by_name and by_name[n].shape is not None else None)
                  for n in wanted}
        if all(before[n] is not None and tuple(before[n]) == tuple(d) for n, d in wanted.items()):
            return False  # already pinned: leave the types alone
        pin_input_shapes(model, wanted)
        return True
