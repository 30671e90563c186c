"""Image decoding to RGB: every PIL mode, EXIF orientation, first frame of animations.

``to_rgb`` is the one place where pixels of any mode become 8-bit RGB, so training data,
the Stylizer and the servers all see the same pixels for the same file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


class ImageError(ValueError):
    """A file or buffer is not a readable image; the message says which and why."""


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image -> 8-bit RGB; transparency is composited over ``background``."""
    if getattr(img, "is_animated", False):
        img.seek(0)  # animated GIF/WebP/APNG: the first frame
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16/32-bit grey: PIL's convert("L") clips at 255; rescale the real range instead.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        if mode == "F":
            top = 1.0 if arr.max() <= 1.0 else float(arr.max())
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB") if mode != "RGB" else img


def load_rgb(path: str | Path) -> Image.Image:
    """Decode a file fully and return it as RGB; raises ImageError on unreadable data."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None


def probe(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the header only, or None when the file is not an image."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
