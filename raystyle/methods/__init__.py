"""Training methods, pure torch (no Ray, no ONNX Runtime): one module per method.

``method_class(name)`` finds method ``name`` in ``raystyle/methods/<name>.py`` (or, for another
package's method, the module it names in the ``raystyle.methods`` entry-point group), whose class is
registered with ``@register_method(name, section=...)`` (raystyle.methods.base: the Method protocol and the
base classes GANMethod and PerceptualMethod). A new method is that one file plus a preset.
Gatys optimisation (nst.py) is a function, not a Method; quality.py holds the held-out figures.

Importing this package is cheap: torch loads with the first method.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from raystyle.config import add_section_finder
from raystyle.errors import RaystyleError


class UnknownMethod(RaystyleError):
    """A training method this raystyle does not have."""


def method_names() -> list[str]:
    """The training methods: every module here that registers one (imported), and any method
    registered from elsewhere (a plugin's module, a method a test defines)."""
    from raystyle.methods.base import registered, registered_names

    names = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])]
    names += sorted({p.name for p in entry_points(group=ENTRY_POINTS)} - set(names))
    found = [n for n in names if n != "base" and _load(n) and registered(n) is not None]
    return found + [n for n in registered_names() if n not in found]


ENTRY_POINTS = "raystyle.methods"  # another package's methods: `NAME = "its.module"` in this group


def _load(name: str) -> bool:
    """Import method ``name``'s module: raystyle/methods/NAME.py, else the module an installed
    package names for it in the ``raystyle.methods`` entry-point group. False: neither exists."""
    try:
        importlib.import_module(f"raystyle.methods.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"raystyle.methods.{name}":
            raise
    else:
        return True
    for point in entry_points(group=ENTRY_POINTS, name=name):
        point.load()
        return True
    return False


def method_class(name: str) -> Any:
    """The class of training method ``name`` (``Config.method``); UnknownMethod otherwise."""
    from raystyle.methods.base import registered

    cls = registered(name) if isinstance(name, str) else None
    if cls is None and isinstance(name, str) and name.isidentifier() and not name.startswith("_") and _load(name):
        cls = registered(name)
    if cls is None:
        raise UnknownMethod(f"unknown training method {name!r}; known: {', '.join(method_names())}")
    return cls


def plugin_modules() -> list[str]:
    """The modules of the methods registered from outside this package (a plugin, a test's
    method): what a Ray worker imports before it reads such a method's config."""
    from raystyle.methods.base import registered, registered_names

    modules = {registered(n).__module__ for n in registered_names()}
    return sorted(m for m in modules if not m.startswith(f"{__name__}."))


def _find_section(name: str) -> None:
    """A config names section ``name``: import method ``name``'s module, which registers it."""
    from raystyle.methods.base import registered

    if registered(name) is None:
        _load(name)


add_section_finder(_find_section)
