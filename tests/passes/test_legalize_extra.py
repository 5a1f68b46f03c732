"""`legalize-extra` (expand-new-function-ops, unroll-scan and the single-op legalize-* rewrites) on
the conformance cases of the ops it rewrites: the op must be gone and ONNX Runtime running the
rewritten model must give the case's expected outputs.

Shape-determining inputs (CumProd's axis, OneHot's depth, Pad's pads) are bound to the case's
values first, as `lepton.onnx_backend` does for TVM; data inputs (OneHot's values, Pad's
constant_value) stay inputs, so the rewrites are checked on run-time data.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import lepton_ir
from lepton_ir.reference import run_ort
from lepton.onnx_backend import binding_text
from lepton_ir.analysis import shape_determining_inputs
from lepton_ir.testing.corpus import conformance_cases, conformance_tolerances
from lepton_passes.base import get_pass
from lepton_passes.legalize.expand_new_ops import wants_body

REWRITTEN = {"Scan", "CausalConvWithState", "LinearAttention", "LpNormalization", "CumProd", "OneHot",
             "QLinearMatMul", "QLinearConv", "Col2Im", "EyeLike"}
PATTERN = re.compile(r"test_(scan9_|causal_conv_with_state_|linear_attention_|"
                     r"rms_normalization_.*(axis0|negative_(2|3|4)\b)|pow_types_|l[12]normalization_|cumprod_|"
                     r"onehot_|constant_pad|qlinearmatmul_|qlinearconv|bitshift_|isinf_|"
                     r"resize_.*(axes|not_larger|not_smaller)|col2im|eyelike_|reduce_m(ax|in)_(bool|empty)|spacetodepth)")
CASES = [c for c in conformance_cases() if PATTERN.match(c[0])]


def test_cases_found():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_conformance_case(case):
    name, model, inputs, outputs = case
    m = lepton_ir.load(model)
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    feeds = dict(zip(names, inputs))
    bound = [n for n in shape_determining_inputs(m.graph) if np.ndim(feeds[n]) <= 1]
    if bound:
        get_pass("bind-inputs")(values=tuple(binding_text(n, feeds[n]) for n in bound)).run(m)
        get_pass("canonicalize")().run(m)
    get_pass("legalize-extra")().run(m)
    m.verify()
    left = [n.op_type for n in m.graph.all_nodes() if n.op_type in REWRITTEN
            or (n.op_type == "RMSNormalization" and wants_body(n))
            or (n.op_type == "Pow" and n.inputs[0].dtype != n.inputs[1].dtype)]
    assert not left
    if name.startswith("test_constant_pad"):
        assert any(n.op_type == "Where" for n in m.graph)  # the value stayed a run-time input
        assert "value" in [v.name for v in m.graph.inputs]
    run_feeds = {k: v for k, v in feeds.items() if k not in bound}
    try:
        got = run_ort(m, run_feeds, optimize=True)
    except Exception:  # ORT lacks a kernel (bfloat16 Where): onnx's reference evaluator instead
        got = list(lepton_ir.evaluate(m, run_feeds).values())
    rtol, atol = conformance_tolerances().get(name, (1e-3, 1e-7))
    for g, r in zip(got, outputs):
        r = np.asarray(r)
        assert g.shape == r.shape and g.dtype == r.dtype
        if r.dtype.kind in "iub":
            np.testing.assert_array_equal(g, r)
        else:
            np.testing.assert_allclose(g, r, rtol=max(rtol, 1e-5), atol=max(atol, 1e-6))
