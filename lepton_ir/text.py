"""The readable text form of the IR: `print_model`/`parse_model` (and `print_graph`/`parse_graph`).

The form is MLIR-like and round-trips: `print(parse(print(m)))` equals `print(m)`, and with
`max_inline_elements=None` every constant is printed in full, so `parse(print(m, ...=None))` is a
lossless copy of `m` (see docs/text-format.md for the grammar)::

    model <ir_version=8, opset={"": 17}>
    graph main(%x: f32[N,3,8,8]) -> (%y: f32[N,4,8,8]) {
      %w = const f32[4,3,3,3] <sha256:1a2b3c4d5e6f7a8b>
      %b = const f32[4] [0.1, 0.2, 0.3, 0.4]
      %c = Conv(%x, %w, %b) {kernel_shape=[3,3], pads=[1,1,1,1]} : f32[N,4,8,8]
      %y = Relu(%c) : f32[N,4,8,8]
      return %y
    }

Design notes (the why):
- Unnamed values print as `%0`, `%1`, ... numbered in print order; a purely numeric ONNX name is
  therefore quoted (`%"0"`), so the two can never be confused and numbering is stable.
- Everything that is not structure (docs, node names, metadata, importer bookkeeping kept in
  `meta`/`extra`) goes into `<key=value, ...>` property lists, so the main lines stay readable
  and new keys need no grammar change.
- Constants whose readable decimal form would not parse back bit-exactly (NaN payloads, bf16,
  float8, int4, complex, ...) print their little-endian bytes as `b64"..."` instead.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import math
import re
from typing import Any, Iterable

import numpy as np

from .errors import LeptonError, TextParseError
from .ir import Attr, AttrType, Function, Graph, Model, Node, Value
from .tensor import ArrayTensor, SparseTensor, Tensor
from .types import DType, MapType, OptionalType, SequenceType, Shape, SparseTensorType, TensorType, Type

__all__ = ["print_model", "parse_model", "print_graph", "parse_graph", "SummarizedTensor"]

# Tensors with more elements than this print as bytes even in full mode: decimal text of a big
# weight is slow to write and read and no more useful to a human than base64.
_READABLE_LIMIT = 4096

_BARE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
# Words the lexer reads as something else (numbers, the start of a bytes literal): quoted wherever
# a name is spelled like them.
_LEXER_WORDS = frozenset({"nan", "inf", "b64"})
# Op names that would start another kind of statement.
_OP_KEYWORDS = _LEXER_WORDS | {"_", "return"}
_DOMAIN_KEYWORDS = _OP_KEYWORDS | {"const", "sparse"}
_TYPE_WORDS = frozenset({"seq", "opt", "map", "sparse"})

_ATTR_TAGS = {
    AttrType.UNDEFINED: "undefined", AttrType.FLOAT: "float", AttrType.INT: "int",
    AttrType.STRING: "string", AttrType.TENSOR: "tensor", AttrType.GRAPH: "graph",
    AttrType.FLOATS: "floats", AttrType.INTS: "ints", AttrType.STRINGS: "strings",
    AttrType.TENSORS: "tensors", AttrType.GRAPHS: "graphs", AttrType.SPARSE_TENSOR: "sparse_tensor",
    AttrType.SPARSE_TENSORS: "sparse_tensors", AttrType.TYPE_PROTO: "type_proto",
    AttrType.TYPE_PROTOS: "type_protos",
}
_TAG_ATTRS = {v: k for k, v in _ATTR_TAGS.items()}
_LIST_OF = {AttrType.FLOATS: AttrType.FLOAT, AttrType.INTS: AttrType.INT, AttrType.STRINGS: AttrType.STRING,
            AttrType.TENSORS: AttrType.TENSOR, AttrType.GRAPHS: AttrType.GRAPH,
            AttrType.SPARSE_TENSORS: AttrType.SPARSE_TENSOR, AttrType.TYPE_PROTOS: AttrType.TYPE_PROTO}
_SCALAR_TO_LIST = {v: k for k, v in _LIST_OF.items()}

_READABLE_FLOATS = (DType.FLOAT, DType.DOUBLE, DType.FLOAT16)
_READABLE_INTS = (DType.INT8, DType.INT16, DType.INT32, DType.INT64, DType.UINT8, DType.UINT16,
                  DType.UINT32, DType.UINT64)

# Importer bookkeeping on an output value that the graph signature shows instead of the value.
_OUTPUT_META = ("declared_output_type", "output_doc")


class _Unprintable:
    """Marker for meta values that have no text form (skipped when printing)."""


_UNPRINTABLE = _Unprintable()


# ------------------------------------------------------------------------------------------------
# The summarised-constant placeholder
# ------------------------------------------------------------------------------------------------
class SummarizedTensor(Tensor):
    """A constant read from a summary (`<sha256:...>`): dtype, shape and hash but no data.

    It prints back identically; asking for its data raises a LeptonError that says why.
    """

    __slots__ = ("_dtype", "_dims", "_digest")

    def __init__(self, dtype: DType, dims: Iterable[int], digest: str, name: str | None = None,
                 doc: str = "") -> None:
        super().__init__(name, doc)
        self._dtype = dtype
        self._dims = tuple(dims)
        self._digest = digest

    @property
    def dtype(self) -> DType:
        return self._dtype

    @property
    def shape(self) -> Shape:
        return Shape(self._dims)

    def digest(self) -> str:
        return self._digest

    def numpy(self) -> np.ndarray:
        raise LeptonError(
            f"constant {self.name or '<unnamed>'} ({self._dtype.short}{list(self._dims)}) was summarised in the "
            f"text form as <sha256:{self._digest}>, so its data is not available; print with "
            "max_inline_elements=None for a lossless text form")


# ------------------------------------------------------------------------------------------------
# Small formatting helpers
# ------------------------------------------------------------------------------------------------
def _quote(s: str) -> str:
    """A double-quoted string literal; non-printable characters as \\u{hex} so output is one line."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif not ch.isprintable():
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _b64(b: bytes) -> str:
    return 'b64"' + base64.b64encode(bytes(b)).decode("ascii") + '"'


def _word(s: str, reserved: frozenset[str] = _LEXER_WORDS) -> str:
    """An identifier-like word (op, attribute, dim, key), quoted when it is not bare-safe."""
    return s if _BARE_RE.match(s) and s not in reserved else _quote(s)


def _vname(name: str) -> str:
    """`%name`, quoted unless a bare word (so `%"0"` is never confused with unnamed `%0`)."""
    return "%" + (name if _BARE_RE.match(name) else _quote(name))


def _strlit(s: str | bytes) -> str:
    return _b64(s) if isinstance(s, (bytes, bytearray)) else _quote(s)


def _fmt_float(x: float) -> str:
    # repr() is the shortest text that parses back to the same double; nan/inf spelled bare.
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def _fmt_attr_float(x: float) -> str:
    """A float attribute. ONNX stores them as float32, so a value that is exactly a float32 prints
    as that float32's shortest decimal (`0.1`, not `0.10000000149011612`). Re-parsing gives the
    double nearest that text, which is either not a float32 (so repr() prints the same text) or
    is one (so this path prints the same text again): the output is stable either way."""
    x = float(x)
    if math.isfinite(x):
        f = np.float32(x)
        if float(f) == x:
            s = repr(float(str(f)))
            if float(np.float32(float(s))) == x:
                return s
    return _fmt_float(x)


def _fmt_dim(d: Any) -> str:
    if d is None:
        return "?"
    if isinstance(d, int):
        return str(d)
    return _word(str(d))


