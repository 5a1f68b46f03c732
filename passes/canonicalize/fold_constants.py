"""`fold-constants`: evaluate nodes whose inputs are all constants, with onnx's reference evaluator."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx

from lepton_ir import ArrayTensor, DType, Graph, Model, Node, TensorType, Value
from lepton_ir.onnx_io import _Exporter

from ..base import Pass, register_pass
from ..util import constant_tensor, replace_value
from .cse import NONDETERMINISTIC

# Ops never folded: no deterministic value, or folding them would not pay / is not meaningful.
NEVER_FOLD = NONDETERMINISTIC | {"If", "Loop", "Scan", "SequenceMap", "Optional", "OptionalGetElement",
                                 "OptionalHasElement", "SequenceConstruct", "SequenceEmpty", "SequenceInsert",
                                 "SequenceErase", "SequenceAt", "SequenceLength", "SplitToSequence",
                                 "ConcatFromSequence", "QuantizeLinear", "DequantizeLinear"}


def _axes(node: Node, arrays: list, k: int) -> list[int] | None:
    a = node.attr("axes")
    if a is None and len(arrays) > k and arrays[k] is not None:
        a = np.asarray(arrays[k]).ravel().tolist()
    return None if a is None else [int(v) for v in a]


def _fast(node: Node, a: list[np.ndarray | None]) -> np.ndarray | None:
    """numpy for the ops shape chains and weight transforms are made of (a 1000x speed-up over
    building a ReferenceEvaluator per node); None means: use the reference evaluator."""
    op = node.op_type
    x = a[0] if a else None
    if x is None or x.dtype == object:
        return None
    if op in ("Add", "Sub", "Mul") and len(a) == 2 and a[1] is not None and a[1].dtype == x.dtype:
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](x, a[1])
    if op == "Div" and len(a) == 2 and a[1] is not None and a[1].dtype == x.dtype and x.dtype.kind == "f":
        return np.divide(x, a[1])  # integer Div truncates in ONNX, floors in numpy: reference handles it
    if op == "Neg":
        return np.negative(x)
    if op == "Sqrt" and x.dtype.kind == "f":
        return np.sqrt(x)
    if op == "Identity":
        return x
    if op == "Transpose":
        perm = node.attr("perm")
        return np.ascontiguousarray(np.transpose(x, perm))
    if op == "Unsqueeze":
        axes = _axes(node, a, 1)
        if axes is None:
            return None
        r = x.ndim + len(axes)
        out = x
        for ax in sorted(v % r for v in axes):
            out = np.expand_dims(out, ax)
        return out
    if op == "Squeeze":
        axes = _axes(node, a, 1)
        return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(v % x.ndim for v in axes))
    if op == "Concat" and all(v is not None and v.dtype == x.dtype for v in a):
        return np.concatenate(a, axis=node.attr("axis"))
    if op == "Gather" and len(a) == 2 and a[1] is not None and a[1].dtype.kind == "i":
        axis = node.attr("axis", 0) % max(1, x.ndim)
        idx = np.where(a[1] < 0, a[1] + x.shape[axis], a[1])
        return np.take(x, idx, axis=axis)
    return None


def _evaluate_node(node: Node, arrays: list[np.ndarray | None], opset: int) -> list[np.ndarray] | None:
    """Run one node through onnx.reference; None if it cannot be evaluated."""
    if len(node.outputs) == 1 and not node.attrs.keys() - {"perm", "axes", "axis"}:
        try:
            fast = _fast(node, arrays)
        except Exception:  # e.g. out-of-range indices: let the reference evaluator decide
            fast = None
        if fast is not None:
            return [fast]
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if a is not None else "" for k, a in enumerate(arrays)]
    outs = [f"o{k}" if (o.num_uses() or o.is_graph_output()) else "" for k, o in enumerate(node.outputs)]
    if not any(outs):
        return None
    exp = _Exporter(defer=None)
    attrs = [exp.attr(a, None) for a in node.attrs.values()]  # type: ignore[arg-type]
    p = onnx.NodeProto()
    p.op_type = node.op_type
    p.input.extend(names)
    p.output.extend(outs)
    p.attribute.extend(attrs)
    feeds = {n: a for n, a in zip(names, arrays) if n}
    graph = onnx.helper.make_graph(
        [p], "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
         for n, a in feeds.items()],
        [onnx.helper.make_empty_tensor_value_info(o) for o in outs if o])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = ReferenceEvaluator(model).run(None, feeds)
    except Exception:
        return None
    it = iter(res)
    return [next(it) if o else None for o in outs]  # type: ignore[misc]


@register_pass
@dataclass(frozen=True)
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constants; turn Constant nodes into initializers."""

    name = "fold-constants"
    idempotent = True
    max_elements: int = field(default=1 << 20, metadata={
        "help": "skip a fold that would create a constant with more elements than this, unless it is "
                "no larger than its inputs (weight transforms never grow a model)"})

    def run(self, model: Model) -> bool:
        opset = model.opset("") or 17
        changed = False
        for g in list(model.graph.all_graphs()):
            changed |= self._fold_graph(g, opset)
        return changed

    def _fold_graph(self, g: Graph, opset: int) -> bool:
        changed = False
        for node in g:
            if node.domain != "" or node.op_type in NEVER_FOLD or node.subgraphs():
                continue
            if node.op_type == "Constant":
                t = constant_tensor(node.outputs[0])
                if t is None:
                    continue
                self._replace(g, node, [t.numpy()], [t.dtype])
                changed = True
                continue
            ins = node.inputs
            if not any(v is not None for v in ins):
                continue  # source ops (e.g. RandomNormal, EyeLike w/o input) are not folded
            tensors = [constant_tensor(v) if v is not None else None for v in ins]
            if any(t is None for t, v in zip(tensors, ins) if v is not None):
                continue
            in_elems = sum(t.size for t in tensors if t is not None)
            # Predict output size from types where known, to avoid evaluating huge folds at all.
            for o in node.outputs:
                n = o.shape.numel() if isinstance(o.type, TensorType) and o.shape is not None else None
                if n is not None and n > self.max_elements and n > in_elems:
                    break
            else:
                arrays = [t.numpy() if t is not None else None for t in tensors]
                res = _evaluate_node(node, arrays, opset)
                if res is None:
                    continue
                out_elems = max((np.asarray(r).size for r in res if r is not None), default=0)
                if out_elems > self.max_elements and out_elems > in_elems:
                    continue
                dtypes = [o.dtype for o in node.outputs]
                self._replace(g, node, res, dtypes)
                changed = True
        return changed

    @staticmethod
    def _replace(g: Graph, node: Node, results: list, dtypes: list) -> None:
        for o, r, dt in zip(node.outputs, results, dtypes):
            if r is None or not (o.num_uses() or o.is_graph_output()):
                continue
            arr = np.asarray(r)
            if dt is not None and dt != DType.UNDEFINED and dt != DType.STRING and arr.dtype != dt.numpy():
                arr = arr.astype(dt.numpy())
            name = o.name or None
            if name and o.is_graph_output():
                name = None  # the output keeps its name on the Identity replace_value inserts
            if name:
                o.name = None
                v = Value(name, const=ArrayTensor(arr))
                g.add_initializer(v)
            else:
                v = g.constant(arr, name="folded")
            replace_value(o, v)
        g.remove(node)
