"""Regions of a model bounded by values: extract one as a model, replace one by a single node, cut
a model into stages.

A *region* is given by values, not nodes (as in onnx_ir's `extract`): `inputs` and `outputs` of
the main graph. Its nodes are those needed to compute `outputs`, walking back from them and
stopping at `inputs` and at constants. A node with subgraphs (If/Loop/Scan) is one node of the
region, and the outer values its bodies capture count as its inputs (as in `analysis._deps`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from .analysis import is_sorted
from .clone import clone_graph, clone_model, clone_node
from .errors import RegionError
from .ir import Function, Graph, Model, Node, Value
from .types import DType, TensorType

ValueRef = Union[str, Value]

#: Domain of the functions `replace_region` creates for a Model replacement.
STAGE_DOMAIN = "ai.lepton.stage"


@dataclass(frozen=True)
class NodeSpec:
    """A single-node replacement for `replace_region`: op type, domain and attributes."""

    op_type: str
    domain: str = ""
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Stage:
    """One stage of `split_stages`: a runnable model and the names it reads and writes."""

    model: Model
    inputs: list[str]
    outputs: list[str]


# -- finding a region -------------------------------------------------------------------------------
def _label(node: Node) -> str:
    """How messages name a node: its name, else its op and first output."""
    if node.name:
        return node.name
    first = node.outputs[0].name if node.outputs else None
    return f"{node.op_type} computing {first}" if first else node.op_type


def _value_table(graph: Graph) -> dict[str, Value]:
    table: dict[str, Value] = {}
    for v in graph.values():
        if v.name:
            table.setdefault(v.name, v)
    return table


def _resolve(graph: Graph, refs: Iterable[ValueRef], what: str, table: dict[str, Value]) -> list[Value]:
    """Values of the main graph named by `refs` (names or Values), without duplicates."""
    out: list[Value] = []
    seen: set[int] = set()
    for r in refs:
        if isinstance(r, Value):
            v = r
            if v.graph is not graph:
                raise RegionError(f"{what}: {v!r} is not a value of the main graph {graph.name!r}")
        else:
            v = table.get(r)
            if v is None:
                raise RegionError(_unknown_name(graph, r, what))
        if id(v) in seen:
            raise RegionError(f"{what}: {v.name!r} is given twice")
        seen.add(id(v))
        out.append(v)
    return out


def _unknown_name(graph: Graph, name: str, what: str) -> str:
    for sub in graph.all_graphs():
        if sub is not graph and any(v.name == name for v in sub.values()):
            holder = _label(sub.parent) if sub.parent is not None else sub.name
            return (f"{what}: {name!r} is a value inside a subgraph of node {holder!r}; only values of "
                    f"the main graph can bound a region")
    return f"{what}: the model has no value named {name!r}"


def _top_node(node: Node, graph: Graph) -> Node:
    """The node of `graph` that is `node` or holds it in one of its (nested) subgraphs."""
    while node.graph is not graph:
        parent = node.graph.parent if node.graph is not None else None
        if parent is None:
            raise RegionError(f"node {_label(node)!r} is not in graph {graph.name!r}")
        node = parent
    return node


def _reads(node: Node, graph: Graph) -> list[Value]:
    """Values of `graph` that `node` reads, directly or captured by its subgraphs."""
    out = [v for v in node.inputs if v is not None]
    for sub in node.subgraphs():
        for inner in sub.all_nodes():
            out.extend(v for v in inner.inputs if v is not None and v.graph is graph)
    return out


@dataclass
class _Region:
    """What `_find_region` found."""

    nodes: list[Node]       # in graph order
    constants: list[Value]  # initializers the nodes read, or that are outputs themselves
    reads: list[Value]      # stop values actually read (or passed through as outputs)


def _find_region(graph: Graph, stops: set[int], outputs: Sequence[Value]) -> _Region:
    """Walk back from `outputs` to the `stops` (ids of values) and constants.

    Raises RegionError naming the first node that reads a value outside the region.
    """
    visited: dict[int, Node] = {}
    consts: dict[int, Value] = {}
    reads: dict[int, Value] = {}
    stack: list[tuple[Value, Node | None]] = [(v, None) for v in reversed(outputs)]
    while stack:
        v, reader = stack.pop()
        if id(v) in stops:
            reads[id(v)] = v
            continue
        if v.const is not None:
            consts[id(v)] = v
            continue
        p = v.producer()
        if p is None:
            if reader is None:
                raise RegionError(f"region is not closed: output {v.name!r} is a graph input that is "
                                  f"not among the inputs")
            raise RegionError(f"region is not closed: node {_label(reader)!r} reads {v.name!r} which is "
                              f"neither among the inputs nor computed from them")
        if id(p) in visited:
            continue
        visited[id(p)] = p
        stack.extend((r, p) for r in reversed(_reads(p, graph)))
    order = {id(n): i for i, n in enumerate(graph)}
    nodes = sorted(visited.values(), key=lambda n: order[id(n)])
    init_order = {id(v): i for i, v in enumerate(graph.initializers.values())}
    constants = sorted(consts.values(), key=lambda v: init_order.get(id(v), -1))
    return _Region(nodes, constants, list(reads.values()))


def _check_input_type(v: Value) -> None:
    t = v.type
    if t is None or (isinstance(t, TensorType) and t.dtype == DType.UNDEFINED):
        raise RegionError(f"the type of region input {v.name!r} is not known; pin the model's input "
                          f"shapes (--input-shape NAME=DIMS) so that shape inference can type it")


# -- building the extracted model -------------------------------------------------------------------
def _called_functions(model: Model, nodes: Iterable[Node]) -> list[Function]:
    """Local functions the nodes call, directly, from subgraphs, or from other functions."""
    called: set[tuple[str, str, str]] = set()
    todo = [inner for n in nodes for inner in _with_subgraph_nodes(n)]
    while todo:
        n = todo.pop()
        key = (n.domain, n.op_type, n.overload)
        f = model.functions.get(key)
        if f is not None and key not in called:
            called.add(key)
            todo.extend(f.graph.all_nodes())
    return [f for k, f in model.functions.items() if k in called]


def _with_subgraph_nodes(node: Node) -> Iterable[Node]:
    yield node
    for sub in node.subgraphs():
        yield from sub.all_nodes()


def _copy_function(f: Function) -> Function:
    fmap: dict[int, Value] = {}
    graph = clone_graph(f.graph, fmap)
    for sub in f.graph.all_graphs():
        for v in sub.values():
            if id(v) in fmap:
                fmap[id(v)].name = v.name
    nf = Function(f.domain, f.name, graph, attributes=f.attributes, attribute_defaults=f.attribute_defaults,
                  opset_imports=f.opset_imports, overload=f.overload, doc=f.doc)
    nf.metadata_props = dict(f.metadata_props)
    return nf


def _build(model: Model, inputs: Sequence[Value], outputs: Sequence[Value], region: _Region) -> Model:
    """A new model of the region's nodes (copied), reading `inputs` and returning `outputs`."""
    g = model.graph
    for v in list(inputs) + list(outputs):
        if not v.name:
            raise RegionError(f"region boundary value {v!r} has no name; name it before cutting there")
    for v in inputs:
        _check_input_type(v)
    vmap: dict[int, Value] = {}
    new = Graph(name=g.name, doc=g.doc)
    for v in inputs:
        # A fresh plain input even when `v` is a constant: the caller asked to feed it.
        nv = Value(v.name, v.type, doc=v.doc)
        nv.meta = {k: x for k, x in v.meta.items() if k != "input_type"}
        vmap[id(v)] = new.add_input(nv)
    for c in region.constants:
        if id(c) in vmap:
            continue
        nc = Value(c.name, c.type, const=c.const, doc=c.doc)  # the tensor is shared, never copied
        vmap[id(c)] = new.add_initializer(nc)
    for n in region.nodes:
        new.append(clone_node(n, vmap))
    # clone_node gives fresh names; the extracted model keeps the original ones.
    for n in region.nodes:
        for v in list(n.outputs) + [x for sub in n.subgraphs() for gg in sub.all_graphs() for x in gg.values()]:
            c = vmap.get(id(v))
            if c is not None:
                c.name = v.name
                c.meta = dict(v.meta)
    new.outputs = [vmap[id(o)] for o in outputs]
    return Model(new, ir_version=model.ir_version, opset_imports=model.opset_imports,
                 producer_name=model.producer_name, producer_version=model.producer_version,
                 domain=model.domain, model_version=model.model_version, doc=model.doc,
                 metadata_props=model.metadata_props,
                 functions=[_copy_function(f) for f in _called_functions(model, region.nodes)])