def _fmt_shape(shape: Shape | Iterable[Any]) -> str:
    return "[" + ",".join(_fmt_dim(d) for d in shape) + "]"


def format_type(t: Type | None) -> str:
    """The text of a value type (`f32[N,3]`, `seq<i64[?]>`, `?` for unknown)."""
    if t is None:
        return "?"
    if isinstance(t, TensorType):
        return t.dtype.short + (_fmt_shape(t.shape) if t.shape is not None else "")
    if isinstance(t, SparseTensorType):
        return "sparse<" + t.dtype.short + (_fmt_shape(t.shape) if t.shape is not None else "") + ">"
    if isinstance(t, SequenceType):
        return f"seq<{format_type(t.elem)}>"
    if isinstance(t, OptionalType):
        return f"opt<{format_type(t.elem)}>"
    if isinstance(t, MapType):
        return f"map<{t.key.short},{format_type(t.value)}>"
    raise TypeError(f"cannot print type {t!r}")


def _fmt_literal(x: Any) -> str | _Unprintable:
    """A property value: bool, int, float, str, bytes, list, dict, Type or None."""
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return _fmt_float(x)
    if isinstance(x, str):
        return _quote(x)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return _b64(bytes(x))
    if isinstance(x, Type):
        return format_type(x)
    if isinstance(x, (list, tuple)):
        items = [_fmt_literal(v) for v in x]
        if any(i is _UNPRINTABLE for i in items):
            return _UNPRINTABLE
        return "[" + ", ".join(items) + "]"  # type: ignore[arg-type]
    if isinstance(x, dict):
        if not all(isinstance(k, str) for k in x):
            return _UNPRINTABLE
        items = [(k, _fmt_literal(v)) for k, v in x.items()]
        if any(i is _UNPRINTABLE for _, i in items):
            return _UNPRINTABLE
        return "{" + ", ".join(f"{_quote(k)}: {v}" for k, v in items) + "}"
    return _UNPRINTABLE


def _fmt_props(props: list[tuple[str, Any]]) -> str:
    """` <k=v, ...>` for the printable entries (empty string when there are none)."""
    parts = []
    for k, v in props:
        s = _fmt_literal(v)
        if s is not _UNPRINTABLE:
            parts.append(f"{_word(k)}={s}")
    return " <" + ", ".join(parts) + ">" if parts else ""


# ------------------------------------------------------------------------------------------------
# Tensor data
# ------------------------------------------------------------------------------------------------
def _string_elements(t: Tensor) -> list[str | bytes]:
    """String elements as str where they are UTF-8, bytes otherwise."""
    proto = getattr(t, "proto", None)
    if proto is not None and t.dtype == DType.STRING:
        # Read the proto directly: onnx's to_array fails on strings that are not UTF-8.
        raw: list[Any] = list(proto.string_data)
    else:
        raw = list(np.asarray(t.numpy(), dtype=object).ravel())
    out: list[str | bytes] = []
    for s in raw:
        if isinstance(s, (bytes, bytearray, np.bytes_)):
            try:
                out.append(bytes(s).decode("utf-8"))
            except UnicodeDecodeError:
                out.append(bytes(s))
        else:
            out.append(str(s))
    return out


def _digest(t: Tensor) -> str:
    if t.dtype == DType.STRING and getattr(t, "proto", None) is not None:
        # Same algorithm as Tensor.digest, from the proto bytes (which numpy() may fail to decode).
        h = hashlib.sha256()
        h.update(f"{t.dtype.value}:{t.shape.dims}".encode())
        for s in t.proto.string_data:  # type: ignore[attr-defined]
            h.update(len(s).to_bytes(8, "little") + s)
        return h.hexdigest()[:16]
    return t.digest()


def _le_bytes(arr: np.ndarray) -> bytes:
    a = np.ascontiguousarray(arr)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a.tobytes()


def _float_text(dtype: DType, arr: np.ndarray) -> list[str]:
    if dtype == DType.DOUBLE:
        return [_fmt_float(x) for x in arr.tolist()]
    # str() of a numpy float32/float16 scalar is its shortest round-tripping decimal; going through
    # float() and repr() only restyles it like Python floats (65500.0, not 6.55e+04).
    return [_fmt_float(float(str(x))) for x in arr]


def _readable(dtype: DType, arr: np.ndarray) -> str | None:
    """`[e0, e1, ...]` when that text parses back to exactly these bits, else None."""
    flat = arr.ravel()
    if dtype in _READABLE_INTS:
        return "[" + ", ".join(map(str, flat.tolist())) + "]"
    if dtype == DType.BOOL:
        return "[" + ", ".join("true" if b else "false" for b in flat.tolist()) + "]"
    if dtype in _READABLE_FLOATS:
        items = _float_text(dtype, flat)
        back = _floats_from_text(items, dtype)
        if _le_bytes(back) != _le_bytes(flat.astype(dtype.numpy(), copy=False)):
            return None  # e.g. a NaN with a payload or sign: not expressible as decimal text
        return "[" + ", ".join(items) + "]"
    return None


def _floats_from_text(items: list[str], dtype: DType) -> np.ndarray:
    return np.array([float(s) for s in items], dtype=np.float64).astype(dtype.numpy())


def format_tensor(t: Tensor, max_inline: int | None, *, with_props: bool = True) -> str:
    """`dtype[dims] data` with data as `[...]`, `b64"..."` or a `<sha256:...>` summary."""
    head = t.dtype.short + _fmt_shape(t.shape.dims)
    n = t.size
    props: list[tuple[str, Any]] = []
    if with_props:
        if t.name:
            props.append(("name", t.name))
        if t.doc:
            props.append(("doc", t.doc))
    if (max_inline is not None and n > max_inline) or isinstance(t, SummarizedTensor):
        return f"{head} <sha256:{_digest(t)}>" + _fmt_props(props)
    if t.dtype == DType.STRING:
        data = "[" + ", ".join(_strlit(s) for s in _string_elements(t)) + "]"
        return f"{head} {data}" + _fmt_props(props)
    arr = np.asarray(t.numpy())
    try:
        want = t.dtype.numpy()
    except ValueError:
        want = arr.dtype
    if arr.dtype != want:
        arr = arr.astype(want)
    data_s = _readable(t.dtype, arr) if n <= _READABLE_LIMIT else None
    if data_s is None:
        data_s = _b64(_le_bytes(arr))
    return f"{head} {data_s}" + _fmt_props(props)


