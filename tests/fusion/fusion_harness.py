"""Test helpers for the fusion rules: build small models, fuse, lower, compare against ORT.

Every positive check runs the original model in ONNX Runtime, fuses it, and compares
(rtol 1e-4, atol 1e-5) against: the fused model under `lepton_ir.evaluate` (the reference
implementations of the ai.lepton ops), the fused model lowered with `lower-fused-to-onnx` under
ONNX Runtime, and lowered with `lower-fused-to-standard` under ONNX Runtime (which must leave only
default-domain ops).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

import lepton_ir
# Unoptimized sessions: ORT's own fusions would hide whether our rewrite or theirs produced a number.
from lepton_ir.reference import run_ort
from lepton_passes.rewrite import RewriteStats

DOMAIN = "ai.lepton"


# lepton_passes.fusion is imported on first use, not at collection: importing it registers `fuse`,
# and tests/harness parametrizes over the registry at collection time, where `fuse` (whose output
# ORT cannot run before lowering) needs its EXCLUDED entry first. See docs/fusion.md.
def fuse_with_report(model: lepton_ir.Model, debug: bool = True) -> RewriteStats:
    from lepton_passes.fusion import fuse_with_report as impl

    return impl(model, debug=debug)


def lower_fused(model: lepton_ir.Model, *, ort: bool) -> bool:
    from lepton_passes.fusion.lower import lower_fused as impl

    return impl(model, ort=ort)


def get_pass(name: str):
    import lepton_passes.fusion  # noqa: F401  (registers the fusion passes)
    from lepton_passes.base import get_pass as impl

    return impl(name)

RTOL, ATOL = 1e-4, 1e-5
F32 = onnx.TensorProto.FLOAT


def make_model(nodes: Sequence[onnx.NodeProto], inputs: Mapping[str, tuple[int, Sequence[Any] | None]],
               outputs: Sequence[str], inits: Mapping[str, np.ndarray] | None = None, opset: int = 17,
               extra_opsets: Mapping[str, int] | None = None, out_type: int = F32) -> onnx.ModelProto:
    """A model from nodes; `inputs` maps name -> (elem type, shape); outputs have `out_type`."""
    g = helper.make_graph(
        list(nodes), "t",
        [helper.make_tensor_value_info(k, t, s) for k, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(o, out_type, None) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    return helper.make_model(g, opset_imports=imports, ir_version=8)


def node(op: str, ins: Sequence[str], outs: Sequence[str] | str, domain: str = "", **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, list(ins), [outs] if isinstance(outs, str) else list(outs), domain=domain, **attrs)


def rand(*shape: int, seed: int = 0, positive: bool = False) -> np.ndarray:
    r = np.random.default_rng(seed + 7 * len(shape) + sum(shape))
    a = r.standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


def assert_close(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], what: str) -> None:
    assert len(ref) == len(got), what
    for r, g in zip(ref, got):
        assert r.shape == g.shape, f"{what}: shape {g.shape} != {r.shape}"
        np.testing.assert_allclose(g, r, rtol=RTOL, atol=ATOL, err_msg=what)


def copy(model: lepton_ir.Model) -> lepton_ir.Model:
    return lepton_ir.load(lepton_ir.to_onnx(model))


def ops_of(model: lepton_ir.Model) -> list[str]:
    return [n.qualified_op for n in model.graph.all_nodes()]


def fuse_and_check(proto: onnx.ModelProto, feed: Mapping[str, np.ndarray], *, applied: str | Iterable[str],
                   ops: Iterable[str] = (), absent: Iterable[str] = (), reference: bool = True,
                   ) -> tuple[lepton_ir.Model, RewriteStats]:
    """Fuse `proto`; assert the rules in `applied` fired (prefix match), the fused graph has `ops` and
    none of `absent`, and that outputs agree everywhere (see the module docstring)."""
    ref = run_ort(proto, feed)
    model = lepton_ir.load(proto)
    stats = fuse_with_report(model)
    names = [applied] if isinstance(applied, str) else list(applied)
    for want in names:
        assert any(k.startswith(want) for k in stats.applied), \
            f"{want} did not fire: {stats.applied} {stats.near_misses}"
    model.verify()
    have = ops_of(model)
    for o in ops:
        assert o in have, f"{o} not in fused graph {have}"
    for o in absent:
        assert o not in have, f"{o} still in fused graph {have}"
    out_names = [o.name for o in model.graph.outputs]
    if reference:  # off only where onnx's reference evaluator itself is wrong (see the caller)
        ev = lepton_ir.evaluate(model, feed)
        assert_close(ref, [ev[n] for n in out_names], "lepton_ir.evaluate on the fused model")
    lowered = copy(model)
    lower_fused(lowered, ort=True)
    lowered.verify()
    assert not any(n.domain == DOMAIN for n in lowered.graph.all_nodes())
    assert_close(ref, run_ort(lowered, feed), "ORT on the model lowered by lower-fused-to-onnx")
    std = copy(model)
    lower_fused(std, ort=False)
    assert all(n.domain == "" for n in std.graph.all_nodes()), ops_of(std)
    assert_close(ref, run_ort(std, feed), "ORT on the model lowered by lower-fused-to-standard")
    return model, stats


def assert_not_fused(proto: onnx.ModelProto, feed: Mapping[str, np.ndarray], rule: str, reason: str | None = None,
                     ) -> tuple[lepton_ir.Model, RewriteStats]:
    """Fuse; assert no rule whose name starts with `rule` fired (and, if given, that a near miss of
    it mentions `reason`), and that outputs are unchanged anyway."""
    ref = run_ort(proto, feed)
    model = lepton_ir.load(proto)
    stats = fuse_with_report(model)
    fired = [k for k in stats.applied if k.startswith(rule)]
    assert not fired, f"{fired} fired but must not: {stats.applied}"
    if reason is not None:
        misses = [str(m) for m in stats.near_misses if m.rule.startswith(rule)]
        assert any(reason in m for m in misses), f"no near miss of {rule} with {reason!r}: {misses}"
    model.verify()
    lowered = copy(model)
    lower_fused(lowered, ort=True)
    assert_close(ref, run_ort(lowered, feed), "ORT on the (unfused) lowered model")
    return model, stats
