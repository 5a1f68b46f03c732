"""Just enough protobuf wire format to keep weights out of memory.

Parsing an ONNX file with protobuf materialises every weight twice (file bytes, then the parsed
message), and `SerializeToString` does the same on the way out. For a model whose weights are most
of its bytes that is where time and memory go. So on load we scan the top-level structure
(ModelProto.graph -> GraphProto.initializer -> TensorProto.raw_data), cut large `raw_data` fields
out before protobuf sees the bytes, and map them straight from the file; on save we write the small
remainder with protobuf and stream the weights around it. Field numbers are ONNX's (onnx.proto3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator

# ModelProto.graph = 7; GraphProto.initializer = 5; TensorProto fields:
MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
T_DIMS, T_DATA_TYPE, T_NAME, T_RAW_DATA, T_DATA_LOCATION = 1, 2, 8, 9, 14

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return encode_varint((field << 3) | wire)


def iter_fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (field, wire type, field start, payload start, payload end) for each field."""
    pos = start
    while pos < end:
        fstart = pos
        key, pos = read_varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise WireError("field number 0")
        if wire == WIRE_VARINT:
            _, npos = read_varint(buf, pos, end)
            yield field, wire, fstart, pos, npos
            pos = npos
        elif wire == WIRE_I64:
            npos = pos + 8
            if npos > end:
                raise WireError("truncated fixed64")
            yield field, wire, fstart, pos, npos
            pos = npos
        elif wire == WIRE_I32:
            npos = pos + 4
            if npos > end:
                raise WireError("truncated fixed32")
            yield field, wire, fstart, pos, npos
            pos = npos
        elif wire == WIRE_LEN:
            length, pos = read_varint(buf, pos, end)
            npos = pos + length
            if npos > end:
                raise WireError("length-delimited field runs past the end of its message")
            yield field, wire, fstart, pos, npos
            pos = npos
        else:
            raise WireError(f"unsupported wire type {wire}")


@dataclass
class RawSlice:
    """Where one initializer's raw_data lies in the source buffer."""

    name: str
    offset: int
    length: int


def split_weights(buf, min_bytes: int = 1024) -> tuple[bytes, dict[str, RawSlice]] | None:
    """Remove large TensorProto.raw_data fields of top-level initializers from a ModelProto.

    Returns the remaining message bytes (a valid ModelProto whose cut tensors have an empty
    raw_data) and, per tensor name, where its data lies in `buf`. Returns None when nothing is
    worth cutting. Tensors are identified by name; unnamed or duplicate names are left inline.
    """
    end = len(buf)
    pieces: list[bytes | memoryview] = []
    slices: dict[str, RawSlice] = {}
    mv = memoryview(buf)
    last = 0
    for field, wire, fstart, pstart, pend in iter_fields(buf, 0, end):
        if field != MODEL_GRAPH or wire != WIRE_LEN:
            continue
        gpieces: list[bytes | memoryview] = []
        glast = pstart
        for gf, gw, gfs, gps, gpe in iter_fields(buf, pstart, pend):
            if gf != GRAPH_INITIALIZER or gw != WIRE_LEN or gpe - gps < min_bytes:
                continue  # (a tensor message smaller than min_bytes cannot hold min_bytes of data)
            name = None
            raw = None
            n_raw = 0
            for tf, tw, tfs, tps, tpe in iter_fields(buf, gps, gpe):
                if tf == T_NAME and tw == WIRE_LEN:
                    name = bytes(mv[tps:tpe]).decode("utf-8", "replace")
                elif tf == T_RAW_DATA and tw == WIRE_LEN:
                    raw = (tfs, tps, tpe)
                    n_raw += 1
            # A repeated raw_data field is legal protobuf (the last one wins); cutting one of them
            # would let another show through, so such a tensor is left for protobuf to decode.
            if raw is None or n_raw > 1 or name is None or raw[2] - raw[1] < min_bytes or name in slices:
                continue
            tfs, tps, tpe = raw
            slices[name] = RawSlice(name, tps, tpe - tps)
            # Re-emit the initializer without its raw_data field.
            body = bytes(mv[gps:tfs]) + bytes(mv[tpe:gpe])
            gpieces.append(mv[glast:gfs])
            gpieces.append(tag(GRAPH_INITIALIZER, WIRE_LEN) + encode_varint(len(body)) + body)
            glast = gpe
        if glast == pstart:
            continue
        gpieces.append(mv[glast:pend])
        gbody = b"".join(bytes(p) for p in gpieces)
        pieces.append(mv[last:fstart])
        pieces.append(tag(MODEL_GRAPH, WIRE_LEN) + encode_varint(len(gbody)) + gbody)
        last = pend
    if not slices:
        return None
    pieces.append(mv[last:end])
    return b"".join(bytes(p) for p in pieces), slices