# ------------------------------------------------------------------------------------------------
# Printer
# ------------------------------------------------------------------------------------------------
class _Printer:
    def __init__(self, max_inline: int | None, types: bool) -> None:
        self.max_inline = max_inline
        self.types = types
        self.scopes: list[dict[int, str]] = []  # value id -> printed name, innermost last
        self.taken: list[set[str]] = []
        self.counter = 0

    # -- names --------------------------------------------------------------------------------------
    def _name(self, v: Value | None) -> str:
        if v is None:
            return "_"
        for scope in reversed(self.scopes):
            got = scope.get(id(v))
            if got is not None:
                return got
        # Not defined in scope (a subgraph printed alone, or broken IR): print its name.
        return _vname(v.name) if v.name else "%<undefined>"

    def _assign(self, g: Graph) -> None:
        """Name every value `g` defines before printing it (outputs are printed first)."""
        scope: dict[int, str] = {}
        taken: set[str] = set()
        visible = set().union(*self.taken) if self.taken else set()
        self.scopes.append(scope)
        self.taken.append(taken)
        outputs = {id(o) for o in g.outputs}
        for v in _defined(g):
            if id(v) in scope:
                continue
            if v.name == "" and v.producer() is not None and not v.num_uses() and id(v) not in outputs:
                scope[id(v)] = "_"  # an omitted optional output
                continue
            if v.name and v.name not in taken and v.name not in visible:
                name = v.name
                taken.add(name)
                scope[id(v)] = _vname(name)
            else:
                # Unnamed (or a clashing name): numbered in print order, which parsing preserves.
                scope[id(v)] = f"%{self.counter}"
                self.counter += 1

    def _pop(self) -> None:
        self.scopes.pop()
        self.taken.pop()

    # -- values -----------------------------------------------------------------------------------
    @staticmethod
    def _value_props(v: Value, skip: Iterable[str] = ()) -> list[tuple[str, Any]]:
        props: list[tuple[str, Any]] = []
        if v.doc:
            props.append(("doc", v.doc))
        skip = set(skip)
        for k, x in v.meta.items():
            if k not in skip and k != "doc":
                props.append((k, x))
        return props

    def _sig_input(self, v: Value) -> str:
        s = self._name(v)
        if v.const is not None:
            # IR<4 style: an initializer that is also an input; its declared input type (if any)
            # shows here, its data and own type on the `const` line.
            t = v.meta.get("input_type")
            return s + (f": {format_type(t)}" if t is not None else "")
        props = _fmt_props(self._value_props(v))
        if v.type is not None or props:
            s += f": {format_type(v.type)}"
        return s + props

    def _sig_output(self, v: Value) -> str:
        s = self._name(v)
        t = v.meta.get("declared_output_type")
        doc = v.meta.get("output_doc")
        props = _fmt_props([("doc", doc)] if doc else [])
        if t is not None or props:
            s += f": {format_type(t)}"
        return s + props

    # -- graphs -----------------------------------------------------------------------------------
    @staticmethod
    def _graph_props(g: Graph) -> list[tuple[str, Any]]:
        props: list[tuple[str, Any]] = []
        if g.doc:
            props.append(("doc", g.doc))
        if g.metadata_props:
            props.append(("metadata", dict(g.metadata_props)))
        for k, x in g.extra.items():
            if x is None or (isinstance(x, (list, tuple, dict)) and not x):
                continue  # an empty list means the same as none on export
            props.append((k, x))
        for k, x in g.meta.items():
            props.append(("meta." + k, x))
        return props

    def graph(self, g: Graph, indent: str, keyword: str = "graph", name: str | None = None,
              extra_head: str = "", props: list[tuple[str, Any]] | None = None) -> list[str]:
        self._assign(g)
        try:
            gname = g.name if name is None else name
            head = keyword + (" " + _word(gname) if gname else "") + extra_head
            tail = _fmt_props(self._graph_props(g) if props is None else props)
            ins = ", ".join(self._sig_input(v) for v in g.inputs)
            outs = ", ".join(self._sig_output(v) for v in g.outputs)
            lines = [f"{indent}{head}({ins}) -> ({outs}){tail} {{"]
            inner = indent + "  "
            input_ids = {id(v) for v in g.inputs}
            out_ids = {id(v) for v in g.outputs}
            for v in g.initializers.values():
                lines.append(inner + self._const_line(v, id(v) in input_ids, id(v) in out_ids))
            for name_, sp in g.sparse_initializers.items():
                lines.append(f"{inner}{_vname(name_)} = " + self._sparse(sp))
            for n in g:
                lines.extend(self.node(n, inner, out_ids))
            lines.append(f"{inner}return " + ", ".join(self._name(v) for v in g.outputs))
            lines.append(indent + "}")
            return lines
        finally:
            self._pop()

    def _const_line(self, v: Value, is_input: bool, is_output: bool) -> str:
        t = v.const
        assert t is not None
        lit = format_tensor(t, self.max_inline, with_props=False)
        tprops: list[tuple[str, Any]] = []
        if t.doc != v.doc:  # the importer gives both the TensorProto's doc; print it once (on the value)
            tprops.append(("doc", t.doc))
        if t.name and t.name != v.name:
            tprops.append(("name", t.name))
        lit += _fmt_props(tprops)
        skip = ["input_type"] if is_input else []
        if is_output:
            skip += _OUTPUT_META
        vprops = _fmt_props(self._value_props(v, skip))
        own = TensorType(t.dtype, t.shape)
        annot = ""
        if vprops or v.type != own:
            annot = f" : {format_type(v.type)}{vprops}"
        return f"{self._name(v)} = const {lit}{annot}"

    def _sparse(self, sp: SparseTensor) -> str:
        return (f"sparse {_fmt_shape(sp.dims)} values={format_tensor(sp.values, self.max_inline)} "
                f"indices={format_tensor(sp.indices, self.max_inline)}")

    # -- nodes ------------------------------------------------------------------------------------
    def node(self, n: Node, indent: str, graph_outputs: set[int]) -> list[str]:
        outs = ", ".join(self._name(o) for o in n.outputs)
        op = (_word(n.domain, _DOMAIN_KEYWORDS) + "::" if n.domain else "") + _word(n.op_type, _OP_KEYWORDS)
        ins = ", ".join(self._name(v) for v in n.inputs)
        head = f"{outs} = {op}({ins})" if n.outputs else f"{op}({ins})"
        props: list[tuple[str, Any]] = []
        if n.name:
            props.append(("name", n.name))
        if n.overload:
            props.append(("overload", n.overload))
        if n.doc:
            props.append(("doc", n.doc))
        if n.metadata_props:
            props.append(("metadata", dict(n.metadata_props)))
        for k, x in n.meta.items():
            props.append((k, x))
        tail = _fmt_props(props)
        annots = []
        for o in n.outputs:
            vp = _fmt_props(self._value_props(o, _OUTPUT_META if id(o) in graph_outputs else ()))
            t = o.type if self.types else None
            annots.append(format_type(t) + vp)
        if any(a != "?" for a in annots):
            tail += " : " + ", ".join(annots)
        attrs = list(n.attrs.values())
        if not attrs:
            return [indent + head + tail]
        if not any(a.type in (AttrType.GRAPH, AttrType.GRAPHS) and a.ref is None for a in attrs):
            return [indent + head + " {" + ", ".join(self.attr(a, indent)[0] for a in attrs) + "}" + tail]
        # Subgraphs: one attribute per line, bodies as nested blocks.
        lines = [indent + head + " {"]
        inner = indent + "  "
        for k, a in enumerate(attrs):
            alines = self.attr(a, inner)
            alines[0] = inner + alines[0]
            if k < len(attrs) - 1:
                alines[-1] += ","
            lines.extend(alines)
        lines.append(indent + "}" + tail)
        return lines

    def attr(self, a: Attr, indent: str) -> list[str]:
        """The attribute as lines; the first is not indented (it follows `name=`)."""
        empty_list = a.type in _LIST_OF and a.ref is None and not a.value
        tag = f": {_ATTR_TAGS[a.type]}" if (a.ref is not None and a.type != AttrType.UNDEFINED) or empty_list \
            else ""
        head = _word(a.name) + tag + _fmt_props([("doc", a.doc)] if a.doc else []) + "="
        if a.ref is not None:
            return [head + "@" + _word(a.ref)]
        lines = self.attr_value(a.type, a.value, indent)
        lines[0] = head + lines[0]
        return lines

    def attr_value(self, t: AttrType, v: Any, indent: str) -> list[str]:
        if t == AttrType.FLOAT:
            return [_fmt_attr_float(v)]
        if t == AttrType.INT:
            return [str(int(v))]
        if t == AttrType.STRING:
            return [_strlit(v)]
        if t == AttrType.TENSOR:
            return ["tensor " + format_tensor(v, self.max_inline)]
        if t == AttrType.SPARSE_TENSOR:
            return [self._sparse(v)]
        if t == AttrType.TYPE_PROTO:
            return ["type " + format_type(v)]
        if t == AttrType.GRAPH:
            lines = self.graph(v, indent)
            lines[0] = lines[0][len(indent):]
            return lines
        if t == AttrType.GRAPHS:
            if not v:
                return ["[]"]
            lines = ["["]
            for k, g in enumerate(v):
                gl = self.graph(g, indent + "  ")
                if k < len(v) - 1:
                    gl[-1] += ","
                lines.extend(gl)
            lines.append(indent + "]")
            return lines
        if t in _LIST_OF:
            return ["[" + ", ".join(self.attr_value(_LIST_OF[t], x, indent)[0] for x in v) + "]"]
        raise TypeError(f"cannot print an attribute of kind {t!r}")

    # -- functions and models ---------------------------------------------------------------------
    def function(self, f: Function) -> list[str]:
        formals = [_word(a) for a in f.attributes]
        for a in f.attribute_defaults.values():
            formals.append("\n".join(self.attr(a, "")))
        head_extra = "[" + ", ".join(formals) + "]" if formals else ""
        props: list[tuple[str, Any]] = []
        if f.overload:
            props.append(("overload", f.overload))
        if f.doc:
            props.append(("doc", f.doc))
        props.append(("opset", dict(f.opset_imports)))
        if f.metadata_props:
            props.append(("metadata", dict(f.metadata_props)))
        if f.graph.name != f.name:
            props.append(("graph.name", f.graph.name))
        props.extend(("graph." + k, x) for k, x in self._graph_props(f.graph))
        self.counter = 0  # a function body is its own scope
        name = (_word(f.domain) + "::" if f.domain else "") + _word(f.name)
        return self.graph(f.graph, "", keyword="func " + name, name="", extra_head=head_extra, props=props)

    def model(self, m: Model) -> str:
        props: list[tuple[str, Any]] = [("ir_version", m.ir_version), ("opset", dict(m.opset_imports))]
        for key, val in (("producer", m.producer_name), ("producer_version", m.producer_version),
                         ("domain", m.domain), ("model_version", m.model_version), ("doc", m.doc)):
            if val:
                props.append((key, val))
        if m.metadata_props:
            props.append(("metadata", dict(m.metadata_props)))
        bulky = []
        for k, x in m.extra.items():
            if isinstance(x, (list, tuple)) and x and all(isinstance(b, (bytes, bytearray)) for b in x):
                bulky.append((k, x))  # opaque protobuf bytes: kept out of the header, at the end
            else:
                props.append((k, x))
        lines = ["model" + _fmt_props(props)]
        lines.extend(self.graph(m.graph, ""))
        for f in m.functions.values():
            lines.append("")
            lines.extend(self.function(f))
        if bulky:
            lines.append("")
            lines.append("extra" + _fmt_props(bulky))
        return "\n".join(lines) + "\n"


