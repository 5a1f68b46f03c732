"""Serving a Lepton artifact over the Open Inference Protocol v2 (KServe / Triton REST), and its client.

`lepton-serve ARTIFACT` serves any artifact `lepton.load` opens (single- or multi-stage) from one
process on the standard library's `ThreadingHTTPServer`, bound to 127.0.0.1 unless `--host` says
otherwise (then only with a token). `--engine ray --replicas N` serves the same routes through Ray
Serve (lepton.serve_ray, the `serve-ray` extra). docs/serving.md has the protocol subset and limits.

The protocol logic lives in `InferenceService.handle` (method, path, headers, body -> status,
headers, body), shared by both engines; the HTTP servers are glue around it. `InferenceClient` is
the Python client (binary tensor data by default); every failure it meets is a one-line
`ServeError` (a LeptonError): 4xx `ServeRequestError`, 5xx `ServeServerError`, refused / reset /
timed-out / truncated `ServeConnectionError`, a malformed answer `ServeProtocolError`.
"""

from __future__ import annotations

import argparse
import hmac
import http.client
import http.server
import ipaddress
import itertools
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lepton_ir import LeptonError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_REQUEST_BYTES = 64 << 20  # 64 MiB
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_IO_TIMEOUT_S = 30.0  # per socket read/write on the server; an idle keep-alive connection is closed after it
MAX_ERROR_CHARS = 400
HEADER_LENGTH = "Inference-Header-Content-Length"
PROG = "lepton-serve"


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
class ServeError(LeptonError):
    """Any failure of serving or of the client; one line."""


class ServeRequestError(ServeError):
    """The server refused the request (4xx); `.status` is the HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ServeServerError(ServeRequestError):
    """The server failed (5xx)."""


class ServeConnectionError(ServeError):
    """No (complete) answer: connection refused or reset, timed out, response truncated."""


class ServeProtocolError(ServeError):
    """The server answered something that is not a valid Open Inference Protocol response."""


class BadRequest(Exception):
    """Server side: the request is refused with `status` and a one-line `message`."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = _one_line(message)
        self.close = close


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


# ------------------------------------------------------------------------------------------------
# Datatypes and the model's signature
# ------------------------------------------------------------------------------------------------
def _datatypes() -> dict[str, np.dtype]:
    table = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
             "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
    out = {k: np.dtype(v) for k, v in table.items()}
    try:
        import ml_dtypes

        out["BF16"] = np.dtype(ml_dtypes.bfloat16)
    except ImportError:  # pragma: no cover - ml_dtypes is a dependency
        pass
    return out


DATATYPES: dict[str, np.dtype] = _datatypes()
_OIP_OF: dict[np.dtype, str] = {v: k for k, v in DATATYPES.items()}


def oip_datatype(dtype: Any) -> str:
    """The Open Inference Protocol name of a numpy dtype (ServeError if it has none)."""
    dt = np.dtype(dtype)
    name = _OIP_OF.get(dt.newbyteorder("=") if dt.byteorder not in "=|" else dt)
    if name is None:
        raise ServeError(f"dtype {dt} has no Open Inference Protocol datatype; supported: {', '.join(DATATYPES)}")
    return name


def _manifest_dtype(text: str) -> np.dtype:
    try:
        return np.dtype(text)
    except TypeError:
        import ml_dtypes

        if hasattr(ml_dtypes, str(text)):
            return np.dtype(getattr(ml_dtypes, str(text)))
        raise


class TensorSpec:
    """One input or output: name, OIP datatype, numpy dtype, shape (None for a symbolic dimension)."""

    def __init__(self, name: str, datatype: str, shape: Sequence[int | None]) -> None:
        self.name = name
        self.datatype = datatype
        self.dtype = DATATYPES[datatype]
        self.shape = list(shape)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1 if d is None else d for d in self.shape]}


class ModelSpec:
    """What the server says about its model; built from the artifact's manifest."""

    VERSION = "1"

    def __init__(self, name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], platform: str) -> None:
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.platform = platform
        self.input_by_name = {t.name: t for t in inputs}
        self.output_by_name = {t.name: t for t in outputs}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], name: str) -> "ModelSpec":
        def specs(entries: Any, what: str) -> list[TensorSpec]:
            out = []
            for e in entries:
                try:
                    dt = _manifest_dtype(e["dtype"])
                except (TypeError, KeyError, AttributeError):
                    raise ServeError(f"{what} {e.get('name')!r} has dtype {e.get('dtype')!r}, which cannot be "
                                     f"served") from None
                if dt not in _OIP_OF:
                    raise ServeError(f"{what} {e['name']!r} has dtype {dt}, which the Open Inference Protocol "
                                     f"server does not carry; supported: {', '.join(DATATYPES)}")
                shape = [d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None
                         for d in e.get("shape", [])]
                out.append(TensorSpec(str(e["name"]), _OIP_OF[dt], shape))
            return out

        backends = sorted({str(s.get("backend")) for s in manifest.get("stages", [])} or {str(manifest.get("backend"))})
        return cls(name, specs(manifest["inputs"], "input"), specs(manifest["outputs"], "output"),
                   "lepton_" + "+".join(backends))

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [self.VERSION], "platform": self.platform,
                "inputs": [t.metadata() for t in self.inputs], "outputs": [t.metadata() for t in self.outputs]}


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def default_model_name(artifact: str | os.PathLike) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(artifact).resolve().name).lstrip("._-") or "model"
    return name[:128]


