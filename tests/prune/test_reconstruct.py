"""reconstruct after prune: composes in one pipeline, recovers accuracy on real data (digits CNN),
needs the original; prune results run in ONNX Runtime and TVM on real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import lepton
import lepton_ir
from lepton_ir.reference import ort_session, run_ort
from lepton_ir.testing import corpus
from lepton_passes import PassError, PassManager
from lepton_passes.prune import ORIGINAL_KEY, Prune, Reconstruct, read_record

from prune_helpers import const, copy, model


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    path = corpus.digits_model_path()
    xc, _ = corpus.digits_dataset("calib")
    xt, yt = corpus.digits_dataset("test")
    name = lepton_ir.load(str(path)).graph.inputs[0].name
    f = tmp_path_factory.mktemp("calib") / "digits.npz"
    np.savez(f, **{name: xc})
    return path, name, str(f), xt, yt


def _acc(m, name, xt, yt):
    return float(np.mean(ort_session(lepton_ir.to_onnx(m)).run(None, {name: xt})[0].argmax(1) == yt))


def test_prune_then_reconstruct_recovers_digits(digits):
    path, name, calib, xt, yt = digits
    base = _acc(lepton_ir.load(str(path)), name, xt, yt)
    accs = {}
    for label, pipe in (("prune", "prune{macs=0.5,multiple=1}"),
                        ("bias", f'prune{{macs=0.5,multiple=1}},reconstruct{{calib="{calib}",refit=false}}'),
                        ("refit", f'prune{{macs=0.5,multiple=1}},reconstruct{{calib="{calib}"}}')):
        m = lepton_ir.load(str(path))
        PassManager(pipe).run(m)
        onnx.checker.check_model(lepton_ir.to_onnx(m), full_check=True)
        accs[label] = _acc(m, name, xt, yt)
        if label != "prune":
            rec = read_record(m)
            assert rec["reconstructed"]["layers"] and ORIGINAL_KEY in m.graph.meta  # kept for distill
    assert accs["refit"] >= accs["bias"] - 0.01 and accs["bias"] > accs["prune"]
    assert accs["refit"] >= base - 0.03, accs


def test_reconstruct_from_a_reference_path(digits, tmp_path):
    path, name, calib, xt, yt = digits
    m = lepton_ir.load(str(path))
    Prune(macs=0.5, multiple=1).run(m)
    m.graph.meta.pop(ORIGINAL_KEY)
    with pytest.raises(PassError, match="unpruned model"):
        Reconstruct(calib=calib).run(m)
    assert Reconstruct(calib=calib, reference=str(path)).run(m)
    assert _acc(m, name, xt, yt) > 0.9


def test_reconstruct_without_prune_is_a_no_op():
    m = model("(%x: f32[1,3,4,4]) -> (%y)", [const("w", [2, 3, 1, 1], 1), "  %y = Conv(%x, %w)"], "%y")
    assert Reconstruct().run(m) is False


def test_reconstruct_matmul_without_bias_gets_one():
    m = model("(%x: f32[4,8]) -> (%y)", [
        const("w1", [8, 16], 1), const("w2", [16, 3], 2),
        "  %h = MatMul(%x, %w1)", "  %r = Relu(%h)", "  %y = MatMul(%r, %w2)"], "%y")
    p = copy(m)
    PassManager("prune{ratio=0.5,multiple=1},reconstruct{calib=random:16,refit=false}").run(p)
    assert any(n.op_type == "Add" for n in p.graph)
    run_ort(lepton_ir.to_onnx(p), {"x": np.ones((4, 8), np.float32)})


@pytest.mark.parametrize("name", ["ppocr-cls", "ppocr-det", "minilm-l3"])
def test_real_models_prune_and_run(name):
    try:
        path = corpus.real_model_path(name)
        feeds = corpus.realistic_inputs(name)
    except corpus.ModelNotFetchedError as e:
        pytest.skip(str(e))
    m = lepton_ir.load(str(path))
    Prune(macs=0.7).run(m)
    rec = read_record(m)
    assert rec["macs_after"] <= 0.7 * rec["macs_before"] + 1
    proto = lepton_ir.to_onnx(m)
    onnx.checker.check_model(proto)
    ref, got = run_ort(str(path), feeds), run_ort(proto, feeds)
    assert [r.shape for r in ref] == [g.shape for g in got]
    assert all(np.isfinite(g).all() for g in got)


def test_pruned_digits_compiles_and_runs_on_tvm(digits, tmp_path):
    pytest.importorskip("tvm")
    path, name, calib, xt, yt = digits
    m = lepton_ir.load(str(path))
    Prune(macs=0.6, multiple=1).run(m)
    src = tmp_path / "pruned.onnx"
    lepton_ir.save(m, str(src))
    feed = {name: xt[:4]}
    lepton.optimize(str(src), passes="canonicalize", backend="tvm-cpu", output=str(tmp_path / "art"),
                    input_shapes={name: list(feed[name].shape)})
    outs = lepton.load(tmp_path / "art").run(feed)
    ref = run_ort(str(src), feed)[0]
    np.testing.assert_allclose(next(iter(outs.values())), ref, rtol=1e-3, atol=1e-4)


def test_minilm_heads_and_ffn_removal_equals_masking():
    """Whole attention heads (Q/K/V columns, the computed head Reshape constants, O rows) and FFN
    neurons: removal computes what masking does (the hidden width reaches the outputs: frozen)."""
    from prune_helpers import prune_vs_mask

    try:
        path = corpus.real_model_path("minilm-l3")
        feeds = corpus.realistic_inputs("minilm-l3")
    except corpus.ModelNotFetchedError as e:
        pytest.skip(str(e))
    m = lepton_ir.load(str(path))
    pruned, rec = prune_vs_mask(m, feeds, ratio=0.25, multiple=1)
    shapes = {tuple(v.const.shape) for v in pruned.graph.initializers.values() if v.const is not None}
    assert (384, 288) in shapes and (288, 384) in shapes  # 9 of 12 heads of 32 (Q/K/V in, O out)
    assert (384, 1152) in shapes and (1152, 384) in shapes  # FFN 1536 -> 1152
    heads = [n for n in pruned.graph if n.op_type == "Reshape" and n.outputs[0].shape is not None
             and len(n.outputs[0].shape) == 4]
    assert heads and all(n.outputs[0].shape[2] == 9 for n in heads)
