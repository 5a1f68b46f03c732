"""The optimization report: one self-contained HTML page of what a compile did and what it gained.

    lepton-opt model.onnx --passes fuse,quant8 -o out/ --report report.html [--report-data data.npz]
    lepton.optimize("model.onnx", passes="fuse,quant8", output="out/", report="report.html")

The page (docs/report.md) has: the pass table (pass, changed, nodes before/after, op-type
histogram change, time, constant bytes), latency of the original model in ONNX Runtime against
the artifact (timed in the same process, alternating blocks), the largest output deviation from
ONNX Runtime on the original, top-1 accuracy when the data has `labels`, quant8's per-layer SQNR
(lepton_passes.quant.report) when quant8 ran, and the artifact's stages (backend, device, nodes,
border bytes, fallback reason) with a drawing of the regions. Charts are inline SVG, the page has no
external resources, and it is written atomically. Nothing here may break a compile: the driver
turns any failure into a `ReportWarning` (a `lepton-opt: warning:` line); a part that cannot be
measured (an artifact for another machine) says so on the page.
"""

from __future__ import annotations

import collections
import html
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lepton_ir import LeptonError, Model
from lepton_passes import Instrument

__all__ = ["ReportInstrument", "ReportWarning", "build_report", "render_html", "write_report", "make_report",
           "load_report_data", "summary_text", "cpu_name", "CHART_COLORS"]


class ReportWarning(UserWarning):
    """A report (or a part of it) could not be made; the compile itself went on."""


#: The fill colour of each chart's data marks. Used nowhere else on the page, so a screenshot
#: test can find every chart by its colour.
CHART_COLORS = {
    "latency-original": "#1f77b4",
    "latency-artifact": "#ff7f0e",
    "passes-changed": "#2ca02c",
    "passes-unchanged": "#b5dfb0",
    "sqnr": "#d62728",
    "stage-tvm": "#9467bd",
    "stage-onnx": "#17becf",
    "stage-other": "#e377c2",
}

MAX_SAMPLES = 1000  # samples run through both models for deviation and accuracy
QUANT_SAMPLES = 16  # samples for quant8's per-layer SQNR
LATENCY_BUDGET_S = 3.0  # rough wall time for the latency measurement, both sides together


# ------------------------------------------------------------------------------------------------
# Per-pass records
# ------------------------------------------------------------------------------------------------
def op_histogram(model: Model) -> collections.Counter:
    """Op types (domain-qualified outside the default domain) in all graphs of `model`."""
    return collections.Counter((f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type)
                               for n in model.graph.all_nodes())


def constant_bytes(model: Model) -> int:
    """Bytes of the model's constants (initializers and Constant nodes' tensors, each tensor once):
    the weights, which is what a serialized model's size is made of. O(values), no serialization."""
    from lepton_ir.ir import AttrType

    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            try:
                total += int(t.nbytes)
            except Exception:  # a placeholder tensor without data
                pass

    for g in model.graph.all_graphs():
        for v in g.initializers.values():
            add(v.const)
        for n in g:
            if n.op_type == "Constant" and n.domain == "":
                for a in n.attrs.values():
                    if a.type == AttrType.TENSOR and a.ref is None:
                        add(a.value)
    return total


def histogram_change(before: Mapping[str, int], after: Mapping[str, int]) -> list[tuple[str, int]]:
    """(op, delta) for every op type whose count changed, largest changes first."""
    ops = set(before) | set(after)
    d = [(op, after.get(op, 0) - before.get(op, 0)) for op in ops]
    return sorted([x for x in d if x[1]], key=lambda x: (-abs(x[1]), x[0]))


