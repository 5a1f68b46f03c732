"""Which kernels ONNX Runtime really runs for a model (after its graph optimizations).

ORT fuses QDQ groups into integer kernels (QLinearConv, QLinearMatMul, QGemm, ...) at session
creation; asking it to save the optimized model is the one reliable way to see whether it did.
"""

from __future__ import annotations

import collections
import os
import tempfile


def ort_optimized_op_counts(model_bytes: bytes, threads: int = 1) -> dict[str, int]:
    """Op-type counts of the model ONNX Runtime (CPU, all optimizations) actually executes."""
    import lepton_ir
    from lepton_ir.reference import ort_session, session_options

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "optimized.onnx")
        so = session_options(optimize=True, threads=threads)
        so.optimized_model_filepath = path  # this helper inspects what ONNX Runtime does with a model
        ort_session(model_bytes, options=so)
        m = lepton_ir.load(path)
        return dict(collections.Counter(n.op_type for n in m.graph))


INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger", "QLinearAdd",
                   "QLinearMul", "QLinearConcat", "QLinearSigmoid", "QLinearAveragePool",
                   "QLinearGlobalAveragePool", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                   "QLinearLeakyRelu", "QLinearSoftmax", "QLinearConvTranspose", "NhwcQLinearConv")


def integer_kernel_count(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k in INTEGER_KERNELS)
