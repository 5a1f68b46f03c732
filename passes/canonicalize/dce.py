"""`dce`: dead code elimination."""

from __future__ import annotations

from dataclasses import dataclass

from lepton_ir import Graph, Model

from ..base import Pass, register_pass


def _dce_graph(g: Graph) -> bool:
    changed = False
    for node in g:
        for sub in node.subgraphs():
            changed |= _dce_graph(sub)
    n = g.last()
    while n is not None:
        prev = n.prev()
        if not any(o.num_uses() or o.is_graph_output() for o in n.outputs):
            g.remove(n)
            changed = True
        n = prev
    inputs = {id(v) for v in g.inputs}
    for name, v in list(g.initializers.items()):
        if id(v) not in inputs and not v.num_uses() and not v.is_graph_output():
            g.remove_initializer(name)
            changed = True
    return changed


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove nodes whose results nothing reads, unused initializers and uncalled local functions."""

    name = "dce"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = _dce_graph(model.graph)
        for f in model.functions.values():
            changed |= _dce_graph(f.graph)
        return drop_uncalled_functions(model) or changed


def drop_uncalled_functions(model: Model) -> bool:
    """Delete local functions called from nowhere (neither the graph nor another function), to a
    fixpoint: a function only called by a dead one is dead too."""
    changed = False
    while True:
        called = {(n.domain, n.op_type, n.overload) for n in model.graph.all_nodes()}
        for f in model.functions.values():
            called |= {(n.domain, n.op_type, n.overload) for n in f.graph.all_nodes()}
        dead = [k for k in model.functions if k not in called]
        if not dead:
            return changed
        for k in dead:
            del model.functions[k]
        changed = True
