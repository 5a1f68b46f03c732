"""The graph IR: `Value`, `Node`, `Attr`, `Graph`, `Function`, `Model`.

Design (after onnx_ir and torch.fx):
- SSA values. A node's outputs are created with the node and know their producer; every value keeps
  an ordered list of its uses `(node, input_index)`, maintained by every mutation, so
  `replace_all_uses_with` and dead-code checks are O(uses).
- A graph owns its nodes in a doubly linked list: insertion and removal are O(1) anywhere, and
  iteration tolerates removal of the current node (rewrites walk and mutate at once).
- Subgraphs (If/Loop/Scan bodies) are `Graph`s held in attributes; they may use values of enclosing
  graphs directly (outer-scope references), and those uses are tracked like any other.
- Constants are `Tensor`s attached to values (initializers); they are never copied by the IR.
- No serialization here: ONNX import/export lives in `onnx_io`, the text form in `text`.
"""

from __future__ import annotations

import contextlib
import enum
from typing import Any, Iterable, Iterator, Sequence

from .errors import VerifyError
from .tensor import ArrayTensor, SparseTensor, Tensor
from .types import DType, Shape, TensorType, Type


class AttrType(enum.IntEnum):
    """Attribute kinds; codes equal ONNX's AttributeProto.AttributeType."""

    UNDEFINED = 0
    FLOAT = 1
    INT = 2
    STRING = 3
    TENSOR = 4
    GRAPH = 5
    FLOATS = 6
    INTS = 7
    STRINGS = 8
    TENSORS = 9
    GRAPHS = 10
    SPARSE_TENSOR = 11
    SPARSE_TENSORS = 12
    TYPE_PROTO = 13
    TYPE_PROTOS = 14


class Attr:
    """A node attribute. `ref` set means a reference to an attribute of the enclosing function."""

    __slots__ = ("name", "type", "value", "ref", "doc")

    def __init__(self, name: str, type: AttrType, value: Any, ref: str | None = None, doc: str = "") -> None:
        self.name = name
        self.type = type
        self.value = value
        self.ref = ref
        self.doc = doc

    @staticmethod
    def infer(name: str, value: Any) -> "Attr":
        """Build an attribute from a Python value, inferring its kind (ints, floats, str, ...)."""
        if isinstance(value, Attr):
            return value
        if isinstance(value, bool):
            return Attr(name, AttrType.INT, int(value))
        if isinstance(value, int):
            return Attr(name, AttrType.INT, value)
        if isinstance(value, float):
            return Attr(name, AttrType.FLOAT, value)
        if isinstance(value, (str, bytes)):
            return Attr(name, AttrType.STRING, value)
        if isinstance(value, Tensor):
            return Attr(name, AttrType.TENSOR, value)
        if isinstance(value, Graph):
            return Attr(name, AttrType.GRAPH, value)
        if isinstance(value, SparseTensor):
            return Attr(name, AttrType.SPARSE_TENSOR, value)
        if isinstance(value, Type):
            return Attr(name, AttrType.TYPE_PROTO, value)
        if hasattr(value, "__array__") and not isinstance(value, (list, tuple)):
            return Attr(name, AttrType.TENSOR, ArrayTensor(value))
        if isinstance(value, (list, tuple)):
            items = list(value)
            if all(isinstance(v, bool) or isinstance(v, int) for v in items):
                return Attr(name, AttrType.INTS, [int(v) for v in items])
            if all(isinstance(v, (int, float)) for v in items):
                return Attr(name, AttrType.FLOATS, [float(v) for v in items])
            if all(isinstance(v, (str, bytes)) for v in items):
                return Attr(name, AttrType.STRINGS, items)
            if all(isinstance(v, Tensor) for v in items):
                return Attr(name, AttrType.TENSORS, items)
            if all(isinstance(v, Graph) for v in items):
                return Attr(name, AttrType.GRAPHS, items)
        raise TypeError(f"cannot infer the kind of attribute {name!r} from {type(value).__name__}")

    def graphs(self) -> list["Graph"]:
        if self.type == AttrType.GRAPH:
            return [self.value]
        if self.type == AttrType.GRAPHS:
            return list(self.value)
        return []

    def __repr__(self) -> str:
        return f"Attr({self.name}={self.value!r})" if self.ref is None else f"Attr({self.name}=@{self.ref})"


