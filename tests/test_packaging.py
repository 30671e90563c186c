"""The install is complete: every module imports in a clean interpreter, every third-party
import is a declared dependency, and a built wheel carries what the commands need at run time
(presets, serve configs, the monitor page), found inside the package, not the clone."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest

import raystyle

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(raystyle.__file__).resolve().parent


APP = PACKAGE / "monitor" / "dashboard" / "app.py"  # a Streamlit script, not a module


def _modules() -> list[str]:
    """Every module of the package (subpackages included), by dotted name."""
    names = []
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        if p == APP or parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def _imports(path: Path) -> set[str]:
    """Top-level names of absolute imports in a file (relative imports are the package's own)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    """[project] dependencies as installed (the metadata pip built from pyproject.toml), no extras."""
    return {_normalise(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0])
            for r in requires("raystyle") or [] if "extra ==" not in r}


def test_every_module_and_the_dashboard_imports_in_a_clean_interpreter(tmp_path):
    """A fresh `python -I` outside the clone (no tests on sys.path, no cwd import): each module
    of raystyle and every module the monitor page imports, each reported on its own."""
    app_imports = sorted(_imports(APP))
    code = (
        "import importlib, json, sys\n"
        f"names = {(_modules() + app_imports)!r}\n"
        "bad = {}\n"
        "for n in names:\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except Exception as e:\n"
        "        bad[n] = f'{type(e).__name__}: {e}'\n"
        "import raystyle\n"
        "print(json.dumps({'bad': bad, 'file': raystyle.__file__, 'n': len(names)}))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["bad"] == {}
    assert Path(report["file"]).resolve().parent == PACKAGE
    assert report["n"] >= 60 and "raystyle.export.generator" in _modules() and "streamlit" in app_imports


def test_every_third_party_import_is_a_declared_dependency():
    """Each distribution that raystyle/ or the monitor page imports is in [project]
    dependencies (the dev extra does not count: users do not install it)."""
    files = [*PACKAGE.rglob("*.py")]  # the monitor page (APP) included
    stdlib = set(sys.stdlib_module_names)
    dists = packages_distributions()
    declared = _declared()
    missing = {}
    for f in files:
        for name in _imports(f) - stdlib - {"raystyle"}:
            owners = {_normalise(d) for d in dists.get(name, [name])}
            if not owners & declared:
                missing.setdefault(name, []).append(f.name)
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def test_the_onnx_exporter_dependencies_torch_does_not_declare_are_declared():
    # torch.onnx.export(dynamo=True) imports onnxscript and onnx_ir; torch's wheel does not
    # require them, so a fresh install without them fails at the first export.
    assert {"onnxscript", "onnx-ir"} <= _declared()
    reqs = requires("raystyle") or []
    assert any(r.startswith("setuptools") and "3.12" in r for r in reqs), \
        "GPUtil imports distutils (gone in Python 3.12): setuptools brings it back"


def test_run_time_files_are_found_inside_the_package():
    from raystyle.cli.common import SERVE_CONFIG
    from raystyle.config import PRESETS_DIR, preset_path
    from raystyle.monitor.snapshot import app_path

    for path in (PRESETS_DIR, SERVE_CONFIG, app_path(), preset_path("tiny")):
        assert PACKAGE in path.resolve().parents, path
    # The clone's user-facing folders are links to the packaged ones (one copy of each file).
    assert (ROOT / "jobs" / "configs" / "tiny.yaml").resolve() == preset_path("tiny").resolve()
    assert (ROOT / "serve_configs" / "local.yaml").resolve() == SERVE_CONFIG.resolve()
    assert (ROOT / "dashboard" / "app.py").resolve() == app_path().resolve()


@pytest.mark.slow  # builds a wheel in a subprocess
@pytest.mark.timeout(300)
def test_the_built_wheel_carries_presets_serve_configs_and_the_monitor(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                          str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("raystyle-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = {f"raystyle/config/presets/{p.name}" for p in (PACKAGE / "config" / "presets").glob("*.yaml")}
    needed |= {f"raystyle/serve/configs/{p.name}" for p in (PACKAGE / "serve" / "configs").glob("*.yaml")}
    needed |= {"raystyle/monitor/dashboard/app.py", "raystyle/cli/main.py"}
    assert {"raystyle/config/presets/tiny.yaml", "raystyle/serve/configs/local.yaml"} <= needed
    assert needed <= names, sorted(needed - names)
    assert not [n for n in names if n.startswith(("tests/", "bench/", "jobs/"))]


def test_ci_floors_pin_every_declared_floor():
    """.ci/floors installs exactly these pins: each runtime dependency's lower bound in
    pyproject.toml, so the floors the package declares are the ones CI tests."""
    pins = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_normalise(name)] = version
    floors = {}
    for req in requires("raystyle") or []:
        if "extra ==" in req or "python_version" in req:
            continue
        name = _normalise(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0])
        m = re.search(r">=\s*([0-9][^,;\s)]*)", req)
        assert m, f"{req}: every runtime dependency declares a floor"
        floors[name] = m.group(1)
    from packaging.version import Version

    assert set(pins) == set(floors)
    assert {k: Version(v) for k, v in pins.items()} == {k: Version(v) for k, v in floors.items()}


# ---------------------------------------------------------------------------------------
# .ci/lib.sh: net_retry runs an install again after a network error, never a failing test

def _net_retry(tmp_path: Path, script: str) -> tuple[int, str, int]:
    """Run ``net_retry bash step.sh`` (waits of 0 s); return (exit code, output, tries)."""
    step = tmp_path / "step.sh"
    step.write_text(f'echo x >> "{tmp_path}/tries"\n' + script)
    out = subprocess.run(
        ["bash", "-c", f'set -euo pipefail; . .ci/lib.sh; net_retry bash "{step}"'],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={"NET_RETRY_WAIT_S": "0",
                                                                  "PATH": "/usr/bin:/bin"})
    tries = (tmp_path / "tries").read_text().count("x")
    return out.returncode, out.stdout + out.stderr, tries


def test_net_retry_runs_a_cut_download_again(tmp_path):
    # The CI failure this guards against, cut off on the first try only
    rc, out, tries = _net_retry(tmp_path, f'''
if [ ! -e "{tmp_path}/once" ]; then touch "{tmp_path}/once"
  echo "error: incomplete-download"; echo "Download failed after 6 attempts"; exit 1; fi
echo installed''')
    assert (rc, tries) == (0, 2) and "installed" in out and "trying again" in out


def test_net_retry_gives_up_after_three_tries(tmp_path):
    rc, out, tries = _net_retry(tmp_path, 'echo "ReadTimeoutError: Read timed out."; exit 7')
    assert (rc, tries) == (7, 3)


@pytest.mark.parametrize("script", [
    'echo "ERROR: No matching distribution found for torch==0.0.1"; exit 1',  # not the network
    'echo "== test session starts =="; echo "Connection refused"; exit 1',   # a failing test
])
def test_net_retry_does_not_retry_other_failures(tmp_path, script):
    rc, out, tries = _net_retry(tmp_path, script)
    assert (rc, tries) == (1, 1)
