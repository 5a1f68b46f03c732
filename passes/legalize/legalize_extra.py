"""`legalize-extra`: the legalizations added for ONNX conformance on TVM, run as one step of `legalize`.

Order matters: function bodies first (LinearAttention's body is a Scan), then Scan unrolling.
"""

from __future__ import annotations

from dataclasses import dataclass

from lepton_ir import Model

from ..base import Pass, register_pass
from ..util import infer_types_changed
from .bitshift_range import LegalizeBitShiftRange
from .col2im import LegalizeCol2Im
from .cumprod import LegalizeCumProd
from .eyelike_static import LegalizeEyeLike
from .expand_new_ops import ExpandNewFunctionOps
from .isinf_sign import LegalizeIsInfSign
from .lp_normalization import LegalizeLpNormalization
from .onehot_values import LegalizeOneHot
from .pad_value import LegalizePadValue
from .pow_types import LegalizePowTypes
from .qlinear_conv import LegalizeQLinearConv
from .qlinear_matmul import LegalizeQLinearMatMul
from .reduce_bool import LegalizeReduceBool
from .reduce_empty import LegalizeReduceEmpty
from .resize_axes import LegalizeResizeAxes
from .space_to_depth_crd import LegalizeSpaceToDepthCrd
from .unroll_scan import UnrollScan


@register_pass
@dataclass(frozen=True)
class LegalizeExtra(Pass):
    """expand-new-function-ops, unroll-scan, then single-op rewrites (Pow, LpNormalization, CumProd,
    OneHot, Pad with run-time values, QLinearMatMul, Resize with axes, one-signed IsInf, BitShift
    by out-of-range amounts, EyeLike, empty and bool ReduceMax/Min, Col2Im, QLinearConv, CRD SpaceToDepth)."""

    name = "legalize-extra"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for p in (ExpandNewFunctionOps(), UnrollScan()):
            changed |= p.run(model)
        if any(n.op_type in ("Pow", "CumProd", "OneHot", "Pad", "LpNormalization", "Resize",
                                      "IsInf", "BitShift", "EyeLike", "ReduceMax", "ReduceMin", "Col2Im")
               for n in model.graph.all_nodes()):
            # The rewrites below need input dtypes/ranks; refined types are a change to report.
            changed |= infer_types_changed(model)
        for p in (LegalizePowTypes(), LegalizeLpNormalization(), LegalizeCumProd(), LegalizeOneHot(),
                  LegalizePadValue(), LegalizeQLinearMatMul(), LegalizeResizeAxes(), LegalizeIsInfSign(),
                  LegalizeBitShiftRange(), LegalizeEyeLike(), LegalizeReduceEmpty(), LegalizeReduceBool(),
                  LegalizeCol2Im(), LegalizeQLinearConv(), LegalizeSpaceToDepthCrd()):
            changed |= p.run(model)
        return changed
