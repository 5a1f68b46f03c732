"""Op patterns TVM compiles to wrong values: refused before any compile, with a one-line reason.

The capability oracle (capability.py) judges a node by running it on recorded sample values, and
the whole model is only checked by the oracle when TVM refuses it as a whole. Both miss wrong
values that the sample values do not exercise, or that TVM's importer produces silently (an
attribute it ignores, a run-time operand it replaces by a default). The ONNX conformance cases
found these (docs/partition.md, "Wrong values"); each rule here names the op, the attribute or
operand pattern, and what TVM does with it, and is as narrow as the failure it was found on, so
that the nodes TVM does get right stay on TVM. A node a rule matches goes to ONNX Runtime (or,
with `--no-fallback`, makes the error).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from lepton_ir import Graph, Model, Node, SequenceType, Value


def _const(v: Value | None) -> np.ndarray | None:
    """The value of a constant operand (an initializer or a Constant node's output), else None."""
    if v is None:
        return None
    if v.const is not None:
        return np.asarray(v.const.numpy())
    p = v.producer()
    if p is not None and p.op_type == "Constant" and p.attr("value") is not None:
        t = p.attr("value")
        return np.asarray(t.numpy() if hasattr(t, "numpy") else t)
    return None


def _text(a: Any) -> str:
    return a.decode() if isinstance(a, bytes) else str(a)


def _batchnorm(node: Node, graph: Graph) -> str | None:
    if node.attr("training_mode", 0):
        return ("training_mode=1: TVM's importer normalizes with the running statistics and returns them "
                "unchanged (ONNX uses the batch's)")
    return None


def _convtranspose(node: Node, graph: Graph) -> str | None:
    if node.attr("output_shape") is not None:
        return "output_shape: TVM's importer ignores it (the output is the size the strides give)"
    return None


def _nms(node: Node, graph: Graph) -> str | None:
    # (run-time iou/score thresholds: converters.convert_nms passes them to TVM's op)
    if len(node.inputs) > 2 and node.inputs[2] is not None and _const(node.inputs[2]) is None:
        return "a run-time max_output_boxes_per_class: TVM's importer replaces it by 0"
    return None


def _sequence_out(node: Node, graph: Graph) -> str | None:
    if any(isinstance(o.type, SequenceType) for o in node.outputs):
        return "a sequence output: TVM returns its tensors as a tuple, not a sequence"
    for sub in node.subgraphs():
        if any(isinstance(o.type, SequenceType) for o in sub.outputs):
            return "a branch with a sequence output: TVM returns its tensors, not a sequence"
    return None


def _resize(node: Node, graph: Graph) -> str | None:
    mode = _text(node.attr("mode", "nearest"))
    if node.attr("antialias", 0) and mode != "nearest":
        return f"antialias=1 ({mode}): TVM's importer ignores it"
    x = node.inputs[0]
    out = node.outputs[0]
    if x is None or x.shape is None or out.shape is None or not x.shape.is_static or not out.shape.is_static:
        return None
    scales = _const(node.inputs[2]) if len(node.inputs) > 2 else None
    scales = scales if scales is not None and scales.size else None
    axes = node.attr("axes")
    rank = len(x.shape.dims)
    axes = [a % rank for a in axes] if axes else list(range(rank))
    ins = [x.shape.dims[a] for a in axes]
    outs = [out.shape.dims[a] for a in axes]
    if scales is not None and mode != "nearest" and \
            any(not math.isclose(s, o / i, rel_tol=1e-6) for s, i, o in zip(scales.tolist(), ins, outs) if i):
        return (f"{mode} with scales whose sizes round ({scales.tolist()}): TVM's coordinates use the sizes' "
                "ratio, ONNX the scales")
    nearest = _text(node.attr("nearest_mode", "round_prefer_floor"))
    if mode == "nearest" and nearest.startswith("round") and any(i and o > i and o % i for i, o in zip(ins, outs)):
        return (f"nearest ({nearest}) upsampling by a non-integer ratio ({outs} from {ins}): TVM's float "
                "coordinates fall on the other side of the ties ONNX rounds")
    return None


#: op type -> rule (None: TVM gets it right, as far as the conformance cases show)
RULES: dict[str, Callable[[Node, Graph], str | None]] = {
    "BatchNormalization": _batchnorm,
    "ConvTranspose": _convtranspose,
    "NonMaxSuppression": _nms,
    "Resize": _resize,
    "If": _sequence_out,
    "Loop": _sequence_out,
    "SequenceConstruct": _sequence_out,
}


def known_wrong(node: Node, graph: Graph) -> str | None:
    """Why TVM computes `node` wrongly (one line naming the op), or None when no rule says so."""
    rule = RULES.get(node.op_type)
    why = rule(node, graph) if rule is not None else None
    return f"{node.op_type}: TVM computes it wrongly: {why}" if why else None


def known_wrong_nodes(model: Model) -> dict[int, str]:
    """id(node) -> reason, for the top-level nodes of `model` a rule refuses."""
    found = {}
    for n in model.graph:
        why = known_wrong(n, model.graph)
        if why:
            found[id(n)] = why
    return found
