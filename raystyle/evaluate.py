"""Did training move domain A toward domain B? Figures from a checkpoint, pure torch.

- colour distance: how far a set of images is from domain B in colour statistics,
  ||mean_X - mean_B||_2 + ||std_X - std_B||_2 over RGB channels in [0, 255].
  Reported for real A (the starting gap), G_ab(A) with freshly initialised nets, and
  G_ab(A) with the trained nets; a falling number means the translation learned B's palette.
- cycle PSNR: PSNR(G_ba(G_ab(a)), a) in dB; high means content survives the round trip.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import save_image

from . import checkpoint as ckpt
from .data import DataError, scan_domain
from .images import load_rgb
from .nets import MULTIPLE, build_generator


@dataclass(frozen=True)
class Evaluation:
    images: int
    colour_distance_real_a: float
    colour_distance_init: float
    colour_distance_trained: float
    cycle_psnr_init: float
    cycle_psnr_trained: float
    step: int

    def to_dict(self) -> dict:
        return asdict(self)


def load_images(folder: Path, limit: int, max_side: int) -> list[torch.Tensor]:
    """Up to ``limit`` images as (1, 3, H, W) in [-1, 1], resized to <= max_side, H, W % 4 == 0."""
    out = []
    for path in scan_domain(folder, 0).files[:limit]:
        x = TF.pil_to_tensor(load_rgb(path))
        h, w = x.shape[-2:]
        scale = min(1.0, max_side / max(h, w))
        h, w = max(MULTIPLE, int(h * scale) // MULTIPLE * MULTIPLE), max(MULTIPLE, int(w * scale) // MULTIPLE * MULTIPLE)
        x = TF.resize(x, [h, w], antialias=True)
        out.append(x.float().div(127.5).sub(1).unsqueeze(0))
    if not out:
        raise DataError(f"{folder} has no readable images")
    return out


def colour_stats(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.cat([((x + 1) * 127.5).clamp(0, 255).flatten(2).squeeze(0) for x in images], dim=1)
    return pixels.mean(dim=1), pixels.std(dim=1)  # (3,), (3,)


def colour_distance(images: list[torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> float:
    mean, std = colour_stats(images)
    return float((mean - ref[0]).norm() + (std - ref[1]).norm())


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    mse = float(((x - y) / 2).pow(2).mean())  # images in [-1, 1] -> range 1
    return 99.0 if mse == 0 else 10 * math.log10(1.0 / mse)


@torch.no_grad()
def evaluate(checkpoint: str | Path, data: str | Path, split: str = "test", limit: int = 16,
             max_side: int = 256, grid: str | Path | None = None) -> Evaluation:
    """Compare trained and freshly initialised generators on ``data/{split}A`` vs ``{split}B``."""
    path = ckpt.resolve(checkpoint)
    config, nets = ckpt.load_nets(path)
    step = ckpt.read_manifest(path)["step"]
    data = Path(data).expanduser()
    real_a = load_images(data / f"{split}A", limit, max_side)
    ref_b = colour_stats(load_images(data / f"{split}B", limit, max_side))
    torch.manual_seed(config.train.seed)
    fresh = [build_generator(config.model).eval() for _ in range(2)]
    trained = [build_generator(config.model).eval() for _ in range(2)]
    trained[0].load_state_dict(nets["g_ab"])
    trained[1].load_state_dict(nets["g_ba"])

    def run(g_ab, g_ba):
        fakes = [g_ab(a) for a in real_a]
        recs = [g_ba(f) for f in fakes]
        cyc = sum(psnr(r, a) for r, a in zip(recs, real_a, strict=True)) / len(real_a)
        return fakes, colour_distance(fakes, ref_b), cyc

    _, d_init, p_init = run(*fresh)
    fakes, d_trained, p_trained = run(*trained)
    if grid is not None:
        size = real_a[0].shape[-2:]
        tiles = [t for a, f in zip(real_a, fakes, strict=True)
                 for t in (TF.resize(a, list(size)), TF.resize(f, list(size)))]
        save_image(torch.cat(tiles) * 0.5 + 0.5, grid, nrow=2 * min(4, len(real_a)), padding=2)
    return Evaluation(len(real_a), colour_distance(real_a, ref_b), d_init, d_trained, p_init,
                      p_trained, step)
