"""The edge runtime of a split artifact (issue #16): the head on the edge device, the tail on a server.

    from lepton.split_runtime import SplitRuntime
    with SplitRuntime("out/", cloud="http://10.0.0.2:8000", rpc="127.0.0.1:9098") as rt:
        outputs = rt.run({"image": x})        # the whole model's outputs
        rt.last                               # cut, edge/link/server ms, bytes, bandwidth/RTT estimates

    python -m lepton.split_runtime out/ --cloud http://HOST:PORT --rpc 127.0.0.1:9098 \\
        --input image=x.npy [--repeat N] [--output out.npz]

The cloud side is `lepton-serve out/` (the same artifact folder): on a split artifact it serves
every cut's cloud half as model `NAME.CUT` (docs/serving.md), so switching cuts needs no other
server. Per request the runtime

1. runs the current cut's edge half on the device (`lepton.remote.RemoteRunner`; nothing for the
   cloud-only cut), which ends with the encode nodes when the artifact was compiled with
   `compress=fp16|int8`;
2. sends the tensors the cloud half reads (head outputs and graph inputs) with
   `InferenceClient.infer` (OIP v2, binary tensor data) and gets the outputs back;
3. measures the link from that very exchange: wall time minus the server's own compute time (its
   `Server-Timing` header) is the network time; with the request and response body bytes it
   updates an EWMA estimate of bandwidth (RTT from the small readiness probes it sends every
   `probe_every` requests and at start), and
4. picks the table row for the estimated bandwidth (`select_cut`); it switches cuts only when
   that row has named the same other cut for `patience` requests in a row (hysteresis).

On the edge-only cut nothing crosses the link, so every `edge_probe_every`-th request runs the
cloud-only cut (or the artifact's cut with the least edge work) instead: a real inference whose
transfer is the measurement. When the server is
unreachable the runtime says so (one line on stderr) and runs the edge-only cut, which every split
artifact carries, or raises `SplitRuntimeError` with `fallback=False`.

`ShapedLink` is the test and bench link: a private network namespace whose loopback is shaped by
`tc ... tbf` (netem is not in these kernels, so a round-trip delay is added in the transport:
a sleep before each request, `delay_ms`), the server run inside it and the runtime's connections
made inside it (setns on the connecting thread), so the edge device's RPC stays unshaped.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lepton_ir import LeptonError

PROG = "lepton-split-run"


class SplitRuntimeError(LeptonError):
    """The split artifact cannot be run as asked (bad artifact, no server and no fallback)."""


# ------------------------------------------------------------------------------------------------
# The link estimate
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LinkEstimate:
    """Estimates of the link from the exchanges themselves.

    `observe(nbytes, net_ms)` takes one infer exchange: body bytes both ways (headers included)
    and its network time (wall time minus the server's compute time). Exchanges smaller than
    `min_sample_bytes` say nothing about bandwidth (a token bucket or a congestion window lets
    them through at line rate; their time is the round trip and per-message cost), so they are
    RTT samples; larger ones are bandwidth samples, `bytes * 8 / (net - rtt)`. Bandwidth is
    averaged in log scale (a step from 100 to 5 Mbit/s weighs as one from 5 to 100), except that a
    sample more than `jump` times away from the estimate replaces it: a step of the link is
    followed at once, and the runtime's hysteresis (`patience`) guards against one outlier. The
    RTT is the least recent small-exchange time (a min filter, as TCP BBR keeps its min RTT)."""

    bandwidth_bps: float
    rtt_ms: float = 0.0
    alpha: float = 0.5
    min_sample_bytes: int = 4096
    jump: float = 2.5
    #: Serialisation time below this is timer noise, not a measurement (caps a sample's rate).
    min_serial_ms: float = 0.02
    #: The RTT is the least of the last `rtt_window` samples: delays only ever add (load, queues).
    rtt_window: int = 8
    samples: int = 0
    rtt_samples: int = 0
    _recent: list = dataclasses.field(default_factory=list, repr=False)

    def observe(self, nbytes: int, net_ms: float) -> bool:
        """Take one exchange; True when it was a bandwidth sample."""
        if nbytes < self.min_sample_bytes:
            self.observe_rtt(max(0.0, net_ms - nbytes * 8 / self.bandwidth_bps * 1e3))
            return False
        serial = max(net_ms - self.rtt_ms, self.min_serial_ms)
        sample = nbytes * 8 / (serial / 1e3)
        ratio = max(sample, self.bandwidth_bps) / min(sample, self.bandwidth_bps)
        if self.samples == 0 or ratio > self.jump:
            self.bandwidth_bps = sample
        else:
            self.bandwidth_bps = math.exp((1 - self.alpha) * math.log(self.bandwidth_bps) + self.alpha * math.log(sample))
        self.samples += 1
        return True

    def observe_rtt(self, ms: float) -> None:
        """One round trip of a small message (its serialisation already subtracted)."""
        self._recent = (self._recent + [ms])[-self.rtt_window:]
        self.rtt_ms = min(self._recent)
        self.rtt_samples += 1


@dataclasses.dataclass
class RequestRecord:
    """What one `SplitRuntime.run` did."""

    index: int
    cut: str
    kind: str
    edge_ms: float          # the edge half's run (device over RPC), setup excluded
    link_ms: float          # wall time of the exchange minus the server's compute
    server_ms: float
    total_ms: float         # the whole request, setup (a new edge session) excluded
    up_bytes: int
    down_bytes: int
    bandwidth_est_bps: float
    rtt_est_ms: float
    setup_ms: float = 0.0   # opening the cut's edge session (connect + upload), on a switch
    padded: int = 0         # probe bytes added to the request so that it measures the bandwidth
    sample: bool = False    # the exchange was a bandwidth sample
    probe: bool = False     # a cloud-only request sent to measure the link while on edge-only
    switched_to: str | None = None
    fallback: str | None = None


# ------------------------------------------------------------------------------------------------
# The runtime
# ------------------------------------------------------------------------------------------------
def read_plan(artifact: str | os.PathLike) -> dict[str, Any]:
    """The `extra.split` of a split artifact's manifest (SplitRuntimeError if it is not one)."""
    from lepton_backends import read_manifest

    try:
        man = read_manifest(Path(artifact))
    except Exception as e:  # noqa: BLE001 - a missing, damaged or tampered artifact: one line
        raise SplitRuntimeError(f"{artifact}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    plan = (man.get("extra") or {}).get("split")
    if not plan:
        raise SplitRuntimeError(f"{artifact}: not a split artifact (no extra.split in its manifest; compile with "
                                f"--backend split)")
    return {**plan, "outputs": [o["name"] for o in man["outputs"]], "inputs": [i["name"] for i in man["inputs"]],
            "manifest": man}


#: HTTP request and response headers of one infer exchange, roughly (they cross the link too).
HEADER_BYTES = 400


class SplitRuntime:
    """Runs a split artifact: edge halves on the device over TVM RPC, cloud halves on a
    `lepton-serve` of the same artifact (module docstring).

    Link measurement: every exchange of at least `min_sample_bytes` is a bandwidth sample. When the
    current cut's exchanges are smaller, every `probe_every`-th one is padded to `probe_bytes`
    with an ignored request parameter (OIP v2 allows any; the server reads and drops it), so that
    a token bucket cannot hide the rate. On edge-only every `edge_probe_every`-th request runs the
    cloud-only cut instead (a real inference, padded likewise). The cut follows the table row of
    the estimate after `patience` bandwidth samples in a row named the same other cut; while one
    is pending, the next request is a sample too (padded, or a cloud-only probe from edge-only),
    so a step of the link moves the cut within `probe_every + patience` requests."""

    def __init__(self, artifact: str | os.PathLike, cloud: str | None, *, rpc: str | None = None,
                 tracker: str | None = None, key: str | None = None, token: str | None = None,
                 timeout: float = 30.0, model: str | None = None, bandwidth: float | None = None,
                 adapt: bool = True, cut: str | None = None, alpha: float = 0.5, patience: int = 2,
                 probe_every: int = 3, edge_probe_every: int = 8, probe_bytes: int = 16384, probe_ms: float = 5.0,
                 explore_every: int = 16,
                 min_sample_bytes: int = 4096, choose: str = "table", fallback: bool = True,
                 connect: Callable[[tuple[str, int], float | None], Any] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        from lepton_backends.split import select_cut

        self.folder = Path(artifact)
        self.plan = read_plan(artifact)
        self.manifest = self.plan["manifest"]
        self._select = select_cut
        self.rpc, self.tracker, self.key = rpc, tracker, key
        self.cloud, self.token, self.timeout = cloud, token, timeout
        self.model_prefix = model
        self.adapt, self.patience, self.fallback = adapt, max(1, patience), fallback
        self.probe_every, self.edge_probe_every = max(1, probe_every), max(1, edge_probe_every)
        self.probe_bytes = max(int(probe_bytes), int(min_sample_bytes))
        self.probe_ms, self.explore_every = probe_ms, max(2, explore_every)
        if choose not in ("table", "measured"):
            raise SplitRuntimeError(f"choose={choose!r}: expected 'table' or 'measured'")
        self.choose = choose
        #: Measured compute per cut and side (the last few ms figures), for choose="measured".
        self.measured: dict[tuple[str, str], list[float]] = {}
        self._last_run: dict[str, int] = {}
        self.connect = connect
        self.log = log or (lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True))
        start_bw = bandwidth if bandwidth is not None else _plan_bandwidth(self.plan)
        self.link = LinkEstimate(start_bw, float(self.plan.get("rtt_ms", 0.0)), alpha,
                                 min_sample_bytes=int(min_sample_bytes))
        self.cut = cut or (self._row(start_bw)["cut"] if cloud else "edge-only")
        if self.cut not in self.plan["cuts"]:
            raise SplitRuntimeError(f"cut {self.cut!r} is not in the artifact; it has {', '.join(self.plan['cuts'])}")
        if cloud is not None:
            _client_class()(cloud, token=token, model="-")  # a bad URL is a user error now, not a fallback
        self.history: list[RequestRecord] = []
        self._edge: tuple[str, Any] | None = None      # (folder, RemoteRunner): one device session
        self._clients: dict[str, Any] = {}
        self._models: list[str] | None = None
        self._pending: tuple[str, int] | None = None  # (cut, consecutive samples naming it)
        self._since_sample = 0                         # link exchanges since the last bandwidth sample
        self._offline = cloud is None
        # The cut an edge-only runtime probes the link with: cloud-only when the artifact has it,
        # else the cut with a cloud half that leaves the least on the edge.
        with_cloud = [k for k, c in self.plan["cuts"].items() if c.get("cloud")]
        self._probe_cut = "cloud-only" if "cloud-only" in with_cloud else \
            min(with_cloud, key=lambda k: float(self.plan["cuts"][k].get("edge_ms") or 0.0), default=None)

    # -- pieces
    def _row(self, bps: float) -> dict[str, Any]:
        return self._select({"extra": {"split": self.plan}}, bps)

    def _edge_runner(self, rel: str) -> tuple[Any, float]:
        if self._edge is not None and self._edge[0] == rel:
            return self._edge[1], 0.0
        from .remote import RemoteRunner

        t0 = time.perf_counter()
        if self._edge is not None:  # a plain TVM RPC server serves one session at a time: let the old one go
            self._edge[1].close()
            self._edge = None
        r = RemoteRunner(self.folder / rel, rpc=self.rpc, tracker=self.tracker, key=self.key)
        self._edge = (rel, r)
        return r, (time.perf_counter() - t0) * 1e3

    def _client(self, cut: str) -> Any:
        if cut in self._clients:
            return self._clients[cut]
        if self._models is None:
            self._models = list(self._base_client()._json("GET", "/v2").get("models") or [])
        want = [m for m in self._models if m.endswith("." + cut) and
                (self.model_prefix is None or m == f"{self.model_prefix}.{cut}")]
        if len(want) != 1:
            raise SplitRuntimeError(f"{self.cloud}: the server has no model for cut {cut!r} (it has "
                                    f"{', '.join(self._models) or 'none'}); serve this artifact with lepton-serve")
        c = _client_class()(self.cloud, token=self.token, timeout=self.timeout, model=want[0], connect=self.connect)
        self._clients[cut] = c
        return c

    def _base_client(self) -> Any:
        if "" not in self._clients:
            self._clients[""] = _client_class()(self.cloud, token=self.token, timeout=self.timeout, model="-",
                                                connect=self.connect)
        return self._clients[""]

    def probe_rtt(self) -> float:
        """One readiness exchange (a few hundred bytes): its time is an RTT sample."""
        c = self._base_client()
        c._checked("GET", "/v2/health/ready")  # the connection's set-up is not a round trip
        t0 = time.perf_counter()
        _, data = c._checked("GET", "/v2/health/ready")
        ms = (time.perf_counter() - t0) * 1e3
        self.link.observe_rtt(max(0.0, ms - (len(data) + 200) * 8 / self.link.bandwidth_bps * 1e3))
        return ms

    # -- one request
    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The whole model's outputs for `feeds`, through the current cut."""
        from .serve import ServeConnectionError, ServeProtocolError, ServeRequestError, ServeServerError

        i = len(self.history)
        cut, probe = self.cut, False
        if self._offline:
            cut = "edge-only"
        elif cut == "edge-only" and self.adapt and self._probe_cut is not None \
                and (self._pending is not None or self._since_sample + 1 >= self.edge_probe_every):
            cut, probe = self._probe_cut, True
        elif self.adapt and self.choose == "measured" and i and i % self.explore_every == 0:
            cut = self._explore() or cut
        try:
            if not self._offline and self.link.rtt_samples == 0:
                self.probe_rtt()
            out, rec = self._run_cut(cut, feeds, i, probe)
        except (ServeConnectionError, ServeServerError, ServeProtocolError) as e:
            # The server is gone, failing or answering nonsense: never a wrong output, so either
            # the whole model here or a clear error.
            if not self.fallback:
                raise SplitRuntimeError(f"the cloud failed ({e}) and fallback is off") from None
            self.log(f"the cloud failed ({e}); running the whole model on the edge (edge-only) from now on")
            self._offline = True
            out, rec = self._run_cut("edge-only", feeds, i, False)
            rec.fallback = str(e)
        except ServeRequestError as e:  # 4xx: the server refuses us (token, model): not a link problem
            raise SplitRuntimeError(f"the cloud refused the request: {e}") from None
        rec.probe = probe
        self.history.append(rec)
        self._learn(rec)
        if self.adapt and not self._offline and (rec.sample or self.choose == "measured"):
            rec.switched_to = self._adapt()
        return out

    def _run_cut(self, cut: str, feeds: Mapping[str, Any], i: int, probe: bool,
                 ) -> tuple[dict[str, np.ndarray], RequestRecord]:
        entry = self.plan["cuts"][cut]
        env: dict[str, Any] = dict(feeds)
        edge_ms = setup_ms = 0.0
        if entry.get("edge"):
            r, setup_ms = self._edge_runner(entry["edge"])
        t0 = time.perf_counter()
        if entry.get("edge"):
            env.update(r.run({k: env[k] for k in r.input_names}))
            edge_ms = (time.perf_counter() - t0) * 1e3
        link_ms = server_ms = 0.0
        up = down = pad = 0
        sample = False
        if entry.get("cloud"):
            c = self._client(cut)
            sends = {k: np.asarray(env[k]) for k in self._cloud_inputs(entry["cloud"])}
            natural = sum(a.nbytes for a in sends.values()) + HEADER_BYTES
            if self.adapt and natural < self.link.min_sample_bytes and \
                    (probe or self._pending is not None or self._since_sample + 1 >= self.probe_every):
                # ~probe_ms of traffic at the estimated rate: enough to see past a token bucket's
                # burst, bounded so that a probe stays cheap on a slow link
                size = min(self.probe_bytes, max(self.link.min_sample_bytes, int(self.link.bandwidth_bps * self.probe_ms / 8e3)))
                pad = size - natural
            tc = time.perf_counter()
            env.update(c.infer(sends, pad=pad))
            wall = (time.perf_counter() - tc) * 1e3
            ex = c.last_exchange or {}
            server_ms = float(ex.get("server_ms") or 0.0)
            up, down = int(ex.get("request_bytes", 0)), int(ex.get("response_bytes", 0))
            link_ms = max(0.0, wall - server_ms)
            sample = self.link.observe(up + down + HEADER_BYTES, link_ms)
            self._since_sample = 0 if sample else self._since_sample + 1
        else:
            self._since_sample += 1
        missing = [o for o in self.plan["outputs"] if o not in env]
        if missing:
            raise SplitRuntimeError(f"cut {cut}: outputs {missing} came from neither half")
        total = (time.perf_counter() - t0) * 1e3
        rec = RequestRecord(i, cut, entry.get("kind", ""), edge_ms, link_ms, server_ms, total, up, down,
                            self.link.bandwidth_bps, self.link.rtt_ms, setup_ms, max(0, pad), sample)
        return {o: np.asarray(env[o]) for o in self.plan["outputs"]}, rec

    def _cloud_inputs(self, rel: str) -> list[str]:
        from lepton_backends import read_manifest

        key = str(self.folder / rel)
        if key not in _INPUTS_CACHE:
            _INPUTS_CACHE[key] = [i["name"] for i in read_manifest(self.folder / rel)["inputs"]]
        return _INPUTS_CACHE[key]

    def _learn(self, rec: RequestRecord) -> None:
        self._last_run[rec.cut] = rec.index
        for side, ms, ran in (("edge", rec.edge_ms, bool(self.plan["cuts"][rec.cut].get("edge"))),
                              ("cloud", rec.server_ms, bool(self.plan["cuts"][rec.cut].get("cloud")))):
            if ran:  # the median of the last 5: one disturbed run (load, a first call) does not stick
                self.measured[(rec.cut, side)] = (self.measured.get((rec.cut, side), []) + [ms])[-5:]

    @property
    def costs(self) -> dict[tuple[str, str], float]:
        """Measured compute ms per (cut, side): the median of its last runs."""
        return {k: float(np.median(v)) for k, v in self.measured.items()}

    def predict_ms(self, cut: str, bps: float | None = None) -> float:
        """End-to-end ms of `cut` at `bps` (default: the estimate) from what this runtime measured:
        each side's compute as measured on this cut (else the profile's figure scaled by the
        measured / profiled ratio of that side's other cuts), the link as bytes * 8 / bps + RTT."""
        c = self.plan["cuts"][cut]
        bps = bps or self.link.bandwidth_bps
        total = 0.0
        costs = self.costs
        for side in ("edge", "cloud"):
            if not c.get(side):
                continue
            got = costs.get((cut, side))
            if got is None:
                known = [(costs[(k, side)], float(self.plan["cuts"][k].get(f"{side}_ms") or 0.0))
                         for k in self.plan["cuts"] if (k, side) in costs]
                scale = (sum(m for m, _ in known) / max(1e-9, sum(p for _, p in known))) if known else 1.0
                got = float(c.get(f"{side}_ms") or 0.0) * scale
            total += got
        if c.get("cloud"):
            up = int(c.get("uplink_bytes") or 0) + HEADER_BYTES
            down = sum(self._out_bytes.get(o, 0) for o in c.get("downlink") or []) + HEADER_BYTES // 2
            total += (up + down) * 8 / bps * 1e3 + self.link.rtt_ms
        return total

    @property
    def _out_bytes(self) -> dict[str, int]:
        if not hasattr(self, "_ob"):
            self._ob = {}
            for o in self.manifest["outputs"]:
                n = 1
                for d in o.get("shape") or []:
                    n *= d if isinstance(d, int) and d > 0 else 1
                try:
                    self._ob[o["name"]] = n * np.dtype(str(o.get("dtype", "float32"))).itemsize
                except Exception:  # noqa: BLE001 - an unknown dtype: count 4 bytes an element
                    self._ob[o["name"]] = 4 * n
        return self._ob

    def _explore(self) -> str | None:
        """The least recently run other cut predicted within 2x of the current one (re-measured:
        a cost measured once under load must not exclude a cut for good)."""
        here = self.predict_ms(self.cut)
        near = [k for k in self.plan["cuts"] if k != self.cut and self.predict_ms(k) <= 2 * here]
        return min(near, key=lambda k: self._last_run.get(k, -1)) if near else None

    def _want(self) -> str:
        if self.choose == "measured":
            return min(self.plan["cuts"], key=self.predict_ms)
        return self._row(self.link.bandwidth_bps)["cut"]

    def _adapt(self) -> str | None:
        want = self._want()
        if want == self.cut:
            self._pending = None
            return None
        n = self._pending[1] + 1 if self._pending and self._pending[0] == want else 1
        self._pending = (want, n)
        if n < self.patience:
            return None
        self.cut, self._pending = want, None
        return want

    # -- lifetime
    def close(self) -> None:
        """Close the device session and the server connections."""
        if self._edge is not None:
            self._edge[1].close()
            self._edge = None
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def __enter__(self) -> "SplitRuntime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_INPUTS_CACHE: dict[str, list[str]] = {}


def _plan_bandwidth(plan: Mapping[str, Any]) -> float:
    from lepton_backends.split import parse_bandwidth

    opts = str(plan.get("options", ""))
    for part in opts.strip("split{}").split(","):
        k, _, v = part.partition("=")
        if k == "bandwidth":
            return parse_bandwidth(v)
    return 20e6


_CLIENT_CLASS: Any = None


def _client_class() -> Any:
    """InferenceClient whose connections are made by `connect` (a shaped link's namespace) and
    whose infer can pad the request (a bandwidth probe)."""
    global _CLIENT_CLASS
    if _CLIENT_CLASS is None:
        from . import serve

        class _Client(serve.InferenceClient):
            def __init__(self, *a: Any, connect: Any = None, **kw: Any) -> None:
                super().__init__(*a, **kw)
                self._connect = connect

            def _connection(self) -> Any:
                conn, reused = super()._connection()
                if self._connect is not None and not reused:
                    conn._create_connection = lambda addr, timeout=None, source=None: self._connect(addr, timeout)
                return conn, reused

            def infer(self, inputs: Mapping[str, Any], binary: bool = True, outputs: Sequence[str] | None = None,
                      pad: int = 0) -> dict[str, np.ndarray]:
                if pad <= 0:
                    return super().infer(inputs, binary, outputs)
                # The base infer with one more request parameter: `lepton_probe`, pad bytes the
                # server parses and ignores (OIP v2 request parameters are free-form).
                rid = f"{os.getpid()}-{next(self._ids)}"
                entries, blobs = [], []
                for name, value in inputs.items():
                    b = serve._le_bytes(np.asarray(value))
                    entries.append({"name": str(name), "datatype": serve.oip_datatype(np.asarray(value).dtype),
                                    "shape": list(np.asarray(value).shape), "parameters": {"binary_data_size": len(b)}})
                    blobs.append(b)
                req = {"id": rid, "inputs": entries, "parameters": {"binary_data_output": True, "lepton_probe": ""}}
                header = json.dumps(req, separators=(",", ":"))
                header = header.replace('"lepton_probe":""', '"lepton_probe":"' + "0" * max(0, pad) + '"').encode()
                body = b"".join([header, *blobs])
                hdrs, data = self._checked("POST", self._model_path() + "/infer", body,
                                           {"Content-Type": "application/octet-stream",
                                            serve.HEADER_LENGTH: str(len(header))})
                self._local.last = {"request_bytes": len(body), "response_bytes": len(data),
                                    "server_ms": serve._server_timing(hdrs.get("Server-Timing"))}
                return self._decode(data, hdrs.get(serve.HEADER_LENGTH), rid, None if outputs is None else list(outputs))

        _CLIENT_CLASS = _Client
    return _CLIENT_CLASS


class SplitRunner:
    """`lepton-run ARTIFACT --cloud URL`'s runner: `run(inputs)` and `manifest` like `lepton.load`'s,
    through a SplitRuntime (one stderr line per request with its cut and link estimate)."""

    def __init__(self, artifact: str | os.PathLike, cloud: str, **kw: Any) -> None:
        self.runtime = SplitRuntime(artifact, cloud, **kw)
        self.manifest = self.runtime.manifest
        self.verbose = True

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out = self.runtime.run(inputs)
        if self.verbose:
            print(describe(self.runtime.history[-1]), file=sys.stderr)
        return out

    def close(self) -> None:
        self.runtime.close()


def describe(r: RequestRecord) -> str:
    """One line about one request."""
    return (f"{PROG}: request {r.index}: cut {r.cut} ({r.kind}) {r.total_ms:.2f} ms (edge {r.edge_ms:.2f}, "
            f"link {r.link_ms:.2f}, server {r.server_ms:.2f}; {r.up_bytes} B up, {r.down_bytes} B down"
            + (f", {r.padded} B probe" if r.padded else "") + f"); estimate {r.bandwidth_est_bps / 1e6:.2f} Mbit/s, "
            f"RTT {r.rtt_est_ms:.2f} ms" + (f"; switching to {r.switched_to}" if r.switched_to else "")
            + (f"; FALLBACK: {r.fallback}" if r.fallback else ""))


# ------------------------------------------------------------------------------------------------
# A shaped link for tests and benches
# ------------------------------------------------------------------------------------------------
_CLONE_NEWNET = 0x40000000


class _Reads:
    """A socket file whose reads mark the socket's next send as a new message (owing a delay)."""

    def __init__(self, f: Any, owner: "_DelayedSocket") -> None:
        self._f, self._owner = f, owner

    def _mark(self, v: Any) -> Any:
        self._owner._owed = True
        return v

    def read(self, *a: Any) -> Any:
        return self._mark(self._f.read(*a))

    def readline(self, *a: Any) -> Any:
        return self._mark(self._f.readline(*a))

    def readinto(self, b: Any) -> Any:
        return self._mark(self._f.readinto(b))

    def read1(self, *a: Any) -> Any:
        return self._mark(self._f.read1(*a))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


class _DelayedSocket:
    """A socket that waits `delay_ms` before the first send of each request: the round-trip delay
    the kernel cannot add here (no netem). http.client sends headers and body in two sends and
    reads the answer through `makefile`: a read makes the next send a new request."""

    def __init__(self, sock: socket.socket, delay_ms: float) -> None:
        self._sock, self._delay, self._owed = sock, delay_ms / 1e3, True

    def sendall(self, data: Any, *a: Any) -> None:
        if self._owed and self._delay:
            time.sleep(self._delay)
        self._owed = False
        self._sock.sendall(data, *a)

    def makefile(self, *a: Any, **kw: Any) -> Any:
        return _Reads(self._sock.makefile(*a, **kw), self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class ShapedLink:
    """A network namespace whose loopback (MTU 1500) is shaped by a tbf qdisc at `rate_bps`.

    `command(argv)` runs a program inside it (`ip netns exec`); `serve(artifact)` starts
    `lepton-serve` inside it and returns (process, URL); `connect((host, port), timeout)` opens a
    TCP connection inside it from this process (the calling thread enters the namespace with
    setns for the connect only: the socket stays in it, so the edge device's RPC stays unshaped);
    `set_rate(bps)` changes the rate while connections are open (`tc qdisc change`). Needs root
    (CAP_NET_ADMIN, CAP_SYS_ADMIN) and `ip`/`tc`."""

    def __init__(self, rate_bps: float, delay_ms: float = 0.0, name: str | None = None) -> None:
        self.name = name or f"lepton-link-{uuid.uuid4().hex[:8]}"
        self.rate_bps, self.delay_ms = rate_bps, delay_ms
        self._servers: list[subprocess.Popen] = []

    @staticmethod
    def available() -> str | None:
        """None when a shaped link can be made here, else why not."""
        if os.geteuid() != 0:
            return "needs root (network namespaces and tc)"
        for tool in ("ip", "tc"):
            if not any(Path(d, tool).exists() for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]):
                return f"needs {tool} (iproute2)"
        r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        if r.returncode:
            return f"ip netns does not work here: {r.stderr.strip()}"
        return None

    @staticmethod
    def _tbf(rate_bps: float) -> list[str]:
        # A bucket just over one MTU (or 0.5 ms of traffic at high rates) so that small messages
        # are shaped too; tbf refuses a burst below the MTU (every packet dropped).
        burst = max(1600, int(rate_bps / 8 * 0.0005))
        return ["tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst), "latency", "1000ms"]

    def _ip(self, *argv: str) -> None:
        r = subprocess.run(list(argv), capture_output=True, text=True)
        if r.returncode:
            raise SplitRuntimeError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")

    def __enter__(self) -> "ShapedLink":
        self._ip("ip", "netns", "add", self.name)
        try:
            self._ip("ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "mtu", "1500", "up")
            self._ip("ip", "netns", "exec", self.name, "tc", "qdisc", "add", "dev", "lo", "root", *self._tbf(self.rate_bps))
        except BaseException:
            self.__exit__()
            raise
        return self

    def set_rate(self, rate_bps: float) -> None:
        self._ip("ip", "netns", "exec", self.name, "tc", "qdisc", "change", "dev", "lo", "root", *self._tbf(rate_bps))
        self.rate_bps = rate_bps

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def serve(self, artifact: str | os.PathLike, *extra: str, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
        """Start `lepton-serve ARTIFACT --port 0` inside the namespace; (process, its URL) once it listens."""
        import queue
        import threading

        argv = self.command([sys.executable, "-m", "lepton.serve", str(artifact), "--port", "0", *extra])
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._servers.append(p)
        lines: "queue.Queue[str | None]" = queue.Queue()

        def drain() -> None:  # its log, read to the end so that it never blocks on a full pipe
            for line in p.stderr:  # type: ignore[union-attr]
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        deadline, seen = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line.strip())
            if "listening on http://" in line:
                return p, line.split("listening on ", 1)[1].strip()
        p.kill()
        raise SplitRuntimeError(f"lepton-serve did not start in {self.name}: {seen[-1] if seen else 'no output'}")

    def connect(self, address: tuple[str, int], timeout: float | None = None) -> Any:
        libc = ctypes.CDLL(None, use_errno=True)
        here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(there, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.name}: {os.strerror(ctypes.get_errno())}")
            try:
                sock = socket.create_connection(address, timeout)
            finally:
                if libc.setns(here, _CLONE_NEWNET) != 0:  # never leave the thread in the namespace
                    os._exit(70)
        finally:
            os.close(here)
            os.close(there)
        return _DelayedSocket(sock, self.delay_ms) if self.delay_ms else sock

    def __exit__(self, *exc: Any) -> None:
        for p in self._servers:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        self._servers.clear()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lepton.split_runtime ARTIFACT --cloud URL --input name=file.npy`."""
    from .cli import UsageError, _guard

    def body() -> int:
        p = argparse.ArgumentParser(prog=PROG, description="Run a split artifact: the edge half on the device, the "
                                    "cloud half on lepton-serve of the same artifact (docs/split.md).")
        p.add_argument("artifact")
        p.add_argument("--cloud", metavar="URL", help="the lepton-serve of this artifact (none: edge-only)")
        p.add_argument("--rpc", metavar="HOST:PORT", default="127.0.0.1:9098", help="the edge device's TVM RPC server")
        p.add_argument("--token-file", metavar="F")
        p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
        p.add_argument("--repeat", type=int, default=1)
        p.add_argument("--cut", help="start on this cut id (default: the table's row for the option's bandwidth)")
        p.add_argument("--no-adapt", action="store_true", help="stay on the starting cut")
        p.add_argument("--no-fallback", action="store_true", help="fail when the cloud is unreachable")
        p.add_argument("--output", metavar="FILE.npz")
        a = p.parse_args(argv)
        feeds = {}
        for spec in a.input:
            name, sep, path = spec.partition("=")
            if not sep:
                raise UsageError(f"--input {spec!r}: expected NAME=FILE.npy")
            try:
                feeds[name] = np.load(path)
            except (OSError, ValueError) as e:
                raise UsageError(f"--input {spec}: {e}") from None
        token = Path(a.token_file).read_text().splitlines()[0].strip() if a.token_file else None
        with SplitRuntime(a.artifact, a.cloud, rpc=a.rpc, token=token, cut=a.cut, adapt=not a.no_adapt,
                          fallback=not a.no_fallback) as rt:
            missing = [n for n in rt.plan["inputs"] if n not in feeds]
            if missing:
                raise UsageError(f"missing --input for {', '.join(missing)}")
            out = {}
            for _ in range(max(1, a.repeat)):
                out = rt.run(feeds)
                r = rt.history[-1]
                print(f"{PROG}: request {r.index}: cut {r.cut} ({r.kind}) {r.total_ms:.2f} ms (edge {r.edge_ms:.2f}, "
                      f"link {r.link_ms:.2f}, server {r.server_ms:.2f}; {r.up_bytes} B up, {r.down_bytes} B down); "
                      f"estimate {r.bandwidth_est_bps / 1e6:.2f} Mbit/s, RTT {r.rtt_est_ms:.2f} ms"
                      + (f"; switching to {r.switched_to}" if r.switched_to else ""), file=sys.stderr)
        if a.output:
            np.savez(a.output, **out)
        else:
            for k, v in out.items():
                print(f"{k}: {v.dtype}{list(v.shape)} {np.array2string(v.ravel()[:8], precision=4)}")
        return 0

    return _guard(PROG, body)


__all__ = ["SplitRuntime", "SplitRuntimeError", "LinkEstimate", "RequestRecord", "ShapedLink", "read_plan", "main"]

if __name__ == "__main__":
    sys.exit(main())
