"""Structured pruning: `prune` (physical channel removal over the whole graph) and `reconstruct`
(training-free recovery: bias compensation and a layer-wise ridge refit). See docs/pruning.md."""

from .prune import (ORIGINAL_KEY, PRUNE_KEY, Plan, Prune, analyse, apply_plan, detect_simd, make_plan, mask_plan,
                    plan_for_macs, read_record, slot_groups)
from .reconstruct import Reconstruct

__all__ = ["Prune", "Reconstruct", "Plan", "analyse", "make_plan", "plan_for_macs", "apply_plan", "mask_plan",
           "read_record", "slot_groups", "detect_simd", "PRUNE_KEY", "ORIGINAL_KEY"]
