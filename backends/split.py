"""The ``split`` backend: cloud-edge collaborative inference (issue #16, the planning half).

    lepton-opt model.onnx --backend split --option edge=cortex-a72 --option cloud=native \\
        --option bandwidth=20mbit --option rtt=20ms [--option compress=int8|fp16|none] -o out/
    lepton-opt model.onnx --backend 'split{edge=cortex-a72,cloud=native,bandwidth=20mbit,rtt=20ms}' -o out/

1. **Profiles.** Every node of the (canonicalized, shape-pinned) model is cut out alone
   (`lepton_ir.extract`, constant operands kept) and timed on both sides: on the edge compiled by
   `tvm-arm` for `edge` and timed on the device over TVM RPC (TVM's time_evaluator on the device,
   as `RemoteRunner.benchmark` does: the emulated board of `lepton-device emulate --port 9098`,
   or `edge-rpc=HOST:PORT`); on
   the cloud (this host) compiled by `tvm-cpu` (`cloud=native` or a TVM CPU target) or run by
   ONNX Runtime (`cloud=onnx`). A trivial model's time on each side is the stage call overhead:
   subtracted from every node and added once per stage. Figures live in a profile database,
   `~/.cache/lepton/profiles/<target-hash>.json` (`$LEPTON_PROFILE_CACHE` or `profiles=DIR`), keyed
   by the sha256 of the one-node model, written atomically under a lock, so a later compile (any
   model sharing a node) measures nothing again.
2. **The cut.** `lepton_ir.cut.dads_cut` over `lepton_ir.weighted_view` (DADS minimum cut; docs/split.md),
   at `bandwidth`/`rtt`, and a table of cuts over 1..1000 Mbit/s.
3. **The artifact.** One sub-artifact pair per distinct cut of the table (and of the chosen
   bandwidth), sharing nothing: `cuts/cK/edge/` (tvm-arm, device remote: run it with
   `RemoteRunner`) and `cuts/cK/cloud/` (tvm-cpu or onnx, device host: `lepton.load`), plus
   `cuts/edge-only/` (the whole model for the edge, the fallback when the link is down). Each is a
   complete sealed artifact; the top manifest seals them all again, lists the chosen cut's stages
   (dirs inside `cuts/`) and carries the cut table in `extra.split` (and in each stage's `extra`),
   so a runtime picks the cut for the bandwidth it measures (`select_cut`) and opens that pair.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np

from lepton_backends.base import Backend, BackendError, PipelineRunner, before_publish, check_loads, get_backend, register_backend
from lepton_backends.artifact import atomic_dir, check_output_path, read_manifest, write_manifest
from lepton_backends.errors import BackendOptionError
from lepton_ir import LeptonError, Model

#: Bumped when what a profile figure means changes (the key of every record includes it).
PROFILER_VERSION = 3
DEFAULT_EMULATOR_PORT = 9098
#: A node whose runs would take longer than this in all gets 3 timed runs instead of 3 x repeat.
RUN_BUDGET_MS = 3000.0


# -- option parsing ------------------------------------------------------------------------------
_UNITS_BPS = {"": 1e6, "bit": 1, "bps": 1, "kbit": 1e3, "kbps": 1e3, "mbit": 1e6, "mbps": 1e6, "gbit": 1e9, "gbps": 1e9}


def parse_bandwidth(value: Any) -> float:
    """`20mbit`, `1gbit`, `500kbit`, `20` (Mbit/s) -> bits per second."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bps = float(value) * 1e6
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z/]*)\s*", str(value).lower())
        unit = m.group(2).replace("/s", "") if m else None
        if not m or unit not in _UNITS_BPS:
            raise ValueError("expected a bandwidth like 20mbit, 500kbit, 1gbit (or a number of Mbit/s)")
        bps = float(m.group(1)) * _UNITS_BPS[unit]
    if not bps > 0:
        raise ValueError("bandwidth must be positive")
    return bps


