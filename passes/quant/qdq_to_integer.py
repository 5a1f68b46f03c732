"""`qdq-to-integer`: lower quant8's QDQ compute groups to integer ops with int32 accumulation.

    DQ(x_q; s_x, z_x) ─┐
    DQ(w_q; s_w[c], 0) ─ Conv / MatMul / Gemm (+ DQ(b_q; s_x*s_w[c], 0)) [-> QuantizeLinear]
==>
    ConvInteger / MatMulInteger(x_q, w_q, z_x) (int32) [+ b_q] -> Cast(float)
        -> Mul(s_x * s_w[c]) [-> Add(b float)] [-> QuantizeLinear, unchanged]

The math. DequantizeLinear computes s * (q - z), so with per-tensor activation parameters and
per-output-channel weight scales (weight zero point 0, as quant8 writes them)

    y[c] = sum_k s_x (x_q[k] - z_x) * s_w[c] w_q[c, k] + b[c]
         = s_x s_w[c] * sum_k (x_q[k] - z_x) w_q[c, k]  +  b[c],

and the sum is exactly what ConvInteger / MatMulInteger return (int32, products of 8-bit values
centred on their zero points). quant8's bias is int32 with scale s_x * s_w[c] and zero point 0,
so it is added to the int32 accumulator before the single Cast; a bias with any other scale (or a
float bias) is added after the Mul. The Q/DQ-float graph and this one differ only by float rounding
in the accumulation (the float Conv sums rounded products; here the sum is exact and rounded once),
so the following QuantizeLinear can land one output step apart where a value sits on a rounding
boundary: the tolerance is the quant8 bound with k = 2, as for `qdq-to-qoperator`.

Padding: a float Conv pads DQ(x_q) with 0.0 = DQ(z_x); ONNX ConvInteger pads x_q with z_x (its
centred input with 0), the same value (checked against ONNX Runtime in tests/quant).

Handled: Conv (any rank, group, strides, dilations, pads or auto_pad), MatMul with a constant
per-column or per-tensor weight or with two per-tensor quantized activations (attention scores),
and Gemm with transA = 0, alpha = beta = 1 and a constant weight (transB folded into the stored
weight, since MatMulInteger has no transpose). Each DequantizeLinear must be per-tensor for
activations, and weights need zero point 0 when per-channel (ConvInteger / MatMulInteger would
otherwise need the zero point per channel, which not every runtime implements). A group that does
not fit is left alone.

Why: backends whose importers turn QDQ back into float compute between dequantize/quantize (TVM's
ONNX frontend) get explicit integer ops they can lower to int8 x int8 -> int32 kernels; ONNX Runtime
runs the result with its ConvInteger / MatMulInteger kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lepton_ir import DType, Model, Node, TensorType, Value, infer_types
from lepton_ir.opsem import weight_info

from ..base import Pass, register_pass
from ..util import constant_value, infer_types_changed, replace_value
from .tolerance import qdq_tolerance

_INT8 = (np.int8, np.uint8)


@dataclass
class _Dq:
    """A DequantizeLinear's operands, with constant parameters read out."""

    node: Node
    q: Value
    scale: np.ndarray
    zp_value: Value | None
    zp: np.ndarray
    axis: int | None


def _dq(v: Value | None) -> _Dq | None:
    """The DequantizeLinear producing `v`, when its scale and zero point are constants."""
    p = v.producer() if v is not None else None
    if p is None or p.op_type != "DequantizeLinear" or p.domain not in ("", "ai.onnx") or p.attr("block_size", 0):
        return None  # (blocked quantization, opset 21, has no integer-op form)
    scale = constant_value(p.inputs[1])
    zv = p.inputs[2] if len(p.inputs) > 2 else None
    zp = constant_value(zv) if zv is not None else np.zeros((), np.uint8)
    if scale is None or zp is None or scale.dtype != np.float32:
        return None
    axis = p.attr("axis", 1) if np.ndim(scale) == 1 else None
    return _Dq(p, p.inputs[0], np.asarray(scale), zv, np.asarray(zp), axis)


def _per_tensor_8bit(d: _Dq | None) -> bool:
    """An 8-bit tensor with one scale and one zero point."""
    return d is not None and d.q.dtype in (DType.INT8, DType.UINT8) and np.size(d.scale) == 1 \
        and np.size(d.zp) == 1


def _scalar(a: np.ndarray, dtype) -> np.ndarray:
    return np.asarray(a, dtype).reshape(())


