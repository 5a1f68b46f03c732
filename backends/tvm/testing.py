"""Small ONNX models built with ``onnx.helper`` (random weights) for tests and benchmarks."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Builder:
    """Accumulates nodes/initializers with unique names; keeps the model builders short."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, arr: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, bias: bool = True) -> str:
        # He-style scaling keeps activations O(1) through deep stacks so tolerances stay meaningful.
        w = (self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        ins = [x, self.const(w)]
        if bias:
            ins.append(self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32), "b"))
        p = k // 2
        return self.op("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[p, p, p, p])

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        scale = self.const((1 + 0.1 * r.standard_normal(c)).astype(np.float32), "s")
        b = self.const((0.1 * r.standard_normal(c)).astype(np.float32), "b")
        mean = self.const((0.1 * r.standard_normal(c)).astype(np.float32), "m")
        var = self.const((1 + 0.1 * np.abs(r.standard_normal(c))).astype(np.float32), "v")
        return self.op("BatchNormalization", [x, scale, b, mean, var], epsilon=1e-5)

    def model(self, inputs, outputs, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lepton-tests")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def conv_relu_pool_gemm(batch: int = 1, size: int = 16, classes: int = 10) -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    b = _Builder(1)
    x = b.conv("x", 3, 8, 3)
    x = b.op("Relu", [x])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Relu", [b.conv(x, 8, 16, 3)])
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    w = b.const((b.rng.standard_normal((classes, 16)) * 0.3).astype(np.float32))
    bias = b.const((b.rng.standard_normal(classes) * 0.1).astype(np.float32), "b")
    y = b.op("Gemm", [x, w, bias], transB=1)
    b.nodes[-1].output[0] = "logits"
    return b.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        "conv_relu_pool_gemm",
    )


def matmul_softmax(m: int = 8, k: int = 32, n: int = 16) -> onnx.ModelProto:
    """Two inputs: ``a`` [m,k] @ const [k,n] + ``b`` [m,n] -> Softmax(axis=-1) -> ``probs``."""
    bld = _Builder(2)
    w = bld.const((bld.rng.standard_normal((k, n)) * 0.2).astype(np.float32))
    y = bld.op("MatMul", ["a", w])
    y = bld.op("Add", [y, "b"])
    y = bld.op("Softmax", [y], axis=-1)
    bld.nodes[-1].output[0] = "probs"
    return bld.model(
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [m, n]),
        ],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [m, n])],
        "matmul_softmax",
    )


def symbolic_batch_mlp(features: int = 12, hidden: int = 24, out: int = 5) -> onnx.ModelProto:
    """An MLP whose input batch dimension is the symbol ``N`` (pin it with ``input_shapes``)."""
    b = _Builder(3)
    w1 = b.const((b.rng.standard_normal((features, hidden)) * 0.3).astype(np.float32))
    b1 = b.const((b.rng.standard_normal(hidden) * 0.1).astype(np.float32), "b")
    w2 = b.const((b.rng.standard_normal((hidden, out)) * 0.3).astype(np.float32))
    h = b.op("Tanh", [b.op("Add", [b.op("MatMul", ["x", w1]), b1])])
    y = b.op("MatMul", [h, w2])
    b.nodes[-1].output[0] = "y"
    return b.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out])],
        "symbolic_batch_mlp",
    )


def resnet18_like(batch: int = 1, size: int = 224, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """ResNet-18 topology (conv/BN/ReLU, 4 stages x 2 basic blocks, GAP, FC) with random weights."""
    b = _Builder(seed)
    x = b.op("Relu", [b.bn(b.conv("input", 3, 64, 7, stride=2, bias=False), 64)])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, cout in enumerate([64, 128, 256, 512]):
        for block in range(2):
            stride = 2 if (stage > 0 and block == 0) else 1
            y = b.op("Relu", [b.bn(b.conv(x, cin, cout, 3, stride, bias=False), cout)])
            y = b.bn(b.conv(y, cout, cout, 3, 1, bias=False), cout)
            if stride != 1 or cin != cout:
                short = b.bn(b.conv(x, cin, cout, 1, stride, bias=False), cout)
            else:
                short = x
            x = b.op("Relu", [b.op("Add", [y, short])])
            cin = cout
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    w = b.const((b.rng.standard_normal((classes, 512)) * 0.05).astype(np.float32))
    bias = b.const(np.zeros(classes, np.float32), "b")
    b.op("Gemm", [x, w, bias], transB=1)
    b.nodes[-1].output[0] = "output"
    return b.model(
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, classes])],
        "resnet18_like",
    )


