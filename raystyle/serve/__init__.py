"""[ray] Ray Serve: the app and its deployments (app.py), the HTTP client (client.py).

``import_path: raystyle.serve:app_builder`` in a serve config names the app builder; it is
imported on first use, so ``raystyle.serve.client`` stays importable without Ray.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app_builder":
        from raystyle.serve.app import app_builder

        return app_builder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