class Value:
    """An SSA value: a graph input, an initializer, or an output of exactly one node."""

    __slots__ = ("name", "type", "const", "doc", "meta", "_producer", "_index", "_uses", "_graph")

    def __init__(self, name: str | None = None, type: Type | None = None, const: Tensor | None = None,
                 doc: str = "") -> None:
        self.name = name
        self.type = type
        self.const = const
        self.doc = doc
        self.meta: dict[str, Any] = {}
        self._producer: Node | None = None
        self._index = 0
        self._uses: dict[tuple[Node, int], None] = {}  # ordered set of (user, input index)
        self._graph: Graph | None = None  # set for graph inputs and initializers

    # -- queries ----------------------------------------------------------------------------------
    def producer(self) -> "Node | None":
        """The node that defines this value, or None for graph inputs and initializers."""
        return self._producer

    @property
    def index(self) -> int:
        """Position among the producer's outputs."""
        return self._index

    def uses(self) -> list[tuple["Node", int]]:
        """The (node, input index) pairs that read this value, in insertion order."""
        return list(self._uses)

    def users(self) -> list["Node"]:
        """Distinct nodes that read this value."""
        return list(dict.fromkeys(n for n, _ in self._uses))

    def num_uses(self) -> int:
        return len(self._uses)

    @property
    def graph(self) -> "Graph | None":
        """The graph that defines this value."""
        return self._producer.graph if self._producer is not None else self._graph

    def is_graph_output(self) -> bool:
        g = self.graph
        return g is not None and any(o is self for o in g.outputs)

    def is_graph_input(self) -> bool:
        g = self.graph
        return g is not None and any(i is self for i in g.inputs)

    def is_initializer(self) -> bool:
        g = self.graph
        return g is not None and self.name is not None and g.initializers.get(self.name) is self

    @property
    def dtype(self) -> DType | None:
        return getattr(self.type, "dtype", None)

    @property
    def shape(self) -> Shape | None:
        return getattr(self.type, "shape", None)

    # -- mutation ---------------------------------------------------------------------------------
    def replace_all_uses_with(self, other: "Value", *, outputs: bool = True) -> None:
        """Make every user read `other` instead; graph outputs too unless `outputs=False`."""
        if other is self:
            return
        for node, i in list(self._uses):
            node.replace_input(i, other)
        if outputs:
            g = self.graph
            if g is not None:
                for k, o in enumerate(g.outputs):
                    if o is self:
                        g.outputs[k] = other

    def __repr__(self) -> str:
        return f"%{self.name}" if self.name else f"%<{id(self):x}>"


