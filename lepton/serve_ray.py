"""`lepton-serve ARTIFACT --engine ray --replicas N`: the same Open Inference Protocol v2 routes on Ray Serve.

Each replica is a Ray Serve deployment holding its own `InferenceService` (so its own
`lepton.load` runner); Ray Serve's HTTP proxy, bound to `--host`/`--port` (127.0.0.1 by default),
spreads requests over the replicas. The protocol, limits and token check are lepton.serve's,
unchanged. Needs the `serve-ray` extra (`pip install 'lepton[serve-ray]'`).

Without `--ray-address` a local Ray instance is started for the server's lifetime, its node bound to
127.0.0.1, with usage statistics and the dashboard off; SIGINT/SIGTERM shut Serve and Ray down. With
`--ray-address` the deployment joins that cluster: the artifact folder must then be readable at
the same path on every node that may run a replica.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .serve import BadRequest, InferenceService, ServeError, _Stop, error_response, log

APP_NAME = "lepton"


class LeptonReplica:
    """The deployment's class (wrapped by `serve.deployment` in `build_app`)."""

    def __init__(self, artifact: str, model_name: str | None, token: str | None, max_request_bytes: int) -> None:
        self.service = InferenceService.from_artifact(artifact, model_name=model_name, token=token,
                                                      max_request_bytes=max_request_bytes,
                                                      log=lambda line: print(f"lepton-serve[ray]: {line}",
                                                                             file=sys.stderr, flush=True))

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import Response as StarletteResponse

        headers = request.headers
        target = request.url.path + (("?" + request.url.query) if request.url.query else "")
        limit = self.service.max_request_bytes
        body = b""
        body_error: BadRequest | None = None
        if request.method == "POST":
            length = headers.get("content-length")
            if length is not None and length.strip().isdigit() and int(length) <= limit:
                chunks, got = [], 0
                async for chunk in request.stream():  # bounded: stop reading past the limit
                    got += len(chunk)
                    if got > limit:
                        body_error = BadRequest(413, f"request body over the limit of {limit} bytes")
                        break
                    chunks.append(chunk)
                body = b"".join(chunks)
            elif length is None and headers.get("transfer-encoding"):
                body_error = BadRequest(411, "chunked request bodies are not supported; send a Content-Length")

        def read_body(n: int) -> bytes:
            if body_error is not None:
                raise body_error
            if len(body) != n:
                raise BadRequest(400, f"truncated body: got {len(body)} of the {n} bytes of Content-Length")
            return body

        loop = asyncio.get_running_loop()
        try:
            resp = await loop.run_in_executor(None, self.service.handle, request.method, target, headers, read_body)
        except Exception as e:  # handle() answers everything; this is a last resort
            resp = error_response(500, f"internal error: {type(e).__name__}: {e}")
        return StarletteResponse(content=resp.body, status_code=resp.status, headers=resp.headers)


def build_app(artifact: str, *, model_name: str | None, token: str | None, max_request_bytes: int, replicas: int,
              cpus_per_replica: float) -> Any:
    from ray import serve

    deployment = serve.deployment(LeptonReplica, name="lepton_model", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": cpus_per_replica}, max_ongoing_requests=16)
    return deployment.bind(str(Path(artifact).resolve()), model_name, token, max_request_bytes)


def serve_ray(args: argparse.Namespace, token: str | None) -> int:
    """Run the Ray engine until SIGINT/SIGTERM; the exit status."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ServeError("--engine ray needs Ray Serve: pip install 'lepton[serve-ray]'") from None
    # Check the artifact here first: a bad folder is one line, not a replica's traceback in Ray's logs.
    probe = InferenceService.from_artifact(args.artifact, model_name=args.model_name)
    spec = probe.spec
    del probe
    # Ray Serve's proxy retries a port in use without end: check it here, while it is one line.
    try:
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((args.host, args.port))
    except OSError as e:
        raise ServeError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    t0 = time.monotonic()
    started_ray = False
    try:
        if args.ray_address:
            ray.init(address=args.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=args.ray_num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False, configure_logging=True, logging_level="WARNING")
            started_ray = True
        # Ray installs its own SIGTERM handler in ray.init; ours go in after it.
        with _Stop() as st:
            cpus = ray.cluster_resources().get("CPU", 1.0)
            per_replica = max(0.01, min(1.0, cpus / args.replicas))
            serve.start(http_options={"host": args.host, "port": args.port},
                        logging_config={"log_level": "WARNING", "enable_access_log": False})
            app = build_app(args.artifact, model_name=args.model_name, token=token,
                            max_request_bytes=args.max_request_bytes, replicas=args.replicas,
                            cpus_per_replica=per_replica)
            serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
            if not st.event.is_set():
                log(f"model {spec.name!r} ({spec.platform}) from {args.artifact}; engine ray, {args.replicas} "
                    f"replica(s), {'auth: bearer token' if token else 'no auth'}, max request "
                    f"{args.max_request_bytes} bytes; Ray and Serve up in {time.monotonic() - t0:.1f} s")
                shown = f"[{args.host}]" if ":" in args.host else args.host
                log(f"listening on http://{shown}:{args.port}")
            while not st.event.wait(0.5):
                pass
            log(f"stopping ({st.signal_name})")
    except (ServeError, KeyboardInterrupt):
        raise
    except Exception as e:  # Ray's start-up failures: one line (LEPTON_TRACEBACK=1 shows the rest)
        first = (str(e).strip().splitlines() or [""])[0]
        raise ServeError(f"Ray Serve failed: {type(e).__name__}: {first}") from e
    finally:
        if ray.is_initialized():
            try:
                serve.shutdown()
            except Exception:
                pass
            if started_ray:
                ray.shutdown()
    log("stopped")
    return 0
