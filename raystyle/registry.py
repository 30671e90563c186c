"""The styles registry: a directory of ``NAME/{model.onnx, model.json, ...}``.

``model.json`` describes the entry completely (artefacts describe themselves): style
name, direction, architecture, the training run and step it came from, the ONNX opset,
input constraints, every exported precision with its file and the validation figures
measured at export. The default directory is ``$RAYSTYLE_HOME/models`` (``~/raystyle/models``);
the environment variable ``RAYSTYLE_MODELS`` or a ``models_dir`` argument overrides it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import MODELS_ENV, default_models_dir  # noqa: F401  (MODELS_ENV re-exported)

METADATA = "model.json"
PRECISIONS = ("fp32", "fp16", "int8")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RegistryError(ValueError):
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
    path: Path
    meta: dict[str, Any]

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if p in self.meta.get("precisions", {})]

    def file(self, precision: str = "fp32", kind: str = "model") -> Path:
        """The ONNX file of ``precision``; ``kind`` is model, tile or stats (tiling graphs)."""
        entry = self.meta.get("precisions", {}).get(precision)
        if entry is None:
            raise RegistryError(
                f"style {self.name!r} has no {precision} model (exported: {', '.join(self.precisions)})"
            )
        name = entry.get(kind) if kind != "model" else entry["file"]
        if name is None:
            raise RegistryError(f"style {self.name!r} has no {kind} graph for {precision}")
        return self.path / name


def _read(folder: Path) -> Style | None:
    try:
        meta = json.loads((folder / METADATA).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return Style(folder.name, folder, meta)


def list_styles(directory: str | Path | None = None) -> list[Style]:
    """Complete entries, sorted by name (folders being written start with '.')."""
    root = models_dir(directory)
    if not root.is_dir():
        return []
    found = (_read(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith("."))
    return [s for s in found if s is not None]


def get_style(name: str, directory: str | Path | None = None) -> Style:
    root = models_dir(directory)
    style = _read(root / check_name(name))
    if style is None:
        known = ", ".join(s.name for s in list_styles(root)) or "none"
        raise RegistryError(f"unknown style {name!r} in {root} (available: {known})")
    return style