def extract(model: Model, inputs: Sequence[ValueRef], outputs: Sequence[ValueRef]) -> Model:
    """A new model computing `outputs` from `inputs` (values of the main graph, by name or Value).

    It holds exactly the nodes needed (copied, names kept), the initializers they read (tensors
    shared), the local functions they call, the model's opset imports and value types. Every given
    input stays a graph input, used or not, so the signature is the one asked for. Raises
    RegionError when a needed value is neither an input, nor a constant, nor computed from them,
    for an unknown name, or when an input's type is not known.
    """
    table = _value_table(model.graph)
    ins = _resolve(model.graph, inputs, "extract inputs", table)
    outs = _resolve(model.graph, outputs, "extract outputs", table)
    region = _find_region(model.graph, {id(v) for v in ins}, outs)
    return _build(model, ins, outs, region)


# -- replacing a region -----------------------------------------------------------------------------
def _check_replaceable(graph: Graph, region: _Region, ins: Sequence[Value], outs: Sequence[Value]) -> None:
    inside = {id(n) for n in region.nodes}
    out_ids = {id(o) for o in outs}
    for o in outs:
        if o.producer() is None or id(o.producer()) not in inside:
            raise RegionError(f"cannot replace the region: output {o.name!r} is not computed by it "
                              f"(it is one of the inputs or a constant)")
    for n in region.nodes:
        for o in n.outputs:
            if id(o) in out_ids:
                continue
            if o.is_graph_output():
                raise RegionError(f"cannot replace the region: {o.name!r} computed by node {_label(n)!r} "
                                  f"inside it is a graph output but not among the region's outputs")
            for user, _ in o.uses():
                top = _top_node(user, graph)
                if id(top) not in inside:
                    raise RegionError(f"cannot replace the region: {o.name!r} computed by node "
                                      f"{_label(n)!r} inside it is also read by node {_label(top)!r} "
                                      f"outside it; add it to the outputs")
    # One node reading `ins` and writing `outs` must not depend on itself: no input may be
    # computed (outside the region) from an output.
    in_ids = {id(v): v for v in ins}
    seen: set[int] = set()
    stack = [(o, o) for o in outs]
    while stack:
        v, origin = stack.pop()
        for user in v.users():
            top = _top_node(user, graph)
            if id(top) in inside or id(top) in seen:
                continue
            seen.add(id(top))
            for o in top.outputs:
                if id(o) in in_ids:
                    raise RegionError(f"cannot replace the region: its input {o.name!r} is computed from "
                                      f"its output {origin.name!r}, so one node cannot stand for it")
                stack.append((o, origin))


