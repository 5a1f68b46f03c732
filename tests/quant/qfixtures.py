"""Small onnx.helper models with random weights for the quantization tests (imported by name:
pytest puts this folder on sys.path)."""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

import lepton_ir

os.environ.setdefault("LEPTON_NO_PROGRESS", "1")


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", inputs, outputs, [nh.from_array(v, k) for k, v in inits.items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def conv_relu_proto(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,12,12] -> Conv(8, 3x3, bias) -> Relu -> y."""
    rng = np.random.default_rng(seed)
    inits = {"W": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
             "B": (rng.standard_normal(8) * 0.1).astype(np.float32)}
    nodes = [h.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             h.make_node("Relu", ["c"], ["y"], name="relu")]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 12, 12])],
                  [h.make_tensor_value_info("y", T.FLOAT, [1, 8, 12, 12])], inits)


def matmul_proto(seed: int = 0) -> onnx.ModelProto:
    """x[4,16] -> MatMul(W[16,8]) -> Add(b) -> y."""
    rng = np.random.default_rng(seed)
    inits = {"W": (rng.standard_normal((16, 8)) * 0.2).astype(np.float32),
             "b": (rng.standard_normal(8) * 0.1).astype(np.float32)}
    nodes = [h.make_node("MatMul", ["x", "W"], ["m"], name="matmul"), h.make_node("Add", ["m", "b"], ["y"], name="bias")]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [4, 16])],
                  [h.make_tensor_value_info("y", T.FLOAT, [4, 8])], inits)


def add_join_proto(seed: int = 0) -> onnx.ModelProto:
    """Two Conv branches joined by Add, then MaxPool and a last Conv: the Add and the pool run
    quantized because their inputs are quantized ops' outputs."""
    rng = np.random.default_rng(seed)
    inits = {f"W{i}": (rng.standard_normal((4, 4 if i == 3 else 3, 3, 3)) * 0.3).astype(np.float32) for i in (1, 2, 3)}
    nodes = [h.make_node("Conv", ["x", "W1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             h.make_node("Conv", ["x", "W2"], ["b"], pads=[1, 1, 1, 1], name="conv2"),
             h.make_node("Add", ["a", "b"], ["s"], name="join"),
             h.make_node("MaxPool", ["s"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             h.make_node("Conv", ["p", "W3"], ["y"], pads=[1, 1, 1, 1], name="conv3")]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                  [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 4, 4])], inits)


def cnn_proto(seed: int = 0) -> onnx.ModelProto:
    """Conv-Relu-Conv-Relu-MaxPool-Flatten-Gemm-Sigmoid: a small classifier-like net."""
    rng = np.random.default_rng(seed)
    inits = {"W1": (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32),
             "B1": (rng.standard_normal(8) * 0.1).astype(np.float32),
             "W2": (rng.standard_normal((8, 8, 3, 3)) * 0.15).astype(np.float32),
             "B2": (rng.standard_normal(8) * 0.1).astype(np.float32),
             "G": (rng.standard_normal((5, 8 * 4 * 4)) * 0.1).astype(np.float32),
             "Gb": (rng.standard_normal(5) * 0.1).astype(np.float32)}
    nodes = [h.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             h.make_node("Relu", ["c2"], ["r2"]),
             h.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Flatten", ["p"], ["f"]),
             h.make_node("Gemm", ["f", "G", "Gb"], ["logits"], transB=1, name="fc"),
             h.make_node("Sigmoid", ["logits"], ["y"])]
    return _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])],
                  [h.make_tensor_value_info("y", T.FLOAT, [1, 5])], inits)


def load_proto(proto: onnx.ModelProto, tmp_path, name: str = "m.onnx") -> lepton_ir.Model:
    p = tmp_path / name
    onnx.save(proto, str(p))
    return lepton_ir.load(str(p))


def calib_file(tmp_path, arrays: dict[str, np.ndarray], name: str = "calib.npz") -> str:
    p = tmp_path / name
    np.savez(p, **arrays)
    return str(p)


