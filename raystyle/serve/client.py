"""A small client of the raystyle HTTP API (the Serve application in serve.py).

Used by the demo, the monitor's "Try it" and the tests; any HTTP client works the same
way (see the README's curl example).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import requests


class ApiError(Exception):
    """A call failed; the message carries the API's own JSON error where there is one."""


def styles(url: str, timeout: float = 3.0) -> dict[str, Any]:
    """``GET /styles``: metadata of every served style; {} when nothing answers at ``url``."""
    try:
        r = requests.get(f"{url.rstrip('/')}/styles", timeout=timeout)
        return r.json() if r.status_code == 200 else {}
    except (requests.RequestException, ValueError):
        return {}


def stylize(url: str, style: str, image: bytes, *, strength: float = 1.0,
            preserve_color: bool | str = False, fmt: str = "png", max_side: int | None = None,
            style_images: Sequence[bytes] | None = None, weights: Sequence[float] | None = None,
            alpha: float | None = None, timeout: float = 120.0) -> tuple[bytes, dict[str, str]]:
    """``POST /styles/{style}``; (image bytes, x-raystyle-* headers, lower case).

    The photo goes as the raw body; with ``style_images`` (an arbitrary style's paintings,
    blended by ``weights``, applied with ``alpha``) as multipart fields ``image`` and
    ``style_image``."""
    params: dict[str, Any] = {"strength": strength, "preserve_color": str(preserve_color).lower(),
                              "format": fmt}
    if max_side:
        params["max_side"] = max_side
    if alpha is not None:
        params["alpha"] = alpha
    if weights is not None:
        params["weights"] = ",".join(str(float(w)) for w in weights)
    body: dict[str, Any] = {"data": image}
    if style_images:
        body = {"files": [("image", ("image", image)),
                          *(("style_image", (f"style_{i}", s)) for i, s in enumerate(style_images))]}
    try:
        r = requests.post(f"{url.rstrip('/')}/styles/{style}", params=params, timeout=timeout, **body)
    except requests.RequestException as exc:
        raise ApiError(f"no answer from {url}: {type(exc).__name__}") from None
    if r.status_code != 200:
        try:
            err = r.json()
            detail = err.get("detail")
            if isinstance(detail, list):  # 422: [{"loc": [...], "msg": ...}]
                detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}"
                                   for d in detail if isinstance(d, dict))
            detail = f"{err.get('error')}: {detail}"
        except (ValueError, AttributeError):
            detail = r.text[:200]
        raise ApiError(f"{r.status_code} {detail}")
    return r.content, {k.lower(): v for k, v in r.headers.items() if k.lower().startswith("x-raystyle")}
