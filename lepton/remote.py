"""Run a compiled TVM artifact on a remote device over TVM RPC (a board, or `lepton-device emulate`).

    from lepton.remote import RemoteRunner
    r = RemoteRunner("out/", rpc="127.0.0.1:9090")                          # direct
    r = RemoteRunner("out/", tracker="127.0.0.1:9190", key="aarch64")       # through a tracker
    outputs = r.run({"x": x})                       # {name: numpy array}, computed on the device
    r.benchmark({"x": x}, repeat=10, warmup=2)      # device-side timing: median_ms, p90_ms, ...
    r.close()                                       # or use it as a context manager

What happens: the artifact's manifest and file hashes are verified on the host (a tampered
library is never uploaded), ``model.so`` is uploaded under a content-addressed name
(``lepton-<sha256[:16]>.so``), loaded with ``remote.load_module`` and run with
``tvm.relax.VirtualMachine(mod, remote.cpu())`` (``remote.cuda(0)`` for CUDA artifacts). The VM
itself runs on the host; every kernel runs on the device; inputs and outputs cross the link.

Errors the user can fix (cannot connect, no device with that key, artifact built for another
architecture than the device's, tampered artifact) are :class:`RemoteError` (a ``LeptonError``),
one line each; ``lepton-run`` prints them as ``lepton-run: error: ...``.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lepton_ir import LeptonError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_RPC_PORT = 9090
DEFAULT_TRACKER_PORT = 9190
#: Seconds to wait for a TCP connection to the server/tracker before saying it is not there.
CONNECT_TIMEOUT = 5.0

_ELF_MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"}


class RemoteError(LeptonError):
    """The remote device cannot be reached or cannot run the artifact."""


def parse_address(text: str, default_port: int, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` or ``:PORT`` -> (host, port); loopback when the host is left out."""
    text = (text or "").strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, str(default_port)
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        raise RemoteError(f"bad {what} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:{default_port}") from None
    return host, port


def _probe(host: str, port: int, what: str) -> None:
    """Fail fast with one line when nothing listens (TVM's own clients retry for up to a minute)."""
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        hint = " (start one with `lepton-device emulate`)" if what == "RPC server" else ""
        raise RemoteError(f"cannot connect to the {what} at {host}:{port}: {e.strerror or e}{hint}") from None


def connect(rpc: str | None = None, tracker: str | None = None, key: str | None = None,
            session_timeout: float = 0) -> Any:
    """Open a TVM RPC session: directly (``rpc``) or through a tracker (``tracker`` + ``key``)."""
    from tvm import rpc as tvm_rpc

    if rpc and tracker:
        raise RemoteError("give either an RPC server address or a tracker address, not both")
    if tracker:
        if not key:
            raise RemoteError("a tracker needs a device key (--key KEY)")
        host, port = parse_address(tracker, DEFAULT_TRACKER_PORT, "tracker address")
        _probe(host, port, "RPC tracker")
        try:
            tsess = tvm_rpc.connect_tracker(host, port)
            summary = tsess.summary()
        except Exception as e:  # noqa: BLE001 - TVM raises several error types here
            raise RemoteError(f"the RPC tracker at {host}:{port} did not answer: {_first_line(e)}") from None
        keys = sorted((summary.get("queue_info") or {}).keys())
        if key not in keys:
            known = ", ".join(keys) if keys else "none"
            raise RemoteError(f"no device with key {key!r} is registered at the RPC tracker {host}:{port} "
                              f"(registered keys: {known})")
        try:
            return tsess.request(key, session_timeout=int(session_timeout), max_retry=3)
        except Exception as e:  # noqa: BLE001
            raise RemoteError(f"the RPC tracker at {host}:{port} gave no {key!r} device: {_first_line(e)}") from None
    host, port = parse_address(rpc or f"{DEFAULT_HOST}:{DEFAULT_RPC_PORT}", DEFAULT_RPC_PORT, "RPC address")
    _probe(host, port, "RPC server")
    try:
        return tvm_rpc.connect(host, port, session_timeout=int(session_timeout))
    except Exception as e:  # noqa: BLE001
        msg = _first_line(e)
        if "key" in msg.lower() or "mismatch" in msg.lower():
            msg += " (a server registered with a tracker only accepts sessions from it: use --tracker and --key)"
        raise RemoteError(f"cannot open an RPC session with {host}:{port}: {msg}") from None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # TVM errors end with the useful line; tracebacks start with "Traceback".
    useful = [ln for ln in lines if not ln.startswith(("Traceback", "File ", "  File", "^"))]
    return (useful[-1] if useful else type(e).__name__)[:400]