def _constants_to_nodes(graph: Graph) -> None:
    """Function bodies have no initializers in ONNX: turn them into Constant nodes."""
    first = graph.first()
    for name, v in list(graph.initializers.items()):
        node = Node("Constant", [], {"value": v.const})
        if first is not None:
            graph.insert_before(first, node)
        else:
            graph.append(node)
        out = node.outputs[0]
        out.type = v.type
        v.replace_all_uses_with(out)
        if v in graph.inputs:
            graph.inputs.remove(v)
        graph.remove_initializer(name)
        out.name = name


def _fresh_function_name(model: Model, domain: str, base: str) -> str:
    k = 0
    while (domain, f"{base}_{k}", "") in model.functions:
        k += 1
    return f"{base}_{k}"


def _merge_opsets(model: Model, imports: Mapping[str, int], what: str) -> None:
    for domain, version in imports.items():
        have = model.opset_imports.get(domain)
        if have is not None and have != version:
            raise RegionError(f"{what} imports opset {domain or 'ai.onnx'!r} version {version} but the model "
                              f"imports version {have}")
        model.opset_imports[domain] = version


def _add_stage_function(model: Model, replacement: Model, n_in: int, n_out: int, domain: str) -> Function:
    rep = clone_model(replacement)  # the caller's model stays as it was
    g = rep.graph
    if len(g.inputs) != n_in or len(g.outputs) != n_out:
        raise RegionError(f"the replacement model has {len(g.inputs)} inputs and {len(g.outputs)} outputs; "
                          f"the region has {n_in} and {n_out}")
    if g.sparse_initializers:
        raise RegionError("the replacement model has sparse initializers, which a function cannot hold")
    _constants_to_nodes(g)
    _merge_opsets(model, rep.opset_imports, "the replacement model")
    renamed: dict[tuple[str, str, str], str] = {}
    for key, f in rep.functions.items():
        if key in model.functions:  # a clash (e.g. extracted from this model): keep both, apart
            renamed[key] = _fresh_function_name(model, f.domain, f.name)
            f.name = renamed[key]
        model.functions[f.key] = f
    if renamed:
        for body in [g] + [f.graph for f in rep.functions.values()]:
            for n in body.all_nodes():
                new_name = renamed.get((n.domain, n.op_type, n.overload))
                if new_name is not None:
                    n.op_type = new_name
    name = _fresh_function_name(model, domain, "stage")
    fn = Function(domain, name, g, opset_imports=dict(rep.opset_imports))
    model.functions[fn.key] = fn
    model.opset_imports.setdefault(domain, 1)
    return fn


