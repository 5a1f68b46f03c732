"""`fp16`: float16 weights and compute, optionally keeping the float32 interface.

Every float32 tensor becomes float16 except around ops that must stay float32:
* ops listed in `keep-fp32-ops`: by default the ones whose float16 result overflows or loses too
  much (exponentials, powers, reductions over many elements, softmax; a LayerNorm written out as
  ReduceMean(Pow(x - mean, 2)) overflows at |x - mean| > 256), plus Range/CumSum whose float16
  results go wrong for long ranges;
* ops of other domains and ops holding subgraphs (we cannot see their typing rules);
* inputs that the ONNX schema fixes to float32 (Resize/Upsample roi and scales), and ops that take
  no float16 at all (DynamicQuantizeLinear; QuantizeLinear/DequantizeLinear, float16 only from
  opset 19): `FP32_ONLY_OPS`.
Casts are inserted on the edges between the two worlds (one per value and direction). With
`keep-io-types=true` (default) graph inputs and outputs stay float32 and are cast at the boundary,
so callers do not change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lepton_ir import ArrayTensor, DType, Model, Node, TensorType, Value

from ..base import Pass, register_pass
from ..util import constant_value, infer_types_changed

_FP32_SLOTS = {"Resize": (1, 2), "Upsample": (1,)}
#: Ops whose ONNX schema takes no float16 (DynamicQuantizeLinear: float32 only; QuantizeLinear's
#: input and DequantizeLinear's output before opset 19): computed in float32 whatever the options
#: (ddddocr-old's DynamicQuantizeLinear fed float16 was a model ONNX Runtime refuses).
#: Ops of an already quantized model: fp16 leaves such a model as it is (see `run`).
QUANTIZED_OPS = frozenset({"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "ConvInteger",
                           "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM", "QGemm",
                           "QLinearAdd", "QLinearMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})
FP32_ONLY_OPS = frozenset({"DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear"})
DEFAULT_KEEP_FP32 = ("Pow", "Exp", "Log", "ReduceSum", "ReduceMean", "ReduceProd", "ReduceSumSquare", "ReduceL2",
                     "ReduceLogSumExp", "Softmax", "LogSoftmax", "Range", "CumSum", "RandomNormal", "RandomUniform",
                     "RandomNormalLike", "RandomUniformLike", "Multinomial", "NonMaxSuppression", "TopK")


def _to_half(a: np.ndarray) -> np.ndarray:
    """float32 -> float16, saturating to the largest finite half (masks use -3.4e38 as -inf: the
    saturated -65504 still zeroes a softmax entry, while -inf would turn a fully masked row into NaN)."""
    return np.clip(a, -65504.0, 65504.0).astype(np.float16)


def _retype(v: Value, dtype: DType) -> None:
    shape = v.shape
    v.type = TensorType(dtype, shape)


def _error_gain(model: Model) -> float:
    """Largest product, along any path to a graph output, of the factors by which float16
    BatchNormalization nodes scale the error in their input (``max |scale| / sqrt(var + eps)``,
    factors below 1 count as 1); 1 when there are none."""
    gain: dict[int, float] = {}
    for x in model.graph:
        g = max([gain.get(id(v), 1.0) for v in x.inputs if v is not None] or [1.0])
        if x.op_type == "BatchNormalization" and len(x.inputs) >= 5 and \
                any(o.dtype == DType.FLOAT16 for o in x.outputs[:1]):
            scale, var = constant_value(x.inputs[1]), constant_value(x.inputs[4])
            if scale is not None and var is not None and np.size(scale):
                eps = float(x.attr("epsilon", 1e-5))
                f = np.abs(np.asarray(scale, np.float64)) / np.sqrt(np.asarray(var, np.float64) + eps)
                if np.all(np.isfinite(f)):
                    g *= max(1.0, float(np.max(f)))
        for o in x.outputs:
            if o is not None:
                gain[id(o)] = g
    return max([gain.get(id(v), 1.0) for v in model.graph.outputs] or [1.0])


@register_pass
@dataclass(frozen=True)
class Fp16(Pass):
    """float16 weights and compute; float32 interface kept by keep-io-types (see docs/quantization.md)."""

    name = "fp16"

    keep_io_types: bool = field(default=True, metadata={"help": "graph inputs/outputs stay float32"})
    keep_fp32_ops: tuple[str, ...] = field(default=DEFAULT_KEEP_FP32, metadata={"help": "op types computed in float32"})
    exclude_nodes: tuple[str, ...] = field(default=(), metadata={"help": "node names computed in float32"})
    tolerance_k: float = field(default=4.0, metadata={"help": "k of the derived tolerance"})

    def tolerance(self, model: Model) -> tuple[float, float]:
        """float16 has a 11-bit significand: relative rounding 2^-11 per op; n ops in series ~ sqrt(n).
        rtol = atol = k * sqrt(n) * 2^-11 (n = number of float16 compute nodes)."""
        n = sum(1 for x in model.graph if x.op_type != "Cast" and any(o.dtype == DType.FLOAT16 for o in x.outputs))
        r = self.tolerance_k * math.sqrt(max(n, 1)) * 2.0 ** -11
        # atol also scales with what amplifies the rounding already in a tensor: a float16
        # BatchNormalization multiplies its input's error by |scale| / sqrt(var + eps) (10x for a
        # variance of 0.02) while its output can be near 0 (x close to the mean), so neither rtol
        # nor atol = r covered it (differential fuzzing, tests/fuzz/corpus/differential/fp16-onnx).
        return (r, r * _error_gain(model))

    def _blocked(self, n: Node) -> bool:
        return (n.op_type in self.keep_fp32_ops or n.op_type in FP32_ONLY_OPS or n.domain not in ("", "ai.onnx")
                or bool(n.subgraphs())
                or (n.name is not None and n.name in self.exclude_nodes))

    def run(self, model: Model) -> bool:
        from ..util import unfuse

        unfused = unfuse(model)  # after `fuse`: quantize standard ops (see util.unfuse)
        g = model.graph
        refined = infer_types_changed(model)  # refined types are a change even with nothing to convert
        nodes = list(g)
        if not any(v.dtype == DType.FLOAT for n in nodes for v in n.outputs) and \
                not any(v.dtype == DType.FLOAT for v in g.inputs):
            return unfused or refined
        quantized = sorted({n.op_type for n in g.all_nodes() if n.op_type in QUANTIZED_OPS})
        if quantized:
            # Already int8: the scales of its quantizers are computed from (or were calibrated on)
            # float32 values; float16 ones move values across rounding boundaries and one step of
            # an int8 activation is far more than float16's error (ddddocr-old: 0.57 at an output).
            import warnings

            warnings.warn(f"fp16: the model is already quantized ({', '.join(quantized)}); left in float32",
                          stacklevel=2)
            return unfused or refined
        f16: set[int] = set()  # values that end up float16
        # Graph inputs.
        for v in g.inputs:
            if v.dtype == DType.FLOAT and v.name not in g.initializers and not self.keep_io_types:
                _retype(v, DType.FLOAT16)
                f16.add(id(v))
        # Node outputs of unblocked nodes.
        for n in nodes:
            if self._blocked(n):
                continue
            if n.op_type == "Cast" and n.attr("to") == int(DType.FLOAT):
                n.set_attr("to", int(DType.FLOAT16))
            if n.op_type in ("Constant", "ConstantOfShape"):
                key = "value"
                a = n.attr(key)
                if a is not None and getattr(a, "dtype", None) == DType.FLOAT:
                    n.set_attr(key, ArrayTensor(_to_half(a.numpy())))
            for o in n.outputs:
                if o.dtype == DType.FLOAT:
                    _retype(o, DType.FLOAT16)
                    f16.add(id(o))
        # Edges.
        casts: dict[tuple[int, int], Value] = {}
        halves: dict[int, Value] = {}

        def cast(v: Value, to: DType, before: Node) -> Value:
            key = (id(v), int(to))
            if key not in casts:
                c = Node("Cast", [v], {"to": int(to)})
                c.outputs[0].name = g.fresh_name(f"{v.name or 'v'}_{to.short}")
                c.outputs[0].type = TensorType(to, v.shape)
                prod = v.producer()
                if prod is not None and prod.graph is g:
                    g.insert_after(prod, c)
                else:
                    g.insert_before(g.first() or before, c)
                casts[key] = c.outputs[0]
            return casts[key]

        for n in nodes:
            blocked = self._blocked(n)
            for i, v in enumerate(n.inputs):
                if v is None:
                    continue
                const = constant_value(v) if v.const is not None else None
                if const is not None and const.dtype == np.float32:
                    if blocked or i in _FP32_SLOTS.get(n.op_type, ()):
                        continue
                    if id(v) not in halves:
                        halves[id(v)] = g.constant(_to_half(const), name=f"{v.name or 'w'}_fp16")
                    n.replace_input(i, halves[id(v)])
                    continue
                want16 = not blocked and i not in _FP32_SLOTS.get(n.op_type, ())
                is16 = id(v) in f16
                if v.dtype not in (DType.FLOAT, DType.FLOAT16):
                    continue
                if want16 and not is16:
                    n.replace_input(i, cast(v, DType.FLOAT16, n))
                elif not want16 and is16:
                    n.replace_input(i, cast(v, DType.FLOAT, n))
        # Graph outputs keep float32 with keep-io-types.
        if self.keep_io_types:
            for o in list(g.outputs):
                if id(o) in f16:
                    c = Node("Cast", [o], {"to": int(DType.FLOAT)})
                    c.outputs[0].type = TensorType(DType.FLOAT, o.shape)
                    prod = o.producer()
                    if prod is not None and prod.graph is g:
                        g.insert_after(prod, c)
                    else:
                        g.append(c)
                    # Only the interface moves to the Cast: other users keep reading the float16 value.
                    name = o.name
                    o.name = g.fresh_name(f"{name or 'out'}_fp16")
                    c.outputs[0].name = name
                    g.outputs[:] = [c.outputs[0] if x is o else x for x in g.outputs]
                    for key in ("declared_output_type", "output_doc"):
                        if key in o.meta:
                            c.outputs[0].meta[key] = o.meta.pop(key)
        else:
            for o in g.outputs:
                if id(o) in f16 and o.meta.get("declared_output_type") is not None:
                    o.meta["declared_output_type"] = TensorType(DType.FLOAT16, o.shape)
        for v in g.inputs:  # inputs may carry their declared type too
            if id(v) in f16:
                for key in ("input_type", "declared_type"):
                    if v.meta.get(key) is not None:
                        v.meta[key] = TensorType(DType.FLOAT16, v.shape)
        for name, v in list(g.initializers.items()):
            if not v.num_uses() and not v.is_graph_output() and v not in g.inputs:
                g.remove_initializer(name)
        model.metadata_props["lepton.fp16"] = f"keep_io_types={self.keep_io_types}"
        return True