class ReportInstrument(Instrument):
    """Records what the report's pass table needs for every leaf pass (the backend's lowering passes
    included: they run through the same PassManager session), and snapshots the model around
    quant8 for the per-layer error."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.phase = "pipeline"  # the driver sets "backend" before the backend's lowering runs
        self.quant: tuple[Model, Model] | None = None  # (model before quant8, model after it)
        self._before: tuple[collections.Counter, int, int] | None = None
        self._pre_quant: Model | None = None

    def before_pass(self, p: Any, model: Model) -> None:
        from lepton_ir.clone import clone_model

        hist = op_histogram(model)
        self._before = (hist, sum(hist.values()), constant_bytes(model))
        if getattr(p, "name", "") == "quant8" and self.phase == "pipeline":
            self._pre_quant = clone_model(model)  # constants are shared, not copied

    def after_pass(self, p: Any, model: Model, changed: bool, seconds: float) -> None:
        from lepton_ir.clone import clone_model
        from lepton_passes.pipeline import format_pass

        if self._before is None:
            return
        hist_b, nodes_b, bytes_b = self._before
        hist_a = op_histogram(model)
        self.rows.append({"pass": format_pass(p), "phase": self.phase, "changed": bool(changed),
                          "nodes_before": nodes_b, "nodes_after": sum(hist_a.values()),
                          "ops": histogram_change(hist_b, hist_a), "seconds": float(seconds),
                          "bytes_before": bytes_b, "bytes_after": constant_bytes(model)})
        self._before = None
        if self._pre_quant is not None and getattr(p, "name", "") == "quant8":
            if changed:
                self.quant = (self._pre_quant, clone_model(model))
            self._pre_quant = None


# ------------------------------------------------------------------------------------------------
# Data: inputs (and labels) for the measurements
# ------------------------------------------------------------------------------------------------
def load_report_data(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a `.npz` (one per model input, optionally `labels`); one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise LeptonError(f"{path}: no such file")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise LeptonError(f"{path}: not a readable .npz file ({e})") from None


def _feeds_from_arrays(arrays: Mapping[str, np.ndarray], dims: Mapping[str, Sequence[Any] | None],
                       limit: int) -> list[dict[str, np.ndarray]]:
    """Per-sample feeds from arrays by input name (`dims`: each input's declared dims).

    An array one rank above its input has a sample axis (x[i] is sample i); an array of the input's
    rank whose first dim is symbolic (a batch) is sliced on it (x[i:i+1], a batch of 1); any other
    array (a 0-d `sr`, a state with a fixed first dim) is the same in every sample. A single-input
    model takes its one array whatever its key. `labels` is not an input."""
    arrays = {k: np.asarray(v) for k, v in arrays.items() if k != "labels"}
    if len(dims) == 1 and len(arrays) == 1 and next(iter(arrays)) not in dims:
        arrays = {next(iter(dims)): next(iter(arrays.values()))}
    unknown = sorted(set(arrays) - set(dims))
    if unknown:
        raise LeptonError(f"report data: arrays {unknown} are not inputs of the model (inputs: {sorted(dims)})")
    missing = sorted(set(dims) - set(arrays))
    if missing:
        raise LeptonError(f"report data: no array for input(s) {missing}")
    kinds: dict[str, str] = {}
    counts = []
    for k, a in arrays.items():
        d = dims.get(k)
        rank = len(d) if d is not None else None
        batch = d is not None and len(d) > 0 and not (isinstance(d[0], int) and d[0] > 0)
        if a.ndim == 0 or rank == 0:
            kinds[k] = "same"
        elif rank is not None and a.ndim == rank + 1:
            kinds[k] = "index"
        elif a.ndim == rank and batch or rank is None:
            kinds[k] = "slice"
        else:
            kinds[k] = "same"
        if kinds[k] != "same":
            counts.append(a.shape[0])
    n = min(counts) if counts else 1
    return [{k: (a if kinds[k] == "same" else a[i] if kinds[k] == "index" else a[i:i + 1]) for k, a in arrays.items()}
            for i in range(min(n, limit))]


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------
def cpu_name() -> str:
    """The host CPU's model name (as lscpu prints it), for the figures' context."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def timed_blocks(fns: Mapping[str, Callable[[], object]], repeat: int, block: int = 5,
                 warmup: int = 3) -> dict[str, list[float]]:
    """Per label, `repeat` call times in ms, in alternating blocks (bench/timing.py): per round and
    runtime one untimed call, which absorbs the other runtime's still-spinning threads, then
    `block` timed calls."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    while min(len(v) for v in times.values()) < repeat:
        for k, f in fns.items():
            f()
            for _ in range(min(block, repeat - len(times[k]))):
                t0 = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def _source_for_ort(source: Any) -> Any:
    import onnx

    import lepton_ir

    if isinstance(source, Model):
        return lepton_ir.to_onnx(source).SerializeToString()
    if isinstance(source, onnx.ModelProto):
        return source.SerializeToString()
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    return str(source)


def _source_bytes(source: Any) -> int | None:
    if isinstance(source, (str, os.PathLike)):
        try:
            return Path(source).stat().st_size
        except OSError:
            return None
    data = _source_for_ort(source)
    return len(data) if isinstance(data, bytes) else None


def _folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _dtype_bytes(dtype: str) -> int | None:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return {"bfloat16": 2, "float8e4m3fn": 1, "float8e5m2": 1}.get(str(dtype))


def _static_bytes(specs: Sequence[Mapping[str, Any]]) -> int | None:
    total = 0
    for s in specs:
        shape = s.get("shape")
        size = _dtype_bytes(str(s.get("dtype")))
        if shape is None or size is None or any(not isinstance(d, int) or d < 0 for d in shape):
            return None
        total += size * int(np.prod(shape, dtype=np.int64))
    return total


def _deviation(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], acc: list[dict[str, Any]]) -> None:
    for k, (a, b) in enumerate(zip(ref, got)):
        a, b = np.asarray(a), np.asarray(b)
        item = acc[k]
        if a.shape != b.shape:
            item["shape_mismatch"] = f"{list(a.shape)} vs {list(b.shape)}"
            continue
        if a.dtype.kind not in "fiub" or not a.size:
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        # equal infinities (a masked score of -inf on both sides) and NaN on both agree; inf - inf
        # would otherwise be NaN and read as an infinite deviation
        same = (np.isnan(a64) & np.isnan(b64)) | (a64 == b64)
        with np.errstate(invalid="ignore"):
            d = np.where(same, 0.0, np.abs(a64 - b64))
        d = np.where(np.isnan(d), np.inf, d)
        item["max_abs"] = max(item["max_abs"], float(d.max()))
        item["max_ref"] = max(item["max_ref"], float(np.nanmax(np.abs(a64))) if np.isfinite(a64).any() else 0.0)


class _Problems:
    """Parts that failed: each is noted on the page and warned about, never raised."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, part: str, e: BaseException | str) -> str:
        msg = e if isinstance(e, str) else f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        text = f"{part}: {msg}"
        self.items.append(text)
        warnings.warn(ReportWarning(f"report: {text}"), stacklevel=3)
        return text


