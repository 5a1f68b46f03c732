"""`legalize`: every legalization, for backends that only have standard ONNX ops (TVM's importer)."""

from __future__ import annotations

from dataclasses import dataclass

from lepton_ir import Model

from ..base import Pass, register_pass
from .contrib_ops import LegalizeContribOps
from .expand_functions import ExpandFunctions
from .integer_ops import LegalizeIntegerOps
from .rnn import UnrollRnn


@register_pass
@dataclass(frozen=True)
class Legalize(Pass):
    """Contrib ops, integer ops, function-defined ops and recurrent ops, in standard ONNX ops."""

    name = "legalize"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for p in (LegalizeContribOps(), ExpandFunctions(), LegalizeIntegerOps(), UnrollRnn()):
            changed |= p.run(model)
        return changed
