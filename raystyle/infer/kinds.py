"""The table of style kinds: what a registry style needs at inference, asked by kind, never by string.

A style kind is what a Stylizer runs (the diffusers "pipeline family" of this project):
``generator`` (one image in, one out: CycleGAN generators, students, fast nets) and
``arbitrary`` (a photo plus style images in: AdaIN). Kind ``NAME`` lives in
``raystyle/infer/NAME.py``, which defines ``KIND = StyleKind(...)``; a new kind is one file
there (plus its export). Serve, batch, stylize, the CLI and the monitor ask ``kind_of(...)``
for a kind's stylizer, whether it takes style images and what it adds to a style's
description, and compare no kind strings.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from raystyle import registry
from raystyle.errors import RaystyleError

DEFAULT_KIND = "generator"  # model.json files written before kinds existed


class UnknownKind(RaystyleError):
    """A style whose kind this raystyle does not know."""


class Stylizer(Protocol):
    """What every kind's stylizer offers (``raystyle.infer.generator.Stylizer``,
    ``raystyle.infer.arbitrary.ArbitraryStylizer``)."""

    name: str
    kind: str
    last_infer_ms: float

    def stylize_batch(self, images: list[Any], **options: Any) -> list[np.ndarray]: ...


def _no_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class StyleKind:
    """One kind of style: how to open it and what its requests carry.

    ``stylizer``: the class that runs it (``stylizer(style, models_dir=..., **options)``);
    ``style_images``: every request brings style images (``style_image`` parts over HTTP,
    ``--style-image`` on the CLI); ``multiple``: image sides are padded to it;
    ``graph``: the file key of a precision's first graph in model.json (it must exist);
    ``describe(meta)``: the fields this kind adds to a style's public description.
    """

    name: str
    stylizer: Callable[..., Stylizer]
    style_images: bool
    multiple: int
    graph: str
    describe: Callable[[Mapping[str, Any]], dict[str, Any]] = field(default=_no_fields)


def kind_names() -> list[str]:
    """The kinds this raystyle knows: the modules of raystyle.infer that define ``KIND``."""
    here = Path(__file__).parent
    names = [m.name for m in pkgutil.iter_modules([str(here)])]
    return [n for n in names if isinstance(getattr(_module(n), "KIND", None), StyleKind)]


@cache
def _module(name: str) -> Any:
    return importlib.import_module(f"raystyle.infer.{name}")


def get_kind(name: str | None) -> StyleKind:
    """The StyleKind called ``name`` (None or "": the generator kind); UnknownKind otherwise."""
    name = name or DEFAULT_KIND
    kind = None
    if name.isidentifier() and not name.startswith("_"):
        try:
            kind = getattr(_module(name), "KIND", None)
        except ModuleNotFoundError:
            kind = None
    if not isinstance(kind, StyleKind) or kind.name != name:
        raise UnknownKind(f"unknown style kind {name!r}; known: {', '.join(kind_names())}")
    return kind


def kind_of(style: registry.Style | Mapping[str, Any] | None) -> StyleKind:
    """The kind of a registry style or of its model.json metadata."""
    if isinstance(style, registry.Style):
        return get_kind(style.kind)
    kind = (style or {}).get("kind")
    return get_kind(kind if isinstance(kind, str) else None)


def open_stylizer(style: str | registry.Style, *, models_dir: str | Path | None = None, **options: Any) -> Stylizer:
    """The stylizer a registry style needs (its kind's class); ``options`` are that class's own."""
    st = style if isinstance(style, registry.Style) else registry.get_style(style, models_dir)
    return kind_of(st).stylizer(style, models_dir=models_dir, **options)
