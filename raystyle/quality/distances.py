"""Distances between image sets on pretrained features (raystyle.quality.el0): FID, KID,
style and content distances. Pure torch and numpy.

- ``fid``: the Fréchet distance between Gaussians fitted to two sets of pooled features
  (Heusel et al. 2017), on EfficientNet-Lite0 features: **FID-EL0**, not comparable with the
  Inception FID papers print. It is biased upwards for small sets (tens of images): compare
  figures measured on the same number of images only.
- ``kid``: the squared MMD with the cubic polynomial kernel ``(x.y / d + 1) ** 3`` (Bińkowski
  et al. 2018), unbiased, with its standard error (a two-sample jackknife): **KID-EL0**. Unlike
  FID it has no small-set bias, so it is the figure to rank by on few images.
- ``style_distance``: per tapped stage, the distance of channel means and deviations (the
  statistics AdaIN and the Gram matrix carry) of an image from its painting, averaged over the
  stages (lower: closer in style).
- ``content_distance``: the relative squared difference of the 14 px stage's features of an
  image and its photo (0: the same content).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from raystyle.quality.el0 import CONTENT_TAP, Features, features


def _as_features(x: torch.Tensor | Features) -> Features:
    return x if isinstance(x, Features) else features(x)


def fid(x: torch.Tensor | Features, y: torch.Tensor | Features) -> float:
    """FID-EL0 of two image sets ((N, 3, H, W) in [-1, 1]) or their ``Features``."""
    a, b = _as_features(x).pooled.numpy(), _as_features(y).pooled.numpy()
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least two images per set")
    mu = a.mean(0) - b.mean(0)
    ca, cb = a - a.mean(0), b - b.mean(0)
    na, nb = len(a) - 1, len(b) - 1
    trace_a = float((ca * ca).sum() / na)
    trace_b = float((cb * cb).sum() / nb)
    # tr sqrt(Sa Sb) = the nuclear norm of Sa^1/2 Sb^1/2 = that of ca cb^T / sqrt(na nb), exactly:
    # an (Na x Nb) problem instead of a (1280 x 1280) matrix square root.
    if len(a) * len(b) <= a.shape[1] ** 2:
        cross = np.linalg.svd(ca @ cb.T / math.sqrt(na * nb), compute_uv=False).sum()
    else:
        def root(c: np.ndarray, n: int) -> np.ndarray:
            w, v = np.linalg.eigh(c.T @ c / n)
            return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

        cross = np.linalg.svd(root(ca, na) @ root(cb, nb), compute_uv=False).sum()
    return max(0.0, float(mu @ mu + trace_a + trace_b - 2 * cross))


@dataclass(frozen=True)
class KID:
    value: float  # unbiased squared MMD (can be slightly below 0 for two draws of one set)
    se: float  # its standard error (two-sample jackknife)

    def __str__(self) -> str:
        return f"{1000 * self.value:.2f} ± {1000 * self.se:.2f} (x10^3)"


def kid(x: torch.Tensor | Features, y: torch.Tensor | Features, paired: bool = False) -> KID:
    """KID-EL0 of two image sets or their ``Features`` (at least 3 images each).

    ``paired``: ``y[i]`` belongs with ``x[i]`` (a translation and its ground truth, which share
    their content): the cross term then leaves out the pairs themselves, Gretton et al.'s
    (2012) U-statistic over pairs, which stays unbiased when each pair is one draw. Two sets of
    matched pairs compared with the two-sample formula would score far *below* 0 (each x is
    closest to its own y), which reads as "more alike than two draws of one distribution"."""
    a, b = _as_features(x).pooled.numpy(), _as_features(y).pooled.numpy()
    n, m = len(a), len(b)
    if n < 3 or m < 3:
        raise ValueError("KID needs at least three images per set")
    if paired and n != m:
        raise ValueError(f"paired KID needs as many images on each side, got {n} and {m}")
    d = a.shape[1]
    kxx = (a @ a.T / d + 1) ** 3
    kyy = (b @ b.T / d + 1) ** 3
    kxy = (a @ b.T / d + 1) ** 3
    np.fill_diagonal(kxx, 0)
    np.fill_diagonal(kyy, 0)
    sxx, syy = kxx.sum(), kyy.sum()
    if paired:  # leave out each pair i: its rows and columns
        np.fill_diagonal(kxy, 0)
        sxy = kxy.sum()
        value = (sxx + syy - 2 * sxy) / (n * (n - 1))
        loo = ((sxx - 2 * kxx.sum(1)) + (syy - 2 * kyy.sum(1))
               - 2 * (sxy - kxy.sum(1) - kxy.sum(0))) / ((n - 1) * (n - 2))
        var = (n - 1) / n * ((loo - loo.mean()) ** 2).sum()
        return KID(float(value), float(math.sqrt(max(var, 0.0))))
    sxy = kxy.sum()
    value = sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)
    # jackknife: leave out each x_i, then each y_j
    loo_x = ((sxx - 2 * kxx.sum(1)) / ((n - 1) * (n - 2)) + syy / (m * (m - 1))
             - 2 * (sxy - kxy.sum(1)) / ((n - 1) * m))
    loo_y = (sxx / (n * (n - 1)) + (syy - 2 * kyy.sum(1)) / ((m - 1) * (m - 2))
             - 2 * (sxy - kxy.sum(0)) / (n * (m - 1)))
    var = ((n - 1) / n * ((loo_x - loo_x.mean()) ** 2).sum()
           + (m - 1) / m * ((loo_y - loo_y.mean()) ** 2).sum())
    return KID(float(value), float(math.sqrt(max(var, 0.0))))


def _stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = f.flatten(2)
    return flat.mean(2), flat.std(2)


def style_distances(x: torch.Tensor | Features, ref: torch.Tensor | Features) -> list[float]:
    """Per image of ``x``, its style distance to ``ref`` (one painting for all, or one per image)."""
    fx, fr = _as_features(x), _as_features(ref)
    n = len(fx.pooled)
    if len(fr.pooled) not in (1, n):
        raise ValueError(f"{len(fr.pooled)} references for {n} images: give one, or one per image")
    total = torch.zeros(n)
    for tx, tr in zip(fx.taps, fr.taps, strict=True):
        mx, sx = _stats(tx)
        mr, sr = _stats(tr)
        c = tx.shape[1]
        total += ((mx - mr).norm(dim=1) + (sx - sr).norm(dim=1)) / math.sqrt(c)
    return (total / len(fx.taps)).tolist()


def style_distance(x: torch.Tensor | Features, ref: torch.Tensor | Features) -> float:
    """Mean style distance of the images ``x`` to ``ref`` (one painting, or one per image)."""
    d = style_distances(x, ref)
    return float(sum(d) / len(d))


def content_distances(x: torch.Tensor | Features, photos: torch.Tensor | Features) -> list[float]:
    """Per image, ||f(x) - f(photo)||^2 / ||f(photo)||^2 on the 14 px stage (one photo per image)."""
    fx, fp = _as_features(x).taps[CONTENT_TAP], _as_features(photos).taps[CONTENT_TAP]
    if fx.shape != fp.shape:
        raise ValueError("content distance: one photo per image, at the same size")
    num = (fx - fp).pow(2).flatten(1).sum(1)
    den = fp.pow(2).flatten(1).sum(1).clamp_min(1e-12)
    return (num / den).tolist()


def content_distance(x: torch.Tensor | Features, photos: torch.Tensor | Features) -> float:
    d = content_distances(x, photos)
    return float(sum(d) / len(d))