def _open_artifact(artifact: Path | None, model: Model) -> tuple[Any, str, dict[str, Any] | None]:
    """(runner or None, what it is, manifest). None runner: a reason is in the description."""
    import lepton
    from lepton_ir.reference import ort_session

    if artifact is None:  # nothing written: the optimized model, its ai.lepton ops lowered as -o x.onnx does
        from lepton_ir.clone import clone_model
        from lepton_passes import parse_pipeline

        lowered = clone_model(model)
        parse_pipeline("lower-fused-to-onnx").run(lowered)
        sess = ort_session(lowered, optimize=True)
        return _OrtFeed(sess), "the optimized model (not written) in ONNX Runtime", None
    if artifact.is_file():  # -o x.onnx: just the optimized model
        sess = ort_session(str(artifact), optimize=True)
        return _OrtFeed(sess), f"{artifact.name} in ONNX Runtime", None
    from lepton_backends import read_manifest

    manifest = read_manifest(artifact)
    stages = manifest.get("stages", [])
    remote = [s for s in stages if s.get("device") == "remote"]
    if remote:
        return None, (f"the artifact is for a remote device ({', '.join(sorted({str(s.get('backend')) for s in remote}))}, "
                      f"{_target_text(remote[0])}) and cannot run on this host"), manifest
    runner = lepton.load(artifact)
    kinds = ", ".join(dict.fromkeys(f"{s.get('backend')} on {s.get('device', 'host')}" for s in stages))
    return runner, f"the artifact ({kinds})", manifest


def _target_text(stage: Mapping[str, Any]) -> str:
    t = stage.get("target")
    if isinstance(t, Mapping):
        for k in ("mtriple", "mcpu", "kind", "name"):
            if k in t:
                return str(t[k])
    return str(t)[:60] if t else "?"


class _OrtFeed:
    """An ONNX Runtime session with a runner's `run({name: array}) -> {name: array}`."""

    def __init__(self, sess: Any) -> None:
        self.sess = sess
        self.input_names = [i.name for i in sess.get_inputs()]
        self.output_names = [o.name for o in sess.get_outputs()]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.sess.run(None, {k: v for k, v in feed.items() if k in self.input_names})
        return dict(zip(self.output_names, outs))


def _runner_inputs(runner: Any, manifest: Mapping[str, Any] | None) -> list[str]:
    names = getattr(runner, "input_names", None)
    if names:
        return list(names)
    if manifest is not None:
        return [i["name"] for i in manifest.get("inputs", [])]
    return []


