"""PassManager and instruments, with real ONNX Runtime: verify-each, print IR, timing, the
differential check and reproducers."""

from __future__ import annotations

import dataclasses
import io
import shlex
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton_ir
from lepton_ir import Model, Node, Value, VerifyError
from lepton_passes import (DifferentialInstrument, DifferentialMismatchError, FixpointWarning, Pass,
                           PassChangedMismatchError, PassChangedMismatchWarning, PassError, PassFailedError,
                           PassManager, PrintIRInstrument, ReproducerInstrument, TimingInstrument, make_inputs,
                           parse_pipeline, register_pass, run_onnxruntime)


def make_onnx() -> onnx.ModelProto:
    """y = Relu(x + b) * 2 with a symbolic batch dim."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    b = helper.make_tensor("b", TensorProto.FLOAT, [4], [0.5, -0.5, 1.0, -1.0])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Add", ["x", "b"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "two"], ["y"], name="mul")]
    g = helper.make_graph(nodes, "g", [x], [y], [b, two])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def make_model() -> Model:
    return lepton_ir.load(make_onnx())


def find(model: Model, op: str) -> Node:
    return next(n for n in model.graph if n.op_type == op)


# -- test passes (tm- prefix) ---------------------------------------------------------------------
@register_pass
@dataclasses.dataclass(frozen=True)
class TmIdentity(Pass):
    """Insert an Identity before the Relu: changes the graph, not the outputs."""

    name = "tm-identity"

    def run(self, model: Model) -> bool:
        relu = find(model, "Relu")
        ident = Node("Identity", [relu.inputs[0]])
        model.graph.insert_before(relu, ident)
        ident.outputs[0].type = relu.inputs[0].type
        relu.replace_input(0, ident.outputs[0])
        return True


@register_pass
@dataclasses.dataclass(frozen=True)
class TmNoop(Pass):
    """Changes nothing."""

    name = "tm-noop"

    def run(self, model: Model) -> bool:
        return False


@register_pass
@dataclasses.dataclass(frozen=True)
class TmSubtract(Pass):
    """Turn the Add into a Sub: valid IR, wrong outputs."""

    name = "tm-subtract"

    def run(self, model: Model) -> bool:
        find(model, "Add").op_type = "Sub"
        return True


@register_pass
@dataclasses.dataclass(frozen=True)
class TmNudge(Pass):
    """Add `delta` to the Mul's constant; declares a tolerance of `allowed`."""

    name = "tm-nudge"
    delta: float = 1e-3
    allowed: float = 0.0

    def run(self, model: Model) -> bool:
        mul = find(model, "Mul")
        c = mul.inputs[1]
        mul.replace_input(1, model.graph.constant(np.asarray(c.const.numpy() + self.delta, np.float32), "two_n"))
        return True

    def tolerance(self, model: Model) -> tuple[float, float]:
        return (self.rtol, self.allowed) if self.allowed else super().tolerance(model)


@register_pass
@dataclasses.dataclass(frozen=True)
class TmCorrupt(Pass):
    """Make the Relu read a value defined nowhere: breaks the IR."""

    name = "tm-corrupt"

    def run(self, model: Model) -> bool:
        find(model, "Relu").replace_input(0, Value("ghost"))
        return True


@register_pass
@dataclasses.dataclass(frozen=True)
class TmCrash(Pass):
    """Raise a bug-like exception."""

    name = "tm-crash"
    why: str = "boom"

    def run(self, model: Model) -> bool:
        find(model, "Relu").op_type = "Sigmoid"  # a half-done change before the crash
        raise RuntimeError(self.why)


@register_pass
@dataclasses.dataclass(frozen=True)
class TmUnrunnable(Pass):
    """Rename an op to one ONNX Runtime does not know."""

    name = "tm-unrunnable"

    def run(self, model: Model) -> bool:
        find(model, "Relu").op_type = "NoSuchOp"
        return True


# -- basics ---------------------------------------------------------------------------------------
def test_run_report_records_each_pass_including_fixpoint_bodies() -> None:
    m = make_model()
    report = PassManager("tm-noop,fixpoint(tm-noop),tm-identity").run(m)
    assert [r.name for r in report.records] == ["tm-noop", "tm-noop", "tm-identity"]
    assert [r.changed for r in report.records] == [False, False, True]
    assert report.changed
    assert (report.nodes_before, report.nodes_after) == (3, 4)
    assert report.records[-1].nodes_before == 3 and report.records[-1].nodes_after == 4
    table = report.table()
    assert "tm-identity" in table and "3 -> 4" in table


