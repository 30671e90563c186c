"""What every style kind's stylizer shares: ONNX Runtime sessions, option checks, the batch runner.

ONNX Runtime session options: graph optimisation ORT_ENABLE_ALL, ``intra_op_num_threads``
= the physical cores (or ``threads``), sequential execution, one inter-op thread.
Execution providers: ``auto`` uses CUDA when onnxruntime-gpu can load it, else the CPU;
``cuda`` and ``tensorrt`` fail loudly (ProviderError) when they cannot load instead of
silently running on the CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil

from raystyle.data.colour import ColourError, after_feed_forward, colour_mode
from raystyle.errors import RaystyleError
from raystyle.infer.tiles import MULTIPLE, to_uint8

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class ProviderError(RaystyleError):
    """A requested execution provider is not available or failed to load."""


class StylizeError(RaystyleError):
    """Bad stylization parameters (strength, tile, max_side, ...)."""


def default_threads() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def make_session(path: str | Path, provider: str = "auto", threads: int | None = None,
                 low_memory: bool = False, spin: bool = True) -> ort.InferenceSession:
    """An ORT session; ``spin=False``: idle intra-op threads sleep instead of spinning (for
    serving, where spinning threads steal shared cores from the other replicas); ``low_memory``: no pre-planned memory pattern, and a run given
    ``release_options(session)`` hands the arena's memory back when it ends, so a big tile's
    working set is not kept for the process's lifetime. (Without the arena at all, tiles ran
    1.5-3x slower: measured on 1104 px windows of the tiny preset's generator, 2 cores.)"""
    available = ort.get_available_providers()
    if provider == "auto":
        chain = PROVIDERS["cuda"] if "CUDAExecutionProvider" in available else PROVIDERS["cpu"]
    elif provider in PROVIDERS:
        chain = PROVIDERS[provider]
        if chain[0] not in available:
            raise ProviderError(
                f"execution provider {provider} is not available in this onnxruntime "
                f"(available: {', '.join(available)}); install raystyle[gpu] on a CUDA machine"
            )
    else:
        raise ProviderError(f"provider must be auto, cpu, cuda or tensorrt, got {provider!r}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    if low_memory:
        opts.enable_mem_pattern = False
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=chain)
    if provider in ("cuda", "tensorrt") and chain[0] not in sess.get_providers():
        raise ProviderError(f"{chain[0]} failed to load (CUDA/cuDNN/TensorRT libraries?); "
                            "refusing to fall back to the CPU silently")
    return sess


def release_options(session: ort.InferenceSession) -> ort.RunOptions:
    """Run options that shrink the session's memory arenas back when the run ends."""
    opts = ort.RunOptions()
    devices = ["cpu:0"] + (["gpu:0"] if "CUDAExecutionProvider" in session.get_providers() else [])
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", ";".join(devices))
    return opts


def blend_strength(stylized: np.ndarray, original: np.ndarray, strength: float) -> np.ndarray:
    if strength >= 1.0:
        return stylized
    mixed = strength * stylized.astype(np.float32) + (1 - strength) * original.astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)






def check_options(strength: float, max_side: int | None, tile: int, multiple: int = MULTIPLE) -> int:
    """``tile`` when strength, max_side and tile are usable; StylizeError (one line) otherwise."""
    if not 0.0 <= strength <= 1.0:
        raise StylizeError(f"strength must be between 0 and 1, got {strength}")
    if max_side is not None and max_side < multiple:
        raise StylizeError(f"max_side must be at least {multiple}, got {max_side}")
    if tile < 64 or tile % multiple:
        raise StylizeError(f"tile must be a multiple of {multiple} and at least 64, got {tile}")
    return tile


def colour_modes(preserve_color: Any, n: int) -> list[str | None]:
    """``preserve_color`` (one value for every image, or a list of one per image: True, False,
    None or a mode of raystyle.data.colour) as ``n`` modes (None: off); StylizeError when bad."""
    values = list(preserve_color) if isinstance(preserve_color, list | tuple) else [preserve_color] * n
    if len(values) != n:
        raise StylizeError(f"{len(values)} preserve_color values for {n} images")
    try:
        return [colour_mode(v) for v in values]
    except ColourError as exc:
        raise StylizeError(str(exc)) from None


def run_grouped(arrays: list[np.ndarray], tile: int, tiled, whole, strength: float,
                preserve_color: Any, originals: Sequence[np.ndarray] | None = None,
                finish: Callable[[int, np.ndarray, np.ndarray], np.ndarray] | None = None,
                ) -> tuple[list[np.ndarray], float]:
    """(outputs, ms of the networks): the images over ``tile`` px through ``tiled(i, a)`` ->
    uint8, the others grouped by shape through ``whole(indices, (B, H, W, 3) batch)`` ->
    (B, 3, H', W') in [-1, 1]; then colour and strength. Order is kept. Both stylizers run
    their batches through this (raystyle.infer.arbitrary too).

    Colour: ``finish(i, stylized, original)`` when given, else ``preserve_color`` (see
    ``colour_modes``) as a feed-forward net's (raystyle.data.colour.after_feed_forward).
    ``originals``: the photos whose colours and strength apply, where ``arrays`` are copies
    prepared for the network (a luminance-only transfer); default ``arrays``."""
    originals = arrays if originals is None else originals
    modes = colour_modes(preserve_color, len(arrays)) if finish is None else None
    if strength == 0.0:
        return [a.copy() for a in originals], 0.0
    out: list[np.ndarray | None] = [None] * len(arrays)
    start = time.perf_counter()
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        if max(a.shape[:2]) > tile:
            out[i] = tiled(i, a)
        else:
            groups.setdefault(a.shape, []).append(i)
    for shape, idx in groups.items():
        y = whole(idx, np.stack([arrays[i] for i in idx]))
        for i, res in zip(idx, to_uint8(y, shape[0], shape[1]), strict=True):
            out[i] = res
    ms = (time.perf_counter() - start) * 1000
    results = []
    for i, (a, s) in enumerate(zip(originals, out, strict=True)):
        s = finish(i, s, a) if finish is not None else after_feed_forward(s, a, modes[i])
        results.append(blend_strength(s, a, strength))
    return results, ms