def parse_duration_ms(value: Any) -> float:
    """`20ms`, `0.02s`, `500us`, `20` (ms) -> milliseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ms = float(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|us|)\s*", str(value).lower())
        if not m:
            raise ValueError("expected a duration like 20ms, 0.02s, 500us (or a number of ms)")
        ms = float(m.group(1)) * {"ms": 1.0, "": 1.0, "s": 1e3, "us": 1e-3}[m.group(2)]
    if ms < 0:
        raise ValueError("rtt must be non-negative")
    return ms


def format_bandwidth(bps: float) -> str:
    for unit, f in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bps >= f and (bps / f) == round(bps / f, 3):
            return f"{bps / f:g}{unit}"
    return f"{bps:g}bit"


def _parse_shapes(value: Any) -> Any:
    from lepton_backends.tvm.backend import _parse_shapes as p

    return p(value)


def _opt(default: Any = None, help: str = "", **meta: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass(frozen=True)
class SplitOptions:
    """Options of the split backend; `str()` spells them as the issue does:
    `split{edge=cortex-a72,cloud=native,bandwidth=20mbit,rtt=20ms}`."""

    edge: str = _opt("cortex-a72", "the edge device's tvm-arm target (cortex-a53/a55/a72/a76, neoverse-n1/v1)")
    cloud: str = _opt("native", "the cloud side: native (tvm-cpu for this host), another tvm-cpu target, or onnx "
                                "(ONNX Runtime)")
    bandwidth: float = _opt(20e6, "link bandwidth: 20mbit, 500kbit, 1gbit (bits/s)", parse=parse_bandwidth, type="bandwidth")
    rtt: float = _opt(20.0, "link round-trip time: 20ms, 0.02s (ms)", parse=parse_duration_ms, type="duration")
    compress: Literal["none", "fp16", "int8"] = _opt("none", "how cut float tensors travel: none, fp16, or int8 "
                                                             "(symmetric, one scale per tensor, computed at run time)")
    edge_rpc: str | None = _opt(None, "HOST:PORT of the edge device's TVM RPC server for profiling (default: "
                                      f"127.0.0.1:{DEFAULT_EMULATOR_PORT}, `lepton-device emulate --port "
                                      f"{DEFAULT_EMULATOR_PORT}`)")
    profiles: str | None = _opt(None, "profile database folder (default ~/.cache/lepton/profiles or "
                                      "$LEPTON_PROFILE_CACHE)")
    repeat: int = _opt(10, "timed runs per node and side: 3, then 3 x repeat more unless that would take over 3 s; "
                           "the least kept (on a shared host, the least disturbed run)")
    input_shapes: dict[str, tuple[int, ...]] | None = _opt(
        None, "pin symbolic input dims: x=1x3x224x224[,y=...] (default: symbolic batch dims set to 1)",
        parse=_parse_shapes, type="shapes")

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise ValueError("repeat must be >= 1")

    def __str__(self) -> str:
        parts = [f"edge={self.edge}", f"cloud={self.cloud}", f"bandwidth={format_bandwidth(self.bandwidth)}",
                 f"rtt={self.rtt:g}ms"]
        if self.compress != "none":
            parts.append(f"compress={self.compress}")
        return "split{" + ",".join(parts) + "}"


def parse_spec(text: str) -> tuple[str, dict[str, str]]:
    """`NAME{k=v,k=v}` -> (NAME, {k: v}); plain `NAME` -> (NAME, {}). The spelling of issue #16."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:\{(.*)\})?\s*", text)
    if not m:
        raise BackendOptionError(f"bad backend spec {text!r}: expected NAME or NAME{{key=value,...}}")
    opts: dict[str, str] = {}
    for part in (m.group(2) or "").split(","):
        if not part.strip():
            continue
        k, sep, v = part.partition("=")
        if not sep:
            raise BackendOptionError(f"bad backend option {part.strip()!r} in {text!r}: expected key=value")
        opts[k.strip()] = v.strip()
    return m.group(1), opts


