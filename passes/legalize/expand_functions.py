"""`expand-functions`: replace ops that ONNX defines as functions by their function bodies.

Many standard ops (DynamicQuantizeLinear, MeanVarianceNormalization, HardSwish, ...) are defined
in onnx's schemas by a body of simpler ops. A backend that lacks such an op can run its body
instead, exactly as the spec defines it. `ops` limits which ops are expanded (default: the ones
TVM's importer lacks that carry a context-independent body).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from lepton_ir import Attr, Model, Node, Value

from ..base import Pass, register_pass
from ..util import splice

DEFAULT_OPS = ("DynamicQuantizeLinear", "MeanVarianceNormalization")


def function_body(op_type: str, opset: int) -> onnx.FunctionProto | None:
    """The schema's function body for `op_type` at `opset`, or None."""
    try:
        schema = onnx.defs.get_schema(op_type, opset)
    except Exception:  # unknown op or opset
        return None
    if not schema.has_function:
        return None
    try:
        raw = schema.get_function_with_opset_version(opset)
    except Exception:
        raw = None
    if raw:
        f = onnx.FunctionProto()
        f.ParseFromString(raw)
        return f
    return schema.function_body


def _schema_defaults(op_type: str, opset: int) -> dict[str, Attr]:
    """Attribute defaults from the op's schema: a function body's `@attr` references fall back to
    them (e.g. MeanVarianceNormalization's axes=[0,2,3]), not to nothing."""
    from lepton_ir.onnx_io import _Importer

    out: dict[str, Attr] = {}
    schema = onnx.defs.get_schema(op_type, opset)
    for name, a in schema.attributes.items():
        if a.default_value is not None and a.default_value.type != 0:
            out[name] = _Importer(None, None, {}).attr(a.default_value, [])
            out[name].name = name
    return out


def expand_node(node: Node, body: onnx.FunctionProto, opset: int | None = None) -> None:
    """Splice `body` in place of `node` (attributes of the node bind the body's references)."""
    from lepton_ir.onnx_io import _Importer

    g = node.graph
    assert g is not None
    fn = _Importer(None, None, {}).function(body, body)
    env: dict[str, Attr] = dict(fn.attribute_defaults)
    if opset is not None:
        env.update(_schema_defaults(node.op_type, opset))
    env.update(node.attrs)
    vmap = {id(formal): actual for formal, actual in zip(fn.graph.inputs, node.inputs) if actual is not None}
    splice(node, fn.graph, vmap, env)


@register_pass
@dataclass(frozen=True)
class ExpandFunctions(Pass):
    """Replace ops defined by onnx as functions (e.g. DynamicQuantizeLinear) by their bodies."""

    name = "expand-functions"
    idempotent = True
    ops: tuple[str, ...] = field(default=DEFAULT_OPS, metadata={"help": "op types to expand"})

    def run(self, model: Model) -> bool:
        opset = model.opset("") or 17
        changed = False
        for g in list(model.graph.all_graphs()):
            for n in g:
                if n.domain != "" or n.op_type not in self.ops:
                    continue
                body = function_body(n.op_type, opset)
                if body is None:
                    continue
                expand_node(n, body, opset)
                changed = True
        return changed