def test_accepts_pipeline_objects_and_pass_lists() -> None:
    m = make_model()
    assert PassManager(parse_pipeline("tm-identity")).run(m).changed
    assert not PassManager([TmNoop()]).run(m).changed


# -- verify-each ----------------------------------------------------------------------------------
def test_verify_each_names_the_pass_that_broke_the_ir() -> None:
    m = make_model()
    with pytest.raises(VerifyError, match=r"pass 'tm-corrupt' broke the IR: .*ghost.*used before it is defined"):
        PassManager("tm-noop,tm-identity,tm-corrupt,tm-noop").run(m)


def test_verify_each_can_be_turned_off() -> None:
    m = make_model()
    PassManager("tm-corrupt", verify_each=False).run(m)  # no error: nobody checked
    with pytest.raises(VerifyError):
        m.verify()


def test_invalid_input_model_is_not_blamed_on_a_pass() -> None:
    m = make_model()
    find(m, "Relu").replace_input(0, Value("ghost"))
    with pytest.raises(VerifyError, match="input model is invalid before any pass ran"):
        PassManager("tm-noop").run(m)


# -- print IR / timing ------------------------------------------------------------------------------
def test_print_ir_after_all_and_after_change() -> None:
    out = io.StringIO()
    PassManager("tm-noop,tm-identity", instruments=[PrintIRInstrument(out)]).run(make_model())
    text = out.getvalue()
    assert "IR after tm-noop (unchanged)" in text and "IR after tm-identity" in text
    assert "Identity" in text and "Relu" in text

    out = io.StringIO()
    PassManager("tm-noop,tm-identity", instruments=[PrintIRInstrument(out, only_changed=True)]).run(make_model())
    text = out.getvalue()
    assert "tm-noop" not in text and "IR after tm-identity" in text


def test_timing_table() -> None:
    out = io.StringIO()
    t = TimingInstrument(out)
    PassManager("tm-noop,fixpoint(tm-noop),tm-identity", instruments=[t]).run(make_model())
    assert t.stats["tm-noop"][0] == 2 and t.stats["tm-identity"][1] == 1
    table = out.getvalue()
    assert "pass timing" in table and "tm-identity" in table and "total (passes)" in table
    assert table == t.table() + "\n"


# -- differential -----------------------------------------------------------------------------------
def test_make_inputs_is_deterministic_and_fills_symbolic_dims() -> None:
    a = make_inputs(make_model(), seed=3, dim_size=5)
    b = make_inputs(make_model(), seed=3, dim_size=5)
    assert list(a) == ["x"] and a["x"].shape == (5, 4) and a["x"].dtype == np.float32
    np.testing.assert_array_equal(a["x"], b["x"])


def test_differential_accepts_exact_rewrites() -> None:
    m = make_model()
    d = DifferentialInstrument()
    PassManager("tm-identity,tm-noop", instruments=[d]).run(m)
    assert d.checked == 1  # only the pass that changed the model is re-run


def test_differential_names_the_first_pass_that_changes_outputs() -> None:
    m = make_model()
    with pytest.raises(DifferentialMismatchError) as ei:
        PassManager("tm-identity,tm-subtract,tm-nudge", instruments=[DifferentialInstrument()]).run(m)
    e = ei.value
    assert isinstance(e, PassError)
    assert e.pass_name == "tm-subtract" and e.output == "y"
    assert "pass 'tm-subtract' changed output 'y' beyond its tolerance" in str(e)
    assert e.max_abs > 0.5 and "max abs error" in str(e) and "max rel error" in str(e)


def test_differential_uses_the_pass_tolerance() -> None:
    # delta 1e-3 on a factor of 2: outputs move by up to ~1e-3 * |relu| ~ 3e-3.
    PassManager("tm-nudge{allowed=0.1}", instruments=[DifferentialInstrument()]).run(make_model())
    with pytest.raises(DifferentialMismatchError, match="tm-nudge"):
        PassManager("tm-nudge", instruments=[DifferentialInstrument()]).run(make_model())


