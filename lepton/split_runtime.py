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

On the edge-only cut nothing crosses the link, so every `probe_every`-th request runs the
cloud-only cut instead (a real inference whose transfer is the measurement). When the server is
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
    """EWMA estimates of the link from the exchanges themselves.

    `observe(bytes, net_ms)` takes one infer exchange: body bytes both ways and its network time
    (wall time minus the server's compute time); the bandwidth sample is `bytes * 8 / (net - rtt)`
    (the time beyond one round trip is serialisation), averaged in log scale (a step from 100 to
    5 Mbit/s moves the estimate by the same weight as one from 5 to 100). `probe(net_ms, bytes)`
    takes a tiny readiness exchange: mostly round trip."""

    bandwidth_bps: float
    rtt_ms: float = 0.0
    alpha: float = 0.5
    #: Serialisation time below this is noise (timer and scheduling), not a bandwidth sample.
    min_serial_ms: float = 0.05
    samples: int = 0

    def observe(self, nbytes: int, net_ms: float) -> None:
        serial = max(net_ms - self.rtt_ms, self.min_serial_ms)
        sample = nbytes * 8 / (serial / 1e3)
        if self.samples == 0:
            self.bandwidth_bps = sample
        else:
            self.bandwidth_bps = math.exp((1 - self.alpha) * math.log(self.bandwidth_bps) + self.alpha * math.log(sample))
        self.samples += 1

    def probe(self, net_ms: float, nbytes: int) -> None:
        rtt = max(0.0, net_ms - nbytes * 8 / self.bandwidth_bps * 1e3)
        self.rtt_ms = rtt if self.samples == 0 and self.rtt_ms == 0.0 else (1 - self.alpha) * self.rtt_ms + self.alpha * rtt


@dataclasses.dataclass
class RequestRecord:
    """What one `SplitRuntime.run` did."""

    index: int
    cut: str
    kind: str
    edge_ms: float
    link_ms: float          # wall time of the exchange minus the server's compute
    server_ms: float
    total_ms: float
    up_bytes: int
    down_bytes: int
    bandwidth_est_bps: float
    rtt_est_ms: float
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
    return {**plan, "outputs": [o["name"] for o in man["outputs"]], "inputs": [i["name"] for i in man["inputs"]]}