# -- the profile database ------------------------------------------------------------------------
def profiles_dir(folder: str | os.PathLike | None = None) -> Path:
    if folder:
        return Path(folder)
    env = os.environ.get("LEPTON_PROFILE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lepton" / "profiles"


class ProfileDB:
    """Per-target latency records: `<folder>/<target-hash>.json` = {"target": ..., "records": {key: rec}}.

    `target` describes the side (backend, target, device kind) and hashes to the file name. Writes
    merge with what other processes wrote meanwhile (under a file lock) and replace the file
    atomically (temp file + fsync + rename)."""

    def __init__(self, target: Mapping[str, Any], folder: str | os.PathLike | None = None) -> None:
        self.target = dict(target)
        self.hash = hashlib.sha256(json.dumps(self.target, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = profiles_dir(folder)
        self.path = self.folder / f"{self.hash}.json"
        self.records: dict[str, dict[str, Any]] = self._read()
        self._dirty: dict[str, dict[str, Any]] = {}

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return dict(data.get("records", {}))
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def put(self, key: str, record: Mapping[str, Any]) -> None:
        self.records[key] = dict(record)
        self._dirty[key] = dict(record)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{self.hash}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def save(self) -> None:
        if not self._dirty:
            return
        with self._lock():
            merged = self._read()
            merged.update(self._dirty)
            text = json.dumps({"target": self.target, "profiler_version": PROFILER_VERSION, "records": merged},
                              indent=1, sort_keys=True) + "\n"
            fd, tmp = tempfile.mkstemp(prefix=f".{self.hash}.", suffix=".tmp", dir=self.folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        self.records = merged
        self._dirty = {}


def model_key(model: Model) -> str:
    """sha256 of the one-node model's ONNX bytes (names included) and the profiler's version."""
    import lepton_ir

    data = lepton_ir.to_onnx(model).SerializeToString(deterministic=True)
    return hashlib.sha256(data + f"/profiler-{PROFILER_VERSION}".encode()).hexdigest()


# -- the models that get timed -------------------------------------------------------------------
def name_values(model: Model) -> int:
    """Name every unnamed activation of the main graph (passes such as `fuse` leave the values
    they create unnamed; a cut, `extract` and the manifests need names), in place: `<op>_<i>_<k>`
    for output k of node i. Returns how many were named."""
    g = model.graph
    taken = {v.name for v in g.values() if v.name}
    count = 0
    for i, n in enumerate(g):
        for k, o in enumerate(n.outputs):
            if o.name is None:
                base = f"{n.op_type.lower()}_{i}_{k}"
                name, j = base, 0
                while name in taken:
                    j += 1
                    name = f"{base}_{j}"
                o.name = name
                taken.add(name)
                count += 1
    return count


def node_models(model: Model) -> list[Model | None]:
    """Per node of the main graph, the node alone (its activation inputs as graph inputs, its
    constant operands kept): None for a node that reads no activation (constants: free)."""
    import lepton_ir

    out: list[Model | None] = []
    g = model.graph
    for n in g:
        reads = []
        for v in _reads(n, g):
            if v.const is None and v.name and v not in reads:
                reads.append(v)
        outs = [o.name for o in n.outputs if o.name]
        if not reads or not outs:
            out.append(None)
            continue
        out.append(lepton_ir.extract(model, [v.name for v in reads], outs))
    return out


def _reads(node: Any, graph: Any) -> list[Any]:
    from lepton_backends.tvm.capability import _reads_of

    return _reads_of(node, graph)


def overhead_model() -> Model:
    """A model doing (almost) nothing: x + 1 on one float. Its time is a stage's call overhead."""
    import lepton_ir
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "overhead",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                          [numpy_helper.from_array(np.ones([1], np.float32), "one")])
    return lepton_ir.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


CODEC_ELEMS = 65536


def codec_models(kind: str, elems: int = CODEC_ELEMS) -> tuple[Model, Model]:
    """(encode, decode) models of `kind` (fp16/int8) for one float tensor of `elems` elements: the
    nodes `compress_cut` adds to the head and the tail."""
    import lepton_ir
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, elems])
    if kind == "fp16":
        enc = helper.make_graph([helper.make_node("Cast", ["x"], ["x.fp16"], to=TensorProto.FLOAT16)], "enc", [x],
                                [helper.make_tensor_value_info("x.fp16", TensorProto.FLOAT16, [1, elems])])
        dec = helper.make_graph([helper.make_node("Cast", ["x.fp16"], ["x"], to=TensorProto.FLOAT)], "dec",
                                [helper.make_tensor_value_info("x.fp16", TensorProto.FLOAT16, [1, elems])], [x])
    else:
        nodes, _ = _int8_encode_nodes("x")
        enc = helper.make_graph(nodes, "enc", [x],
                                [helper.make_tensor_value_info("x.int8", TensorProto.INT8, [1, elems]),
                                 helper.make_tensor_value_info("x.scale", TensorProto.FLOAT, [])])
        dec = helper.make_graph(_int8_decode_nodes("x"), "dec",
                                [helper.make_tensor_value_info("x.int8", TensorProto.INT8, [1, elems]),
                                 helper.make_tensor_value_info("x.scale", TensorProto.FLOAT, [])], [x])
    mk = lambda g: lepton_ir.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))  # noqa: E731
    return mk(enc), mk(dec)


def _int8_encode_nodes(x: str) -> tuple[list[Any], list[Any]]:
    """q = int8(clip(round(x / s), -127, 127)), s = max|x| / 127 (1 when x is all zeros)."""
    from onnx import TensorProto, helper, numpy_helper

    c = lambda name, v: helper.make_node("Constant", [], [f"{x}.{name}"],  # noqa: E731
                                         value=numpy_helper.from_array(np.asarray(v, np.float32)))
    nodes = [
        helper.make_node("Abs", [x], [f"{x}.abs"]),
        helper.make_node("ReduceMax", [f"{x}.abs"], [f"{x}.amax"], keepdims=0),
        c("k127", 127.0), c("tiny", 1e-30),
        helper.make_node("Max", [f"{x}.amax", f"{x}.tiny"], [f"{x}.amax1"]),
        helper.make_node("Div", [f"{x}.amax1", f"{x}.k127"], [f"{x}.scale"]),
        helper.make_node("Div", [x, f"{x}.scale"], [f"{x}.scaled"]),
        helper.make_node("Round", [f"{x}.scaled"], [f"{x}.round"]),
        c("lo", -127.0), c("hi", 127.0),
        helper.make_node("Clip", [f"{x}.round", f"{x}.lo", f"{x}.hi"], [f"{x}.clip"]),
        helper.make_node("Cast", [f"{x}.clip"], [f"{x}.int8"], to=TensorProto.INT8),
    ]
    return nodes, []