def mobilenetv2_like(batch: int = 1, size: int = 224, classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """MobileNetV2 topology (inverted residuals: 1x1 expand, 3x3 depthwise, 1x1 project; ReLU6 as
    Clip; BN after every conv) with random weights."""
    b = _Builder(seed)

    def clip6(x: str) -> str:
        lo = b.const(np.array(0.0, np.float32), "lo")
        hi = b.const(np.array(6.0, np.float32), "hi")
        return b.op("Clip", [x, lo, hi])

    def dwconv(x: str, c: int, stride: int) -> str:
        w = (b.rng.standard_normal((c, 1, 3, 3)) * np.sqrt(2.0 / 9)).astype(np.float32)
        return b.op("Conv", [x, b.const(w)], kernel_shape=[3, 3], strides=[stride, stride], pads=[1, 1, 1, 1],
                    group=c)

    x = clip6(b.bn(b.conv("input", 3, 32, 3, stride=2, bias=False), 32))
    cin = 32
    # (expansion t, channels c, repeats n, first stride s), as in the paper
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x
            if t != 1:
                y = clip6(b.bn(b.conv(y, cin, hidden, 1, bias=False), hidden))
            y = clip6(b.bn(dwconv(y, hidden, stride), hidden))
            y = b.bn(b.conv(y, hidden, c, 1, bias=False), c)
            x = b.op("Add", [x, y]) if stride == 1 and cin == c else y
            cin = c
    x = clip6(b.bn(b.conv(x, cin, 1280, 1, bias=False), 1280))
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    w = b.const((b.rng.standard_normal((classes, 1280)) * 0.03).astype(np.float32))
    bias = b.const(np.zeros(classes, np.float32), "b")
    b.op("Gemm", [x, w, bias], transB=1)
    b.nodes[-1].output[0] = "output"
    return b.model(
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, classes])],
        "mobilenetv2_like",
    )


def depthwise_conv_block(channels: int = 24, height: int = 20, width: int = 19, stride: int = 1,
                         multiplier: int = 1, seed: int = 0) -> onnx.ModelProto:
    """Depthwise 3x3 Conv (``group == channels``, bias) -> BatchNormalization -> Clip(0, 6).

    The MobileNet building block whose PrimFunc ``DepthwiseConv`` schedules. The default width (19)
    is neither a multiple of the vector width nor even, so tails and the stride-2 phase split are
    exercised; ``multiplier > 1`` gives ``channels * multiplier`` outputs (depth multiplier).
    """
    b = _Builder(seed)
    cout = channels * multiplier
    w = (b.rng.standard_normal((cout, 1, 3, 3)) * np.sqrt(2.0 / 9)).astype(np.float32)
    bias = b.const((b.rng.standard_normal(cout) * 0.1).astype(np.float32), "b")
    y = b.op("Conv", ["x", b.const(w), bias], kernel_shape=[3, 3], strides=[stride, stride], pads=[1, 1, 1, 1],
             group=channels)
    lo = b.const(np.array(0.0, np.float32), "lo")
    hi = b.const(np.array(6.0, np.float32), "hi")
    b.op("Clip", [b.bn(y, cout), lo, hi])
    b.nodes[-1].output[0] = "y"
    oh, ow = (height - 1) // stride + 1, (width - 1) // stride + 1
    return b.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, height, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, oh, ow])],
        "depthwise_conv_block",
    )


def squeeze_excite_block(channels: int = 384, squeezed: int = 96, size: int = 6, seed: int = 0) -> onnx.ModelProto:
    """PP-OCR's squeeze-excite: GAP -> 1x1 Conv -> ReLU -> 1x1 Conv -> HardSigmoid -> Mul with the input.

    Its 1x1 convs on a 1x1 map (``squeezed`` -> ``channels``, reduction not a multiple of 64) are
    the PrimFuncs ``dlight.cpu.GEMV`` scheduled into minutes of LLVM time (ppocr-det).
    """
    b = _Builder(seed)
    p = b.op("GlobalAveragePool", ["x"])
    h = b.op("Relu", [b.conv(p, channels, squeezed, 1)])
    g = b.op("HardSigmoid", [b.conv(h, squeezed, channels, 1)], alpha=1.0 / 6, beta=0.5)
    b.op("Mul", ["x", g])
    b.nodes[-1].output[0] = "y"
    return b.model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size + 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, size, size + 4])],
        "squeeze_excite_block",
    )


def unsupported_op_chain() -> onnx.ModelProto:
    """x[2,3,3] -> Relu -> Sigmoid -> Det -> Neg -> Abs: TVM's ONNX importer has no Det, so the
    TVM backends run it on ONNX Runtime between two TVM stages (tests of the fallback)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["b"]),
             helper.make_node("Det", ["b"], ["c"]), helper.make_node("Neg", ["c"], ["d"]),
             helper.make_node("Abs", ["d"], ["y"])]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def ort_run(model: onnx.ModelProto, inputs: dict[str, np.ndarray], threads: int = 2) -> dict[str, np.ndarray]:
    """Run ``model`` in ONNX Runtime (CPU, its graph optimizations on, as users run it) and return
    ``{output name: array}``."""
    from lepton_ir.reference import ort_session, run_ort

    sess = ort_session(model, optimize=True, threads=threads)
    return dict(zip([o.name for o in sess.get_outputs()], run_ort(sess, inputs)))
