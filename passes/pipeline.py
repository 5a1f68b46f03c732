"""Textual pass pipelines, MLIR-style: `fuse,quant8{calibration=entropy},fixpoint(canonicalize,cse)`.

Grammar (whitespace between tokens is ignored)::

    pipeline := item (',' item)*          -- the empty text is the empty pipeline
    item     := NAME options? | 'fixpoint' '(' pipeline ')' options?
    options  := '{' key '=' value (',' key '=' value)* '}'
    value    := int | float | true | false | bare-word | "quoted" | '[' value (',' value)* ']'

Options are converted to the types of the pass's dataclass fields (bool, int, float, str,
`tuple[X, ...]`, `Literal[...]` choices, `X | None` with the word `none`). `fixpoint` takes
`{max-iterations=N}` (default 10).

Canonical text (what `str(pipeline)` prints): no spaces; options in field order and only those that
differ from the field's default (so a pass with all defaults prints as its bare name); strings as
bare words when they read back as the same string, else double-quoted; floats via `repr`; lists
as `[a,b]`. Hence `parse_pipeline(str(p)) == p`, and `str(parse_pipeline(t)) == t` for canonical t.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
import warnings
from typing import Any, Callable, Iterator, Literal, Sequence, Union

from lepton_ir import Model

from .base import Pass, PassError, get_pass, option_name

#: How a PassManager (or anyone) wraps each leaf pass run: `runner(pass, model) -> changed`.
PassRunner = Callable[[Pass, Model], bool]

DEFAULT_MAX_ITERATIONS = 10


class PipelineError(PassError):
    """A pipeline text is malformed or names an unknown pass/option; points at the spot.

    `str(err)` is three lines: the message, the pipeline text, and a caret under the column.
    `err.summary` is the message alone on one line (with the column), for one-line CLI errors.
    """

    def __init__(self, message: str, text: str, pos: int) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())
        self.text = text
        self.pos = pos
        self.column = pos + 1

    @property
    def summary(self) -> str:
        return f"{self.message} (pipeline column {self.column})"

    @property
    def caret(self) -> str:
        """The pipeline text and a caret under the offending column (two lines)."""
        flat = self.text.replace("\n", " ").replace("\t", " ")
        return f"  {flat}\n  {' ' * self.pos}^"

    def __str__(self) -> str:
        # Deliberately multi-line (unlike other LeptonErrors): the caret is the point of it.
        return f"{self.summary}\n{self.caret}"


class FixpointWarning(UserWarning):
    """A fixpoint hit its iteration limit while passes still reported changes."""


# ------------------------------------------------------------------------------------------------
# Pipeline objects
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Fixpoint:
    """`fixpoint(body)`: re-run `body` until no pass in it reports a change (or max_iterations)."""

    body: "Pipeline"
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    name: typing.ClassVar[str] = "fixpoint"

    def run(self, model: Model, runner: PassRunner | None = None) -> bool:
        changed_any = False
        for _ in range(self.max_iterations):
            if not self.body.run(model, runner):
                return changed_any
            changed_any = True
        warnings.warn(f"fixpoint({self.body}) did not converge in {self.max_iterations} iterations; "
                      "raise {max-iterations=N} or check for passes that undo each other",
                      FixpointWarning, stacklevel=2)
        return changed_any

    def __str__(self) -> str:
        opts = "" if self.max_iterations == DEFAULT_MAX_ITERATIONS else f"{{max-iterations={self.max_iterations}}}"
        return f"fixpoint({self.body}){opts}"


Item = Union[Pass, Fixpoint]


class Pipeline:
    """An ordered list of passes and `fixpoint(...)` groups; runnable like a pass."""

    def __init__(self, items: Sequence[Item] = ()) -> None:
        items = tuple(items)
        for it in items:
            if not isinstance(it, (Pass, Fixpoint)):
                raise TypeError(f"pipeline items must be Pass instances or Fixpoint, got {type(it).__name__}")
        self.items: tuple[Item, ...] = items

    def run(self, model: Model, runner: PassRunner | None = None) -> bool:
        """Run every item in order on `model` (in place); True if any pass changed it.

        `runner(pass, model) -> bool` wraps each leaf pass (the PassManager uses it for instruments).
        """
        changed = False
        for it in self.items:
            if isinstance(it, Fixpoint):
                changed |= it.run(model, runner)
            else:
                changed |= bool(runner(it, model) if runner is not None else it.run(model))
        return changed

    __call__ = run

    def passes(self) -> Iterator[Pass]:
        """Every leaf pass, depth first (fixpoint bodies included)."""
        for it in self.items:
            if isinstance(it, Fixpoint):
                yield from it.body.passes()
            else:
                yield it

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.items == other.items

    def __hash__(self) -> int:
        return hash(self.items)

    def __str__(self) -> str:
        return ",".join(format_pass(it) if isinstance(it, Pass) else str(it) for it in self.items)

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"


# ------------------------------------------------------------------------------------------------
# Option types: describe, convert, print
# ------------------------------------------------------------------------------------------------
def _field_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable annotation strings: fall back to what the dataclass holds
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _optional_inner(tp: Any) -> Any | None:
    """X for `X | None` / `Optional[X]`, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def type_label(tp: Any) -> str:
    """A short human name for an option type (`bool`, `list of str`, `one of a|b`)."""
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{type_label(inner)} or none"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        return f"list of {type_label(args[0]) if args else 'str'}"
    return getattr(tp, "__name__", str(tp))


