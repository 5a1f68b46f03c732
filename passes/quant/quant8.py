"""`quant8`: static int8 post-training quantization in QDQ form, calibrated on data.

What gets quantized (see docs/quantization.md):
* compute ops - Conv, ConvTranspose, Gemm, MatMul - always (unless excluded): their activation inputs
  get a QuantizeLinear/DequantizeLinear pair, constant weights become int8 (symmetric, per output
  channel) behind a DequantizeLinear, constant biases become int32 with scale s_in * s_w, and their
  output gets a Q/DQ pair (an integer kernel needs a quantized output to write);
* cheap ops - Add/Mul joins, pooling, Concat, Resize, Sigmoid, HardSwish - only when every data
  input is already the output of a quantized op: then they run on int8 with no extra requantization,
  while wrapping an isolated cheap op would add two conversions to save nothing;
* a Relu (or Clip(0, x)) that is the single user of a quantized op's output is folded into that
  output's quantizer when activations are u8: with the range [0, hi] the zero point is 0, so
  QuantizeLinear's saturation *is* the ReLU (what ONNX Runtime's QDQ fusions expect).

Activation tensors produced by a quantized op are read through their DequantizeLinear by *all*
users (an integer kernel's output must feed only its quantizer); other quantized tensors (graph
inputs, outputs of float ops) are read quantized only by the quantized ops, float users keep the
exact value.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lepton_ir import DType, Model, Node, TensorType, Value
from lepton_ir.opsem import weight_info

from ..base import Pass, PassError, register_pass
from ..util import constant_value, is_constant
from . import qmath
from .calibration import collect_stats, load_samples
from .tolerance import qdq_tolerance

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CHEAP_OPS = ("Add", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Concat", "Resize",
             "Sigmoid", "HardSwish")
#: Ops whose semantics changed between opsets 11/12 and 13 (the first opset with per-axis
#: DequantizeLinear); a model using them is not silently re-versioned.
_OPSET13_CHANGED = ("Squeeze", "Unsqueeze", "ReduceSum", "Split", "Softmax", "LogSoftmax", "Hardmax")


def _data_inputs(node: Node) -> list[int]:
    """Indices of the activation inputs a quantized `node` reads quantized."""
    op = node.op_type
    if op in ("Add", "Mul"):
        return [0, 1]
    if op == "Concat":
        return list(range(len(node.inputs)))
    if op in ("MatMul", "Gemm"):
        return [0] if is_constant(node.inputs[1]) else [0, 1]
    return [0]


def _is_float(v: Value | None) -> bool:
    return v is not None and v.dtype == DType.FLOAT


@dataclass
class _Entry:
    """One activation tensor to quantize."""

    target: Value  # the tensor the QuantizeLinear reads
    stats: Value  # the tensor whose calibrated range sets the parameters (differs for folded ReLUs)
    all_users: bool  # every user reads the DequantizeLinear (target is a quantized op's output)
    fused_act: Node | None = None  # a ReLU/Clip folded into the quantizer (removed)
    ref: str = ""  # name of the float tensor this quantizer approximates (for the report)
    qparams: qmath.QParams | None = None
    dq: Value | None = None
    clip: float = 0.0  # how far calibration data went beyond the chosen range (entropy/percentile clip)


@register_pass
@dataclass(frozen=True)
class Quant8(Pass):
    """Static int8 post-training quantization (QDQ form) calibrated on data (see docs/quantization.md)."""

    name = "quant8"

    calib: str = field(default="", metadata={"help": "calibration data: .npz (one array per input, first axis = "
                                                      "samples), a folder of .npz/.npy samples, or random:N "
                                                      "(smoke tests only; default random:8)"})
    calibration: Literal["minmax", "percentile", "entropy", "mse"] = field(
        default="entropy", metadata={"help": "activation range method"})
    percentile: float = field(default=99.999, metadata={"help": "percentile of |x| kept by calibration=percentile"})
    per_channel: bool = field(default=True, metadata={"help": "per-output-channel weight scales"})
    activations: Literal["auto", "u8", "s8"] = field(
        default="auto", metadata={"help": "activation type; auto: u8 asymmetric on x86 (u8 x s8 dot products), "
                                          "s8 symmetric on arm (s8 x s8 dotprod)"})
    target: Literal["x86", "x86-vnni", "arm"] = field(
        default="x86", metadata={"help": "instruction set the int8 kernels run on: picks activation type and "
                                         "weight range when those are auto"})
    exclude_ops: tuple[str, ...] = field(default=(), metadata={"help": "op types left in float"})
    exclude_nodes: tuple[str, ...] = field(default=(), metadata={"help": "node names left in float"})
    calib_batch: int = field(default=1, metadata={"help": "samples per calibration run (.npz data)"})
    calib_samples: int = field(default=0, metadata={"help": "use at most this many samples (0: all)"})
    reduce_range: bool | None = field(default=None, metadata={
        "help": "7-bit weights; none: on for target=x86 (AVX2 u8 x s8 kernels add pairs of products in int16 "
                "and saturate with full 8-bit weights), off for x86-vnni and arm"})
    min_sqnr: float = field(default=20.0, metadata={
        "help": "leave in float the ops around any activation whose expected quantization SQNR (dB, from its "
                "calibration histogram) is below this (outlier channels that int8 clips or drowns); 0: off"})
    fold_batchnorm: bool = field(default=True, metadata={"help": "fold BatchNormalization into the Conv before it "
                                                                   "first (quantize the folded weights, one op less)"})
    progress: bool = field(default=True, metadata={"help": "progress bar on stderr during calibration"})

    #: k in atol = k * sqrt(n) * s_out (see tolerance.py and docs/quantization.md).
    tolerance_k: float = field(default=4.0, metadata={"help": "k of the derived tolerance"})

    @property
    def weight_qmax(self) -> int:
        reduce = self.reduce_range if self.reduce_range is not None else self.target == "x86"
        return 63 if reduce else 127

    @property
    def signed_activations(self) -> bool:
        if self.activations == "auto":
            return self.target == "arm"
        return self.activations == "s8"

    # -------------------------------------------------------------------------------------------
    def tolerance(self, model: Model) -> tuple[float, float]:
        return qdq_tolerance(model, self.tolerance_k)

    def run(self, model: Model) -> bool:
        from ..util import infer_types_changed, unfuse

        unfused = unfuse(model)  # after `fuse`: quantize standard ops (see util.unfuse)
        g = model.graph
        refined = infer_types_changed(model)  # refined types are a change too (the PassManager checks)
        folded = _fold_batchnorms(model) if self.fold_batchnorm else 0
        entries, qnodes = self._plan(model)
        if not qnodes:
            return folded > 0 or unfused or refined
        self._ensure_opset(model)
        # -- calibration ----------------------------------------------------------------------
        calib = self.calib or "random:8"
        if not self.calib:
            print("quant8: no calib= given, calibrating on random:8 synthetic samples; fine for smoke "
                  "tests, meaningless for accuracy", file=sys.stderr)
        feeds, total = load_samples(model, calib, self.calib_batch, self.calib_samples)
        stat_values = list({id(e.stats): e.stats for e in entries.values()}.values())
        stats = collect_stats(model, stat_values, feeds, total,
                              keep_hist=self.calibration != "minmax" or self.min_sqnr > 0,
                              progress=self.progress)
        signed = self.signed_activations
        extra: set[int] = set()
        for _ in range(8):
            bad = self._assign_qparams(entries, stats, signed)
            if not bad:
                break
            # Mixed precision: an activation that int8 cannot represent well (outlier channels,
            # clipped or drowning the rest) is left in float with the ops that read or write it.
            for e in bad:
                extra.update(id(u) for u in e.target.users() if id(u) in qnodes)
                prod = e.target.producer()
                if prod is not None and id(prod) in qnodes:
                    extra.add(id(prod))
            entries, qnodes = self._plan(model, extra)
        else:
            self._assign_qparams(entries, stats, signed)  # the last plan's parameters, whatever their SQNR
        if not qnodes:
            return folded > 0 or unfused or refined
        # -- rewrite --------------------------------------------------------------------------
        for e in {id(e): e for e in entries.values()}.values():
            self._insert_qdq(model, e, qnodes)
        for n in list(g):
            if id(n) in qnodes and n.op_type in COMPUTE_OPS:
                self._quantize_weights(model, n, entries)
        # Float weights replaced by int8 ones (initializers or Constant nodes) are now dead.
        from ..canonicalize.dce import _dce_graph

        _dce_graph(g)
        model.metadata_props["lepton.quant8"] = (f"calibration={self.calibration};activations="
                                                 f"{'s8' if signed else 'u8'};per_channel={self.per_channel}")
        return True

    # -------------------------------------------------------------------------------------------
    def _assign_qparams(self, entries: dict[int, _Entry], stats, signed: bool) -> list[_Entry]:
        """Set each entry's parameters; return those below `min_sqnr`."""
        bad = []
        for e in {id(x): x for x in entries.values()}.values():
            st = stats[e.stats.name]
            lo, hi = st.range(self.calibration, self.percentile, signed)
            if e.fused_act is not None:
                lo = max(lo, 0.0)  # the folded ReLU's output is never negative
            e.qparams = qmath.activation_qparams(lo, hi, signed)
            # entropy/percentile/mse clip outliers on purpose: the tolerance must know by how much
            # (tolerance.py reads it from the scale constant, CLIP_META)
            st_lo = max(st.min, 0.0) if e.fused_act is not None else st.min
            e.clip = float(max(st.max - hi, lo - st_lo, 0.0)) if st.count else 0.0
            if self.min_sqnr > 0:
                sq = st.expected_sqnr(lo, hi, e.qparams.max_scale)
                if sq < self.min_sqnr:
                    bad.append(e)
        return bad

    def _excluded(self, n: Node) -> bool:
        return n.op_type in self.exclude_ops or (n.name is not None and n.name in self.exclude_nodes)

    def _plan(self, model: Model, extra_excluded: set[int] = frozenset()) -> tuple[dict[int, _Entry], set[int]]:
        """Decide which nodes run quantized and which tensors get Q/DQ (in graph order)."""
        g = model.graph
        entries: dict[int, _Entry] = {}
        qnodes: set[int] = set()
        quantized_out: set[int] = set()  # tensors produced by quantized ops (or folded ReLUs)
        signed = self.signed_activations
        for n in g:
            if self._excluded(n) or n.domain not in ("", "ai.onnx") or id(n) in extra_excluded:
                continue
            op = n.op_type
            idx = _data_inputs(n) if op in COMPUTE_OPS + CHEAP_OPS else []
            if not idx or any(i >= len(n.inputs) or not _is_float(n.inputs[i]) for i in idx):
                continue
            if len(n.outputs) != 1 or not _is_float(n.outputs[0]):
                continue
            if any(v is not None and v.producer() is not None and v.producer().op_type == "DequantizeLinear"
                   for v in n.inputs):
                continue  # already quantized (a second run changes nothing)
            if op in COMPUTE_OPS:
                if op in ("Conv", "ConvTranspose") and constant_value(n.inputs[1]) is None:
                    continue
                if op == "Gemm" and (n.attr("transA", 0) or len(n.inputs) > 2 and n.inputs[2] is not None
                                     and not is_constant(n.inputs[2])):
                    continue
            elif any(is_constant(n.inputs[i]) or id(n.inputs[i]) not in quantized_out for i in idx):
                continue  # an isolated cheap op: quantizing it would only add conversions
            qnodes.add(id(n))
            for i in idx:
                v = n.inputs[i]
                if id(v) not in entries:
                    entries[id(v)] = _Entry(v, v, all_users=False, ref=v.name or "")
            out = n.outputs[0]
            act = self._foldable_activation(out) if not signed else None
            if act is not None:
                e = _Entry(out, act.outputs[0], True, act, ref=act.outputs[0].name or "")
                # Users of the ReLU's output read this same quantizer once the ReLU is folded.
                entries[id(out)] = entries[id(act.outputs[0])] = e
                quantized_out.add(id(act.outputs[0]))
            else:
                entries[id(out)] = _Entry(out, out, True, ref=out.name or "")
            quantized_out.add(id(out))
        # An excluded/float consumer of a tensor quantized as `all_users` still reads the DQ output,
        # which is the quantized op's (rounded) result: correct, and what integer kernels need.
        return entries, qnodes

    def _foldable_activation(self, out: Value) -> Node | None:
        if out.num_uses() != 1 or out.is_graph_output():
            return None
        user = out.users()[0]
        if self._excluded(user) or user.domain not in ("", "ai.onnx"):
            return None
        if user.op_type == "Relu":
            return user
        if user.op_type == "Clip":
            lo = user.attr("min") if len(user.inputs) < 2 or user.inputs[1] is None else constant_value(user.inputs[1])
            if lo is None and len(user.inputs) >= 2 and user.inputs[1] is not None:
                return None
            if lo is not None and float(np.asarray(lo)) == 0.0:
                return user
        return None

    def _ensure_opset(self, model: Model) -> None:
        ver = model.opset("") or 13
        if ver >= 13:
            return
        g = model.graph
        for n in list(g):
            if n.op_type in ("Softmax", "LogSoftmax", "Hardmax") and n.domain == "" and not _softmax_same_in_13(n):
                _rewrite_softmax_for_13(g, n)
        bad = sorted({n.op_type for n in model.graph.all_nodes() if n.op_type in _OPSET13_CHANGED and n.domain == ""
                      and n.op_type not in ("Softmax", "LogSoftmax", "Hardmax")})
        if bad:
            raise PassError(f"quant8 needs opset >= 13 (per-axis DequantizeLinear); the model is opset {ver} and "
                            f"uses {', '.join(bad)}, whose meaning changed in opset 13: convert it first "
                            f"(onnx.version_converter.convert_version(model, 13))")
        # Every op used means the same in opset 13, so re-versioning is exact.
        model.opset_imports[""] = 13

    # -------------------------------------------------------------------------------------------
    def _insert_qdq(self, model: Model, e: _Entry, qnodes: set[int]) -> None:
        g = model.graph
        p = e.qparams
        assert p is not None
        target = e.target
        base = (e.ref or target.name or "t").replace("/", "_")
        if e.fused_act is not None:
            act_out = e.fused_act.outputs[0]
            was_output = act_out.is_graph_output()
            out_name = act_out.name
            for user, i in act_out.uses():
                user.replace_input(i, target)
            if was_output:
                g.outputs[:] = [target if o is act_out else o for o in g.outputs]
            g.remove(e.fused_act)
            act_out.name = None
            if was_output:  # keep the interface name on what now stands for the ReLU's output
                target.name, out_name = out_name, target.name
        uses = target.uses()
        scale = g.constant(p.scale, name=f"{base}_scale")
        if e.clip > 0:
            from .tolerance import CLIP_META

            scale.meta[CLIP_META] = e.clip
        zp = g.constant(p.zero_point, name=f"{base}_zero_point")
        qname = g.fresh_name(f"{base}_quantized")
        q = Node("QuantizeLinear", [target, scale, zp], name=f"{qname}_QuantizeLinear")
        q.outputs[0].name = qname
        q.outputs[0].type = TensorType(DType.from_numpy(p.dtype), target.shape)
        q.metadata_props["lepton.quant.ref"] = e.ref
        dq = Node("DequantizeLinear", [q.outputs[0], scale, zp], name=f"{qname}_DequantizeLinear")
        dq.outputs[0].name = g.fresh_name(f"{base}_dequantized")
        dq.outputs[0].type = target.type
        prod = target.producer()
        if prod is not None and prod.graph is g:
            g.insert_after(prod, [q, dq])
        else:
            first = g.first()
            if first is None:
                g.append(q)
                g.append(dq)
            else:
                g.insert_before(first, [q, dq])
        for user, i in uses:
            if e.all_users or id(user) in qnodes:
                user.replace_input(i, dq.outputs[0])
        if e.all_users and target.is_graph_output():
            name = target.name
            g.outputs[:] = [dq.outputs[0] if o is target else o for o in g.outputs]
            target.name = g.fresh_name(f"{base}_float")
            dq.outputs[0].name = name
        e.dq = dq.outputs[0]

    def _quantize_weights(self, model: Model, n: Node, entries: dict[int, _Entry]) -> None:
        """int8 weights (per channel) and int32 bias for a quantized compute node."""
        g = model.graph
        op = n.op_type
        w_val = n.inputs[1]
        w = constant_value(w_val)
        if w is None or w.dtype != np.float32:
            return  # activation x activation MatMul: both inputs already have Q/DQ
        info = weight_info(n)
        axis: int | None = info.out_axis % w.ndim if info is not None and w.ndim >= 2 else None
        # One scale per weight slice along axis: exactly per output channel only where that axis
        # holds all output channels (not grouped ConvTranspose: Cout/group there), and batched
        # MatMul weights would need one scale per (batch, column).
        if info is None or (info.kind == "conv_transpose" and info.group != 1) \
                or (info.kind == "matmul" and w.ndim != 2):
            axis = None
        if not self.per_channel or w.ndim < 2:
            axis = None
        qmax = self.weight_qmax
        qw, wp = qmath.quantize_weight(w, axis, qmax)
        base = (w_val.name or f"{op}_w").replace("/", "_")
        self._replace_with_dq(g, n, 1, qw, wp, base)
        # Bias: int32, scale = s_in * s_w, so the integer kernel adds it to its int32 accumulator.
        if op in ("Conv", "ConvTranspose", "Gemm") and len(n.inputs) > 2 and n.inputs[2] is not None:
            b = constant_value(n.inputs[2])
            s_in = self._input_scale(n, entries)
            nout = w.shape[axis] if axis is not None else (w.shape[0] if op == "Conv" else None)
            if b is None or s_in is None or b.dtype != np.float32 or b.ndim != 1:
                return
            if op == "Gemm" and (n.attr("alpha", 1.0) != 1.0 or n.attr("beta", 1.0) != 1.0):
                return
            if nout is not None and b.shape[0] != nout and axis is not None:
                return
            qb, bp = qmath.quantize_bias(b, s_in, wp.scale)
            self._replace_with_dq(g, n, 2, qb, bp, (n.inputs[2].name or f"{op}_b").replace("/", "_"))

    @staticmethod
    def _input_scale(n: Node, entries: dict[int, _Entry]) -> float | None:
        dq = n.inputs[0].producer() if n.inputs[0] is not None else None
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        s = constant_value(dq.inputs[1])
        return float(np.asarray(s).reshape(-1)[0]) if s is not None and np.size(s) == 1 else None

    @staticmethod
    def _replace_with_dq(g, n: Node, i: int, q: np.ndarray, p: qmath.QParams, base: str) -> None:
        qv = g.constant(q, name=f"{base}_quantized")
        sv = g.constant(p.scale, name=f"{base}_scale")
        zv = g.constant(p.zero_point, name=f"{base}_zero_point")
        attrs = {"axis": p.axis} if p.axis is not None and p.scale.ndim == 1 else {}
        dq = Node("DequantizeLinear", [qv, sv, zv], attrs, name=f"{qv.name}_DequantizeLinear")
        dq.outputs[0].name = g.fresh_name(f"{base}_dequantized")
        dq.outputs[0].type = TensorType(DType.FLOAT, qv.type.shape)
        g.insert_before(n, dq)
        old = n.inputs[i]
        n.replace_input(i, dq.outputs[0])
        if old is not None and old.name in g.initializers and not old.num_uses() and not old.is_graph_output() \
                and old not in g.inputs:
            g.remove_initializer(old.name)


