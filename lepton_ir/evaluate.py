"""Reference evaluation of a model or graph, on onnx's reference implementation.

Used for constant folding and as a second reference beside ONNX Runtime. It runs the exported
ONNX through `onnx.reference.ReferenceEvaluator`, so lepton-domain ops need a registered Python
implementation (`register_reference_op`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .errors import UnsupportedError
from .ir import Graph, Model

_CUSTOM_OPS: dict[tuple[str, str], type] = {}


def register_reference_op(domain: str, op_type: str, impl: type) -> None:
    """Register an `onnx.reference.op_run.OpRun` subclass for a non-standard op."""
    _CUSTOM_OPS[(domain, op_type)] = impl


def evaluate(model_or_graph: Model | Graph, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Run the model on `inputs` ({input name: array}); return {output name: array}."""
    from onnx.reference import ReferenceEvaluator

    from .onnx_io import to_onnx

    model = model_or_graph if isinstance(model_or_graph, Model) else _wrap(model_or_graph)
    proto = to_onnx(model)
    needed = {(n.domain, n.op_type) for n in model.graph.all_nodes() if n.domain not in ("", "ai.onnx")}
    needed -= {f[:2] for f in model.functions}
    impls = [_CUSTOM_OPS[k] for k in needed if k in _CUSTOM_OPS]
    missing = sorted(f"{d}::{o}" for d, o in needed if (d, o) not in _CUSTOM_OPS)
    if missing:
        raise UnsupportedError(f"the reference evaluator has no implementation of {', '.join(missing)}")
    try:
        ev = ReferenceEvaluator(proto, new_ops=impls or None)
    except Exception as e:
        raise UnsupportedError(f"the reference evaluator cannot run this model: {e}") from None
    names = [o.name for o in proto.graph.output]
    results = ev.run(None, dict(inputs))
    return dict(zip(names, results))


def _wrap(graph: Graph) -> Model:
    """A graph on its own: evaluate under the latest default-domain opset onnx knows."""
    import onnx

    domains = {n.domain for n in graph.all_nodes()}
    ops = {d: 1 for d in domains if d not in ("", "ai.onnx")}
    ops[""] = onnx.defs.onnx_opset_version()
    m = Model(graph, opset_imports=ops)
    return m
