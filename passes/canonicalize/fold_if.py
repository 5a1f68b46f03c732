"""`fold-if`: replace an If whose condition is a constant by the branch it always takes."""

from __future__ import annotations

from dataclasses import dataclass

from lepton_ir import Graph, Model, Node, Value

from ..base import Pass, register_pass
from ..util import constant_value, splice


def _inline_branch(g: Graph, node: Node, branch: Graph) -> None:
    # Branch-local initializers become initializers of the enclosing graph.
    vmap: dict[int, Value] = {id(v): g.constant(v.const, name=name) for name, v in branch.initializers.items()}
    splice(node, branch, vmap)


@register_pass
@dataclass(frozen=True)
class FoldIf(Pass):
    """Inline the taken branch of If nodes whose condition is a known constant."""

    name = "fold-if"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in g:
                if n.op_type != "If" or n.domain != "" or n.graph is not g:
                    continue
                cond = constant_value(n.inputs[0])
                if cond is None or cond.size != 1:
                    continue
                branch = n.attr("then_branch") if bool(cond.reshape(-1)[0]) else n.attr("else_branch")
                if branch is None or len(branch.outputs) != len(n.outputs):
                    continue
                _inline_branch(g, n, branch)
                changed = True
        return changed