def _softmax_same_in_13(n: Node) -> bool:
    """Softmax-family before 13 flattens to 2-D at `axis` (default 1); same as 13 iff axis is last."""
    if n.op_type not in ("Softmax", "LogSoftmax", "Hardmax"):
        return False
    shape = n.inputs[0].shape if n.inputs[0] is not None else None
    if shape is None:
        return False
    axis = n.attr("axis", 1)
    return axis % shape.rank == shape.rank - 1


def _rewrite_softmax_for_13(g, n: Node) -> None:
    """Spell an opset < 13 Softmax(axis=a) (which flattens to 2-D at a) so it means the same in 13:
    Reshape(Softmax(Flatten(x, a), axis=1), Shape(x)) is exact whatever the rank."""
    x = n.inputs[0]
    with g.inserting_before(n):
        flat = g.op("Flatten", x, axis=int(n.attr("axis", 1)))
        sm = g.op(n.op_type, flat, axis=1)
        shp = g.op("Shape", x)
        out = g.op("Reshape", sm, shp)
    out.type = n.outputs[0].type
    from ..util import replace_value

    replace_value(n.outputs[0], out)
    g.remove(n)


def _fold_batchnorms(model: Model) -> int:
    """Conv -> BatchNormalization (inference, constant statistics, Conv output read by the BN
    only) becomes one Conv with W' = W * k, b' = (b - mean) * k + beta, k = gamma / sqrt(var + eps).
    Done before calibration so that the int8 grid is fitted to the folded weights: quantizing the
    Conv and leaving the BN in float would both cost a kernel and scale the rounding error by k."""
    g = model.graph
    folded = 0
    for bn in list(g):
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len(bn.outputs) != 1:
            continue
        x = bn.inputs[0]
        conv = x.producer() if x is not None else None
        if conv is None or conv.op_type != "Conv" or x.num_uses() != 1 or x.is_graph_output():
            continue
        w = constant_value(conv.inputs[1])
        stats = [constant_value(v) for v in bn.inputs[1:5]]
        if w is None or any(s is None for s in stats) or w.dtype != np.float32:
            continue
        b = constant_value(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else \
            np.zeros(w.shape[0], np.float32)
        if b is None:
            continue
        gamma, beta, mean, var = (np.asarray(s, np.float64) for s in stats)
        k = gamma / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
        w2 = (w.astype(np.float64) * k.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        b2 = ((b.astype(np.float64) - mean) * k + beta).astype(np.float32)
        base = (conv.inputs[1].name or "W").replace("/", "_")
        conv.replace_input(1, g.constant(w2, name=f"{base}_bnfolded"))
        if len(conv.inputs) > 2:
            conv.replace_input(2, g.constant(b2, name=f"{base}_bnfolded_bias"))
        else:
            conv.append_input(g.constant(b2, name=f"{base}_bnfolded_bias"))
        from ..util import replace_value

        out = bn.outputs[0]
        name = out.name
        replace_value(out, x)
        g.remove(bn)
        # The folded Conv computes what the BN did: it takes the BN output's name (the report
        # compares tensors by name with the float model).
        if x.name != name and name:
            out.name, x.name = None, name
        folded += 1
    return folded
