"""A run directory's own records, written by rank 0 and read by the CLI and the monitor.

  STORAGE/NAME/metrics.jsonl        one JSON object per logged step (losses, lr, images/s,
                                    step time, device memory); the last line for a step wins
  STORAGE/NAME/samples/step_N.png   sample grids: rows of real A | fake B | rec A and
                                    real B | fake A | rec B
  STORAGE/NAME/validation.json      the validation plan: held-out split, the metric that ranks
                                    checkpoints, the domain classifier's accuracy
  STORAGE/NAME/checkpoint_N/        Ray Train checkpoints (see checkpoint.py)

Ray Train keeps only metrics reported with a checkpoint, so this log is the history.

STORAGE is a local folder or a URI (s3://bucket/runs, see storage.py). Locally each record
is appended and flushed as it is logged. Object stores have no append: rank 0 keeps the
whole log in a local spool file and uploads it as one object before every checkpoint, at
the end, and at most every ``UPLOAD_EVERY_S`` seconds in between (for the monitor). A crash
loses only records after the last checkpoint, which the resumed run logs again.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from raystyle.util import storage
from raystyle.util.storage import Location

if TYPE_CHECKING:
    import torch

METRICS = "metrics.jsonl"
SAMPLES = "samples"
VALIDATION = "validation.json"

LOSS_KEYS = ("g_total", "g_gan_ab", "g_gan_ba", "cycle_a", "cycle_b", "idt_a", "idt_b", "d_a", "d_b")
# Which way is better, for ranking checkpoints (retention, `export --best`): the held-out
# figures of raystyle.methods.quality that grow with quality; anything else (losses) is better lower.
HIGHER_IS_BETTER = frozenset({"val_cycle_psnr", "val_content_ssim", "val_domain_score",
                              "val_gt_psnr", "val_gt_gain_db", "val_domain_content",
                              "val_teacher_psnr", "val_teacher_ssim"})


def metric_order(metric: str) -> str:
    """'max' when a higher value of ``metric`` is better, else 'min'."""
    return "max" if metric in HIGHER_IS_BETTER else "min"
UPLOAD_EVERY_S = 30.0


def write_validation(run_dir: str | Path | Location, info: dict[str, Any]) -> None:
    storage.write_bytes(storage.resolve(run_dir) / VALIDATION, json.dumps(info, indent=2).encode())


def read_validation(run_dir: str | Path | Location) -> dict[str, Any]:
    """A run's validation plan (best metric, split, classifier figures); {} when it has none."""
    try:
        info = json.loads(storage.read_bytes(storage.resolve(run_dir) / VALIDATION))
    except (FileNotFoundError, IsADirectoryError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one record to a local run's log (remote runs log through MetricsLog)."""
    path = Path(run_dir) / METRICS
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def parse_metrics(text: str) -> list[dict[str, Any]]:
    """Records in step order; a torn last line (crash mid-write) is ignored."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        by_step[int(rec.get("step", 0))] = rec
    return [by_step[k] for k in sorted(by_step)]


def read_metrics(run_dir: str | Path | Location) -> list[dict[str, Any]]:
    """Records in step order of a local or remote run; [] when it has no log yet."""
    try:
        data = storage.read_bytes(storage.resolve(run_dir) / METRICS)
    except (FileNotFoundError, IsADirectoryError):
        return []
    return parse_metrics(data.decode("utf-8", errors="replace"))


def _dump(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def truncate_metrics(run_dir: str | Path | Location, step: int) -> None:
    """Drop records after ``step`` (a resumed run logs those steps again)."""
    run = storage.resolve(run_dir)
    if not storage.is_file(run / METRICS):
        return
    keep = [r for r in read_metrics(run) if r.get("step", 0) <= step]
    storage.write_bytes(run / METRICS, _dump(keep).encode())


class MetricsLog:
    """Rank 0's metrics log for one run, from ``step`` on (later records are dropped).

    ``append`` a record per logged step; ``sync()`` before each checkpoint and at the end;
    ``close()`` when done. Locally ``append`` writes through and ``sync`` does nothing.
    """

    def __init__(self, run_dir: str | Path | Location, step: int):
        self.run = storage.resolve(run_dir)
        self.remote = self.run.is_remote
        if not self.remote:
            truncate_metrics(self.run, step)
            return
        keep = [r for r in read_metrics(self.run) if r.get("step", 0) <= step]
        fd, self.spool = tempfile.mkstemp(prefix="raystyle_metrics_", suffix=".jsonl")
        with os.fdopen(fd, "w") as f:
            f.write(_dump(keep))
        self.uploaded: float | None = None  # the first record is uploaded at once
        if storage.exists(self.run / METRICS):
            self.sync()  # the truncated log, so readers never mix two attempts

    def append(self, record: dict[str, Any]) -> None:
        if not self.remote:
            append_metrics(self.run.local, record)
            return
        with open(self.spool, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.uploaded is None or time.monotonic() - self.uploaded >= UPLOAD_EVERY_S:
            self.sync()

    def sync(self) -> None:
        """Upload the whole spool as one object (remote runs)."""
        if self.remote:
            storage.upload_file(self.spool, self.run / METRICS)
            self.uploaded = time.monotonic()

    def close(self) -> None:
        if self.remote:
            self.sync()
            Path(self.spool).unlink(missing_ok=True)


def save_sample_grid(run_dir: str | Path | Location, step: int, rows: list[list[torch.Tensor]]
                     ) -> Path | str:
    """Save rows of (B, 3, H, W) tensors in [-1, 1]: the first image of each, side by side."""
    import torch
    from torchvision.utils import save_image

    target = storage.resolve(run_dir) / SAMPLES / f"step_{step:08d}.png"
    tiles = [t[:1].detach().float().cpu() for row in rows for t in row]
    grid = torch.cat(tiles)  # (rows * cols, 3, H, W)
    with tempfile.TemporaryDirectory(prefix="raystyle_sample_") as tmp:
        png = Path(tmp) / "grid.png"
        save_image(grid * 0.5 + 0.5, png, nrow=len(rows[0]), padding=2)
        storage.upload_file(png, target)
    return target.native


def list_samples(run_dir: str | Path | Location) -> list[Path | str]:
    """Sample grids (local paths or URIs), oldest first."""
    folder = storage.resolve(run_dir) / SAMPLES
    names = sorted(e.base_name for e in storage.listdir(folder)
                   if e.type == pafs.FileType.File and e.base_name.startswith("step_")
                   and e.base_name.endswith(".png"))
    return [(folder / n).native for n in names]
