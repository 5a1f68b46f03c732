"""Operator fusion: the `fuse` pass, its rules, the `ai.lepton` fused ops and their lowerings.

Importing this package registers the passes `fuse`, `lower-fused-to-onnx` and
`lower-fused-to-standard`, and the reference implementations of the `ai.lepton` ops.
See docs/fusion.md.
"""

from . import ops  # noqa: F401  (registers reference implementations)
from .fuse import Fuse, fuse_with_report, fusion_rules
from .lower import LowerFusedToOnnx, LowerFusedToStandard, lower_fused
from .ops import DOMAIN

__all__ = ["Fuse", "fuse_with_report", "fusion_rules", "LowerFusedToOnnx", "LowerFusedToStandard",
           "lower_fused", "DOMAIN"]
