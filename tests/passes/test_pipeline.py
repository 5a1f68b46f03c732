"""Pipeline text: parsing, option typing, canonical printing, error messages, fixpoint."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal

import pytest
from onnx import TensorProto, helper

import lepton_ir
from lepton_passes import (Fixpoint, FixpointWarning, Pass, PassError, Pipeline, PipelineError, describe_options,
                           format_pass, get_pass, parse_pipeline, register_pass)


# -- test passes (names prefixed tp- so they never clash with real ones) -------------------------
@register_pass
@dataclasses.dataclass(frozen=True)
class TpNoop(Pass):
    """Does nothing."""

    name = "tp-noop"

    def run(self, model: lepton_ir.Model) -> bool:
        return False


@register_pass
@dataclasses.dataclass(frozen=True)
class TpOpts(Pass):
    """A pass with one option of every supported type."""

    name = "tp-opts"
    calibration: Literal["minmax", "entropy"] = dataclasses.field(default="minmax", metadata={"help": "how"})
    per_channel: bool = False
    bits: int = 8
    scale: float = 0.5
    label: str = "x"
    ops: tuple[str, ...] = ()
    sizes: tuple[int, ...] = (1, 2)
    limit: int | None = None

    def run(self, model: lepton_ir.Model) -> bool:
        return False


@register_pass
@dataclasses.dataclass(frozen=True)
class TpRequired(Pass):
    """Needs an option."""

    name = "tp-required"
    level: int

    def run(self, model: lepton_ir.Model) -> bool:
        return False


@register_pass
@dataclasses.dataclass(frozen=True)
class TpValidated(Pass):
    """Validates its option in __post_init__."""

    name = "tp-validated"
    bits: int = 8

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, not {self.bits}")

    def run(self, model: lepton_ir.Model) -> bool:
        return False


@register_pass
@dataclasses.dataclass(frozen=True)
class TpCount(Pass):
    """Bumps a counter in the model metadata until it reaches `limit`."""

    name = "tp-count"
    limit: int = 3

    def run(self, model: lepton_ir.Model) -> bool:
        n = int(model.metadata_props.get("count", "0"))
        if n >= self.limit:
            return False
        model.metadata_props["count"] = str(n + 1)
        return True


@register_pass
@dataclasses.dataclass(frozen=True)
class TpAlways(Pass):
    """Always reports a change (never converges)."""

    name = "tp-always"

    def run(self, model: lepton_ir.Model) -> bool:
        model.metadata_props["runs"] = str(int(model.metadata_props.get("runs", "0")) + 1)
        return True


def tiny_model() -> lepton_ir.Model:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return lepton_ir.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


# -- round trips ----------------------------------------------------------------------------------
CANONICAL = [
    "",
    "tp-noop",
    "tp-noop,tp-noop",
    "tp-opts{calibration=entropy,per-channel=true}",
    "tp-opts{bits=4,scale=0.25,label=hello,ops=[Conv,Relu],sizes=[3],limit=7}",
    'tp-opts{label="a b",ops=["x,y","3"]}',
    'tp-opts{label="3"}',
    'tp-opts{label="true"}',
    "tp-opts{scale=1e-05}",
    "tp-opts{sizes=[]}",
    "fixpoint(tp-noop,tp-opts{bits=2})",
    "fixpoint(tp-noop){max-iterations=3}",
    "tp-noop,fixpoint(fixpoint(tp-noop),tp-count{limit=5})",
    "tp-required{level=2}",
]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_text_round_trips(text: str) -> None:
    p = parse_pipeline(text)
    assert str(p) == text
    assert parse_pipeline(str(p)) == p


def test_non_canonical_text_normalizes() -> None:
    p = parse_pipeline(" tp-opts { per-channel = true , bits = 8 , scale = 1 } ,  tp-noop ")
    # bits=8 is the default (dropped); fields print in declaration order; the int 1 becomes 1.0
    assert str(p) == "tp-opts{per-channel=true,scale=1.0},tp-noop"
    assert str(parse_pipeline("fixpoint(tp-noop){max-iterations=10}")) == "fixpoint(tp-noop)"
    assert str(parse_pipeline(r"tp-opts{label='it\'s'}")) == 'tp-opts{label="it\'s"}'  # single quotes too


def test_options_are_typed() -> None:
    (p,) = parse_pipeline("tp-opts{calibration=entropy,per-channel=true,bits=4,scale=2,label=99,ops=Conv,"
                          "sizes=[4,5],limit=none}").items
    assert isinstance(p, TpOpts)
    assert p == TpOpts(calibration="entropy", per_channel=True, bits=4, scale=2.0, label="99", ops=("Conv",),
                       sizes=(4, 5), limit=None)
    assert isinstance(p.scale, float)
    assert format_pass(p) == 'tp-opts{calibration=entropy,per-channel=true,bits=4,scale=2.0,label="99",ops=[Conv],sizes=[4,5]}'


def test_pipeline_from_objects_prints_like_text() -> None:
    p = Pipeline([TpNoop(), Fixpoint(Pipeline([TpOpts(bits=2)]), max_iterations=4)])
    assert str(p) == "tp-noop,fixpoint(tp-opts{bits=2}){max-iterations=4}"
    assert parse_pipeline(str(p)) == p
    assert [type(x).name for x in p.passes()] == ["tp-noop", "tp-opts"]


def test_describe_options_lists_types_defaults_and_help() -> None:
    rows = {r[0]: r for r in describe_options(TpOpts)}
    assert rows["calibration"] == ("calibration", "one of minmax|entropy", "minmax", "how")
    assert rows["per-channel"][1:3] == ("bool", "false")
    assert rows["ops"][1:3] == ("list of str", "[]")
    assert rows["limit"][1:3] == ("int or none", "none")


# -- error messages -------------------------------------------------------------------------------
def caret_column(err: PipelineError) -> int:
    text_line, caret_line = str(err).splitlines()[1:3]
    return caret_line.index("^") - 2  # both lines are indented by two spaces


def test_unknown_pass_lists_known_passes_and_points_at_it() -> None:
    with pytest.raises(PipelineError) as ei:
        parse_pipeline("tp-noop,tp-nope{a=1}")
    e = ei.value
    assert "unknown pass 'tp-nope'" in str(e)
    assert "known passes:" in str(e) and "tp-noop" in str(e) and "tp-opts" in str(e)
    assert caret_column(e) == 8 and e.column == 9
    assert str(e).splitlines()[1] == "  tp-noop,tp-nope{a=1}"
    assert isinstance(e, PassError)  # a LeptonError the CLI reports in one line
    assert "\n" not in e.summary


def test_unknown_option_lists_the_pass_options() -> None:
    text = "tp-opts{per-chanel=true}"
    with pytest.raises(PipelineError) as ei:
        parse_pipeline(text)
    msg = str(ei.value)
    assert "unknown option 'per-chanel' for pass 'tp-opts'" in msg
    assert "per-channel (bool, default false)" in msg and "calibration (one of minmax|entropy" in msg
    assert caret_column(ei.value) == text.index("per-chanel")


@pytest.mark.parametrize("text, bad, expected", [
    ("tp-opts{per-channel=maybe}", "maybe", "expected true or false"),
    ("tp-opts{bits=4.5}", "4.5", "expected an int"),
    ("tp-opts{bits=true}", "true", "expected an int"),
    ("tp-opts{scale=big}", "big", "expected a number"),
    ("tp-opts{calibration=median}", "median", "expected one of minmax|entropy"),
    ("tp-opts{sizes=[1,x]}", "x", "expected an int"),
    ("tp-opts{label=[a]}", "[a]", "expected a string"),
])
def test_bad_value_has_caret_under_the_value(text: str, bad: str, expected: str) -> None:
    with pytest.raises(PipelineError) as ei:
        parse_pipeline(text)
    assert expected in str(ei.value)
    assert caret_column(ei.value) == text.rindex(bad)
    assert "options of 'tp-opts'" in str(ei.value)


@pytest.mark.parametrize("text, fragment, col", [
    ("tp-noop,", "expected a pass name, found end of text", 8),
    (",tp-noop", "expected a pass name, found ','", 0),
    ("tp-noop tp-noop", "expected ',' between passes", 8),
    ("tp-opts{bits=4", "expected '}' to close the options", 14),
    ("tp-opts{bits}", "expected '=' after option name 'bits'", 12),
    ("tp-opts{bits=}", "expected a value", 13),
    ("tp-opts{bits=4,bits=5}", "option 'bits' given twice", 15),
    ("tp-opts{label=\"abc}", "unterminated quoted string", 14),
    ("fixpoint(tp-noop", "expected ')' to close fixpoint(", 16),
    ("fixpoint()", "fixpoint(...) needs at least one pass", 9),
    ("fixpoint(tp-noop){max-iterations=0}", "expected a positive int", 33),
    ("fixpoint(tp-noop){rounds=2}", "unknown option 'rounds' for fixpoint", 18),
    ("tp-required", "pass 'tp-required' needs option(s) level", 0),
    ("tp-validated{bits=5}", "bits must be 4 or 8, not 5", 0),
])
def test_syntax_errors_point_at_the_spot(text: str, fragment: str, col: int) -> None:
    with pytest.raises(PipelineError) as ei:
        parse_pipeline(text)
    assert fragment in str(ei.value)
    assert caret_column(ei.value) == col, str(ei.value)


def test_get_pass_unknown_lists_names() -> None:
    with pytest.raises(PassError, match="known passes: .*tp-noop"):
        get_pass("tp-missing")


def test_duplicate_pass_name_is_an_error() -> None:
    with pytest.raises(PassError, match="duplicate pass name 'tp-noop'"):
        @register_pass
        @dataclasses.dataclass(frozen=True)
        class Other(Pass):
            name = "tp-noop"


# -- running --------------------------------------------------------------------------------------
def test_pipeline_runs_and_reports_change() -> None:
    m = tiny_model()
    assert parse_pipeline("tp-noop").run(m) is False
    assert parse_pipeline("tp-noop,tp-count{limit=1}").run(m) is True
    assert m.metadata_props["count"] == "1"


def test_fixpoint_stops_when_nothing_changes() -> None:
    m = tiny_model()
    calls: list[str] = []

    def runner(p: Pass, model: lepton_ir.Model) -> bool:
        calls.append(p.name)
        return p.run(model)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # must converge without the warning
        changed = parse_pipeline("fixpoint(tp-count{limit=3},tp-noop)").run(m, runner)
    assert changed is True
    assert m.metadata_props["count"] == "3"
    assert calls == ["tp-count", "tp-noop"] * 4  # 3 changing rounds + 1 quiet round


def test_fixpoint_gives_up_at_max_iterations_with_a_warning() -> None:
    m = tiny_model()
    with pytest.warns(FixpointWarning, match="did not converge in 4 iterations"):
        assert parse_pipeline("fixpoint(tp-always){max-iterations=4}").run(m) is True
    assert m.metadata_props["runs"] == "4"


def test_fixpoint_default_limit_is_ten() -> None:
    m = tiny_model()
    with pytest.warns(FixpointWarning):
        parse_pipeline("fixpoint(tp-always)").run(m)
    assert m.metadata_props["runs"] == "10"


def test_fixpoint_unchanged_body_runs_once() -> None:
    m = tiny_model()
    assert parse_pipeline("fixpoint(tp-noop)").run(m) is False