def elf_machine(path: str | os.PathLike) -> str | None:
    """Architecture of an ELF shared library (``x86_64``, ``aarch64``...), None if not ELF."""
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return None
    code = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(code, f"machine {code}")


def _make_runner_class():
    """Subclass of the artifact Runner whose tensors live on a remote device (TVM imported lazily)."""
    from lepton_backends.tvm.artifact import ArtifactError, Runner

    class _RemoteVMRunner(Runner):
        def __init__(self, path, manifest, vm, dev) -> None:
            super().__init__(path, manifest, vm)
            self._dev = dev

        def _call(self, arrays):
            import tvm

            # Stateful call: a tuple result stays on the device as an RPCObjectRef that cannot be
            # iterated from here; get_outputs fetches its fields one by one.
            self._vm.set_input("main", *[tvm.runtime.tensor(a, self._dev) for a in arrays])
            self._vm.invoke_stateful("main")
            return self._vm.get_outputs("main")

        def benchmark(self, inputs, repeat: int = 20, warmup: int = 3) -> dict[str, float]:
            import tvm

            if repeat < 1:
                raise ValueError("repeat must be >= 1")
            args = [tvm.runtime.tensor(a, self._dev) for a in self.check_inputs(inputs)]
            for _ in range(max(0, warmup)):
                self._main(*args)
            self._dev.sync()
            # Timed on the device (no RPC round trip in the numbers): one call per repeat.
            try:
                res = self._vm.time_evaluator("main", self._dev, number=1, repeat=repeat)(*args)
                times = [float(t) * 1e3 for t in res.results]
                where = "device"
            except Exception:  # noqa: BLE001 - fall back to host-side timing (includes the RPC round trip)
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    self._main(*args)
                    self._dev.sync()
                    times.append((time.perf_counter() - t0) * 1e3)
                where = "host"
            return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
                    "min_ms": float(np.min(times)), "repeat": repeat, "warmup": warmup, "timed_on": where}

    return _RemoteVMRunner, ArtifactError


class _RemoteTvmStage:
    """One TVM library of an artifact, uploaded to the device and run there by the Relax VM."""

    def __init__(self, session: Any, folder: Path, stage: dict[str, Any], address: str) -> None:
        from tvm import relax

        target = stage.get("target") or {}
        kind = target.get("kind")
        if kind not in ("llvm", "cuda"):
            raise RemoteError(f"artifact {folder}: target kind {kind!r} cannot run over RPC (llvm or cuda only)")
        lib = folder / stage.get("entry", "model.so")
        self.library_arch = elf_machine(lib)
        self.target_triple = str(target.get("mtriple") or (target.get("host") or {}).get("mtriple") or "")
        remote_name = f"lepton-{stage['files'][lib.name][:16]}.so"
        try:
            session.upload(bytearray(lib.read_bytes()), target=remote_name)
        except Exception as e:  # noqa: BLE001
            raise RemoteError(f"upload of {lib} to {address} failed: {_first_line(e)}") from None
        try:
            rlib = session.load_module(remote_name)
        except Exception as e:  # noqa: BLE001
            msg = _first_line(e)
            if any(s in msg for s in ("ELF", "wrong ELF class", "cannot open shared object", "dlopen",
                                      "exec format", "invalid ELF")):
                raise RemoteError(
                    f"the device at {address} cannot load {lib} (compiled for "
                    f"{self.target_triple or self.library_arch or 'an unknown architecture'}; recompile with the "
                    f"device's target, e.g. --backend tvm-arm --target cortex-a72): {msg}") from None
            raise RemoteError(f"the device at {address} could not load {lib}: {msg}") from None
        self.device = session.cuda(0) if kind == "cuda" else session.cpu(0)
        cls, _ = _make_runner_class()
        try:
            self.runner = cls(folder, stage, relax.VirtualMachine(rlib, self.device), self.device)
        except Exception as e:  # noqa: BLE001
            raise RemoteError(f"the device at {address} could not start the model: {_first_line(e)}") from None
        self.input_names = [s.name for s in self.runner.inputs]

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.runner.run(feeds)


