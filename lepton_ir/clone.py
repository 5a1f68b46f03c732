"""Copying nodes and graphs (for inlining, pattern expansion, partitioning)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from .ir import Attr, AttrType, Graph, Node, Value

if TYPE_CHECKING:
    from .ir import Model


def clone_node(node: Node, vmap: dict[int, Value], attr_env: Mapping[str, Attr] | None = None) -> Node:
    """A copy of `node` reading `vmap[id(input)]` (or the same input when unmapped).

    New outputs are recorded in `vmap`. With `attr_env`, attribute references (`ref`) are resolved
    against it (a missing one is dropped, as ONNX specifies for unset optional attributes).
    Constants are shared, not copied: tensors are immutable in the IR.
    """
    attrs = []
    for a in node.attrs.values():
        if a.ref is not None and attr_env is not None:
            bound = attr_env.get(a.ref)
            if bound is None:
                continue
            attrs.append(Attr(a.name, bound.type, bound.value, ref=bound.ref, doc=bound.doc))
            continue
        if a.type == AttrType.GRAPH:
            attrs.append(Attr(a.name, a.type, clone_graph(a.value, vmap, attr_env), doc=a.doc))
        elif a.type == AttrType.GRAPHS:
            attrs.append(Attr(a.name, a.type, [clone_graph(x, vmap, attr_env) for x in a.value], doc=a.doc))
        else:
            attrs.append(Attr(a.name, a.type, a.value, ref=a.ref, doc=a.doc))
    new = Node(node.op_type, [vmap.get(id(v), v) if v is not None else None for v in node.inputs], attrs,
               domain=node.domain, num_outputs=len(node.outputs), overload=node.overload, doc=node.doc)
    new.metadata_props = dict(node.metadata_props)
    new.name = node.name
    new.meta = dict(node.meta)
    for o, c in zip(node.outputs, new.outputs):
        c.type = o.type
        c.name = "" if o.name == "" else None  # keep "omitted output" markers; fresh names otherwise
        vmap[id(o)] = c
    return new


def clone_graph(g: Graph, vmap: dict[int, Value], attr_env: Mapping[str, Attr] | None = None) -> Graph:
    """A deep copy of `g`; references to values outside `g` go through `vmap` (or stay as they are)."""
    new = Graph(name=g.name, doc=g.doc)
    new.metadata_props = dict(g.metadata_props)
    new.extra = dict(g.extra)
    new.sparse_initializers = dict(g.sparse_initializers)
    for v in g.inputs:
        c = Value(v.name, v.type, const=v.const, doc=v.doc)
        vmap[id(v)] = c
        new.add_input(c)
    for name, v in g.initializers.items():
        if id(v) in vmap:  # already added as an input
            new.add_initializer(vmap[id(v)])
            continue
        c = Value(name, v.type, const=v.const, doc=v.doc)
        vmap[id(v)] = c
        new.add_initializer(c)
    for n in g:
        new.append(clone_node(n, vmap, attr_env))
    new.outputs = [vmap.get(id(o), o) for o in g.outputs]
    return new


def clone_model(model: "Model") -> "Model":
    """A copy of the whole model sharing constant tensors (immutable), so it costs O(nodes), not
    O(weights): cheap enough to snapshot before every pass."""
    import copy

    from .ir import Function, Model

    vmap: dict[int, Value] = {}
    graph = clone_graph(model.graph, vmap)
    for old_v, new_v in ((v, vmap[id(v)]) for g in [model.graph] for v in _all_values(g) if id(v) in vmap):
        new_v.name = old_v.name  # keep names: reproducers should read like the original
        new_v.meta = dict(old_v.meta)
    funcs = []
    for f in model.functions.values():
        fmap: dict[int, Value] = {}
        fg = clone_graph(f.graph, fmap)
        for v in _all_values(f.graph):
            if id(v) in fmap:
                fmap[id(v)].name = v.name
        nf = Function(f.domain, f.name, fg, attributes=f.attributes, attribute_defaults=f.attribute_defaults,
                      opset_imports=f.opset_imports, overload=f.overload, doc=f.doc)
        nf.metadata_props = dict(f.metadata_props)
        fg.extra = dict(f.graph.extra)
        funcs.append(nf)
    m = Model(graph, ir_version=model.ir_version, opset_imports=model.opset_imports,
              producer_name=model.producer_name, producer_version=model.producer_version, domain=model.domain,
              model_version=model.model_version, doc=model.doc, metadata_props=model.metadata_props,
              functions=funcs)
    m.extra = copy.copy(model.extra)
    m.base_dir = model.base_dir
    return m


def _all_values(g: Graph):
    for sub in g.all_graphs():
        yield from sub.values()
