"""The README and the pages under docs/ match the code: their commands parse, the CLI
reference (docs/cli.md) is the parser's, the README's test command is .ci/run's, the pictures
exist beside the commands that made them. (The README's HTTP examples run against a live Serve
in test_demo.py; the commands themselves run in the tests of each command; test_docs.py checks
that links resolve.)"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from raystyle.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# Every page a command or a picture may live on: the README, then docs/*.md.
PAGES = {"README.md": README} | {
    f"docs/{p.name}": p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
CLI_REFERENCE = PAGES["docs/cli.md"]
QUICK_START = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && raystyle demo"


def _fenced(text: str = README) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    out, lang, body = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                out.append((lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return out


def _blocks(lang: str = "bash", text: str | None = None) -> list[str]:
    """The bodies of the fenced ``lang`` blocks of ``text``, or of every page."""
    texts = PAGES.values() if text is None else [text]
    return [body for page in texts for kind, body in _fenced(page) if kind == lang]


def _commands(text: str | None = None) -> list[str]:
    """Every shell line of the bash blocks (of ``text``, or of every page), continuations joined,
    comments cut."""
    out = []
    for block in _blocks(text=text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _raystyle_argvs(text: str | None = None) -> list[list[str]]:
    argvs = []
    for line in _commands(text):
        for part in re.split(r"&&|\|", line):
            words = shlex.split(part.split(">", 1)[0])
            if words and words[0] == "raystyle":
                argvs.append(words[1:])
    return argvs


def _subparsers(parser):
    return next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices


USAGES = r"""
import json
from raystyle.cli.main import build_parser
out = {}
sp_action = next(a for a in build_parser(methods=True)._actions if a.__class__.__name__ == "_SubParsersAction")
for sp in sp_action.choices.values():
    subs = [a for a in sp._actions if a.__class__.__name__ == "_SubParsersAction"]
    for p in (subs[0].choices.values() if subs else [sp]):
        text = " ".join(p.format_usage().removeprefix("usage: ").split()).replace(" [-h]", "")
        out[text.split(" [")[0].split(" --")[0]] = text
print(json.dumps(out))
"""


def _usages() -> dict[str, str]:
    """Each command's usage line, in a fresh interpreter: the package's own training methods
    only (a test may register one of its own in this process)."""
    out = subprocess.run([sys.executable, "-c", USAGES], capture_output=True, text=True, check=True,
                         timeout=120, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_raystyle_command_in_the_readme_and_docs_parses():
    assert len(_raystyle_argvs(README)) >= 1, "the quick start's raystyle demo"
    argvs = _raystyle_argvs()
    assert len(argvs) >= 15
    parser = build_parser(methods=True)  # as `raystyle train` builds it: the methods' own flags too
    for argv in argvs:
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"documented command does not parse: raystyle {' '.join(argv)} (exit {exc.code})")


def test_every_page_has_its_commands():
    """Each topic's commands moved with it: the pages that show commands still show them."""
    for page, floor in {"docs/training.md": 3, "docs/export.md": 3, "docs/styles.md": 8,
                        "docs/stylize.md": 8, "docs/serving.md": 1, "docs/monitor.md": 2}.items():
        assert len(_raystyle_argvs(PAGES[page])) >= floor, page


def test_every_command_is_in_the_readme_and_its_reference_is_the_parsers():
    reference = next(b for kind, b in _fenced(CLI_REFERENCE) if not kind and "raystyle demo [" in b)
    lines = {" ".join(line.split()) for line in reference.splitlines() if line.strip()}
    usages = _usages()
    assert len(usages) == 13
    for text in usages.values():
        assert text in lines, f"docs/cli.md's CLI reference lacks or differs from: {text}"
    for name in _subparsers(build_parser()):
        assert f"| `{name}" in README, f"command {name} missing from the README's table"


def test_readme_test_command_is_ci_run():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    quick = README[README.index("## Quick start"):README.index("## What the demo shows")]
    commands = [body for kind, body in _fenced(quick) if kind == "bash"]
    assert commands[0] == QUICK_START
    assert ci[0] == ". .ci/lib.sh"
    # net_retry runs it again only when a network error cut the install short (tests/test_packaging.py)
    assert ci[1] == f'net_retry bash -c "set -e; {commands[1]}"', \
        "`.ci/run` must run exactly the README's test command"
    assert '"' not in commands[1]
    # then the slow tests, as the README says to run them, in the venv the first line built
    assert ci[2] == ". .venv/bin/activate && python -m pytest -m slow"
    assert ci[3:] == ["bash .ci/smoke", "bash .ci/floors"]
    # A fresh virtual environment on every run: nothing installed by hand can make it pass.
    assert commands[1].startswith("python3 -m venv --clear .venv && . .venv/bin/activate && ")
    assert commands[1].endswith("pip install -e '.[dev]' && pip check && python -m pytest")
    assert "--system-site-packages" not in commands[1]
    # the default run leaves out the slow tests; the README says how to run them
    assert "not slow" in (ROOT / "pyproject.toml").read_text()
    assert "`python -m pytest -m slow`" in quick


def _pictures(text: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)


def test_pictures_exist():
    assert "docs/monitor.png" in _pictures(README) and "docs/demo_grid.png" in _pictures(README)
    # each figure on the page of the command that made it
    shown = {"docs/training.md": {"quality_curve.png", "cpu_grid.png"},
             "docs/export.md": {"distill_grid.png"},
             "docs/styles.md": {"fast_grid.png", "adain_grid.jpg"},
             "docs/monitor.md": {"monitor.png"}}
    for page, names in shown.items():
        assert names <= set(_pictures(PAGES[page])), page
    for page, text in PAGES.items():
        for pic in _pictures(text):
            path = (ROOT / page).parent / pic
            assert path.is_file() and path.stat().st_size > 10_000, f"{page}: {pic}"


def test_http_examples_use_the_demo_style():
    """test_demo.py runs these exact lines against the demo's Serve."""
    api = README[README.index("## HTTP API"):README.index("## CLI reference")]
    curls = [c for c in _commands(README) if c.startswith("curl") and c in api]
    assert len(curls) == 3 and all("/styles/demo" in c or "healthz" in c for c in curls)