class _RemoteOrtStage:
    """An ONNX Runtime stage run by ONNX Runtime on the device (lepton-device's server provides
    `lepton.ort.*`; a board needs the same three functions registered in its RPC server)."""

    def __init__(self, session: Any, folder: Path, stage: dict[str, Any], address: str) -> None:
        import hashlib

        path = folder / stage.get("entry", "model.onnx")
        if any(name != path.name for name in stage.get("files", {})):
            raise RemoteError(f"artifact {folder}: ONNX Runtime stages with external data cannot be sent to a device")
        data = path.read_bytes()
        self.key = hashlib.sha256(data).hexdigest()[:16]
        try:
            load = session.get_function("lepton.ort.load")
            self._run = session.get_function("lepton.ort.run")
            self._output = session.get_function("lepton.ort.output")
        except Exception:  # noqa: BLE001 - the function is not registered there
            raise RemoteError(f"the device at {address} offers no ONNX Runtime (lepton.ort.load) for the artifact's "
                              "ONNX Runtime stage; restart it with `lepton-device stop` and `lepton-device emulate`") \
                from None
        try:
            load(self.key, bytearray(data))
        except Exception as e:  # noqa: BLE001
            raise RemoteError(f"ONNX Runtime on {address} could not load {path}: {_first_line(e)}") from None
        self.device = session.cpu(0)
        self.input_names = [s["name"] for s in stage["inputs"]]
        self.output_names = [s["name"] for s in stage["outputs"]]

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        import tvm

        # Not np.ascontiguousarray: it turns a 0-d value (a quantization scale) into shape [1].
        arrays = [np.asarray(feeds[n]) for n in self.input_names]
        args = [tvm.runtime.tensor(a if a.flags.c_contiguous else np.array(a, order="C"), self.device) for a in arrays]
        n = int(self._run(self.key, *args))
        if n != len(self.output_names):
            raise RemoteError(f"ONNX Runtime on the device returned {n} outputs, the stage has {len(self.output_names)}")
        return {name: self._output(self.key, i).numpy() for i, name in enumerate(self.output_names)}