def _int8_decode_nodes(x: str, out: str | None = None) -> list[Any]:
    from onnx import TensorProto, helper

    return [helper.make_node("Cast", [f"{x}.int8"], [f"{x}.deq"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{x}.deq", f"{x}.scale"], [out or x])]


# -- measuring ----------------------------------------------------------------------------------
def _progress(msg: str) -> None:
    if not os.environ.get("LEPTON_NO_PROGRESS"):
        print(msg, file=sys.stderr, flush=True)


def _label(node: Any) -> str:
    return f"{node.op_type}" + (f" {node.name}" if node.name else "")


def record_values(model: Model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every activation of `model` on `feeds` by name (ONNX Runtime). With Lepton's fused ops:
    node by node, each lowered to ONNX alone (lowering the whole model would rename values)."""
    from lepton_backends.tvm.capability import record_values as rec

    if not any(n.domain == "ai.lepton" for n in model.graph):
        values = rec(model, feeds)
        if values is None:
            raise BackendError("split: ONNX Runtime cannot run the model on sample inputs, so its nodes cannot be timed")
        return values
    import lepton_ir
    from lepton_ir.reference import run_ort

    values = dict(feeds)
    g = model.graph
    for i, n in enumerate(g):
        reads = list(dict.fromkeys(v.name for v in _reads(n, g) if v.const is None and v.name))
        outs = [o.name for o in n.outputs if o.name]
        if not outs:
            continue
        try:
            one = _runnable(lepton_ir.extract(model, reads, outs))
            got = run_ort(one, {k: values[k] for k in reads})
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"split: ONNX Runtime cannot run node {i} ({_label(n)}) on sample inputs: "
                               f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        values.update(got if isinstance(got, dict) else dict(zip(outs, got)))
    return values


class EdgeTimer:
    """Times one-node models on the edge: compiled by tvm-arm, uploaded to the device over TVM RPC
    and timed there by TVM's time_evaluator (one call per run, as `lepton.remote.RemoteRunner.
    benchmark` does; that class lives in `lepton`, which `lepton_backends` may not import). One RPC
    session serves every node. A node TVM compiles only with ONNX Runtime stages is not timed
    (it stays off the edge)."""

    def __init__(self, target: str, rpc: str | None, repeat: int, folder: str | os.PathLike | None = None) -> None:
        self.target, self.repeat = target, repeat
        self.rpc = rpc or f"127.0.0.1:{DEFAULT_EMULATOR_PORT}"
        self.db = ProfileDB({"side": "edge", "backend": "tvm-arm", "target": target, "device": "rpc:" + self.rpc,
                             "note": "emulated (qemu-user) unless edge-rpc names a board"}, folder)
        self._session: Any = None

    def session(self) -> Any:
        if self._session is None:
            import socket

            from tvm import rpc as tvm_rpc

            host, _, port = self.rpc.rpartition(":")
            try:
                socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
            except (OSError, ValueError) as e:
                raise BackendError(f"split: no edge device answers at {self.rpc} to profile on ({e}); start one with "
                                   f"`lepton-device emulate --port {DEFAULT_EMULATOR_PORT}` or give "
                                   "--option edge-rpc=HOST:PORT") from None
            self._session = tvm_rpc.connect(host or "127.0.0.1", int(port))
        return self._session

    def close(self) -> None:
        self._session = None  # the server serves one session at a time: let it go
        import gc

        gc.collect()

    def time(self, model: Model, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
        import tvm
        from tvm import relax

        with tempfile.TemporaryDirectory(prefix="lepton-split-edge-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = Path(tmp) / "a"
            get_backend("tvm-arm")().compile(model, out, target=self.target)
            man = read_manifest(out)
            if len(man["stages"]) != 1 or man["stages"][0]["backend"] != "tvm-arm":
                raise BackendError("TVM compiles it only with ONNX Runtime stages")
            st = man["stages"][0]
            lib = out / st["entry"]
            sess = self.session()
            name = f"lepton-split-{man['files'][st['entry']][:16]}.so"
            sess.upload(bytearray(lib.read_bytes()), target=name)
            dev = sess.cpu(0)
            vm = relax.VirtualMachine(sess.load_module(name), dev)
            args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[i["name"]]), dev) for i in man["inputs"]]

            def runs(n: int) -> list[float]:
                res = vm.time_evaluator("main", dev, number=1, repeat=n)(*args)
                return [float(t) * 1e3 for t in res.results]

            vm["main"](*args)  # warm-up
            times = runs(3)
            if float(np.median(times)) * self.repeat * 3 < RUN_BUDGET_MS:  # fast: many more runs
                times += runs(self.repeat * 3)
            return {"ms": float(np.min(times)), "median_ms": float(np.median(times)), "runs": len(times),
                    "timed_on": "device"}


class CloudTimer:
    """Times one-node models on this host: compiled by tvm-cpu or the onnx backend, opened by the
    backend's own loader, timed (`time_host_artifact`)."""

    def __init__(self, cloud: str, repeat: int, folder: str | os.PathLike | None = None) -> None:
        import platform

        self.cloud, self.repeat = cloud, repeat
        cpu = _cpu_name()
        self.backend = "onnx" if cloud == "onnx" else "tvm-cpu"
        self.target = None if cloud in ("onnx", "native") else cloud
        self.db = ProfileDB({"side": "cloud", "backend": self.backend, "target": self.target or "native",
                             "host": f"{platform.machine()} {cpu}", "threads": os.cpu_count()}, folder)

    def close(self) -> None:
        pass

    def time(self, model: Model, feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="lepton-split-cloud-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = Path(tmp) / "a"
            get_backend(self.backend)().compile(model, out, target=self.target)
            return time_host_artifact(out, feeds, self.repeat)


def open_host_artifact(folder: str | os.PathLike) -> tuple[list[str], Any, Any]:
    """(input names, run(feeds) -> outputs, benchmark or None) for an artifact of host stages,
    opened with each stage's backend (what `lepton.load` does, from this layer)."""
    from lepton_backends.artifact import stage_dir, stage_view

    man = read_manifest(folder)
    runners = [(st, get_backend(st["backend"])().load(stage_dir(folder, st), stage_view(man, i)))
               for i, st in enumerate(man["stages"])]
    names = [i["name"] for i in man["inputs"]]
    outs = [o["name"] for o in man["outputs"]]

    def run(feeds: Mapping[str, Any]) -> dict[str, Any]:
        env = dict(feeds)
        for st, r in runners:
            env.update(r.run({s["name"]: env[s["name"]] for s in st["inputs"]}))
        return {n: env[n] for n in outs}

    inner = getattr(getattr(runners[0][1], "runner", None), "benchmark", None) if len(runners) == 1 else None
    return names, run, inner


def time_host_artifact(folder: Path, feeds: Mapping[str, np.ndarray], repeat: int) -> dict[str, Any]:
    """Least ms of the runs of a host artifact (one TVM stage: its runner's benchmark; else a
    timed loop): 3 runs, then 3 x repeat more when they are fast; and the median."""
    names, run, inner = open_host_artifact(folder)
    feed = {k: feeds[k] for k in names}
    if inner is not None:
        b = inner(feed, repeat=3, warmup=1)
        if b["median_ms"] * repeat * 3 < RUN_BUDGET_MS:
            more = inner(feed, repeat=repeat * 3, warmup=0)
            b = {**more, "min_ms": min(b["min_ms"], more["min_ms"])}
        return {"ms": b["min_ms"], "median_ms": b["median_ms"]}
    run(feed)
    times = []
    for k in range(repeat * 3):
        t0 = time.perf_counter()
        run(feed)
        times.append((time.perf_counter() - t0) * 1e3)
        if k == 2 and float(np.median(times)) * repeat * 3 >= RUN_BUDGET_MS:
            break
    return {"ms": float(np.min(times)), "median_ms": float(np.median(times))}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


@dataclasses.dataclass
class Profile:
    """What the cut needs: per-node ms on each side, the call overheads, codec costs."""

    edge_ms: dict[int, float]
    cloud_ms: dict[int, float]
    edge_call_ms: float
    cloud_call_ms: float
    codec: dict[str, dict[str, float]]   # kind -> {"encode_ns_per_elem", "decode_ns_per_elem"}
    measured: int                        # records measured now (the rest came from the database)
    reused: int
    raw_edge_ms: dict[int, float] = dataclasses.field(default_factory=dict)
    raw_cloud_ms: dict[int, float] = dataclasses.field(default_factory=dict)
    edge_db: str = ""
    cloud_db: str = ""

    def costs(self) -> Any:
        from lepton_ir.cut import NodeCosts

        return NodeCosts(self.edge_ms, self.cloud_ms, self.edge_call_ms, self.cloud_call_ms)

    def compression(self, kind: str) -> Any:
        from lepton_ir.cut import Compression

        if kind == "none":
            return Compression()
        c = self.codec[kind]
        return Compression(kind, c["encode_ns_per_elem"], c["decode_ns_per_elem"])


def _runnable(model: Model) -> Model:
    """`model` with Lepton's fused ops lowered to ONNX (names of their outputs kept), for ONNX Runtime."""
    from lepton_ir.clone import clone_model
    from lepton_passes import PassManager

    if not any(n.domain == "ai.lepton" for n in model.graph):
        return model
    work = clone_model(model)
    PassManager("lower-fused-to-onnx", verify_each=False).run(work)
    return work


def _random_feeds(model: Model, seed: int = 0) -> dict[str, np.ndarray]:
    from lepton_ir.reference import random_inputs

    return random_inputs(model, seed=seed)


def profile_model(model: Model, opts: SplitOptions, *, feeds: Mapping[str, np.ndarray] | None = None,
                  edge: Any = None, cloud: Any = None, codecs: Sequence[str] = ()) -> Profile:
    """Time every node of `model` (static shapes) on the edge and on the cloud, through the
    profile databases; measure only what they lack. Progress lines go to stderr."""
    name_values(model)
    edge = edge or EdgeTimer(opts.edge, opts.edge_rpc, opts.repeat, opts.profiles)
    cloud = cloud or CloudTimer(opts.cloud, opts.repeat, opts.profiles)
    feeds = dict(feeds) if feeds is not None else _random_feeds(model)
    values = record_values(model, feeds)
    models = node_models(model)
    nodes = list(model.graph)
    measured = reused = 0

    def timed(side: Any, key: str, m: Model, what: str, i: int, n: int, feed: Any = None) -> float:
        nonlocal measured, reused
        rec = side.db.get(key)
        if rec is None:
            t0 = time.perf_counter()
            try:
                rec = side.time(m, values if feed is None else feed)
            except Exception as e:  # noqa: BLE001 - cannot run there: the cut keeps it off that side
                rec = {"ms": None, "error": str(e).splitlines()[0][:300] if str(e) else type(e).__name__}
            if rec.get("ms") is not None:  # failures are not stored: the next compile tries again
                side.db.put(key, {**rec, "what": what})
                side.db.save()
            measured += 1
            ms = rec.get("ms")
            _progress(f"split: profiling {side.db.target['side']} [{i}/{n}] {what}: "
                      f"{'failed: ' + rec['error'] if ms is None else f'{ms:.3f} ms'} "
                      f"({time.perf_counter() - t0:.1f} s)")
        else:
            reused += 1
        return math.inf if rec.get("ms") is None else float(rec["ms"])

    try:
        todo = sum(1 for m in models if m is not None)
        sides = {}
        for side in (edge, cloud):
            over = overhead_model()
            ov = timed(side, model_key(over), over, "call overhead (x+1 on one float)", 0, todo,
                       {"x": np.ones([1], np.float32)})
            if math.isinf(ov):
                raise BackendError(f"split: the {side.db.target['side']} side cannot run even a one-node model")
            raw: dict[int, float] = {}
            k = 0
            for i, (n, m) in enumerate(zip(nodes, models)):
                if m is None:
                    raw[i] = 0.0
                    continue
                k += 1
                raw[i] = timed(side, model_key(m), m, f"node {i} {_label(n)}", k, todo)
            sides[side.db.target["side"]] = (ov, raw)
        codec: dict[str, dict[str, float]] = {}
        for kind in codecs:
            if kind == "none":
                continue
            enc, dec = codec_models(kind)
            rng = np.random.default_rng(0)
            x = rng.standard_normal([1, CODEC_ELEMS]).astype(np.float32)
            enc_vals = record_values(enc, {"x": x})
            e = timed(edge, model_key(enc), enc, f"{kind} encode of {CODEC_ELEMS} floats", 0, 0, enc_vals)
            d_ms = timed(cloud, model_key(dec), dec, f"{kind} decode of {CODEC_ELEMS} floats", 0, 0, enc_vals)
            codec[kind] = {"encode_ns_per_elem": max(0.0, e - sides["edge"][0]) * 1e6 / CODEC_ELEMS,
                           "decode_ns_per_elem": max(0.0, d_ms - sides["cloud"][0]) * 1e6 / CODEC_ELEMS}
    finally:
        for side in (edge, cloud):
            side.close()
    (eov, eraw), (cov, craw) = sides["edge"], sides["cloud"]
    return Profile({i: max(0.0, t - eov) if not math.isinf(t) and t else t for i, t in eraw.items()},
                   {i: max(0.0, t - cov) if not math.isinf(t) and t else t for i, t in craw.items()},
                   eov, cov, codec, measured, reused, eraw, craw, str(edge.db.path), str(cloud.db.path))


# -- cutting the model ---------------------------------------------------------------------------
def split_models(model: Model, cut: Any, compression: str = "none") -> tuple[Model | None, Model | None]:
    """(head, tail) for `cut` (a `lepton_ir.cut.Cut`): the head runs the edge nodes and outputs the
    uplink values (encoded when `compression` is fp16/int8) and the graph outputs it computes; the
    tail reads the graph inputs it needs and the (decoded) uplink values. None for an empty side."""
    import lepton_ir
    from lepton_ir import split_stages

    g = model.graph
    if not cut.cloud_nodes:
        return model, None
    if not cut.edge_nodes:
        return None, model
    inputs = {v.name for v in g.inputs}
    nodes = list(g)
    head_out = [o.name for i in sorted(cut.edge_nodes) for o in nodes[i].outputs
                if o.name and (o.name in cut.uplink or o.is_graph_output())]
    head_out = list(dict.fromkeys(head_out))
    head, tail = split_stages(model, [head_out])
    hm, tm = head.model, tail.model
    sent = [n for n in cut.uplink if n not in inputs]
    if compression != "none":
        hm, tm = _compress(hm, tm, [n for n in sent if _is_float(hm, n)], compression)
    return hm, tm


def _is_float(model: Model, name: str) -> bool:
    v = next((o for o in model.graph.outputs if o.name == name), None)
    return v is not None and getattr(getattr(v.type, "dtype", None), "name", "") == "FLOAT"


def _compress(head: Model, tail: Model, names: Sequence[str], kind: str) -> tuple[Model, Model]:
    import lepton_ir
    from onnx import TensorProto, helper

    hp, tp = lepton_ir.to_onnx(head), lepton_ir.to_onnx(tail)
    tail_inputs = {i.name: i for i in tp.graph.input}
    for name in names:
        out = next(o for o in hp.graph.output if o.name == name)
        shape = [d.dim_value for d in out.type.tensor_type.shape.dim]
        keep = [o for o in hp.graph.output if o.name != name]
        del hp.graph.output[:]
        hp.graph.output.extend(keep)
        if kind == "fp16":
            hp.graph.node.append(helper.make_node("Cast", [name], [f"{name}.fp16"], to=TensorProto.FLOAT16))
            hp.graph.output.append(helper.make_tensor_value_info(f"{name}.fp16", TensorProto.FLOAT16, shape))
            dec = [helper.make_node("Cast", [f"{name}.fp16"], [name], to=TensorProto.FLOAT)]
            new_in = [helper.make_tensor_value_info(f"{name}.fp16", TensorProto.FLOAT16, shape)]
        else:
            nodes, _ = _int8_encode_nodes(name)
            hp.graph.node.extend(nodes)
            hp.graph.output.extend([helper.make_tensor_value_info(f"{name}.int8", TensorProto.INT8, shape),
                                    helper.make_tensor_value_info(f"{name}.scale", TensorProto.FLOAT, [])])
            dec = _int8_decode_nodes(name)
            new_in = [helper.make_tensor_value_info(f"{name}.int8", TensorProto.INT8, shape),
                      helper.make_tensor_value_info(f"{name}.scale", TensorProto.FLOAT, [])]
        if name in tail_inputs:
            ins = [i for i in tp.graph.input if i.name != name]
            del tp.graph.input[:]
            tp.graph.input.extend(ins + new_in)
            body = list(tp.graph.node)
            del tp.graph.node[:]
            tp.graph.node.extend(dec + body)
    return lepton_ir.load(hp.SerializeToString()), lepton_ir.load(tp.SerializeToString())


def _cut_id(cut: Any) -> str:
    if not cut.cloud_nodes:
        return "edge-only"
    if not cut.edge_nodes:
        return "cloud-only"
    return "e" + hashlib.sha256(",".join(map(str, sorted(cut.edge_nodes))).encode()).hexdigest()[:8]


def select_cut(manifest: Mapping[str, Any], bandwidth_bps: float) -> dict[str, Any]:
    """The table row a runtime should use at `bandwidth_bps`: the grid point nearest in log scale
    (each row names its cut; `cuts[cut]` gives its stage folders). Rows are DADS cuts for their
    bandwidth, so between grid points the nearer cut is at most the grid's spacing from optimal."""
    plan = manifest.get("extra", {}).get("split") or manifest["stages"][0].get("extra", {}).get("split")
    if not plan:
        raise LeptonError("not a split artifact (no extra.split in the manifest)")
    rows = plan["table"]
    return min(rows, key=lambda r: abs(math.log(r["bandwidth_bps"]) - math.log(bandwidth_bps)))


# -- the backend ---------------------------------------------------------------------------------
@register_backend
class SplitBackend(Backend):
    """Cloud-edge split (DADS min cut on profiled nodes): edge stage on tvm-arm, cloud stage on tvm-cpu/onnx."""

    name = "split"
    # fuse: each profiled "node" is a small fused region (Conv+BN+Relu, MatMul+Add...), timed as
    # the TVM backends compile it, instead of ops that a whole-stage compile fuses away.
    default_pipeline = "canonicalize,fuse"
    Options = SplitOptions

    def check_target(self, target: str | None) -> None:
        if target:
            raise BackendOptionError("split: --target is not used; give --option edge=cortex-a72 --option cloud=native")

    def build(self, model: Model, staging: Path, *, target: str | None, options: Any) -> dict[str, Any]:
        raise BackendError("split: builds whole artifacts only (compile), not single stages")

    def load(self, folder: Path, stage: dict[str, Any]):
        raise BackendError("split: artifacts are opened per side (see docs/split.md)")

    def plan(self, model: Model, opts: SplitOptions, *, profile: Profile | None = None,
             feeds: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Profile (unless given) and cut: the chosen cut, the table, the profile."""
        import lepton_ir
        from lepton_ir.cut import BANDWIDTH_GRID, Link, dads_cut, evaluate

        name_values(model)
        view = lepton_ir.weighted_view(model)
        prof = profile or profile_model(model, opts, feeds=feeds, codecs=[opts.compress])
        costs, comp = prof.costs(), prof.compression(opts.compress)
        chosen = dads_cut(view, costs, Link(opts.bandwidth, opts.rtt), comp)
        table = [(b * 1e6, dads_cut(view, costs, Link.mbit(b, opts.rtt), comp)) for b in BANDWIDTH_GRID]
        cuts = {_cut_id(c): c for c in [chosen] + [c for _, c in table]}
        cuts.setdefault("edge-only", evaluate(view, range(len(model.graph)), costs, Link(opts.bandwidth, opts.rtt)))
        return {"view": view, "profile": prof, "chosen": chosen, "table": table, "cuts": cuts}

    def compile(self, model: Model, out_dir: str | os.PathLike, *, target: str | None = None,
                options: Any = None, pipeline_text: str = "", source_sha256: str | None = None,
                run_pipeline: PipelineRunner | None = None, extra: Mapping[str, Any] | None = None,
                profile: Profile | None = None) -> Path:
        import lepton_ir
        from lepton_ir.clone import clone_model
        from lepton_ir.cut import cut_json

        opts = self.parse_options(options)
        self.check_target(target)
        check_output_path(out_dir)
        work = clone_model(model)
        pins = _pins(work, opts.input_shapes)
        if pins:
            from lepton_passes import PassManager

            runner = run_pipeline or (lambda p, m: PassManager(p, verify_each=True).run(m))
            if any(n.domain == "ai.lepton" for n in work.graph):
                # Types of fused ops are not re-inferred by pinning: lower them, pin, fuse again.
                runner("lower-fused-to-standard", work)
            lepton_ir.pin_input_shapes(work, pins)
            runner(self.default_pipeline, work)
        plan = self.plan(work, opts, profile=profile)
        prof, chosen = plan["profile"], plan["chosen"]
        cloud_be = "onnx" if opts.cloud == "onnx" else "tvm-cpu"
        cloud_target = None if opts.cloud in ("onnx", "native") else opts.cloud
        table = [{"bandwidth_bps": b, "bandwidth": format_bandwidth(b), "cut": _cut_id(c), **cut_json(c)}
                 for b, c in plan["table"]]
        split_extra: dict[str, Any] = {
            "options": str(opts), "chosen": _cut_id(chosen), "rtt_ms": opts.rtt, "compress": opts.compress,
            "table": table, "cuts": {},
            "profile": {"edge_db": prof.edge_db, "cloud_db": prof.cloud_db, "edge_call_ms": prof.edge_call_ms,
                        "cloud_call_ms": prof.cloud_call_ms, "edge_ms": prof.edge_ms, "cloud_ms": prof.cloud_ms,
                        "note": "edge figures are from the emulated device unless edge-rpc named a board: "
                                "not ARM speed; compare ratios"},
        }
        with atomic_dir(out_dir) as staging:
            top_stages: list[dict[str, Any]] = []
            for cid, cut in plan["cuts"].items():
                head, tail = split_models(work, cut, opts.compress if cut.kind == "split" else "none")
                entry: dict[str, Any] = {**cut_json(cut), "edge": None, "cloud": None}
                for side, m, be, tgt in (("edge", head, "tvm-arm", opts.edge), ("cloud", tail, cloud_be, cloud_target)):
                    if m is None:
                        continue
                    rel = f"cuts/{cid}/{side}"
                    (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                    _progress(f"split: compiling {cid} {side} ({len(m.graph)} nodes, {be})")
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        get_backend(be)().compile(m, staging / rel, target=tgt, run_pipeline=run_pipeline,
                                                  pipeline_text=pipeline_text)
                    entry[side] = rel
                    if cid == _cut_id(chosen):
                        sub = read_manifest(staging / rel)
                        for st in sub["stages"]:
                            st = dict(st)
                            d = st.get("dir", ".")
                            st["dir"] = rel if d == "." else f"{rel}/{d}"
                            st["name"] = f"{side}-{st.get('name', 'main')}" if len(sub["stages"]) > 1 else side
                            st.pop("files", None)
                            top_stages.append(st)
                split_extra["cuts"][cid] = entry
            for st in top_stages:
                st["extra"] = {**st.get("extra", {}), "split": {"role": st["name"], "cut": _cut_id(chosen),
                                                                "table": "manifest extra.split"}}
            manifest = write_manifest(staging, top_stages, pipeline=pipeline_text, source_sha256=source_sha256,
                                      extra={**(extra or {}), "split": split_extra})
            backends = [get_backend(s["backend"])() for s in manifest["stages"]]
            check_loads(staging, manifest, backends)
            before_publish()
        _progress(f"split: {opts}: {chosen.describe()}; {len(plan['cuts'])} cut(s) compiled; "
                  f"profiles: {prof.measured} measured, {prof.reused} reused")
        return Path(out_dir)


def _pins(model: Model, shapes: Mapping[str, Sequence[int]] | None) -> dict[str, list[int]]:
    """The input shapes to pin: the option's, else symbolic dims set to 1 (with a warning)."""
    if shapes:
        return {k: list(v) for k, v in shapes.items()}
    pins = {}
    for v in model.graph.inputs:
        if v.const is not None or v.type is None or getattr(v.type, "shape", None) is None:
            continue
        dims = list(v.type.shape.dims)
        if any(not isinstance(d, int) for d in dims):
            pins[v.name] = [d if isinstance(d, int) else 1 for d in dims]
    if pins:
        shown = ", ".join(f"{k}={'x'.join(map(str, d))}" for k, d in pins.items())
        warnings.warn(f"split: symbolic input dims set to 1 for profiling and cutting (input-shapes={shown})",
                      stacklevel=3)
    return pins


__all__ = ["SplitBackend", "SplitOptions", "ProfileDB", "Profile", "profile_model", "split_models", "select_cut",
           "parse_bandwidth", "parse_duration_ms", "parse_spec", "node_models", "name_values", "codec_models", "model_key"]
