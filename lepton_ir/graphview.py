"""A weighted networkx view of a model for cut algorithms (stage partitioning, offloading).

Vertices: `"source"`, `"sink"`, one `("node", i)` per node of the main graph (attribute `node`;
an If/Loop/Scan node is one vertex, its bodies are not expanded) and one `("value", name)` per
activation value, that is every graph input and node output that is not a constant (attributes
`value`, `bytes`). Edges:

* `"source" -> input value` and `producer -> output value`: `capacity` = `bytes` = the value's
  size, so cutting the edge means "send this value";
* `value -> each node reading it` (directly or from a subgraph) and `graph output -> "sink"`:
  no `capacity`, which networkx's flow algorithms take as infinite.

A value read by several nodes therefore costs its size once, however many readers sit across the
cut (the auxiliary vertex of DADS, Hu et al. 2019), and the capacities sum to the total size of
all activation values. `networkx.minimum_cut(view, "source", "sink")` gives the cheapest set of
values to transfer between a prefix and a suffix of the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

from .errors import LeptonError, UnsupportedError
from .extract import _top_node  # a subgraph's read is charged to the node holding the subgraph
from .ir import Graph, Model, Value
from .types import Shape, TensorType, Type

if TYPE_CHECKING:
    import networkx as nx


def weighted_view(model: Model, shapes: Mapping[str, Sequence[int]] | None = None) -> "nx.DiGraph":
    """The weighted DiGraph described in the module docstring.

    `shapes` maps graph input names to their dims, pinned on a copy of the model with
    `pin_input_shapes` (symbols bound that way are substituted everywhere, then types are
    re-inferred). A key naming any other value of the main graph gives that value's dims directly:
    for sizes static inference cannot know (data-dependent shapes), e.g. measured by one run.
    Raises UnsupportedError naming the value when a size stays unknown, LeptonError for a name
    the model does not have.
    """
    import networkx as nx

    g = model.graph
    types = _resolved_types(model, shapes or {})
    view = nx.DiGraph()
    view.add_node("source")
    view.add_node("sink")
    value_key: dict[int, tuple[str, str]] = {}

    def add_value(v: Value, tail: object) -> None:
        size = _bytes(v, types.get(id(v), v.type), g)
        key = ("value", _name(v))
        value_key[id(v)] = key
        view.add_node(key, value=v, bytes=size)
        view.add_edge(tail, key, capacity=size, bytes=size)

    node_key: dict[int, tuple[str, int]] = {}
    for v in g.inputs:
        if v.const is None:
            add_value(v, "source")
    for i, n in enumerate(g):
        node_key[id(n)] = ("node", i)
        view.add_node(("node", i), node=n)
        for o in n.outputs:
            if o.name != "":  # "" marks an omitted optional output: nothing is computed
                add_value(o, ("node", i))
    for key in value_key.values():
        v = view.nodes[key]["value"]
        for user in v.users():
            view.add_edge(key, node_key[id(_top_node(user, g))])
        if v.is_graph_output():
            view.add_edge(key, "sink")
    return view


def unsized_values(model: Model, shapes: Mapping[str, Sequence[int]] | None = None) -> list[str]:
    """Names of the activation values whose byte size stays unknown given `shapes` (see
    `weighted_view`): the values a caller must give shapes for, e.g. measured by one run."""
    g = model.graph
    types = _resolved_types(model, shapes or {})
    values = [v for v in g.inputs if v.const is None] + [o for n in g for o in n.outputs if o.name != ""]
    out = []
    for v in values:
        try:
            _bytes(v, types.get(id(v), v.type), g)
        except UnsupportedError:
            out.append(_name(v))
    return out


def _name(v: Value) -> str:
    return v.name if v.name else f"<unnamed {id(v):x}>"


def _resolved_types(model: Model, shapes: Mapping[str, Sequence[int]]) -> dict[int, Type | None]:
    """Types of the main graph's values after pinning `shapes` (keyed by id of the original value)."""
    from .clone import clone_model
    from .shape_inference import pin_input_shapes

    g = model.graph
    by_name = {v.name: v for v in g.values() if v.name and v.const is None}
    inputs = {v.name for v in g.inputs if v.const is None}
    unknown = [k for k in shapes if k not in by_name]
    if unknown:
        raise LeptonError(f"shapes: the model has no input or activation value named {unknown[0]!r}")
    pins = {k: d for k, d in shapes.items() if k in inputs}
    types: dict[int, Type | None] = {}
    if pins:
        copy = clone_model(model)
        pin_input_shapes(copy, pins)
        for old, new in zip(g.inputs, copy.graph.inputs):
            types[id(old)] = new.type
        for old_n, new_n in zip(g, copy.graph):
            for old, new in zip(old_n.outputs, new_n.outputs):
                # Re-inference can forget what the original knew (custom ops): keep the better one.
                types[id(old)] = new.type if _static(new.type) or not _static(old.type) else old.type
    for k, dims in shapes.items():
        if k in inputs:
            continue
        v = by_name[k]
        dtype = getattr(types.get(id(v), v.type), "dtype", None)
        if dtype is None:
            raise UnsupportedError(f"shapes: the element type of {k!r} is not known")
        types[id(v)] = TensorType(dtype, Shape(int(d) for d in dims))
    return types


def _static(t: Type | None) -> bool:
    return isinstance(t, TensorType) and t.shape is not None and t.shape.is_static


def _bytes(v: Value, t: Type | None, g: Graph) -> int:
    """Byte size of a dense tensor value: elements x element size (sub-byte types packed)."""
    if not isinstance(t, TensorType):
        raise UnsupportedError(f"value {_name(v)!r} has type {t}, not a tensor: its size is not known")
    bits = t.dtype.itemsize_bits
    if bits == 0:
        raise UnsupportedError(f"value {_name(v)!r} has element type {t.dtype.name}, whose size is not fixed")
    numel = t.shape.numel() if t.shape is not None else None
    if numel is None:
        inputs = ", ".join(f"{i.name}=DIMS" for i in g.inputs if i.const is None)
        raise UnsupportedError(f"the size of {_name(v)!r} ({t}) is not known; pass the input shapes "
                               f"(--input-shape {inputs}) or that value's shape")
    return (numel * bits + 7) // 8
