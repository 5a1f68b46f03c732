"""`reconstruct`: training-free recovery after `prune` (docs/pruning.md).

For every layer whose input channels `prune` removed (or every refittable layer from the first
pruned one on, `layers=all`), in topological order:

* inputs X come from the *current* pruned network (earlier layers already refit), targets Y from
  the *original* network at the same layer (its output channels restricted to those kept), so
  errors do not pile up from layer to layer;
* ``refit=true`` (default): ridge least squares ``min ||[X 1] [W; b] - Y||^2 + lam ||W||^2`` with
  ``lam = ridge * mean(diag(X^T X))``; Conv layers (2-D, group 1) are unfolded (im2col) at a
  seeded sample of output positions, at most `max-rows` rows per layer;
* ``refit=false``: bias compensation only: ``b += mean(Y - X W)``, the mean contribution of the
  removed input channels folded into the layer's bias.

The original model is what `prune` kept in ``model.graph.meta["lepton.prune.original"]`` (same
pipeline), or `reference=` a path to it. Calibration data: `calib=` as quant8 reads it.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lepton_ir import Model, Node

from ..base import Pass, PassError, register_pass
from ..util import constant_value
from .prune import ORIGINAL_KEY, PRUNE_KEY, materialize, read_record

_REFIT_OPS = ("Conv", "Gemm", "MatMul")


def _conv_ok(n: Node, w: np.ndarray) -> bool:
    return (n.op_type == "Conv" and w.ndim == 4 and int(n.attr("group", 1) or 1) == 1
            and n.attr("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET", "VALID", b"VALID"))


def _refittable(n: Node) -> bool:
    if n.domain not in ("", "ai.onnx") or n.op_type not in _REFIT_OPS:
        return False
    w = constant_value(n.inputs[1]) if len(n.inputs) > 1 else None
    if w is None or np.asarray(w).dtype.kind != "f":
        return False
    w = np.asarray(w)
    if n.op_type == "Conv":
        return _conv_ok(n, w)
    if n.op_type == "Gemm":
        if float(n.attr("alpha", 1.0)) != 1.0 or float(n.attr("beta", 1.0)) != 1.0 or n.attr("transA", 0):
            return False
        c = n.inputs[2] if len(n.inputs) > 2 else None
        if c is not None and (constant_value(c) is None or np.asarray(constant_value(c)).size
                              != w.shape[0 if n.attr("transB", 0) else 1]):
            return False
        return w.ndim == 2
    return w.ndim == 2


class _Rows:
    """Seeded choice of rows (output positions) per (layer, sample), the same in both networks."""

    def __init__(self, per_sample: int) -> None:
        self.per_sample = per_sample

    def pick(self, layer: int, sample: int, total: int) -> np.ndarray:
        if total <= self.per_sample:
            return np.arange(total)
        rng = np.random.default_rng([layer, sample])
        return np.sort(rng.choice(total, self.per_sample, replace=False))


def _layer_io(n: Node, x: np.ndarray, y: np.ndarray | None, rows: _Rows, li: int, si: int
              ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(X rows [r, K] for the weight as a [K, N] matrix, Y rows [r, N]) of one batch."""
    xs, ys = [], []
    if n.op_type == "Conv":
        w = np.asarray(constant_value(n.inputs[1]))
        kh, kw = w.shape[2:]
        pads = list(n.attr("pads", [0, 0, 0, 0]) or [0, 0, 0, 0])
        sh, sw = list(n.attr("strides", [1, 1]) or [1, 1])
        dh, dw = list(n.attr("dilations", [1, 1]) or [1, 1])
        xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        ho = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
        wo = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
        for b in range(x.shape[0]):
            idx = rows.pick(li, si * 100003 + b, ho * wo)
            oh, ow = idx // wo, idx % wo
            hi = oh[:, None] * sh + (np.arange(kh) * dh)[None, :]
            wi = ow[:, None] * sw + (np.arange(kw) * dw)[None, :]
            p = xp[b][:, hi[:, :, None], wi[:, None, :]]  # [C, r, kh, kw]
            xs.append(p.transpose(1, 0, 2, 3).reshape(len(idx), -1))
            if y is not None:
                ys.append(y[b][:, oh, ow].T)
    else:
        x2 = x.reshape(-1, x.shape[-1]) if n.op_type == "MatMul" else x.reshape(x.shape[0], -1)
        idx = rows.pick(li, si, x2.shape[0])
        xs.append(x2[idx])
        if y is not None:
            ys.append(y.reshape(-1, y.shape[-1])[idx])
    return np.concatenate(xs).astype(np.float64), (np.concatenate(ys).astype(np.float64) if y is not None else None)


