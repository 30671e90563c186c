"""Checkpoint directories: everything needed to continue a run exactly, written atomically.

A checkpoint dir holds
  config.json      the Config that built the run (artefacts describe themselves)
  nets.pt          state dicts of g_ab, g_ba, d_a, d_b (and g_ab_ema, g_ba_ema: train.ema)
  train_state.pt   optimisers, schedulers, GradScaler, step, epoch, batch-in-epoch
  rank_{r}.pt      per-worker state: image pools and RNG states (one per training worker)
  manifest.json    written last; step, epoch, the dataset path, and every shared file's size
A directory whose manifest is missing or disagrees with the files on disk is incomplete
and is never loaded (a crash mid-write or mid-upload leaves exactly that).

Checkpoints are written to a local folder (Ray Train uploads them); every reading function
also takes a URI (s3://bucket/runs/NAME/checkpoint_N, through storage.py): a remote
checkpoint is downloaded to a temporary folder and loaded from there.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

from raystyle.config import Config
from raystyle.errors import RaystyleError
from raystyle.util import storage
from raystyle.util.storage import Location

if TYPE_CHECKING:
    import torch
# torch is imported where tensors are saved or loaded: reading manifests (the monitor,
# `raystyle styles`) stays light.

MANIFEST = "manifest.json"
SHARED_FILES = ("config.json", "nets.pt", "train_state.pt")
CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)$")


class CheckpointError(RaystyleError):
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


def read_manifest(directory: str | Path | Location) -> dict[str, Any]:
    """The manifest of a complete checkpoint, or CheckpointError saying what is wrong.

    ``directory`` is a local path or a URI (s3://...); the sizes are checked either way.
    """
    d = storage.resolve(directory)
    try:
        manifest = json.loads(storage.read_bytes(d / MANIFEST))
    except FileNotFoundError:
        raise CheckpointError(f"{d} is not a complete checkpoint (no {MANIFEST})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{d}: {MANIFEST} is corrupt") from None
    sizes = {e.base_name: e.size for e in storage.listdir(d) if e.type == pafs.FileType.File}
    for name, size in manifest.get("files", {}).items():
        if sizes.get(name) != size:
            raise CheckpointError(f"{d} is incomplete: {name} is missing or truncated")
    return manifest


def is_complete(directory: str | Path | Location) -> bool:
    try:
        read_manifest(directory)
        return True
    except CheckpointError:
        return False


def _load_tensors(path: Path, map_location: Any, mmap: bool = False) -> Any:
    """torch.load restricted to tensors and plain containers (``weights_only=True``).

    A pickle that would import or call anything else (a shared or downloaded checkpoint
    made to run code) is refused with an UnsafeCheckpoint error; nothing in it is executed.
    Damaged data is a CheckpointError too.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
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


def load_config(directory: str | Path | Location) -> Config:
    d = storage.resolve(directory)
    read_manifest(d)
    return Config.from_dict(json.loads(storage.read_bytes(d / "config.json")))


def load_nets(directory: str | Path | Location, map_location: str | torch.device = "cpu"
              ) -> tuple[Config, dict[str, Any]]:
    """(config, nets) of a complete checkpoint: all that export and evaluate read."""
    loc = storage.resolve(directory)
    if loc.is_remote:
        read_manifest(loc)
    with storage.local_copy(loc, (*SHARED_FILES, MANIFEST)) as d:  # the manifest checks all
        try:
            return load_config(d), _load_tensors(d / "nets.pt", map_location)
        except CheckpointError as exc:
            if not loc.is_remote:
                raise
            raise type(exc)(str(exc).replace(str(d), str(loc))) from None


def load_shared(directory: str | Path | Location, map_location: str | torch.device = "cpu"
                ) -> tuple[Config, dict[str, Any], dict[str, Any]]:
    """(config, nets, train_state) of a complete checkpoint, local or remote.

    A remote checkpoint is downloaded to a temporary folder first and checked there again
    (sizes against its manifest), so what is loaded is what the manifest vouches for.
    """
    loc = storage.resolve(directory)
    if loc.is_remote:
        read_manifest(loc)  # errors name the URI, and nothing is downloaded for a bad one
    with storage.local_copy(loc, (*SHARED_FILES, MANIFEST)) as d:
        try:
            config = load_config(d)
            nets = _load_tensors(d / "nets.pt", map_location)
            state = _load_tensors(d / "train_state.pt", map_location)
        except CheckpointError as exc:
            if not loc.is_remote:
                raise
            raise type(exc)(str(exc).replace(str(d), str(loc))) from None
    return config, nets, state


def check_safe(directory: str | Path | Location) -> None:
    """Refuse a checkpoint any of whose .pt files would run code when loaded (UnsafeCheckpoint),
    or whose shared files are damaged (CheckpointError), before training resumes from it.

    Called on the driver, so a bad checkpoint is a one-line error before any worker starts
    (in a worker it would be a failed, retried training run). Local files are memory-mapped:
    only the pickles are read, not the tensor data.
    """
    loc = storage.resolve(directory)
    names = sorted(e.base_name for e in storage.listdir(loc) if e.base_name.endswith(".pt"))
    with storage.local_copy(loc, tuple(names)) as d:
        for name in names:
            try:
                _load_tensors(d / name, "cpu", mmap=True)
            except UnsafeCheckpoint as exc:
                raise type(exc)(str(exc).replace(str(d), str(loc))) from None
            except CheckpointError:
                if name in SHARED_FILES:
                    raise  # a damaged rank file only costs exactness (see load_rank)


def load_rank(directory: str | Path | Location, rank: int) -> dict[str, Any] | None:
    """This worker's pools and RNG states, or None (new rank, or an unreadable file)."""
    name = f"rank_{rank}.pt"
    with storage.local_copy(storage.resolve(directory), (name,)) as d:
        path = d / name
        if not path.is_file():
            return None
        try:
            return _load_tensors(path, "cpu")
        except UnsafeCheckpoint:
            raise  # a file that tries to run code is refused, never skipped
        except CheckpointError:  # a truncated per-rank file costs exactness, not the run
            return None


def list_checkpoints(run_dir: str | Path | Location) -> list[Path | str]:
    """Complete checkpoints of a run (local paths or URIs), oldest first (by step)."""
    run = storage.resolve(run_dir)
    found = []
    for entry in storage.listdir(run):
        m = CHECKPOINT_RE.match(entry.base_name)
        if m and entry.type == pafs.FileType.Directory and is_complete(run / entry.base_name):
            found.append((int(m.group(1)), (run / entry.base_name).native))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path | Location) -> Path | str | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve(path: str | Path | Location) -> Path | str:
    """A checkpoint dir, or a run dir (-> its latest complete checkpoint); local or a URI."""
    loc = storage.resolve(path)
    if storage.exists(loc / MANIFEST):
        read_manifest(loc)
        return loc.native
    latest = latest_checkpoint(loc)
    if latest is None:
        raise CheckpointError(f"{loc} is neither a checkpoint nor a run directory with one")
    return latest
