"""`check_pass`: property-test any pass or pipeline, ours or a plugin's, against ONNX Runtime.

    from lepton_passes.testing import check_pass
    check_pass("fold-constants")                                # pipeline text
    check_pass(MyPass(level=2), pattern="conv-bn")              # bias generation toward a pattern

For each random valid model (hypothesis, `lepton_ir.testing.strategies`) it asserts:
1. the pass leaves a model that passes `verify()`;
2. the export passes `onnx.checker` (full check);
3. ONNX Runtime outputs are preserved, names and dtypes included, within the pass's tolerance
   (`Pass.tolerance(model)`: exact passes use 1e-4/1e-5; lossy passes derive theirs);
4. the text form round-trips (print, parse, print gives the same text);
5. idempotence, when the pass declares it: a second run changes nothing.
On failure it saves the (shrunk) input model as .onnx and as text IR and names the folder.

Example budgets come from hypothesis profiles: `lepton-ci` (default, 25 examples) and
`lepton-deep` (300); choose with `HYPOTHESIS_PROFILE=lepton-deep` or `--hypothesis-profile`.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import lepton_ir
from lepton_ir.reference import compare_outputs as _compare
from lepton_ir.reference import ort_session, run_ort

from .base import Pass, get_pass


def register_profiles() -> None:
    """Register the `lepton-ci` and `lepton-deep` hypothesis profiles (idempotent).

    One definition, in `lepton_ir.testing.pytest_plugin` (the pytest plugin every installation
    loads); CI runs are derandomized there so a red build is reproducible and never flaky."""
    from lepton_ir.testing.pytest_plugin import register_profiles as register

    register()


class CoverageWarning(UserWarning):
    """check_pass: the pass changed few of the generated models, so the check proved little."""


#: Share of generated models a pass should change for check_pass to say something about it;
#: below it check_pass warns (and steers generation toward the pass's rules), at 0 it fails
#: when generation was steered at all (see check_pass).
MIN_CHANGED = 0.1


def _resolve(p: Any) -> Any:
    if isinstance(p, str):
        from .pipeline import parse_pipeline

        return parse_pipeline(p)
    if isinstance(p, type) and issubclass(p, Pass):
        return p()
    if not hasattr(p, "run"):
        raise TypeError(f"check_pass needs a Pass, a Pass class or pipeline text, not {type(p).__name__}")
    return p


def _label(p: Any) -> str:
    text = str(p) if not isinstance(p, Pass) else (p.name or type(p).__name__)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80] or "pass"


def _tolerance(p: Any, model: lepton_ir.Model) -> tuple[float, float]:
    if hasattr(p, "tolerance"):
        return p.tolerance(model)
    tols = [q.tolerance(model) for q in getattr(p, "passes", lambda: [])()]
    if not tols:
        return (1e-4, 1e-5)
    return (max(t[0] for t in tols), max(t[1] for t in tols))


def _idempotent(p: Any) -> bool:
    if isinstance(p, Pass):
        return type(p).idempotent
    passes = getattr(p, "passes", lambda: [])()
    return bool(passes) and all(type(q).idempotent for q in passes)


def _ort(proto: Any, feeds: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    sess = ort_session(proto, threads=1)
    return list(zip([o.name for o in sess.get_outputs()], run_ort(sess, feeds)))


def compare_outputs(ref: Sequence[tuple[str, np.ndarray]], got: Sequence[tuple[str, np.ndarray]],
                    rtol: float, atol: float) -> str | None:
    """None if outputs agree (names, dtypes, shapes, values within tolerance), else why not.

    `lepton_ir.reference.compare_outputs` (its NaN/inf policy), integers and bools exact, with
    this harness's wording.
    """
    bad = _compare(ref, got, rtol, atol, exact_integers=True)
    if bad is None:
        return None
    if bad.index < 0:
        return bad.reason
    name, a = ref[bad.index][0], np.asarray(ref[bad.index][1])
    b = np.asarray(got[bad.index][1])
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"output {name!r}: {a.dtype}{list(a.shape)} became {b.dtype}{list(b.shape)}"
    if a.dtype.kind in "fc":
        why = "" if bad.reason == "values differ" else f" ({bad.reason})"
        return f"output {name!r} differs{why}: max abs error {bad.max_abs:.3g} (rtol {rtol:g}, atol {atol:g})"
    return f"output {name!r} differs (exact dtype {a.dtype})"


def _run(p: Any, model: lepton_ir.Model) -> None:
    """Run `p` on `model`; through a strict PassManager when it is a Pass or a Pipeline, so a pass
    that misreports whether it changed the model fails the check like any other bug."""
    from .manager import PassChangedMismatchError, PassManager
    from .pipeline import Pipeline

    if not isinstance(p, (Pass, Pipeline)):
        p.run(model)
        return
    try:
        PassManager(p, verify_each=False, strict_changed=True).run(model)
    except PassChangedMismatchError as e:
        raise AssertionError(str(e)) from None


def failure_dir(label: str, save_dir: str | os.PathLike | None = None) -> Path:
    root = Path(save_dir or os.environ.get("LEPTON_FAILURES_DIR", ".lepton-failures"))
    return root / label


def check_one(p: Any, proto: Any, seed: int = 0, *, rtol: float | None = None, atol: float | None = None,
              idempotent: bool | None = None) -> bool:
    """Run all checks of `check_pass` on one ONNX model; raise AssertionError saying which failed.
    Returns whether the pass changed the model (its text form), whatever the pass reported."""
    import onnx

    from lepton_ir.testing.strategies import inputs_for

    model = lepton_ir.load(proto)
    before = lepton_ir.to_text(model)
    _run(p, model)
    try:
        model.verify()
    except lepton_ir.VerifyError as e:
        raise AssertionError(f"the pass broke the IR: {e}") from None
    out = lepton_ir.to_onnx(model)
    try:
        onnx.checker.check_model(out, full_check=True)
    except Exception as e:
        raise AssertionError(f"the export fails onnx.checker: {str(e).splitlines()[0]}") from None
    r_tol, a_tol = _tolerance(p, model)
    feeds = inputs_for(proto, seed)
    why = compare_outputs(_ort(proto, feeds), _ort(out, feeds), rtol if rtol is not None else r_tol,
                          atol if atol is not None else a_tol)
    if why:
        raise AssertionError(why)
    text = lepton_ir.to_text(model)
    again = lepton_ir.to_text(lepton_ir.from_text(text))
    if again != text:
        raise AssertionError("the text form does not round-trip after the pass")
    if idempotent if idempotent is not None else _idempotent(p):
        _run(p, model)
        if lepton_ir.to_text(model) != text:
            raise AssertionError("the pass declares itself idempotent but a second run changed the model")
    return text != before


def check_pass(pass_or_pipeline: Any, *, strategy: Any = None, ops: Sequence[str] | None = None,
               bias: Mapping[str, float] | None = None, pattern: str | None = None,
               max_examples: int | None = None, rtol: float | None = None, atol: float | None = None,
               idempotent: bool | None = None, save_dir: str | os.PathLike | None = None,
               shrink: bool = True, min_changed: float | None = None, **strategy_options: Any) -> None:
    """Property-check a pass over generated models (see the module doc). Raises on a failure.

    `strategy` overrides generation entirely; otherwise `pattern` (a PRESETS name), `ops`, `bias`
    and `strategy_options` go to `lepton_ir.testing.strategies`. `shrink=False` reports the first
    failing model as found (faster; mutation tests use it).

    A check is only as good as the models the pass actually changed. When fewer than `min_changed`
    (a share of the examples, default `MIN_CHANGED`) changed, check_pass issues a CoverageWarning
    and, if the pass's rewrite rules are known (every `apply_rules` call is observed), runs a
    second budget on models made of the op types those rules match. If then still no generated
    model was changed although generation was steered (by `pattern`/`ops`/`bias`/`strategy` or
    by the rules), it fails: the property was never exercised. `min_changed=0` turns this off for
    passes that are not meant to apply to generic models.
    """
    from hypothesis import given, note, settings
    from hypothesis import strategies as st

    from lepton_ir.testing.strategies import onnx_models, pattern_models

    register_profiles()
    p = _resolve(pass_or_pipeline)
    strategy_given = strategy is not None
    if strategy is None:
        if pattern is not None:
            strategy = pattern_models(pattern, bias=bias, **strategy_options)
        else:
            strategy = onnx_models(ops=ops, bias=bias, **strategy_options)
    label = _label(p)
    out_dir = failure_dir(label, save_dir)
    base = settings()
    if base.max_examples == settings.default.max_examples and os.environ.get("HYPOTHESIS_PROFILE") is None:
        base = settings.get_profile("lepton-ci")
    from hypothesis import Phase

    phases = base.phases if shrink else tuple(ph for ph in base.phases if ph != Phase.shrink)
    budget = settings(base, max_examples=max_examples or base.max_examples, deadline=None, phases=phases)
    user_steered = strategy_given or any(x is not None for x in (pattern, ops, bias))
    counts = {"examples": 0, "changed": 0}
    rule_ops: set[str] = set()

    def observe(rules: Any) -> None:  # which op types the pass's rules match (see rewrite.RULE_OBSERVERS)
        from .rewrite import pattern_op_types

        for r in rules:
            try:
                rule_ops.update(pattern_op_types(r))
            except Exception:  # a rule whose pattern cannot be traced just gives no hint
                continue

    def check_one(*args: Any, **kwargs: Any) -> bool:  # the module's, counting what the pass changed
        changed = _check_one(*args, **kwargs)
        counts["examples"] += 1
        counts["changed"] += bool(changed)
        return changed

    # `prop` keeps its exact source: derandomized profiles seed generation from it (hypothesis's
    # function_digest), and the mutation tests' budgets were sized on those examples.
    @budget
    @given(proto=strategy, seed=st.integers(0, 2**16))
    def prop(proto: Any, seed: int) -> None:
        try:
            check_one(p, proto, seed, rtol=rtol, atol=atol, idempotent=idempotent)
        except Exception as e:
            # Hypothesis replays the shrunk example last, so the files end up holding the minimal case.
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "model.onnx").write_bytes(proto.SerializeToString())
            try:
                (out_dir / "model.lep").write_text(lepton_ir.to_text(lepton_ir.load(proto)))
            except Exception:  # the text form is a convenience; the .onnx file is the reproducer
                pass
            (out_dir / "README.txt").write_text(
                f"check_pass({str(p)!r}) failed on this model (inputs seed {seed}):\n  {e}\n"
                f"Reproduce: lepton-opt {out_dir / 'model.onnx'} --passes '{p}' --check\n")
            note(f"failing model saved in {out_dir}")
            raise AssertionError(f"{p}: {e} [model saved in {out_dir}]") from e

    from .rewrite import RULE_OBSERVERS

    RULE_OBSERVERS.append(observe)
    try:
        try:
            prop()
        except AssertionError:
            _reproducible_readme(out_dir / "README.txt", p)
            raise
        share = MIN_CHANGED if min_changed is None else min_changed
        need = math.ceil(share * max(counts["examples"], 1)) if share > 0 else 0
        if counts["changed"] >= need:
            return
        from lepton_ir.testing.strategies import onnx_models as models, op_names

        steer = sorted(rule_ops & set(op_names()))
        first = f"{label}: changed {counts['changed']} of {counts['examples']} generated models"
        if steer and not strategy_given:
            warnings.warn(f"{first}; steering generation toward the op types its rules match ({', '.join(steer)})",
                          CoverageWarning, stacklevel=2)
            opts = {k: v for k, v in strategy_options.items() if k in ("dtypes", "symbolic_dims", "opset", "max_nodes")}
            steered = st.one_of(models(ops=steer, min_nodes=2, **opts),
                                models(bias={op: 20.0 for op in steer}, **opts))
            try:
                budget(given(proto=steered, seed=st.integers(0, 2**16))(prop.hypothesis.inner_test))()
            except AssertionError:
                _reproducible_readme(out_dir / "README.txt", p)
                raise
        if counts["changed"] == 0 and (user_steered or steer):
            raise AssertionError(
                f"{first}{' (and none of the models made of ' + ', '.join(steer) + ')' if steer else ''}: the "
                "property was never exercised. Steer generation toward what the pass rewrites (pattern=, ops=, "
                "bias=, strategy=), or pass min_changed=0 if it is not meant to apply to generated models")
        if counts["changed"] < need:
            warnings.warn(f"{label}: changed only {counts['changed']} of {counts['examples']} generated models; the "
                          "check proves little (steer it with pattern=, ops=, bias=)", CoverageWarning, stacklevel=2)
    finally:
        RULE_OBSERVERS.remove(observe)


_check_one = check_one


def _reproducible_readme(readme: Path, p: Any) -> None:
    """Make the README's `lepton-opt` line runnable for a pass whose package is not installed:
    PYTHONPATH and `--load-plugin` for it (see instruments.plugin_prefix)."""
    from .instruments import plugin_prefix

    env, plugins = plugin_prefix(p)
    if not readme.is_file() or not (env or plugins):
        return
    text = readme.read_text()
    readme.write_text(text.replace("Reproduce: lepton-opt ", f"Reproduce: {env}lepton-opt ", 1)
                      .replace(" --passes ", f"{plugins} --passes ", 1))


__all__ = ["check_pass", "check_one", "compare_outputs", "register_profiles", "CoverageWarning", "MIN_CHANGED"]


def registered_passes() -> list[str]:
    """Names of every registered pass (for parametrizing a suite over the registry)."""
    from .base import list_passes

    return list(list_passes())


def get(name: str) -> Pass:
    return get_pass(name)()
