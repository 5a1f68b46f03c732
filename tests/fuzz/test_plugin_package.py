"""Issue #19, must-show 4: the harness as a plugin author meets it, in a separate package.

A throwaway package in tmp_path holds the worked example of docs/testing-passes.md, its pass made
wrong on purpose (`Neg(Neg(x)) -> Neg(x)` instead of `-> x`), and the docs' own test file. Its
tests run in a pytest subprocess rooted there: nothing of Lepton's test suite is loaded (no
conftest), only what an installed Lepton gives any project (the `pytest11` plugin).

* under the default profile `check_pass` fails on the wrong pass (and passes the right one);
* the reproducer command it prints runs as printed, though the plugin is not installed
  (`--load-plugin` and PYTHONPATH), and reproduces the failure;
* HYPOTHESIS_PROFILE is honoured, and a wrong name is a loud usage error.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

PASSES = '''
from dataclasses import dataclass
from lepton_passes import Pass, register_pass
from lepton_passes.rewrite import Rule, apply_rules


class DoubleNegation(Rule):
    """Neg(Neg(x)) -> x."""

    def pattern(self, op, x):
        return op.Neg(op.Neg(x))

    def rewrite(self, op, x):
        return op.{REWRITE}(x)


@register_pass
@dataclass(frozen=True)
class RemoveDoubleNegation(Pass):
    """Remove pairs of negations."""

    name = "remove-double-neg"
    idempotent = True

    def run(self, model):
        return apply_rules(model, [DoubleNegation()]).changed
'''

TEST_FILE = '''
from lepton_passes.testing import check_pass
import my_plugin.passes  # registers the pass


def test_property():
    # bias generation toward the op the pass rewrites
    check_pass("remove-double-neg", bias={"Neg": 10.0})


def test_unit():
    import lepton_ir
    m = lepton_ir.from_text(\'\'\'
    model <ir_version=8, opset={"": 17}>
    graph g(%x: f32[4]) -> (%y) {
      %a = Neg(%x)
      %b = Neg(%a)
      %y = Relu(%b)
      return %y
    }\'\'\')
    from my_plugin.passes import RemoveDoubleNegation
    assert RemoveDoubleNegation().run(m)
'''

PROFILE_TEST = '''
from hypothesis import settings


def test_profile_loaded():
    print("PROFILE", settings._current_profile, settings.default.max_examples)
'''


def _package(root: Path, rewrite: str) -> Path:
    (root / "my_plugin").mkdir(parents=True)
    (root / "my_plugin" / "__init__.py").write_text("")
    (root / "my_plugin" / "passes.py").write_text(PASSES.replace("{REWRITE}", rewrite))
    (root / "tests").mkdir()
    (root / "tests" / "test_remove_double_neg.py").write_text(TEST_FILE)
    return root


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYPOTHESIS_PROFILE", "PYTEST_ADDOPTS",
                                                             "PYTEST_DISABLE_PLUGIN_AUTOLOAD")}
    env.update(PYTHONPATH=str(root), LEPTON_FAILURES_DIR=str(root / "failures"), LEPTON_NO_PROGRESS="1", **extra)
    return env


def _pytest(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=root,
                          env=_env(root, **env), capture_output=True, text=True, timeout=900)


def test_wrong_double_negation_fails_check_pass_and_its_reproducer_runs(tmp_path: Path) -> None:
    root = _package(tmp_path / "pkg", "Neg")
    r = _pytest(root, "tests")
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"FAILED tests/test_remove_double_neg.py::test_property", r.stdout), r.stdout
    assert "test_unit" not in r.stdout.split("short test summary")[-1]  # the unit test alone cannot tell
    assert "differs" in r.stdout

    readme = (root / "failures" / "remove-double-neg" / "README.txt").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("Reproduce: "))[len("Reproduce: "):]
    assert "--load-plugin my_plugin.passes" in line and line.startswith("PYTHONPATH=")
    # Run the printed command as printed, from elsewhere, with no PYTHONPATH of ours.
    words = shlex.split(line)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(w.split("=", 1) for w in words if re.match(r"^[A-Z_]+=", w))
    cmd = [w for w in words if not re.match(r"^[A-Z_]+=", w)]
    assert cmd[0] == "lepton-opt"
    opt = [sys.executable, "-c", "import sys; from lepton.cli import opt_main; sys.exit(opt_main())", *cmd[1:]]
    rep = subprocess.run(opt, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rep.returncode == 1, rep.stderr
    assert rep.stderr.strip().startswith("lepton-opt: error:") and "remove-double-neg" in rep.stderr, rep.stderr
    # Without --load-plugin the same command cannot even name the pass.
    bare = [w for w in opt if w not in ("--load-plugin", "my_plugin.passes")]
    r2 = subprocess.run(bare, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 2 and "remove-double-neg" in r2.stderr, r2.stderr


def test_right_double_negation_passes(tmp_path: Path) -> None:
    """The docs' pass as written (`-> Identity(x)`) passes: the failure above is the bug, not noise."""
    root = _package(tmp_path / "pkg", "Identity")
    r = _pytest(root, "tests")
    assert r.returncode == 0, r.stdout + r.stderr


def test_hypothesis_profile_is_honoured_or_rejected(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "test_profile.py").write_text(PROFILE_TEST)
    deep = _pytest(root, "-s", HYPOTHESIS_PROFILE="lepton-deep")
    assert deep.returncode == 0 and "PROFILE lepton-deep 300" in deep.stdout, deep.stdout + deep.stderr
    ci = _pytest(root, "-s", "--hypothesis-profile=lepton-ci")
    assert "PROFILE lepton-ci 25" in ci.stdout, ci.stdout + ci.stderr
    bad = _pytest(root, HYPOTHESIS_PROFILE="lepton-depp")
    assert bad.returncode == 4, bad.stdout + bad.stderr  # pytest's usage-error status
    err = [ln for ln in (bad.stdout + bad.stderr).splitlines() if "lepton-depp" in ln]
    assert err and "not a hypothesis profile" in err[0] and "lepton-deep" in err[0], bad.stderr


def test_load_plugin_errors_are_one_line(tmp_path: Path) -> None:
    opt = [sys.executable, "-c", "import sys; from lepton.cli import opt_main; sys.exit(opt_main())"]
    r = subprocess.run([*opt, "--load-plugin", "no_such_plugin_module", "--list-passes"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "lepton-opt: error: --load-plugin no_such_plugin_module: cannot import it: ModuleNotFoundError: "
        "No module named 'no_such_plugin_module'"]
