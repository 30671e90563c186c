"""Declared floors stay above known vulnerabilities (tests/advisories.toml).

pip-audit cannot reach its vulnerability data everywhere (docs/security.md), so the repository
keeps a small table of advisories: package, first fixed release, id. These tests fail when a floor
in pyproject.toml (the dependencies and every extra), a pin in .ci/floors.txt, or the version
installed in the running environment (.ci/floors runs this file in the floors venv) is below a
row of it. No network.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
TABLE = Path(__file__).with_name("advisories.toml")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _advisories() -> list[dict]:
    return tomllib.loads(TABLE.read_text())["advisory"]


def _by_package() -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in _advisories():
        rows.setdefault(_norm(row["package"]), []).append(row)
    return rows


def _below(name: str, got: str) -> list[str]:
    """The advisories for ``name`` that version ``got`` is below, one line each."""
    return [f"{row['package']} {got} < {row['fixed']} ({row['id']}: {row['summary']})"
            for row in _by_package().get(_norm(name), []) if Version(got) < Version(row["fixed"])]


def _declared_floors() -> list[tuple[str, str, str]]:
    """(where, name, floor) for every requirement with a lower bound in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project.get("dependencies", [])}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        groups[f"[{extra}]"] = reqs
    floors = []
    for where, reqs in groups.items():
        for text in reqs:
            req = Requirement(text)
            lows = [s.version for s in req.specifier if s.operator in (">=", "==", "~=", ">")]
            if lows:
                floors.append((where, req.name, min(lows, key=Version)))
    return floors


def _floor_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pin = line.partition("==")
            pins[name.strip()] = pin.strip()
    return pins


def test_the_table_is_well_formed():
    rows = _advisories()
    assert rows, "tests/advisories.toml has no [[advisory]] rows"
    for row in rows:
        missing = {"package", "fixed", "id", "summary", "checked"} - set(row)
        assert not missing, f"{row.get('package')} {row.get('id')}: missing {sorted(missing)}"
        Version(row["fixed"])  # a valid version, or InvalidVersion names it


def test_the_table_names_declared_dependencies():
    # A row for a package raystyle does not declare would check nothing.
    declared = {_norm(name) for _, name, _ in _declared_floors()}
    stray = sorted(set(_by_package()) - declared)
    assert not stray, f"advisories for packages pyproject.toml does not declare: {stray}"


def test_declared_floors_are_above_every_advisory():
    bad = [f"pyproject.toml {where}: {name}>={floor}: {line}"
           for where, name, floor in _declared_floors() for line in _below(name, floor)]
    assert not bad, "floors below a known vulnerability's fix:\n" + "\n".join(bad)


def test_ci_floor_pins_are_above_every_advisory():
    bad = [f".ci/floors.txt: {name}=={pin}: {line}"
           for name, pin in _floor_pins().items() for line in _below(name, pin)]
    assert not bad, "floor pins below a known vulnerability's fix:\n" + "\n".join(bad)


def test_installed_versions_are_above_every_advisory():
    # In the floors venv (.ci/floors runs this file there) these are the floors themselves.
    bad, checked = [], 0
    for name in _by_package():
        try:
            got = version(name)
        except PackageNotFoundError:
            continue
        checked += 1
        bad += [f"installed: {line}" for line in _below(name, got)]
    assert not bad, "installed versions below a known vulnerability's fix:\n" + "\n".join(bad)
    assert checked, "none of the advisories' packages is installed here"


@pytest.mark.parametrize(("name", "got", "hit"), [
    ("pillow", "10.0.0", "CVE-2023-4863"),
    ("Pillow", "12.2.0", "CVE-2026-59197"),
    ("ray", "2.51.0", "CVE-2025-62593"),
    ("python_multipart", "0.0.9", "CVE-2024-53981"),
    ("onnxruntime", "1.20.0", "onnxruntime external-data path check"),
])
def test_a_vulnerable_version_is_named_with_its_advisory(name, got, hit):
    # The check itself, on the versions the issue found declared: each fails, naming the advisory.
    assert any(hit in line for line in _below(name, got))
    assert not _below(name, "999")
