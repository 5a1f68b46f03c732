"""ONNX import and export: `load`, `to_onnx`, `save`.

Files from users are untrusted. Import checks: the protobuf parses; external-data paths stay inside
the model's folder (no absolute paths, no `..`, no symlinks out); declared tensor sizes agree with
the bytes that back them; every node input is defined; the graph has no cycle. Each problem is a
one-line `ModelLoadError` (or subclass).

Weights are never copied on the way through: large inline weights and external data are memory-
mapped from the file (see `wire`), small ones stay as their TensorProto until someone asks for
numpy, and export hands the original encoding back.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from . import wire
from .errors import ExternalDataError, ModelLoadError, ModelTooLargeError
from .ir import Attr, AttrType, Function, Graph, Model, Node, Value
from .tensor import ArrayTensor, SparseTensor, Tensor
from .types import DType, MapType, OptionalType, SequenceType, Shape, SparseTensorType, TensorType, Type

# Protobuf cannot hold a message of 2 GiB or more; above this, save() writes external data.
PROTOBUF_LIMIT = 2**31 - 1
_INLINE_SAVE_LIMIT = 2**31 - 2**24
# save() streams tensors of at least this many bytes from where they live; smaller ones are copied
# into the message, which costs less than splicing thousands of tiny tensors one by one.
_SAVE_DEFER_BYTES = 1 << 14


# ------------------------------------------------------------------------------------------------
# Lazy tensors
# ------------------------------------------------------------------------------------------------
class ProtoTensor(Tensor):
    """A tensor still encoded as its TensorProto; decoded on first `numpy()`."""

    __slots__ = ("proto", "_array")

    def __init__(self, proto: onnx.TensorProto) -> None:
        super().__init__(proto.name, proto.doc_string)
        self.proto = proto
        self._array: np.ndarray | None = None

    @property
    def dtype(self) -> DType:
        return DType(self.proto.data_type)

    @property
    def shape(self) -> Shape:
        return Shape(tuple(self.proto.dims))

    def numpy(self) -> np.ndarray:
        if self._array is None:
            if self.dtype == DType.STRING:
                # numpy_helper decodes strings as UTF-8 and fails on other bytes; keep those as bytes.
                arr = np.empty(len(self.proto.string_data), dtype=object)
                arr[:] = [_decode(s) for s in self.proto.string_data]
                arr = arr.reshape(tuple(self.proto.dims))
                arr.flags.writeable = False
                self._array = arr
                return arr
            try:
                arr = onnx.numpy_helper.to_array(self.proto)
            except (TypeError, ValueError, RuntimeError, NotImplementedError, OverflowError) as e:
                # Decoding is lazy, so malformed data the import checks missed surfaces here; it
                # is still the file's fault, hence a ModelLoadError rather than numpy's traceback.
                raise ModelLoadError(f"tensor {self.proto.name!r}: cannot decode its data "
                                     f"({(str(e).splitlines() or [type(e).__name__])[0]})") from None
            arr.flags.writeable = False
            self._array = arr
        return self._array


class MappedTensor(Tensor):
    """A tensor whose bytes lie in a buffer (a memory-mapped file or the loaded bytes)."""

    __slots__ = ("_dtype", "_dims", "_buf", "_offset", "_length", "meta_proto")

    def __init__(self, name: str, dtype: DType, dims: tuple[int, ...], buf: Any, offset: int, length: int,
                 meta_proto: onnx.TensorProto | None = None, doc: str = "") -> None:
        super().__init__(name, doc)
        self._dtype = dtype
        self._dims = dims
        self._buf = buf
        self._offset = offset
        self._length = length
        self.meta_proto = meta_proto  # the TensorProto without its data (keeps metadata_props etc.)

    @property
    def dtype(self) -> DType:
        return self._dtype

    @property
    def shape(self) -> Shape:
        return Shape(self._dims)

    def raw(self) -> memoryview:
        return memoryview(self._buf)[self._offset:self._offset + self._length]

    def numpy(self) -> np.ndarray:
        dt = self._dtype.numpy().newbyteorder("<")
        arr = np.frombuffer(self._buf, dtype=dt, count=int(np.prod(self._dims, dtype=np.int64)),
                            offset=self._offset)
        return arr.reshape(self._dims)


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
_FIXED_WIDTH = {d for d in DType if d.itemsize_bits in (8, 16, 32, 64, 128) and d not in (DType.STRING,)}


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Suspend the cyclic garbage collector while building or exporting a whole model.

    Import creates a few objects per node and value, all of them live; CPython's collector keeps
    rescanning that growing heap (each full collection walks all of it), which made importing a
    50k-node graph about twice as slow. Nothing collectable is produced meanwhile, so pausing
    loses nothing; the collector's previous state is restored on the way out.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load(src: str | os.PathLike | bytes | onnx.ModelProto, *, infer_shapes: bool = True) -> Model:
    """Import an ONNX model from a path, serialized bytes, or a ModelProto (never modified)."""
    with _gc_paused():
        return _load(src, infer_shapes=infer_shapes)


def _load(src: str | os.PathLike | bytes | onnx.ModelProto, *, infer_shapes: bool = True) -> Model:
    base_dir: str | None = None
    mapped: dict[str, wire.RawSlice] = {}
    buf: Any = None
    if isinstance(src, onnx.ModelProto):
        proto = src
    elif isinstance(src, (bytes, bytearray, memoryview)):
        buf = bytes(src) if not isinstance(src, bytes) else src
        proto, mapped = _parse(buf, "<bytes>")
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file")
        if path.is_dir():
            raise ModelLoadError(f"{path}: is a folder, not an ONNX file")
        base_dir = str(path.resolve().parent)
        size = path.stat().st_size
        if size == 0:
            raise ModelLoadError(f"{path}: empty file, not an ONNX model")
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        proto, mapped = _parse(buf, str(path))
    else:
        raise TypeError(f"load() takes a path, bytes or onnx.ModelProto, not {type(src).__name__}")
    if not proto.HasField("graph"):
        raise ModelLoadError("not an ONNX model: no graph (is this really an .onnx file?)")
    _check_text_fields(proto)
    _check_axis_attributes(proto)
    typed = _infer(proto) if infer_shapes else proto
    model = _Importer(base_dir, buf, mapped).model(proto, typed)
    model.base_dir = base_dir
    return model


SCAN_MIN_BYTES = 32 << 20


def _validate_top_level(buf: Any) -> None:
    """Walk the ModelProto's top-level fields (cheap) so garbage is refused as malformed rather
    than half-parsed by protobuf, which skips unknown fields."""
    for _ in wire.iter_fields(buf, 0, len(buf)):
        pass
    return None


def _parse(buf: Any, what: str) -> tuple[onnx.ModelProto, dict[str, wire.RawSlice]]:
    mapped: dict[str, wire.RawSlice] = {}
    try:
        # Below SCAN_MIN_BYTES the weights cannot dominate memory, and scanning every field in
        # Python costs more than protobuf's own parse: only validate the top level there.
        split = wire.split_weights(buf) if len(buf) >= SCAN_MIN_BYTES else _validate_top_level(buf)
    except wire.WireError as e:
        raise ModelLoadError(f"{what}: malformed protobuf ({e})") from None
    data: Any = buf
    if split is not None:
        data, mapped = split
    if len(data) > PROTOBUF_LIMIT:
        raise ModelTooLargeError(f"{what}: {len(data)} bytes of graph structure exceed protobuf's 2 GiB limit")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(bytes(data) if not isinstance(data, bytes) else data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{what}: malformed protobuf, not an ONNX model ({e})") from None
    return proto, mapped


_FIELD_PLAN: dict[Any, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {}


def _plan(desc: Any) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(singular strings, repeated strings, singular messages, repeated messages) of a message
    type, cached. Bytes fields (weights, string tensors) are left out: they may hold anything."""
    plan = _FIELD_PLAN.get(desc)
    if plan is None:
        from google.protobuf.descriptor import FieldDescriptor as F

        def rep(f: Any) -> bool:
            return getattr(f, "is_repeated", None) if hasattr(f, "is_repeated") else f.label == F.LABEL_REPEATED

        s1 = tuple(f.name for f in desc.fields if f.type == F.TYPE_STRING and not rep(f))
        sn = tuple(f.name for f in desc.fields if f.type == F.TYPE_STRING and rep(f))
        m1 = tuple(f.name for f in desc.fields if f.type == F.TYPE_MESSAGE and not rep(f))
        mn = tuple(f.name for f in desc.fields if f.type == F.TYPE_MESSAGE and rep(f))
        plan = _FIELD_PLAN[desc] = (s1, sn, m1, mn)
    return plan