def format_value(v: Any) -> str:
    """Canonical pipeline text for an option value."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    s = str(v)
    if _BARE_RE.fullmatch(s) and _classify_bare(s)[0] == "word":
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def describe_options(cls: type[Pass]) -> list[tuple[str, str, str, str]]:
    """(option name, type label, default text, help) for each option of a pass class."""
    return describe_fields(cls)


def _options_list(cls: type[Pass]) -> str:
    rows = describe_options(cls)
    if not rows:
        return f"pass {cls.name!r} takes no options"
    return f"options of {cls.name!r}: " + "; ".join(f"{n} ({t}, default {d})" for n, t, d, _ in rows)


def format_pass(p: Pass) -> str:
    """Canonical text of one pass instance: its name plus its non-default options."""
    parts = []
    for f in type(p).options():
        v = getattr(p, f.name)
        d = _default(f)
        if d is not dataclasses.MISSING and _same(v, d):
            continue
        parts.append(f"{option_name(f.name)}={format_value(v)}")
    return p.name + ("{" + ",".join(parts) + "}" if parts else "")


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (isinstance(a, (tuple, list)) and isinstance(b, (tuple, list))
                                              and tuple(a) == tuple(b))


# ------------------------------------------------------------------------------------------------
# Parser
# ------------------------------------------------------------------------------------------------
_BARE_RE = re.compile(r"[^\s,{}\[\]()=\"']+")
_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def _classify_bare(s: str) -> tuple[str, Any]:
    if s in ("true", "false"):
        return "bool", s == "true"
    if s == "none":
        return "none", None
    if _INT_RE.fullmatch(s):
        return "int", int(s)
    if _FLOAT_RE.fullmatch(s):
        return "float", float(s)
    return "word", s


@dataclasses.dataclass
class _Raw:
    """A parsed but not yet typed option value."""

    kind: str  # bool | none | int | float | word | str | list
    value: Any
    pos: int
    text: str


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def error(self, msg: str, pos: int | None = None) -> PipelineError:
        return PipelineError(msg, self.text, self.i if pos is None else pos)

    def ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        self.ws()
        return self.text[self.i] if self.i < len(self.text) else ""

    def expect(self, ch: str, what: str) -> None:
        if self.peek() != ch:
            got = repr(self.text[self.i]) if self.i < len(self.text) else "end of text"
            raise self.error(f"expected {ch!r} {what}, found {got}")
        self.i += 1

    def parse(self) -> Pipeline:
        if not self.text.strip():
            return Pipeline(())
        p = self.pipeline()
        if self.peek():
            raise self.error(f"unexpected {self.text[self.i]!r}; expected ',' between passes")
        return p

    def pipeline(self) -> Pipeline:
        items = [self.item()]
        while self.peek() == ",":
            self.i += 1
            items.append(self.item())
        return Pipeline(items)

    def item(self) -> Item:
        self.ws()
        start = self.i
        m = _NAME_RE.match(self.text, self.i)
        if not m:
            got = repr(self.text[self.i]) if self.i < len(self.text) else "end of text"
            raise self.error(f"expected a pass name, found {got}")
        name = m.group()
        self.i = m.end()
        if name == "fixpoint" and self.peek() == "(":
            return self.fixpoint(start)
        try:
            cls = get_pass(name)
        except PassError as e:
            raise self.error(str(e), start) from None
        opts = self.options() if self.peek() == "{" else []
        return self.build(cls, opts, start)

    def fixpoint(self, start: int) -> Fixpoint:
        self.expect("(", "after fixpoint")
        if self.peek() == ")":
            raise self.error("fixpoint(...) needs at least one pass")
        body = self.pipeline()
        self.expect(")", "to close fixpoint(")
        max_it = DEFAULT_MAX_ITERATIONS
        for key, kpos, raw in (self.options() if self.peek() == "{" else []):
            if key != "max-iterations":
                raise self.error(f"unknown option {key!r} for fixpoint; options of 'fixpoint': "
                                 f"max-iterations (int, default {DEFAULT_MAX_ITERATIONS})", kpos)
            if raw.kind != "int" or raw.value < 1:
                raise self.error(f"bad value {raw.text!r} for option max-iterations of fixpoint: "
                                 "expected a positive int", raw.pos)
            max_it = raw.value
        return Fixpoint(body, max_it)

    def options(self) -> list[tuple[str, int, _Raw]]:
        self.expect("{", "")
        out: list[tuple[str, int, _Raw]] = []
        seen: set[str] = set()
        while True:
            self.ws()
            kpos = self.i
            m = _NAME_RE.match(self.text, self.i)
            if not m:
                raise self.error("expected an option name")
            key = m.group()
            if key in seen:
                raise self.error(f"option {key!r} given twice", kpos)
            seen.add(key)
            self.i = m.end()
            self.expect("=", f"after option name {key!r}")
            out.append((key, kpos, self.value()))
            if self.peek() == ",":
                self.i += 1
                continue
            self.expect("}", "to close the options")
            return out

    def value(self) -> _Raw:
        c = self.peek()
        start = self.i
        if c == "[":
            self.i += 1
            elems: list[_Raw] = []
            if self.peek() != "]":
                elems.append(self.value())
                while self.peek() == ",":
                    self.i += 1
                    elems.append(self.value())
            self.expect("]", "to close the list")
            return _Raw("list", elems, start, self.text[start:self.i])
        if c in ("'", '"'):
            return self.quoted(c)
        m = _BARE_RE.match(self.text, self.i)
        if not m:
            got = repr(c) if c else "end of text"
            raise self.error(f"expected a value, found {got}")
        self.i = m.end()
        kind, v = _classify_bare(m.group())
        return _Raw(kind, v, start, m.group())

    def quoted(self, q: str) -> _Raw:
        start = self.i
        self.i += 1
        buf = []
        while True:
            if self.i >= len(self.text):
                raise self.error("unterminated quoted string", start)
            ch = self.text[self.i]
            if ch == "\\" and self.i + 1 < len(self.text):
                buf.append(self.text[self.i + 1])
                self.i += 2
                continue
            self.i += 1
            if ch == q:
                return _Raw("str", "".join(buf), start, self.text[start:self.i])
            buf.append(ch)

    # -- typing -----------------------------------------------------------------------------------
    def build(self, cls: type[Pass], opts: list[tuple[str, int, _Raw]], start: int) -> Pass:
        fields = {option_name(f.name): f for f in cls.options()}
        hints = _field_types(cls)
        kwargs: dict[str, Any] = {}
        for key, kpos, raw in opts:
            f = fields.get(key) or fields.get(option_name(key))
            if f is None:
                from lepton_ir.registry import did_you_mean

                raise self.error(f"unknown option {key!r} for pass {cls.name!r}"
                                 f"{did_you_mean(option_name(key), fields)}; {_options_list(cls)}", kpos)
            tp = hints.get(f.name, f.type)
            try:
                kwargs[f.name] = _convert(raw, tp)
            except _BadValue as e:
                raise self.error(f"bad value {raw.text!r} for option {option_name(f.name)} of pass "
                                 f"{cls.name!r}: expected {e.expected}; {_options_list(cls)}", e.pos) from None
        missing = [option_name(f.name) for f in fields.values()
                   if f.name not in kwargs and _default(f) is dataclasses.MISSING]
        if missing:
            raise self.error(f"pass {cls.name!r} needs option(s) {', '.join(missing)}; {_options_list(cls)}", start)
        try:
            p = cls(**kwargs)
        except (ValueError, TypeError, PassError) as e:  # the pass's own __post_init__ validation
            raise self.error(f"invalid options for pass {cls.name!r}: {e}", start) from None
        # Which options the text spelled out (`given_options`); not a field, so equality and the
        # canonical text are unchanged.
        object.__setattr__(p, "_lepton_given_options", frozenset(kwargs))
        return p


def given_options(p: Pass) -> frozenset[str] | None:
    """The field names whose values the pipeline text gave for `p` (None: `p` was not parsed from
    text, e.g. built in Python, so every field counts as given). Lets a caller fill in what the
    user left to the default, e.g. the driver giving quant8 the backend's target."""
    return getattr(p, "_lepton_given_options", None)


