"""`unroll-rnn`: LSTM, GRU and RNN unrolled over a static sequence length into MatMul/Add/activations.

TVM's ONNX importer has no recurrent ops. With the sequence length known (static, or pinned with
`--input-shape`), each op becomes the spec's equations written out per time step: the input
projection for all steps is one MatMul, the recurrence a MatMul per step. Supported: directions
forward/reverse/bidirectional, layouts 0 and 1, biases, initial states, peepholes (LSTM), clip,
linear_before_reset (GRU), activations Sigmoid/Tanh/Relu without parameters. Not supported (the op
is left alone and `--debug-rewrites` says why): `sequence_lens` other than "all full", LSTM
input_forget=1, parametrised activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from lepton_ir import Graph, Model, Node, Value

from ..base import Pass, register_pass
from ..util import constant_value, replace_value

_ACTS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _why_not(n: Node, kind: str | None = None) -> str | None:
    """Why `n` (a recurrent op of `kind`, default its op_type) cannot be unrolled; None if it can."""
    kind = kind or n.op_type
    x = n.inputs[0]
    if x is None or x.shape is None:
        return "input shape unknown"
    layout = n.attr("layout", 0)
    seq = x.shape[1 if layout else 0]
    if not isinstance(seq, int):
        return "sequence length is not static (pin it with --input-shape)"
    if n.attr("hidden_size") is None:
        return "hidden_size missing"
    if n.attr("activation_alpha") is not None or n.attr("activation_beta") is not None:
        return "parametrised activations"
    acts = n.attr("activations")
    if acts is not None and any(str(a).lower() not in _ACTS for a in acts):
        return f"activation {acts} not supported"
    if kind == "LSTM" and n.attr("input_forget", 0):
        return "input_forget=1"
    sl = n.inputs[4] if len(n.inputs) > 4 else None
    if sl is not None:
        lens = constant_value(sl)
        if lens is None or not np.all(lens == seq):
            return "sequence_lens other than the full length"
    return None


class StepBuilder:
    """Node builder at the current insertion point, aware of the opset's Split form.

    Shared by the unrolling passes (`unroll-rnn`, `legalize-dynamic-quantize-lstm`)."""

    def __init__(self, g: Graph, opset: int) -> None:
        self.g = g
        self.opset = opset

    def __call__(self, op: str, *ins: Value | None, n: int = 1, **attrs) -> Value | tuple[Value, ...]:
        return self.g.op(op, *ins, num_outputs=n, **attrs)

    def c(self, arr) -> Value:
        return self.g.constant(np.asarray(arr), name="rnn_const")

    def take(self, x: Value, i: int, axis: int = 0) -> Value:
        """x[i] along axis (dimension removed)."""
        return self("Gather", x, self.c(np.array(i, dtype=np.int64)), axis=axis)

    def cols(self, x: Value, start: int, stop: int, axis: int = -1) -> Value:
        return self("Slice", x, self.c([start]), self.c([stop]), self.c([axis]))

    def split(self, x: Value, parts: int, size: int) -> tuple[Value, ...]:
        if parts == 1:
            return (x,)
        if self.opset >= 13:
            return self("Split", x, self.c(np.full(parts, size, dtype=np.int64)), n=parts, axis=-1)
        return self("Split", x, n=parts, axis=-1, split=[size] * parts)

    def unsq(self, x: Value, axis: int) -> Value:
        if self.opset >= 13:
            return self("Unsqueeze", x, self.c([axis]))
        return self("Unsqueeze", x, axes=[axis])


class FloatGemms:
    """The two products of an LSTM/RNN direction in float, as the ONNX spec writes them.

    `_unroll` asks for them through this interface so that a quantized op
    (`legalize-dynamic-quantize-lstm`) can substitute its own arithmetic and reuse the cell equations.
    """

    def project(self, b: StepBuilder, X: Value, W: Value, d: int) -> Value:
        """X [seq, batch, input] times direction d's W^T: [seq, batch, gates*h]."""
        return b("MatMul", X, b("Transpose", b.take(W, d), perm=[1, 0]))

    def recurrence(self, b: StepBuilder, R: Value, d: int):
        """A function H [batch, h] -> H times direction d's R^T, [batch, gates*h]."""
        RT = b("Transpose", b.take(R, d), perm=[1, 0])
        return lambda H: b("MatMul", H, RT)


