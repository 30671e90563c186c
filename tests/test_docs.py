"""The README and docs/ hold together: every relative link and picture resolves, every anchor
into a page names one of its headings, every figure in docs/ is shown somewhere, every page is
reachable from the README, and the file map in ARCHITECTURE.md is the package's."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "ARCHITECTURE.md"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG_TAG = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)


def _lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
        elif fence is not None:
            if stripped.startswith(fence):
                fence = None
        else:
            out.append(line)
    return out


def _prose(text: str) -> str:
    """The text as a renderer reads it for links: fenced blocks and inline code left out."""
    return "\n".join(re.sub(r"`[^`]*`", "", line) for line in _lines(text))


def _targets(page: Path) -> list[str]:
    prose = _prose(page.read_text())
    return LINK.findall(prose) + IMG_TAG.findall(prose)


def _external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) is not None  # http:, mailto:, ...


def _local_links(page: Path) -> list[tuple[str, Path, str]]:
    """(as written, the file it names, its #fragment) of every relative link and image."""
    out = []
    for target in _targets(page):
        if _external(target) or target.startswith("#"):
            continue
        path, _, fragment = target.partition("#")
        out.append((target, (page.parent / unquote(path)).resolve(), fragment))
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*_~]|<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    out, seen = set(), {}
    for line in _lines(page.read_text()):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_there_are_pages_and_links():
    assert len(PAGES) >= 10, [p.name for p in PAGES]
    assert sum(len(_local_links(p)) for p in PAGES) >= 30


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_picture_resolves(page):
    broken = [target for target, path, _ in _local_links(page) if not path.exists()]
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_anchor_names_a_heading(page):
    broken = []
    for target in _targets(page):
        if _external(target) or "#" not in target:
            continue
        path, _, fragment = target.partition("#")
        into = (page.parent / unquote(path)).resolve() if path else page
        if into.suffix == ".md" and into.is_file() and fragment not in _anchors(into):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: anchors that name no heading: {broken}"


def test_every_picture_in_docs_is_shown():
    shown = {path for page in PAGES for _, path, _ in _local_links(page)}
    pictures = [p for p in DOCS.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    assert pictures
    unshown = [p.name for p in pictures if p.resolve() not in shown]
    assert not unshown, f"pictures in docs/ that no page shows: {unshown}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {path for _, path, _ in _local_links(ROOT / "README.md")}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


# -- the file map ---------------------------------------------------------------------------

ARCHITECTURE = ROOT / "ARCHITECTURE.md"
PACKAGE = ROOT / "raystyle"


def _file_map() -> list[str]:
    """Every entry of the map's tree, as a path from the repository root."""
    text = ARCHITECTURE.read_text()
    block = text[text.index("## The file map"):].split("```", 2)[1]
    entries, stack = [], []  # stack: (indent, folder) of the folders the next lines are in
    for line in block.splitlines()[1:]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        name = line.split()[0]
        if indent % 2 or indent > 2 * len(stack) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)*/?", name):
            continue  # a description's second line
        stack = [(i, folder) for i, folder in stack if i < indent]
        path = "".join(folder for _, folder in stack) + name
        entries.append(path.rstrip("/"))
        if name.endswith("/"):
            stack.append((indent, name))
    return entries


def test_the_file_map_names_only_what_exists():
    entries = _file_map()
    assert "raystyle/cli/main.py" in entries and "raystyle/infer/generator.py" in entries
    missing = [e for e in entries if not (ROOT / e).exists()]
    assert not missing, f"ARCHITECTURE.md's file map names what is not there: {missing}"


def test_the_file_map_names_every_module():
    entries = set(_file_map())
    modules = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                     if p.name != "__init__.py" and "__pycache__" not in p.parts)
    unmapped = [m for m in modules if m not in entries]
    assert not unmapped, f"modules missing from ARCHITECTURE.md's file map: {unmapped}"
    folders = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.iterdir()
                     if p.is_dir() and (p / "__init__.py").exists())
    assert not [f for f in folders if f not in entries], "every subpackage has its line"


def test_module_names_in_the_pages_exist():
    """raystyle/x/y.py paths and raystyle.x.y[:name] names written anywhere name real code."""
    stale = []
    for page in PAGES:
        text = page.read_text()
        for path in re.findall(r"(?<![\w/~.$-])raystyle/[\w/.-]*\w", text):
            if not (ROOT / path).exists():
                stale.append(f"{page.name}: {path}")
        for dotted in re.findall(r"(?<![\w/.-])raystyle\.[a-z_][\w.]*(?::\w+)?", text):
            dotted = dotted.rstrip(".")
            module, _, attr = dotted.partition(":")
            parts = module.split(".")
            for cut in range(len(parts), 0, -1):
                base = ROOT.joinpath(*parts[:cut])
                found = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
                if found.is_file():
                    rest = parts[cut:] + ([attr] if attr else [])
                    if len(rest) > 1 or (rest and rest[0] not in found.read_text()):
                        stale.append(f"{page.name}: {dotted}")
                    break
            else:
                stale.append(f"{page.name}: {dotted}")
    assert not stale, f"names of code that does not exist: {stale}"


def test_the_floors_are_pyprojects():
    """ARCHITECTURE.md's floors are the import-linter layers contract, top to bottom."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    layers = re.search(r"^type = \"layers\"\s*\nlayers = \[(.*?)\]", pyproject, re.M | re.S)
    assert layers, "pyproject.toml has an import-linter layers contract"
    contract = [" ".join(layer.replace("raystyle.", "").split())
                for layer in re.findall(r'"([^"]+)"', layers.group(1))]
    text = ARCHITECTURE.read_text()
    block = text[text.index("## What may import what"):].split("```", 2)[1]
    floors = [" ".join(line.split("  ")[0].split()) for line in block.splitlines()[1:] if line.strip()]
    assert floors == contract
