"""Checkpoint directories: everything needed to continue a run exactly, written atomically.

A checkpoint dir holds
  config.json      the Config that built the run (artefacts describe themselves)
  nets.pt          state dicts of g_ab, g_ba, d_a, d_b
  train_state.pt   optimisers, schedulers, GradScaler, step, epoch, batch-in-epoch
  rank_{r}.pt      per-worker state: image pools and RNG states (one per training worker)
  manifest.json    written last; step, epoch, the dataset path, and every shared file's size
A directory whose manifest is missing or disagrees with the files on disk is incomplete
and is never loaded (a crash mid-write or mid-upload leaves exactly that).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config

if TYPE_CHECKING:
    import torch
# torch is imported where tensors are saved or loaded: reading manifests (the monitor,
# `raystyle styles`) stays light.

MANIFEST = "manifest.json"
SHARED_FILES = ("config.json", "nets.pt", "train_state.pt")
CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)$")


class CheckpointError(ValueError):
    """Not a (complete) raystyle checkpoint."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint file whose pickle would import or call code: refused, never executed."""


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_shared(directory: str | Path, config: Config, nets: dict[str, Any],
                train_state: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Rank 0's part: config, weights, optimiser state, then the manifest last."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _atomic_write(d / "config.json", lambda f: f.write(json.dumps(config.to_dict(), indent=2).encode()))
    import torch

    _atomic_write(d / "nets.pt", lambda f: torch.save(nets, f))
    _atomic_write(d / "train_state.pt", lambda f: torch.save(train_state, f))
    manifest = {
        "format": 1,
        "step": int(train_state["step"]),
        "epoch": int(train_state["epoch"]),
        "world_size": int(train_state.get("world_size", 1)),
        **(extra or {}),
        "files": {name: (d / name).stat().st_size for name in SHARED_FILES},
    }
    _atomic_write(d / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=2).encode()))


def save_rank(directory: str | Path, rank: int, state: dict[str, Any]) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    import torch

    _atomic_write(d / f"rank_{rank}.pt", lambda f: torch.save(state, f))


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint, or CheckpointError saying what is wrong."""
    d = Path(directory)
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{d} is not a complete checkpoint (no {MANIFEST})") from None
    except json.JSONDecodeError:
        raise CheckpointError(f"{d}: {MANIFEST} is corrupt") from None
    for name, size in manifest.get("files", {}).items():
        path = d / name
        if not path.is_file() or path.stat().st_size != size:
            raise CheckpointError(f"{d} is incomplete: {name} is missing or truncated")
    return manifest


def is_complete(directory: str | Path) -> bool:
    try:
        read_manifest(directory)
        return True
    except CheckpointError:
        return False


def _load_tensors(path: Path, map_location: Any) -> Any:
    """torch.load restricted to tensors and plain containers (``weights_only=True``).

    A pickle that would import or call anything else (a shared or downloaded checkpoint
    made to run code) is refused with an UnsafeCheckpoint error; nothing in it is executed.
    Damaged data is a CheckpointError too.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln]
        if lines:  # torch names the callable the pickle wanted to import
            raise UnsafeCheckpoint(
                f"{path} was refused: it holds more than tensors and plain data and could run "
                f"code when loaded ({lines[0][:160]}); raystyle loads checkpoints with "
                f"weights_only=True") from None
        raise CheckpointError(f"{path} is corrupt (not a readable tensor file)") from None
    except RuntimeError as exc:
        raise CheckpointError(f"{path} is corrupt or truncated ({str(exc).splitlines()[0][:120]})") from None


def load_config(directory: str | Path) -> Config:
    read_manifest(directory)
    return Config.from_dict(json.loads((Path(directory) / "config.json").read_text()))


def load_shared(directory: str | Path, map_location: str | torch.device = "cpu"
                ) -> tuple[Config, dict[str, Any], dict[str, Any]]:
    """(config, nets, train_state) of a complete checkpoint."""
    d = Path(directory)
    config = load_config(d)
    import torch

    nets = _load_tensors(d / "nets.pt", map_location)
    state = _load_tensors(d / "train_state.pt", map_location)
    return config, nets, state


def load_rank(directory: str | Path, rank: int) -> dict[str, Any] | None:
    """This worker's pools and RNG states, or None (new rank, or an unreadable file)."""
    path = Path(directory) / f"rank_{rank}.pt"
    if not path.is_file():
        return None
    try:
        import torch

        return _load_tensors(path, "cpu")
    except UnsafeCheckpoint:
        raise  # a file that tries to run code is refused, never skipped
    except CheckpointError:  # a truncated per-rank file costs exactness, not the run
        return None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (by step)."""
    run = Path(run_dir)
    if not run.is_dir():
        return []
    found = []
    for p in run.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve(path: str | Path) -> Path:
    """A checkpoint dir, or a run dir (-> its latest complete checkpoint)."""
    p = Path(path).expanduser()
    if (p / MANIFEST).exists():
        read_manifest(p)
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise CheckpointError(f"{p} is neither a checkpoint nor a run directory with one")
    return latest