def _defined(g: Graph) -> Iterable[Value]:
    yield from g.inputs
    yield from g.initializers.values()
    for n in g:
        yield from n.outputs


def print_model(model: Model, *, max_inline_elements: int | None = 16, types: bool = True) -> str:
    """The text form of `model`.

    Constants with more than `max_inline_elements` elements print as a `<sha256:...>` summary;
    `None` prints every constant in full (lossless). `types=False` leaves out the per-value types
    of node outputs (signatures keep theirs). Output is deterministic.
    """
    return _Printer(max_inline_elements, types).model(model)


def print_graph(graph: Graph, *, max_inline_elements: int | None = 16, types: bool = True) -> str:
    """The text form of a single graph (a `graph ... { ... }` block)."""
    return "\n".join(_Printer(max_inline_elements, types).graph(graph, "")) + "\n"


# ------------------------------------------------------------------------------------------------
# Lexer
# ------------------------------------------------------------------------------------------------
_STR = r'"(?:[^"\\\n]|\\.)*"'
_TOKEN_RE = re.compile(rf"""
 (?P<ws>[ \t\r\n]+|\#[^\n]*)
|(?P<hash><sha256:[0-9a-fA-F]+>)
|(?P<bytes>b64"[A-Za-z0-9+/=\s]*")
|(?P<str>{_STR})
|(?P<badstr>"[^\n]*)
|(?P<num>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?(?![A-Za-z_])|-?inf\b|nan\b)
|(?P<vname>%(?:[A-Za-z_][A-Za-z0-9_.]*|\d+|{_STR}))
|(?P<ref>@(?:[A-Za-z_][A-Za-z0-9_.]*|{_STR}))
|(?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
|(?P<punct>::|->|[()\[\]{{}}<>,=:?])
""", re.X)
_ESCAPE_RE = re.compile(r"\\(u\{[0-9a-fA-F]{1,6}\}|.)")
_SIMPLE_ESC = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


class _Tok:
    __slots__ = ("kind", "text", "pos", "value")

    def __init__(self, kind: str, text: str, pos: int, value: Any) -> None:
        self.kind = kind
        self.text = text
        self.pos = pos
        self.value = value


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.toks: list[_Tok] = []
        pos = 0
        n = len(text)
        while pos < n:
            m = _TOKEN_RE.match(text, pos)
            if m is None:
                self.error(pos, f"unexpected character {text[pos]!r}")
            kind = m.lastgroup
            s = m.group()
            if kind == "ws":
                pos = m.end()
                continue
            if kind == "badstr":
                self.error(pos, "unterminated string literal")
            value: Any = s
            if kind == "str":
                value = self.unescape(s, pos)
            elif kind == "bytes":
                try:
                    value = base64.b64decode("".join(s[4:-1].split()), validate=True)
                except ValueError:
                    self.error(pos, "invalid base64 in b64\"...\" literal")
            elif kind == "hash":
                value = s[len("<sha256:"):-1].lower()
            elif kind in ("vname", "ref"):
                body = s[1:]
                if body.startswith('"'):
                    value = ("name", self.unescape(body, pos + 1))
                elif body.isdigit():
                    value = ("anon", body)  # %0, %1, ...: an unnamed value
                else:
                    value = ("name", body)
            self.toks.append(_Tok(kind, s, pos, value))  # type: ignore[arg-type]
            pos = m.end()
        self.toks.append(_Tok("eof", "", n, None))

    def unescape(self, s: str, pos: int) -> str:
        def rep(m: re.Match) -> str:
            e = m.group(1)
            if e.startswith("u{"):
                return chr(int(e[2:-1], 16))
            if e in _SIMPLE_ESC:
                return _SIMPLE_ESC[e]
            self.error(pos + 1 + m.start(), f"unknown escape sequence \\{e} in string")
            return ""

        try:
            return _ESCAPE_RE.sub(rep, s[1:-1])
        except ValueError:  # chr() out of range
            self.error(pos, "invalid \\u{...} escape in string")
            return ""

    def where(self, pos: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.line_starts, pos)
        return line, pos - self.line_starts[line - 1] + 1

    def error(self, pos: int, msg: str) -> None:
        line, col = self.where(pos)
        raise TextParseError(f"line {line}, col {col}: {msg}")


