"""`prune`: structured channel pruning by physical removal over the whole graph (docs/pruning.md).

1. `DepGraph` (deps.py) groups the channels that must go together and freezes those it cannot
   follow; 2. importance (importance.py) ranks the free channels of each group; 3. a target (a
   channel ratio per group, or a share of MACs to keep, found by bisection on the ratio) picks the
   channels to drop, the kept count rounded to a SIMD multiple; 4. every constant on a pruned slot
   is sliced, group counts / Reshape shapes / Split sizes follow, and `replace_constants`
   re-infers the types of the forward cone; the model verifies.

What was removed is recorded in ``model.metadata_props["lepton.prune"]`` (JSON, see
`PRUNE_KEY`), and the original model (ONNX proto) is kept in ``model.graph.meta`` under
`ORIGINAL_KEY` for the recovery passes (`reconstruct`, `distill`) of the same pipeline.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lepton_ir import Model, Value

from ..base import Pass, PassError, register_pass
from ..util import constant_value
from .deps import DepGraph, Slot
from .importance import activation_norms, channel_scores

log = logging.getLogger("lepton_passes.prune")

PRUNE_KEY = "lepton.prune"
ORIGINAL_KEY = "lepton.prune.original"

#: float32 lanes of one vector register
SIMD_LANES = {"avx2": 8, "avx512": 16, "neon": 4, "sse": 4}


def detect_simd() -> str:
    """'avx512', 'avx2', 'neon' or 'sse' for this machine (from /proc/cpuinfo)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return "avx2"
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    if "asimd" in flags or "neon" in flags:
        return "neon"
    return "sse"


@dataclass
class Plan:
    """Which channel classes go: `removed` (class roots) over the analysis `dg`."""

    dg: DepGraph
    removed: set[int]
    macs_before: float
    macs_after: float
    groups: list[list[Slot]] = field(default_factory=list)

    def keep(self, s: Slot) -> list[int]:
        return [i for i, e in enumerate(s.ids.tolist()) if self.dg.root(e) not in self.removed]

    def removed_indices(self, s: Slot) -> list[int]:
        return [i for i, e in enumerate(s.ids.tolist()) if self.dg.root(e) in self.removed]

    @property
    def num_removed(self) -> int:
        return len(self.removed)