class RemoteRunner:
    """An artifact loaded on a remote TVM RPC device; ``run`` and ``benchmark`` like ``lepton.load``.

    Every stage runs on the device: TVM stages as uploaded libraries, ONNX Runtime stages (the
    fallback regions of a partitioned artifact) in ONNX Runtime there; the tensors between stages
    come back to this host and go out again (the VM and the chaining run here).
    """

    def __init__(self, artifact: str | os.PathLike, *, rpc: str | None = None, tracker: str | None = None,
                 key: str | None = None, session_timeout: float = 0) -> None:
        from lepton_backends.artifact import read_manifest as read_any, stage_dir, stage_view
        from lepton_backends.tvm.artifact import TVM_BACKENDS

        self.path = Path(artifact)
        try:
            top = read_any(self.path, verify=True)  # hashes checked before any upload
        except LeptonError as e:
            raise RemoteError(str(e)) from None
        views = [stage_view(top, i) for i in range(len(top["stages"]))]
        for v in views:
            if v.get("backend") not in TVM_BACKENDS + ("onnx",):
                raise RemoteError(f"artifact {self.path}: stage {v.get('name')!r} of backend {v.get('backend')!r} "
                                  "cannot run over RPC (TVM and ONNX Runtime stages can)")
        self.manifest = views[0] if len(views) == 1 else top
        tvm_views = [v for v in views if v.get("backend") in TVM_BACKENDS]
        target = (tvm_views[0].get("target") or {}) if tvm_views else {}
        self.target_triple = str(target.get("mtriple") or (target.get("host") or {}).get("mtriple") or "")
        self.library_arch = None
        self.address = f"tracker {tracker} key {key}" if tracker else (rpc or f"{DEFAULT_HOST}:{DEFAULT_RPC_PORT}")
        t0 = time.perf_counter()
        self.remote = connect(rpc=rpc, tracker=tracker, key=key, session_timeout=session_timeout)
        self.connect_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self._stages: list[tuple[dict[str, Any], Any]] = []
        for v in views:
            folder = stage_dir(self.path, v)
            cls = _RemoteTvmStage if v.get("backend") in TVM_BACKENDS else _RemoteOrtStage
            st = cls(self.remote, folder, v, self.address)
            self.library_arch = self.library_arch or getattr(st, "library_arch", None)
            self._stages.append((v, st))
        self.upload_s = time.perf_counter() - t0
        self.device = self._stages[0][1].device
        self.input_names = [i["name"] for i in self.manifest["inputs"]]
        self.output_names = [o["name"] for o in self.manifest["outputs"]]
        single = self._stages[0][1] if len(self._stages) == 1 else None
        self._runner = single.runner if isinstance(single, _RemoteTvmStage) else None
        if self._runner is not None:
            self.inputs = self._runner.inputs
            self.outputs = self._runner.outputs

    def _chain(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        from .runtime import run_chain

        return run_chain(self._stages, inputs, self.input_names, self.output_names)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``{input name: array}`` -> ``{output name: array}``, computed on the device."""
        from lepton_backends.tvm.artifact import InputError

        try:
            return self._runner.run(inputs) if self._runner is not None else self._chain(inputs)
        except InputError as e:
            raise LeptonError(str(e)) from None
        except LeptonError:
            raise
        except Exception as e:  # noqa: BLE001 - RPC session died, device error
            raise RemoteError(f"running on {self.address} failed: {_first_line(e)}") from None

    __call__ = run

    def benchmark(self, inputs: Mapping[str, Any], repeat: int = 10, warmup: int = 2) -> dict[str, Any]:
        """Median/p90/min latency in ms of ``repeat`` runs after ``warmup`` untimed ones: on the device
        for one TVM stage; for several stages timed here (including the tensors' trips)."""
        from lepton_backends.tvm.artifact import InputError

        try:
            if self._runner is not None:
                return self._runner.benchmark(inputs, repeat=repeat, warmup=warmup)
            if repeat < 1:
                raise ValueError("repeat must be >= 1")
            for _ in range(max(0, warmup)):
                self._chain(inputs)
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                self._chain(inputs)
                times.append((time.perf_counter() - t0) * 1e3)
            return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
                    "min_ms": float(np.min(times)), "repeat": repeat, "warmup": warmup,
                    "timed_on": "host, RPC transfers between stages included"}
        except InputError as e:
            raise LeptonError(str(e)) from None
        except (LeptonError, ValueError):
            raise
        except Exception as e:  # noqa: BLE001
            raise RemoteError(f"benchmark on {self.address} failed: {_first_line(e)}") from None

    def profile(self, inputs: Mapping[str, Any], repeat: int = 10, warmup: int = 2) -> list[dict[str, Any]]:
        """Per-stage latency and border bytes (see lepton.runtime.ArtifactRunner.profile); timed here,
        so each stage's time includes its tensors' trips over the link."""
        from .runtime import profile_stages

        return profile_stages(self._stages, inputs, repeat, warmup)

    def close(self) -> None:
        """Drop the session (the RPC server serves one session at a time)."""
        # Every reference to the session must go: the remote device objects hold it too (their
        # `_rpc_sess`), and while it lives the server keeps serving this session and accepts no
        # other (a second RemoteRunner in the same process then waited forever in connect).
        self._runner = None
        self._stages = []
        self.device = None
        self.remote = None
        import gc

        gc.collect()

    def __enter__(self) -> "RemoteRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load(artifact: str | os.PathLike, *, rpc: str | None = None, tracker: str | None = None,
         key: str | None = None, session_timeout: float = 0) -> RemoteRunner:
    """``lepton.load`` for remote devices: a :class:`RemoteRunner`."""
    return RemoteRunner(artifact, rpc=rpc, tracker=tracker, key=key, session_timeout=session_timeout)
