"""The output tolerance of a QDQ model, derived from its quantization scales.

Model (docs/quantization.md, "Tolerance"): every activation quantizer with scale s adds a rounding
error of at most s/2 to its tensor, and errors carried in from earlier layers, re-expressed in that
tensor's units, are of the same order (calibration sizes each scale to its own tensor's range).
Treating the n quantizers met along the way to an output as independent errors of one output step
each, the error at an output is about sqrt(n) * s_out * g, where s_out is the scale of the last
activation quantizer before the output and g bounds how much the float ops after it can amplify
(their Lipschitz constants: Sigmoid 1/4, ReLU/Softmax/pooling/reshapes 1, a float Conv/MatMul/Gemm
the largest absolute row sum of its weights, Mul/Div by a constant its largest factor).

    atol = k * max over outputs of (s_out * g * sqrt(n)),    rtol = 0

"Of the same order" holds across ops whose output range follows their input's (Conv, MatMul, joins:
calibration scales the output quantizer with the range), not across an op that squeezes a wide
range into a narrow one: a quantized Sigmoid reading logits quantized with a step of 0.9 has an
output step of 1/255, yet its output carries up to 0.9/4 of error from its input. So the error is
also carried as a bound (c) through the ops whose gain is a true Lipschitz bound of their single
data input (elementwise activations, pooling, data movement, a constant factor), and a quantizer
takes max(its own step, the carried bound) instead of forgetting what it is given. (`fuse` made
this visible: it folds a ConvTranspose's bias Add into the ConvTranspose, so quant8 then
quantizes the Sigmoid after it too; ppocr-det derived 0.13 after fuse, 7.46 without.)

k (default 4) covers the rounding tails: on the test fixtures the observed error stays below
2.9 * s_out * sqrt(n) with minmax, entropy and percentile calibration (tests/quant/test_quant8.py
checks the fixtures against the derived atol).
The bound holds for inputs inside the range the calibration data covered: where calibration chose
to clip (entropy, percentile, mse), the clip it chose on that data is an error of the quantizer
like its step (CLIP_META); inputs beyond what the calibration data reached are clipped further,
which no scale-derived bound can cover (that is what the accuracy report is for).
"""

from __future__ import annotations

import math

import numpy as np

from lepton_ir import Model, Node

from ..util import constant_value

_GAIN_ONE = {"Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape",
             "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Concat", "Softmax",
             "Tanh", "Slice", "Gather", "Split", "Expand", "ReduceMax", "ReduceMin", "Pad",
             "Add", "Sub", "Max", "Min", "Cast", "DepthToSpace",
             "SpaceToDepth", "LayerNormalization", "ReduceMean", "Neg", "Abs"}

#: Ops whose `_gain` is a true Lipschitz bound (infinity norm) from their data inputs to their
#: output, each output element depending on input elements through that bound alone: an error
#: bound carried into them comes out multiplied by the gain, whatever the ranges.
#: (Add/Sub/Mul/Div qualify only with one non-constant input; LayerNormalization, Cast and the
#: float compute ops never: their gain is an estimate or depends on the data.)
_LIPSCHITZ = {"Relu", "Clip", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
              "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Concat", "Slice", "Gather",
              "Split", "Expand", "Pad", "DepthToSpace", "SpaceToDepth", "ReduceMax", "ReduceMin", "ReduceMean",
              "Max", "Min", "Neg", "Abs", "Sigmoid", "HardSigmoid", "Tanh", "Softmax", "LogSoftmax", "Erf",
              "HardSwish", "Resize"}
_ONE_DATA_INPUT = {"Add", "Sub", "Mul", "Div"}

#: `meta` key on a DequantizeLinear's scale constant: how far the calibration data went beyond
#: the range quant8 chose (entropy, percentile and mse calibration clip outliers on purpose).
#: Values clipped that far are errors the quantizer makes on the calibration data itself.
CLIP_META = "lepton.quant8.clip"


#: Ops whose output values lie inside the hull of their data input's values (so an input range
#: found upstream still bounds their output: what `_upper_bound` walks back through).
_RANGE_KEEPING = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Slice", "Gather",
                  "Expand", "MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool", "ReduceMax",
                  "ReduceMin", "ReduceMean", "DepthToSpace", "SpaceToDepth", "Split", "Relu", "Clip"}