def _unroll(n: Node, opset: int, kind: str | None = None, gemms: FloatGemms | None = None
            ) -> tuple[Value | None, ...]:
    """The outputs (Y, Y_h, Y_c) of `n` unrolled; `kind` overrides the op type (LSTM/GRU/RNN) and
    `gemms` the input and recurrent products (GRU, whose recurrence is split by gate, always uses
    float MatMuls for it)."""
    g = n.graph
    assert g is not None
    b = StepBuilder(g, opset)
    kind = kind or n.op_type
    gemms = gemms or FloatGemms()
    gates = _GATES[kind]
    h = int(n.attr("hidden_size"))
    layout = n.attr("layout", 0)
    direction = n.attr("direction", "forward")
    dirs = ["forward", "reverse"] if direction == "bidirectional" else [direction]
    acts_all = [_ACTS[str(a).lower()] for a in n.attr("activations")] if n.attr("activations") else \
        _DEFAULT_ACTS[kind] * len(dirs)
    per = len(_DEFAULT_ACTS[kind])
    clip = n.attr("clip")
    ins = list(n.inputs) + [None] * (8 - len(n.inputs))
    X, W, R, B = ins[0], ins[1], ins[2], ins[3]
    init_h = ins[5]
    init_c = ins[6] if kind == "LSTM" else None
    P = ins[7] if kind == "LSTM" else None
    if layout:
        X = b("Transpose", X, perm=[1, 0, 2])
        if init_h is not None:
            init_h = b("Transpose", init_h, perm=[1, 0, 2])
        if init_c is not None:
            init_c = b("Transpose", init_c, perm=[1, 0, 2])
    seq = n.inputs[0].shape[1 if layout else 0]

    def act(name: str, v: Value) -> Value:
        if clip is not None:
            v = b("Clip", v, b.c(np.float32(-clip)), b.c(np.float32(clip)))
        return b(name, v)

    # zeros [batch, h] for absent initial states, batch taken from X at run time
    def zeros() -> Value:
        batch = b("Gather", b("Shape", X), b.c(np.array([1], dtype=np.int64)), axis=0)
        shape = b("Concat", batch, b.c(np.array([h], dtype=np.int64)), axis=0)
        return b("ConstantOfShape", shape)

    ys, yhs, ycs = [], [], []
    for d, dname in enumerate(dirs):
        f_act, *rest = acts_all[d * per:(d + 1) * per]
        XW = gemms.project(b, X, W, d)  # [seq, batch, gates*h]
        Bd = b.take(B, d) if B is not None else None
        if Bd is not None:
            wb, rb = b.cols(Bd, 0, gates * h, 0), b.cols(Bd, gates * h, 2 * gates * h, 0)
        H = b.take(init_h, d) if init_h is not None else zeros()
        C = (b.take(init_c, d) if init_c is not None else zeros()) if kind == "LSTM" else None
        if kind == "GRU":
            Rd = b.take(R, d)
        if kind == "GRU" and not n.attr("linear_before_reset", 0):
            RzrT = b("Transpose", b.cols(Rd, 0, 2 * h, 0), perm=[1, 0])
            RhT = b("Transpose", b.cols(Rd, 2 * h, 3 * h, 0), perm=[1, 0])
        elif kind == "GRU":
            RT = b("Transpose", Rd, perm=[1, 0])
        else:
            recur = gemms.recurrence(b, R, d)
        if Bd is not None and not (kind == "GRU"):
            XW = b("Add", XW, b("Add", wb, rb))
        elif Bd is not None:
            XW = b("Add", XW, wb)
        if P is not None:
            Pd = b.take(P, d)
            pi, po, pf = b.cols(Pd, 0, h, 0), b.cols(Pd, h, 2 * h, 0), b.cols(Pd, 2 * h, 3 * h, 0)
        steps = range(seq) if dname == "forward" else range(seq - 1, -1, -1)
        outs: dict[int, Value] = {}
        for t in steps:
            xt = b.take(XW, t)
            if kind == "LSTM":
                gates_v = b("Add", xt, recur(H))
                i, o, f, c = b.split(gates_v, 4, h)
                if P is not None:
                    i = b("Add", i, b("Mul", pi, C))
                    f = b("Add", f, b("Mul", pf, C))
                g_act, h_act = rest
                i, f, c = act(f_act, i), act(f_act, f), act(g_act, c)
                C = b("Add", b("Mul", f, C), b("Mul", i, c))
                if P is not None:
                    o = b("Add", o, b("Mul", po, C))
                o = act(f_act, o)
                H = b("Mul", o, b(h_act, C))
            elif kind == "GRU":
                (g_act,) = rest
                xz, xr, xh = b.split(xt, 3, h)
                if n.attr("linear_before_reset", 0):
                    hr = b("MatMul", H, RT)
                    if Bd is not None:
                        hr = b("Add", hr, rb)
                    hz, hrr, hh = b.split(hr, 3, h)
                    z = act(f_act, b("Add", xz, hz))
                    r = act(f_act, b("Add", xr, hrr))
                    hn = act(g_act, b("Add", xh, b("Mul", r, hh)))
                else:
                    hzr = b("MatMul", H, RzrT)
                    if Bd is not None:
                        hzr = b("Add", hzr, b.cols(rb, 0, 2 * h, 0))
                    hz, hrr = b.split(hzr, 2, h)
                    z = act(f_act, b("Add", xz, hz))
                    r = act(f_act, b("Add", xr, hrr))
                    hh = b("MatMul", b("Mul", r, H), RhT)
                    if Bd is not None:
                        hh = b("Add", hh, b.cols(rb, 2 * h, 3 * h, 0))
                    hn = act(g_act, b("Add", xh, hh))
                one = b.c(np.float32(1.0))
                H = b("Add", b("Mul", b("Sub", one, z), hn), b("Mul", z, H))
            else:
                H = act(f_act, b("Add", xt, recur(H)))  # biases are already in XW
            outs[t] = H
        ys.append(b.unsq(b("Concat", *[b.unsq(outs[t], 0) for t in range(seq)], axis=0), 1))  # [seq,1,batch,h]
        yhs.append(b.unsq(H, 0))
        if C is not None:
            ycs.append(b.unsq(C, 0))
    Y = ys[0] if len(ys) == 1 else b("Concat", *ys, axis=1)
    Yh = yhs[0] if len(yhs) == 1 else b("Concat", *yhs, axis=0)
    Yc = (ycs[0] if len(ycs) == 1 else b("Concat", *ycs, axis=0)) if ycs else None
    if layout:
        Y = b("Transpose", Y, perm=[2, 0, 1, 3])
        Yh = b("Transpose", Yh, perm=[1, 0, 2])
        if Yc is not None:
            Yc = b("Transpose", Yc, perm=[1, 0, 2])
    return (Y, Yh, Yc)


@register_pass
@dataclass(frozen=True)
class UnrollRnn(Pass):
    """Unroll LSTM/GRU/RNN with a static sequence length into MatMul, Add and activations."""

    name = "unroll-rnn"
    idempotent = True
    max_steps: int = field(default=512, metadata={"help": "leave ops with longer sequences alone"})

    def run(self, model: Model) -> bool:
        opset = model.opset("") or 17
        changed = False
        for g in list(model.graph.all_graphs()):
            for node in g:
                if node.domain != "" or node.op_type not in _GATES or node.graph is not g:
                    continue
                if _why_not(node) is not None:
                    continue
                x = node.inputs[0]
                if x.shape[1 if node.attr("layout", 0) else 0] > self.max_steps:
                    continue
                with g.inserting_before(node):
                    new = _unroll(node, opset)
                for old, nv in zip(node.outputs, new):
                    if nv is None or not (old.num_uses() or old.is_graph_output()):
                        continue
                    if nv.type is None:
                        nv.type = old.type
                    replace_value(old, nv)
                g.remove(node)
                changed = True
        return changed
