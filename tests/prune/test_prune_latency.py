"""`prune{latency=...}`: the measured-latency target (passes/prune/latency.py).

No wall-clock thresholds here (timings are the bench's job, bench/prune_latency.py): the tests check
that the target times real ONNX Runtime sessions (a measured table in the record), that the rounding
follows the SIMD width detected from /proc/cpuinfo, that the result is a valid smaller model, and the
option errors.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from lepton_ir.reference import random_inputs, run_ort
import lepton_ir
from lepton_passes import PassManager, parse_pipeline
from lepton_passes.prune import Prune, read_record
from lepton_passes.prune.latency import interleaved_ratio, ort_latency_session
from lepton_passes.prune.prune import SIMD_LANES, detect_simd

from prune_helpers import const, copy, model


def wide_chain():
    return model("(%x: f32[1,3,16,16]) -> (%y)", [
        const("w1", [48, 3, 3, 3], 1, 0.3), const("b1", [48], 2),
        const("w2", [48, 48, 3, 3], 3, 0.1), const("b2", [48], 4),
        const("w3", [4, 48, 1, 1], 5),
        "  %c1 = Conv(%x, %w1, %b1) {pads=[1, 1, 1, 1]}",
        "  %r1 = Relu(%c1)",
        "  %c2 = Conv(%r1, %w2, %b2) {pads=[1, 1, 1, 1]}",
        "  %r2 = Relu(%c2)",
        "  %y = Conv(%r2, %w3)",
    ], "%y")


def _cpu_flags() -> set[str]:
    for line in open("/proc/cpuinfo").read().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def test_latency_target_rounds_to_the_detected_simd_width():
    flags = _cpu_flags()
    want = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    assert SIMD_LANES[detect_simd()] == want
    assert Prune(latency=0.7).lanes == want           # detected, not the fixed default of ratio=/macs=
    assert Prune(latency=0.7, target="avx2").lanes == 8
    assert Prune(latency=0.7, multiple=3).lanes == 3
    assert Prune(macs=0.7).lanes == 8


def test_latency_target_measures_and_prunes():
    m = wide_chain()
    feeds = random_inputs(m, seed=1)
    p = copy(m)
    PassManager(parse_pipeline("prune{latency=0.6,latency-reps=3}")).run(p)
    rec = read_record(p)
    lanes = SIMD_LANES[detect_simd()]
    assert rec["latency_target"] == 0.6 and rec["lanes"] == lanes
    table = rec["latency_table"]
    assert table and all(0 < pt["latency_kept"] and 0 < pt["macs_kept"] < 1 for pt in table)
    assert table[0]["ratio"] == 0.9  # the deepest cut is measured first (reachability)
    c1 = next(v for v in p.graph.values() if v.name == "w1")
    kept = c1.shape.dims[0]
    assert kept < 48 and kept % lanes == 0
    proto = lepton_ir.to_onnx(p)
    onnx.checker.check_model(proto, full_check=True)
    assert run_ort(proto, feeds)[0].shape == run_ort(lepton_ir.to_onnx(m), feeds)[0].shape


def test_interleaved_ratio_of_a_model_against_itself_is_near_one():
    # the same model on both sides: the interleaving must not favour one (a loose, load-proof bound)
    proto = lepton_ir.to_onnx(wide_chain())
    a, b = ort_latency_session(proto, 1), ort_latency_session(proto, 1)
    r, tb, tc = interleaved_ratio(a, b, random_inputs(wide_chain(), seed=0), reps=9)
    assert tb > 0 and tc > 0 and 0.2 < r < 5


@pytest.mark.parametrize("opts,msg", [
    ({"latency": 0.0}, "latency must be in"),
    ({"latency": 0.7, "macs": 0.7}, "not both"),
    ({"latency": 0.7, "latency_reps": 0}, "latency-reps"),
])
def test_latency_option_errors(opts, msg):
    with pytest.raises(ValueError, match=msg):
        Prune(**opts)
