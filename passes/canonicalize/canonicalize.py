"""`canonicalize`: the fixpoint of the cleanup passes, with types re-inferred between rounds."""

from __future__ import annotations

from dataclasses import dataclass, field

from lepton_ir import Model, infer_types

from ..base import Pass, register_pass
from .cse import CommonSubexpressionElimination
from .dce import DeadCodeElimination
from .fold_if import FoldIf
from .fold_constants import FoldConstants
from .inline_functions import InlineFunctions
from .remove_noops import RemoveNoops
from .simplify_shapes import SimplifyShapes


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    """Inline functions, fold constants, shapes and constant Ifs, remove no-ops, CSE and DCE, to a fixpoint."""

    name = "canonicalize"
    idempotent = True
    max_iterations: int = field(default=10, metadata={"help": "rounds before giving up on a fixpoint"})
    max_elements: int = field(default=1 << 20, metadata={"help": "fold-constants: cap on created constants"})

    def run(self, model: Model) -> bool:
        steps = [InlineFunctions(), SimplifyShapes(), FoldConstants(max_elements=self.max_elements), FoldIf(),
                 RemoveNoops(), CommonSubexpressionElimination(), DeadCodeElimination()]
        changed = False
        for _ in range(self.max_iterations):
            round_changed = False
            for p in steps:
                round_changed |= p.run(model)
            if not round_changed:
                break
            changed = True
            # New constants make more shapes inferable (e.g. a Reshape whose target just folded).
            infer_types(model)
        return changed
