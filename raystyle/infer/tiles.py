"""Exact tiling for the ONNX stylizers: geometry, windows, assembly, InstanceNorm statistics.

Pure numpy (no torch, no ONNX Runtime): both style kinds (raystyle.infer.generator,
raystyle.infer.arbitrary) and the export's tile gates use this one plan.
"""

from __future__ import annotations

import numpy as np

MULTIPLE = 4  # the generators' height and width multiple (raystyle.core.nets.MULTIPLE; no torch here)
MIN_SIDE = 16  # the nets' inner reflection pads need at least 2 px at 1/4 resolution


def padded(n: int, multiple: int = MULTIPLE) -> int:
    return max(MIN_SIDE, n + (-n % multiple))


def to_input(batch: np.ndarray, multiple: int = MULTIPLE) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, H', W') float32 in [-1, 1], reflect-padded to ``multiple``."""
    x = batch.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    h, w = x.shape[-2:]
    ph, pw = padded(h, multiple) - h, padded(w, multiple) - w
    if ph or pw:
        mode = "reflect" if min(h, w) > 1 else "edge"  # a 1-px side cannot be mirrored
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)
    return np.ascontiguousarray(x)


def to_uint8(y: np.ndarray, h: int, w: int) -> np.ndarray:
    """(B, 3, H', W') in [-1, 1] -> (B, h, w, 3) uint8 (crop the padding back off)."""
    y = y[:, :, :h, :w].transpose(0, 2, 3, 1)
    return np.clip((y + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)




# -- exact tiling: geometry and statistics ---------------------------------------------------
# A tile is a *core* (the pixels it contributes) plus a *halo* of at least the generator's
# receptive radius on every side that is not the image border. Cores partition the
# reflect-padded image and sit on the nets' multiple-of-4 grid, so with the same InstanceNorm
# statistics a core's pixels equal the whole image's exactly (no blending, no seams).

Box = tuple[int, int, int, int]  # top, bottom, left, right (padded-image coordinates)


def segments(n: int, core: int, multiple: int = MULTIPLE) -> list[tuple[int, int]]:
    """[0, n) cut into ceil(n / core) near-equal parts on the ``multiple`` grid, each <= core."""
    k = -(-n // core)
    m = n // multiple
    cuts = [multiple * (i * m // k) for i in range(k)] + [n]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def tile_boxes(height: int, width: int, core: int, halo: int, multiple: int = MULTIPLE) -> list[tuple[Box, Box]]:
    """(core, window) boxes over a padded height x width image (both multiples of ``multiple``)."""
    boxes = []
    for r0, r1 in segments(height, core, multiple):
        for c0, c1 in segments(width, core, multiple):
            window = (max(0, r0 - halo), min(height, r1 + halo), max(0, c0 - halo), min(width, c1 + halo))
            boxes.append(((r0, r1, c0, c1), window))
    return boxes


class TilePlan:
    """How one image is tiled: its size, padded size, boxes and border padding mode."""

    def __init__(self, shape: tuple[int, ...], core: int, halo: int, multiple: int = MULTIPLE):
        self.h, self.w = shape[:2]
        self.height, self.width = padded(self.h, multiple), padded(self.w, multiple)
        self.mode = "reflect" if min(self.h, self.w) > 1 else "edge"  # as to_input
        self.boxes = tile_boxes(self.height, self.width, core, halo, multiple)

    def window(self, a: np.ndarray, box: Box) -> np.ndarray:
        """The window's pixels as (1, 3, h, w) float32, reflect-padded where it passes the image."""
        t0, t1, l0, l1 = box
        crop = a[t0 : min(t1, self.h), l0 : min(l1, self.w)]
        x = crop.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
        pb, pr = t1 - min(t1, self.h), l1 - min(l1, self.w)
        if pb or pr:  # the bottom/right padding of the whole image, as to_input makes it
            x = np.pad(x, ((0, 0), (0, 0), (0, pb), (0, pr)), mode=self.mode)
        return np.ascontiguousarray(x)

    @staticmethod
    def mask(core: Box, window: Box) -> np.ndarray:
        m = np.zeros((1, 1, window[1] - window[0], window[3] - window[2]), np.float32)
        m[..., core[0] - window[0] : core[1] - window[0], core[2] - window[2] : core[3] - window[2]] = 1.0
        return m

    def assemble(self, a: np.ndarray, run, release=None) -> np.ndarray:
        """Each window through ``run(x, run_options)``; its core (cropped to the image) goes to
        the output. The last window runs with ``release`` (memory back once the image is done)."""
        out = np.empty((self.h, self.w, 3), np.uint8)
        for i, ((r0, r1, c0, c1), window) in enumerate(self.boxes):
            y = run(self.window(a, window), release if i == len(self.boxes) - 1 else None)  # (1, 3, wh, ww)
            b, r = min(r1, self.h), min(c1, self.w)
            core = y[:, :, r0 - window[0] : b - window[0], c0 - window[2] : r - window[2]]
            out[r0:b, c0:r] = to_uint8(core, b - r0, r - c0)[0]
        return out


def combine(stats: np.ndarray, sums: np.ndarray, layout: list[tuple[int, int]],
             height: int, width: int) -> np.ndarray:
    """Shifted sums of all cores -> (1, S) float64 means and variances (layout as StatsModel's)."""
    new = np.empty(stats.shape[-1], np.float64)
    old = stats.reshape(-1).astype(np.float64)
    offset = 0
    for channels, stride in layout:
        n = (height // stride) * (width // stride)
        mean, var = slice(offset, offset + channels), slice(offset + channels, offset + 2 * channels)
        d = sums[mean] / n  # mean(x - m)
        new[mean] = old[mean] + d
        new[var] = np.maximum(sums[var] / n - d * d, 0.0)  # mean((x - m)^2) - mean(x - m)^2
        offset += 2 * channels
    return new[None]


def stats_change(old: np.ndarray, new: np.ndarray, layout: list[tuple[int, int]], eps: float = 1e-5) -> float:
    """Largest change of any norm's output it implies: |dmean| / std and |dvar| / var."""
    old, new = old.reshape(-1).astype(np.float64), new.reshape(-1).astype(np.float64)
    worst, offset = 0.0, 0
    for channels, _ in layout:
        mean, var = slice(offset, offset + channels), slice(offset + channels, offset + 2 * channels)
        scale = np.maximum(old[var], new[var]) + eps
        worst = max(worst, float(np.max(np.abs(new[mean] - old[mean]) / np.sqrt(scale))),
                    float(np.max(np.abs(new[var] - old[var]) / scale)))
        offset += 2 * channels
    return worst if np.isfinite(worst) else float("inf")