class Node:
    """An operator application. Outputs are created with the node and belong to it."""

    __slots__ = ("op_type", "domain", "overload", "name", "_inputs", "outputs", "attrs", "doc",
                 "meta", "metadata_props", "graph", "_prev", "_next")

    def __init__(self, op_type: str, inputs: Sequence[Value | None] = (), attrs: Any = None, *,
                 domain: str = "", num_outputs: int = 1, outputs: Sequence[Value] | None = None,
                 output_names: Sequence[str | None] | None = None, name: str | None = None,
                 overload: str = "", doc: str = "") -> None:
        self.op_type = op_type
        self.domain = domain
        self.overload = overload
        self.name = name
        self.doc = doc
        self.meta: dict[str, Any] = {}
        self.metadata_props: dict[str, str] = {}
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        self.attrs: dict[str, Attr] = {}
        if attrs:
            items = attrs.items() if isinstance(attrs, dict) else ((a.name, a) for a in attrs)
            for k, v in items:
                self.attrs[k] = Attr.infer(k, v) if not isinstance(v, Attr) else v
        self._inputs: list[Value | None] = []
        for v in inputs:
            self._append_input(v)
        if outputs is not None:
            outs = list(outputs)
            for v in outs:
                if v._producer is not None:
                    raise ValueError(f"value {v!r} already has a producer")
        else:
            names = list(output_names) if output_names is not None else [None] * num_outputs
            outs = [Value(n) for n in names]
        for i, v in enumerate(outs):
            v._producer = self
            v._index = i
        self.outputs: tuple[Value, ...] = tuple(outs)

    # -- inputs -----------------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value | None, ...]:
        """Inputs; None stands for an omitted optional input."""
        return tuple(self._inputs)

    def _append_input(self, v: Value | None) -> None:
        if v is not None and not isinstance(v, Value):
            raise TypeError(f"node input must be a Value or None, got {type(v).__name__}")
        self._inputs.append(v)
        if v is not None:
            v._uses[(self, len(self._inputs) - 1)] = None

    def replace_input(self, i: int, v: Value | None) -> None:
        """Set input `i` to `v`, keeping use lists right."""
        old = self._inputs[i]
        if old is v:
            return
        if old is not None:
            old._uses.pop((self, i), None)
        self._inputs[i] = v
        if v is not None:
            v._uses[(self, i)] = None

    def set_inputs(self, values: Sequence[Value | None]) -> None:
        """Replace the whole input list, keeping use lists right."""
        self._drop_input_uses()
        self._inputs = []
        for v in values:
            self._append_input(v)

    def append_input(self, v: Value | None) -> None:
        self._append_input(v)

    def _drop_input_uses(self) -> None:
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses.pop((self, i), None)

    # -- attributes -------------------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        """The attribute's value, or `default` when absent."""
        a = self.attrs.get(name)
        return default if a is None else a.value

    def set_attr(self, name: str, value: Any) -> None:
        self.attrs[name] = Attr.infer(name, value)
        for g in self.attrs[name].graphs():
            g.parent = self

    def subgraphs(self) -> list["Graph"]:
        """Graphs held in attributes (If/Loop/Scan bodies). Hot: called per node by most walks."""
        if not self.attrs:
            return []
        out: list[Graph] = []
        for a in self.attrs.values():
            t = a.type
            if t == AttrType.GRAPH:
                out.append(a.value)
            elif t == AttrType.GRAPHS:
                out.extend(a.value)
        return out

    @property
    def output(self) -> Value:
        """The single output (error if the node has several)."""
        if len(self.outputs) != 1:
            raise ValueError(f"node {self.op_type} has {len(self.outputs)} outputs")
        return self.outputs[0]

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type

    def prev(self) -> "Node | None":
        return self._prev

    def next(self) -> "Node | None":
        return self._next

    def __repr__(self) -> str:
        outs = ", ".join(map(repr, self.outputs))
        ins = ", ".join("_" if v is None else repr(v) for v in self._inputs)
        return f"<Node {outs} = {self.qualified_op}({ins})>"


