"""Fixtures of the serving tests: the digits artifact, and real `lepton-serve` processes on loopback.

Servers run as child processes in their own session (`start_new_session`), so teardown can end
the process group (Ray's helper processes included) by its id. Each server is started with a
bearer token read from a file; the clients send it.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import lepton

DIGITS = Path(lepton.__file__).parent / "data" / "digits_cnn.onnx"
MAX_REQUEST_BYTES = 1 << 20  # the test servers' --max-request-bytes: oversized bodies stay cheap
RAY_START_S = 240.0  # Ray + Serve start on 2 busy cores: ~35 s alone, more next to other tests


def _ray_available() -> bool:
    """Whether Ray Serve is installed, without importing Ray (10 s on these cores) at collection."""
    import importlib.util

    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return False
    return all(importlib.util.find_spec(m) is not None for m in ("starlette", "uvicorn", "fastapi")) and any(
        (Path(p) / "serve" / "__init__.py").is_file() for p in spec.submodule_search_locations)


RAY = _ray_available()
ENGINES = ["embedded", pytest.param("ray", marks=pytest.mark.skipif(
    not RAY, reason="Ray Serve is not installed (pip install 'lepton[serve-ray]')"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `lepton-serve` child process; `url` once it listens."""

    def __init__(self, artifact: Path, workdir: Path, engine: str = "embedded", token: str | None = None,
                 extra: list[str] | None = None) -> None:
        self.engine = engine
        self.token = token
        self.stderr_path = workdir / f"serve-{engine}-{time.monotonic_ns()}.log"
        argv = [sys.executable, "-m", "lepton.serve", str(artifact), "--max-request-bytes", str(MAX_REQUEST_BYTES)]
        if token is not None:
            tf = workdir / "token"
            tf.write_text(token + "\n")
            argv += ["--token-file", str(tf)]
        if engine == "ray":
            argv += ["--engine", "ray", "--replicas", "2", "--ray-num-cpus", "2", "--port", str(free_port())]
        else:
            argv += ["--port", "0"]
        argv += extra or []
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err,
                                     start_new_session=True, env=env)
        self.url = self._wait_listening(RAY_START_S if engine == "ray" else 60.0)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def _wait_listening(self, limit: float) -> str:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            m = re.search(r"listening on (http://\S+)", self.stderr())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"lepton-serve exited with {self.proc.returncode}:\n{self.stderr()[-3000:]}")
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"lepton-serve did not listen within {limit:.0f} s:\n{self.stderr()[-3000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, limit: float = 60.0) -> int:
        """Signal the server, wait for it; its exit status (the group is killed if it hangs)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(limit)
            except subprocess.TimeoutExpired:
                pass
        rc = self.proc.poll()
        self.kill()
        return -999 if rc is None else rc

    def kill(self) -> None:
        """SIGKILL the server's whole process group (Ray's helpers included)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._err.close()


@pytest.fixture(scope="session")
def digits_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "digits"
    lepton.optimize(str(DIGITS), backend="onnx", output=str(out))
    return out


@pytest.fixture(scope="session")
def reference(digits_artifact: Path):
    """The artifact run in-process: what every served answer must equal bit for bit."""
    runner = lepton.load(digits_artifact)
    return lambda x: runner.run({"image": x})["logits"]


class ServerPool:
    """One shared server per engine, restarted if a test killed it."""

    def __init__(self, artifact: Path, workdir: Path) -> None:
        self.artifact = artifact
        self.workdir = workdir
        self.token = "tok-" + secrets.token_hex(16)
        self.servers: dict[str, Server] = {}

    def get(self, engine: str) -> Server:
        s = self.servers.get(engine)
        if s is None or not s.alive():
            if s is not None:
                s.kill()
            d = self.workdir / engine
            d.mkdir(exist_ok=True)
            try:
                s = Server(self.artifact, d, engine, token=self.token)
            except RuntimeError as e:
                if engine != "ray":
                    raise
                # Ray's own start-up timeouts can trip on 2 cores busy with other tests: one more try
                warnings.warn(f"Ray Serve did not start, trying once more: {str(e).splitlines()[0]}")
                s = Server(self.artifact, d, engine, token=self.token)
            self.servers[engine] = s
        return s

    def close(self) -> dict[str, tuple[int, str]]:
        return {e: (s.stop(), s.stderr()) for e, s in self.servers.items()}


@pytest.fixture(scope="session")
def pool(digits_artifact: Path, tmp_path_factory: pytest.TempPathFactory):
    p = ServerPool(digits_artifact, tmp_path_factory.mktemp("servers"))
    yield p
    for engine, (rc, err) in p.close().items():  # graceful SIGTERM shutdown of what is still running
        assert rc == 0, f"{engine} server exited {rc} on SIGTERM:\n{err[-3000:]}"
        if engine == "embedded":  # (Ray's own processes log their shutdown chatter there)
            assert "Traceback" not in err, err[-3000:]


@pytest.fixture(params=ENGINES)
def server(request: pytest.FixtureRequest, pool: ServerPool) -> Server:
    return pool.get(request.param)


def digits_input(seed: int, batch: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 1, 8, 8)).astype(np.float32)