class _BadValue(Exception):
    def __init__(self, expected: str, pos: int) -> None:
        self.expected = expected
        self.pos = pos


def _convert(raw: _Raw, tp: Any) -> Any:
    """Convert a parsed value to option type `tp`, or raise _BadValue."""
    inner = _optional_inner(tp)
    if inner is not None:
        return None if raw.kind == "none" else _convert(raw, inner)
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for c in choices:
            if (isinstance(c, bool) and raw.kind == "bool" and raw.value is c) or \
               (isinstance(c, str) and raw.kind in ("word", "str") and raw.value == c) or \
               (isinstance(c, str) and raw.kind in ("none", "bool", "int", "float") and raw.text == c) or \
               (isinstance(c, int) and not isinstance(c, bool) and raw.kind == "int" and raw.value == c):
                return c
        raise _BadValue("one of " + "|".join(format_value(c) for c in choices), raw.pos)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        elem = args[0] if args else str
        elems = raw.value if raw.kind == "list" else [raw]  # a lone value is a one-element list
        return tuple(_convert(e, elem) for e in elems)
    if tp is bool:
        if raw.kind == "bool":
            return raw.value
        raise _BadValue("true or false", raw.pos)
    if tp is int:
        if raw.kind == "int":
            return raw.value
        raise _BadValue("an int", raw.pos)
    if tp is float:
        if raw.kind in ("int", "float"):
            return float(raw.value)
        raise _BadValue("a number", raw.pos)
    if tp is str:
        if raw.kind in ("word", "str"):
            return raw.value
        if raw.kind != "list":
            return raw.text  # `3` or `true` given to a string option: keep the text as written
        raise _BadValue("a string", raw.pos)
    if tp is Any:
        return raw.value if raw.kind != "list" else tuple(_convert(e, Any) for e in raw.value)
    raise _BadValue(f"a value of unsupported option type {type_label(tp)}", raw.pos)


