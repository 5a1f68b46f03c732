"""TVM with ONNX Runtime fallback: every model compiles; what TVM cannot run goes to ONNX Runtime.

When the whole lowered model does not compile, the capability oracle (capability.py) asks TVM
about each node, `lepton_ir.partition` groups the nodes into cycle-free regions (TVM regions of at
least `min-region` nodes; the rest ONNX Runtime's), each region is cut out (`lepton_ir.extract`)
and compiled by its backend into a stage of one multi-stage artifact. One warning line per
fallback region names its ops and why TVM refused them; with `fallback=false` (`--no-fallback`)
the same reasons make the error instead.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import lepton_ir
from lepton_backends.base import Backend, BackendError
from lepton_ir import Model, Node, Value

FALLBACK = "onnx"


class FallbackWarning(UserWarning):
    """Part of a model runs on ONNX Runtime because TVM cannot compile it (one per region)."""


def _elements(v: Value) -> float:
    shape = v.shape
    if shape is None:
        return 1.0
    return float(math.prod(d if isinstance(d, int) else 1 for d in shape.dims))


def compute_of(node: Node) -> float:
    """Rough arithmetic work of a node: 2*MACs for convs and matmuls, else its output elements."""
    out = sum(_elements(o) for o in node.outputs)
    if node.op_type in ("Conv", "ConvInteger", "ConvTranspose") and len(node.inputs) > 1 and node.inputs[1] is not None:
        w = node.inputs[1].shape
        if w is not None and all(isinstance(d, int) for d in w.dims[1:]):
            return 2.0 * out * math.prod(w.dims[1:])
    if node.op_type in ("MatMul", "Gemm", "MatMulInteger") and node.inputs[0] is not None:
        a = node.inputs[0].shape
        if a is not None and a.dims and isinstance(a.dims[-1], int):
            k = a.dims[-1] if not (node.op_type == "Gemm" and node.attr("transA", 0)) else a.dims[0]
            return 2.0 * out * (k if isinstance(k, int) else 1)
    return out


def bytes_of(v: Value) -> float:
    itemsize = 4
    try:
        itemsize = v.dtype.numpy().itemsize if v.dtype is not None else 4
    except (ValueError, AttributeError):
        pass
    return _elements(v) * itemsize


def _histogram(nodes: list[Node]) -> str:
    counts = collections.Counter(n.op_type for n in nodes)
    return ", ".join(f"{op} x{k}" if k > 1 else op for op, k in counts.most_common(4)) + \
        (", ..." if len(counts) > 4 else "")


def _clear(folder: Path) -> None:
    for p in list(folder.iterdir()):
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def refusal_summary(reasons: list[str], limit: int = 3) -> str:
    """`r1; r2; r3; and N more` (distinct reasons, in graph order)."""
    distinct = list(dict.fromkeys(reasons))
    more = f"; and {len(distinct) - limit} more" if len(distinct) > limit else ""
    return "; ".join(distinct[:limit]) + more


def _median_ms(fn: Any, repeat: int = 10, warmup: int = 2) -> float:
    import time

    import numpy as np

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def time_both(folder: Path, entry: dict[str, Any], model: Model, values: dict[str, Any]) -> tuple[float, float]:
    """(TVM ms, ONNX Runtime ms) of one region on this host, on its recorded input values; ONNX
    Runtime with its own graph optimizations on, as the artifact's ONNX Runtime stage runs."""
    from lepton_ir.reference import ort_session

    from .artifact import load_stage

    runner = load_stage(folder, entry)
    feeds = {s["name"]: values[s["name"]] for s in entry["inputs"]}
    sess = ort_session(model, optimize=True)
    ort_feeds = {i.name: feeds[i.name] for i in sess.get_inputs()}
    args = runner.check_inputs(feeds)
    t_tvm = _median_ms(lambda: runner._call(args))
    t_ort = _median_ms(lambda: sess.run(None, ort_feeds))
    return t_tvm, t_ort


