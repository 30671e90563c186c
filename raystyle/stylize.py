"""The Stylizer: uint8 RGB in, uint8 RGB out, through ONNX Runtime. No Ray.

One way to run a style everywhere (CLI, Serve replicas, Ray Data actors):
- any size: reflect-padded to the network's multiple of 4 and cropped back;
- large images in overlapping tiles blended with feathered weights; InstanceNorm
  statistics come from one pass over the whole (downscaled) image, so tiles agree with
  each other and there is no seam; memory stays bounded by the tile size;
- ``strength`` blends with the input (0 returns the input exactly); ``preserve_color``
  keeps the input's colours (stylized luminance, original chroma);
- batched calls run equal-shaped images in one ONNX Runtime call.

ONNX Runtime session options: graph optimisation ORT_ENABLE_ALL, ``intra_op_num_threads``
= the physical cores (or ``threads``), sequential execution, one inter-op thread.
Execution providers: ``auto`` uses CUDA when onnxruntime-gpu can load it, else the CPU;
``cuda`` and ``tensorrt`` fail loudly (ProviderError) when they cannot load instead of
silently running on the CPU.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
from PIL import Image

from . import registry
from .images import ImageInput, decode, fit_within

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class ProviderError(ValueError):
    """A requested execution provider is not available or failed to load."""


class StylizeError(ValueError):
    """Bad stylization parameters (strength, tile, max_side, ...)."""


def default_threads() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def make_session(path: str | Path, provider: str = "auto", threads: int | None = None,
                 low_memory: bool = False) -> ort.InferenceSession:
    """An ORT session; ``low_memory`` frees activations after each run (no arena, no
    pre-planned memory pattern): slower to allocate, but a big tile's working set is not
    kept for the process's lifetime."""
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
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
    sess = ort.InferenceSession(str(path), opts, providers=chain)
    if provider in ("cuda", "tensorrt") and chain[0] not in sess.get_providers():
        raise ProviderError(f"{chain[0]} failed to load (CUDA/cuDNN/TensorRT libraries?); "
                            "refusing to fall back to the CPU silently")
    return sess


MULTIPLE = 4  # the generators' height and width multiple (raystyle.nets.MULTIPLE; no torch here)
MIN_SIDE = 16  # the nets' inner reflection pads need at least 2 px at 1/4 resolution


def _padded(n: int) -> int:
    return max(MIN_SIDE, n + (-n % MULTIPLE))


def _to_input(batch: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, H', W') float32 in [-1, 1], reflect-padded to MULTIPLE."""
    x = batch.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    h, w = x.shape[-2:]
    ph, pw = _padded(h) - h, _padded(w) - w
    if ph or pw:
        mode = "reflect" if min(h, w) > 1 else "edge"  # a 1-px side cannot be mirrored
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)
    return np.ascontiguousarray(x)


def _to_uint8(y: np.ndarray, h: int, w: int) -> np.ndarray:
    """(B, 3, H', W') in [-1, 1] -> (B, h, w, 3) uint8 (crop the padding back off)."""
    y = y[:, :, :h, :w].transpose(0, 2, 3, 1)
    return np.clip((y + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def _starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def _ramp(n: int, overlap: int, fade_in: bool, fade_out: bool) -> np.ndarray:
    """1-D feather: rises over ``overlap`` px at an interior start, falls at an interior end."""
    w = np.ones(n, np.float32)
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    k = min(overlap, n)
    if fade_in:
        w[:k] = np.minimum(w[:k], ramp[:k])
    if fade_out:
        w[n - k :] = np.minimum(w[n - k :], ramp[:k][::-1])
    return w


def blend_strength(stylized: np.ndarray, original: np.ndarray, strength: float) -> np.ndarray:
    if strength >= 1.0:
        return stylized
    mixed = strength * stylized.astype(np.float32) + (1 - strength) * original.astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def keep_colour(stylized: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Luminance of the stylized image, chroma (Cb, Cr) of the original."""
    y = np.asarray(Image.fromarray(stylized).convert("YCbCr"))[..., :1]
    cbcr = np.asarray(Image.fromarray(original).convert("YCbCr"))[..., 1:]
    return np.asarray(Image.fromarray(np.concatenate([y, cbcr], axis=2), "YCbCr").convert("RGB"))