def replace_region(model: Model, inputs: Sequence[ValueRef], outputs: Sequence[ValueRef],
                   replacement: Model | NodeSpec, *, domain: str = STAGE_DOMAIN) -> Node:
    """Replace the region `extract` would take by one node reading `inputs`, in place; return it.

    `replacement` is a Model (added as a local function in `domain` with a fresh name, called by
    the node, so ONNX Runtime still runs the whole model; its inputs and outputs match `inputs`
    and `outputs` by position) or a `NodeSpec` for a single node. The node's outputs take the
    names and types of `outputs` and replace them everywhere. Raises RegionError, changing
    nothing, if the region is not closed, if a value computed inside it other than `outputs` is
    used outside it, or if an input is computed from an output.
    """
    g = model.graph
    table = _value_table(g)
    ins = _resolve(g, inputs, "replace_region inputs", table)
    outs = _resolve(g, outputs, "replace_region outputs", table)
    region = _find_region(g, {id(v) for v in ins}, outs)
    _check_replaceable(g, region, ins, outs)
    if isinstance(replacement, Model):
        fn = _add_stage_function(model, replacement, len(ins), len(outs), domain)
        node = Node(fn.name, ins, domain=fn.domain, num_outputs=len(outs), name=fn.name)
    elif isinstance(replacement, NodeSpec):
        node = Node(replacement.op_type, ins, dict(replacement.attrs), domain=replacement.domain,
                    num_outputs=len(outs))
        if replacement.domain not in ("", "ai.onnx"):
            model.opset_imports.setdefault(replacement.domain, 1)
    else:
        raise TypeError(f"replacement must be a Model or a NodeSpec, not {type(replacement).__name__}")
    g.insert_before(region.nodes[0], node)
    for old, new in zip(outs, node.outputs):
        new.type = old.type
        new.meta = dict(old.meta)
        old.replace_all_uses_with(new)
    g.remove(region.nodes)
    for old, new in zip(outs, node.outputs):
        new.name = old.name
    if not is_sorted(g):  # an input may be produced after the region's first node
        g.sort()
    return node


# -- stages -----------------------------------------------------------------------------------------
def split_stages(model: Model, cuts: Sequence[Sequence[ValueRef]]) -> list[Stage]:
    """Cut `model` into `len(cuts) + 1` stages; stage i computes cut set i, the last the outputs.

    Stage i reads only what it needs among the graph inputs and the values earlier stages output,
    and recomputes anything else it needs (so cut sets need not be clean frontiers). Values
    already available (graph inputs, earlier stages' outputs) are not output again: a stage's
    `outputs` are its cut values that are new, in the order given. Each graph output comes from
    the first stage whose cut set names it, else from the last stage. The stage models are
    extracted with `extract`.
    """
    g = model.graph
    table = _value_table(g)
    sets = [_resolve(g, c, f"cut set {i}", table) for i, c in enumerate(cuts)]
    sets.append(list(dict.fromkeys(g.outputs)))
    position = {id(v): i for i, v in enumerate(g.values())}
    available: set[int] = {id(v) for v in g.inputs if v.const is None}
    stages: list[Stage] = []
    for targets in sets:
        new = [v for v in targets if id(v) not in available]
        region = _find_region(g, available, new)
        ins = sorted(region.reads, key=lambda v: position[id(v)])
        stages.append(Stage(_build(model, ins, new, region), [v.name for v in ins], [v.name for v in new]))
        # A constant stays a constant for later stages: they read their own copy, not a fed one.
        available.update(id(v) for v in new if v.const is None)
    return stages


def run_stages(stages: Sequence[Stage], feeds: Mapping[str, Any],
               run: Callable[[Model, dict[str, Any]], Mapping[str, Any]],
               outputs: Sequence[str] | None = None) -> dict[str, Any]:
    """Run `stages` in order with `run(model, feeds) -> {name: array}`, chaining their values.

    Each stage is fed the tensors it names from an environment holding `feeds` and every earlier
    stage's outputs. Returns that environment, or only `outputs` from it when given.
    """
    env: dict[str, Any] = dict(feeds)
    for i, s in enumerate(stages):
        if not s.outputs:
            continue  # everything it would compute is already available
        missing = [n for n in s.inputs if n not in env]
        if missing:
            raise RegionError(f"stage {i} reads {missing[0]!r}, which neither the feeds nor an earlier "
                              f"stage provide")
        result = run(s.model, {n: env[n] for n in s.inputs})
        for n in s.outputs:
            env[n] = result[n]
    if outputs is None:
        return env
    return {n: env[n] for n in outputs}