def parse_pipeline(text: str) -> Pipeline:
    """Parse pipeline text into a Pipeline of configured Pass instances (PipelineError if bad)."""
    return _Parser(text).parse()


def as_pipeline(p: "Pipeline | str | Pass | Sequence[Pass | Fixpoint]") -> Pipeline:
    """Accept a Pipeline, its text, one Pass or a list of items."""
    if isinstance(p, Pipeline):
        return p
    if isinstance(p, str):
        return parse_pipeline(p)
    if isinstance(p, (Pass, Fixpoint)):
        return Pipeline([p])
    return Pipeline(list(p))


# ------------------------------------------------------------------------------------------------
# Options given as a mapping (backend options, `--option KEY=VALUE`, Python keyword arguments)
# ------------------------------------------------------------------------------------------------
def _check_python(v: Any, tp: Any, pos: int = 0) -> Any:
    """A Python value given for an option of type `tp`, converted where lossless; _BadValue otherwise."""
    inner = _optional_inner(tp)
    if inner is not None:
        return None if v is None else _check_python(v, inner, pos)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if v in typing.get_args(tp) and type(v) in {type(c) for c in typing.get_args(tp)}:
            return v
        raise _BadValue("one of " + "|".join(format_value(c) for c in typing.get_args(tp)), pos)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        items = v if isinstance(v, (list, tuple)) else [v]
        return tuple(_check_python(x, args[0] if args else str, pos) for x in items)
    if tp is bool and isinstance(v, bool):
        return v
    if tp is int and isinstance(v, int) and not isinstance(v, bool):
        return v
    if tp is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if tp is str and isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return str(v)
    if tp is Any:
        return v
    raise _BadValue(type_label(tp), pos)


