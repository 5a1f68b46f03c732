"""`legalize`: every legalization, for backends that only have standard ONNX ops (TVM's importer)."""

from __future__ import annotations

from dataclasses import dataclass

from lepton_ir import Model

from ..base import Pass, register_pass
from .contrib_ops import LegalizeContribOps
from .dynamic_quantize_lstm import LegalizeDynamicQuantizeLstm
from .expand_functions import ExpandFunctions
from .integer_ops import LegalizeIntegerOps
from .legalize_extra import LegalizeExtra
from .rnn import UnrollRnn


@register_pass
@dataclass(frozen=True)
class Legalize(Pass):
    """Contrib ops, integer ops, function-defined ops and recurrent ops, in standard ONNX ops.

    Options:
        integer_ops: also rewrite ConvInteger/MatMulInteger into exact float32 arithmetic
            (``legalize-integer-ops``). Backends that lower them natively with int32 accumulation
            (the TVM backends) run ``legalize{integer-ops=false}``.
    """

    name = "legalize"
    idempotent = True

    integer_ops: bool = True

    def run(self, model: Model) -> bool:
        changed = False
        steps = [LegalizeContribOps(), LegalizeDynamicQuantizeLstm(), ExpandFunctions(), LegalizeIntegerOps(), UnrollRnn()]
        for p in steps:
            if isinstance(p, LegalizeIntegerOps) and not self.integer_ops:
                continue
            changed |= p.run(model)
        changed |= LegalizeExtra().run(model)  # new function ops, Scan (after expand-functions)
        return changed
