"""The colour-transfer baseline: what a figure scores for a plain palette change.

A photo histogram-matched to domain B (each RGB channel's distribution mapped onto the pooled
pixels of B images, Gonzalez & Woods' histogram specification; ``skimage.exposure
.match_histograms``) changes colours and nothing else: no strokes, no texture. A style model
should beat it on every realism figure; one that does not has learnt a palette. The B images it
matches to are training images (``reference``), never the held-out ones it is scored against.
"""

from __future__ import annotations

import numpy as np
import torch


def colour_transfer(photos: torch.Tensor, reference: torch.Tensor, max_pixels: int = 1 << 20) -> torch.Tensor:
    """(N, 3, H, W) photos in [-1, 1] with each RGB channel histogram-matched to the pixels of
    ``reference`` ((M, 3, h, w) in [-1, 1], pooled; at most ``max_pixels`` of them, evenly
    spaced)."""
    from skimage.exposure import match_histograms

    ref = reference.permute(1, 0, 2, 3).reshape(3, -1)
    if ref.shape[1] > max_pixels:
        ref = ref[:, :: ref.shape[1] // max_pixels + 1]
    ref_img = ref.T.reshape(1, -1, 3).numpy().astype(np.float64)  # one row of pixels
    out = []
    for p in photos:
        img = p.permute(1, 2, 0).numpy().astype(np.float64)
        out.append(torch.from_numpy(match_histograms(img, ref_img, channel_axis=-1)).permute(2, 0, 1))
    return torch.stack(out).float().clamp(-1, 1)