def write_model_streaming(f: BinaryIO, model_wo_graph: bytes, graph_wo_big: bytes,
                          big: list[tuple[bytes, memoryview]]) -> int:
    """Write a ModelProto whose graph gets extra initializers streamed from buffers.

    `big` holds (serialized TensorProto without raw_data, raw bytes). Protobuf merges repeated
    fields wherever they appear in a message, so appending the initializers after the rest of the
    graph's fields gives the same message as serializing it whole. Returns bytes written.
    """
    records = []
    glen = len(graph_wo_big)
    for tbytes, raw in big:
        rlen = len(tbytes) + len(tag(T_RAW_DATA, WIRE_LEN)) + len(encode_varint(raw.nbytes)) + raw.nbytes
        head = tag(GRAPH_INITIALIZER, WIRE_LEN) + encode_varint(rlen) + tbytes + tag(T_RAW_DATA, WIRE_LEN) \
            + encode_varint(raw.nbytes)
        records.append((head, raw))
        glen += len(head) + raw.nbytes
    written = 0
    for chunk in (model_wo_graph, tag(MODEL_GRAPH, WIRE_LEN), encode_varint(glen), graph_wo_big):
        f.write(chunk)
        written += len(chunk)
    for head, raw in records:
        f.write(head)
        f.write(raw)
        written += len(head) + raw.nbytes
    return written


def write_model_spliced(f: BinaryIO, model_wo_graph: bytes, graph: bytes, raws: dict[int, memoryview]) -> int:
    """Write a ModelProto whose graph's initializers number `i` (keys of `raws`) get raw_data.

    `graph` is a serialized GraphProto in which those initializers have no raw_data; each is
    re-emitted with a raw_data field appended (protobuf accepts fields in any order), its bytes
    written straight from the buffer. Everything else is copied through in bulk, so the output is
    the complete message without ever holding it in memory. Returns bytes written.
    """
    # (body start, field end, new key+length, raw_data key+length, raw) per spliced initializer
    edits: list[tuple[int, int, bytes, bytes, memoryview]] = []
    starts: list[int] = []
    glen = len(graph)
    k = 0
    for field, wt, fstart, pstart, pend in (iter_fields(graph, 0, len(graph)) if raws else ()):
        if field != GRAPH_INITIALIZER or wt != WIRE_LEN:
            continue
        raw = raws.get(k)
        k += 1
        if raw is None:
            continue
        raw_head = tag(T_RAW_DATA, WIRE_LEN) + encode_varint(raw.nbytes)
        head = tag(GRAPH_INITIALIZER, WIRE_LEN) + encode_varint((pend - pstart) + len(raw_head) + raw.nbytes)
        edits.append((pstart, pend, head, raw_head, raw))
        starts.append(fstart)
        glen += len(head) - (pstart - fstart) + len(raw_head) + raw.nbytes
    mv = memoryview(graph)
    written = 0
    for chunk in (model_wo_graph, tag(MODEL_GRAPH, WIRE_LEN), encode_varint(glen)):
        f.write(chunk)
        written += len(chunk)
    pos = 0
    for fstart, (pstart, pend, head, raw_head, raw) in zip(starts, edits):
        for chunk in (mv[pos:fstart], head, mv[pstart:pend], raw_head, raw):
            f.write(chunk)
            written += len(chunk) if not isinstance(chunk, memoryview) else chunk.nbytes
        pos = pend
    f.write(mv[pos:])
    written += len(graph) - pos
    return written
