"""Channel importance, aggregated over a whole dependency group.

Every constant weight slot of a weight op contributes one term per channel class:

* ``l1`` / ``l2``: the norm of the weight entries of that channel (the output row of a producer,
  the input column of a consumer), divided by the mean over that slot so layers of different
  scale weigh the same (Torch-Pruning's group normalisation);
* ``activation``: consumer columns weigh ``||W[:, j]|| * ||x_j||`` (Wanda) and producer rows
  ``||y_o||`` (the RMS of the output channel), both on calibration data;
* ``random``: a seeded random score (a baseline for benchmarks).

A class's importance is the sum of its terms over every layer it touches.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import numpy as np

from .deps import DepGraph, WeightUse


def _norms(w: np.ndarray, axis: int, p: int) -> np.ndarray:
    w = np.moveaxis(np.asarray(w, dtype=np.float64), axis, 0).reshape(w.shape[axis], -1)
    return np.abs(w).sum(1) if p == 1 else np.sqrt((w * w).sum(1))


def _add(scores: dict[int, float], dg: DepGraph, slot, vals: np.ndarray) -> None:
    m = float(np.mean(vals)) if vals.size else 0.0
    if not np.isfinite(m) or m <= 0:
        return
    for e, v in zip(slot.ids.tolist(), (vals / m).tolist()):
        scores[dg.root(e)] += v


def channel_scores(dg: DepGraph, method: str, *, act_norms: Mapping[str, np.ndarray] | None = None,
                   seed: int = 0) -> dict[int, float]:
    """Importance per class root."""
    scores: dict[int, float] = defaultdict(float)
    if method == "random":
        rng = np.random.default_rng(seed)
        roots = sorted({dg.root(int(e)) for s in dg.slots.values() for e in s.ids})
        return dict(zip(roots, rng.random(len(roots)).tolist()))
    p = 1 if method == "l1" else 2
    for wu in dg.weights:
        _weight_terms(scores, dg, wu, p, act_norms if method == "activation" else None)
    return scores


def _weight_terms(scores, dg: DepGraph, wu: WeightUse, p: int, act: Mapping[str, np.ndarray] | None) -> None:
    from lepton_ir.opsem import weight_info

    info = weight_info(wu.node)
    from ..util import constant_value

    w = constant_value(wu.weight)
    if info.kind == "conv":
        out_axis, in_axis = 0, 1
    elif info.kind == "conv_transpose":
        out_axis, in_axis = 1, 0
    else:
        out_axis, in_axis = info.out_axis, info.in_axis
    s_out = dg.slots.get((id(wu.weight), out_axis))
    s_in = dg.slots.get((id(wu.weight), in_axis))
    if s_out is not None:
        y = act.get(wu.node.outputs[0].name) if act is not None else None
        vals = y if y is not None and y.shape == (s_out.size,) else _norms(w, out_axis, p)
        _add(scores, dg, s_out, vals)
    if s_in is not None and s_in.size > 1:
        vals = _norms(w, in_axis, p)
        x = act.get(wu.node.inputs[info.data].name) if act is not None else None
        if x is not None and x.shape == vals.shape:
            vals = vals * x
        _add(scores, dg, s_in, vals)


def activation_norms(model, dg: DepGraph, feeds, total, progress: bool = False) -> dict[str, np.ndarray]:
    """Per-channel RMS of each weight op's data input and output over calibration data."""
    from ..quant.calibration import Progress, ort_session_with_outputs
    from lepton_ir.opsem import weight_info

    wanted: dict[str, tuple] = {}
    for wu in dg.weights:
        info = weight_info(wu.node)
        x, y = wu.node.inputs[info.data], wu.node.outputs[0]
        wanted[x.name] = (x, info.data_axis)
        wanted[y.name] = (y, info.act_axis)
    values = [v for v, _ in wanted.values()]
    sess = ort_session_with_outputs(model, values)
    out_names = [o.name for o in sess.get_outputs()]
    in_names = {i.name for i in sess.get_inputs()}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = defaultdict(int)
    bar = Progress(total, "prune: activations", enabled=progress)
    try:
        for feed in feeds:
            res = dict(zip(out_names, sess.run(None, {k: v for k, v in feed.items() if k in in_names})))
            for name, (v, axis) in wanted.items():
                r = res.get(name)
                if r is None or np.asarray(r).dtype.kind != "f":
                    continue
                r = np.moveaxis(np.asarray(r, dtype=np.float64), axis % r.ndim, 0).reshape(r.shape[axis], -1)
                sums[name] = sums.get(name, 0.0) + (r * r).sum(1)
                counts[name] += r.shape[1]
            bar.update()
    finally:
        bar.close()
    return {k: np.sqrt(v / max(counts[k], 1)) for k, v in sums.items()}
