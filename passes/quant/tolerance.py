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

k (default 4) covers the rounding tails: on the test fixtures the observed error stays below
2.9 * s_out * sqrt(n) with minmax, entropy and percentile calibration (tests/quant/test_quant8.py
checks the fixtures against the derived atol).
The bound holds for inputs inside the calibrated ranges; inputs far outside are clipped, which no
scale-derived bound can cover (that is what the accuracy report is for).
"""

from __future__ import annotations

import math

import numpy as np

from lepton_ir import Model, Node

from ..util import constant_value

_GAIN_ONE = {"Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape",
             "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Concat", "Resize", "Softmax",
             "LogSoftmax", "Tanh", "Slice", "Gather", "Split", "Expand", "ReduceMax", "ReduceMin", "Pad",
             "LeakyRelu", "Erf", "Add", "Sub", "HardSwish", "Max", "Min", "Cast", "DepthToSpace",
             "SpaceToDepth", "LayerNormalization", "ReduceMean", "Neg", "Abs"}


def _gain(n: Node) -> float:
    """An upper bound of |d out| / |d in| (infinity norm) of a float op, 1 when unknown."""
    op = n.op_type
    if op == "Sigmoid":
        return 0.25
    if op == "HardSigmoid":
        return float(n.attr("alpha", 0.2))
    if op in _GAIN_ONE:
        return 1.0
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
    state: dict[int, tuple[float, int]] = {}
    for n in model.graph:
        ins = [state[id(v)] for v in n.inputs if v is not None and id(v) in state]
        if n.op_type == "DequantizeLinear" and constant_value(n.inputs[0]) is None:
            s = constant_value(n.inputs[1])
            if s is not None:
                prev = ins[0][1] if ins else 0
                state[id(n.outputs[0])] = (float(np.max(np.abs(s))), prev + 1)
            continue
        if not ins:
            continue
        if n.op_type == "QuantizeLinear":
            state[id(n.outputs[0])] = ins[0]
            continue
        g = _gain(n)
        se = max(x[0] for x in ins) * g
        cnt = max(x[1] for x in ins)
        for o in n.outputs:
            state[id(o)] = (se, cnt)
    return state


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