def build_report(*, source: Any, result: Any, backend: str | None = None, target: str | None = None,
                 instrument: ReportInstrument | None = None, data: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
                 compile_seconds: float | None = None, seed: int = 0,
                 latency_budget_s: float = LATENCY_BUDGET_S) -> dict[str, Any]:
    """Measure everything the page shows; returns a JSON-able dict (`render_html` draws it).

    `source`: the original model (path, bytes, ModelProto or Model); `result`: the OptimizeResult;
    `data`: a `.npz` path or arrays by input name (samples on the first axis) and optionally
    `labels`; without it, seeded random inputs (`seed`). Each part that fails is recorded in
    `problems` (and warned about) instead of raising.
    """
    from lepton_ir.reference import ort_session, random_inputs

    problems = _Problems()
    rep: dict[str, Any] = {
        "title": str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__,
        "pipeline": result.pipeline, "backend": backend or ("onnx" if result.artifact and Path(result.artifact).is_dir() else None),
        "target": target, "artifact": str(result.artifact) if result.artifact is not None else None,
        "host": {"cpu": cpu_name(), "cores": os.cpu_count(), "machine": platform.machine()},
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "compile_seconds": compile_seconds,
        "nodes_before": result.nodes_before, "nodes_after": result.nodes_after,
        "passes": list(instrument.rows) if instrument is not None else [
            {"pass": r.text, "phase": "pipeline", "changed": r.changed, "nodes_before": r.nodes_before,
             "nodes_after": r.nodes_after, "ops": [], "seconds": r.seconds, "bytes_before": None, "bytes_after": None}
            for r in result.report.records],
        "size": {"source_bytes": _source_bytes(source),
                 "artifact_bytes": _folder_bytes(Path(result.artifact)) if result.artifact is not None else None},
        "problems": problems.items,
    }
    arrays: dict[str, np.ndarray] | None = None
    if data is not None:
        arrays = load_report_data(data) if isinstance(data, (str, os.PathLike)) else {k: np.asarray(v) for k, v in data.items()}
    labels = None if arrays is None else arrays.get("labels")

    # The original model in ONNX Runtime: the reference (graph optimizations off) and as users run it.
    ref_src = _source_for_ort(source)
    ref_sess = ort_session(ref_src)
    fast_sess = ort_session(ref_src, optimize=True)
    dims = {i.name: (list(i.shape) if i.shape is not None else None) for i in ref_sess.get_inputs()}

    runner, what, manifest = None, "", None
    try:
        runner, what, manifest = _open_artifact(Path(result.artifact) if result.artifact is not None else None,
                                                result.model)
    except Exception as e:  # noqa: BLE001 - e.g. a CUDA artifact on a host without a GPU
        what = problems.add("artifact", f"cannot be loaded on this host ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
    rep["artifact_kind"] = what

    # Feeds: the given data, or seeded random inputs (symbolic dims 1, as lepton-run makes them).
    if arrays is not None:
        feeds = _feeds_from_arrays(arrays, dims, MAX_SAMPLES)
        rep["inputs"] = f"{len(feeds)} sample(s) from the given data"
    else:
        spec_src = manifest.get("inputs") if manifest is not None else None
        feeds = []
        for s in range(3):
            f = random_inputs(spec_src, seed=seed + s, dim_size=1) if spec_src else random_inputs(result.model, seed=seed + s,
                                                                                               dim_size=1)
            missing = [n for n in dims if n not in f]
            if missing:  # inputs the pipeline bound (bind-inputs): the original still takes them
                f.update({k: v for k, v in random_inputs(lepton_ir_load(ref_src), seed=seed + s, dim_size=1).items()
                          if k in missing})
            feeds.append(f)
        rep["inputs"] = f"{len(feeds)} seeded random input set(s) (seed {seed}, symbolic dims 1)"
    if labels is not None:
        rep["inputs"] += f", {len(labels)} label(s)"
    out_names = [o.name for o in ref_sess.get_outputs()]

    # Deviation and accuracy: every sample through both.
    dev = [{"name": n, "max_abs": 0.0, "max_ref": 0.0} for n in out_names]
    correct = {"original": 0, "artifact": 0, "agree": 0, "total": 0}
    rep["deviation"] = None
    rep["accuracy"] = None
    if runner is not None:
        try:
            in_names = _runner_inputs(runner, manifest)
            for i, feed in enumerate(feeds):
                ref = ref_sess.run(None, {k: v for k, v in feed.items() if k in dims})
                got_d = runner.run({k: v for k, v in feed.items() if k in in_names})
                got = [got_d[n] if n in got_d else list(got_d.values())[k] for k, n in enumerate(out_names)]
                _deviation(ref, got, dev)
                if labels is not None and i < len(labels):
                    a, b = np.asarray(ref[0]), np.asarray(got[0])
                    pa = int(np.argmax(a.reshape(-1, a.shape[-1])[0])) if a.ndim else int(a)
                    pb = int(np.argmax(b.reshape(-1, b.shape[-1])[0])) if b.ndim else int(b)
                    y = int(np.asarray(labels[i]).reshape(-1)[0])
                    correct["original"] += pa == y
                    correct["artifact"] += pb == y
                    correct["agree"] += pa == pb
                    correct["total"] += 1
            rep["deviation"] = {"samples": len(feeds), "outputs": dev}
            if correct["total"]:
                rep["accuracy"] = {"samples": correct["total"], "original": correct["original"] / correct["total"],
                                   "artifact": correct["artifact"] / correct["total"],
                                   "agreement": correct["agree"] / correct["total"]}
        except Exception as e:  # noqa: BLE001
            problems.add("deviation", e)
    elif labels is not None:
        rep["accuracy_note"] = "labels given, but the artifact cannot run on this host"

    # Latency: the first sample, alternating blocks, budget-limited repeat count.
    rep["latency"] = None
    try:
        feed0 = feeds[0]
        ort_feed = {k: v for k, v in feed0.items() if k in dims}
        fns: dict[str, Callable[[], object]] = {"original": lambda: fast_sess.run(None, ort_feed)}
        if runner is not None:
            in_names = _runner_inputs(runner, manifest)
            art_feed = {k: v for k, v in feed0.items() if k in in_names}
            fns["artifact"] = lambda: runner.run(art_feed)
        t0 = time.perf_counter()
        for f in fns.values():
            f()
        one = max(time.perf_counter() - t0, 1e-6)
        repeat = int(min(200, max(10, latency_budget_s / one)))
        times = timed_blocks(fns, repeat, warmup=3)
        lat = {k: {"median_ms": float(statistics.median(v)), "p90_ms": float(np.percentile(v, 90)), "runs": len(v)}
               for k, v in times.items()}
        rep["latency"] = lat
        if "artifact" in lat and lat["artifact"]["median_ms"] > 0:
            rep["speedup"] = lat["original"]["median_ms"] / lat["artifact"]["median_ms"]
    except Exception as e:  # noqa: BLE001
        problems.add("latency", e)

    # Stages of the artifact, with measured border bytes and times when it runs here.
    rep["stages"] = None
    if manifest is not None:
        try:
            rows = []
            prof = None
            if runner is not None and hasattr(runner, "profile") and len(manifest.get("stages", [])) > 1:
                in_names = _runner_inputs(runner, manifest)
                prof = runner.profile({k: v for k, v in feeds[0].items() if k in in_names}, repeat=10, warmup=2)
            for i, s in enumerate(manifest.get("stages", [])):
                row = {"name": s.get("name", f"stage{i}"), "backend": s.get("backend"), "device": s.get("device", "host"),
                       "target": _target_text(s), "nodes": s.get("nodes"), "reason": s.get("fallback_reason", ""),
                       "bytes_in": _static_bytes(s.get("inputs", [])), "bytes_out": _static_bytes(s.get("outputs", [])),
                       "ms": None}
                if prof is not None and i < len(prof):
                    row.update(bytes_in=prof[i]["bytes_in"], bytes_out=prof[i]["bytes_out"], ms=prof[i]["median_ms"])
                rows.append(row)
            if len(rows) == 1:
                if rows[0]["nodes"] is None:
                    rows[0]["nodes"] = result.nodes_after
                if runner is not None and prof is None:  # one stage: its borders are the artifact's
                    in_names = _runner_inputs(runner, manifest)
                    feed = {k: v for k, v in feeds[0].items() if k in in_names}
                    outs = runner.run(feed)
                    rows[0]["bytes_in"] = int(sum(np.asarray(v).nbytes for v in feed.values()))
                    rows[0]["bytes_out"] = int(sum(np.asarray(v).nbytes for v in outs.values()))
                    if rep.get("latency") and "artifact" in rep["latency"]:
                        rows[0]["ms"] = rep["latency"]["artifact"]["median_ms"]
            rep["stages"] = rows
        except Exception as e:  # noqa: BLE001
            problems.add("stages", e)

    # quant8's per-layer error, on the model just before and just after quant8.
    rep["quant"] = None
    if instrument is not None and instrument.quant is not None:
        try:
            from lepton_passes.quant.report import quant_report

            from lepton_passes import parse_pipeline

            pre, post = instrument.quant
            lower = parse_pipeline("lower-fused-to-onnx")  # fused ai.lepton ops (fuse before quant8) for ORT
            for m in (pre, post):
                lower.run(m)
            pre_inputs = {v.name for v in pre.graph.inputs}
            qfeeds = [{k: v for k, v in f.items() if k in pre_inputs} for f in feeds[:QUANT_SAMPLES]]
            q = quant_report(pre, post, qfeeds)
            rep["quant"] = {"samples": q["samples"], "layers": q["layers"], "outputs": q["outputs"], "size": q["size"]}
        except Exception as e:  # noqa: BLE001
            problems.add("quant8 per-layer error", e)
    rep["problems"] = problems.items
    return rep


def lepton_ir_load(src: Any) -> Model:
    import lepton_ir

    return lepton_ir.load(src)


# ------------------------------------------------------------------------------------------------
# HTML
# ------------------------------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, k in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):  # as lepton-opt's summary line
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def _ms(x: float) -> str:
    return f"{x:.3f} ms" if x < 10 else f"{x:.1f} ms"


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def _db(x: float) -> str:
    return "inf" if x == math.inf else "-inf" if x == -math.inf else f"{x:.1f} dB"


def speed_text(speedup: float | None) -> str:
    """`1.52x faster` / `1.41x slower`: the artifact against ONNX Runtime on the original."""
    if not speedup or not math.isfinite(speedup):
        return "not measured"
    return f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower"


def summary_text(rep: Mapping[str, Any]) -> str:
    """The gains on one line (lepton-opt prints it after `wrote report`)."""
    parts = []
    size = rep.get("size") or {}
    if size.get("source_bytes") and size.get("artifact_bytes") is not None:
        parts.append(f"size {_bytes(size['source_bytes'])} -> {_bytes(size['artifact_bytes'])}")
    lat = rep.get("latency") or {}
    if "artifact" in lat:
        parts.append(f"latency {_ms(lat['original']['median_ms'])} in ONNX Runtime -> {_ms(lat['artifact']['median_ms'])} "
                     f"({speed_text(rep.get('speedup'))})")
    elif lat:
        parts.append("latency of the artifact not measured on this host")
    acc = rep.get("accuracy")
    if acc:
        parts.append(f"top-1 accuracy {acc['original'] * 100:.2f}% -> {acc['artifact'] * 100:.2f}% on {acc['samples']} "
                     f"labelled samples")
    dev = rep.get("deviation")
    if dev:
        worst = max(o["max_abs"] for o in dev["outputs"]) if dev["outputs"] else 0.0
        parts.append(f"max abs deviation from ONNX Runtime {_fmt(worst)}")
    if rep.get("problems"):
        parts.append(f"{len(rep['problems'])} part(s) missing")
    return "; ".join(parts)


def _chart_latency(lat: Mapping[str, Any]) -> str:
    items = [("ONNX Runtime, original model", lat["original"]["median_ms"], CHART_COLORS["latency-original"])]
    if "artifact" in lat:
        items.append(("the artifact", lat["artifact"]["median_ms"], CHART_COLORS["latency-artifact"]))
    width, left, row = 900, 230, 34
    top = max(v for _, v, _ in items) or 1.0
    scale = (width - left - 110) / top
    h = 12 + row * len(items)
    out = [f'<svg id="chart-latency" class="chart" width="{width}" height="{h}" font-size="13">']
    for k, (label, v, color) in enumerate(items):
        y = 6 + k * row
        out.append(f'<text x="{left - 8}" y="{y + 20}" text-anchor="end">{_e(label)}</text>')
        out.append(f'<rect class="bar" data-value="{v:.6g}" x="{left}" y="{y + 4}" width="{max(2.0, v * scale):.1f}" '
                   f'height="{row - 8}" fill="{color}"/>')
        out.append(f'<text x="{left + max(2.0, v * scale) + 6:.1f}" y="{y + 20}">{_e(_ms(v))}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _chart_passes(rows: Sequence[Mapping[str, Any]], nodes_before: int) -> str:
    items = [("input model", nodes_before, None)] + [(f"{r['pass']}" + (" (backend)" if r["phase"] == "backend" else ""),
                                                      r["nodes_after"], r["changed"]) for r in rows]
    width, left, row = 900, 330, 18
    top = max(v for _, v, _ in items) or 1
    scale = (width - left - 70) / top
    h = 24 + row * len(items)
    out = [f'<svg id="chart-passes" class="chart" width="{width}" height="{h}" font-size="12">',
           f'<text x="{left}" y="12" fill="#555">nodes after each pass (dark: the pass changed the model)</text>']
    for k, (label, v, changed) in enumerate(items):
        y = 18 + k * row
        color = "#999" if changed is None else CHART_COLORS["passes-changed" if changed else "passes-unchanged"]
        cls = "base" if changed is None else "bar"
        out.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{_e(label[:48])}</text>')
        out.append(f'<rect class="{cls}" data-value="{v}" x="{left}" y="{y + 2}" width="{max(2.0, v * scale):.1f}" '
                   f'height="{row - 4}" fill="{color}"/>')
        out.append(f'<text x="{left + max(2.0, v * scale) + 5:.1f}" y="{y + 13}">{v}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _chart_sqnr(layers: Sequence[Mapping[str, Any]]) -> str:
    vals = [(i, l["sqnr_db"]) for i, l in enumerate(layers)]
    finite = [v for _, v in vals if math.isfinite(v)]
    hi = max(finite + [40.0])
    lo = min(finite + [0.0])
    width, height, left, bottom, top = 900, 240, 50, 30, 12
    pw, ph = width - left - 20, height - top - bottom
    n = max(len(vals) - 1, 1)

    def y_of(v: float) -> float:
        v = hi if v == math.inf else lo if v == -math.inf else v
        return top + ph * (1 - (v - lo) / (hi - lo or 1))

    out = [f'<svg id="chart-sqnr" class="chart" width="{width}" height="{height}" font-size="11">',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>',
           f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>']
    for t in range(int(math.floor(lo / 10) * 10), int(hi) + 1, 10):
        if lo <= t <= hi:
            y = y_of(t)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{t}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">quantized activation, in graph order '
               f'({len(vals)}); y: SQNR in dB against the float model</text>')
    pts = [(left + pw * i / n if len(vals) > 1 else left + pw / 2, y_of(v)) for i, v in vals]
    if len(pts) > 1:
        out.append('<polyline fill="none" stroke="#e8a0a0" stroke-width="1.5" points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
    for (i, v), (x, y) in zip(vals, pts):
        out.append(f'<circle class="pt" data-value="{v:.4g}" cx="{x:.1f}" cy="{y:.1f}" r="4" '
                   f'fill="{CHART_COLORS["sqnr"]}"><title>{_e(layers[i]["tensor"])}: {_e(_db(v))}</title></circle>')
    out.append("</svg>")
    return "\n".join(out)


def stage_color(backend: str | None) -> str:
    b = str(backend or "")
    if b.startswith("tvm"):
        return CHART_COLORS["stage-tvm"]
    if b == "onnx":
        return CHART_COLORS["stage-onnx"]
    return CHART_COLORS["stage-other"]


def _chart_stages(stages: Sequence[Mapping[str, Any]]) -> str:
    width, left, height = 900, 10, 96
    pw = width - 2 * left
    sizes = [max(int(s.get("nodes") or 0), 1) for s in stages]
    total = sum(sizes)
    out = [f'<svg id="chart-stages" class="chart" width="{width}" height="{height}" font-size="12">']
    x = float(left)
    for s, n in zip(stages, sizes):
        w = pw * n / total
        color = stage_color(s.get("backend"))
        out.append(f'<rect class="bar" data-value="{n}" x="{x:.1f}" y="8" width="{max(w - 1, 1):.1f}" height="44" '
                   f'fill="{color}"><title>{_e(s["name"])}: {_e(s.get("backend"))}, {n} nodes</title></rect>')
        if w > 70:
            out.append(f'<text x="{x + 5:.1f}" y="35" fill="#fff">{_e(s["name"])}: {n}</text>')
        x += w
    lx = left
    for b in dict.fromkeys(str(s.get("backend")) for s in stages):
        out.append(f'<rect x="{lx}" y="66" width="12" height="12" fill="{stage_color(b)}"/>')
        label = f"{b} ({'TVM' if b.startswith('tvm') else 'ONNX Runtime' if b == 'onnx' else b})"
        out.append(f'<text x="{lx + 17}" y="76">{_e(label)}</text>')
        lx += 30 + 8 * len(label)
    out.append(f'<text x="{lx + 10}" y="76" fill="#555">width: nodes per stage, in execution order</text>')
    out.append("</svg>")
    return "\n".join(out)


_CSS = ("body{font-family:sans-serif;max-width:960px;margin:1.2em auto;color:#222;font-size:14px}"
        "h1{font-size:22px;margin:.2em 0}h2{font-size:17px;margin:1.1em 0 .4em;border-bottom:1px solid #ccc}"
        "table{border-collapse:collapse;margin:.3em 0}td,th{padding:2px 8px;text-align:left;vertical-align:top}"
        "th{background:#eee}tr:nth-child(even) td{background:#f6f6f6}td.n{text-align:right}"
        ".note{color:#555}.warn{color:#a40}.big td{font-size:15px}code{background:#f2f2f2;padding:0 3px}"
        "svg{display:block;font-family:sans-serif}")


def render_html(rep: Mapping[str, Any]) -> str:
    """The page for a `build_report` dict: summary and charts first, then the detailed tables."""
    p: list[str] = ["<!doctype html>", "<html lang=en><head><meta charset=utf-8>",
                    f"<title>Lepton report: {_e(Path(str(rep['title'])).name)}</title>", f"<style>{_CSS}</style></head><body>"]
    host = rep["host"]
    p.append(f"<h1>Lepton report: {_e(Path(str(rep['title'])).name)}</h1>")
    p.append(f'<p class="note">pipeline <code>{_e(rep["pipeline"] or "(none)")}</code>; backend '
             f'<code>{_e(rep["backend"] or "(none)")}</code>' + (f" target <code>{_e(rep['target'])}</code>" if rep.get("target") else "")
             + (f"; artifact <code>{_e(rep['artifact'])}</code>" if rep.get("artifact") else "")
             + f"<br>measured on {_e(host['cpu'])} ({_e(host['cores'])} cores, {_e(host['machine'])}), {_e(rep['created'])};"
             f" inputs: {_e(rep.get('inputs', '?'))}</p>")
    # Summary
    size = rep["size"]
    rows = [("nodes", f"{rep['nodes_before']} &rarr; {rep['nodes_after']} (after the pipeline)")]
    if size.get("source_bytes") is not None or size.get("artifact_bytes") is not None:
        ratio = (f" ({size['artifact_bytes'] / size['source_bytes']:.2f}x)"
                 if size.get("source_bytes") and size.get("artifact_bytes") is not None else "")
        rows.append(("size", f"{_bytes(size.get('source_bytes'))} model &rarr; {_bytes(size.get('artifact_bytes'))} artifact{ratio}"))
    lat = rep.get("latency")
    if lat and "artifact" in lat:
        rows.append(("latency", f"ONNX Runtime on the original {_ms(lat['original']['median_ms'])} &rarr; artifact "
                                f"{_ms(lat['artifact']['median_ms'])} (median: <b>{speed_text(rep.get('speedup'))}</b>)"))
    elif lat:
        rows.append(("latency", f"ONNX Runtime on the original {_ms(lat['original']['median_ms'])}; "
                                f"the artifact: not measured ({_e(rep.get('artifact_kind', ''))})"))
    dev = rep.get("deviation")
    if dev:
        worst = max(dev["outputs"], key=lambda o: o["max_abs"] / (o["max_ref"] or 1.0))
        rows.append(("largest deviation", f"{_fmt(worst['max_abs'])} max abs on output <code>{_e(worst['name'])}</code> "
                                          f"(|ref| up to {_fmt(worst['max_ref'])}), over {dev['samples']} sample(s)"))
    else:
        rows.append(("deviation", f"not measured: {_e(rep.get('artifact_kind', ''))}"))
    acc = rep.get("accuracy")
    if acc:
        rows.append(("accuracy (top-1)", f"original {acc['original'] * 100:.2f}% &rarr; artifact {acc['artifact'] * 100:.2f}% "
                                         f"({acc['agreement'] * 100:.2f}% same predictions; {acc['samples']} labelled samples)"))
    elif rep.get("accuracy_note"):
        rows.append(("accuracy", _e(rep["accuracy_note"])))
    if rep.get("compile_seconds") is not None:
        rows.append(("passes + backend", f"{rep['compile_seconds']:.2f} s (after loading the model; the report's own measuring not included)"))
    p.append('<h2>Summary</h2><table class="big">' + "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in rows)
             + "</table>")
    for prob in rep.get("problems", []):
        p.append(f'<p class="warn">not in this report: {_e(prob)}</p>')
    # Charts
    if lat:
        p.append("<h2>Latency (median)</h2>" + _chart_latency(lat))
        how = ""
        if "artifact" not in lat and rep.get("artifact"):
            how = (f" To measure it on the device: <code>lepton-run {_e(rep['artifact'])} --rpc HOST:PORT --bench 50 "
                   f"--compare MODEL.onnx</code> (docs/arm-device.md).")
        p.append(f'<p class="note">same process, alternating blocks of calls; ONNX Runtime with all graph optimizations '
                 f'and its default threads. Measured: {_e(rep.get("artifact_kind", ""))}.{how}</p>')
    if rep.get("stages"):
        p.append(f"<h2>Stages ({len(rep['stages'])})</h2>" + _chart_stages(rep["stages"]))
    if rep.get("quant") and rep["quant"]["layers"]:
        q = rep["quant"]
        p.append(f"<h2>quant8: per-layer error ({len(q['layers'])} quantized activations, {q['samples']} samples)</h2>"
                 + _chart_sqnr(q["layers"]))
    p.append(f"<h2>Passes ({len(rep['passes'])} runs)</h2>" + _chart_passes(rep["passes"], rep["nodes_before"]))
    # Tables
    p.append("<h2>Pass table</h2><table><tr><th>pass</th><th>changed</th><th>nodes</th><th>op types (change)</th>"
             "<th>ms</th><th>constants</th></tr>")
    for r in rep["passes"]:
        ops = ", ".join(f"{'+' if d > 0 else '&minus;'}{abs(d)} {_e(op)}" for op, d in r["ops"])
        b0, b1 = r.get("bytes_before"), r.get("bytes_after")
        sz = "" if b0 is None else (_bytes(b1) if b0 == b1 else f"{_bytes(b0)} &rarr; {_bytes(b1)}")
        p.append(f"<tr><td><code>{_e(r['pass'])}</code>{' <span class=note>(backend)</span>' if r['phase'] == 'backend' else ''}"
                 f"</td><td>{'yes' if r['changed'] else 'no'}</td><td class=n>{r['nodes_before']} &rarr; {r['nodes_after']}</td>"
                 f"<td>{ops}</td><td class=n>{r['seconds'] * 1e3:.1f}</td><td class=n>{sz}</td></tr>")
    p.append("</table><p class=note>constants: bytes of the initializers and Constant tensors (the weights); "
             "(backend): the backend's lowering passes, run on its copy of the model.</p>")
    if lat:
        p.append("<h2>Latency table</h2><table><tr><th>what</th><th>median</th><th>p90</th><th>runs</th></tr>")
        for k, v in lat.items():
            label = "ONNX Runtime, original model" if k == "original" else "the artifact"
            p.append(f"<tr><td>{label}</td><td class=n>{_ms(v['median_ms'])}</td><td class=n>{_ms(v['p90_ms'])}</td>"
                     f"<td class=n>{v['runs']}</td></tr>")
        p.append("</table>")
    if dev:
        p.append("<h2>Output deviation from ONNX Runtime on the original</h2><table><tr><th>output</th><th>max abs</th>"
                 "<th>max |ref|</th><th>relative to max |ref|</th></tr>")
        for o in dev["outputs"]:
            rel = o["max_abs"] / o["max_ref"] if o["max_ref"] else (0.0 if o["max_abs"] == 0 else math.inf)
            extra = f" (shapes differ: {_e(o['shape_mismatch'])})" if o.get("shape_mismatch") else ""
            p.append(f"<tr><td><code>{_e(o['name'])}</code>{extra}</td><td class=n>{_fmt(o['max_abs'])}</td>"
                     f"<td class=n>{_fmt(o['max_ref'])}</td><td class=n>{_fmt(rel)}</td></tr>")
        p.append("</table>")
    if rep.get("stages"):
        p.append("<h2>Stage table</h2><table><tr><th>stage</th><th>backend</th><th>device</th><th>nodes</th>"
                 "<th>in bytes</th><th>out bytes</th><th>ms</th><th>why on this backend</th></tr>")
        for s in rep["stages"]:
            ms = "" if s.get("ms") is None else f"{s['ms']:.3f}"
            p.append(f"<tr><td>{_e(s['name'])}</td><td>{_e(s['backend'])}</td><td>{_e(s['device'])}</td>"
                     f"<td class=n>{_e(s.get('nodes') if s.get('nodes') is not None else '?')}</td>"
                     f"<td class=n>{_e(s['bytes_in'] if s['bytes_in'] is not None else '?')}</td>"
                     f"<td class=n>{_e(s['bytes_out'] if s['bytes_out'] is not None else '?')}</td><td class=n>{ms}</td>"
                     f"<td>{_e(s.get('reason') or '')}</td></tr>")
        p.append("</table><p class=note>border bytes: what the stage reads and writes (measured when the artifact "
                 "runs here, else from the static shapes; ? = symbolic).</p>")
    if rep.get("quant"):
        q = rep["quant"]
        p.append(f"<h2>quant8 layer table</h2><p class=note>SQNR = 10 log10(&Sigma;x&sup2; / &Sigma;(x - x_q)&sup2;) of each "
                 f"quantized activation against the model just before quant8, {q['samples']} sample(s); the error "
                 f"accumulates, so a sudden drop marks the layer that hurts. Constants "
                 f"{_bytes(q['size']['float_bytes'])} &rarr; {_bytes(q['size']['quant_bytes'])} (serialized).</p>")
        p.append("<table><tr><th>output</th><th>SQNR</th><th>max abs error</th><th>top-1 agreement</th></tr>")
        for o in q["outputs"]:
            ag = f"{o['top1_agreement'] * 100:.1f}%" if o.get("top1_agreement") is not None else ""
            p.append(f"<tr><td><code>{_e(o['name'])}</code></td><td class=n>{_db(o['sqnr_db'])}</td>"
                     f"<td class=n>{_fmt(o['max_abs_error'])}</td><td class=n>{ag}</td></tr>")
        p.append("</table><table><tr><th>#</th><th>tensor</th><th>SQNR</th></tr>")
        for i, l in enumerate(q["layers"]):
            p.append(f"<tr><td class=n>{i}</td><td><code>{_e(l['tensor'])}</code></td><td class=n>{_db(l['sqnr_db'])}</td></tr>")
        p.append("</table>")
    p.append('<p class="note">Written by lepton-opt --report (docs/report.md).</p></body></html>')
    return "\n".join(p)


def write_report(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (a temporary file beside it, fsynced, renamed into place)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def make_report(path: str | os.PathLike, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
    """`build_report(**kwargs)`, rendered and written to `path`; returns the path and the report dict."""
    rep = build_report(**kwargs)
    return write_report(path, render_html(rep)), rep
