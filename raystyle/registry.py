"""The styles registry: a directory of ``NAME -> .versions/NAME/VERSION/{model.onnx, model.json, ...}``.

``model.json`` describes the entry completely (artefacts describe themselves): style
name, version, direction, architecture, the training run and step it came from, the ONNX
opset, input constraints, every exported precision with its file and the validation
figures measured at export. The default directory is ``$RAYSTYLE_HOME/models``
(``~/raystyle/models``); the environment variable ``RAYSTYLE_MODELS`` or a ``models_dir``
argument overrides it.

Versions and atomic swaps: ``MODELS/NAME`` is a relative symlink to a version folder
``MODELS/.versions/NAME/VERSION/`` (VERSION sorts by creation time). ``install`` renames a
finished folder into ``.versions/NAME/``, points a temporary symlink at it and
``os.replace``s that over ``MODELS/NAME``: one rename, so a reader sees the old version
or the new one, whole, and never a missing style. A reader resolves the symlink once
(``Style.version_dir``) and reads ``model.json`` and every file from that folder. The
newest ``KEEP`` versions (and the current one) are kept, so a reader that resolved an
older version can still open it; older ones are renamed away before being deleted, so a
reader sees a version whole or not at all (and ``get_style`` / the Stylizer resolve again).
A plain ``MODELS/NAME/`` folder from an older raystyle is read as is and migrated on the
next install.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raystyle.config import MODELS_ENV, default_models_dir  # noqa: F401  (MODELS_ENV re-exported)
from raystyle.errors import RaystyleError
from raystyle.util.storage import is_plain_name

METADATA = "model.json"
PRECISIONS = ("fp32", "fp16", "int8")
NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: "$" also matches before a final newline
VERSIONS = ".versions"  # MODELS/.versions/NAME/VERSION/
# model.json fields of a precision that name a file of the version's folder (plain names only)
FILE_FIELDS = ("file", "tile", "stats", "sums", "encoder", "decoder")
KEEP = 3  # versions kept per style (the current one always)
# A version replaced less than GRACE_S seconds ago is kept too, whatever KEEP says: a reader
# (a Serve replica starting, a batch actor) that resolved it just before the swap must still
# find every file of it, however fast exports follow each other.
GRACE_S = 600.0


class RegistryError(RaystyleError):
    """Unknown style, bad style name, or a registry entry without the asked-for file."""


def models_dir(path: str | Path | None = None) -> Path:
    """``path``, else $RAYSTYLE_MODELS, else $RAYSTYLE_HOME/models (config.default_models_dir)."""
    return Path(path).expanduser() if path else default_models_dir()


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise RegistryError(
            f"style name {name!r} must be 1-64 letters, digits, '.', '_' or '-' (not starting with . _ -)"
        )
    return name


@dataclass(frozen=True)
class Style:
    name: str
    path: Path  # MODELS/NAME (the entry; its parent is the models directory)
    meta: dict[str, Any]
    version_dir: Path = field(default=None)  # type: ignore[assignment]  # resolved; defaults to path

    def __post_init__(self) -> None:
        if self.version_dir is None:
            object.__setattr__(self, "version_dir", self.path)

    @property
    def version(self) -> str:
        return self.meta.get("version") or self.version_dir.name

    @property
    def kind(self) -> str:
        """``generator`` (one image in, one out) or ``arbitrary`` (AdaIN: a style image per request)."""
        return self.meta.get("kind", "generator")

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.meta.get("precisions", {})]

    def file(self, precision: str = "fp32", kind: str = "model") -> Path:
        """The ONNX file of ``precision`` in this version; ``kind`` is model, tile, stats or sums."""
        entry = self.meta.get("precisions", {}).get(precision)
        if entry is None:
            raise RegistryError(
                f"style {self.name!r} has no {precision} model (exported: {', '.join(self.precisions)})"
            )
        field_name = "file" if kind == "model" else kind
        name = entry.get(field_name)
        if name is None:
            raise RegistryError(f"style {self.name!r} has no {kind} graph for {precision}")
        return self.version_dir / _plain(self.name, f"precisions.{precision}.{field_name}", name)

    def check_files(self) -> Style:
        """Every file model.json names is a plain name in this version's folder (RegistryError,
        naming the field, otherwise): nothing outside the style's folder is ever opened."""
        for precision, entry in (self.meta.get("precisions") or {}).items():
            if not isinstance(entry, dict):
                raise RegistryError(f"style {self.name!r}: model.json precisions.{precision} is not an object")
            for key in FILE_FIELDS:
                if key in entry:
                    _plain(self.name, f"precisions.{precision}.{key}", entry[key])
        for key in ("torchscript",):
            if key in self.meta:
                _plain(self.name, key, self.meta[key])
        return self


def _plain(style: str, field_name: str, value: Any) -> str:
    if not is_plain_name(value):
        raise RegistryError(f"style {style!r}: model.json {field_name} {value!r} must be a plain file "
                            "name inside the style's folder (no '/', '\\', '..' or absolute path)")
    return value