@register_pass
@dataclass(frozen=True)
class QdqToInteger(Pass):
    """Turn DQ -> Conv/MatMul/Gemm groups into ConvInteger/MatMulInteger + float rescale."""

    name = "qdq-to-integer"
    idempotent = True

    def tolerance(self, model: Model) -> tuple[float, float]:
        """Exact integer sums rounded once vs. float sums of rounded products: at most one output
        step per requantized op where a value sits on a rounding boundary (see module doc)."""
        return qdq_tolerance(model, 2.0)

    def run(self, model: Model) -> bool:
        g = model.graph
        # Refined types change the model even when no op is rewritten: say so.
        refined = infer_types_changed(model)
        touched: list[Node] = []
        for n in list(g):
            if n.domain not in ("", "ai.onnx") or n.graph is not g or len(n.outputs) != 1:
                continue
            if n.op_type == "Conv":
                ok = self._conv(g, n)
            elif n.op_type in ("MatMul", "Gemm"):
                ok = self._matmul(g, n)
            else:
                continue
            if ok:
                touched.append(n)
        if not touched:
            return refined
        # The DequantizeLinear nodes of weights and biases (and of activations read by nothing
        # else) are dead now, with their constants.
        for node in list(g):
            dead = not any(o.num_uses() or o.is_graph_output() for o in node.outputs)
            if node.op_type == "DequantizeLinear" and dead:
                g.remove(node)
        for name, v in list(g.initializers.items()):
            if not v.num_uses() and not v.is_graph_output() and v not in g.inputs:
                g.remove_initializer(name)
        infer_types(model)
        return True

    # -------------------------------------------------------------------------------------------
    def _conv(self, g, n: Node) -> bool:
        dx, dw = _dq(n.inputs[0]), _dq(n.inputs[1])
        if not _per_tensor_8bit(dx) or dw is None:
            return False
        wq = constant_value(dw.q)
        if wq is None or wq.dtype.type not in _INT8 or wq.ndim < 3:
            return False
        info = weight_info(n)
        cout = info.out_channels(wq.shape)
        w_scale = self._weight_scale(dw, axis=info.out_axis, nout=cout)
        if w_scale is None:
            return False
        mult = _scalar(dx.scale, np.float32) * w_scale
        plan = self._bias_plan(n.inputs[2] if len(n.inputs) > 2 else None, mult)
        if plan is None:
            return False
        with g.inserting_before(n):
            ins = [dx.q, dw.q, self._zp_value(g, dx)]
            if np.any(dw.zp != 0):
                ins.append(dw.zp_value)
            acc = g.op("ConvInteger", *ins, **dict(n.attrs))
            y = self._rescale(g, n, acc, mult, plan, (cout,) + (1,) * (wq.ndim - 2))
        self._finish(n, y)
        return True

    def _matmul(self, g, n: Node) -> bool:
        dx, dw = _dq(n.inputs[0]), _dq(n.inputs[1])
        if not _per_tensor_8bit(dx) or dw is None:
            return False
        bias = None
        if n.op_type == "Gemm":
            if n.attr("transA", 0) or n.attr("alpha", 1.0) != 1.0 or n.attr("beta", 1.0) != 1.0:
                return False
            bias = n.inputs[2] if len(n.inputs) > 2 else None
        wq = constant_value(dw.q)
        if wq is None:
            # Activation x activation (attention scores): both per-tensor, one scalar rescale.
            if n.op_type != "MatMul" or not _per_tensor_8bit(dw):
                return False
            with g.inserting_before(n):
                acc = g.op("MatMulInteger", dx.q, dw.q, self._zp_value(g, dx), self._zp_value(g, dw))
                y = self._rescale(g, n, acc, _scalar(dx.scale, np.float32) * _scalar(dw.scale, np.float32),
                                  ("none", None), ())
            self._finish(n, y)
            return True
        if wq.dtype.type not in _INT8 or wq.ndim < 2 or (n.op_type == "Gemm" and wq.ndim != 2):
            return False
        trans_b = n.op_type == "Gemm" and bool(n.attr("transB", 0))
        out_axis = weight_info(n).out_axis % wq.ndim
        nout = wq.shape[out_axis]
        w_scale = self._weight_scale(dw, axis=out_axis, nout=nout)
        if w_scale is None or (np.size(w_scale) > 1 and wq.ndim != 2):
            return False
        mult = _scalar(dx.scale, np.float32) * w_scale
        plan = self._bias_plan(bias, mult)
        if plan is None:
            return False
        with g.inserting_before(n):
            # MatMulInteger has no transpose attribute: store Gemm's transB weight transposed.
            w_in = g.constant(np.ascontiguousarray(wq.T), name=f"{dw.q.name or 'W'}_T") if trans_b else dw.q
            ins = [dx.q, w_in, self._zp_value(g, dx)]
            if np.any(dw.zp != 0):
                ins.append(dw.zp_value)
            acc = g.op("MatMulInteger", *ins)
            y = self._rescale(g, n, acc, mult, plan, (nout,))
        self._finish(n, y)
        return True

    # -------------------------------------------------------------------------------------------
    @staticmethod
    def _weight_scale(dw: _Dq, axis: int, nout: int) -> np.ndarray | None:
        """The weight scale as a float32 vector over output channels (or a scalar), if usable."""
        wq = constant_value(dw.q)
        if np.size(dw.scale) == 1:
            return None if np.size(dw.zp) != 1 else _scalar(dw.scale, np.float32)
        ax = dw.axis % wq.ndim if dw.axis is not None else None
        if ax != axis or np.size(dw.scale) != nout or np.any(dw.zp != 0):
            return None  # per-channel along another axis, or per-channel zero points
        return np.asarray(dw.scale, np.float32).reshape(-1)

    @staticmethod
    def _zp_value(g, d: _Dq) -> Value:
        """A scalar zero point of the 8-bit input's type (DequantizeLinear's may be absent)."""
        if d.zp_value is not None and d.zp_value.shape is not None and len(d.zp_value.shape) == 0:
            return d.zp_value
        dtype = np.int8 if d.q.dtype == DType.INT8 else np.uint8
        return g.constant(_scalar(d.zp, dtype), name=f"{d.q.name or 'x'}_zero_point")

    @staticmethod
    def _bias_plan(bias: Value | None, mult: np.ndarray) -> tuple[str, object] | None:
        """How to add `bias`: ("none", None), ("int", int32 array) when it is an int32 DQ whose scale
        is the product scale (quant8's: it joins the accumulator), ("float", array or value)
        otherwise; None when it is not a per-channel vector (the group is left alone)."""
        if bias is None:
            return ("none", None)
        if bias.shape is None or len(bias.shape) > 1:
            return None
        db = _dq(bias)
        bq = constant_value(db.q) if db is not None else None
        if bq is not None and bq.dtype == np.int32 and np.all(db.zp == 0):
            bs = np.broadcast_to(np.asarray(db.scale, np.float32).reshape(-1), np.shape(bq))
            ms = np.broadcast_to(mult.reshape(-1), np.shape(bq))
            if np.allclose(bs, ms, rtol=1e-6, atol=0):
                return ("int", bq)
        fb = constant_value(bias)
        if fb is not None:
            return ("float", np.asarray(fb, np.float32)) if fb.dtype == np.float32 else None
        return ("float", bias) if bias.dtype == DType.FLOAT else None

    @staticmethod
    def _rescale(g, n: Node, acc: Value, mult: np.ndarray, plan: tuple[str, object],
                 bshape: tuple[int, ...]) -> Value:
        """Cast(acc [+ b_q]) * (s_x * s_w) [+ b] (see `_bias_plan`)."""
        kind, b = plan
        base = (n.name or n.op_type).replace("/", "_")

        def shaped(a: np.ndarray) -> np.ndarray:
            return a.reshape(bshape) if np.size(a) > 1 else a.reshape(())

        if kind == "int":
            acc = g.op("Add", acc, g.constant(shaped(b), name=f"{base}_bias_i32"))
        f = g.op("Cast", acc, to=int(DType.FLOAT))
        y = g.op("Mul", f, g.constant(shaped(mult), name=f"{base}_rescale"))
        if kind == "float":
            if isinstance(b, np.ndarray):
                bv = g.constant(shaped(b), name=f"{base}_bias")
            else:
                bv = b
                if len(bshape) > 1:  # a runtime [C] bias of a Conv broadcasts over the channel axis
                    bv = g.op("Reshape", bv, g.constant(np.array((-1,) + bshape[1:], np.int64), name=f"{base}_bshape"))
            y = g.op("Add", y, bv)
        return y

    @staticmethod
    def _finish(n: Node, y: Value) -> None:
        y.type = TensorType(DType.FLOAT, n.outputs[0].shape)
        replace_value(n.outputs[0], y)
        n.graph.remove(n)