def _check_text_fields(proto: onnx.ModelProto) -> None:
    """Every protobuf `string` field must be UTF-8: for invalid bytes protobuf (upb) hands back
    `bytes` instead of `str`, which would travel into names and crash far from the cause."""
    stack: list[Any] = [proto]
    while stack:
        msg = stack.pop()
        s1, sn, m1, mn = _plan(msg.DESCRIPTOR)
        for name in s1:
            if type(getattr(msg, name)) is bytes:
                raise ModelLoadError(f"malformed model: {msg.DESCRIPTOR.name}.{name} is not valid UTF-8 text")
        for name in sn:
            for v in getattr(msg, name):
                if type(v) is bytes:
                    raise ModelLoadError(f"malformed model: {msg.DESCRIPTOR.name}.{name} is not valid UTF-8 text")
        for name in m1:
            if msg.HasField(name):
                stack.append(getattr(msg, name))
        for name in mn:
            stack.extend(getattr(msg, name))


#: No tensor has 2**31 dims; onnx's shape inference reads some axis attributes as 32-bit and
#: crashes the process (SIGSEGV, onnx 1.23: LayerNormalization with axis=2**31 and a Mean output)
#: on larger ones, so such models are refused before inference sees them.
_AXIS_LIMIT = 2**31


def _check_axis_attributes(proto: onnx.ModelProto) -> None:
    """Refuse `axis`/`axes` attributes no tensor rank can make sense of (see `_AXIS_LIMIT`)."""
    def nodes(gp: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
        for n in gp.node:
            yield n
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from nodes(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        yield from nodes(g)

    def all_nodes() -> Iterator[onnx.NodeProto]:
        yield from nodes(proto.graph)
        for f in proto.functions:
            for n in f.node:
                yield n
                for a in n.attribute:
                    if a.type == onnx.AttributeProto.GRAPH:
                        yield from nodes(a.g)

    for n in all_nodes():
        if n.op_type == "Split" and n.domain in ("", "ai.onnx"):
            # onnx 1.23's Split inference indexes its outputs by num_outputs (abort on a mismatch).
            for a in n.attribute:
                if a.name == "num_outputs" and a.i != len(n.output):
                    raise ModelLoadError(f"node {n.name or n.op_type!r} (Split): num_outputs={a.i} but it has "
                                         f"{len(n.output)} outputs")
        for a in n.attribute:
            # Both fields whatever the declared type: onnx's inference reads `i` even when the
            # attribute's type says otherwise (a fuzzed model with type UNDEFINED crashed it too).
            if a.name in ("axis", "axes") and (not -_AXIS_LIMIT < a.i < _AXIS_LIMIT
                                               or any(not -_AXIS_LIMIT < v < _AXIS_LIMIT for v in a.ints)):
                raise ModelLoadError(f"node {n.name or n.op_type!r} ({n.op_type}): attribute {a.name} is out of range "
                                     f"for any tensor rank ({a.i if not a.ints else list(a.ints)})")


def _infer(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference (symbolic dims kept); the model imports untyped if inference fails."""
    for kwargs in ({"data_prop": True}, {}):
        try:
            return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, **kwargs)
        except Exception:  # inference is best-effort; a broken model still imports untyped
            continue
    return proto


class _Importer:
    def __init__(self, base_dir: str | None, buf: Any, mapped: dict[str, wire.RawSlice]) -> None:
        self.base_dir = base_dir
        self.buf = buf
        self.mapped = mapped
        self.files: dict[str, Any] = {}

    # -- model ------------------------------------------------------------------------------------
    def model(self, proto: onnx.ModelProto, typed: onnx.ModelProto) -> Model:
        types = _collect_types(typed.graph)
        graph = self.graph(proto.graph, [], types, top=True)
        m = Model(graph, ir_version=proto.ir_version,
                  opset_imports={o.domain if o.domain != "ai.onnx" else "": o.version for o in proto.opset_import},
                  producer_name=proto.producer_name, producer_version=proto.producer_version,
                  domain=proto.domain, model_version=proto.model_version, doc=proto.doc_string,
                  metadata_props={p.key: p.value for p in proto.metadata_props})
        if any(o.domain == "ai.onnx" for o in proto.opset_import):
            m.extra["ai_onnx_spelling"] = True
        typed_funcs = {(f.domain, f.name, f.overload): f for f in typed.functions}
        for fp in proto.functions:
            tf = typed_funcs.get((fp.domain, fp.name, fp.overload), fp)
            f = self.function(fp, tf)
            if f.key in m.functions:
                raise ModelLoadError(f"function {fp.domain}::{fp.name} is defined twice")
            m.functions[f.key] = f
        for fld in ("training_info", "configuration"):
            if hasattr(proto, fld) and len(getattr(proto, fld)):
                m.extra[fld] = [x.SerializeToString() for x in getattr(proto, fld)]
        return m

    def function(self, fp: onnx.FunctionProto, typed: onnx.FunctionProto) -> Function:
        types = {vi.name: vi for vi in getattr(typed, "value_info", [])}
        g = Graph(name=fp.name)
        scope: dict[str, Value] = {}
        for name in fp.input:
            v = Value(name, _type(types[name].type) if name in types else None)
            g.add_input(v)
            scope[name] = v
        self._nodes(g, fp.node, [scope], types, what=f"function {fp.name}")
        g.outputs = [self._lookup(n, [scope], f"function {fp.name} output") for n in fp.output]
        defaults = {a.name: self.attr(a, [scope]) for a in fp.attribute_proto}
        f = Function(fp.domain, fp.name, g, attributes=list(fp.attribute), attribute_defaults=defaults,
                     opset_imports={o.domain: o.version for o in fp.opset_import}, overload=fp.overload,
                     doc=fp.doc_string)
        f.metadata_props = {p.key: p.value for p in getattr(fp, "metadata_props", [])}
        g.extra["function_value_info"] = [vi.name for vi in getattr(fp, "value_info", [])]
        return f

    # -- graphs -----------------------------------------------------------------------------------
    def graph(self, gp: onnx.GraphProto, outer: list[dict[str, Value]], types: dict[str, onnx.ValueInfoProto],
              top: bool = False) -> Graph:
        g = Graph(name=gp.name, doc=gp.doc_string)
        g.metadata_props = {p.key: p.value for p in getattr(gp, "metadata_props", [])}
        scope: dict[str, Value] = {}
        where = f"graph {gp.name!r}"
        for tp in gp.initializer:
            if not tp.name:
                raise ModelLoadError(f"{where}: an initializer has no name")
            if tp.name in scope:
                raise ModelLoadError(f"{where}: initializer {tp.name!r} is defined twice")
            t = self.tensor(tp, where, mappable=top)
            v = Value(tp.name, TensorType(t.dtype, t.shape), const=t, doc=tp.doc_string)
            g.add_initializer(v)
            scope[tp.name] = v
        for vi in gp.input:
            if vi.name in scope:  # IR < 4 style: initializers listed as inputs (with defaults)
                v = scope[vi.name]
                if vi.HasField("type"):
                    v.meta["input_type"] = _type(vi.type)
                if vi.doc_string:
                    v.doc = vi.doc_string
                g.inputs.append(v)
                continue
            v = Value(vi.name, _type(vi.type) if vi.HasField("type") else None, doc=vi.doc_string)
            if any(vi.name in s for s in outer):
                raise ModelLoadError(f"{where}: input {vi.name!r} shadows a value of an enclosing graph")
            g.add_input(v)
            scope[vi.name] = v
        for sp in gp.sparse_initializer:
            name = sp.values.name
            g.sparse_initializers[name] = self.sparse(sp, where)
        chain = [scope] + outer
        self._nodes(g, gp.node, chain, types, what=where)
        outs = []
        for vi in gp.output:
            v = self._lookup(vi.name, chain, f"{where} output")
            if vi.HasField("type") and v.type is None:
                v.type = _type(vi.type)
            if vi.HasField("type"):
                v.meta["declared_output_type"] = _type(vi.type)
            elif not top:
                v.meta["declared_output_type"] = None
            if vi.doc_string:
                v.meta["output_doc"] = vi.doc_string
            outs.append(v)
        g.outputs = outs
        for vi in gp.value_info:
            v = scope.get(vi.name)
            if v is None:
                continue
            if vi.doc_string:
                v.doc = vi.doc_string
            # Exported as declared: inferred refinements stay inside lepton (see _Exporter.graph).
            v.meta["declared_type"] = _type(vi.type) if vi.HasField("type") else None
        if len(gp.quantization_annotation):
            g.extra["quantization_annotation"] = [q.SerializeToString() for q in gp.quantization_annotation]
        g.extra["declared_value_info"] = [vi.name for vi in gp.value_info]
        return g

    def _nodes(self, g: Graph, nodeps, chain: list[dict[str, Value]], types: dict[str, onnx.ValueInfoProto],
               what: str) -> None:
        scope = chain[0]
        outer = chain[1:]
        fields = onnx.NodeProto.DESCRIPTOR.fields_by_name  # (hasattr on upb message classes is False)
        has_overload = "overload" in fields
        has_meta = "metadata_props" in fields
        has_devcfg = "device_configurations" in fields
        # This loop runs once per node of the model: it avoids per-node work that is only needed
        # in rare cases (error labels, outer-scope checks when there is no outer scope, empty
        # metadata), since 50k-node graphs must import in about the time onnx takes to parse them.
        # Pass 1: create nodes and their outputs, so inputs can be resolved regardless of order.
        made: list[tuple[Node, onnx.NodeProto]] = []
        for k, np_ in enumerate(nodeps):
            outs = []
            for oname in np_.output:
                if oname == "":
                    outs.append(Value(""))  # an omitted optional output
                    continue
                if oname in scope or (outer and any(oname in s for s in outer)):
                    raise ModelLoadError(f"{what}: value {oname!r} is defined twice (again by node "
                                         f"{np_.name or np_.op_type + '#' + str(k)!r})")
                vi = types.get(oname)
                v = Value(oname, _type_cached(vi.type) if vi is not None and vi.HasField("type") else None)
                scope[oname] = v
                outs.append(v)
            domain = np_.domain
            name = np_.name
            node = Node(np_.op_type, (), None, domain=domain if domain != "ai.onnx" else "",
                        outputs=outs, name=name or None, overload=np_.overload if has_overload else "",
                        doc=np_.doc_string)
            if domain == "ai.onnx":
                node.meta["ai_onnx_spelling"] = True
            if not name and np_.HasField("name"):
                node.meta["empty_name"] = True
            if has_meta and len(np_.metadata_props):
                node.metadata_props = {p.key: p.value for p in np_.metadata_props}
            if has_devcfg and len(np_.device_configurations):
                node.meta["device_configurations"] = [d.SerializeToString() for d in np_.device_configurations]
            made.append((node, np_))
        # Pass 2: connect inputs, convert attributes (subgraphs see this whole scope), append.
        lookup = self._lookup
        # Nodes are appended in file order, so a producer that is not yet in any graph is a node
        # of this graph further down: the file is not topologically sorted (or has a cycle).
        # Checking that here replaces a separate `is_sorted` walk over the whole graph.
        in_order = True
        for node, np_ in made:
            ins = []
            for n in np_.input:
                if n == "":
                    ins.append(None)
                    continue
                v = scope.get(n)
                if v is None:  # outer scope, or undefined (the error names the node)
                    v = lookup(n, chain, f"{what}: node {np_.name or np_.op_type!r}")
                elif in_order and v._producer is not None and v._producer.graph is None:
                    in_order = False
                ins.append(v)
            node.set_inputs(ins)
            if len(np_.attribute):
                for a in np_.attribute:
                    node.attrs[a.name] = self.attr(a, chain)
                if in_order:
                    for sub in node.subgraphs():  # uses from inside subgraphs count as well
                        for inner in sub.all_nodes():
                            for v in inner.inputs:
                                if v is not None and v._producer is not None and v._producer.graph is None:
                                    in_order = False
            g.append(node)
        if not in_order:
            g.sort()  # raises GraphCycleError for a cycle

    @staticmethod
    def _lookup(name: str, chain: list[dict[str, Value]], what: str) -> Value:
        for s in chain:
            v = s.get(name)
            if v is not None:
                return v
        raise ModelLoadError(f"{what}: input {name!r} is not defined anywhere")

    # -- attributes -------------------------------------------------------------------------------
    def attr(self, a: onnx.AttributeProto, chain: list[dict[str, Value]]) -> Attr:
        t = AttrType(a.type)
        if a.ref_attr_name:
            return Attr(a.name, t, None, ref=a.ref_attr_name, doc=a.doc_string)
        if t == AttrType.FLOAT:
            val: Any = a.f
        elif t == AttrType.INT:
            val = a.i
        elif t == AttrType.STRING:
            val = _decode(a.s)
        elif t == AttrType.TENSOR:
            val = self.tensor(a.t, f"attribute {a.name!r}")
        elif t == AttrType.GRAPH:
            val = self.graph(a.g, chain, _collect_types(a.g))
        elif t == AttrType.FLOATS:
            val = list(a.floats)
        elif t == AttrType.INTS:
            val = list(a.ints)
        elif t == AttrType.STRINGS:
            val = [_decode(s) for s in a.strings]
        elif t == AttrType.TENSORS:
            val = [self.tensor(x, f"attribute {a.name!r}") for x in a.tensors]
        elif t == AttrType.GRAPHS:
            val = [self.graph(x, chain, _collect_types(x)) for x in a.graphs]
        elif t == AttrType.SPARSE_TENSOR:
            val = self.sparse(a.sparse_tensor, f"attribute {a.name!r}")
        elif t == AttrType.SPARSE_TENSORS:
            val = [self.sparse(x, f"attribute {a.name!r}") for x in a.sparse_tensors]
        elif t == AttrType.TYPE_PROTO:
            val = _type(a.tp)
        elif t == AttrType.TYPE_PROTOS:
            val = [_type(x) for x in a.type_protos]
        else:
            raise ModelLoadError(f"attribute {a.name!r} has no type")
        return Attr(a.name, t, val, doc=a.doc_string)

    # -- tensors ----------------------------------------------------------------------------------
    def tensor(self, tp: onnx.TensorProto, where: str, mappable: bool = False) -> Tensor:
        """Wrap a TensorProto. `mappable`: it is a top-level initializer, the only tensors the wire
        scanner cuts; any other tensor (a Constant's value, a subgraph initializer, sparse values)
        may share such a name and must keep its own data."""
        try:
            dtype = DType(tp.data_type)
        except ValueError:
            raise ModelLoadError(f"{where}: tensor {tp.name!r} has unknown element type {tp.data_type}") from None
        if dtype == DType.UNDEFINED:
            raise ModelLoadError(f"{where}: tensor {tp.name!r} has no element type (UNDEFINED)")
        if tp.HasField("segment"):
            raise ModelLoadError(f"{where}: tensor {tp.name!r} is segmented (TensorProto.segment), which "
                                 "neither ONNX Runtime nor Lepton reads")
        dims = tuple(tp.dims)
        if any(d < 0 for d in dims):
            raise ModelLoadError(f"{where}: tensor {tp.name!r} has a negative dimension {list(dims)}")
        numel = 1
        for d in dims:
            numel *= d
        nbytes = (numel * dtype.itemsize_bits + 7) // 8
        if tp.data_location == onnx.TensorProto.EXTERNAL:
            return self._external(tp, dtype, dims, nbytes, where)
        sl = self.mapped.get(tp.name) if mappable else None
        if sl is not None and not tp.raw_data and dtype in _FIXED_WIDTH and self.buf is not None:
            if sl.length != nbytes:
                raise ModelTooLargeError(f"{where}: tensor {tp.name!r} declares shape {list(dims)} "
                                         f"({nbytes} bytes) but holds {sl.length} bytes")
            return MappedTensor(tp.name, dtype, dims, self.buf, sl.offset, sl.length, meta_proto=_own(tp),
                                doc=tp.doc_string)
        if sl is not None and not tp.raw_data:
            # Cut out by the scanner but not mappable (e.g. a packed 4-bit type): put it back.
            tp = _with_raw(tp, bytes(memoryview(self.buf)[sl.offset:sl.offset + sl.length]))
        have = _stored_elements(tp, dtype)
        if have is not None and have != numel and not (have == 0 and numel == 0):
            raise ModelTooLargeError(f"{where}: tensor {tp.name!r} declares shape {list(dims)} "
                                     f"({numel} elements) but holds {have}")
        return ProtoTensor(_own(tp))

    def sparse(self, sp: onnx.SparseTensorProto, where: str) -> SparseTensor:
        return SparseTensor(self.tensor(sp.values, where), self.tensor(sp.indices, where), tuple(sp.dims))

    def _external(self, tp: onnx.TensorProto, dtype: DType, dims: tuple[int, ...], nbytes: int,
                  where: str) -> Tensor:
        info = {e.key: e.value for e in tp.external_data}
        loc = info.get("location", "")
        if self.base_dir is None:
            raise ExternalDataError(f"{where}: tensor {tp.name!r} uses external data {loc!r}, which needs the "
                                    "model to be loaded from a file path")
        path = _safe_external_path(self.base_dir, loc, tp.name, where)
        try:
            offset = int(info.get("offset", "0") or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            raise ExternalDataError(f"{where}: tensor {tp.name!r} has a non-numeric external-data offset or length") \
                from None
        fsize = os.path.getsize(path)
        if offset < 0 or (length is not None and length < 0):
            raise ExternalDataError(f"{where}: tensor {tp.name!r} has a negative external-data offset or length")
        if length is None:
            length = nbytes
        if dtype in _FIXED_WIDTH and length != nbytes:
            raise ModelTooLargeError(f"{where}: tensor {tp.name!r} declares shape {list(dims)} ({nbytes} bytes) "
                                     f"but its external data is {length} bytes")
        if offset + length > fsize:
            raise ExternalDataError(f"{where}: external data of {tp.name!r} ({offset}+{length} bytes) runs past "
                                    f"the end of {os.path.basename(path)} ({fsize} bytes)")
        if dtype not in _FIXED_WIDTH:
            with open(path, "rb") as f:
                f.seek(offset)
                return ProtoTensor(_with_raw(tp, f.read(length)))
        buf = self.files.get(path)
        if buf is None:
            if fsize == 0:
                buf = b""
            else:
                with open(path, "rb") as f:
                    buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self.files[path] = buf
        meta = onnx.TensorProto()
        meta.CopyFrom(tp)
        meta.ClearField("external_data")
        meta.ClearField("data_location")
        return MappedTensor(tp.name, dtype, dims, buf, offset, length, meta_proto=meta, doc=tp.doc_string)


def _safe_external_path(base_dir: str, loc: str, name: str, where: str) -> str:
    """Resolve an external-data location, refusing anything that leaves the model's folder."""
    if not loc:
        raise ExternalDataError(f"{where}: tensor {name!r} has external data without a location")
    if "\x00" in loc:
        raise ExternalDataError(f"{where}: external-data location of {name!r} contains a NUL byte")
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
        raise ExternalDataError(f"{where}: external-data location {loc!r} of {name!r} is an absolute path; "
                                "only paths inside the model's folder are allowed")
    parts = loc.replace("\\", "/").split("/")
    if ".." in parts:
        raise ExternalDataError(f"{where}: external-data location {loc!r} of {name!r} leaves the model's "
                                "folder ('..')")
    base = os.path.realpath(base_dir)
    full = os.path.realpath(os.path.join(base, loc))
    if os.path.commonpath([base, full]) != base:
        raise ExternalDataError(f"{where}: external-data location {loc!r} of {name!r} resolves outside the "
                                "model's folder (symbolic link)")
    if not os.path.isfile(full):
        raise ExternalDataError(f"{where}: external-data file {loc!r} of {name!r} does not exist")
    return full


def _own(tp: onnx.TensorProto) -> onnx.TensorProto:
    """A standalone copy: a sub-message keeps its whole parsed model alive (one protobuf arena),
    so holding tensors by reference would keep every node's protobuf in memory after import."""
    out = onnx.TensorProto()
    out.CopyFrom(tp)
    return out


def _with_raw(tp: onnx.TensorProto, raw: bytes) -> onnx.TensorProto:
    out = onnx.TensorProto()
    out.CopyFrom(tp)
    out.ClearField("external_data")
    out.data_location = onnx.TensorProto.DEFAULT
    out.raw_data = raw
    return out


def _stored_elements(tp: onnx.TensorProto, dtype: DType) -> int | None:
    """How many elements the proto actually holds (None when it cannot be told cheaply)."""
    if dtype == DType.STRING:
        return len(tp.string_data)  # strings never live in raw_data (onnx ignores it for them)
    if tp.HasField("raw_data") or tp.raw_data:
        bits = dtype.itemsize_bits
        if not bits:
            return None
        if bits < 8:
            # Packed sub-byte types: the bytes hold ceil(numel * bits / 8); report the element
            # count that byte length stands for when it is exact for the shape, else the raw count
            # (which then disagrees with the shape and is refused).
            numel = 1
            for d in tp.dims:
                numel *= d
            return numel if len(tp.raw_data) == (numel * bits + 7) // 8 else len(tp.raw_data) * 8 // bits
        return len(tp.raw_data) * 8 // bits
    fld = onnx.helper.tensor_dtype_to_field(dtype.value) if dtype != DType.UNDEFINED else None
    if fld is None:
        return None
    n = len(getattr(tp, fld))
    if dtype in (DType.COMPLEX64, DType.COMPLEX128):
        return n // 2
    if dtype.itemsize_bits < 8 and dtype not in (DType.STRING,):
        return None
    if dtype in (DType.FLOAT16, DType.BFLOAT16) or dtype.itemsize_bits == 8 and dtype.is_float:
        return n
    return n


def _decode(b: bytes) -> str | bytes:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b


def _collect_types(gp: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    types: dict[str, onnx.ValueInfoProto] = {}
    for vi in list(gp.value_info) + list(gp.output) + list(gp.input):
        if vi.HasField("type"):
            types.setdefault(vi.name, vi)
    return types


_TYPE_CACHE: dict[bytes, Type | None] = {}


def _type_cached(tp: onnx.TypeProto) -> Type | None:
    """`_type`, memoised on the serialized TypeProto: models repeat a few types over thousands of
    values, and types are immutable, so values may share one object."""
    key = tp.SerializeToString()
    t = _TYPE_CACHE.get(key, _MISSING)
    if t is _MISSING:
        t = _type(tp)
        if len(_TYPE_CACHE) > 4096:  # bounded: a model with ever-new symbolic dims must not grow it
            _TYPE_CACHE.clear()
        _TYPE_CACHE[key] = t
    return t  # type: ignore[return-value]


_MISSING: Any = object()


def _type(tp: onnx.TypeProto) -> Type | None:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        tt = tp.tensor_type
        return TensorType(_dtype(tt.elem_type), _shape(tt.shape) if tt.HasField("shape") else None)
    if kind == "sparse_tensor_type":
        tt = tp.sparse_tensor_type
        return SparseTensorType(_dtype(tt.elem_type), _shape(tt.shape) if tt.HasField("shape") else None)
    if kind == "sequence_type":
        return SequenceType(_type(tp.sequence_type.elem_type) if tp.sequence_type.HasField("elem_type") else None)
    if kind == "optional_type":
        return OptionalType(_type(tp.optional_type.elem_type) if tp.optional_type.HasField("elem_type") else None)
    if kind == "map_type":
        mt = tp.map_type
        return MapType(_dtype(mt.key_type), _type(mt.value_type) if mt.HasField("value_type") else None)
    return None


def _dtype(code: int) -> DType:
    try:
        return DType(code)
    except ValueError:
        raise ModelLoadError(f"unknown element type code {code}") from None


def _shape(sp: onnx.TensorShapeProto) -> Shape:
    dims = []
    for d in sp.dim:
        w = d.WhichOneof("value")
        if w == "dim_value":
            if d.dim_value < 0:
                dims.append(None)  # ONNX uses -1 for unknown in some exporters
            else:
                dims.append(d.dim_value)
        elif w == "dim_param":
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return Shape(dims)


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------
def to_onnx(model: Model) -> onnx.ModelProto:
    """Export to an onnx.ModelProto (weights are copied into the message)."""
    with _gc_paused():
        return _Exporter(defer=None).model(model)


def save(model: Model, path: str | os.PathLike, *, external_data: bool | None = None) -> None:
    """Write `model` to `path` atomically (temp file + rename; an interrupted save leaves nothing).

    Weights are streamed from wherever they live without building the whole message in memory.
    When the model's weights reach protobuf's 2 GiB limit (or `external_data=True`), they go to
    `<file>.data` beside it, as ONNX external data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exp = _Exporter(defer=_SAVE_DEFER_BYTES)
    with _gc_paused():
        proto = exp.model(model)
    total = sum(r.nbytes for _, r in exp.deferred)
    use_ext = external_data if external_data is not None else total + proto.ByteSize() >= _INLINE_SAVE_LIMIT
    tmp_files: list[str] = []
    try:
        if use_ext:
            data_name = path.name + ".data"
            fd, tmp_data = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".data")
            tmp_files.append(tmp_data)
            _default_mode(fd)
            with os.fdopen(fd, "wb") as f:
                offset = 0
                for tp, raw in exp.deferred:
                    pad = (-offset) % 64  # 64-byte alignment lets consumers map tensors directly
                    f.write(b"\0" * pad)
                    offset += pad
                    _write_holey(f, raw)
                    tp.data_location = onnx.TensorProto.EXTERNAL
                    del tp.external_data[:]
                    for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(raw.nbytes))):
                        e = tp.external_data.add()
                        e.key, e.value = k, v
                    offset += raw.nbytes
                f.truncate(offset)  # a trailing hole still counts towards the file's size
            fd, tmp_model = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".onnx")
            tmp_files.append(tmp_model)
            _default_mode(fd)
            with os.fdopen(fd, "wb") as f:
                f.write(proto.SerializeToString())
            os.replace(tmp_data, path.parent / data_name)
            os.replace(tmp_model, path)
            return
        # Stream: serialize the graph with the big initializers still empty, then splice each one's
        # raw_data into its place while writing. Initializer order is kept (the file holds the same
        # message as the exported proto), and nothing is copied out of the message: moving tensors
        # out of the repeated field and back cost more than the rest of saving a 50k-node graph.
        graph = proto.graph
        deferred = {tp.name: raw for tp, raw in exp.deferred}
        by_index = {i: deferred[tp.name] for i, tp in enumerate(graph.initializer) if tp.name in deferred} \
            if deferred else {}
        gbytes = graph.SerializeToString()
        proto.ClearField("graph")
        mbytes = proto.SerializeToString()
        fd, tmp_model = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".onnx")
        tmp_files.append(tmp_model)
        _default_mode(fd)
        with os.fdopen(fd, "wb") as f:
            wire.write_model_spliced(f, mbytes, gbytes, by_index)
        os.replace(tmp_model, path)
    finally:
        for t in tmp_files:
            if os.path.exists(t):
                os.unlink(t)


_HOLE_CHUNK = 1 << 22


def _write_holey(f: Any, raw: memoryview) -> None:
    """Write `raw`, seeking over all-zero 4 MiB chunks instead of writing them.

    On file systems with sparse files the zeros then cost no disk and no write time (a >2 GB model
    of zero-initialised state would otherwise take tens of seconds to save); the caller truncates
    the file to its full length so a trailing hole still reads back as zeros.
    """
    raw = raw.cast("B") if raw.format != "B" or raw.ndim != 1 else raw
    n = raw.nbytes
    pos = 0
    while pos < n:
        chunk = raw[pos:pos + _HOLE_CHUNK]
        if len(chunk) == _HOLE_CHUNK and not np.frombuffer(chunk, np.uint64).any():
            f.seek(len(chunk), os.SEEK_CUR)
        else:
            f.write(chunk)
        pos += len(chunk)


def _default_mode(fd: int) -> None:
    """mkstemp makes 0600 files; a saved model gets the mode a plain open() would give it."""
    umask = None
    try:  # read it without changing it: os.umask() would race with other threads creating files
        with open("/proc/self/status") as st:
            umask = next((int(line.split()[1], 8) for line in st if line.startswith("Umask:")), None)
    except OSError:
        pass
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)


class _Exporter:
    def __init__(self, defer: int | None) -> None:
        # With `defer`, large top-level initializers are emitted without data; `deferred` holds
        # (TensorProto in the message, raw bytes) for the caller to stream.
        self.defer = defer
        self.deferred: list[tuple[onnx.TensorProto, memoryview]] = []
        self.top = True

    def model(self, m: Model) -> onnx.ModelProto:
        p = onnx.ModelProto()
        p.ir_version = m.ir_version
        for dom, ver in m.opset_imports.items():
            o = p.opset_import.add()
            o.domain = "ai.onnx" if (dom == "" and m.extra.get("ai_onnx_spelling")) else dom
            o.version = ver
        if m.producer_name:
            p.producer_name = m.producer_name
        if m.producer_version:
            p.producer_version = m.producer_version
        if m.domain:
            p.domain = m.domain
        if m.model_version:
            p.model_version = m.model_version
        if m.doc:
            p.doc_string = m.doc
        for k, v in m.metadata_props.items():
            e = p.metadata_props.add()
            e.key, e.value = k, v
        self.top = True
        self.graph(m.graph, gp=p.graph)  # built in place: copying a graph copies all its weights
        # Appending copies; keep the deferred protos pointing at the message's own objects.
        if self.deferred:
            names = {tp.name: raw for tp, raw in self.deferred}
            self.deferred = [(tp, names[tp.name]) for tp in p.graph.initializer if tp.name in names]
        for f in m.functions.values():
            p.functions.append(self.function(f))
        for fld, items in (("training_info", onnx.TrainingInfoProto),):
            for b in m.extra.get(fld, []):
                x = items()
                x.ParseFromString(b)
                getattr(p, fld).append(x)
        if m.extra.get("configuration") and hasattr(p, "configuration"):
            cls = type(p.configuration.add())
            del p.configuration[:]
            for b in m.extra["configuration"]:
                x = cls()
                x.ParseFromString(b)
                p.configuration.append(x)
        return p

    def function(self, f: Function) -> onnx.FunctionProto:
        fp = onnx.FunctionProto()
        fp.domain, fp.name = f.domain, f.name
        if f.overload:
            fp.overload = f.overload
        if f.doc:
            fp.doc_string = f.doc
        names = _Namer(f.graph)
        fp.input.extend(names(v) for v in f.graph.inputs)
        fp.output.extend(names(v) for v in f.graph.outputs)
        fp.attribute.extend(f.attributes)
        for a in f.attribute_defaults.values():
            fp.attribute_proto.append(self.attr(a, names))
        for dom, ver in f.opset_imports.items():
            o = fp.opset_import.add()
            o.domain, o.version = dom, ver
        for n in f.graph:
            self.node(n, names, fp.node.add())
        declared = set(f.graph.extra.get("function_value_info", []))
        if declared:
            for v in f.graph.values():
                if v.name in declared and v.type is not None:
                    fp.value_info.append(_value_info(names(v), v.type, v.doc))
        for k, v in f.metadata_props.items():
            e = fp.metadata_props.add()
            e.key, e.value = k, v
        return fp

    def graph(self, g: Graph, parent: "_Namer | None" = None, gp: onnx.GraphProto | None = None) -> onnx.GraphProto:
        """Export `g` into `gp` (a new GraphProto when None)."""
        top, self.top = self.top, False
        gp = onnx.GraphProto() if gp is None else gp
        gp.name = g.name
        if g.doc:
            gp.doc_string = g.doc
        names = _Namer(g, parent)
        for v in g.initializers.values():
            self.tensor(v.const, names(v), defer=top, out=gp.initializer.add())
        for name, sp in g.sparse_initializers.items():
            gp.sparse_initializer.append(self.sparse(sp))
        for v in g.inputs:
            t = v.meta.get("input_type", v.type) if v.const is not None else v.type
            gp.input.append(_value_info(names(v), t, v.doc if v.const is None else v.doc))
        for n in g:
            self.node(n, names, gp.node.add())  # filled in place: append() would copy each node
        for v in g.outputs:
            # Subgraph outputs keep what the source declared (often nothing): see value_info below.
            t = _declared(v, "declared_output_type", v.type if top else None)
            gp.output.append(_value_info(names(v), t, v.meta.get("output_doc", "")))
        io = {id(v) for v in g.inputs} | {id(v) for v in g.outputs}
        declared = set(g.extra.get("declared_value_info", []))
        # Only values the source model declared get value_info. Inferred types are for passes;
        # exporting them would hand runtimes onnx's guesses (wrong for some If/Loop outputs), which
        # ONNX Runtime then trusts over its own inference.
        for n in (g if declared else ()):
            for o in n.outputs:
                if id(o) in io or _empty_output(o) or not o.name or o.name not in declared:
                    continue
                gp.value_info.append(_value_info(names(o), _declared(o, "declared_type", None), o.doc))
        for b in g.extra.get("quantization_annotation", []):
            q = gp.quantization_annotation.add()
            q.ParseFromString(b)
        for k, v in g.metadata_props.items():
            e = gp.metadata_props.add()
            e.key, e.value = k, v
        return gp

    def node(self, n: Node, names: "_Namer", p: onnx.NodeProto | None = None) -> onnx.NodeProto:
        """Export `n` into `p` (a new NodeProto when None)."""
        p = onnx.NodeProto() if p is None else p
        p.op_type = n.op_type
        if n.domain or n.meta.get("ai_onnx_spelling"):
            p.domain = "ai.onnx" if (not n.domain and n.meta.get("ai_onnx_spelling")) else n.domain
        if n.name or n.meta.get("empty_name"):  # an explicitly empty name is kept as it came
            p.name = n.name or ""
        if n.overload:
            p.overload = n.overload
        if n.doc:
            p.doc_string = n.doc
        p.input.extend("" if v is None else names(v) for v in n.inputs)
        p.output.extend("" if _empty_output(o) else names(o) for o in n.outputs)
        for a in n.attrs.values():
            p.attribute.append(self.attr(a, names))
        for k, v in n.metadata_props.items():
            e = p.metadata_props.add()
            e.key, e.value = k, v
        for b in n.meta.get("device_configurations", []):
            d = p.device_configurations.add()
            d.ParseFromString(b)
        return p

    def attr(self, a: Attr, names: "_Namer") -> onnx.AttributeProto:
        p = onnx.AttributeProto()
        p.name = a.name
        p.type = int(a.type)
        if a.doc:
            p.doc_string = a.doc
        if a.ref is not None:
            p.ref_attr_name = a.ref
            return p
        t, v = a.type, a.value
        if t == AttrType.FLOAT:
            p.f = v
        elif t == AttrType.INT:
            p.i = v
        elif t == AttrType.STRING:
            p.s = v.encode() if isinstance(v, str) else v
        elif t == AttrType.TENSOR:
            p.t.CopyFrom(self.tensor(v, v.name))
        elif t == AttrType.GRAPH:
            p.g.CopyFrom(self.graph(v, names))
        elif t == AttrType.FLOATS:
            p.floats.extend(v)
        elif t == AttrType.INTS:
            p.ints.extend(v)
        elif t == AttrType.STRINGS:
            p.strings.extend(s.encode() if isinstance(s, str) else s for s in v)
        elif t == AttrType.TENSORS:
            p.tensors.extend(self.tensor(x, x.name) for x in v)
        elif t == AttrType.GRAPHS:
            p.graphs.extend(self.graph(x, names) for x in v)
        elif t == AttrType.SPARSE_TENSOR:
            p.sparse_tensor.CopyFrom(self.sparse(v))
        elif t == AttrType.SPARSE_TENSORS:
            p.sparse_tensors.extend(self.sparse(x) for x in v)
        elif t == AttrType.TYPE_PROTO:
            p.tp.CopyFrom(_type_proto(v))
        elif t == AttrType.TYPE_PROTOS:
            p.type_protos.extend(_type_proto(x) for x in v)
        return p

    def sparse(self, s: SparseTensor) -> onnx.SparseTensorProto:
        p = onnx.SparseTensorProto()
        p.values.CopyFrom(self.tensor(s.values, s.values.name))
        p.indices.CopyFrom(self.tensor(s.indices, s.indices.name))
        p.dims.extend(s.dims)
        return p

    def tensor(self, t: Tensor, name: str | None, defer: bool = False,
               out: onnx.TensorProto | None = None) -> onnx.TensorProto:
        """Export `t` into `out` (a new TensorProto when None); returns the filled proto."""
        if isinstance(t, ProtoTensor):
            p = onnx.TensorProto() if out is None else out
            p.CopyFrom(t.proto)
        elif isinstance(t, MappedTensor):
            p = onnx.TensorProto() if out is None else out
            if t.meta_proto is not None:
                p.CopyFrom(t.meta_proto)
            else:
                p.dims.extend(t.shape.dims)
                p.data_type = int(t.dtype)
            if defer and self.defer is not None and t.nbytes >= self.defer:
                self.deferred.append((p, t.raw()))
                p.name = name or ""
                return p
            p.raw_data = t.raw().tobytes()
        else:
            arr = t.numpy()
            if defer and self.defer is not None and t.nbytes >= self.defer and arr.dtype != object \
                    and t.dtype.itemsize_bits >= 8:
                p = onnx.TensorProto() if out is None else out
                p.dims.extend(t.shape.dims)
                p.data_type = int(t.dtype)
                a = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
                self.deferred.append((p, memoryview(a).cast("B")))
                p.name = name or ""
                return p
            p = onnx.numpy_helper.from_array(np.asarray(arr), name or "")
            if p.data_type != int(t.dtype):
                p = _retyped(arr, t.dtype)
            if out is not None:
                out.CopyFrom(p)
                p = out
        if name is not None:
            if name or p.name:  # assigning "" would add an empty name field the source did not have
                p.name = name
        elif t.name:
            p.name = t.name
        if t.doc:
            p.doc_string = t.doc
        return p


def _declared(v: Value, key: str, fallback: Type | None) -> Type | None:
    """The type the source declared for `v`, unless a pass has since changed the value's element
    type or rank (e.g. fp16): then the declaration is stale and `fallback` is used instead."""
    if key not in v.meta:
        return v.type if fallback is not None else None
    t = v.meta[key]
    cur = v.type
    if isinstance(t, TensorType) and isinstance(cur, TensorType):
        if t.dtype != cur.dtype or (t.shape is not None and cur.shape is not None and len(t.shape) != len(cur.shape)):
            return fallback
    return t


def _retyped(arr: np.ndarray, dtype: DType) -> onnx.TensorProto:
    return onnx.helper.make_tensor("", int(dtype), arr.shape, arr.ravel().tolist())


def _empty_output(v: Value) -> bool:
    return v.name == "" and v.num_uses() == 0 and not v.is_graph_output()


class _Namer:
    """Gives every value a name unique in its graph scope, keeping existing names.

    A subgraph's namer chains to its parent's, so outer-scope references get the name the
    enclosing graph gave them, and local names never shadow outer ones.
    """

    def __init__(self, g: Graph, parent: "_Namer | None" = None) -> None:
        self.parent = parent
        # One set for the whole model: ONNX Runtime wants every name unique across a graph and all
        # its subgraphs, so a name generated in one branch must not reappear in another or outside.
        self.taken: set[str] = parent.taken if parent is not None else set()
        self.names: dict[int, str] = {}
        self.counter = 0
        for v in _defined(g):
            if v.name and v.name not in self.taken:
                self.names[id(v)] = v.name
                self.taken.add(v.name)

    def __call__(self, v: Value) -> str:
        namer: _Namer | None = self
        while namer is not None:
            got = namer.names.get(id(v))
            if got is not None:
                return got
            namer = namer.parent
        base = v.name or "v"
        name = base
        while name in self.taken:
            self.counter += 1
            name = f"{base}__{self.counter}"
        self.taken.add(name)
        self.names[id(v)] = name
        return name


def _defined(g: Graph):
    yield from g.inputs
    yield from g.initializers.values()
    for n in g:
        yield from n.outputs


def _value_info(name: str, t: Type | None, doc: str = "") -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto()
    vi.name = name
    if t is not None:
        vi.type.CopyFrom(_type_proto(t))
    if doc:
        vi.doc_string = doc
    return vi


def _type_proto(t: Type) -> onnx.TypeProto:
    tp = onnx.TypeProto()
    if isinstance(t, TensorType):
        tp.tensor_type.elem_type = int(t.dtype)
        if t.shape is not None:
            _fill_shape(tp.tensor_type.shape, t.shape)
    elif isinstance(t, SparseTensorType):
        tp.sparse_tensor_type.elem_type = int(t.dtype)
        if t.shape is not None:
            _fill_shape(tp.sparse_tensor_type.shape, t.shape)
    elif isinstance(t, SequenceType):
        tp.sequence_type.SetInParent()
        if t.elem is not None:
            tp.sequence_type.elem_type.CopyFrom(_type_proto(t.elem))
    elif isinstance(t, OptionalType):
        tp.optional_type.SetInParent()
        if t.elem is not None:
            tp.optional_type.elem_type.CopyFrom(_type_proto(t.elem))
    elif isinstance(t, MapType):
        tp.map_type.key_type = int(t.key)
        if t.value is not None:
            tp.map_type.value_type.CopyFrom(_type_proto(t.value))
    return tp


def _fill_shape(sp: onnx.TensorShapeProto, shape: Shape) -> None:
    sp.SetInParent()
    for d in shape.dims:
        dim = sp.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        elif isinstance(d, str):
            dim.dim_param = d
