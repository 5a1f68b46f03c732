"""`fuse`: every fusion rule, applied to a fixpoint by the rewrite engine.

`fuse_with_report(model)` runs the rules with near-miss collection and returns the engine's
`RewriteStats` (rules applied, and for each rule that matched structurally but was rejected, the
reason); `lepton-opt --passes fuse --debug-rewrites` prints those near misses: under
`debug_rewrites_enabled()` (or the pass option `debug`) the engine logs them to
`lepton_passes.rewrites`. `REPORT_HOOK`, when set, is
called with the stats of every run (tests and tools use it to see what fired).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from lepton_ir import Model, infer_types
from lepton_ir.fingerprint import fingerprint

from ..base import Pass, register_pass
from ..canonicalize.dce import DeadCodeElimination
from ..rewrite import RewriteStats, Rule, apply_rules
from .activation import activation_rules
from .affine import affine_rules
from .attention import attention_rules
from .chains import chain_rules
from .common import default_opset
from .gelu import gelu_rules
from .matmul import matmul_rules
from .normalization import normalization_rules
from .pad import pad_rules

#: Called with the RewriteStats of every `fuse` run when set (a module-level debug hook).
REPORT_HOOK: Callable[[RewriteStats], None] | None = None


def fusion_rules(model: Model) -> list[Rule]:
    """The rules of `fuse` for this model (some depend on its opset), in priority order.

    Order matters only between rules with the same root op: folds before activations, so that
    `Conv -> Mul -> Add -> Relu` first becomes `Conv -> Relu`, then one FusedConv.
    """
    opset = default_opset(model)
    return [*chain_rules(), *pad_rules(), *affine_rules(opset), *matmul_rules(opset), *normalization_rules(opset),
            *gelu_rules(opset), *attention_rules(opset), *activation_rules()]


def fuse_with_report(model: Model, *, debug: bool = True) -> RewriteStats:
    """Run every fusion rule on `model` in place; return the stats (with near misses if `debug`)."""
    infer_types(model)  # the rules read ranks and element types; make them as complete as we can
    stats = apply_rules(model, fusion_rules(model), debug=debug)
    if stats.changed:
        DeadCodeElimination().run(model)  # constants the rewrites replaced
    if REPORT_HOOK is not None:
        REPORT_HOOK(stats)
    return stats


@register_pass
@dataclass(frozen=True)
class Fuse(Pass):
    """Fuse operators: fold BN/affine/Pad into Conv/Gemm/MatMul, fuse activations, LayerNorm, Gelu."""

    name = "fuse"
    idempotent = True
    debug: bool = field(default=False, metadata={"help": "collect near misses and log them"})

    def run(self, model: Model) -> bool:
        from ..manager import debug_rewrites_enabled

        # With debug on, apply_rules collects near misses and logs them and every applied rule to
        # the `lepton_passes.rewrites` logger (what `lepton-opt --debug-rewrites` prints).
        before = fingerprint(model)
        stats = fuse_with_report(model, debug=self.debug or debug_rewrites_enabled())
        # fuse_with_report infers types first: refined types are a change even when no rule applied.
        return stats.changed or fingerprint(model) != before
