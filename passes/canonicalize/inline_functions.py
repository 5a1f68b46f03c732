"""`inline-functions`: replace calls of model-local functions by their bodies."""

from __future__ import annotations

from dataclasses import dataclass

from lepton_ir import Attr, Function, Model, Node

from ..base import Pass, register_pass
from ..util import splice
from .dce import drop_uncalled_functions


def _compatible(f: Function, model: Model) -> bool:
    """The body may be spliced in only if its opsets agree with the model's."""
    for dom, ver in f.opset_imports.items():
        have = model.opset_imports.get("" if dom == "ai.onnx" else dom)
        if have is not None and have != ver:
            return False
    return True


def _inline_call(call: Node, f: Function) -> None:
    env: dict[str, Attr] = dict(f.attribute_defaults)
    env.update(call.attrs)
    vmap = {id(formal): actual for formal, actual in zip(f.graph.inputs, call.inputs) if actual is not None}
    splice(call, f.graph, vmap, env)


@register_pass
@dataclass(frozen=True)
class InlineFunctions(Pass):
    """Inline calls of the model's local functions (nested calls too) and drop unused functions."""

    name = "inline-functions"
    idempotent = True

    def run(self, model: Model) -> bool:
        changed = False
        for _ in range(32):  # nested calls unfold one level per sweep
            progress = False
            for g in list(model.graph.all_graphs()):
                for n in g:
                    f = model.functions.get((n.domain, n.op_type, n.overload))
                    if f is None or not _compatible(f, model):
                        continue
                    for dom, ver in f.opset_imports.items():
                        model.opset_imports.setdefault("" if dom == "ai.onnx" else dom, ver)
                    _inline_call(n, f)
                    progress = True
            changed |= progress
            if not progress:
                break
        if changed:
            drop_uncalled_functions(model)
        return changed
