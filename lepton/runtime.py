"""Loading compiled artifacts back: `lepton.load(folder)` -> a runner with `run({name: array})`.

Every artifact kind loads the same way: the manifest and every file's sha256 are verified first
(`lepton_backends.read_manifest`: a truncated or edited artifact is an error, not a silent wrong
answer), then each stage is opened by the backend that built it (`Backend.load`, found in the
backend registry, plugins included). A single-stage artifact gives that stage's runner; a
multi-stage one gives an `ArtifactRunner` that runs the stages in order, handing each the arrays
it reads by name (no copies at the borders: the arrays one stage returns are the ones the next
receives).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from lepton_backends import get_backend, read_manifest, stage_dir, stage_view
from lepton_backends.onnx_backend import OrtRunner
from lepton_ir import LeptonError


class ArtifactRunner:
    """Runs the stages of a multi-stage artifact in order."""

    def __init__(self, folder: Path, manifest: dict[str, Any], stages: list[tuple[dict[str, Any], Any]]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.stages = stages  # (stage entry, its runner)
        self.input_names = [i["name"] for i in manifest["inputs"]]
        self.output_names = [o["name"] for o in manifest["outputs"]]

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Outputs by name for inputs by name (missing or unknown names are an error)."""
        return run_chain(self.stages, inputs, self.input_names, self.output_names)

    __call__ = run

    def profile(self, inputs: Mapping[str, Any], repeat: int = 10, warmup: int = 2) -> list[dict[str, Any]]:
        """Per stage: name, backend, device, nodes, the bytes it reads and writes at its borders,
        and its median latency in ms over `repeat` runs (each stage timed on its own inputs)."""
        return profile_stages(self.stages, inputs, repeat, warmup)


def run_chain(stages: list[tuple[dict[str, Any], Any]], inputs: Mapping[str, Any], input_names: list[str],
              output_names: list[str]) -> dict[str, Any]:
    """Run (stage entry, runner) pairs in order, each fed the arrays it names from the inputs and
    the earlier stages' outputs; shared with the remote runner (lepton.remote)."""
    missing = [n for n in input_names if n not in inputs]
    extra = [n for n in inputs if n not in input_names]
    if missing or extra:
        raise LeptonError(f"inputs do not match the artifact: missing {missing or 'none'}, unknown "
                          f"{extra or 'none'}; expected {input_names}")
    env: dict[str, Any] = dict(inputs)
    for stage, runner in stages:
        env.update(runner.run({s["name"]: env[s["name"]] for s in stage["inputs"]}))
    return {n: env[n] for n in output_names}


def profile_stages(stages: list[tuple[dict[str, Any], Any]], inputs: Mapping[str, Any], repeat: int,
                   warmup: int) -> list[dict[str, Any]]:
    """See ArtifactRunner.profile; shared with the remote runner (lepton.remote)."""
    import time

    env: dict[str, Any] = dict(inputs)
    rows = []
    for stage, runner in stages:
        feed = {s["name"]: env[s["name"]] for s in stage["inputs"]}
        for _ in range(max(0, warmup)):
            runner.run(feed)
        times = []
        out: dict[str, Any] = {}
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            out = runner.run(feed)
            times.append((time.perf_counter() - t0) * 1e3)
        env.update(out)
        rows.append({"name": stage.get("name"), "backend": stage.get("backend"), "device": stage.get("device"),
                     "nodes": stage.get("nodes"),
                     "bytes_in": int(sum(np.asarray(v).nbytes for v in feed.values())),
                     "bytes_out": int(sum(np.asarray(v).nbytes for v in out.values())),
                     "median_ms": float(np.median(times)), "reason": stage.get("fallback_reason", "")})
    return rows


def load(artifact: str | os.PathLike, *, rpc: str | None = None, tracker: str | None = None,
         key: str | None = None) -> Any:
    """Open an artifact folder written by a backend and return a runner for it.

    With `rpc="HOST:PORT"` (or `tracker=` and `key=`), the artifact runs on a remote device over
    TVM RPC (e.g. the emulated board of `lepton-device emulate`).
    """
    if rpc is not None or tracker is not None:
        from .remote import load as remote_load

        return remote_load(artifact, rpc=rpc, tracker=tracker, key=key)
    folder = Path(artifact)
    manifest = read_manifest(folder)
    runners = []
    for i, stage in enumerate(manifest["stages"]):
        backend = get_backend(str(stage.get("backend")))()
        runner = backend.load(stage_dir(folder, stage), stage_view(manifest, i))
        runners.append((stage, runner))
    if len(runners) == 1:
        runner = runners[0][1]
        runner.manifest = stage_view(manifest, 0)
        return runner
    return ArtifactRunner(folder, manifest, runners)


__all__ = ["load", "OrtRunner", "ArtifactRunner"]