# ------------------------------------------------------------------------------------------------
# Request decoding / response encoding (server side)
# ------------------------------------------------------------------------------------------------
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _parse_json(data: bytes | memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(data).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise BadRequest(400, f"bad JSON in the {what}: not UTF-8") from None
    except RecursionError:
        raise BadRequest(400, f"bad JSON in the {what}: nested too deeply") from None
    except ValueError as e:
        raise BadRequest(400, f"bad JSON in the {what}: {e}") from None


def _is_int(x: Any) -> bool:
    return type(x) is int


def _flatten(data: Any, count: int, name: str) -> list[Any]:
    """A flat list of `count` scalars from a flat or nested JSON list (row-major)."""
    if not isinstance(data, list):
        raise BadRequest(400, f"input {name!r}: 'data' must be a list")
    if all(not isinstance(x, list) for x in data):
        flat = data
    else:
        flat = []
        stack = [iter(data)]
        while stack:
            for x in stack[-1]:
                if isinstance(x, list):
                    if len(stack) > 64:
                        raise BadRequest(400, f"input {name!r}: 'data' nested too deeply")
                    stack.append(iter(x))
                    break
                flat.append(x)
                if len(flat) > count:
                    break
            else:
                stack.pop()
                continue
            if len(flat) > count:
                break
    if len(flat) != count:
        raise BadRequest(400, f"input {name!r}: 'data' has {len(flat) if len(flat) <= count else 'more than ' + str(count)}"
                              f" elements but its shape needs {count}")
    return flat


def _json_array(flat: list[Any], spec: TensorSpec, shape: list[int]) -> np.ndarray:
    dt = spec.dtype
    name = spec.name
    if spec.datatype == "BOOL":
        if not all(type(x) is bool for x in flat):
            raise BadRequest(400, f"input {name!r}: BOOL data must be true/false")
        return np.array(flat, dtype=np.bool_).reshape(shape)
    if dt.kind in "iu":
        if not all(_is_int(x) for x in flat):
            raise BadRequest(400, f"input {name!r}: {spec.datatype} data must be integers")
        info = np.iinfo(dt)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise BadRequest(400, f"input {name!r}: a value is out of the {spec.datatype} range")
        return np.array(flat, dtype=dt).reshape(shape)
    if not all(type(x) is float or type(x) is int for x in flat):
        raise BadRequest(400, f"input {name!r}: {spec.datatype} data must be numbers")
    try:
        return np.array(flat, dtype=np.float64).astype(dt).reshape(shape)
    except OverflowError:
        raise BadRequest(400, f"input {name!r}: a value is out of range") from None


def _check_shape(shape: Any, spec: TensorSpec, limit: int) -> tuple[list[int], int]:
    name = spec.name
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise BadRequest(400, f"input {name!r}: 'shape' must be a list of non-negative integers")
    if len(shape) != len(spec.shape):
        raise BadRequest(400, f"input {name!r}: shape {shape} has rank {len(shape)}, the model takes "
                              f"{spec.metadata()['shape']}")
    for got, want in zip(shape, spec.shape):
        if want is not None and got != want:
            raise BadRequest(400, f"input {name!r}: shape {shape} does not match the model's "
                                  f"{spec.metadata()['shape']}")
    count = 1
    for d in shape:
        count *= d
        if count > limit:
            raise BadRequest(400, f"input {name!r}: shape {shape} has more elements than the request can carry")
    return shape, count


def decode_infer_request(body: bytes | memoryview, header_length: str | None, spec: ModelSpec,
                         ) -> tuple[dict[str, np.ndarray], list[tuple[str, bool]], str | None]:
    """(inputs by name, [(output name, as binary)], request id) from an infer request's body."""
    body = memoryview(body)
    if header_length is not None:
        if not header_length.strip().isdigit():
            raise BadRequest(400, f"{HEADER_LENGTH} must be a decimal byte count, not {header_length!r}")
        n = int(header_length)
        if n > len(body):
            raise BadRequest(400, f"truncated body: {HEADER_LENGTH} is {n} but the body has {len(body)} bytes")
        if n == 0:
            raise BadRequest(400, f"{HEADER_LENGTH} is 0: the JSON header is missing")
    else:
        n = len(body)
    req = _parse_json(body[:n], "request")
    if not isinstance(req, dict):
        raise BadRequest(400, "the request must be a JSON object")
    unknown = sorted(set(req) - {"id", "parameters", "inputs", "outputs"})
    if unknown:
        raise BadRequest(400, f"unknown request field(s) {unknown}; expected id, parameters, inputs, outputs")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest(400, "'id' must be a string")
    params = req.get("parameters", {})
    if not isinstance(params, dict):
        raise BadRequest(400, "'parameters' must be an object")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequest(400, "'binary_data_output' must be true or false")

    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(400, "'inputs' must be a non-empty list")
    blob = body[n:]
    offset = 0
    feeds: dict[str, np.ndarray] = {}
    limit = len(body) + 1  # no tensor can have more elements than the body has bytes (bar empty ones)
    for t in inputs:
        if not isinstance(t, dict):
            raise BadRequest(400, "each input must be an object")
        extra = sorted(set(t) - {"name", "shape", "datatype", "data", "parameters"})
        if extra:
            raise BadRequest(400, f"input {t.get('name')!r}: unknown field(s) {extra}")
        name = t.get("name")
        if not isinstance(name, str):
            raise BadRequest(400, "each input needs a string 'name'")
        ts = spec.input_by_name.get(name)
        if ts is None:
            raise BadRequest(400, f"unknown input {name!r}; the model takes {[s.name for s in spec.inputs]}")
        if name in feeds:
            raise BadRequest(400, f"input {name!r} given twice")
        dtype_name = t.get("datatype")
        if dtype_name != ts.datatype:
            raise BadRequest(400, f"input {name!r} has datatype {dtype_name!r}, the model takes {ts.datatype}")
        shape, count = _check_shape(t.get("shape"), ts, limit)
        tparams = t.get("parameters", {})
        if not isinstance(tparams, dict):
            raise BadRequest(400, f"input {name!r}: 'parameters' must be an object")
        size = tparams.get("binary_data_size")
        if size is not None:
            if "data" in t:
                raise BadRequest(400, f"input {name!r} has both 'data' and binary_data_size")
            if not _is_int(size) or size < 0:
                raise BadRequest(400, f"input {name!r}: binary_data_size must be a non-negative integer")
            need = count * ts.dtype.itemsize
            if size != need:
                raise BadRequest(400, f"input {name!r}: binary_data_size is {size} bytes but shape {shape} of "
                                      f"{ts.datatype} needs {need}")
            if offset + size > len(blob):
                raise BadRequest(400, f"truncated body: input {name!r} needs bytes {offset}..{offset + size} of the "
                                      f"binary data but it has {len(blob)}")
            raw = blob[offset:offset + size]
            offset += size
            if ts.datatype == "BOOL":
                u8 = np.frombuffer(raw, dtype=np.uint8)
                if u8.size and u8.max() > 1:
                    raise BadRequest(400, f"input {name!r}: BOOL bytes must be 0 or 1")
                arr = u8.view(np.bool_).reshape(shape).copy()
            else:
                arr = np.frombuffer(raw, dtype=ts.dtype.newbyteorder("<")).astype(ts.dtype).reshape(shape)
        else:
            if "data" not in t:
                raise BadRequest(400, f"input {name!r} has neither 'data' nor binary_data_size")
            arr = _json_array(_flatten(t["data"], count, name), ts, shape)
        feeds[name] = arr
    if offset != len(blob):
        raise BadRequest(400, f"the body has {len(blob) - offset} bytes after the tensors it declares")
    missing = [s.name for s in spec.inputs if s.name not in feeds]
    if missing:
        raise BadRequest(400, f"missing input(s) {missing}; the model takes {[s.name for s in spec.inputs]}")

    wanted = req.get("outputs")
    outs: list[tuple[str, bool]] = []
    if wanted is None:
        outs = [(s.name, binary_default) for s in spec.outputs]
    else:
        if not isinstance(wanted, list) or not wanted:
            raise BadRequest(400, "'outputs' must be a non-empty list")
        for o in wanted:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise BadRequest(400, "each requested output must be an object with a string 'name'")
            extra = sorted(set(o) - {"name", "parameters"})
            if extra:
                raise BadRequest(400, f"output {o['name']!r}: unknown field(s) {extra}")
            if o["name"] not in spec.output_by_name:
                raise BadRequest(400, f"unknown output {o['name']!r}; the model has {[s.name for s in spec.outputs]}")
            if any(o["name"] == n for n, _ in outs):
                raise BadRequest(400, f"output {o['name']!r} requested twice")
            op = o.get("parameters", {})
            if not isinstance(op, dict):
                raise BadRequest(400, f"output {o['name']!r}: 'parameters' must be an object")
            b = op.get("binary_data", binary_default)
            if not isinstance(b, bool):
                raise BadRequest(400, f"output {o['name']!r}: 'binary_data' must be true or false")
            outs.append((o["name"], b))
    return feeds, outs, rid


def _le_bytes(arr: np.ndarray) -> bytes:
    a = np.ascontiguousarray(arr)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a.tobytes()


def encode_infer_response(model: str, rid: str | None, outputs: list[tuple[str, np.ndarray, bool]],
                          ) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of an infer response."""
    entries = []
    blobs = []
    for name, arr, binary in outputs:
        e: dict[str, Any] = {"name": name, "datatype": oip_datatype(arr.dtype), "shape": list(arr.shape)}
        if binary:
            b = _le_bytes(arr)
            e["parameters"] = {"binary_data_size": len(b)}
            blobs.append(b)
        else:
            e["data"] = arr.ravel().tolist()
        entries.append(e)
    resp: dict[str, Any] = {"model_name": model, "model_version": ModelSpec.VERSION, "outputs": entries}
    if rid is not None:
        resp["id"] = rid
    header = json.dumps(resp, separators=(",", ":")).encode()
    if blobs:
        return b"".join([header, *blobs]), {"Content-Type": "application/octet-stream",
                                             HEADER_LENGTH: str(len(header))}
    return header, {"Content-Type": "application/json"}


# ------------------------------------------------------------------------------------------------
# The service: routes and policy, engine-independent
# ------------------------------------------------------------------------------------------------
class Response:
    __slots__ = ("status", "headers", "body", "close")

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None, close: bool = False) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else {"Content-Type": "application/json"}
        self.close = close


def _json_response(status: int, obj: Any, close: bool = False) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode(), close=close)


def error_response(status: int, message: str, close: bool = False) -> Response:
    r = _json_response(status, {"error": _one_line(message)}, close=close)
    if status == 401:
        r.headers["WWW-Authenticate"] = 'Bearer realm="lepton-serve"'
    return r


def _thread_safe(manifest: Mapping[str, Any]) -> bool:
    # ONNX Runtime sessions may run concurrently; other backends' runners (TVM's graph executor) may not.
    return all(str(s.get("backend")) == "onnx" for s in manifest.get("stages", [])) and not manifest.get("remote")


class InferenceService:
    """The Open Inference Protocol v2 routes over one runner. `handle` is what both engines call."""

    def __init__(self, runner: Any, spec: ModelSpec, *, token: str | None = None,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, serialize: bool = True,
                 log: Callable[[str], None] | None = None) -> None:
        self.runner = runner
        self.spec = spec
        # name -> (spec, runner, lock or None): one model, or every cut's cloud half of a split
        # artifact (`add_model`; docs/split.md).
        self.models: dict[str, tuple[ModelSpec, Any, threading.Lock | None]] = {}
        self.token = token
        self.max_request_bytes = int(max_request_bytes)
        self.log = log or (lambda line: None)
        self.draining = False
        self._inflight = 0
        self._idle = threading.Condition()
        self.stats = {"requests": 0, "errors": 0, "inferences": 0}
        self.add_model(spec, runner, serialize)

    def add_model(self, spec: ModelSpec, runner: Any, serialize: bool = True) -> None:
        """Serve one more model under `/v2/models/<spec.name>`."""
        self.models[spec.name] = (spec, runner, threading.Lock() if serialize else None)

    @classmethod
    def from_artifact(cls, artifact: str | os.PathLike, *, model_name: str | None = None, **kw: Any,
                      ) -> "InferenceService":
        from lepton_backends import read_manifest

        from .runtime import load

        folder = Path(artifact)
        if not folder.is_dir():
            raise ServeError(f"{artifact}: not an artifact folder")
        manifest = read_manifest(folder)
        name = model_name or default_model_name(folder)
        if not _NAME_RE.match(name):
            raise ServeError(f"model name {name!r} must be 1-128 characters of letters, digits, '_', '.', '-'")
        split = (manifest.get("extra") or {}).get("split")
        if split:
            # A split artifact (docs/split.md): its halves cannot run as one model here (the edge
            # half is aarch64); serve every cut's cloud half as model NAME.CUT, so the edge runtime
            # switches cuts without another server.
            halves = [(cid, c["cloud"]) for cid, c in sorted(split.get("cuts", {}).items()) if c.get("cloud")]
            if not halves:
                raise ServeError(f"{artifact}: a split artifact without cloud halves (every cut is edge-only)")
            service = None
            for cid, rel in halves:
                sub = read_manifest(folder / rel)
                spec = ModelSpec.from_manifest(sub, f"{name[:100]}.{cid}")
                serialize = kw.get("serialize", not _thread_safe(sub))
                if service is None:
                    service = cls(load(folder / rel), spec, **{**kw, "serialize": serialize})
                else:
                    service.add_model(spec, load(folder / rel), serialize)
            return service
        spec = ModelSpec.from_manifest(manifest, name)
        runner = load(folder)
        kw.setdefault("serialize", not _thread_safe(manifest))
        return cls(runner, spec, **kw)

    # -- bookkeeping for graceful shutdown
    def _enter(self) -> None:
        with self._idle:
            self._inflight += 1

    def _leave(self) -> None:
        with self._idle:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> int:
        """Wait up to `timeout` s for in-flight requests; the number still running."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._inflight and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
            return self._inflight

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        if self.token is None:
            return True
        got = headers.get("authorization") or headers.get("Authorization") or ""
        scheme, _, cred = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(cred.strip().encode(), self.token.encode())

    def handle(self, method: str, target: str, headers: Mapping[str, str],
               read_body: Callable[[int], bytes]) -> Response:
        """Answer one request. `read_body(n)` returns exactly the n body bytes or raises BadRequest."""
        self._enter()
        try:
            self.stats["requests"] += 1
            resp = self._handle(method, target, headers, read_body)
        except BadRequest as e:
            resp = error_response(e.status, e.message, close=e.close)
        except Exception as e:  # a bug or a backend failure: 500, the server keeps serving
            self.log(f"internal error on {method} {target[:200]}: {traceback.format_exc()}")
            resp = error_response(500, f"internal error: {type(e).__name__}: {e}")
        finally:
            self._leave()
        if resp.status >= 400:
            self.stats["errors"] += 1
            try:
                msg = json.loads(resp.body)["error"]
            except Exception:
                msg = ""
            self.log(f"{method} {_one_line(target[:200])} -> {resp.status} {msg}")
        if self.draining:
            resp.close = True
        return resp

    def _handle(self, method: str, target: str, headers: Mapping[str, str],
                read_body: Callable[[int], bytes]) -> Response:
        path = urllib.parse.urlsplit(target).path
        if not self._authorized(headers):
            raise BadRequest(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')")
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] != "v2":
            raise BadRequest(404, f"no route {path[:200]!r}; routes are under /v2")
        rest = parts[1:]
        if rest == []:
            self._expect(method, "GET")
            return _json_response(200, {"name": "lepton", "version": _lepton_version(),
                                        "extensions": ["binary_tensor_data"], "models": list(self.models)})
        if rest == ["health", "live"]:
            self._expect(method, "GET")
            return _json_response(200, {"live": True})
        if rest == ["health", "ready"]:
            self._expect(method, "GET")
            return _json_response(503 if self.draining else 200, {"ready": not self.draining})
        if rest[0] == "models" and len(rest) >= 2:
            name, tail = urllib.parse.unquote(rest[1]), rest[2:]
            if name not in self.models:
                shown = repr(self.spec.name) if len(self.models) == 1 else f"{len(self.models)} models (GET /v2)"
                raise BadRequest(404, f"unknown model {name[:200]!r}; this server has {shown}")
            spec, runner, lock = self.models[name]
            if tail[:1] == ["versions"]:
                if len(tail) < 2 or tail[1] != ModelSpec.VERSION:
                    raise BadRequest(404, f"unknown version {'/'.join(tail[1:2])!r} of model {name!r}; it has "
                                          f"version {ModelSpec.VERSION}")
                tail = tail[2:]
            if tail == []:
                self._expect(method, "GET")
                return _json_response(200, spec.metadata())
            if tail == ["ready"]:
                self._expect(method, "GET")
                return _json_response(200, {"name": name, "ready": not self.draining})
            if tail == ["infer"]:
                self._expect(method, "POST")
                return self._infer(headers, read_body, spec, runner, lock)
        raise BadRequest(404, f"no route {path[:200]!r}")

    @staticmethod
    def _expect(method: str, allowed: str) -> None:
        if method != allowed:
            raise BadRequest(405, f"method {method} not allowed here; use {allowed}")

    def _infer(self, headers: Mapping[str, str], read_body: Callable[[int], bytes], spec: ModelSpec, runner: Any,
               lock: threading.Lock | None) -> Response:
        length = headers.get("content-length") or headers.get("Content-Length")
        if length is None:
            raise BadRequest(411, "an infer request needs a Content-Length", close=True)
        if not length.strip().isdigit():
            raise BadRequest(400, f"bad Content-Length {length[:40]!r}", close=True)
        n = int(length)
        if n > self.max_request_bytes:
            raise BadRequest(413, f"request body of {n} bytes is over the limit of {self.max_request_bytes} bytes "
                                  f"(--max-request-bytes)", close=True)
        body = read_body(n)
        header_length = headers.get(HEADER_LENGTH.lower()) or headers.get(HEADER_LENGTH)
        feeds, outs, rid = decode_infer_request(body, header_length, spec)
        try:
            if lock is not None:
                with lock:
                    t0 = time.perf_counter()
                    results = runner.run(feeds)
            else:
                t0 = time.perf_counter()
                results = runner.run(feeds)
            compute_ms = (time.perf_counter() - t0) * 1e3
        except LeptonError as e:  # ONNX Runtime's complaints about what was sent (e.g. inconsistent dims)
            raise BadRequest(400, f"inference failed: {e}") from None
        self.stats["inferences"] += 1
        try:
            chosen = [(name, np.asarray(results[name]), b) for name, b in outs]
        except KeyError as e:
            raise BadRequest(500, f"the artifact did not produce output {e}") from None
        body, hdrs = encode_infer_response(spec.name, rid, chosen)
        # The W3C Server-Timing header: the edge runtime subtracts it to see the link (split_runtime).
        hdrs["Server-Timing"] = f"infer;dur={compute_ms:.3f}"
        return Response(200, body, hdrs)


def _lepton_version() -> str:
    try:
        from importlib.metadata import version

        return version("lepton")
    except Exception:
        return "unknown"


# ------------------------------------------------------------------------------------------------
# The embedded engine: ThreadingHTTPServer
# ------------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lepton-serve"
    sys_version = ""
    disable_nagle_algorithm = True

    def setup(self) -> None:
        self.timeout = self.server.io_timeout  # type: ignore[attr-defined]
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        self.server.log(_one_line(format % args))  # type: ignore[attr-defined]

    def log_request(self, code: Any = "-", size: Any = "-") -> None:  # errors are logged by the service
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # the base class's HTML error page, as one JSON line (bad request lines, too many headers...)
        self._write(error_response(code, message or http.HTTPStatus(code).phrase, close=True))

    def _read_body(self, n: int) -> bytes:
        self._body_read = True
        try:
            data = self.rfile.read(n)
        except (TimeoutError, socket.timeout):
            raise BadRequest(408, "timed out reading the request body", close=True) from None
        if len(data) != n:
            raise BadRequest(400, f"truncated body: got {len(data)} of the {n} bytes of Content-Length",
                             close=True)
        return data

    def _dispatch(self) -> None:
        self._body_read = False
        if len(self.headers.get_all("Content-Length") or []) > 1:
            self._write(error_response(400, "more than one Content-Length header", close=True))
            return
        if self.headers.get("Transfer-Encoding"):
            self._write(error_response(411, "chunked request bodies are not supported; send a Content-Length",
                                       close=True))
            return
        resp = self.server.service.handle(self.command, self.path, self.headers, self._read_body)  # type: ignore
        declared = (self.headers.get("Content-Length") or "0").strip()
        unread = 0 if self._body_read else (int(declared) if declared.isdigit() else 1)
        if unread:
            resp.close = True  # an unread body would be taken for the next request
        self._write(resp)
        if unread:
            self._linger(unread)

    def _linger(self, declared: int, seconds: float = 2.0) -> None:
        """Half-close and discard what the client still sends (bounded in bytes and time), so that
        closing with unread data does not reset the connection before the client reads the answer."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + seconds
            left = declared
            while left > 0 and time.monotonic() < deadline:
                self.connection.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = self.connection.recv(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _write(self, resp: Response) -> None:
        self.send_response_only(resp.status)
        self.send_header("Date", self.date_time_string())
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        if resp.close or self.server.stopping.is_set():  # type: ignore[attr-defined]
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch


class EmbeddedServer(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer around an InferenceService, with a connection cap."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, host: str, port: int, service: InferenceService, *, io_timeout: float = DEFAULT_IO_TIMEOUT_S,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, log: Callable[[str], None] | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.service = service
        self.io_timeout = io_timeout
        self.log = log or (lambda line: None)
        self.stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((host, port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:  # over the cap: a quick 503 instead of an unbounded number of threads
                request.settimeout(1.0)
                body = json.dumps({"error": "too many connections; retry later"}).encode()
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError, socket.timeout)):
            return  # the client went away; nothing to answer
        self.log(f"error on a connection from {client_address[0]}: {traceback.format_exc()}")


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------
# The client
# ------------------------------------------------------------------------------------------------
def _server_timing(value: str | None) -> float | None:
    """`infer;dur=1.234` -> 1.234 (ms), else None."""
    m = re.search(r"(?:^|,)\s*infer\s*;(?:[^,]*;)?\s*dur=([0-9.]+)", value or "")
    return float(m.group(1)) if m else None


class InferenceClient:
    """A client of an Open Inference Protocol v2 server (lepton-serve, either engine, or KServe/Triton).

    `infer({name: array}, binary=True)` sends the tensors with the binary tensor data extension
    (raw little-endian bytes after a JSON header) and asks for binary outputs; `binary=False` uses
    JSON number lists. Each thread gets its own keep-alive connection. Every failure is a one-line
    ServeError; an answer that does not match the request (ids, names, sizes) is a
    ServeProtocolError, never returned as outputs.
    """

    _ids = itertools.count()

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, model: str | None = None,
                 max_response_bytes: int = 1 << 30) -> None:
        u = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ServeError(f"bad server URL {url!r}; expected http://HOST:PORT")
        self.url = f"{u.scheme}://{u.netloc}"
        self._scheme, self._host = u.scheme, u.hostname
        try:
            self._port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            raise ServeError(f"bad port in server URL {url!r}") from None
        self._prefix = u.path.rstrip("/")
        m = re.fullmatch(r"(.*)/v2/models/([^/]+)", self._prefix)
        if m:  # a model URL: http://host:port/v2/models/NAME
            self._prefix, model = m.group(1), model or urllib.parse.unquote(m.group(2))
        self.token = token
        self.timeout = float(timeout)
        self.max_response_bytes = int(max_response_bytes)
        self._local = threading.local()
        self._model = model

    # -- plumbing
    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        self._local.conn = conn
        return conn, False

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close this thread's connection."""
        self._drop()

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: Mapping[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        h = {"Accept": "application/json, application/octet-stream"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if headers:
            h.update(headers)
        where = f"{self.url}{self._prefix}{path}"
        for attempt in (0, 1):
            conn, reused = self._connection()
            try:
                conn.request(method, self._prefix + path, body=body, headers=h)
                resp = conn.getresponse()
                length = resp.getheader("Content-Length")
                if length is not None and length.isdigit() and int(length) > self.max_response_bytes:
                    self._drop()
                    raise ServeProtocolError(f"{where}: response of {length} bytes is over the client's limit of "
                                             f"{self.max_response_bytes}")
                if length is not None and length.isdigit():
                    data = resp.read()  # IncompleteRead if the server goes away mid-body (read(n) would not say)
                    if len(data) != int(length):
                        raise http.client.IncompleteRead(data, int(length) - len(data))
                else:
                    data = resp.read(self.max_response_bytes + 1)
                if len(data) > self.max_response_bytes:
                    self._drop()
                    raise ServeProtocolError(f"{where}: response is over the client's limit of "
                                             f"{self.max_response_bytes} bytes")
                if resp.will_close:
                    self._drop()
                return resp.status, resp.headers, data
            except ServeError:
                raise
            except http.client.IncompleteRead as e:
                self._drop()
                raise ServeConnectionError(f"{where}: the server closed the connection mid-response (got "
                                           f"{len(e.partial)} bytes, {e.expected} missing)") from None
            except (TimeoutError, socket.timeout):
                self._drop()
                raise ServeConnectionError(f"{where}: no answer within {self.timeout:g} s") from None
            except ConnectionRefusedError:
                self._drop()
                raise ServeConnectionError(f"{where}: connection refused (is the server running?)") from None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self._drop()
                if reused and attempt == 0:
                    continue  # a stale keep-alive connection: once more on a fresh one
                raise ServeConnectionError(f"{where}: the server closed the connection without an answer "
                                           f"({type(e).__name__})") from None
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                raise ServeConnectionError(f"{where}: {type(e).__name__}: {e}") from None
        raise AssertionError("unreachable")

    def _checked(self, method: str, path: str, body: bytes | None = None,
                 headers: Mapping[str, str] | None = None) -> tuple[http.client.HTTPMessage, bytes]:
        status, hdrs, data = self._request(method, path, body, headers)
        if status >= 400:
            try:
                msg = json.loads(data)["error"]
            except Exception:
                msg = data[:200].decode("utf-8", "replace") or http.HTTPStatus(status).phrase
            cls = ServeServerError if status >= 500 else ServeRequestError
            raise cls(f"{self.url}{self._prefix}{path}: HTTP {status}: {_one_line(msg)}", status)
        if status != 200:
            raise ServeProtocolError(f"{self.url}{self._prefix}{path}: unexpected HTTP {status}")
        return hdrs, data

    def _json(self, method: str, path: str) -> Any:
        _, data = self._checked(method, path)
        try:
            return json.loads(data)
        except ValueError:
            raise ServeProtocolError(f"{self.url}{self._prefix}{path}: the answer is not JSON") from None

    @property
    def model(self) -> str:
        if self._model is None:
            models = self._json("GET", "/v2").get("models")
            if not isinstance(models, list) or len(models) != 1 or not isinstance(models[0], str):
                raise ServeError(f"{self.url}: the server does not name exactly one model; pass model=NAME")
            self._model = models[0]
        return self._model

    def _model_path(self) -> str:
        return "/v2/models/" + urllib.parse.quote(self.model, safe="")

    # -- the API
    def live(self) -> bool:
        """Whether the server answers its liveness check (False when it cannot be reached)."""
        try:
            self._checked("GET", "/v2/health/live")
            return True
        except ServeConnectionError:
            return False

    def ready(self) -> bool:
        """Whether the server is ready for inference (False when it is unreachable or not ready)."""
        try:
            self._checked("GET", "/v2/health/ready")
            return True
        except (ServeConnectionError, ServeServerError):
            return False

    def metadata(self) -> dict[str, Any]:
        """The model's metadata: name, versions, platform, inputs and outputs (name, datatype, shape)."""
        return self._json("GET", self._model_path())

    def infer(self, inputs: Mapping[str, Any], binary: bool = True, outputs: Sequence[str] | None = None,
              ) -> dict[str, np.ndarray]:
        """Outputs by name (all the model's, or those named in `outputs`) for inputs by name."""
        rid = f"{os.getpid()}-{next(self._ids)}"
        entries = []
        blobs: list[bytes] = []
        for name, value in inputs.items():
            arr = np.asarray(value)
            e: dict[str, Any] = {"name": str(name), "datatype": oip_datatype(arr.dtype), "shape": list(arr.shape)}
            if binary:
                b = _le_bytes(arr)
                e["parameters"] = {"binary_data_size": len(b)}
                blobs.append(b)
            else:
                e["data"] = arr.ravel().tolist()
            entries.append(e)
        req: dict[str, Any] = {"id": rid, "inputs": entries}
        if binary:
            req["parameters"] = {"binary_data_output": True}
        if outputs is not None:
            req["outputs"] = [{"name": str(n), "parameters": {"binary_data": binary}} for n in outputs]
        header = json.dumps(req, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
        if binary:
            headers[HEADER_LENGTH] = str(len(header))
        body = b"".join([header, *blobs])
        hdrs, data = self._checked("POST", self._model_path() + "/infer", body, headers)
        self._local.last = {"request_bytes": len(body), "response_bytes": len(data),
                            "server_ms": _server_timing(hdrs.get("Server-Timing"))}
        return self._decode(data, hdrs.get(HEADER_LENGTH), rid, None if outputs is None else list(outputs))

    @property
    def last_exchange(self) -> dict[str, Any] | None:
        """This thread's last infer: request and response body bytes and the server's own compute
        time (`server_ms`, from its Server-Timing header; None when it sent none)."""
        return getattr(self._local, "last", None)

    def _decode(self, data: bytes, header_length: str | None, rid: str, wanted: list[str] | None,
                ) -> dict[str, np.ndarray]:
        where = f"{self.url}{self._model_path()}/infer"

        def bad(msg: str) -> ServeProtocolError:
            return ServeProtocolError(f"{where}: bad response: {msg}")

        if header_length is not None:
            if not header_length.isdigit() or not 0 < int(header_length) <= len(data):
                raise bad(f"{HEADER_LENGTH} {header_length!r} does not fit a {len(data)}-byte body")
            n = int(header_length)
        else:
            n = len(data)
        try:
            resp = json.loads(data[:n])
        except ValueError:
            raise bad("the header is not JSON") from None
        if not isinstance(resp, dict) or not isinstance(resp.get("outputs"), list):
            raise bad("no 'outputs' list")
        if resp.get("id", rid) != rid:
            raise bad(f"it answers request {resp.get('id')!r}, not {rid!r}")
        blob = memoryview(data)[n:]
        offset = 0
        out: dict[str, np.ndarray] = {}
        for e in resp["outputs"]:
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or e["name"] in out:
                raise bad("an output without a unique name")
            name, dt_name, shape = e["name"], e.get("datatype"), e.get("shape")
            if dt_name not in DATATYPES:
                raise bad(f"output {name!r} has unknown datatype {dt_name!r}")
            if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
                raise bad(f"output {name!r} has a bad shape")
            dt = DATATYPES[dt_name]
            count = math.prod(shape)
            size = (e.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                if size != count * dt.itemsize or offset + size > len(blob):
                    raise bad(f"output {name!r}: binary_data_size {size} does not match shape {shape} or the body")
                arr = np.frombuffer(blob[offset:offset + size], dtype=dt.newbyteorder("<")).astype(dt).reshape(shape)
                offset += size
            else:
                d = e.get("data")
                if not isinstance(d, list):
                    raise bad(f"output {name!r} has neither data nor binary_data_size")
                try:
                    flat = np.array(d, dtype=np.float64 if dt.kind == "f" or dt_name == "BF16" else dt)
                    if flat.size != count:
                        raise ValueError
                    arr = flat.astype(dt).reshape(shape)
                except (ValueError, TypeError, OverflowError):
                    raise bad(f"output {name!r}: data does not match shape {shape} of {dt_name}") from None
            out[name] = arr
        if offset != len(blob):
            raise bad(f"{len(blob) - offset} bytes after the declared outputs")
        if wanted is not None and sorted(out) != sorted(wanted):
            raise bad(f"outputs {sorted(out)} are not the requested {sorted(wanted)}")
        return out


# ------------------------------------------------------------------------------------------------
# lepton-serve
# ------------------------------------------------------------------------------------------------
def serve_parser() -> argparse.ArgumentParser:
    from .cli import _Parser

    p = _Parser(prog=PROG, description="Serve a Lepton artifact over the Open Inference Protocol v2 (KServe/Triton "
                "REST, JSON and binary tensor data). docs/serving.md.")
    p.add_argument("artifact", help="artifact folder written by lepton-opt / lepton.optimize")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to bind (default 127.0.0.1); any non-loopback address needs --token/--token-file")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 8000; 0 picks a free one)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--token", metavar="T", help="require 'Authorization: Bearer T' on every request "
                   "(visible to other local users in the process list: prefer --token-file)")
    g.add_argument("--token-file", metavar="F", help="read the bearer token from file F (first line)")
    p.add_argument("--max-request-bytes", metavar="N", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help=f"largest request body accepted (default {DEFAULT_MAX_REQUEST_BYTES}, 64 MiB); larger: 413")
    p.add_argument("--model-name", metavar="NAME", help="the model's name in /v2/models/NAME "
                   "(default: the artifact folder's name)")
    p.add_argument("--engine", choices=("embedded", "ray"), default="embedded",
                   help="embedded: one process (default); ray: a Ray Serve deployment (pip install 'lepton[serve-ray]')")
    p.add_argument("--replicas", type=int, default=1, metavar="N", help="ray: number of replicas (default 1)")
    p.add_argument("--ray-address", metavar="ADDR", help="ray: join this Ray cluster instead of starting a local one")
    p.add_argument("--ray-num-cpus", type=float, default=None, metavar="C",
                   help="ray: CPUs of the local Ray instance (default: all) ")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                   help=f"embedded: open connections at most; more get 503 (default {DEFAULT_MAX_CONNECTIONS})")
    p.add_argument("--timeout", type=float, default=DEFAULT_IO_TIMEOUT_S, metavar="S",
                   help=f"embedded: seconds a socket read may wait, idle keep-alive included (default "
                        f"{DEFAULT_IO_TIMEOUT_S:g})")
    p.add_argument("--grace", type=float, default=10.0, metavar="S",
                   help="seconds in-flight requests get to finish on SIGINT/SIGTERM (default 10)")
    return p


def _read_token(args: argparse.Namespace) -> str | None:
    from .cli import UsageError

    token = args.token
    if args.token_file:
        try:
            size = os.path.getsize(args.token_file)
            if size > 4096:
                raise UsageError(f"--token-file {args.token_file}: {size} bytes; a token file holds one short line")
            lines = Path(args.token_file).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"--token-file {args.token_file}: not UTF-8 text") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise UsageError(f"--token-file {args.token_file}: empty")
    if token is not None:
        if not token or any(c.isspace() for c in token) or not token.isprintable():
            raise UsageError("the token must be non-empty printable text without spaces")
        if len(token) < 16:
            log("warning: a token shorter than 16 characters is easy to guess")
    return token


def log(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def check_args(args: argparse.Namespace) -> str | None:
    """Validate the options; the token (or None). UsageError for anything wrong."""
    from .cli import UsageError

    token = _read_token(args)
    if not is_loopback(args.host) and token is None:
        raise UsageError(f"--host {args.host} is not a loopback address: refusing to serve it without --token or "
                         f"--token-file")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: not a port number")
    if args.max_request_bytes < 1024:
        raise UsageError(f"--max-request-bytes {args.max_request_bytes}: at least 1024")
    if args.replicas < 1:
        raise UsageError(f"--replicas {args.replicas}: at least 1")
    if args.engine != "ray" and (args.replicas != 1 or args.ray_address or args.ray_num_cpus is not None):
        raise UsageError("--replicas, --ray-address and --ray-num-cpus need --engine ray")
    if args.engine == "ray" and args.port == 0:
        raise UsageError("--engine ray needs a fixed --port (Ray Serve's proxy cannot pick one)")
    if args.max_connections < 1 or args.timeout <= 0 or args.grace < 0:
        raise UsageError("--max-connections must be at least 1, --timeout above 0, --grace at least 0")
    if args.model_name is not None and not _NAME_RE.match(args.model_name):
        raise UsageError(f"--model-name {args.model_name!r}: 1-128 letters, digits, '_', '.', '-'")
    return token


class _Stop:
    """SIGINT/SIGTERM -> `event`, and the signal's name; restores the old handlers on exit."""

    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        self.event = threading.Event()
        self.signal_name = ""
        self._on_stop = on_stop
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Stop":
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            return
        self.signal_name = signal.Signals(signum).name
        self.event.set()
        if self._on_stop is not None:
            threading.Thread(target=self._on_stop, daemon=True).start()

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _serve_embedded(args: argparse.Namespace, token: str | None) -> int:
    service = InferenceService.from_artifact(args.artifact, model_name=args.model_name, token=token,
                                             max_request_bytes=args.max_request_bytes, log=log)
    try:
        server = EmbeddedServer(args.host, args.port, service, io_timeout=args.timeout,
                                max_connections=args.max_connections, log=log)
    except OSError as e:
        raise ServeError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    spec = service.spec
    log(f"model {spec.name!r} ({spec.platform}; inputs "
        f"{', '.join(t.name + ' ' + t.datatype + str(t.metadata()['shape']) for t in spec.inputs)}) from {args.artifact}; "
        f"engine embedded, {'auth: bearer token' if token else 'no auth'}, max request {args.max_request_bytes} bytes")
    log(f"listening on http://{shown}:{port}")

    def stop() -> None:
        service.draining = True
        server.stopping.set()
        server.shutdown()

    with _Stop(stop) as st:
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()
    left = service.wait_idle(args.grace)
    log(f"stopped ({st.signal_name or 'shutdown'}); {service.stats['requests']} requests, "
        f"{service.stats['errors']} refused or failed" + (f", {left} still running at exit" if left else ""))
    return 0


def serve_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `lepton-serve`; returns the exit status."""
    from .cli import _guard

    def body() -> int:
        args = serve_parser().parse_args(argv)
        token = check_args(args)
        if args.engine == "ray":
            from .serve_ray import serve_ray

            return serve_ray(args, token)
        return _serve_embedded(args, token)

    return _guard(PROG, body)


if __name__ == "__main__":
    sys.exit(serve_main())
