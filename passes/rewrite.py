"""The rewrite engine: pattern rules in ONNX op vocabulary, applied by a worklist driver.

A rule (after onnxscript's rewriter) is a class with three methods:

    class ConvRelu(Rule):
        def pattern(self, op, x, w):
            return op.Relu(op.Conv(x, w, _allow_other_inputs=True, _name="conv"))
        def check(self, m, x, w, conv):
            return None if conv.attr("group", 1) == 1 else "grouped conv"
        def rewrite(self, op, x, w, conv):
            return op.FusedConv(x, w, _domain="com.microsoft", activation="Relu", **conv_attrs)

`pattern` receives a pattern builder and one variable per parameter; calling `op.OpType(...)`
builds pattern nodes. Options on pattern nodes: `_domain`, `_outputs` (count), `_name` (bind the
matched node under this name), `_allow_other_inputs` (extra trailing inputs), and attribute
constraints as keywords (a value, or a predicate on the attribute value; `None` = absent).
`op.const(name, pred)` matches a constant (initializer or Constant) whose numpy value passes
`pred`. Commutative binary ops (Add, Mul, ...) match either input order.

`check(match, **bindings)` returns None/True to accept, or a string (the reason) / False to
reject; reasons are reported as near misses in debug mode. `rewrite(op, **bindings)` builds the
replacement with a builder that inserts before the matched root and returns the new value(s) for
the pattern's output(s). Intermediate matched nodes must have no users outside the match, so a
rewrite never duplicates work or changes other consumers.

One-liners go in tables (tinygrad style): `TableRule(op_type, predicate, replacement)`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np

from lepton_ir import Graph, Model, Node, Value

from .util import constant_value, replace_value

COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "And", "Or", "Xor", "Equal", "Sum", "Mean"})


# ------------------------------------------------------------------------------------------------
# Pattern language
# ------------------------------------------------------------------------------------------------
class PValue:
    """A value in a pattern."""


@dataclass(eq=False)
class Var(PValue):
    """Matches any value; the same variable used twice must match the same value."""

    name: str


@dataclass(eq=False)
class PConst(PValue):
    """Matches a constant value whose numpy data satisfies `pred`."""

    name: str | None
    pred: Callable[[np.ndarray], bool] | None = None


@dataclass(eq=False)
class PNode:
    op_type: str
    domain: str
    inputs: list[PValue]
    attrs: dict[str, Any]
    name: str | None
    num_outputs: int
    allow_other_inputs: bool


@dataclass(eq=False)
class POut(PValue):
    node: PNode
    index: int


class PatternBuilder:
    """`op.Relu(x)` builds a pattern node; `op.const(...)` a constant matcher."""

    def const(self, name: str | None = None, pred: Callable[[np.ndarray], bool] | None = None) -> PConst:
        return PConst(name, pred)

    def __getattr__(self, op_type: str) -> Callable[..., Any]:
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def make(*inputs: PValue, _domain: str = "", _outputs: int = 1, _name: str | None = None,
                 _allow_other_inputs: bool = False, **attrs: Any) -> Any:
            pn = PNode(op_type, _domain, list(inputs), attrs, _name, _outputs, _allow_other_inputs)
            outs = tuple(POut(pn, i) for i in range(_outputs))
            return outs[0] if _outputs == 1 else outs

        return make


@dataclass
class Match:
    """A structural match: bound variables, matched nodes (root last)."""

    root: Node
    bindings: dict[str, Any] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    node_of: dict[int, Node] = field(default_factory=dict)  # id(PNode) -> Node

    def copy(self) -> "Match":
        return Match(self.root, dict(self.bindings), list(self.nodes), dict(self.node_of))


def _match_value(pv: PValue, v: Value | None, m: Match) -> Match | None:
    if isinstance(pv, Var):
        if v is None:
            return None
        bound = m.bindings.get(pv.name)
        if bound is not None:
            return m if bound is v else None
        m.bindings[pv.name] = v
        return m
    if isinstance(pv, PConst):
        arr = constant_value(v)
        if arr is None:
            return None
        if pv.pred is not None:
            try:
                if not pv.pred(arr):
                    return None
            except Exception:
                return None
        if pv.name:
            bound = m.bindings.get(pv.name)
            if bound is not None and bound is not v:
                return None
            m.bindings[pv.name] = v
        return m
    if isinstance(pv, POut):
        if v is None:
            return None
        p = v.producer()
        if p is None or v.index != pv.index:
            return None
        return _match_node(pv.node, p, m)
    raise TypeError(f"not a pattern value: {pv!r}")


def _attr_ok(node: Node, key: str, want: Any) -> bool:
    have = node.attr(key)
    if callable(want):
        try:
            return bool(want(have))
        except Exception:
            return False
    if want is None:
        return key not in node.attrs
    if isinstance(want, (list, tuple)):
        return have is not None and list(have) == list(want)
    return have == want


def _match_node(pn: PNode, node: Node, m: Match) -> Match | None:
    done = m.node_of.get(id(pn))
    if done is not None:
        return m if done is node else None
    if node.op_type != pn.op_type or node.domain != pn.domain or len(node.outputs) < pn.num_outputs:
        return None
    if any(n is node for n in m.nodes):
        return None  # one graph node cannot play two pattern roles
    ins = list(node.inputs)
    while ins and ins[-1] is None and len(ins) > len(pn.inputs):
        ins.pop()  # trailing omitted optional inputs are the same as absent ones
    if len(ins) < len(pn.inputs) or (len(ins) > len(pn.inputs) and not pn.allow_other_inputs):
        return None
    for k, want in pn.attrs.items():
        if not _attr_ok(node, k, want):
            return None
    orders: list[Sequence[int]] = [range(len(pn.inputs))]
    if pn.op_type in COMMUTATIVE and pn.domain == "" and len(pn.inputs) == 2:
        orders.append((1, 0))
    for order in orders:
        trial: Match | None = m.copy()
        trial.node_of[id(pn)] = node
        for pv, k in zip(pn.inputs, order):
            trial = _match_value(pv, ins[k], trial)  # nested nodes return a new (extended) match
            if trial is None:
                break
        if trial is not None:
            trial.nodes.append(node)
            if pn.name:
                trial.bindings[pn.name] = node
            return trial
    return None


class Rule:
    """A rewrite rule; subclass and define `pattern`, optionally `check`, and `rewrite`."""

    #: Name used in debug reports; defaults to the class name.
    name: ClassVar[str] = ""

    def pattern(self, op: PatternBuilder, *args: PValue) -> Any:
        raise NotImplementedError

    def check(self, match: Match, **bindings: Any) -> str | bool | None:
        return None

    def rewrite(self, op: "RewriteBuilder", **bindings: Any) -> Value | Sequence[Value]:
        raise NotImplementedError

    # -- compiled pattern ---------------------------------------------------------------------------
    def _compiled(self) -> tuple[PNode, list[POut]]:
        cached = self.__dict__.get("_pattern_cache")
        if cached is None:
            params = [p for p in inspect.signature(self.pattern).parameters][1:]
            out = self.pattern(PatternBuilder(), *[Var(p) for p in params])
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            if not outs or not all(isinstance(o, POut) for o in outs) or len({id(o.node) for o in outs}) != 1:
                raise TypeError(f"{self.rule_name}: pattern must return output(s) of one root node")
            cached = (outs[0].node, outs)
            self.__dict__["_pattern_cache"] = cached
        return cached

    @property
    def rule_name(self) -> str:
        return self.name or type(self).__name__

    @property
    def root_op(self) -> tuple[str, str]:
        root, _ = self._compiled()
        return (root.domain, root.op_type)

    def match(self, node: Node) -> tuple[Match | None, str | None]:
        """Try the rule at `node` (as root). Returns (match, None) or (None, reason-if-near-miss)."""
        root, outs = self._compiled()
        m = _match_node(root, node, Match(node))
        if m is None:
            return None, None
        inside = {id(n) for n in m.nodes}
        for n in m.nodes:
            if n is node:
                continue
            for o in n.outputs:
                if o.is_graph_output():
                    return None, f"intermediate {o!r} is a graph output"
                for user, _ in o._uses:
                    if id(user) not in inside:
                        return None, f"intermediate {o!r} has other uses ({user.op_type})"
        verdict = self.check(m, **m.bindings)
        if verdict is None or verdict is True:
            return m, None
        return None, (verdict if isinstance(verdict, str) else "check failed")


class RewriteBuilder:
    """Builds replacement nodes before the matched root: `op.Conv(x, w, pads=[...])`."""

    def __init__(self, graph: Graph, model: Model | None) -> None:
        self.graph = graph
        self.model = model

    def const(self, array: Any, name: str = "const") -> Value:
        """A new constant (initializer) holding `array`."""
        return self.graph.constant(np.asarray(array), name=name)

    def __getattr__(self, op_type: str) -> Callable[..., Any]:
        if op_type.startswith("_"):
            raise AttributeError(op_type)

        def make(*inputs: Value | None, _domain: str = "", _outputs: int = 1, _name: str | None = None,
                 **attrs: Any) -> Any:
            attrs = {k: v for k, v in attrs.items() if v is not None}
            return self.graph.op(op_type, *inputs, domain=_domain, num_outputs=_outputs, name=_name, **attrs)

        return make


@dataclass
class NearMiss:
    rule: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rule} at {self.node}: {self.reason}"


@dataclass
class RewriteStats:
    applied: dict[str, int] = field(default_factory=dict)
    near_misses: list[NearMiss] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(self.applied.values())


def _node_label(n: Node) -> str:
    return f"{n.name or '<unnamed>'} ({n.qualified_op})"


def apply_rule(rule: Rule, m: Match, model: Model | None) -> None:
    """Replace the matched subgraph with the rule's rewrite."""
    root = m.root
    g = root.graph
    assert g is not None
    _, outs = rule._compiled()
    builder = RewriteBuilder(g, model)
    with g.inserting_before(root):
        new = rule.rewrite(builder, **m.bindings)
    new_vals = list(new) if isinstance(new, (tuple, list)) else [new]
    if len(new_vals) != len(outs):
        raise ValueError(f"{rule.rule_name}: rewrite returned {len(new_vals)} values for {len(outs)} outputs")
    for po, nv in zip(outs, new_vals):
        old = root.outputs[po.index]
        if nv is old:
            continue
        if nv.type is None:
            nv.type = old.type
        replace_value(old, nv)
    g.remove(reversed(m.nodes), safe=True)


