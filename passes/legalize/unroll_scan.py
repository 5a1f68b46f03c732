"""`unroll-scan`: Scan (opset >= 9) unrolled over a static sequence length into copies of its body.

TVM 0.27's ONNX importer has no Scan converter. When the scan length is known (static shapes, or
pinned with `--input-shape`), the op is exactly its body applied T times: step t reads slice t of
each scan input (Gather along `scan_input_axes`, from the end for reverse directions), the state
outputs of one step feed the next, and each scan output is the per-step results stacked along
`scan_output_axes` (in reverse order for `scan_output_directions` = 1). The final states are the
last step's. Ops with an unknown or zero length, longer than `max_steps`, or a negative output
axis on an output of unknown rank are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lepton_ir import Graph, Model, Node, Value
from lepton_ir.clone import clone_node

from ..base import Pass, register_pass
from ..util import infer_types_changed, replace_value
from .rnn import StepBuilder


def _length(n: Node, m: int, axes: list[int]) -> int | None:
    """The scan length T, when some scan input has a static size along its scan axis."""
    scans = n.inputs[len(n.inputs) - m:]
    for x, ax in zip(scans, axes):
        if x is None or x.shape is None:
            continue
        dims = list(x.shape.dims)
        ax = ax + len(dims) if ax < 0 else ax
        if 0 <= ax < len(dims) and isinstance(dims[ax], int):
            return int(dims[ax])
    return None


def _unroll(n: Node, body: Graph, steps: int, b: StepBuilder) -> list[Value] | None:
    """Emit the unrolled steps before `n`; the values replacing `n`'s outputs (None: cannot)."""
    m = int(n.attr("num_scan_inputs"))
    n_state = len(n.inputs) - m
    k_out = len(body.outputs) - n_state
    in_axes = list(n.attr("scan_input_axes", None) or [0] * m)
    in_dirs = list(n.attr("scan_input_directions", None) or [0] * m)
    out_axes = list(n.attr("scan_output_axes", None) or [0] * k_out)
    out_dirs = list(n.attr("scan_output_directions", None) or [0] * k_out)
    scans = list(n.inputs[n_state:])
    for j, x in enumerate(scans):
        if in_axes[j] < 0:
            if x is None or x.shape is None:
                return None
            in_axes[j] += len(x.shape.dims)
    for k in range(k_out):
        if out_axes[k] < 0:
            shape = body.outputs[n_state + k].shape
            if shape is None:
                return None
            out_axes[k] += len(shape.dims) + 1
    g = b.g
    # Body initializers become constants of the outer graph (shared by all steps).
    consts: dict[int, Value] = {}
    inputs = {id(v) for v in body.inputs}
    for name, v in body.initializers.items():
        if id(v) not in inputs:
            c = Value(None, v.type, const=v.const)
            c.name = g.fresh_name(name)
            g.add_initializer(c)
            consts[id(v)] = c
    states: list[Value] = list(n.inputs[:n_state])
    per_step: list[list[Value]] = [[] for _ in range(k_out)]
    for t in range(steps):
        vmap = dict(consts)
        for i in range(n_state):
            vmap[id(body.inputs[i])] = states[i]
        for j, x in enumerate(scans):
            idx = steps - 1 - t if in_dirs[j] else t
            vmap[id(body.inputs[n_state + j])] = b("Gather", x, b.c(np.array(idx, dtype=np.int64)), axis=in_axes[j])
        for bn in body:
            g.append(clone_node(bn, vmap))
        outs = [vmap.get(id(o), o) for o in body.outputs]
        states = outs[:n_state]
        for k in range(k_out):
            per_step[k].append(outs[n_state + k])
    results: list[Value] = list(states)
    for k in range(k_out):
        seq = per_step[k][::-1] if out_dirs[k] else per_step[k]
        axis = out_axes[k]
        parts = [b.unsq(v, axis) for v in seq]
        results.append(parts[0] if len(parts) == 1 else b("Concat", *parts, axis=axis))
    return results


@register_pass
@dataclass(frozen=True)
class UnrollScan(Pass):
    """Unroll Scan ops with a static scan length into copies of the body (TVM has no Scan)."""

    name = "unroll-scan"
    idempotent = True
    max_steps: int = field(default=256, metadata={"help": "leave Scans with longer sequences alone"})

    def run(self, model: Model) -> bool:
        from lepton_ir import infer_types

        opset = model.opset("") or 17
        if opset < 9 or not any(n.op_type == "Scan" and n.domain == "" for n in model.graph.all_nodes()):
            return False  # opset 8's Scan (batch axis, sequence_lens) is a different op
        # Refined types change the model even when no Scan is unrolled (too long, unknown length).
        refined = infer_types_changed(model)
        changed = False
        for g in list(model.graph.all_graphs()):
            for node in list(g):
                if node.op_type != "Scan" or node.domain != "" or node.graph is not g:
                    continue
                m = int(node.attr("num_scan_inputs"))
                axes = list(node.attr("scan_input_axes", None) or [0] * m)
                steps = _length(node, m, axes)
                if steps is None or steps == 0 or steps > self.max_steps:
                    continue
                b = StepBuilder(g, opset)
                with g.inserting_before(node):
                    new = _unroll(node, node.attr("body"), steps, b)
                if new is None:
                    continue
                for old, nv in zip(node.outputs, new):
                    if nv.type is None:
                        nv.type = old.type
                    replace_value(old, nv)
                g.remove(node)
                changed = True
        if changed:
            infer_types(model)
        return changed or refined