def _parse_text_value(text: str, tp: Any) -> Any:
    """`--option key=TEXT`: TEXT read as a pipeline option value of type `tp`."""
    if tp is str or _optional_inner(tp) is str and text != "none":
        return text  # paths, JSON, anything: a string option takes the text as written
    p = _Parser(text)
    raw = p.value()
    if p.peek():
        raise _BadValue(type_label(tp), p.i)
    return _convert(raw, tp)


def describe_fields(cls: type) -> list[tuple[str, str, str, str]]:
    """(option name, type label, default text, help) for each init field of dataclass `cls`."""
    hints = _field_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        d = _default(f)
        rows.append((option_name(f.name), str(f.metadata.get("type") or type_label(hints.get(f.name, f.type))),
                     "(required)" if d is dataclasses.MISSING else format_value(d),
                     str(f.metadata.get("help", ""))))
    return rows


def build_options(cls: type, values: Any, *, owner: str, error: type[Exception] = PassError) -> Any:
    """An instance of the frozen dataclass `cls` from `values` (a mapping or an instance).

    Keys are option names (`tune-trials`) or field names (`tune_trials`). A value that is text is
    read as pipeline option text would be (`--option tune-trials=64`); other values must already
    have the field's type. A field may carry `metadata={"parse": fn}` for a custom conversion (fn
    raises ValueError with the reason). Errors name the option, say what was expected and list
    the options (with "did you mean" for a near miss).
    """
    from lepton_ir.registry import did_you_mean

    if values is None:
        values = {}
    if isinstance(values, cls):
        return values
    fields = {option_name(f.name): f for f in dataclasses.fields(cls) if f.init}
    hints = _field_types(cls)

    def listing() -> str:
        rows = describe_fields(cls)
        return "; ".join(f"{n} ({t}, default {d})" for n, t, d, _ in rows) or "none"

    kwargs: dict[str, Any] = {}
    for key, val in dict(values).items():
        f = fields.get(option_name(str(key)))
        if f is None:
            raise error(f"{owner} has no option {key!r}{did_you_mean(option_name(str(key)), fields)}; "
                        f"its options: {listing()}")
        tp = hints.get(f.name, f.type)
        try:
            parse = f.metadata.get("parse")
            if parse is not None:
                kwargs[f.name] = parse(val)
            elif isinstance(val, str):
                kwargs[f.name] = _parse_text_value(val, tp)
            else:
                kwargs[f.name] = _check_python(val, tp)
        except _BadValue as e:
            raise error(f"bad value {val!r} for option {option_name(f.name)} of {owner}: expected "
                        f"{e.expected}") from None
        except (ValueError, TypeError) as e:
            raise error(f"bad value {val!r} for option {option_name(f.name)} of {owner}: {e}") from None
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # the dataclass's own __post_init__ validation
        raise error(f"invalid options for {owner}: {e}") from None
