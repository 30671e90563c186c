"""A run directory's own records, written by rank 0 and read by the CLI and the monitor.

  STORAGE/NAME/metrics.jsonl        one JSON object per logged step (losses, lr, images/s,
                                    step time, device memory); the last line for a step wins
  STORAGE/NAME/samples/step_N.png   sample grids: rows of real A | fake B | rec A and
                                    real B | fake A | rec B
  STORAGE/NAME/checkpoint_N/        Ray Train checkpoints (see checkpoint.py)

Ray Train keeps only metrics reported with a checkpoint, so this log is the history.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

METRICS = "metrics.jsonl"
SAMPLES = "samples"


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    path = Path(run_dir) / METRICS
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Records in step order; a torn last line (crash mid-write) is ignored."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        by_step[int(rec.get("step", 0))] = rec
    return [by_step[k] for k in sorted(by_step)]


def truncate_metrics(run_dir: str | Path, step: int) -> None:
    """Drop records after ``step`` (a resumed run logs those steps again)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, path)


def save_sample_grid(run_dir: str | Path, step: int, rows: list[list[torch.Tensor]]) -> Path:
    """Save rows of (B, 3, H, W) tensors in [-1, 1]: the first image of each, side by side."""
    import torch
    from torchvision.utils import save_image

    folder = Path(run_dir) / SAMPLES
    folder.mkdir(parents=True, exist_ok=True)
    tiles = [t[:1].detach().float().cpu() for row in rows for t in row]
    grid = torch.cat(tiles)  # (rows * cols, 3, H, W)
    path = folder / f"step_{step:08d}.png"
    tmp = folder / f".step_{step:08d}.tmp.png"
    save_image(grid * 0.5 + 0.5, tmp, nrow=len(rows[0]), padding=2)
    os.replace(tmp, path)
    return path


def list_samples(run_dir: str | Path) -> list[Path]:
    return sorted((Path(run_dir) / SAMPLES).glob("step_*.png"))