class Stylizer:
    """Stylize images with one registry style (or an ONNX file)."""

    def __init__(self, style: str | None = None, *, models_dir: str | Path | None = None,
                 model_path: str | Path | None = None, precision: str = "fp32",
                 provider: str = "auto", threads: int | None = None, tile: int = 1024,
                 overlap: int = 64, stats_side: int = 1024):
        if (style is None) == (model_path is None):
            raise StylizeError("give a style name or a model_path, not both")
        if tile < 64 or tile % MULTIPLE:
            raise StylizeError(f"tile must be a multiple of {MULTIPLE} and at least 64 (got {tile})")
        if overlap < 0:
            raise StylizeError(f"overlap must be >= 0 (got {overlap})")
        # tiles overlap by min(overlap, tile / 4): small tiles get a smaller overlap, not an error
        self.provider, self.threads, self.precision = provider, threads, precision
        self.tile, self.overlap, self.stats_side = tile, overlap, stats_side
        self._tile_paths: tuple[Path, Path] | None = None
        if style is not None:
            self.style = registry.get_style(style, models_dir)
            path = self.style.file(precision)
            entry = self.style.meta["precisions"][precision]
            if "tile" in entry:
                self._tile_paths = (self.style.path / entry["tile"], self.style.path / entry["stats"])
            self.name = self.style.name
        else:
            path = Path(model_path)
            self.style, self.name = None, path.stem
        self.session = make_session(path, provider, threads)
        self._input = self.session.get_inputs()[0].name
        self._tile_sessions: tuple[ort.InferenceSession, ort.InferenceSession] | None = None
        self.last_infer_ms = 0.0

    # -- public API -----------------------------------------------------------------------
    def stylize(self, image: ImageInput, *, strength: float = 1.0, preserve_color: bool = False,
                max_side: int | None = None, tile: int | None = None) -> np.ndarray:
        """One image (path, bytes, PIL image or uint8 array) -> (H, W, 3) uint8."""
        return self.stylize_batch([image], strength=strength, preserve_color=preserve_color,
                                  max_side=max_side, tile=tile)[0]

    __call__ = stylize

    def stylize_batch(self, images: list[ImageInput], *, strength: float = 1.0,
                      preserve_color: bool = False, max_side: int | None = None,
                      tile: int | None = None) -> list[np.ndarray]:
        """Several images; equal shapes share one ONNX Runtime call. Order is kept."""
        if not 0.0 <= strength <= 1.0:
            raise StylizeError(f"strength must be between 0 and 1, got {strength}")
        if max_side is not None and max_side < MULTIPLE:
            raise StylizeError(f"max_side must be at least {MULTIPLE}, got {max_side}")
        tile = tile or self.tile
        if tile < 64 or tile % MULTIPLE:
            raise StylizeError(f"tile must be a multiple of {MULTIPLE} and at least 64, got {tile}")
        arrays = [self._prepare(img, max_side) for img in images]
        if strength == 0.0:
            return [a.copy() for a in arrays]
        out: list[np.ndarray | None] = [None] * len(arrays)
        start = time.perf_counter()
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, a in enumerate(arrays):
            if max(a.shape[:2]) > tile:
                out[i] = self._tiled(a, tile)
            else:
                groups.setdefault(a.shape, []).append(i)
        for shape, idx in groups.items():
            y = self.session.run(None, {self._input: _to_input(np.stack([arrays[i] for i in idx]))})[0]
            for i, res in zip(idx, _to_uint8(y, shape[0], shape[1]), strict=True):
                out[i] = res
        self.last_infer_ms = (time.perf_counter() - start) * 1000
        results = []
        for a, s in zip(arrays, out, strict=True):
            if preserve_color:
                s = keep_colour(s, a)
            results.append(blend_strength(s, a, strength))
        return results

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _prepare(image: ImageInput, max_side: int | None) -> np.ndarray:
        return np.asarray(fit_within(decode(image), max_side))

    def _tiling_sessions(self):
        if self._tile_sessions is None and self._tile_paths is not None:
            self._tile_sessions = tuple(make_session(p, self.provider, self.threads, low_memory=True)
                                        for p in self._tile_paths)
        return self._tile_sessions

    def _whole_image_stats(self, a: np.ndarray, stats_sess: ort.InferenceSession) -> np.ndarray:
        img = fit_within(Image.fromarray(a), self.stats_side, Image.BILINEAR)
        return stats_sess.run(None, {"image": _to_input(np.asarray(img)[None])})[0]

    def _tiled(self, a: np.ndarray, tile: int) -> np.ndarray:
        """Overlapping windows, feathered; InstanceNorm stats from the whole image."""
        h, w = a.shape[:2]
        overlap = min(self.overlap, tile // 4)
        stride = tile - overlap
        sessions = self._tiling_sessions()
        stats = self._whole_image_stats(a, sessions[1]) if sessions else None
        acc = np.zeros((h, w, 3), np.float32)
        weight = np.zeros((h, w, 1), np.float32)
        ys, xs = _starts(h, tile, stride), _starts(w, tile, stride)
        for top in ys:
            for left in xs:
                crop = a[top : top + tile, left : left + tile]
                ch, cw = crop.shape[:2]
                x = _to_input(crop[None])
                if sessions:
                    y = sessions[0].run(None, {"image": x, "stats": stats})[0]
                else:
                    y = self.session.run(None, {self._input: x})[0]
                y = (y[0, :, :ch, :cw].transpose(1, 2, 0) + 1.0) * 127.5
                wy = _ramp(ch, overlap, top > 0, top + ch < h)
                wx = _ramp(cw, overlap, left > 0, left + cw < w)
                wt = (wy[:, None] * wx[None, :])[..., None]
                acc[top : top + ch, left : left + cw] += y * wt
                weight[top : top + ch, left : left + cw] += wt
        acc /= weight
        return np.clip(acc + 0.5, 0, 255).astype(np.uint8)
