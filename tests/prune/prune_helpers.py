"""Shared helpers of the prune tests: text-form models with real weights, prune vs mask."""

from __future__ import annotations

import numpy as np
import onnx

import lepton_ir
from lepton_ir.reference import random_inputs, run_ort
from lepton_passes.prune import Plan, Prune, analyse, mask_plan, read_record


def const(name: str, shape, seed: int, scale: float = 0.5, positive: bool = False) -> str:
    """One `%name = const f32[...] [...]` line with seeded data."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(np.float32) * scale
    if positive:
        a = np.abs(a) + 0.5
    vals = ", ".join(repr(float(x)) for x in a.reshape(-1))
    dims = ",".join(str(d) for d in shape)
    return f"  %{name} = const f32[{dims}] [{vals}]"


def ints(name: str, values) -> str:
    return f"  %{name} = const i64[{len(values)}] [{', '.join(str(int(v)) for v in values)}]"


def model(sig: str, lines: list[str], ret: str, opset: int = 17) -> lepton_ir.Model:
    text = f'model <ir_version=8, opset={{"": {opset}}}>\ngraph g{sig} {{\n' + "\n".join(lines) + \
        f"\n  return {ret}\n}}\n"
    return lepton_ir.from_text(text)


def copy(m: lepton_ir.Model) -> lepton_ir.Model:
    return lepton_ir.load(lepton_ir.to_onnx(m))


def outputs(m: lepton_ir.Model, feeds) -> list[np.ndarray]:
    return run_ort(lepton_ir.to_onnx(m), feeds)


def prune_vs_mask(m: lepton_ir.Model, feeds=None, **opts) -> tuple[lepton_ir.Model, dict]:
    """Prune a copy with `Prune(**opts)`, mask the same channels in another copy, and assert both
    give the same outputs (1e-5) in ONNX Runtime; the pruned model passes onnx.checker."""
    opts.setdefault("multiple", 1)
    pruned, masked = copy(m), copy(m)
    Prune(**opts).run(pruned)
    pruned.verify()
    proto = lepton_ir.to_onnx(pruned)
    onnx.checker.check_model(proto, full_check=True)
    rec = read_record(pruned) or {"groups": [], "removed_channels": 0}
    dg = analyse(masked)
    gone = {(r["value"], r["axis"]): r["removed"] for grp in rec["groups"] for r in grp["slots"]}
    removed = set()
    for s in dg.slots.values():
        for i in gone.get((s.value.name, s.axis), []):
            removed.add(dg.root(int(s.ids[i])))
    mask_plan(masked, Plan(dg, removed, 0.0, 0.0))
    feeds = feeds or random_inputs(m, seed=1)
    a, b = outputs(masked, feeds), run_ort(proto, feeds)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)
    return pruned, rec


def dims(m: lepton_ir.Model, name: str) -> list:
    for v in m.graph.initializers.values():
        if v.name == name:
            return list(v.const.shape)
    for n in m.graph:
        for o in n.outputs:
            if o.name == name:
                return list(o.shape)
    raise KeyError(name)


def with_consumers(proto, seed: int = 0):
    """`proto` with a weight op appended to each float graph output (Conv 1x1 on rank 4, MatMul on
    rank 2/3): the random model's own channels then reach a consumer instead of the interface, so
    they become prunable. Returns an onnx.ModelProto."""
    from lepton_ir import DType, Node, TensorType, Shape

    m = lepton_ir.load(proto)
    lepton_ir.infer_types(m)
    g = m.graph
    rng = np.random.default_rng(seed)
    for k, v in enumerate(list(g.outputs)):
        if v.dtype != DType.FLOAT or v.shape is None or v.const is not None or v.producer() is None:
            continue
        d = list(v.shape)
        r = len(d)
        if r == 4 and isinstance(d[1], int) and d[1] > 1:
            w = g.constant(rng.standard_normal((2, d[1], 1, 1)).astype(np.float32), name=f"head_w{k}")
            n = Node("Conv", [v, w])
            n.outputs[0].type = TensorType(DType.FLOAT, Shape([d[0], 2, d[2], d[3]]))
        elif r in (2, 3) and isinstance(d[-1], int) and d[-1] > 1:
            w = g.constant(rng.standard_normal((d[-1], 2)).astype(np.float32), name=f"head_w{k}")
            n = Node("MatMul", [v, w])
            n.outputs[0].type = TensorType(DType.FLOAT, Shape(d[:-1] + [2]))
        else:
            continue
        g.append(n)
        n.outputs[0].name = g.fresh_name(f"head{k}")
        g.outputs[k] = n.outputs[0]
        for key in ("declared_output_type",):
            v.meta.pop(key, None)
    return lepton_ir.to_onnx(m)
