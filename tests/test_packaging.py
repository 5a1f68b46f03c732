"""Packaging and layering rules, checked on the source tree.

- every package folder is listed in pyproject.toml (two import names live in folders of another
  name, so setuptools cannot discover them);
- lepton_ir imports none of the other packages; lepton_passes imports only lepton_ir;
  lepton_backends imports lepton_ir and lepton_passes; lepton sits on top.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"lepton_ir": "lepton_ir", "lepton_passes": "passes", "lepton_backends": "backends", "lepton": "lepton"}
ALLOWED = {
    "lepton_ir": set(),
    "lepton_passes": {"lepton_ir"},
    "lepton_backends": {"lepton_ir", "lepton_passes"},
    "lepton": {"lepton_ir", "lepton_passes", "lepton_backends"},
}


def _packages_on_disk() -> set[str]:
    out = set()
    for name, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            out.add(".".join([name, *rel.parts]))
    return out


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = _packages_on_disk()
    assert on_disk - listed == set(), "package folders missing from pyproject.toml"
    assert listed - on_disk == set(), "pyproject.toml lists packages that do not exist"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(FOLDERS)


@pytest.mark.parametrize("package", list(FOLDERS))
def test_layering(package):
    bad = []
    for py in (ROOT / FOLDERS[package]).rglob("*.py"):
        extra = _imports(py) - ALLOWED[package] - {package}
        if extra:
            bad.append(f"{py.relative_to(ROOT)} imports {sorted(extra)}")
    assert not bad, "\n".join(bad)