#: Callbacks told the rules of every `apply_rules` call. `check_pass` listens to learn which op
#: types a pass's rules match, so that it can steer model generation toward them.
RULE_OBSERVERS: list[Callable[[Sequence["Rule | TableRule"]], None]] = []


def pattern_op_types(rule: "Rule | TableRule") -> set[str]:
    """The (default-domain) op types a rule's pattern matches: every node of the pattern tree."""
    if not isinstance(rule, Rule):
        return {rule.root_op[1]} if not rule.root_op[0] else set()
    out: set[str] = set()
    stack: list[PNode] = [rule._compiled()[0]]
    while stack:
        pn = stack.pop()
        if pn.domain in ("", "ai.onnx"):
            out.add(pn.op_type)
        stack.extend(v.node for v in pn.inputs if isinstance(v, POut))
    return out


def apply_rules(model: Model, rules: Sequence["Rule | TableRule"], *, max_sweeps: int = 50,
                debug: bool | None = None, graphs: Iterable[Graph] | None = None) -> RewriteStats:
    """Apply rules until none fires (or `max_sweeps`). Walks subgraphs too.

    With `debug` (default: on under `--debug-rewrites`, see `lepton_passes.debug_rewrites`), near
    misses are collected, and applied rules and near misses are logged to `REWRITE_LOG`.
    """
    from .manager import REWRITE_LOG, debug_rewrites_enabled  # late: manager imports the passes

    if debug is None:
        debug = debug_rewrites_enabled()
    for observe in RULE_OBSERVERS:
        observe(rules)
    stats = RewriteStats()
    by_root: dict[tuple[str, str], list[Rule | TableRule]] = {}
    for r in rules:
        by_root.setdefault(r.root_op, []).append(r)
    for _ in range(max_sweeps):
        changed = False
        for g in list(graphs if graphs is not None else model.graph.all_graphs()):
            for node in g:
                if node.graph is not g:
                    continue
                for r in by_root.get((node.domain, node.op_type), ()):
                    m, reason = r.match(node)
                    if m is None:
                        if debug and reason:
                            stats.near_misses.append(NearMiss(r.rule_name, _node_label(node), reason))
                        continue
                    if isinstance(r, TableRule):
                        r.apply(node)
                    else:
                        apply_rule(r, m, model)
                    stats.applied[r.rule_name] = stats.applied.get(r.rule_name, 0) + 1
                    if debug:
                        REWRITE_LOG.info("applied %s at %s", r.rule_name, _node_label(node))
                    changed = True
                    break
        if not changed:
            break
    # Each sweep sees the same misses again; report each (rule, node, reason) once.
    stats.near_misses = list({(n.rule, n.node, n.reason): n for n in stats.near_misses}.values())
    if debug:
        for miss in stats.near_misses:
            REWRITE_LOG.info("near miss: %s", miss)
    return stats