def test_differential_with_user_inputs() -> None:
    zeros = {"x": np.full((3, 4), -10.0, np.float32)}  # Relu kills everything: Sub vs Add agree
    PassManager("tm-subtract", instruments=[DifferentialInstrument(zeros)]).run(make_model())


def test_differential_catches_a_model_ort_cannot_run() -> None:
    with pytest.raises(DifferentialMismatchError, match="tm-unrunnable.*unrunnable by ONNX Runtime"):
        PassManager("tm-unrunnable", verify_each=True, instruments=[DifferentialInstrument()]).run(make_model())


def test_run_onnxruntime_matches_numpy() -> None:
    m = make_model()
    x = np.arange(8, dtype=np.float32).reshape(2, 4) - 4
    (y,) = run_onnxruntime(m, {"x": x})
    np.testing.assert_allclose(y, np.maximum(x + [0.5, -0.5, 1.0, -1.0], 0) * 2)


# -- failures and reproducers -------------------------------------------------------------------------
def test_pass_exception_is_wrapped_and_names_the_pass(tmp_path: Path) -> None:
    with pytest.raises(PassFailedError, match=r"pass 'tm-crash\{why=kaput\}' failed: RuntimeError: kaput") as ei:
        PassManager("tm-noop,tm-crash{why=kaput}").run(make_model())
    assert isinstance(ei.value.__cause__, RuntimeError)


def check_reproducer(msg: str, pass_text: str) -> Path:
    assert "reproducer written to " in msg
    folder = Path(msg.split("reproducer written to ")[1].split(";")[0].strip())
    assert sorted(p.name for p in folder.iterdir() if p.name != "input.ir.txt") == \
        ["README.txt", "input.onnx", "pipeline.txt"]
    assert (folder / "pipeline.txt").read_text().strip() == pass_text
    readme = (folder / "README.txt").read_text()
    # The passes are registered by this test module, not installed: the command loads it as a plugin.
    assert f"lepton-opt {folder / 'input.onnx'} --load-plugin test_manager --passes {shlex.quote(pass_text)}" \
        in readme
    return folder


def test_reproducer_for_a_crash_holds_the_model_before_the_pass(tmp_path: Path) -> None:
    with pytest.raises(PassFailedError) as ei:
        PassManager("tm-identity,tm-crash{why=kaput}", reproducer_dir=str(tmp_path)).run(make_model())
    folder = check_reproducer(str(ei.value), "tm-crash{why=kaput}")
    assert folder.parent == tmp_path and folder.name.startswith("lepton-repro-tm-crash-")
    snap = lepton_ir.load(folder / "input.onnx")
    # The model after tm-identity, before tm-crash's half-done edit.
    assert [n.op_type for n in snap.graph] == ["Add", "Identity", "Relu", "Mul"]
    assert "RuntimeError: kaput" in (folder / "README.txt").read_text()

    # The README command reproduces the failure (in-process: the test passes live in this process).
    from lepton.cli import opt_main

    args = shlex.split((folder / "README.txt").read_text().split("Reproduce with:")[1].strip())
    if args[0].startswith("PYTHONPATH="):  # the plugin module's folder, for a shell; this process has it
        args = args[1:]
    assert args[0] == "lepton-opt"
    assert opt_main(args[1:] + ["--reproducer-dir", str(tmp_path / "again")]) == 1


def test_reproducer_for_a_verify_failure(tmp_path: Path) -> None:
    with pytest.raises(VerifyError) as ei:
        PassManager("tm-corrupt", reproducer_dir=str(tmp_path)).run(make_model())
    assert "broke the IR" in str(ei.value)
    folder = check_reproducer(str(ei.value), "tm-corrupt")
    assert [n.op_type for n in lepton_ir.load(folder / "input.onnx").graph] == ["Add", "Relu", "Mul"]


def test_reproducer_for_a_differential_mismatch(tmp_path: Path) -> None:
    with pytest.raises(DifferentialMismatchError) as ei:
        PassManager("tm-subtract", instruments=[DifferentialInstrument()], reproducer_dir=str(tmp_path)
                    ).run(make_model())
    folder = check_reproducer(str(ei.value), "tm-subtract")
    assert "--check" in (folder / "README.txt").read_text()
    r = ReproducerInstrument(tmp_path)
    with pytest.raises(PassFailedError):
        PassManager("tm-crash", instruments=[r]).run(make_model())
    assert r.last_path is not None and r.last_path.is_dir()