def slot_groups(dg: DepGraph) -> list[list[Slot]]:
    """Slots that share channel classes, grouped (a Torch-Pruning 'group')."""
    slots = list(dg.slots.values())
    parent = list(range(len(slots)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for k, s in enumerate(slots):
        for e in s.ids.tolist():
            r = dg.root(e)
            if r in owner:
                a, b = find(owner[r]), find(k)
                if a != b:
                    parent[a] = b
            else:
                owner[r] = k
    out: dict[int, list[Slot]] = {}
    for k, s in enumerate(slots):
        out.setdefault(find(k), []).append(s)
    return list(out.values())


def _macs_after(dg: DepGraph, removed: set[int]) -> float:
    total = 0.0
    for wu in dg.weights:
        fo = sum(dg.root(e) not in removed for e in wu.out_slot.ids.tolist()) / wu.out_slot.size
        fi = 1.0 if wu.depthwise else (sum(dg.root(e) not in removed for e in wu.in_slot.ids.tolist())
                                       / wu.in_slot.size)
        total += wu.macs * fo * fi
    return total


def make_plan(dg: DepGraph, scores: dict[int, float], ratio: float, multiple: int,
              groups: list[list[Slot]] | None = None) -> Plan:
    """Remove `ratio` of every group's channel classes (the least important free ones)."""
    frozen = dg.frozen_roots()
    produced = {dg.root(e) for wu in dg.weights for e in wu.out_slot.ids.tolist()}
    groups = groups if groups is not None else slot_groups(dg)
    removed: set[int] = set()
    if ratio > 0:
        for grp in groups:
            classes = sorted({dg.root(e) for s in grp for e in s.ids.tolist()})
            free = [c for c in classes if c not in frozen and c in produced]
            if not free:
                continue
            n = len(classes)
            keep = n * (1.0 - ratio)
            mult = max(1, multiple)
            keep = min(n, max(min(mult, n), int(math.ceil(keep / mult - 1e-9)) * mult))
            k = min(n - keep, len(free))
            if k <= 0:
                continue
            free.sort(key=lambda c: (scores.get(c, 0.0), c))
            chosen = set(free[:k])
            # never empty a slot
            for s in grp:
                roots = [dg.root(e) for e in s.ids.tolist()]
                if all(r in chosen for r in roots):
                    best = max(set(roots), key=lambda c: (scores.get(c, 0.0), c))
                    chosen.discard(best)
            removed |= chosen
    before = sum(wu.macs for wu in dg.weights)
    return Plan(dg, removed, before, _macs_after(dg, removed), groups)


def plan_for_macs(dg: DepGraph, scores, keep_macs: float, multiple: int, max_ratio: float) -> Plan:
    groups = slot_groups(dg)
    lo, hi = 0.0, max_ratio
    best = make_plan(dg, scores, 0.0, multiple, groups)
    if best.macs_before <= 0 or best.macs_after <= keep_macs * best.macs_before:
        return best
    top = make_plan(dg, scores, hi, multiple, groups)
    if top.macs_after > keep_macs * top.macs_before:
        log.warning("prune: macs=%g not reachable (%.3f of the MACs left at ratio %g)", keep_macs,
                    top.macs_after / top.macs_before, hi)
        return top
    best = top
    for _ in range(24):
        mid = (lo + hi) / 2
        p = make_plan(dg, scores, mid, multiple, groups)
        if p.macs_after <= keep_macs * p.macs_before:
            hi, best = mid, p
        else:
            lo = mid
    return best


# ------------------------------------------------------------------------------------------------
# Applying a plan
# ------------------------------------------------------------------------------------------------
def apply_plan(model: Model, plan: Plan) -> dict:
    """Physically remove the planned channels; return the record (see `PRUNE_KEY`)."""
    from lepton_ir import replace_constants

    dg = plan.dg
    g = model.graph
    arrays: dict[Value, np.ndarray] = {}
    replaced: list[Value] = []
    by_value: dict[int, list[Slot]] = {}
    for s in dg.slots.values():
        if plan.removed_indices(s):
            by_value.setdefault(id(s.value), []).append(s)
    for slots in by_value.values():
        v = slots[0].value
        a = constant_value(v)
        if a is None:
            continue
        a = np.asarray(a)
        for s in slots:
            a = np.take(a, plan.keep(s), axis=s.axis)
        arrays[materialize(model, v)] = np.ascontiguousarray(a)
    for f in dg.fixes:
        n = f.node
        if f.kind == "group":
            kept = len(plan.keep(f.slot))
            if kept != f.slot.size:
                n.set_attr("group", kept)
        elif f.kind == "reshape":
            kept = len(plan.keep(f.slot))
            if kept == f.slot.size:
                continue
            if f.piece is not None:  # a computed shape: rewrite its constant piece
                cat, i = f.piece
                old = np.asarray(constant_value(cat.inputs[i]))
                if int(old.reshape(-1)[0]) > 0:
                    _set_private_constant(model, cat, i, np.full(old.shape, kept, old.dtype), arrays, replaced)
                continue
            shape = np.asarray(constant_value(n.inputs[1]), dtype=np.int64).reshape(-1).copy()
            if f.axis < len(shape) and shape[f.axis] > 0:
                shape[f.axis] = kept
                _set_private_constant(model, n, 1, shape, arrays, replaced)
        elif f.kind == "mean":  # Mul(ReduceSum(x), 1/C) -> 1/kept
            kept = len(plan.keep(f.slot))
            if kept == f.slot.size:
                continue
            k = 1 if constant_value(n.inputs[1]) is not None else 0
            old = np.asarray(constant_value(n.inputs[k]))
            _set_private_constant(model, n, k, np.full(old.shape, 1.0 / kept, old.dtype), arrays, replaced)
        elif f.kind == "split":
            sizes = [len(plan.keep(s)) for s in f.outs]
            if sizes == [s.size for s in f.outs]:
                continue
            if (model.opset("") or 0) >= 13:
                if "num_outputs" in n.attrs:
                    del n.attrs["num_outputs"]
                if len(n.inputs) > 1 and n.inputs[1] is not None:
                    _set_private_constant(model, n, 1, np.asarray(sizes, np.int64), arrays, replaced)
                else:
                    c = g.constant(np.asarray(sizes, np.int64), name="prune_split")
                    if len(n.inputs) < 2:
                        n.append_input(c)
                    else:
                        n.replace_input(1, c)
                    arrays[c] = np.asarray(sizes, np.int64)
            else:
                n.set_attr("split", sizes)
    if arrays:  # the group attributes are set first: re-inference reads them
        replace_constants(model, arrays)
    for v in replaced:
        if v.num_uses() == 0 and v.is_initializer() and not v.is_graph_output() and not v.is_graph_input():
            g.remove_initializer(v.name)
    return _record(plan)


def materialize(model: Model, v: Value) -> Value:
    """`v` itself if it is an initializer, else (the output of a Constant node) a new initializer
    that takes its place and name; the Constant node is removed."""
    if v.const is not None:
        return v
    g = model.graph
    p = v.producer()
    arr = np.asarray(constant_value(v))
    new = g.constant(arr, name=(v.name or "prune_const") + "_init")
    v.replace_all_uses_with(new)
    if p is not None and p.graph is g and not any(o.num_uses() or o.is_graph_output() for o in p.outputs):
        name = v.name
        g.remove(p)
        if name and name not in g.initializers:
            del g.initializers[new.name]
            new.name = name
            g.initializers[name] = new
    return new


def _set_private_constant(model: Model, n, i: int, arr: np.ndarray, arrays: dict, replaced: list) -> None:
    v = n.inputs[i]
    if v is not None and v.const is not None and v.num_uses() == 1 and not v.is_graph_output() \
            and not v.is_graph_input():
        arrays[v] = arr
        return
    c = model.graph.constant(arr, name=(v.name if v is not None and v.name else "prune_const"))
    n.replace_input(i, c)
    arrays[c] = arr
    if v is not None:
        replaced.append(v)


def _record(plan: Plan) -> dict:
    dg = plan.dg
    groups = []
    for grp in plan.groups:
        rows = []
        for s in grp:
            rem = plan.removed_indices(s)
            if rem and s.value.name:
                rows.append({"value": s.value.name, "axis": s.axis, "size": s.size, "removed": rem})
        if rows:
            groups.append({"slots": rows})
    layers = []
    for wu in dg.weights:
        ko, ki = plan.keep(wu.out_slot), plan.keep(wu.in_slot)
        if len(ko) == wu.out_slot.size and len(ki) == wu.in_slot.size:
            continue
        layers.append({"node": wu.node.name or "", "output": wu.node.outputs[0].name,
                       "kept_out": None if len(ko) == wu.out_slot.size else ko,
                       "pruned_in": len(ki) != wu.in_slot.size and not wu.depthwise,
                       "out_size": wu.out_slot.size})
    return {"version": 1, "removed_channels": plan.num_removed, "macs_before": plan.macs_before,
            "macs_after": plan.macs_after, "groups": groups, "layers": layers}


def _merge_records(old: dict | None, new: dict) -> dict:
    """A second prune composes with the first: kept output channels are relative to the original."""
    if not old:
        return new
    prev = {r["output"]: r for r in old.get("layers", [])}
    merged = []
    for r in new["layers"]:
        p = prev.pop(r["output"], None)
        if p is not None:
            if p["kept_out"] is not None:
                base = p["kept_out"]
                r["kept_out"] = base if r["kept_out"] is None else [base[i] for i in r["kept_out"]]
            r["out_size"] = p["out_size"]
            r["pruned_in"] = r["pruned_in"] or p["pruned_in"]
        merged.append(r)
    merged.extend(prev.values())
    new = dict(new)
    new["layers"] = merged
    new["groups"] = old.get("groups", []) + new["groups"]
    new["removed_channels"] += old.get("removed_channels", 0)
    new["macs_before"] = old.get("macs_before", new["macs_before"])
    return new


def read_record(model: Model) -> dict | None:
    """The prune record of `model` (None if it was never pruned)."""
    text = model.metadata_props.get(PRUNE_KEY)
    return json.loads(text) if text else None


# ------------------------------------------------------------------------------------------------
# Helpers for tests and benchmarks
# ------------------------------------------------------------------------------------------------
def mask_plan(model: Model, plan: Plan) -> None:
    """Zero, instead of removing, the planned channels where they are consumed: the input columns
    of every weight op reading them. `model` must be the model `plan` was made on. The masked
    model computes what the pruned one does (the property tests check it)."""
    from lepton_ir import replace_constants
    from lepton_ir.opsem import weight_info

    dg = plan.dg
    arrays = {}
    for wu in dg.weights:
        if wu.depthwise:
            continue
        info = weight_info(wu.node)
        in_axis = 1 if info.kind == "conv" else (0 if info.kind == "conv_transpose" else info.in_axis)
        sw = dg.slots.get((id(wu.weight), in_axis))
        if sw is None:
            continue
        rem = plan.removed_indices(sw)
        if not rem:
            continue
        w = materialize(model, wu.weight)
        a = np.array(arrays.get(w, constant_value(w)), copy=True)
        idx = [slice(None)] * a.ndim
        idx[in_axis] = rem
        a[tuple(idx)] = 0
        arrays[w] = a
    if arrays:
        replace_constants(model, arrays)


def analyse(model: Model, *, prune_layernorm: bool = True, log_fn=None) -> DepGraph:
    from lepton_ir import infer_types

    infer_types(model)
    return DepGraph(model, prune_layernorm=prune_layernorm, log=log_fn)


# ------------------------------------------------------------------------------------------------
@register_pass
@dataclass(frozen=True)
class Prune(Pass):
    """Structured channel pruning: physically removes the least important channels (see docs/pruning.md)."""

    name = "prune"
    idempotent = False

    ratio: float = field(default=0.3, metadata={"help": "share of each group's channels to remove (ignored "
                                                         "when macs < 1)"})
    macs: float = field(default=1.0, metadata={"help": "keep this share of the MACs of the prunable layers "
                                                        "(0 < macs < 1; bisects a uniform ratio)"})
    importance: Literal["l1", "l2", "activation", "random"] = field(
        default="l1", metadata={"help": "channel importance: weight norms (data-free), weight x activation "
                                        "norm on calib= data, or random (a baseline)"})
    calib: str = field(default="", metadata={"help": "calibration data for importance=activation (as quant8's "
                                                      "calib=); default random:8"})
    calib_samples: int = field(default=0, metadata={"help": "use at most this many samples (0: all)"})
    calib_batch: int = field(default=1, metadata={"help": "samples per calibration run (.npz data)"})
    multiple: int | None = field(default=None, metadata={
        "help": "round every group's kept channel count to a multiple of this; none: the float32 lanes "
                "of target= (8 without a target)"})
    target: Literal["", "native", "avx2", "avx512", "neon"] = field(
        default="", metadata={"help": "SIMD width for the rounding; native: detect AVX2/AVX-512 here"})
    latency: float = field(default=1.0, metadata={
        "help": "keep this share of the latency measured in ONNX Runtime on this host (0 < latency < 1; "
                "bisects a uniform ratio, every step timed; rounding defaults to the detected SIMD width)"})
    latency_threads: int = field(default=1, metadata={"help": "ORT intra-op threads while timing latency="})
    latency_reps: int = field(default=15, metadata={"help": "interleaved timing pairs per latency= step"})
    max_ratio: float = field(default=0.9, metadata={"help": "most of a group macs= / latency= may remove"})
    prune_layernorm: bool = field(default=True, metadata={
        "help": "prune through LayerNormalization over the channel axis (changes its statistics)"})
    seed: int = field(default=0, metadata={"help": "seed of importance=random"})
    debug: bool = field(default=False, metadata={"help": "print frozen groups and why on stderr"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        if not 0.0 < self.macs <= 1.0:
            raise ValueError(f"macs must be in (0, 1], got {self.macs}")
        if not 0.0 < self.latency <= 1.0:
            raise ValueError(f"latency must be in (0, 1], got {self.latency}")
        if self.latency < 1.0 and self.macs < 1.0:
            raise ValueError("give one of macs= and latency=, not both")
        if self.latency_threads < 1 or self.latency_reps < 1:
            raise ValueError("latency-threads and latency-reps must be >= 1")
        if self.multiple is not None and self.multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {self.multiple}")
        if not 0.0 < self.max_ratio < 1.0:
            raise ValueError("max-ratio must be in (0, 1)")

    @property
    def lanes(self) -> int:
        if self.multiple is not None:
            return self.multiple
        if not self.target and self.latency >= 1.0:
            return 8
        # a latency target is measured on this host, so its kernels' vector width is what counts:
        # detected, never assumed (ORT's NCHWc block is 8 on AVX2, 16 on AVX-512)
        t = detect_simd() if self.target in ("native", "") else self.target
        return SIMD_LANES.get(t, 8)

    def tolerance(self, model: Model) -> tuple[float, float]:
        rec = read_record(model)
        if rec and rec.get("removed_channels"):
            return (1e30, 1e30)  # lossy by design: outputs keep names, dtypes and shapes (finite: inf * 0 is nan)
        return (self.rtol, self.atol)

    def run(self, model: Model) -> bool:
        from ..util import infer_types_changed

        refined = infer_types_changed(model)
        if self.ratio == 0 and self.macs >= 1.0 and self.latency >= 1.0:
            return refined
        debug = self.debug or log.isEnabledFor(logging.DEBUG)
        emit = (lambda s: print(s, file=sys.stderr)) if self.debug else log.debug
        dg = DepGraph(model, prune_layernorm=self.prune_layernorm, log=emit if debug else None)
        if not dg.weights:
            return refined
        act = None
        if self.importance == "activation":
            from ..quant.calibration import load_samples

            feeds, total = load_samples(model, self.calib or "random:8", self.calib_batch, self.calib_samples)
            act = activation_norms(model, dg, feeds, total)
        scores = channel_scores(dg, self.importance, act_norms=act, seed=self.seed)
        table = None
        if self.latency < 1.0:
            plan, table = self._plan_for_latency(model, dg, scores)
        elif self.macs < 1.0:
            plan = plan_for_macs(dg, scores, self.macs, self.lanes, self.max_ratio)
        else:
            plan = make_plan(dg, scores, self.ratio, self.lanes)
        if debug:
            emit(f"prune: {plan.num_removed} channel classes removed, MACs {plan.macs_before:.4g} -> "
                 f"{plan.macs_after:.4g}")
        if not plan.removed:
            return refined
        if ORIGINAL_KEY not in model.graph.meta:
            import lepton_ir

            model.graph.meta[ORIGINAL_KEY] = lepton_ir.to_onnx(model)
        rec = apply_plan(model, plan)
        rec["importance"] = self.importance
        if table is not None:
            rec["latency_target"] = self.latency
            rec["lanes"] = self.lanes
            rec["latency_table"] = [p.as_dict() for p in table]
        rec = _merge_records(read_record(model), rec)
        model.metadata_props[PRUNE_KEY] = json.dumps(rec, separators=(",", ":"))
        model.verify()
        return True

    def _latency_feeds(self, model: Model) -> dict:
        """One input batch to time: the first calib= batch, else random data (symbolic dims 1)."""
        if self.calib:
            from ..quant.calibration import load_samples

            feeds, _ = load_samples(model, self.calib, self.calib_batch, self.calib_samples)
            for f in feeds:
                return dict(f)
        from lepton_ir.reference import random_inputs

        return random_inputs(model, dim_size=1)

    def _plan_for_latency(self, model: Model, dg: DepGraph, scores: dict) -> tuple[Plan, list]:
        import lepton_ir

        from .latency import plan_for_latency

        groups = slot_groups(dg)
        proto = lepton_ir.to_onnx(model)

        def plan_at(ratio: float):
            plan = make_plan(dg, scores, ratio, self.lanes, groups)
            if not plan.removed:
                return plan, None
            # prune a copy: the analysis of a fresh load numbers its classes as `dg` does
            # (same graph, same order), so the same scores pick the same channels
            copy = lepton_ir.load(proto)
            dg2 = DepGraph(copy, prune_layernorm=self.prune_layernorm)
            p2 = make_plan(dg2, scores, ratio, self.lanes)
            if p2.removed != plan.removed or abs(p2.macs_after - plan.macs_after) > 1e-6 * max(plan.macs_after, 1):
                raise PassError("prune: latency= could not reproduce its plan on a copy of the model")
            apply_plan(copy, p2)
            return plan, lepton_ir.to_onnx(copy)

        try:
            feeds = self._latency_feeds(model)
        except Exception as e:  # noqa: BLE001 - a model ORT cannot feed: say so in one line
            raise PassError(f"prune: latency= needs inputs to time the model: {e}") from None
        return plan_for_latency(model, plan_at, self.latency, self.max_ratio, feeds,
                                threads=self.latency_threads, reps=self.latency_reps)


__all__ = ["Prune", "Plan", "make_plan", "plan_for_macs", "apply_plan", "mask_plan", "analyse", "read_record",
           "slot_groups", "detect_simd", "PRUNE_KEY", "ORIGINAL_KEY"]