class Graph:
    """A list of nodes with inputs, outputs and initializers. May be a subgraph of a node."""

    def __init__(self, name: str = "", inputs: Sequence[Value] = (), outputs: Sequence[Value] = (),
                 nodes: Iterable[Node] = (), initializers: Iterable[Value] = (), doc: str = "") -> None:
        self.name = name
        self.doc = doc
        self.metadata_props: dict[str, str] = {}
        self.meta: dict[str, Any] = {}
        self.parent: Node | None = None  # the node holding this graph in an attribute
        self.inputs: list[Value] = []
        self.outputs: list[Value] = list(outputs)
        self.initializers: dict[str, Value] = {}
        self.sparse_initializers: dict[str, SparseTensor] = {}
        self.extra: dict[str, Any] = {}  # format-specific data kept for lossless round trips
        self._head: Node | None = None
        self._tail: Node | None = None
        self._count = 0
        self._insert_point: tuple[Node | None, bool] | None = None  # (anchor, before?)
        for v in inputs:
            self.add_input(v)
        for v in initializers:
            self.add_initializer(v)
        for n in nodes:
            self.append(n)

    # -- inputs, initializers ---------------------------------------------------------------------
    def add_input(self, v: Value) -> Value:
        v._graph = self
        self.inputs.append(v)
        return v

    def add_initializer(self, v: Value) -> Value:
        """Register a constant value (its `const` must be set and its name unique here)."""
        if v.const is None:
            raise ValueError(f"initializer {v!r} has no constant")
        if not v.name:
            raise ValueError("initializers need a name")
        if v.name in self.initializers and self.initializers[v.name] is not v:
            raise ValueError(f"initializer {v.name!r} is already defined")
        v._graph = self
        self.initializers[v.name] = v
        if v.type is None:
            v.type = TensorType(v.const.dtype, v.const.shape)
        return v

    def constant(self, array: Any, name: str | None = None, dtype: DType | None = None) -> Value:
        """Add a new initializer holding `array` and return its value (a fresh name if needed)."""
        t = array if isinstance(array, Tensor) else ArrayTensor(array, dtype=dtype)
        v = Value(self.fresh_name(name or "const"), TensorType(t.dtype, t.shape), const=t)
        return self.add_initializer(v)

    def fresh_name(self, base: str) -> str:
        """A value name not used in this graph, its subgraphs or enclosing graphs."""
        taken = self._names_in_scope()
        if base not in taken:
            taken.add(base)
            return base
        k = len(taken)
        while f"{base}_{k}" in taken:
            k += 1
        taken.add(f"{base}_{k}")
        return f"{base}_{k}"

    def _names_in_scope(self) -> set[str]:
        # Built once per graph and kept up to date by fresh_name; names given by other means later
        # are caught by the verifier and renamed on export, so a stale cache cannot corrupt a model.
        cache = self.meta.get("_names")
        if cache is None:
            root = self
            while root.parent is not None and root.parent.graph is not None:
                root = root.parent.graph
            cache = set()
            for g in root.all_graphs():
                cache.update(v.name for v in g.values() if v.name)
            self.meta["_names"] = cache
        return cache

    def remove_initializer(self, name: str) -> None:
        v = self.initializers[name]
        if v.num_uses() or v.is_graph_output():
            raise ValueError(f"initializer {name!r} is still used")
        del self.initializers[name]
        if v in self.inputs:
            self.inputs.remove(v)
        v._graph = None

    # -- node list --------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        """Iterate nodes in order. Removing the current node while iterating is safe."""
        n = self._head
        while n is not None:
            saved = n._next
            yield n
            # Still here: continue from its current successor (sees nodes inserted after it).
            # Removed: unlinking keeps stale forward links, so walk them to a node still here.
            nxt = n._next if n.graph is self else saved
            while nxt is not None and nxt.graph is not self:
                nxt = nxt._next
            n = nxt

    def __len__(self) -> int:
        return self._count

    @property
    def nodes(self) -> list[Node]:
        return list(self)

    def first(self) -> Node | None:
        return self._head

    def last(self) -> Node | None:
        return self._tail

    def _link(self, node: Node, before: Node | None) -> None:
        if node.graph is not None:
            raise ValueError(f"{node!r} already belongs to a graph")
        node.graph = self
        for g in node.subgraphs():
            g.parent = node
        if before is None:  # append
            node._prev = self._tail
            node._next = None
            if self._tail is not None:
                self._tail._next = node
            else:
                self._head = node
            self._tail = node
        else:
            if before.graph is not self:
                raise ValueError(f"{before!r} is not in this graph")
            node._next = before
            node._prev = before._prev
            if before._prev is not None:
                before._prev._next = node
            else:
                self._head = node
            before._prev = node
        self._count += 1

    def append(self, node: Node) -> Node:
        """Add at the current insertion point (the end unless inside `inserting_before/after`)."""
        if self._insert_point is not None:
            anchor, before = self._insert_point
            if before:
                self._link(node, anchor)
            else:
                self._link(node, anchor._next if anchor is not None else self._head)
                self._insert_point = (node, False)  # keep appending in order after the anchor
        else:
            self._link(node, None)
        return node

    def insert_before(self, anchor: Node, nodes: Node | Sequence[Node]) -> None:
        for n in ([nodes] if isinstance(nodes, Node) else nodes):
            self._link(n, anchor)

    def insert_after(self, anchor: Node, nodes: Node | Sequence[Node]) -> None:
        for n in ([nodes] if isinstance(nodes, Node) else nodes):
            self._link(n, anchor._next)
            anchor = n

    @contextlib.contextmanager
    def inserting_before(self, anchor: Node) -> Iterator[None]:
        """Within the block, `append`/`op` insert before `anchor` (in call order)."""
        saved = self._insert_point
        self._insert_point = (anchor, True)
        try:
            yield
        finally:
            self._insert_point = saved

    @contextlib.contextmanager
    def inserting_after(self, anchor: Node | None) -> Iterator[None]:
        """Within the block, `append`/`op` insert after `anchor` (None: at the front)."""
        saved = self._insert_point
        self._insert_point = (anchor, False)
        try:
            yield
        finally:
            self._insert_point = saved

    def op(self, op_type: str, *inputs: Value | None, domain: str = "", num_outputs: int = 1,
           name: str | None = None, **attrs: Any) -> Any:
        """Create a node at the insertion point; return its output (or tuple of outputs)."""
        node = Node(op_type, inputs, attrs, domain=domain, num_outputs=num_outputs, name=name)
        self.append(node)
        return node.outputs[0] if num_outputs == 1 else node.outputs

    def _unlink(self, node: Node) -> None:
        if node._prev is not None:
            node._prev._next = node._next
        else:
            self._head = node._next
        if node._next is not None:
            node._next._prev = node._prev
        else:
            self._tail = node._prev
        if self._insert_point is not None and self._insert_point[0] is node:
            anchor, before = self._insert_point
            self._insert_point = (node._next, True) if before else (node._prev, False)
        # _next is left pointing forward on purpose: iterators parked on this node resume there.
        node._prev = None
        node.graph = None
        self._count -= 1

    def remove(self, nodes: Node | Iterable[Node], *, safe: bool = True) -> None:
        """Remove nodes, all or nothing.

        With `safe` (default), refuse (ValueError, graph unchanged) if any output of a removed node
        is a graph output or is used by a node that is not being removed.
        """
        group = [nodes] if isinstance(nodes, Node) else list(nodes)
        gone = set(map(id, group))
        for n in group:
            if n.graph is not self:
                raise ValueError(f"{n!r} is not in this graph")
        if safe:
            for n in group:
                for o in n.outputs:
                    if o.is_graph_output():
                        raise ValueError(f"cannot remove {n!r}: {o!r} is a graph output")
                    for user, _ in o._uses:
                        if id(user) not in gone and not _inside(user, gone):
                            raise ValueError(f"cannot remove {n!r}: {o!r} is still used by {user!r}")
        for n in group:
            n._drop_input_uses()
            _drop_subgraph_uses(n)
            self._unlink(n)

    # -- whole-graph helpers -----------------------------------------------------------------------
    def all_nodes(self) -> Iterator[Node]:
        """Nodes of this graph and, recursively, of its subgraphs (pre-order)."""
        for n in self:
            yield n
            for g in n.subgraphs():
                yield from g.all_nodes()

    def all_graphs(self) -> Iterator["Graph"]:
        yield self
        for n in self:
            for g in n.subgraphs():
                yield from g.all_graphs()

    def values(self) -> Iterator[Value]:
        """Values defined in this graph: inputs, initializers, node outputs."""
        seen: set[int] = set()
        for v in self.inputs:
            seen.add(id(v))
            yield v
        for v in self.initializers.values():
            if id(v) not in seen:
                yield v
        for n in self:
            yield from n.outputs

    def sort(self) -> None:
        """Reorder nodes topologically (stable: keeps the current order where it is legal)."""
        from .analysis import topological_order

        order = topological_order(self)
        self._head = self._tail = None
        prev = None
        for n in order:
            n._prev = prev
            n._next = None
            if prev is None:
                self._head = n
            else:
                prev._next = n
            prev = n
        self._tail = prev

    def verify(self) -> None:
        """Check all invariants (see `lepton_ir.verify`); raise VerifyError saying where."""
        from .verify import verify_graph

        verify_graph(self)

    lint = verify  # torch.fx spelling

    def __repr__(self) -> str:
        return f"<Graph {self.name!r} nodes={self._count}>"