# -- change detection by fingerprint ------------------------------------------------------------------
@register_pass
@dataclasses.dataclass(frozen=True)
class TmSilentEdit(Pass):
    """Renames the Relu's output but says it changed nothing."""

    name = "tm-silent-edit"

    def run(self, model: Model) -> bool:
        find(model, "Relu").outputs[0].name = "renamed"
        return False


@register_pass
@dataclasses.dataclass(frozen=True)
class TmBoast(Pass):
    """Changes nothing but says it did."""

    name = "tm-boast"

    def run(self, model: Model) -> bool:
        return True


@register_pass
@dataclasses.dataclass(frozen=True)
class TmCountdown(Pass):
    """Bumps a counter in the Relu's doc string up to `until`, always saying it changed nothing."""

    name = "tm-countdown"
    until: int = 3

    def run(self, model: Model) -> bool:
        relu = find(model, "Relu")
        n = int(relu.doc or 0)
        if n < self.until:
            relu.doc = str(n + 1)
        return False


@register_pass
@dataclasses.dataclass(frozen=True)
class TmSilentSubtract(Pass):
    """tm-subtract (wrong outputs) that says it changed nothing."""

    name = "tm-silent-subtract"

    def run(self, model: Model) -> bool:
        find(model, "Add").op_type = "Sub"
        return False


def test_a_pass_hiding_a_change_is_reported_and_the_truth_is_used() -> None:
    m = make_model()
    with pytest.warns(PassChangedMismatchWarning,
                      match=r"^pass 'tm-silent-edit' returned changed=False but modified the model$"):
        report = PassManager("tm-silent-edit").run(m)
    (rec,) = report.records
    assert (rec.changed, rec.reported_changed, rec.mismatch) == (True, False, True)
    assert report.changed


def test_a_pass_claiming_a_change_it_did_not_make_is_reported() -> None:
    with pytest.warns(PassChangedMismatchWarning,
                      match=r"^pass 'tm-boast' returned changed=True but left the model unchanged$"):
        report = PassManager("tm-noop,tm-boast").run(make_model())
    assert [(r.changed, r.reported_changed) for r in report.records] == [(False, False), (False, True)]
    assert not report.changed


def test_strict_changed_raises_and_names_the_pass(tmp_path: Path) -> None:
    with pytest.raises(PassChangedMismatchError, match="pass 'tm-boast' returned changed=True") as ei:
        PassManager("tm-identity,tm-boast", strict_changed=True, reproducer_dir=str(tmp_path)).run(make_model())
    assert isinstance(ei.value, PassError) and ei.value.pass_text == "tm-boast"
    check_reproducer(str(ei.value), "tm-boast")  # a failure like any other: the reproducer is written
    with pytest.raises(PassChangedMismatchError, match="tm-silent-edit.*modified the model"):
        PassManager("tm-silent-edit", strict_changed=True).run(make_model())


def test_truthful_passes_give_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = PassManager("tm-noop,tm-identity,fixpoint(tm-noop)", strict_changed=True).run(make_model())
    assert all(not r.mismatch and r.reported_changed == r.changed for r in report.records)


def test_fixpoint_stops_on_the_truth_not_on_what_passes_say() -> None:
    # tm-boast always claims a change: on its word the fixpoint would spin to its limit.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PassChangedMismatchWarning)
        warnings.simplefilter("error", FixpointWarning)
        report = PassManager("fixpoint(tm-boast)").run(make_model())
    assert len(report.records) == 1
    # tm-countdown changes the model three times while denying it: the fixpoint keeps going
    # until the model really stops changing (three changing runs, one that confirms).
    m = make_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PassChangedMismatchWarning)
        report = PassManager("fixpoint(tm-countdown)").run(m)
    assert [r.changed for r in report.records] == [True, True, True, False]
    assert find(m, "Relu").doc == "3"


def test_the_differential_check_sees_a_hidden_change() -> None:
    # Trusting the pass's False, the differential instrument would skip the run and miss the bug.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PassChangedMismatchWarning)
        with pytest.raises(DifferentialMismatchError, match="tm-silent-subtract"):
            PassManager("tm-silent-subtract", instruments=[DifferentialInstrument()]).run(make_model())
