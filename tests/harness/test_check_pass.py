"""check_pass over every registered pass, and mutation tests: deliberately broken variants of real
rules must be caught within the default example budget, while the correct rules pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import lepton_ir
from lepton_passes import Pass, list_passes
from lepton_passes.canonicalize.cse import CommonSubexpressionElimination, _cse_graph, node_key
from lepton_passes.canonicalize.dce import DeadCodeElimination
from lepton_passes.rewrite import Rule, apply_rules
from lepton_passes.testing import check_pass
from lepton_passes.util import constant_value

# Passes whose output needs a lowering before ONNX Runtime can run it (ai.lepton fused ops) are
# checked composed with that lowering: the composition is what every backend runs.
COMPOSED = {"fuse": "fuse,lower-fused-to-onnx"}


def _shipped_passes() -> list[str]:
    """Built-in and plugin passes; passes that other test modules register for their own tests
    (in the same worker process) are not part of the product."""
    from lepton_passes import pass_origin

    return sorted(n for n in list_passes()
                  if pass_origin(n).startswith(("lepton_passes.", "entry point")))


#: Passes whose pattern random models (even steered toward their op types) do not contain: their
#: rewrite is exercised by their own unit tests; here they must only leave random models correct.
NOT_GENERATED = {"simplify-shapes"}  # needs Shape -> Gather chains over known dims


@pytest.mark.parametrize("name", _shipped_passes())
def test_every_registered_pass(name, tmp_path):
    if name in NOT_GENERATED:
        check_pass(name, save_dir=tmp_path, min_changed=0)
    elif name in COMPOSED:
        # A fused-then-lowered activation ORT cannot fuse comes back with fresh constant names, so
        # the composition is not idempotent as text (each pass alone is).
        check_pass(COMPOSED[name], save_dir=tmp_path, idempotent=False)
    else:
        check_pass(name, save_dir=tmp_path)


# -- mutation 1: a CSE that ignores attributes ------------------------------------------------------
@dataclass(frozen=True)
class CseIgnoringAttributes(CommonSubexpressionElimination):
    name = "broken-cse"

    def run(self, model):
        import lepton_passes.canonicalize.cse as cse

        real = cse.node_key
        cse.node_key = lambda n: None if real(n) is None else real(n)[:-1]  # drop the attributes
        try:
            return _cse_graph(model.graph)
        finally:
            cse.node_key = real


FANOUT_OPS = ["Transpose", "Softmax", "LeakyRelu", "Relu", "Add"]


def test_correct_cse_passes_on_fanout_models(tmp_path):
    check_pass("cse", ops=FANOUT_OPS, save_dir=tmp_path)


# Mutation tests skip shrinking (shrink=False): they assert detection, and shrinking a model that
# fails in ONNX Runtime costs a minute; test_failing_model_is_shrunk_and_saved covers shrinking.
def test_cse_merging_different_attributes_is_caught(tmp_path):
    with pytest.raises(AssertionError, match="differs|changed"):
        check_pass(CseIgnoringAttributes(), ops=FANOUT_OPS, save_dir=tmp_path, shrink=False)
    assert (tmp_path / "broken-cse" / "model.onnx").exists()
    assert (tmp_path / "broken-cse" / "model.lep").exists()


@dataclass(frozen=True)
class FailsOnSigmoid(Pass):
    """Raises on any model with a Sigmoid: the minimal failing model is a single Sigmoid."""

    name = "fails-on-sigmoid"

    def run(self, model):
        if any(n.op_type == "Sigmoid" for n in model.graph.all_nodes()):
            raise RuntimeError("sigmoid!")
        return False


def test_failing_model_is_shrunk_and_saved(tmp_path):
    with pytest.raises(AssertionError, match="sigmoid!") as info:
        check_pass(FailsOnSigmoid(), bias={"Sigmoid": 5.0}, save_dir=tmp_path)
    saved = tmp_path / "fails-on-sigmoid"
    assert str(saved) in str(info.value)
    m = lepton_ir.load(saved / "model.onnx")
    assert [n.op_type for n in m.graph if n.op_type != "Constant"] == ["Sigmoid"]
    assert "Sigmoid(" in (saved / "model.lep").read_text()


# -- mutation 2: a DCE that drops a graph output's producer -------------------------------------------
@dataclass(frozen=True)
class DceDroppingOutputs(DeadCodeElimination):
    name = "broken-dce"

    def run(self, model):
        g = model.graph
        for n in list(g):
            if not any(o.num_uses() for o in n.outputs):  # forgets that graph outputs are uses
                g.remove(n, safe=False)
                return True
        return False


def test_dce_dropping_output_producer_is_caught(tmp_path):
    with pytest.raises(AssertionError, match="broke the IR"):
        check_pass(DceDroppingOutputs(), save_dir=tmp_path, shrink=False)


# -- mutation 3: a Conv-BatchNorm fold with a wrong epsilon --------------------------------------------
class FoldBatchNormIntoConv(Rule):
    """Conv(x, w, b?) -> BN(scale, bias, mean, var, eps) folded into the Conv's weights and bias."""

    def __init__(self, wrong_epsilon: bool = False) -> None:
        self.wrong_epsilon = wrong_epsilon

    def pattern(self, op, x, w, scale, bias, mean, var):
        return op.BatchNormalization(op.Conv(x, w, _allow_other_inputs=True, _name="conv"), scale, bias, mean, var,
                                     _name="bn")

    def check(self, m, x, w, scale, bias, mean, var, conv, bn):
        if any(constant_value(v) is None for v in (w, scale, bias, mean, var)):
            return "weights or statistics are not constants"
        if len(conv.inputs) > 2 and conv.inputs[2] is not None and constant_value(conv.inputs[2]) is None:
            return "conv bias is not constant"
        return None

    def rewrite(self, op, x, w, scale, bias, mean, var, conv, bn):
        eps = 1e-5 if self.wrong_epsilon else bn.attr("epsilon", 1e-5)
        s, b, mu, v = (constant_value(t).astype(np.float64) for t in (scale, bias, mean, var))
        k = s / np.sqrt(v + eps)
        wv = constant_value(w)
        cb = constant_value(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else 0.0
        new_w = (wv.astype(np.float64) * k.reshape(-1, *([1] * (wv.ndim - 1)))).astype(wv.dtype)
        new_b = ((cb - mu) * k + b).astype(wv.dtype)
        attrs = {a.name: a for a in conv.attrs.values()}
        return op.Conv(x, op.const(new_w, "w_folded"), op.const(new_b, "b_folded"), **attrs)


@dataclass(frozen=True)
class ConvBnFold(Pass):
    name = "test-conv-bn-fold"
    wrong_epsilon: bool = False

    def run(self, model):
        return apply_rules(model, [FoldBatchNormIntoConv(self.wrong_epsilon)]).changed


def test_correct_conv_bn_fold_passes(tmp_path):
    check_pass(ConvBnFold(), pattern="conv-bn", dtypes=("float32",), save_dir=tmp_path)


def test_conv_bn_fold_with_wrong_epsilon_is_caught(tmp_path):
    with pytest.raises(AssertionError, match="differs"):
        check_pass(ConvBnFold(wrong_epsilon=True), pattern="conv-bn", dtypes=("float32",), save_dir=tmp_path,
                   shrink=False)