def _inside(node: Node, gone: set[int]) -> bool:
    """True if `node` lives in a subgraph of a node being removed."""
    g = node.graph
    while g is not None and g.parent is not None:
        if id(g.parent) in gone:
            return True
        g = g.parent.graph
    return False


def _drop_subgraph_uses(node: Node) -> None:
    for g in node.subgraphs():
        for n in g.all_nodes():
            n._drop_input_uses()


class Function:
    """An ONNX model-local function: a graph with formal attributes, called as an op."""

    def __init__(self, domain: str, name: str, graph: Graph, *, attributes: Sequence[str] = (),
                 attribute_defaults: dict[str, Attr] | None = None, opset_imports: dict[str, int] | None = None,
                 overload: str = "", doc: str = "") -> None:
        self.domain = domain
        self.name = name
        self.overload = overload
        self.graph = graph
        self.attributes = list(attributes)
        self.attribute_defaults = dict(attribute_defaults or {})
        self.opset_imports = dict(opset_imports or {})
        self.doc = doc
        self.metadata_props: dict[str, str] = {}

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.domain, self.name, self.overload)

    def __repr__(self) -> str:
        return f"<Function {self.domain}::{self.name}>"


class Model:
    """A graph plus model-level metadata and local functions."""

    def __init__(self, graph: Graph, *, ir_version: int = 10, opset_imports: dict[str, int] | None = None,
                 producer_name: str = "", producer_version: str = "", domain: str = "",
                 model_version: int = 0, doc: str = "", metadata_props: dict[str, str] | None = None,
                 functions: Iterable[Function] = ()) -> None:
        self.graph = graph
        self.ir_version = ir_version
        self.opset_imports: dict[str, int] = dict(opset_imports if opset_imports is not None else {"": 17})
        self.producer_name = producer_name
        self.producer_version = producer_version
        self.domain = domain
        self.model_version = model_version
        self.doc = doc
        self.metadata_props: dict[str, str] = dict(metadata_props or {})
        self.functions: dict[tuple[str, str, str], Function] = {f.key: f for f in functions}
        self.extra: dict[str, Any] = {}  # format-specific data kept for lossless round trips
        self.base_dir: str | None = None  # folder external data was resolved against

    def opset(self, domain: str = "") -> int | None:
        """The imported opset version of `domain` (`""`/`"ai.onnx"` = default domain)."""
        if domain == "ai.onnx":
            domain = ""
        return self.opset_imports.get(domain)

    def verify(self) -> None:
        from .verify import verify_model

        verify_model(self)

    def __repr__(self) -> str:
        return f"<Model opset={self.opset_imports} nodes={len(self.graph)}>"
