"""`expand-new-function-ops`: spec bodies for function ops TVM 0.27's importer lacks or mishandles.

`expand-functions` covers the older function ops. This pass adds:
- CausalConvWithState and LinearAttention (onnx 1.23, opset 27; context-dependent bodies): TVM
  has no converter at all;
- RMSNormalization normalising from axis 0 (axis=0 or -rank): TVM's converter builds an empty
  reduction and fails ("Tensor dimension mismatch"); other axes keep TVM's own op.
Each node is replaced by the body onnx's schema defines for it, exactly as the spec computes.
"""

from __future__ import annotations

from dataclasses import dataclass

from lepton_ir import LeptonError, Model, Node

from ..base import Pass, register_pass
from ..util import infer_types_changed
from .expand_functions import expand_node, function_body

#: Always expanded (no TVM converter).
ALWAYS = frozenset({"CausalConvWithState", "LinearAttention"})


def _rms_from_axis0(n: Node) -> bool:
    x = n.inputs[0] if n.inputs else None
    rank = len(x.shape) if x is not None and x.shape is not None else None
    axis = n.attr("axis", -1)
    return rank is not None and (axis == 0 or axis == -rank)


def wants_body(n: Node) -> bool:
    """Whether `n` is one of the cases this pass expands."""
    if n.domain not in ("", "ai.onnx"):
        return False
    return n.op_type in ALWAYS or (n.op_type == "RMSNormalization" and _rms_from_axis0(n))


@register_pass
@dataclass(frozen=True)
class ExpandNewFunctionOps(Pass):
    """CausalConvWithState, LinearAttention and axis-0 RMSNormalization by their ONNX function bodies."""

    name = "expand-new-function-ops"
    idempotent = True

    def run(self, model: Model) -> bool:
        from lepton_ir import infer_types

        opset = model.opset("") or 17
        changed = False
        if any(wants_body(n) for n in model.graph.all_nodes()):
            # Context-dependent bodies are built for the node's input types; refined types are a
            # change to report even if no body fits in the end.
            changed = infer_types_changed(model)
        expanded = False
        for g in list(model.graph.all_graphs()):
            for n in g:
                if not wants_body(n):
                    continue
                body = function_body(n.op_type, opset, n)
                if body is None:
                    continue  # unknown input types: leave the op (the backend reports it)
                try:
                    expand_node(n, body, opset)
                except LeptonError:
                    continue
                expanded = True
        if expanded:
            infer_types(model)
        return changed or expanded