def _read(entry: Path, attempts: int = 5) -> Style | None:
    """Resolve ``entry`` once and read model.json from that version (again if it was just pruned)."""
    for _ in range(attempts):
        folder = Path(os.path.realpath(entry))
        try:
            meta = json.loads((folder / METADATA).read_text())
        except FileNotFoundError:
            if folder.exists() or not os.path.lexists(entry):
                return None  # not a style (or gone): no retry
            continue  # the version was pruned between resolving and reading: resolve again
        except (OSError, json.JSONDecodeError):
            return None
        return Style(entry.name, entry, meta, folder)
    return None


def list_styles(directory: str | Path | None = None) -> list[Style]:
    """Complete entries, sorted by name (hidden entries: versions and folders being written)."""
    root = models_dir(directory)
    if not root.is_dir():
        return []
    found = (_read(p) for p in sorted(root.iterdir()) if not p.name.startswith(".") and p.is_dir())
    return [s for s in found if s is not None]


def get_style(name: str, directory: str | Path | None = None) -> Style:
    root = models_dir(directory)
    style = _read(root / check_name(name))
    if style is None:
        known = ", ".join(s.name for s in list_styles(root)) or "none"
        raise RegistryError(f"unknown style {name!r} in {root} (available: {known})")
    return style.check_files()


# -- writing: versions and the atomic swap -------------------------------------------------


def new_version(name: str, directory: str | Path | None = None) -> tuple[str, Path]:
    """(version id, an empty hidden work folder to write it in) for style ``name``."""
    check_name(name)
    now = time.time()
    version = (time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
               + f".{int(now * 1e6) % 1_000_000:06d}-{uuid.uuid4().hex[:6]}")
    work = models_dir(directory) / VERSIONS / f".{name}.{version}.tmp"
    work.mkdir(parents=True)
    return version, work


def versions(name: str, directory: str | Path | None = None) -> list[str]:
    """The kept versions of ``name``, oldest first."""
    folder = models_dir(directory) / VERSIONS / check_name(name)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def install(work: Path, name: str, version: str, directory: str | Path | None = None,
            keep: int = KEEP, grace: float | None = None) -> Style:
    """Make the finished folder ``work`` version ``version`` of ``name`` and swap it in atomically."""
    root = models_dir(directory)
    check_name(name)
    entry = root / name
    target = root / VERSIONS / name / version
    target.parent.mkdir(parents=True, exist_ok=True)
    work.rename(target)
    os.utime(target)  # its mtime says when it was installed (= when its predecessor was replaced)
    link = root / f".{name}.{uuid.uuid4().hex[:8]}.link"
    os.symlink(os.path.relpath(target, root), link)
    try:
        if entry.is_dir() and not entry.is_symlink():
            _migrate(entry, link, root / VERSIONS / name)
        else:
            os.replace(link, entry)  # rename(2): readers see the old link or the new one
    finally:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
    prune(name, root, keep, grace)
    return get_style(name, root)


def prune(name: str, directory: str | Path | None = None, keep: int = KEEP,
          grace: float | None = None) -> list[str]:
    """Delete all but the newest ``keep`` versions, except the current one and any replaced less
    than ``grace`` seconds ago (default GRACE_S); returns the deleted."""
    root = models_dir(directory)
    folder = root / VERSIONS / name
    current = Path(os.path.realpath(root / name)).name
    grace = GRACE_S if grace is None else grace
    kept = versions(name, root)
    now = time.time()

    def replaced_long_ago(i: int) -> bool:  # its successor was installed over ``grace`` s ago
        try:
            return now - (folder / kept[i + 1]).stat().st_mtime >= grace
        except (IndexError, FileNotFoundError):
            return False

    old = [v for i, v in enumerate(kept[: -max(1, keep)]) if v != current and replaced_long_ago(i)]
    for v in old:
        trash = folder / f".{v}.{uuid.uuid4().hex[:6]}.trash"
        with contextlib.suppress(FileNotFoundError):
            (folder / v).rename(trash)  # gone in one step for readers, then deleted
            shutil.rmtree(trash, ignore_errors=True)
    return old


def _migrate(plain: Path, link: Path, versions_dir: Path) -> None:
    """Replace a plain ``MODELS/NAME/`` folder (older raystyle) by the symlink ``link``.

    On Linux one renameat2(RENAME_EXCHANGE) swaps them atomically; elsewhere the folder is
    moved away first and the entry is missing for the time of one rename.
    """
    mtime = (plain / METADATA).stat().st_mtime if (plain / METADATA).exists() else plain.stat().st_mtime
    legacy = versions_dir / (time.strftime("%Y%m%dT%H%M%S", time.gmtime(mtime)) + ".000000-legacy")
    if _exchange(link, plain):
        link.rename(legacy)  # ``link`` now names the old folder
    else:
        plain.rename(legacy)
        os.replace(link, plain)


def _exchange(a: Path, b: Path) -> bool:
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