def _as_matrix(n: Node) -> tuple[np.ndarray, np.ndarray | None]:
    """The layer's weight as [K, N] and its bias [N] (None if it has none)."""
    w = np.asarray(constant_value(n.inputs[1]), dtype=np.float64)
    b = None
    if n.op_type == "Conv":
        m = w.reshape(w.shape[0], -1).T
        if len(n.inputs) > 2 and n.inputs[2] is not None:
            b = np.asarray(constant_value(n.inputs[2]), dtype=np.float64)
    elif n.op_type == "Gemm":
        m = w.T if n.attr("transB", 0) else w
        if len(n.inputs) > 2 and n.inputs[2] is not None:
            b = np.asarray(constant_value(n.inputs[2]), dtype=np.float64).reshape(-1)
    else:
        m = w
        b = _matmul_bias(n)[1]
    return m, b


def _matmul_bias(n: Node):
    """(Add node, bias) when MatMul's only user adds a constant vector to it."""
    out = n.outputs[0]
    users = out.users()
    if len(users) == 1 and users[0].op_type == "Add" and not out.is_graph_output():
        add = users[0]
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        c = constant_value(other)
        if c is not None and np.asarray(c).ndim == 1:
            return add, np.asarray(c, dtype=np.float64)
    return None, None


def _write(model: Model, n: Node, m: np.ndarray, b: np.ndarray, changes: dict) -> None:
    """Put a refit [K, N] weight and bias [N] back into the layer (adding a bias when missing)."""
    g = model.graph
    w_old = np.asarray(constant_value(n.inputs[1]))
    dt = w_old.dtype
    if n.op_type == "Conv":
        w_new = m.T.reshape(w_old.shape)
    elif n.op_type == "Gemm":
        w_new = m.T if n.attr("transB", 0) else m
    else:
        w_new = m
    _set(model, n, 1, w_new.astype(dt), changes)
    b = b.astype(dt)
    if n.op_type in ("Conv", "Gemm"):
        if len(n.inputs) > 2 and n.inputs[2] is not None:
            _set(model, n, 2, b.reshape(np.asarray(constant_value(n.inputs[2])).shape), changes)
        else:
            c = g.constant(b, name=(n.name or "layer") + "_bias")
            while len(n.inputs) < 2:
                n.append_input(None)
            if len(n.inputs) == 2:
                n.append_input(c)
            else:
                n.replace_input(2, c)
            changes[c] = b
    else:
        add, _ = _matmul_bias(n)
        if add is not None:
            k = 1 if add.inputs[0] is n.outputs[0] else 0
            _set(model, add, k, b, changes)
        elif np.any(b != 0):
            out = n.outputs[0]
            c = g.constant(b, name=(n.name or "matmul") + "_bias")
            add = Node("Add", [out, c])
            add.outputs[0].type = out.type
            g.insert_after(n, add)
            for user, i in out.uses():
                if user is not add:
                    user.replace_input(i, add.outputs[0])
            if out.is_graph_output():  # the Add takes over the output's name and place
                name, res = out.name, add.outputs[0]
                out.name = g.fresh_name((name or "matmul") + "_nobias")
                res.name = name
                for k, o in enumerate(g.outputs):
                    if o is out:
                        g.outputs[k] = res
                for key in ("declared_output_type", "output_doc"):
                    if key in out.meta:
                        res.meta[key] = out.meta.pop(key)
            changes[c] = b