def partitioned_stages(be: Any, work: Model, staging: Path, *, target: str | None, options: Any,
                       lowering: str, whole_error: BaseException | None) -> list[tuple[Backend, dict[str, Any]]]:
    """Stages for `work` (already lowered) when TVM cannot compile it whole (`whole_error`), or, with
    `placement=fastest`, when it can (`whole_error` None) but each region goes where it measured
    faster; see the module doc."""
    from lepton_backends.onnx_backend import OnnxBackend
    from lepton_ir.partition import partition

    from .capability import TvmCapability, record_values

    # Border values travel by name between stages: give the unnamed ones names first.
    for n in work.graph:
        for o in n.outputs:
            if o.name is None:
                o.name = work.graph.fresh_name("v")
    tgt = be.resolve(target)
    from .artifact import _target_json, device_for_target

    tvm_device = device_for_target(_target_json(tgt))
    oracle = TvmCapability(tgt)
    fastest = options.placement == "fastest"
    if fastest and not oracle.host_runs:
        raise BackendError(f"{be.name}: placement=fastest measures regions on this host; target {target!r} runs "
                           "elsewhere (measuring on a device over RPC is not implemented)")
    if whole_error is None:  # the whole model compiles: one TVM region to measure against ONNX Runtime
        refused: dict[int, str] = {}
        from lepton_ir.reference import random_inputs

        values = record_values(work, random_inputs(work, seed=0, dim_size=1)) or {}
    else:
        verdicts = oracle.check(work)
        values = oracle.values or {}
        # Every node may compile on its own while the whole does not: then the bisection below
        # finds the part that fails (the window functions of the conformance cases do this).
        refused = {id(n): verdicts[id(n)].reason for n in work.graph if not verdicts[id(n)].ok}
    reasons = [refused[id(n)] for n in work.graph if id(n) in refused]
    if not options.fallback:
        from .backend import _bind_hint

        if not refused:  # each node compiles alone: the whole model's own error is the reason
            raise BackendError(f"{whole_error} (fallback is off: --no-fallback)") from whole_error
        msg = (f"{be.name}: TVM cannot compile {len(refused)} node(s) and fallback is off (--no-fallback): "
               f"{refusal_summary(reasons)}{_bind_hint(work)}")
        raise BackendError(" ".join(msg.split()))
    onnx_be = OnnxBackend()
    onnx_opts = onnx_be.parse_options({})
    stage_opts = dataclasses.replace(options, input_shapes=None)  # types are pinned in `work` already
    # Partition, compile the TVM regions; a region that fails as a whole (every node compiled on
    # its own) hands its nodes to the fallback and the partition is redone, so fallback regions
    # merge with their neighbours instead of fragmenting the model.
    # A TVM region that fails as a whole is bisected (its halves get labels of their own, so they
    # do not merge back) until the failing part is one node, which goes to ONNX Runtime. Each
    # distinct TVM region is compiled (and timed) once, into a scratch folder, whatever the number
    # of rounds; the stages are assembled from those at the end.
    label: dict[int, str] = {}
    splits = 0
    scratch = staging / ".regions"
    scratch.mkdir()
    built: dict[frozenset[int], tuple[dict[str, Any] | None, BaseException | None, Path]] = {}
    timed: dict[frozenset[int], tuple[float, float]] = {}
    while True:
        regions = partition(work.graph, lambda n: FALLBACK if id(n) in refused else label.get(id(n), be.name),
                            fallback=FALLBACK,
                            min_size=options.min_region, reasons=refused, compute_of=compute_of, bytes_of=bytes_of,
                            min_compute_ratio=options.min_compute_ratio)
        failed = None
        slower = None
        for r in regions:
            if r.label == FALLBACK:
                continue
            key = frozenset(id(n) for n in r.nodes)
            if key not in built:
                folder = scratch / f"r{len(built)}"
                folder.mkdir()
                model = lepton_ir.extract(work, [v.name for v in r.inputs], [v.name for v in r.outputs])
                try:
                    entry = be.stage_entry(be.build(model, folder, target=target, options=stage_opts), target,
                                           stage_opts, lowering)
                    built[key] = (entry, None, folder)
                except BackendError as e:
                    built[key] = (None, e, folder)
                if fastest and built[key][0] is not None and \
                        all(sp["name"] in values for sp in built[key][0]["inputs"]):
                    timed[key] = time_both(folder, built[key][0], model, values)
            entry, err, _ = built[key]
            if err is not None:
                failed = (r, err)
                break
            if key in timed and timed[key][1] < timed[key][0]:
                slower = (r, *timed[key])
                break
        if failed is None and slower is None:
            break
        if failed is not None:
            r, e = failed
            if len(r) > 1:
                half = len(r) // 2
                for k, part in enumerate((r.nodes[:half], r.nodes[half:])):
                    for n in part:
                        label[id(n)] = f"{be.name}#{splits}.{k}"
                splits += 1
                continue
            why = f"it compiles alone but not as a region with its neighbours ({_first(e)})"
            # The culprit is found: forget the bisection's labels, so the halves that compiled merge
            # back around it (their compiles are cached by node set; only new regions compile).
            label.clear()
        else:
            r, t_tvm, t_ort = slower
            why = f"ONNX Runtime ran its region faster ({t_ort:.3g} ms against TVM's {t_tvm:.3g} ms)"
        for n in r.nodes:
            refused[id(n)] = f"{n.op_type}: {why}"
    out: list[tuple[Backend, dict[str, Any]]] = []
    for i, r in enumerate(regions):
        name = f"stage{i}"
        folder = staging / name
        if r.label != FALLBACK:
            key = frozenset(id(n) for n in r.nodes)
            entry, _, src = built[key]
            src.rename(folder)
            entry = {**entry, "name": name, "dir": name, "nodes": len(r)}
            if key in timed:
                entry["measured_ms"] = {"tvm": round(timed[key][0], 4), "onnxruntime": round(timed[key][1], 4)}
            out.append((be, entry))
            continue
        folder.mkdir()
        model = lepton_ir.extract(work, [v.name for v in r.inputs], [v.name for v in r.outputs])
        entry = onnx_be.stage_entry(onnx_be.build(model, folder, target=None, options=onnx_opts), None, onnx_opts)
        # ONNX Runtime regions of an artifact for another machine run there too (lepton-run --rpc);
        # beside a GPU they run on this host's CPU.
        entry["device"] = "remote" if tvm_device == "remote" else "host"
        entry.update(name=name, dir=name, nodes=len(r),
                     fallback_reason=r.reason or "too small to be worth a border (min-region)")
        out.append((onnx_be, entry))
    shutil.rmtree(scratch, ignore_errors=True)
    for r in regions:
        if r.label == FALLBACK:
            why = refusal_summary(r.reason.split("; "), limit=2) if r.reason else "too small for TVM (min-region)"
            msg = f"{be.name}: {len(r)} node(s) ({_histogram(r.nodes)}) run on ONNX Runtime: {why}"
            warnings.warn(msg if len(msg) <= 400 else msg[:397] + "...", FallbackWarning, stacklevel=2)
    return out


def _first(e: BaseException) -> str:
    text = str(e)
    return text.split(": TVM could not compile the model: ", 1)[-1][:200]


def batch_pins(model: Model) -> dict[str, list[int]] | None:
    """Input shapes with a symbolic leading (batch) dim set to 1, when that is the only symbolic dim
    of every input; None otherwise (other symbolic dims cannot be guessed: they are image sizes,
    sequence lengths...)."""
    pins: dict[str, list[int]] = {}
    for v in model.graph.inputs:
        if v.const is not None or v.shape is None:
            continue
        dims = list(v.shape.dims)
        if any(not isinstance(d, int) for d in dims[1:]):
            return None
        if dims and not isinstance(dims[0], int):
            pins[v.name] = [1] + dims[1:]
    return pins or None
