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

# Ops ONNX defines by function bodies that TVM 0.27's importer has no converter for (checked
# against relax.frontend.onnx's convert map); context-dependent bodies (the loss functions,
# CenterCropPad, RotaryEmbedding) are instantiated for the node's input types.
DEFAULT_OPS = ("DynamicQuantizeLinear", "MeanVarianceNormalization", "Celu", "Swish", "SwiGLU",
               "BlackmanWindow", "HammingWindow", "HannWindow", "NegativeLogLikelihoodLoss",
               "SoftmaxCrossEntropyLoss", "CenterCropPad", "RotaryEmbedding")


def function_body(op_type: str, opset: int, node: Node | None = None) -> onnx.FunctionProto | None:
    """The schema's function body for `op_type` at `opset` (for context-dependent functions, built
    for `node`'s attributes and input types), or None."""
    try:
        schema = onnx.defs.get_schema(op_type, opset)
    except Exception:  # unknown op or opset
        return None
    raw = None
    if schema.has_function:
        try:
            raw = schema.get_function_with_opset_version(opset)
        except Exception:
            raw = None
        if not raw:
            return schema.function_body
    elif schema.has_context_dependent_function and node is not None:
        raw = _context_dependent(schema, opset, node)
    if not raw:
        return None
    f = onnx.FunctionProto()
    f.ParseFromString(raw)
    return f


def _context_dependent(schema, opset: int, node: Node) -> bytes | None:
    from lepton_ir.onnx_io import _Exporter, _type_proto

    if any(v is not None and v.type is None for v in node.inputs):
        return None  # the body depends on input types we do not know
    versions = [v for v in schema.context_dependent_function_opset_versions if v <= opset]
    if not versions:
        return None
    p = onnx.NodeProto()
    p.op_type = node.op_type
    p.input.extend("" if v is None else f"i{k}" for k, v in enumerate(node.inputs))
    # Declare every formal output: bodies define optional outputs (SoftmaxCrossEntropyLoss's
    # log_prob) unconditionally, and an unused extra output costs nothing.
    p.output.extend(f"o{k}" for k in range(max(len(node.outputs), len(schema.outputs))))
    exp = _Exporter(defer=None)
    p.attribute.extend(exp.attr(a, None) for a in node.attrs.values())  # type: ignore[arg-type]
    types = [_type_proto(v.type).SerializeToString() for v in node.inputs if v is not None]
    try:
        return schema.get_context_dependent_function_with_opset_version(max(versions), p.SerializeToString(), types)
    except Exception:
        return None


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


def _layernorm_needs_body(n: Node) -> bool:
    """TVM's LayerNormalization covers the usual case (normalise the last axis, one output); the
    Mean/InvStdDev outputs and other axes need the spec's body."""
    extra = any(o.num_uses() or o.is_graph_output() for o in n.outputs[1:])
    x = n.inputs[0]
    rank = len(x.shape) if x is not None and x.shape is not None else None
    axis = n.attr("axis", -1)
    return extra or rank is None or axis not in (-1, rank - 1)


#: Ops expanded only in the cases their predicate names (otherwise the backend's own op is better).
CONDITIONAL = {"LayerNormalization": _layernorm_needs_body,
               # TVM 0.27's Attention converter requires q_num_heads/kv_num_heads (optional in ONNX
               # for 4-D inputs) and handles no mask/cache variants: the spec's body always works.
               "Attention": lambda n: True}


@register_pass
@dataclass(frozen=True)
class ExpandFunctions(Pass):
    """Replace ops defined by onnx as functions (e.g. DynamicQuantizeLinear) by their bodies."""

    name = "expand-functions"
    idempotent = True
    ops: tuple[str, ...] = field(default=DEFAULT_OPS, metadata={"help": "op types to expand"})

    def run(self, model: Model) -> bool:
        from lepton_ir import LeptonError, infer_types

        opset = model.opset("") or 17
        changed = False
        for _ in range(8):  # bodies may use other expandable ops (SoftmaxCrossEntropyLoss -> NLL)
            progress = False
            for g in list(model.graph.all_graphs()):
                for n in g:
                    if n.domain != "":
                        continue
                    if n.op_type not in self.ops and not (n.op_type in CONDITIONAL and CONDITIONAL[n.op_type](n)):
                        continue
                    body = function_body(n.op_type, opset, n)
                    if body is None:
                        continue
                    try:
                        expand_node(n, body, opset)
                    except LeptonError:
                        continue  # a body this node's form does not fit (e.g. an output it omits)
                    progress = True
            if not progress:
                break
            changed = True
            infer_types(model)  # context-dependent bodies of nested ops need their input types
        return changed