def _upper_bound(v, depth: int = 16) -> float | None:
    """An upper bound of the values of `v`, when a quantizer bounds them: the largest value a
    constant-parameter DequantizeLinear can produce ((qmax - zero point) * scale), followed
    through ops that keep values inside their input's range; None when nothing bounds `v`."""
    n = v.producer() if v is not None else None
    if n is None or depth == 0:
        return None
    if n.op_type == "DequantizeLinear" and len(n.inputs) > 1:
        s = constant_value(n.inputs[1])
        if s is None:
            return None
        zp = constant_value(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] is not None else None
        dtype = np.dtype(zp.dtype) if zp is not None else np.dtype(np.uint8)
        if not np.issubdtype(dtype, np.integer):
            return None
        qmax = float(np.iinfo(dtype).max)
        zp_f = np.asarray(zp, np.float64) if zp is not None else np.zeros(1)
        return float(np.max((qmax - zp_f) * np.asarray(s, np.float64)))
    if n.op_type == "Sub" and len(n.inputs) == 2 and n.inputs[1] is not None and n.inputs[1].producer() is not None \
            and n.inputs[1].producer().op_type == "ReduceMax" and n.inputs[1].producer().inputs[0] is n.inputs[0]:
        return 0.0  # x - max(x): softmax's stabilised exponent
    if n.op_type in _RANGE_KEEPING and n.inputs and n.inputs[0] is not None:
        return _upper_bound(n.inputs[0], depth - 1)
    return None


def _gain(n: Node) -> float:
    """An upper bound of |d out| / |d in| (infinity norm) of a float op, 1 when unknown."""
    op = n.op_type
    if op == "Sigmoid":
        return 0.25
    if op == "BatchNormalization":
        # per-channel affine: y = scale * (x - mean) / sqrt(var + eps) + bias, a true Lipschitz
        # gain when scale and var are constants (the fuzzer's Conv -> BN with var 0.015: 10.2,
        # where 1 had made the tolerance too small; a BN fold-batchnorm cannot fold, e.g. when the
        # Conv's output is also a graph output)
        sc = constant_value(n.inputs[1]) if len(n.inputs) > 4 else None
        var = constant_value(n.inputs[4]) if len(n.inputs) > 4 else None
        if sc is not None and var is not None and np.size(sc) and np.size(var):
            eps = float(n.attr("epsilon", 1e-5))
            return float(np.max(np.abs(np.asarray(sc, np.float64)) / np.sqrt(np.asarray(var, np.float64) + eps)))
        return 1.0
    if op == "Exp":
        # d exp(x) = exp(x) dx: the gain is exp of the largest input, known when a quantizer
        # bounds the input (the fuzzer's Relu -> MatMul -> Exp: exp(1.93) = 6.9, where 1 had made
        # the tolerance 5x too small). Unbounded inputs keep 1: no finite bound exists there.
        hi = _upper_bound(n.inputs[0]) if n.inputs else None
        return math.exp(min(hi, 80.0)) if hi is not None and hi > 0 else 1.0
    if op == "HardSigmoid":
        return float(n.attr("alpha", 0.2))
    if op in _GAIN_ONE:
        return 1.0
    if op == "HardSwish":
        return 1.5  # x * relu6(x + 3) / 6 has slope (2x + 3) / 6, 1.5 at x = 3
    if op == "LogSoftmax":
        return 2.0  # row sum of |d log p_i / d x_j| = 2 (1 - p_i)
    if op == "Erf":
        return 2.0 / math.sqrt(math.pi)
    if op == "LeakyRelu":
        return max(1.0, abs(float(n.attr("alpha", 0.01))))
    if op == "Resize":
        # nearest/linear interpolate with weights in [0, 1] summing to 1; cubic's (A = -0.75)
        # overshoot: at most 1.375 of absolute weight per axis, 2 resized axes at most in practice
        return 1.375 ** 2 if n.attr("mode", "nearest") in ("cubic", b"cubic") else 1.0
    consts = [constant_value(v) for v in n.inputs]
    if op in ("Mul",) and any(c is not None for c in consts):
        c = next(c for c in consts if c is not None)
        return float(np.max(np.abs(c))) if np.size(c) else 1.0
    if op == "Div" and len(consts) > 1 and consts[1] is not None and np.size(consts[1]):
        m = float(np.min(np.abs(consts[1])))
        return 1.0 / m if m > 0 else 1.0
    if op in ("Conv", "ConvTranspose") and len(consts) > 1 and consts[1] is not None:
        w = np.abs(np.asarray(consts[1], np.float64))
        axis = 0 if op == "Conv" else 1
        return float(np.max(np.sum(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1), axis=1)))
    if op in ("MatMul", "Gemm") and len(consts) > 1 and consts[1] is not None and np.ndim(consts[1]) == 2:
        w = np.abs(np.asarray(consts[1], np.float64))
        if op == "Gemm" and n.attr("transB", 0):
            w = w.T
        return float(np.max(np.sum(w, axis=0))) * (abs(float(n.attr("alpha", 1.0))) if op == "Gemm" else 1.0)
    return 1.0