# ------------------------------------------------------------------------------------------------
# Parser
# ------------------------------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str) -> None:
        self.lex = _Lexer(text)
        self.toks = self.lex.toks
        self.i = 0
        self.scopes: list[dict[str, Value]] = []  # name (or "%N") -> value, innermost last
        self.tensor_had_doc = False  # whether the last tensor literal had a doc property
        self.node_toks: list[tuple[Node, _Tok]] = []  # for errors found after parsing (opsets)

    # -- token helpers ----------------------------------------------------------------------------
    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def peek(self, k: int = 1) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> _Tok:
        t = self.toks[self.i]
        if t.kind != "eof":
            self.i += 1
        return t

    def error(self, msg: str, tok: _Tok | None = None) -> None:
        self.lex.error((tok or self.tok).pos, msg)

    def describe(self, t: _Tok) -> str:
        return "end of input" if t.kind == "eof" else repr(t.text if len(t.text) <= 30 else t.text[:27] + "...")

    def at(self, text: str) -> bool:
        t = self.tok
        return t.kind in ("punct", "ident") and t.text == text

    def accept(self, text: str) -> bool:
        if self.at(text):
            self.i += 1
            return True
        return False

    def expect(self, text: str, what: str = "") -> _Tok:
        if not self.at(text):
            self.error(f"expected {text!r}{' ' + what if what else ''}, found {self.describe(self.tok)}")
        return self.next()

    def word(self, what: str) -> str:
        """An identifier or a quoted string."""
        t = self.tok
        if t.kind == "ident":
            self.i += 1
            return t.text
        if t.kind == "str":
            self.i += 1
            return t.value
        self.error(f"expected {what}, found {self.describe(t)}")
        return ""

    def int_(self, what: str) -> int:
        t = self.tok
        if t.kind != "num" or not re.fullmatch(r"-?\d+", t.text):
            self.error(f"expected an integer {what}, found {self.describe(t)}")
        x = int(t.text)
        if not -(2**63) <= x < 2**63:  # every integer read here (dims, ...) is an int64 in ONNX
            self.error(f"{what} {t.text} does not fit in int64")
        self.i += 1
        return x

    # -- literals ---------------------------------------------------------------------------------
    def literal(self) -> Any:
        t = self.tok
        if t.kind == "num":
            self.i += 1
            return int(t.text) if re.fullmatch(r"-?\d+", t.text) else float(t.text)
        if t.kind in ("str", "bytes"):
            self.i += 1
            return t.value
        if t.kind == "ident" and t.text in ("true", "false", "null"):
            self.i += 1
            return {"true": True, "false": False, "null": None}[t.text]
        if self.accept("["):
            items = []
            while not self.at("]"):
                items.append(self.literal())
                if not self.accept(","):
                    break
            self.expect("]", "to close the list")
            return items
        if self.accept("{"):
            d: dict[str, Any] = {}
            while not self.at("}"):
                kt = self.tok
                k = self.word("a dictionary key")
                if k in d:
                    self.error(f"duplicate key {k!r}", kt)
                self.expect(":", "after a dictionary key")
                d[k] = self.literal()
                if not self.accept(","):
                    break
            self.expect("}", "to close the dictionary")
            return d
        if t.kind == "ident" or self.at("?"):
            return self.type_()
        self.error(f"expected a value, found {self.describe(t)}")

    def props(self) -> dict[str, Any]:
        """An optional `<key=value, ...>` list."""
        out: dict[str, Any] = {}
        if not self.accept("<"):
            return out
        while not self.at(">"):
            kt = self.tok
            k = self.word("a property name")
            if k in out:
                self.error(f"duplicate property {k!r}", kt)
            self.expect("=", f"after property {k!r}")
            out[k] = self.literal()
            if not self.accept(","):
                break
        self.expect(">", "to close the property list")
        return out

    def prop(self, props: dict[str, Any], key: str, kind: type | tuple[type, ...], tok: _Tok,
             default: Any = None) -> Any:
        """Pop `key` from parsed props, checking the kind of its value."""
        if key not in props:
            return default
        v = props.pop(key)
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            self.error(f"property {key!r} has the wrong kind of value ({type(v).__name__})", tok)
        if kind is int and not -(2**63) <= v < 2**63:  # protobuf int64 fields refuse the rest on export
            self.error(f"property {key!r} value {v} does not fit in int64", tok)
        if isinstance(v, dict) and kind is dict:
            for k, x in v.items():
                if key in ("metadata", "graph.metadata") and not isinstance(x, str):
                    self.error(f"metadata value of {k!r} must be a string", tok)
                if key in ("opset",) and (not isinstance(x, int) or isinstance(x, bool)):
                    self.error(f"opset version of {k!r} must be an integer", tok)
                if key in ("opset",) and not -(2**63) <= x < 2**63:
                    self.error(f"opset version of {k!r} does not fit in int64", tok)
        return v

    # -- types ------------------------------------------------------------------------------------
    def dtype(self) -> DType:
        t = self.tok
        if t.kind != "ident":
            self.error(f"expected an element type (f32, i64, ...), found {self.describe(t)}")
        try:
            d = DType.from_short(t.text)
        except ValueError:
            self.error(f"unknown element type {t.text!r} (known: f32, f16, f64, bf16, i8..i64, u8..u64, bool, "
                       "str, c64, c128, f8e4m3fn, f8e4m3fnuz, f8e5m2, f8e5m2fnuz, f8e8m0, f4e2m1, i4, u4, i2, u2, "
                       "undef)")
        self.i += 1
        return d

    def shape(self) -> Shape:
        self.expect("[")
        dims: list[Any] = []
        while not self.at("]"):
            t = self.tok
            if t.kind == "num":
                dims.append(self.int_("dimension"))
            elif self.accept("?"):
                dims.append(None)
            elif t.kind in ("ident", "str"):
                dims.append(self.word("a dimension"))
            else:
                self.error(f"expected a dimension (integer, name or ?), found {self.describe(t)}")
            if not self.accept(","):
                break
        self.expect("]", "to close the shape")
        return Shape(dims)

    def type_(self) -> Type | None:
        if self.accept("?"):
            return None
        t = self.tok
        if t.kind == "ident" and t.text in _TYPE_WORDS and self.peek().text == "<":
            self.i += 2
            if t.text == "seq":
                out: Type | None = SequenceType(self.type_())
            elif t.text == "opt":
                out = OptionalType(self.type_())
            elif t.text == "map":
                key = self.dtype()
                self.expect(",", "between map key and value types")
                out = MapType(key, self.type_())
            else:
                d = self.dtype()
                out = SparseTensorType(d, self.shape() if self.at("[") else None)
            self.expect(">", "to close the type")
            return out
        d = self.dtype()
        return TensorType(d, self.shape() if self.at("[") else None)

    # -- tensors ----------------------------------------------------------------------------------
    def tensor(self, default_name: str | None = None) -> Tensor:
        start = self.tok
        dtype = self.dtype()
        shape = self.shape()
        dims = []
        for d in shape.dims:
            if not isinstance(d, int) or d < 0:
                self.error("a constant's shape must be non-negative integers", start)
            dims.append(d)
        numel = math.prod(dims)
        t = self.tok
        tensor: Tensor
        if t.kind == "hash":
            self.i += 1
            tensor = SummarizedTensor(dtype, dims, t.value, name=default_name)
        elif t.kind == "bytes":
            self.i += 1
            tensor = ArrayTensor(self._from_bytes(t, dtype, dims, numel), name=default_name, dtype=dtype)
        elif self.at("["):
            tensor = ArrayTensor(self._from_elements(dtype, dims, numel), name=default_name, dtype=dtype)
        else:
            self.error(f"expected constant data ([...], b64\"...\" or <sha256:...>), found {self.describe(t)}")
        ptok = self.tok
        props = self.props()
        name = self.prop(props, "name", str, ptok)
        if name is not None:
            tensor.name = name
        self.tensor_had_doc = "doc" in props
        tensor.doc = self.prop(props, "doc", str, ptok, "")
        if props:
            self.error(f"unknown constant property {next(iter(props))!r}", ptok)
        return tensor

    def _from_bytes(self, t: _Tok, dtype: DType, dims: list[int], numel: int) -> np.ndarray:
        if dtype in (DType.STRING, DType.UNDEFINED):
            self.error(f"{dtype.short} constants cannot be given as bytes; list the elements", t)
        npd = dtype.numpy().newbyteorder("<")
        if len(t.value) != numel * npd.itemsize:
            self.error(f"{dtype.short}{dims} needs {numel * npd.itemsize} bytes, the b64 literal holds "
                       f"{len(t.value)}", t)
        return np.frombuffer(t.value, dtype=npd).astype(dtype.numpy()).reshape(dims)

    def _from_elements(self, dtype: DType, dims: list[int], numel: int) -> np.ndarray:
        start = self.expect("[")
        items: list[_Tok] = []
        while not self.at("]"):
            t = self.next()
            if t.kind == "eof":
                self.error("unterminated constant data", start)
            items.append(t)
            if not self.accept(","):
                break
        self.expect("]", "to close the constant data")
        if len(items) != numel:
            self.error(f"{dtype.short}{dims} needs {numel} elements, found {len(items)}", start)
        if dtype == DType.STRING:
            for t in items:
                if t.kind not in ("str", "bytes"):
                    self.error(f"expected a string element, found {self.describe(t)}", t)
            arr = np.empty(len(items), dtype=object)
            arr[:] = [t.value for t in items]
            return arr.reshape(dims)
        if dtype == DType.BOOL:
            vals = []
            for t in items:
                if t.text in ("true", "1"):
                    vals.append(True)
                elif t.text in ("false", "0"):
                    vals.append(False)
                else:
                    self.error(f"expected true or false, found {self.describe(t)}", t)
            return np.array(vals, dtype=np.bool_).reshape(dims)
        for t in items:
            if t.kind != "num":
                self.error(f"expected a number, found {self.describe(t)}", t)
        if dtype.is_integer:
            for t in items:
                if not re.fullmatch(r"-?\d+", t.text):
                    self.error(f"expected an integer element of {dtype.short}, found {t.text!r}", t)
            ints = [int(t.text) for t in items]
            info = _int_range(dtype)
            for t, x in zip(items, ints):
                if not info[0] <= x <= info[1]:
                    self.error(f"{x} is out of range for {dtype.short}", t)
            if dtype.itemsize_bits >= 8:
                return np.array(ints, dtype=dtype.numpy()).reshape(dims)
            return np.array(ints, dtype=np.int64).astype(dtype.numpy()).reshape(dims)
        if dtype.is_float:
            with np.errstate(over="ignore"):
                arr = _floats_from_text([t.text for t in items], dtype)
            vals = arr.astype(np.float64) if arr.dtype.itemsize < 8 or dtype == DType.DOUBLE else arr
            for t, x in zip(items, vals.tolist()):
                if math.isinf(x) and not math.isinf(float(t.text)):
                    self.error(f"{t.text} is out of range for {dtype.short}", t)
            return arr.reshape(dims)
        if dtype in (DType.COMPLEX64, DType.COMPLEX128):
            self.error(f"{dtype.short} constants are written as b64\"...\" bytes", start)
        self.error(f"{dtype.short} constants cannot hold data", start)
        return np.empty(0)

    def sparse(self) -> SparseTensor:
        self.expect("sparse")
        shape_tok = self.tok
        shape = self.shape()
        if not all(isinstance(d, int) for d in shape.dims):
            self.error("a sparse constant's shape must be integers", shape_tok)
        self.expect("values", "(the sparse constant's values)")
        self.expect("=")
        values = self.tensor(default_name="")
        self.expect("indices", "(the sparse constant's indices)")
        self.expect("=")
        indices = self.tensor(default_name="")
        return SparseTensor(values, indices, tuple(shape.dims))  # type: ignore[arg-type]

    # -- values -----------------------------------------------------------------------------------
    def vref(self) -> Value | None:
        """A use: `%name`, `%N` or `_` (omitted)."""
        t = self.tok
        if t.kind == "ident" and t.text == "_":
            self.i += 1
            return None
        if t.kind != "vname":
            self.error(f"expected a value (%name) or _, found {self.describe(t)}")
        self.i += 1
        key = self._key(t)
        for scope in reversed(self.scopes):
            v = scope.get(key)
            if v is not None:
                return v
        self.error(f"undefined value {t.text}", t)
        return None

    @staticmethod
    def _key(t: _Tok) -> str:
        kind, s = t.value
        return "%" + s if kind == "anon" else s

    def define(self, t: _Tok, v: Value) -> None:
        key = self._key(t)
        if any(key in s for s in self.scopes):
            self.error(f"value {t.text} is already defined", t)
        self.scopes[-1][key] = v

    def new_value(self, t: _Tok) -> Value:
        kind, s = t.value
        return Value(None if kind == "anon" else s)

    @staticmethod
    def apply_value_props(v: Value, props: dict[str, Any]) -> None:
        if "doc" in props:
            doc = props.pop("doc")
            v.doc = doc if isinstance(doc, str) else str(doc)
        v.meta.update(props)

    def value_annot(self) -> tuple[Type | None, dict[str, Any]]:
        """`type [props]` or `? [props]` after a `:`."""
        t = self.type_()
        return t, self.props()

    # -- graphs -----------------------------------------------------------------------------------
    def graph(self, header: bool = True, formals: list | None = None) -> tuple[Graph, dict[str, Any], _Tok]:
        """`graph NAME? <props>? (inputs) -> (outputs) { body }`; returns graph, props, props token.

        With `header=False` the caller has read the leading keyword and name (functions).
        """
        name = ""
        if header:
            self.expect("graph")
            if self.tok.kind in ("ident", "str"):
                name = self.word("a graph name")
        if formals is not None and self.accept("["):
            while not self.at("]"):
                formals.append(self.formal())
                if not self.accept(","):
                    break
            self.expect("]", "to close the attribute list")
        ptok = self.tok
        props = self.props()
        g = Graph(name=name)
        self.scopes.append({})
        try:
            self.expect("(", "to open the graph inputs")
            while not self.at(")"):
                t = self.tok
                if t.kind != "vname":
                    self.error(f"expected a graph input (%name), found {self.describe(t)}")
                self.i += 1
                v = self.new_value(t)
                ty = None
                if self.accept(":"):
                    ty, vprops = self.value_annot()
                    self.apply_value_props(v, vprops)
                else:
                    self.apply_value_props(v, self.props())
                v.type = ty
                self.define(t, v)
                g.add_input(v)
                if not self.accept(","):
                    break
            self.expect(")", "to close the graph inputs")
            self.expect("->", "before the graph outputs")
            self.expect("(", "to open the graph outputs")
            sig_outputs: list[tuple[_Tok, Type | None, dict[str, Any]]] = []
            while not self.at(")"):
                t = self.tok
                if t.kind != "vname":
                    self.error(f"expected a graph output (%name), found {self.describe(t)}")
                self.i += 1
                ty, oprops = None, {}
                if self.accept(":"):
                    ty, oprops = self.value_annot()
                else:
                    oprops = self.props()
                sig_outputs.append((t, ty, oprops))
                if not self.accept(","):
                    break
            self.expect(")", "to close the graph outputs")
            if self.at("<"):  # properties may also follow the signature
                if props:
                    self.error("graph properties are given twice (before and after the signature)")
                ptok = self.tok
                props = self.props()
            self.expect("{", "to open the graph body")
            self.body(g)
            ret = self.expect("return", "(every graph body ends with return)")
            outs: list[Value] = []
            rtoks: list[_Tok] = []
            if self.tok.kind == "vname" or self.at("_"):
                while True:
                    rtoks.append(self.tok)
                    v = self.vref()
                    if v is None:
                        self.error("a graph output cannot be omitted (_)", rtoks[-1])
                    outs.append(v)
                    if not self.accept(","):
                        break
            self.expect("}", "to close the graph body")
            if len(rtoks) != len(sig_outputs) or any(self._key(a) != self._key(b) for a, (b, _, _) in
                                                     zip(rtoks, sig_outputs)):
                self.error("return values do not match the outputs in the graph signature", ret)
            for v, (t, ty, oprops) in zip(outs, sig_outputs):
                if ty is not None:
                    v.meta["declared_output_type"] = ty
                doc = oprops.pop("doc", None)  # (v.type stays as the body says: no copy of ty)
                if doc:
                    v.meta["output_doc"] = doc
                if oprops:
                    self.error(f"unknown graph output property {next(iter(oprops))!r}", t)
            g.outputs = outs
        finally:
            self.scopes.pop()
        return g, props, ptok

    def apply_graph_props(self, g: Graph, props: dict[str, Any], tok: _Tok, prefix: str = "") -> None:
        for k in list(props):
            if not k.startswith(prefix):
                continue
            key = k[len(prefix):]
            v = props.pop(k)
            if key == "doc":
                if not isinstance(v, str):
                    self.error("graph doc must be a string", tok)
                g.doc = v
            elif key == "metadata":
                if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
                    self.error("graph metadata must be a dictionary of strings", tok)
                g.metadata_props = dict(v)
            elif key == "name" and prefix:
                g.name = v
            elif key.startswith("meta."):
                g.meta[key[5:]] = v
            else:
                g.extra[key] = v

    def body(self, g: Graph) -> None:
        while not self.at("return"):
            t = self.tok
            if t.kind == "eof":
                self.error("unexpected end of input: missing return and '}'")
            if self.at("}"):
                self.error("missing 'return' before '}' (every graph body ends with return)")
            if t.kind == "vname" and self.peek().text == "=" and self.peek(2).kind == "ident" \
                    and self.peek(2).text in ("const", "sparse") and self.peek(3).text != "(":
                self.i += 2
                if self.tok.text == "const":
                    self.const_stmt(g, t)
                else:
                    name = t.value[1]
                    if name in g.sparse_initializers:
                        self.error(f"sparse constant {t.text} is defined twice", t)
                    sp = self.sparse()
                    if not sp.values.name:
                        sp.values.name = name
                    g.sparse_initializers[name] = sp
                continue
            self.node_stmt(g)

    def const_stmt(self, g: Graph, t: _Tok) -> None:
        self.expect("const")
        kind, s = t.value
        tensor = self.tensor()
        own_doc = self.tensor_had_doc
        if kind == "anon":
            self.error("an initializer needs a name (%name, not %N)", t)
        key = self._key(t)
        existing = self.scopes[-1].get(key)
        if existing is not None and existing.const is None and existing.producer() is None \
                and any(existing is x for x in g.inputs):
            # IR<4 style: this constant is also a graph input; the signature's type is its input type.
            v = existing
            if v.type is not None:
                v.meta["input_type"] = v.type
            v.type = None
        else:
            v = Value(s)
            self.define(t, v)
        if tensor.name is None:
            tensor.name = s
        v.const = tensor
        ty: Type | None = TensorType(tensor.dtype, tensor.shape)
        if self.accept(":"):
            ttok = self.tok
            ty, vprops = self.value_annot()
            if isinstance(ty, TensorType) and (ty.dtype != tensor.dtype or (
                    ty.shape is not None and tuple(ty.shape.dims) != tuple(tensor.shape.dims))):
                self.error(f"type {format_type(ty)} does not match the constant "
                           f"{tensor.dtype.short}{_fmt_shape(tensor.shape.dims)}", ttok)
            self.apply_value_props(v, vprops)
        if not own_doc:
            tensor.doc = v.doc  # printed once when the tensor's doc equals the value's
        g.add_initializer(v)
        v.type = ty

    def node_stmt(self, g: Graph) -> None:
        first = self.tok
        outs: list[tuple[_Tok, Value | None]] = []
        if first.kind == "vname" or (first.kind == "ident" and first.text == "_"):
            while True:
                t = self.tok
                if t.kind == "ident" and t.text == "_":
                    self.i += 1
                    outs.append((t, None))
                elif t.kind == "vname":
                    self.i += 1
                    outs.append((t, self.new_value(t)))
                else:
                    self.error(f"expected an output value (%name or _), found {self.describe(t)}")
                if not self.accept(","):
                    break
            self.expect("=", "after the node outputs")
        optok = self.tok
        if optok.kind not in ("ident", "str"):
            self.error(f"expected an operator name, found {self.describe(optok)}")
        op = self.word("an operator name")
        domain = ""
        if self.accept("::"):
            domain, op = op, self.word("an operator name after '::'")
        self.expect("(", f"after operator {op!r}")
        inputs: list[Value | None] = []
        while not self.at(")"):
            inputs.append(self.vref())
            if not self.accept(","):
                break
        self.expect(")", "to close the node inputs")
        attrs: dict[str, Attr] = {}
        if self.accept("{"):
            while not self.at("}"):
                at = self.tok
                a = self.attr()
                if a.name in attrs:
                    self.error(f"attribute {a.name!r} is given twice", at)
                attrs[a.name] = a
                if not self.accept(","):
                    break
            self.expect("}", "to close the attributes")
        ptok = self.tok
        props = self.props()
        values = [Value("") if v is None else v for _, v in outs]
        if self.accept(":"):
            k = 0
            while True:
                at = self.tok
                ty, vprops = self.value_annot()
                if k >= len(values):
                    self.error(f"more types than the node has outputs ({len(values)})", at)
                values[k].type = ty
                self.apply_value_props(values[k], vprops)
                k += 1
                if not self.accept(","):
                    break
        node = Node(op, inputs, attrs, domain=domain, outputs=values)
        self.node_toks.append((node, optok))
        name = self.prop(props, "name", str, ptok)
        node.name = name
        node.overload = self.prop(props, "overload", str, ptok, "")
        node.doc = self.prop(props, "doc", str, ptok, "")
        node.metadata_props = dict(self.prop(props, "metadata", dict, ptok, {}))
        node.meta.update(props)
        for t, v in outs:
            if v is not None:
                self.define(t, v)
        g.append(node)

    # -- attributes -------------------------------------------------------------------------------
    def formal(self) -> str | Attr:
        """A function's formal attribute: a name, or `name=default`."""
        if self.peek().text in ("=", ":", "<"):
            a = self.attr()
            if a.ref is not None:
                self.error(f"default of attribute {a.name!r} cannot be a reference")
            return a
        return self.word("an attribute name")

    def attr(self) -> Attr:
        """`name[: kind] [<doc=...>] = value` (or `= @ref` inside functions)."""
        name = self.word("an attribute name")
        tag: AttrType | None = None
        if self.accept(":"):
            tt = self.tok
            tname = self.word("an attribute kind")
            if tname not in _TAG_ATTRS:
                self.error(f"unknown attribute kind {tname!r} (known: {', '.join(_TAG_ATTRS)})", tt)
            tag = _TAG_ATTRS[tname]
        ptok = self.tok
        props = self.props()
        doc = self.prop(props, "doc", str, ptok, "")
        if props:
            self.error(f"unknown attribute property {next(iter(props))!r}", ptok)
        self.expect("=", f"after attribute name {name!r}")
        vt = self.tok
        if vt.kind == "ref":
            self.i += 1
            return Attr(name, tag if tag is not None else AttrType.UNDEFINED, None, ref=vt.value[1], doc=doc)
        kind, value = self.attr_value(tag)
        if tag is not None and tag != kind:
            value = self._coerce(value, kind, tag, vt, name)
            kind = tag
        return Attr(name, kind, value, doc=doc)

    def attr_value(self, tag: AttrType | None) -> tuple[AttrType, Any]:
        t = self.tok
        if t.kind == "num":
            self.i += 1
            if re.fullmatch(r"-?\d+", t.text):
                x = int(t.text)
                if not -(2**63) <= x < 2**63:
                    self.error(f"integer attribute value {t.text} does not fit in int64", t)
                return AttrType.INT, x
            return AttrType.FLOAT, float(t.text)
        if t.kind in ("str", "bytes"):
            self.i += 1
            return AttrType.STRING, t.value
        if t.kind == "ident":
            if t.text == "tensor":
                self.i += 1
                # "" like an imported nameless TensorProto, so export writes the same message.
                return AttrType.TENSOR, self.tensor(default_name="")
            if t.text == "graph":
                g, props, ptok = self.graph()
                self.apply_graph_props(g, props, ptok)
                return AttrType.GRAPH, g
            if t.text == "sparse":
                return AttrType.SPARSE_TENSOR, self.sparse()
            if t.text == "type":
                self.i += 1
                return AttrType.TYPE_PROTO, self.type_()
        if self.accept("["):
            items: list[tuple[AttrType, Any, _Tok]] = []
            while not self.at("]"):
                et = self.tok
                k, x = self.attr_value(None)
                if k in _LIST_OF:
                    self.error("attribute lists cannot be nested", et)
                items.append((k, x, et))
                if not self.accept(","):
                    break
            self.expect("]", "to close the attribute list")
            if not items:
                if tag is None or tag not in _LIST_OF:
                    self.error("an empty list attribute needs its kind, e.g. name: ints=[]", t)
                return tag, []  # type: ignore[return-value]
            kinds = {k for k, _, _ in items}
            if kinds <= {AttrType.INT, AttrType.FLOAT} and AttrType.FLOAT in kinds:
                return AttrType.FLOATS, [float(x) for _, x, _ in items]
            if len(kinds) != 1:
                self.error("attribute list mixes kinds of values", t)
            return _SCALAR_TO_LIST[items[0][0]], [x for _, x, _ in items]
        self.error(f"expected an attribute value, found {self.describe(t)}")
        return AttrType.UNDEFINED, None

    def _coerce(self, value: Any, kind: AttrType, tag: AttrType, tok: _Tok, name: str) -> Any:
        if kind == AttrType.INT and tag == AttrType.FLOAT:
            return float(value)
        if kind == AttrType.INTS and tag == AttrType.FLOATS:
            return [float(x) for x in value]
        if kind == tag or (kind in _LIST_OF and not value and tag in _LIST_OF):
            return value
        self.error(f"attribute {name!r} is declared {_ATTR_TAGS[tag]} but its value is {_ATTR_TAGS[kind]}", tok)

    # -- functions and models ---------------------------------------------------------------------
    def function(self) -> Function:
        # `func domain::name[formals] <props> (...) -> (...) { ... }`: reuse the graph parser by
        # reading the qualified name first.
        self.expect("func")
        first = self.word("a function name")
        domain, name = "", first
        if self.accept("::"):
            domain, name = first, self.word("a function name after '::'")
        formals: list[str | Attr] = []
        g, props, ptok = self.graph(header=False, formals=formals)
        g.name = name
        overload = self.prop(props, "overload", str, ptok, "")
        doc = self.prop(props, "doc", str, ptok, "")
        opset = self.prop(props, "opset", dict, ptok, {})
        metadata = self.prop(props, "metadata", dict, ptok, {})
        self.apply_graph_props(g, props, ptok, prefix="graph.")
        if props:
            self.error(f"unknown function property {next(iter(props))!r}", ptok)
        f = Function(domain, name, g, attributes=[a for a in formals if isinstance(a, str)],
                     attribute_defaults={a.name: a for a in formals if isinstance(a, Attr)},
                     opset_imports=opset, overload=overload, doc=doc)
        f.metadata_props = dict(metadata)
        return f

    def model(self) -> Model:
        props: dict[str, Any] = {}
        ptok = self.tok
        if self.accept("model"):
            ptok = self.tok
            props = self.props()
        if not self.at("graph"):
            self.error(f"expected 'graph', found {self.describe(self.tok)}")
        g, gprops, gtok = self.graph()
        self.apply_graph_props(g, gprops, gtok)
        functions: list[Function] = []
        while self.at("func"):
            ft = self.tok
            f = self.function()
            if any(x.key == f.key for x in functions):
                self.error(f"function {f.domain}::{f.name} is defined twice", ft)
            functions.append(f)
        if self.accept("extra"):
            etok = self.tok
            extra = self.props()
            for k in extra:
                if k in props:
                    self.error(f"property {k!r} is given twice", etok)
            props.update(extra)
        if self.tok.kind != "eof":
            self.error(f"expected 'func', 'extra' or end of input, found {self.describe(self.tok)}")
        m = Model(g, functions=functions)
        m.ir_version = self.prop(props, "ir_version", int, ptok, m.ir_version)
        m.opset_imports = dict(self.prop(props, "opset", dict, ptok, m.opset_imports))
        m.producer_name = self.prop(props, "producer", str, ptok, "")
        m.producer_version = self.prop(props, "producer_version", str, ptok, "")
        m.domain = self.prop(props, "domain", str, ptok, "")
        m.model_version = self.prop(props, "model_version", int, ptok, 0)
        m.doc = self.prop(props, "doc", str, ptok, "")
        m.metadata_props = dict(self.prop(props, "metadata", dict, ptok, {}))
        m.extra.update(props)
        # Checked here rather than left to verify(): the error can point at the node.
        fdomains = {f.domain for f in functions}
        for node, optok in self.node_toks:
            d = "" if node.domain == "ai.onnx" else node.domain
            if d not in m.opset_imports and node.domain not in fdomains:
                self.error(f"domain {node.domain!r} of {node.op_type} is not in the model's opset imports "
                           f"({m.opset_imports}); add it to model <opset={{...}}>", optok)
        return m


def _int_range(dtype: DType) -> tuple[int, int]:
    bits = dtype.itemsize_bits
    if dtype in (DType.UINT8, DType.UINT16, DType.UINT32, DType.UINT64, DType.UINT4, DType.UINT2):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def parse_model(text: str) -> Model:
    """Parse the text form into a Model. Errors are TextParseError: `line L, col C: message`.

    The `model <...>` header is optional (defaults: ir_version 10, opset {"": 17}).
    """
    return _Parser(text).model()


def parse_graph(text: str) -> Graph:
    """Parse a single `graph ... { ... }` block (as printed by `print_graph`)."""
    p = _Parser(text)
    g, props, ptok = p.graph()
    p.apply_graph_props(g, props, ptok)
    if p.tok.kind != "eof":
        p.error(f"expected end of input after the graph, found {p.describe(p.tok)}")
    return g