def _set(model: Model, n: Node, i: int, arr: np.ndarray, changes: dict) -> None:
    v = n.inputs[i]
    if v.num_uses() > 1:  # shared constant: give this layer its own copy
        c = model.graph.constant(arr, name=(v.name or "w") + "_refit")
        n.replace_input(i, c)
        changes[c] = arr
        return
    changes[materialize(model, v)] = arr


@register_pass
@dataclass(frozen=True)
class Reconstruct(Pass):
    """Training-free recovery after prune: bias compensation and a layer-wise ridge refit (docs/pruning.md)."""

    name = "reconstruct"

    calib: str = field(default="", metadata={"help": "calibration data (as quant8's calib=); default random:8"})
    calib_samples: int = field(default=256, metadata={"help": "use at most this many samples (0: all)"})
    calib_batch: int = field(default=16, metadata={"help": "samples per run (.npz data)"})
    reference: str = field(default="", metadata={"help": "path of the unpruned model (default: what prune kept "
                                                          "in this pipeline)"})
    refit: bool = field(default=True, metadata={"help": "ridge least-squares refit of weights and bias; false: "
                                                         "bias compensation only"})
    ridge: float = field(default=1e-2, metadata={"help": "ridge strength, relative to mean diag(X^T X)"})
    max_rows: int = field(default=20000, metadata={"help": "rows (output positions) per layer"})
    min_rows: float = field(default=4.0, metadata={
        "help": "refit a layer only with at least this many rows per weight column (else bias compensation: "
                "a refit on too few samples overfits them)"})
    layers: Literal["pruned", "all"] = field(default="pruned", metadata={
        "help": "refit the layers whose inputs were pruned, or every refittable layer after the first"})
    progress: bool = field(default=False, metadata={"help": "one line per layer on stderr"})

    def tolerance(self, model: Model) -> tuple[float, float]:
        rec = read_record(model)
        if rec and rec.get("reconstructed"):
            return (1e30, 1e30)  # lossy by design (finite: inf * 0 is nan)
        return (self.rtol, self.atol)

    def _original(self, model: Model) -> Model:
        import lepton_ir

        proto = model.graph.meta.get(ORIGINAL_KEY)
        if self.reference:
            return lepton_ir.load(self.reference)
        if proto is None:
            raise PassError("reconstruct needs the unpruned model: run prune before it in the same pipeline "
                            "(prune,reconstruct) or give reference=PATH")
        return lepton_ir.load(proto)

    def run(self, model: Model) -> bool:
        from lepton_ir import replace_constants
        from lepton_ir.analysis import topological_order

        from ..quant.calibration import load_samples, ort_session_with_outputs

        rec = read_record(model)
        if not rec or rec.get("reconstructed") or not rec.get("layers"):
            return False
        original = self._original(model)
        if not self.calib:
            print("reconstruct: no calib= given, using random:8 synthetic samples; meaningless for accuracy",
                  file=sys.stderr)
        feeds_it, _ = load_samples(model, self.calib or "random:8", self.calib_batch, self.calib_samples)
        feeds = list(feeds_it)
        order = [n for n in topological_order(model.graph) if _refittable(n)]
        by_out = {r["output"]: r for r in rec["layers"]}
        if self.layers == "all":
            first = next((k for k, n in enumerate(order) if by_out.get(n.outputs[0].name, {}).get("pruned_in")), None)
            todo = order[first:] if first is not None else []
        else:
            todo = [n for n in order if by_out.get(n.outputs[0].name, {}).get("pruned_in")]
        orig_vals = {v.name: v for n in original.graph for v in n.outputs if v.name}
        todo = [n for n in todo if n.outputs[0].name in orig_vals]
        if not todo:
            return False
        n_rows = sum(next(iter(f.values())).shape[0] for f in feeds)
        rows = _Rows(max(1, self.max_rows // max(1, n_rows)))
        # targets: one pass over the original network
        targets: dict[str, list[np.ndarray]] = {n.outputs[0].name: [] for n in todo}
        sess = ort_session_with_outputs(original, [orig_vals[k] for k in targets])
        outs = [o.name for o in sess.get_outputs()]
        ins = {i.name for i in sess.get_inputs()}
        for si, f in enumerate(feeds):
            res = dict(zip(outs, sess.run(None, {k: v for k, v in f.items() if k in ins})))
            for li, n in enumerate(todo):
                name = n.outputs[0].name
                y = res[name]
                kept = by_out.get(name, {}).get("kept_out")
                if kept is not None:
                    y = np.take(y, kept, axis=1 if n.op_type == "Conv" or n.op_type == "Gemm" else -1)
                targets[name].append((si, y))
        changed = False
        for li, n in enumerate(todo):
            x_val = n.inputs[0]
            if x_val.is_graph_input():
                sess, outs, ins = None, [], set()
            else:
                sess = ort_session_with_outputs(model, [x_val])
                outs = [o.name for o in sess.get_outputs()]
                ins = {i.name for i in sess.get_inputs()}
            xtx = xty = None
            sum_res = None
            count = 0
            m, b = _as_matrix(n)
            bias0 = b if b is not None else np.zeros(m.shape[1])
            for (si, y), f in zip(targets[n.outputs[0].name], feeds):
                x = f[x_val.name] if sess is None else \
                    dict(zip(outs, sess.run(None, {k: v for k, v in f.items() if k in ins})))[x_val.name]
                X, Y = _layer_io(n, np.asarray(x), np.asarray(y), rows, li, si)
                if Y.shape[1] != m.shape[1] or X.shape[1] != m.shape[0]:
                    raise PassError(f"reconstruct: layer {n.outputs[0].name}: shapes do not match the prune record "
                                    f"(X {X.shape}, Y {Y.shape}, W {m.shape})")
                if self.refit:
                    Xa = np.concatenate([X, np.ones((X.shape[0], 1))], 1)
                    xtx = Xa.T @ Xa if xtx is None else xtx + Xa.T @ Xa
                    xty = Xa.T @ Y if xty is None else xty + Xa.T @ Y
                else:
                    r = (Y - X @ m - bias0).sum(0)
                    sum_res = r if sum_res is None else sum_res + r
                count += X.shape[0]
            if count == 0:
                continue
            refit = self.refit and count >= self.min_rows * m.shape[0]
            if self.refit and not refit:  # too few rows: the bias is all that can be fit reliably
                xa_mean = xtx[-1, :-1] / count
                y_mean = xty[-1] / count
                sum_res = (y_mean - xa_mean @ m - bias0) * count
            if refit:
                k = m.shape[0]
                lam = self.ridge * float(np.mean(np.diag(xtx)[:k])) + 1e-12
                reg = np.zeros_like(xtx)
                reg[np.arange(k), np.arange(k)] = lam
                sol = np.linalg.solve(xtx + reg, xty)
                m_new, b_new = sol[:k], sol[k]
            else:
                m_new, b_new = m, bias0 + sum_res / count
            changes: dict = {}
            _write(model, n, m_new, b_new, changes)
            if changes:
                replace_constants(model, changes)
                changed = True
            if self.progress:
                print(f"reconstruct: {n.outputs[0].name} ({n.op_type}, {count} rows, "
                      f"{'refit' if refit else 'bias'})", file=sys.stderr)
        rec["reconstructed"] = {"refit": self.refit, "layers": [n.outputs[0].name for n in todo]}
        model.metadata_props[PRUNE_KEY] = json.dumps(rec, separators=(",", ":"))
        # the original stays in graph.meta: a later pass (distill's teacher) reads it too
        model.verify()
        return True or changed


__all__ = ["Reconstruct"]