class TableRule:
    """A one-line rule: replace `op_type` nodes satisfying `predicate` by `replacement(node)`.

    `replacement` returns the value that stands for output 0 (and the node must have no other
    used outputs); the default forwards input 0.
    """

    def __init__(self, op_type: str, predicate: Callable[[Node], bool | str],
                 replacement: Callable[[Node], Value] | None = None, *, domain: str = "",
                 name: str | None = None) -> None:
        self.op_type = op_type
        self.domain = domain
        self.predicate = predicate
        self.replacement = replacement or (lambda n: n.inputs[0])
        self.rule_name = name or f"{op_type}-noop"

    @property
    def root_op(self) -> tuple[str, str]:
        return (self.domain, self.op_type)

    def match(self, node: Node) -> tuple[Any, str | None]:
        if any(o.num_uses() or o.is_graph_output() for o in node.outputs[1:]):
            return None, "secondary outputs are used"
        try:
            verdict = self.predicate(node)
        except Exception as e:  # predicates read types that may be missing
            return None, f"predicate failed: {e}"
        if verdict is True:
            return node, None
        return None, (verdict if isinstance(verdict, str) else None)

    def apply(self, node: Node) -> None:
        g = node.graph
        assert g is not None
        with g.inserting_before(node):  # replacement nodes go where the node was, in order
            new = self.replacement(node)
        old = node.outputs[0]
        if new.type is None:
            new.type = old.type
        replace_value(old, new)
        g.remove(node, safe=True)
