"""Safe image decoding to RGB and encoding: the one place pixels enter and leave raystyle.

Decoding checks, in this order: the bytes are a known image (magic, not the file name),
the format is on the whitelist, the pixel count from the header is under the cap
(decompression bombs are errors, not warnings), and the data decodes completely
(truncated files are errors). Then EXIF orientation is applied, the first frame of an
animation is taken, and every mode (L, LA, P, RGBA, CMYK, I;16, ...) becomes 8-bit RGB,
transparency composited over white.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from raystyle.errors import RaystyleError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF", "GIF"})
ENCODE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
DEFAULT_MAX_PIXELS = int(os.environ.get("RAYSTYLE_MAX_PIXELS", 100_000_000))  # 100 MP

ImageInput = str | Path | bytes | bytearray | Image.Image | np.ndarray


class ImageError(RaystyleError):
    """A file or buffer is not a usable image; the message says which and why."""


class CorruptImage(ImageError):
    """Not an image, or truncated/damaged data."""


class UnsupportedFormat(ImageError):
    """A real image in a format outside the whitelist."""


class ImageTooLarge(ImageError):
    """More pixels than the cap allows (decompression-bomb guard)."""


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image -> 8-bit RGB; transparency is composited over ``background``."""
    if getattr(img, "is_animated", False):
        img.seek(0)  # animated GIF/WebP/APNG: the first frame
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16/32-bit grey: PIL's convert("L") clips at 255; rescale the real range instead.
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        else:
            top = 1.0 if mode == "F" and arr.max() <= 1.0 else max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB") if mode != "RGB" else img


def _open_checked(img: Image.Image, name: str, max_pixels: int) -> Image.Image:
    if img.format not in ALLOWED_FORMATS:
        allowed = ", ".join(sorted(ALLOWED_FORMATS - {"MPO"}))
        raise UnsupportedFormat(f"{name}: format {img.format} is not supported (allowed: {allowed})")
    w, h = img.size
    if w * h > max_pixels:
        raise ImageTooLarge(f"{name}: {w}x{h} = {w * h / 1e6:.1f} MP is over the {max_pixels / 1e6:.0f} MP limit")
    if w < 1 or h < 1:
        raise CorruptImage(f"{name}: empty image ({w}x{h})")
    return img


def _draft(img: Image.Image, max_side: int | None) -> None:
    """Ask a JPEG decoder for a reduced DCT scale (1/2, 1/4, 1/8) that still covers what
    ``fit_within(img, max_side)`` will make: decoding a 24 MP photo for a 1024 px result
    then costs a fraction of the full decode. Other formats decode in full."""
    if max_side is None or img.format not in ("JPEG", "MPO") or max(img.size) <= max_side:
        return
    scale = max_side / max(img.size)
    img.draft(img.mode, (max(1, round(img.width * scale)), max(1, round(img.height * scale))))


def decode(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None,
           max_side: int | None = None) -> Image.Image:
    """A path, bytes, PIL image or uint8 array -> RGB PIL image, or an ImageError subclass.

    ``max_side``: the caller will ``fit_within`` that size, so a JPEG may be decoded at a
    reduced scale (never below it); the pixel limit applies to the full stored size."""
    if isinstance(source, np.ndarray):
        return Image.fromarray(as_uint8_rgb(source))
    if isinstance(source, Image.Image):
        w, h = source.size
        if w * h > max_pixels:
            raise ImageTooLarge(f"image of {w}x{h} is over the {max_pixels / 1e6:.0f} MP limit")
        return to_rgb(source)
    if isinstance(source, bytes | bytearray):
        name = name or "image"
        if not source:
            raise CorruptImage(f"{name}: empty input")
        fp = io.BytesIO(source)
    else:
        name = name or str(source)
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                _open_checked(img, name, max_pixels)
                _draft(img, max_side)
                img.load()
                return to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError:
        raise CorruptImage(f"{name}: no such file") from None
    except IsADirectoryError:
        raise CorruptImage(f"{name}: is a directory") from None
    except UnidentifiedImageError:
        raise CorruptImage(f"{name}: not an image (unrecognised data)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(
            f"{name}: over the {max_pixels / 1e6:.0f} MP limit (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImage(f"{name}: damaged or truncated image ({exc})") from None


def as_uint8_rgb(arr: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3) uint8."""
    if arr.dtype != np.uint8:
        raise ImageError(f"arrays must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or 0 in arr.shape[:2]:
        raise ImageError(f"arrays must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        return np.asarray(to_rgb(Image.fromarray(arr, "RGBA")))
    return arr


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a file fully and return it as RGB; raises ImageError on unusable data."""
    return decode(Path(path), max_pixels=max_pixels)


def probe(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the header only, or None when the file is not an image."""
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def fit_within(img: Image.Image, max_side: int | None,
               resample: int = Image.LANCZOS) -> Image.Image:
    """Downscale so the longer side is at most ``max_side`` (never upscales; None: as is)."""
    if max_side is None or max(img.size) <= max_side:
        return img
    scale = max_side / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)


def encode(image: Image.Image | np.ndarray, fmt: str = "png", quality: int = 92) -> bytes:
    """RGB image -> PNG, JPEG or WebP bytes."""
    key = fmt.lower()
    if key not in ENCODE_FORMATS:
        raise ImageError(f"output format {fmt!r} is not one of png, jpeg, webp")
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    pil_fmt = ENCODE_FORMATS[key]
    kwargs = {"quality": quality} if pil_fmt in ("JPEG", "WEBP") else {"compress_level": 3}
    img.save(buf, format=pil_fmt, **kwargs)
    return buf.getvalue()


def format_for_path(path: str | Path) -> str:
    """The encode format for an output file name (png, jpeg or webp)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in ENCODE_FORMATS:
        raise ImageError(f"{path}: output must end in .png, .jpg, .jpeg or .webp")
    return suffix


def keep_colour(stylized: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Luminance of the stylized image, chroma (Cb, Cr) of the original (``--preserve-color``)."""
    y = np.asarray(Image.fromarray(stylized).convert("YCbCr"))[..., :1]
    cbcr = np.asarray(Image.fromarray(original).convert("YCbCr"))[..., 1:]
    return np.asarray(Image.fromarray(np.concatenate([y, cbcr], axis=2), "YCbCr").convert("RGB"))