class SplitRuntime:
    """Runs a split artifact: edge halves on the device over TVM RPC, cloud halves on a
    `lepton-serve` of the same artifact (module docstring)."""

    def __init__(self, artifact: str | os.PathLike, cloud: str | None, *, rpc: str | None = None,
                 tracker: str | None = None, key: str | None = None, token: str | None = None,
                 timeout: float = 30.0, model: str | None = None, bandwidth: float | None = None,
                 adapt: bool = True, cut: str | None = None, alpha: float = 0.5, patience: int = 2,
                 probe_every: int = 8, fallback: bool = True,
                 connect: Callable[[tuple[str, int], float], socket.socket] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        from lepton_backends.split import select_cut

        self.folder = Path(artifact)
        self.plan = read_plan(artifact)
        self._select = select_cut
        self.rpc, self.tracker, self.key = rpc, tracker, key
        self.cloud, self.token, self.timeout = cloud, token, timeout
        self.model_prefix = model
        self.adapt, self.patience, self.probe_every, self.fallback = adapt, max(1, patience), max(1, probe_every), fallback
        self.connect = connect
        self.log = log or (lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True))
        start_bw = bandwidth if bandwidth is not None else _plan_bandwidth(self.plan)
        self.link = LinkEstimate(start_bw, float(self.plan.get("rtt_ms", 0.0)), alpha)
        self.cut = cut or (self._row(start_bw)["cut"] if cloud else "edge-only")
        if self.cut not in self.plan["cuts"]:
            raise SplitRuntimeError(f"cut {self.cut!r} is not in the artifact; it has {', '.join(self.plan['cuts'])}")
        self.history: list[RequestRecord] = []
        self._edge: tuple[str, Any] | None = None      # (folder, RemoteRunner): one device session
        self._clients: dict[str, Any] = {}
        self._models: list[str] | None = None
        self._pending: tuple[str, int] | None = None  # (cut, consecutive requests naming it)
        self._offline = cloud is None

    # -- pieces
    def _row(self, bps: float) -> dict[str, Any]:
        return self._select({"extra": {"split": self.plan}}, bps)

    def _edge_runner(self, rel: str) -> Any:
        if self._edge is not None and self._edge[0] == rel:
            return self._edge[1]
        from .remote import RemoteRunner

        if self._edge is not None:  # the device serves one session at a time: let the old one go
            self._edge[1].close()
            self._edge = None
        r = RemoteRunner(self.folder / rel, rpc=self.rpc, tracker=self.tracker, key=self.key)
        self._edge = (rel, r)
        return r

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
        """One readiness exchange (a few hundred bytes): its time updates the RTT estimate."""
        c = self._base_client()
        t0 = time.perf_counter()
        _, data = c._checked("GET", "/v2/health/ready")
        ms = (time.perf_counter() - t0) * 1e3
        self.link.probe(ms, len(data) + 200)  # ~200 B of request and response headers
        return ms

    # -- one request
    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The whole model's outputs for `feeds`, through the current cut."""
        from .serve import ServeConnectionError

        i = len(self.history)
        cut, probe = self.cut, False
        if self._offline:
            cut = "edge-only"
        elif cut == "edge-only" and self.adapt and i % self.probe_every == self.probe_every - 1 \
                and "cloud-only" in self.plan["cuts"]:
            cut, probe = "cloud-only", True
        try:
            if not self._offline and self.link.samples == 0 and i == 0:
                self.probe_rtt()
            if not self._offline and i and i % self.probe_every == 0:
                self.probe_rtt()
            out, rec = self._run_cut(cut, feeds, i)
        except ServeConnectionError as e:
            if not self.fallback:
                raise SplitRuntimeError(f"the cloud is unreachable ({e}) and fallback is off") from None
            self.log(f"the cloud is unreachable ({e}); running the whole model on the edge (edge-only)")
            self._offline = True
            out, rec = self._run_cut("edge-only", feeds, i)
            rec.fallback = str(e)
        rec.probe = probe
        self.history.append(rec)
        if self.adapt and not self._offline:
            rec.switched_to = self._adapt()
        return out

    def _run_cut(self, cut: str, feeds: Mapping[str, Any], i: int) -> tuple[dict[str, np.ndarray], RequestRecord]:
        entry = self.plan["cuts"][cut]
        t0 = time.perf_counter()
        env: dict[str, Any] = dict(feeds)
        edge_ms = 0.0
        if entry.get("edge"):
            r = self._edge_runner(entry["edge"])
            te = time.perf_counter()
            env.update(r.run({k: env[k] for k in r.input_names}))
            edge_ms = (time.perf_counter() - te) * 1e3
        link_ms = server_ms = 0.0
        up = down = 0
        if entry.get("cloud"):
            c = self._client(cut)
            names = self._cloud_inputs(entry["cloud"])
            tc = time.perf_counter()
            env.update(c.infer({k: np.asarray(env[k]) for k in names}))
            wall = (time.perf_counter() - tc) * 1e3
            ex = c.last_exchange or {}
            server_ms = float(ex.get("server_ms") or 0.0)
            up, down = int(ex.get("request_bytes", 0)), int(ex.get("response_bytes", 0))
            link_ms = max(0.0, wall - server_ms)
            self.link.observe(up + down + 400, link_ms)  # + ~400 B of HTTP headers both ways
        missing = [o for o in self.plan["outputs"] if o not in env]
        if missing:
            raise SplitRuntimeError(f"cut {cut}: outputs {missing} came from neither half")
        total = (time.perf_counter() - t0) * 1e3
        rec = RequestRecord(i, cut, self.plan["cuts"][cut].get("kind", ""), edge_ms, link_ms, server_ms, total, up,
                            down, self.link.bandwidth_bps, self.link.rtt_ms)
        return {o: np.asarray(env[o]) for o in self.plan["outputs"]}, rec

    _inputs_cache: dict[str, list[str]] = {}

    def _cloud_inputs(self, rel: str) -> list[str]:
        key = str(self.folder / rel)
        if key not in self._inputs_cache:
            from lepton_backends import read_manifest

            self._inputs_cache[key] = [i["name"] for i in read_manifest(self.folder / rel)["inputs"]]
        return self._inputs_cache[key]

    def _adapt(self) -> str | None:
        want = self._row(self.link.bandwidth_bps)["cut"]
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
    """InferenceClient whose connections are made by `connect` (a shaped link's namespace)."""
    global _CLIENT_CLASS
    if _CLIENT_CLASS is None:
        from .serve import InferenceClient

        class _Client(InferenceClient):
            def __init__(self, *a: Any, connect: Any = None, **kw: Any) -> None:
                super().__init__(*a, **kw)
                self._connect = connect

            def _connection(self) -> Any:
                conn, reused = super()._connection()
                if self._connect is not None and not reused:
                    conn._create_connection = lambda addr, timeout=None, source=None: self._connect(addr, timeout)
                return conn, reused

        _CLIENT_CLASS = _Client
    return _CLIENT_CLASS


# ------------------------------------------------------------------------------------------------
# A shaped link for tests and benches
# ------------------------------------------------------------------------------------------------
_CLONE_NEWNET = 0x40000000


class _DelayedSocket:
    """A socket that waits `delay_ms` before each send: the round-trip delay the kernel cannot add
    (no netem). http.client sends a request (headers and body) in one sendall."""

    def __init__(self, sock: socket.socket, delay_ms: float) -> None:
        self._sock, self._delay = sock, delay_ms / 1e3

    def sendall(self, data: Any, *a: Any) -> None:
        if self._delay:
            time.sleep(self._delay)
        self._sock.sendall(data, *a)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class ShapedLink:
    """A network namespace whose loopback (MTU 1500) is shaped by a tbf qdisc at `rate_bps`.

    `command(argv)` runs a program inside it (`ip netns exec`); `connect((host, port), timeout)`
    opens a TCP connection inside it from this process (the calling thread enters the namespace
    with setns for the connect only: the socket stays in it); `set_rate(bps)` changes the rate
    while connections are open. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and `ip`/`tc`."""

    def __init__(self, rate_bps: float, delay_ms: float = 0.0, name: str | None = None) -> None:
        self.name = name or f"lepton-link-{uuid.uuid4().hex[:8]}"
        self.rate_bps, self.delay_ms = rate_bps, delay_ms

    @staticmethod
    def available() -> str | None:
        """None when a shaped link can be made here, else why not."""
        if os.geteuid() != 0:
            return "needs root (network namespaces and tc)"
        for tool in ("ip", "tc"):
            if not any(Path(d, tool).exists() for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]):
                return f"needs {tool} (iproute2)"
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