def scale_error_state(model: Model) -> dict[int, tuple[float, int]]:
    """For each value reached by activation quantization: (s * g, n) as defined above."""
    return {k: (e, n) for k, (e, n, _) in _error_state(model).items()}


def _error_state(model: Model) -> dict[int, tuple[float, int, float]]:
    """(e, n, c) per value: e = s * g and n as in the module docstring; c the error bound carried
    through true-Lipschitz ops since the last activation quantizer (0 once an op whose gain is
    only an estimate, e.g. a quantized Conv, re-expresses it in its output's scale)."""
    state: dict[int, tuple[float, int, float]] = {}
    for n in model.graph:
        ins = [state[id(v)] for v in n.inputs if v is not None and id(v) in state]
        if n.op_type == "DequantizeLinear" and constant_value(n.inputs[0]) is None:
            s = constant_value(n.inputs[1])
            if s is not None:
                prev = ins[0][1] if ins else 0
                carried = ins[0][2] if ins else 0.0
                # The quantizer rounds what it is given: its error is its own step or the error
                # already in its input, whichever is larger (a Sigmoid's 1/255 step does not undo
                # the error its logits carry in).
                # ... and the clipping calibration chose (fuzz finding quant8 x onnx #6: entropy
                # clipped a Conv's output at -0.79 where the data reached -1.20)
                clip = float(n.inputs[1].meta.get(CLIP_META, 0.0)) if n.inputs[1] is not None else 0.0
                e = max(float(np.max(np.abs(s))), carried, clip)
                state[id(n.outputs[0])] = (e, prev + 1, e)
            continue
        if not ins:
            continue
        if n.op_type == "QuantizeLinear":
            state[id(n.outputs[0])] = ins[0]
            continue
        g = _gain(n)
        se = max(x[0] for x in ins) * g
        cnt = max(x[1] for x in ins)
        lipschitz = n.op_type in _LIPSCHITZ or (n.op_type in _ONE_DATA_INPUT and _constant_operand(n)) or \
            (n.op_type == "BatchNormalization" and all(constant_value(v) is not None for v in n.inputs[1:])) or \
            (n.op_type == "Exp" and _upper_bound(n.inputs[0]) is not None)  # its gain is then a true bound
        c = max(x[2] for x in ins) * g if lipschitz else 0.0
        for o in n.outputs:
            state[id(o)] = (se, cnt, c)
    return state


def _constant_operand(n: Node) -> bool:
    """Add/Sub/Mul/Div of one tensor and a constant (the divisor, for Div): a true Lipschitz gain."""
    if len(n.inputs) != 2 or any(v is None for v in n.inputs):
        return False
    if n.op_type == "Div":
        return constant_value(n.inputs[1]) is not None
    return sum(constant_value(v) is not None for v in n.inputs) == 1


def qdq_tolerance(model: Model, k: float = 4.0, floor: tuple[float, float] = (1e-4, 1e-5)) -> tuple[float, float]:
    """(rtol, atol) for a QDQ model: atol = k * max over outputs of s_out * g * sqrt(n)."""
    state = scale_error_state(model)
    worst = 0.0
    for o in model.graph.outputs:
        st = state.get(id(o))
        if st is not None:
            worst = max(worst, st[0] * math.sqrt(st[1]))
    if worst == 0.0:
        return floor
    return (0.0, k * worst)
