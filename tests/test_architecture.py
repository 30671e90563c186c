"""The import rules of ARCHITECTURE.md: import-linter contracts (pyproject.toml) and no private
name imported across modules (raystyle, jobs, bench and the tests alike)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TREES = ("raystyle", "jobs", "bench", "tests")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(path: Path) -> list[str]:
    """``from raystyle.x import _name`` and ``alias._name`` where ``alias`` is a raystyle module."""
    tree = ast.parse(path.read_text(), str(path))
    aliases: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "raystyle":
            for a in node.names:
                if _private(a.name):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {a.name}")
                module = f"{node.module}.{a.name}"
                if _is_module(module):
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "raystyle" and a.asname:
                    aliases.add(a.asname)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def _is_module(dotted: str) -> bool:
    parts = dotted.split(".")
    base = ROOT.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_no_private_name_crosses_a_module_line():
    files = [p for tree in TREES for p in sorted((ROOT / tree).rglob("*.py"))]
    assert len(files) > 80
    found = [line for p in files for line in private_uses(p)]
    assert not found, "private names imported from another module:\n" + "\n".join(found)


def test_the_private_name_check_finds_both_forms(tmp_path, monkeypatch):
    probe = ROOT / "tests" / "_probe_private.py"
    probe.write_text("from raystyle.infer.tiles import TilePlan as _ok\nfrom raystyle.infer import tiles\n"
                     "from raystyle.infer.base import _hidden\nx = tiles._secret\n")
    try:
        found = private_uses(probe)
    finally:
        probe.unlink()
    assert [f.split(": ", 1)[1] for f in found] == ["from raystyle.infer.base import _hidden", "tiles._secret"]


def test_import_contracts_hold():
    """`lint-imports` (import-linter) with the contracts in pyproject.toml: layers, no Ray below the
    Ray modules, no torch in infer, methods independent of inference, no cycles."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[dev]' installs import-linter")
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "5 kept, 0 broken" in out.stdout, out.stdout[-2000:]



def test_tests_mirror_the_package():
    """tests/<name>/ for every raystyle subpackage and no other folder; project-wide tests and
    those of raystyle's top-level modules sit in tests/ itself."""
    package = ROOT / "raystyle"
    subpackages = {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    folders = {p.name for p in (ROOT / "tests").iterdir() if (p / "__init__.py").exists()}
    assert folders == subpackages, (f"test folders without a subpackage: {sorted(folders - subpackages)}; "
                                    f"subpackages without a test folder: {sorted(subpackages - folders)}")
