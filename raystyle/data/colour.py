"""Colour preservation for style transfer (``--preserve-color``); numpy only, no torch.

After Gatys, Bethge, Hertzmann & Shechtman, "Preserving Color in Neural Artistic Style
Transfer" (2016/2017), which gives two ways to keep the content's colours:

  luminance  luminance-only transfer: the transfer runs on luminance images (the content's
             luminance, and the style's luminance with its mean and standard deviation matched
             to the content's: L_s' = sd_c / sd_s * (L_s - mu_s) + mu_c), and the result's
             luminance is put on the content's chroma. A dark style no longer darkens the result.
  histogram  colour histogram matching: the style image's pixels get the content's mean and
             covariance (x' = A (x - mu_s) + mu_c with A = S_c^1/2 S_s^-1/2, the symmetric
             square roots: the paper's "Image Analogies" variant), then the usual transfer.
  swap       the result's luminance on the content's chroma, nothing matched (raystyle's first
             ``--preserve-color``, kept for comparison: a dark style gives a dark result).

``style_for`` and ``content_for`` prepare a transfer that has a style image (Gatys
optimisation, arbitrary styles) and ``after_transfer`` finishes it. A per-style feed-forward
net has no style image at inference, so ``after_feed_forward`` does the honest equivalent on its
output: ``luminance`` matches the output's luminance mean and std to the content's and puts it
on the content's chroma; ``histogram`` gives the output the content's colour mean and covariance.

Luminance is ITU-R BT.601 luma (Y of YIQ, as in the paper, and of JPEG's YCbCr): both have an
inverse whose Y column is (1, 1, 1), so "Y of one image, chroma of another" is the other
image plus the difference of the two luminances in every channel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raystyle.errors import RaystyleError

MODES = ("luminance", "histogram", "swap")
DEFAULT_MODE = "luminance"  # what ``preserve_color=True`` means
Y_WEIGHTS = np.array([0.299, 0.587, 0.114])  # BT.601 luma of RGB
_OFF = ("", "false", "f", "0", "no", "n", "off", "none")  # what pydantic reads as false, and none
_ON = ("true", "t", "1", "yes", "y", "on")


class ColourError(RaystyleError):
    """A preserve-colour setting that is neither on, off nor a mode."""


def colour_mode(value: Any) -> str | None:
    """``preserve_color`` as a mode: None (off) for False/None/"false"/"off"..., DEFAULT_MODE for
    True/"true"/"on"..., or one of MODES; ColourError (one line) for anything else."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_MODE
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _OFF:
            return None
        if text in _ON:
            return DEFAULT_MODE
        if text in MODES:
            return text
    raise ColourError(f"preserve_color must be true, false or one of {', '.join(MODES)}, got {value!r}")


def luminance(a: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB (0..255) -> (H, W) float64 luma."""
    return np.asarray(a, np.float64)[..., :3] @ Y_WEIGHTS


def _uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(a + 0.5, 0, 255).astype(np.uint8)


def match_stats(y: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``y`` (float) shifted and scaled to ``reference``'s mean and standard deviation."""
    sd = max(float(y.std()), 1e-6)
    return (y - y.mean()) / sd * float(reference.std()) + float(reference.mean())


def gray(a: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> its luminance in all three channels (what a transfer on luminance sees)."""
    return np.repeat(_uint8(luminance(a))[..., None], 3, axis=2)


def with_luminance(y: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Luminance ``y`` (H, W) on the chroma of ``original`` (H, W, 3) -> uint8 RGB."""
    return _uint8(np.asarray(original, np.float64) + (y - luminance(original))[..., None])


def swap(stylized: np.ndarray, original: np.ndarray) -> np.ndarray:
    """The ``swap`` mode: the stylized luminance on the original's Cb, Cr (through PIL's YCbCr,
    bit for bit what ``--preserve-color`` did before the modes)."""
    from raystyle.data.images import keep_colour

    return keep_colour(stylized, original)


def match_colour(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with ``reference``'s pixel mean and covariance -> uint8 (Gatys
    et al.'s colour histogram matching, with symmetric square roots). The image's covariance
    has its eigenvalues floored at 1e-3 of their mean (+ 0.01): a colour direction in which it
    barely varies (a grey painting's chroma) is stretched at most ~30x, not its noise to the
    reference's full spread; then clipped to 0..255."""
    x = np.asarray(image, np.float64).reshape(-1, 3)
    r = np.asarray(reference, np.float64).reshape(-1, 3)
    mu_x, mu_r = x.mean(0), r.mean(0)
    cov_x = np.cov(x - mu_x, rowvar=False, bias=True)
    cov_r = np.cov(r - mu_r, rowvar=False, bias=True)

    def power(c: np.ndarray, p: float, floor: float) -> np.ndarray:
        w, v = np.linalg.eigh(c)
        return (v * np.maximum(w, floor) ** p) @ v.T

    a = power(cov_r, 0.5, 0.0) @ power(cov_x, -0.5, 1e-3 * np.trace(cov_x) / 3 + 1e-2)
    out = (x - mu_x) @ a.T + mu_r
    return _uint8(out).reshape(np.shape(image))


# -- a transfer with a style image (Gatys optimisation, arbitrary styles) ----------------------
def style_for(style: np.ndarray, content: np.ndarray, mode: str | None) -> np.ndarray:
    """The style image the transfer should use: ``luminance``: its luminance with the
    content's luminance mean and std (in three channels); ``histogram``: its colours matched to
    the content's; otherwise itself."""
    if mode == "luminance":
        y = match_stats(luminance(style), luminance(content))
        return np.repeat(_uint8(y)[..., None], 3, axis=2)
    if mode == "histogram":
        return match_colour(style, content)
    return np.asarray(style)


def content_for(content: np.ndarray, mode: str | None) -> np.ndarray:
    """The content image the transfer should see: its luminance for ``luminance``, else itself."""
    return gray(content) if mode == "luminance" else np.asarray(content)


def after_transfer(result: np.ndarray, content: np.ndarray, mode: str | None) -> np.ndarray:
    """Finish a transfer prepared by ``style_for``/``content_for``: ``luminance``: the result's
    luminance on the content's chroma; ``swap``: the old swap; otherwise the result."""
    if mode == "luminance":
        return with_luminance(luminance(result), content)
    if mode == "swap":
        return swap(result, content)
    return result


# -- a per-style feed-forward net (no style image at inference) --------------------------------
def after_feed_forward(stylized: np.ndarray, original: np.ndarray, mode: str | None) -> np.ndarray:
    """``stylized`` with ``original``'s colours by ``mode``: ``luminance``: the stylized luminance,
    its mean and std matched to the original's, on the original's chroma; ``histogram``: the
    original's colour mean and covariance; ``swap``: the old swap; None: unchanged."""
    if mode == "luminance":
        return with_luminance(match_stats(luminance(stylized), luminance(original)), original)
    if mode == "histogram":
        return match_colour(stylized, original)
    if mode == "swap":
        return swap(stylized, original)
    return stylized
