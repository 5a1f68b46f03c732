"""Property tests of prune on the harness's random models (biased toward Conv/Gemm/residual/concat):
removing channels physically computes what masking them to zero computes (1e-5, ONNX Runtime);
ratio=0 is the identity; the result verifies, passes onnx.checker and runs."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings

import lepton_ir
from lepton_ir.reference import run_ort
from lepton_ir.testing.strategies import inputs_for, onnx_models, pattern_models
from lepton_passes.prune import Prune
from lepton_passes.testing import check_pass

from prune_helpers import prune_vs_mask, with_consumers

BIAS = {"Conv": 8.0, "Gemm": 4.0, "MatMul": 4.0, "Add": 4.0, "Mul": 2.0, "Concat": 4.0, "Split": 2.0,
        "BatchNormalization": 3.0, "Relu": 2.0, "Flatten": 2.0, "Reshape": 1.0, "MaxPool": 1.0,
        "GlobalAveragePool": 1.0, "Transpose": 1.0}
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def _check(proto, ratio=0.5, importance="l1"):
    proto = with_consumers(proto)
    m = lepton_ir.load(proto)
    feeds = inputs_for(proto, 0)
    prune_vs_mask(m, feeds, ratio=ratio, importance=importance, prune_layernorm=False)


@settings(max_examples=40, **SETTINGS)
@given(onnx_models(bias=BIAS, min_nodes=3, max_nodes=16))
def test_removal_equals_masking_random(proto):
    _check(proto)


@settings(max_examples=15, **SETTINGS)
@given(pattern_models("conv-bn", bias={"Conv": 6.0, "Add": 3.0, "Concat": 3.0}))
def test_removal_equals_masking_conv_bn(proto):
    _check(proto, ratio=0.4)


@settings(max_examples=15, **SETTINGS)
@given(pattern_models("matmul-add", bias={"Gemm": 4.0, "Flatten": 2.0}))
def test_removal_equals_masking_matmul(proto):
    _check(proto, ratio=0.5, importance="random")


@settings(max_examples=10, **SETTINGS)
@given(pattern_models("gelu-erf", bias={"MatMul": 4.0}))
def test_removal_equals_masking_ffn(proto):
    _check(proto, ratio=0.3)


@settings(max_examples=20, **SETTINGS)
@given(onnx_models(bias=BIAS, max_nodes=10))
def test_ratio_zero_is_identity(proto):
    m = lepton_ir.load(proto)
    lepton_ir.infer_types(m)
    before = lepton_ir.to_text(m)
    Prune(ratio=0.0).run(m)
    assert lepton_ir.to_text(m) == before
    feeds = inputs_for(proto, 0)
    for a, b in zip(run_ort(proto, feeds), run_ort(lepton_ir.to_onnx(m), feeds)):
        np.testing.assert_array_equal(a, b)


def test_harness_properties(tmp_path):
    # verify, onnx.checker, ORT runs with the same output names/dtypes/shapes, text round trip
    check_pass("prune{ratio=0.5,multiple=1}", strategy=onnx_models(bias=BIAS, min_nodes=3, max_nodes=16)
               .map(with_consumers), save_dir=tmp_path)
    check_pass("prune{macs=0.6,multiple=1,importance=l2}",
               strategy=pattern_models("conv-bn", bias={"Conv": 6.0}).map(with_consumers), save_dir=tmp_path)
