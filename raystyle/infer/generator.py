"""The Stylizer: uint8 RGB in, uint8 RGB out, through ONNX Runtime. No Ray.

One way to run a style everywhere (CLI, Serve replicas, Ray Data actors):
- any size: reflect-padded to the network's multiple of 4 and cropped back;
- large images in tiles that agree with the whole image exactly: each tile is a core of
  at most ``tile`` px plus a halo of the generator's receptive radius (so with fixed
  InstanceNorm statistics its core is exact), and the statistics are the whole image's,
  computed in streaming passes over the tiles (``sums.onnx``; see ``Stylizer``); no
  blending, no seams, memory bounded by the tile plus halo;
- every ONNX session comes from ONE resolved version of a registry style (model.json and
  all graphs read from the same version folder, all sessions opened at construction), so
  a re-export swapped in meanwhile never mixes versions;
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

from raystyle import registry
from raystyle.data.images import ImageInput, decode, fit_within, keep_colour

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


MULTIPLE = 4  # the generators' height and width multiple (raystyle.core.nets.MULTIPLE; no torch here)
MIN_SIDE = 16  # the nets' inner reflection pads need at least 2 px at 1/4 resolution


def _padded(n: int, multiple: int = MULTIPLE) -> int:
    return max(MIN_SIDE, n + (-n % multiple))


def _to_input(batch: np.ndarray, multiple: int = MULTIPLE) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, H', W') float32 in [-1, 1], reflect-padded to ``multiple``."""
    x = batch.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
    h, w = x.shape[-2:]
    ph, pw = _padded(h, multiple) - h, _padded(w, multiple) - w
    if ph or pw:
        mode = "reflect" if min(h, w) > 1 else "edge"  # a 1-px side cannot be mirrored
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)
    return np.ascontiguousarray(x)


def _to_uint8(y: np.ndarray, h: int, w: int) -> np.ndarray:
    """(B, 3, H', W') in [-1, 1] -> (B, h, w, 3) uint8 (crop the padding back off)."""
    y = y[:, :, :h, :w].transpose(0, 2, 3, 1)
    return np.clip((y + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


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


def run_grouped(arrays: list[np.ndarray], tile: int, tiled, whole, strength: float,
                preserve_color: bool) -> tuple[list[np.ndarray], float]:
    """(outputs, ms of the networks): the images over ``tile`` px through ``tiled(i, a)`` ->
    uint8, the others grouped by shape through ``whole(indices, (B, H, W, 3) batch)`` ->
    (B, 3, H', W') in [-1, 1]; then colour and strength. Order is kept. Both stylizers run
    their batches through this (raystyle.infer.arbitrary too)."""
    if strength == 0.0:
        return [a.copy() for a in arrays], 0.0
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
        for i, res in zip(idx, _to_uint8(y, shape[0], shape[1]), strict=True):
            out[i] = res
    ms = (time.perf_counter() - start) * 1000
    results = []
    for a, s in zip(arrays, out, strict=True):
        if preserve_color:
            s = keep_colour(s, a)
        results.append(blend_strength(s, a, strength))
    return results, ms


def open_stylizer(style: str | registry.Style, *, models_dir: str | Path | None = None, **options):
    """The stylizer a registry style needs: ``Stylizer`` for a generator, ``ArbitraryStylizer``
    (raystyle.infer.arbitrary) for an arbitrary style. ``options`` are the constructors' own."""
    st = style if isinstance(style, registry.Style) else registry.get_style(style, models_dir)
    if st.kind == "arbitrary":
        from raystyle.infer.arbitrary import ArbitraryStylizer

        return ArbitraryStylizer(style, models_dir=models_dir, **options)
    return Stylizer(style, models_dir=models_dir, **options)


# -- exact tiling: geometry and statistics ---------------------------------------------------
# A tile is a *core* (the pixels it contributes) plus a *halo* of at least the generator's
# receptive radius on every side that is not the image border. Cores partition the
# reflect-padded image and sit on the nets' multiple-of-4 grid, so with the same InstanceNorm
# statistics a core's pixels equal the whole image's exactly (no blending, no seams).

Box = tuple[int, int, int, int]  # top, bottom, left, right (padded-image coordinates)


def _segments(n: int, core: int, multiple: int = MULTIPLE) -> list[tuple[int, int]]:
    """[0, n) cut into ceil(n / core) near-equal parts on the ``multiple`` grid, each <= core."""
    k = -(-n // core)
    m = n // multiple
    cuts = [multiple * (i * m // k) for i in range(k)] + [n]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def tile_boxes(height: int, width: int, core: int, halo: int, multiple: int = MULTIPLE) -> list[tuple[Box, Box]]:
    """(core, window) boxes over a padded height x width image (both multiples of ``multiple``)."""
    boxes = []
    for r0, r1 in _segments(height, core, multiple):
        for c0, c1 in _segments(width, core, multiple):
            window = (max(0, r0 - halo), min(height, r1 + halo), max(0, c0 - halo), min(width, c1 + halo))
            boxes.append(((r0, r1, c0, c1), window))
    return boxes


class _Plan:
    """How one image is tiled: its size, padded size, boxes and border padding mode."""

    def __init__(self, shape: tuple[int, ...], core: int, halo: int, multiple: int = MULTIPLE):
        self.h, self.w = shape[:2]
        self.height, self.width = _padded(self.h, multiple), _padded(self.w, multiple)
        self.mode = "reflect" if min(self.h, self.w) > 1 else "edge"  # as _to_input
        self.boxes = tile_boxes(self.height, self.width, core, halo, multiple)

    def window(self, a: np.ndarray, box: Box) -> np.ndarray:
        """The window's pixels as (1, 3, h, w) float32, reflect-padded where it passes the image."""
        t0, t1, l0, l1 = box
        crop = a[t0 : min(t1, self.h), l0 : min(l1, self.w)]
        x = crop.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
        pb, pr = t1 - min(t1, self.h), l1 - min(l1, self.w)
        if pb or pr:  # the bottom/right padding of the whole image, as _to_input makes it
            x = np.pad(x, ((0, 0), (0, 0), (0, pb), (0, pr)), mode=self.mode)
        return np.ascontiguousarray(x)

    @staticmethod
    def mask(core: Box, window: Box) -> np.ndarray:
        m = np.zeros((1, 1, window[1] - window[0], window[3] - window[2]), np.float32)
        m[..., core[0] - window[0] : core[1] - window[0], core[2] - window[2] : core[3] - window[2]] = 1.0
        return m


def _combine(stats: np.ndarray, sums: np.ndarray, layout: list[tuple[int, int]],
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


class Stylizer:
    """Stylize images with one registry style (or an ONNX file).

    Images whose longer side exceeds ``tile`` run as tiles of ``tile`` px plus a halo of the
    generator's receptive radius. InstanceNorm statistics start from ``stats.onnx`` on a
    copy downscaled to ``stats_side`` and are made exact by streaming passes over the tiles
    (``sums.onnx``): a pass makes at least one more norm layer exact, so after as many passes
    as there are norms the statistics are the whole image's; passes stop earlier when no
    norm's output would move by more than ``stats_tolerance`` (of its std). ``stats_passes``
    caps the passes (0: the downscaled estimate only). An image no larger than ``stats_side``
    gets exact statistics from ``stats.onnx`` directly.

    ``style`` is a registry name (resolved to one version) or a ``registry.Style``;
    ``model_path`` is a bare ONNX file, which tiles only with ``halo`` given (its receptive
    radius, a multiple of 4) and only exactly for a generator without InstanceNorm.
    """

    def __init__(self, style: str | registry.Style | None = None, *, models_dir: str | Path | None = None,
                 model_path: str | Path | None = None, precision: str = "fp32",
                 provider: str = "auto", threads: int | None = None, tile: int = 1024,
                 stats_side: int = 1024, stats_passes: int | None = None,
                 stats_tolerance: float = 1e-4, halo: int | None = None, spin: bool = True):
        if (style is None) == (model_path is None):
            raise StylizeError("give a style name or a model_path, not both")
        if tile < 64 or tile % MULTIPLE:
            raise StylizeError(f"tile must be a multiple of {MULTIPLE} and at least 64 (got {tile})")
        if stats_passes is not None and stats_passes < 0:
            raise StylizeError(f"stats_passes must be >= 0 (got {stats_passes})")
        if halo is not None and (halo < 0 or halo % MULTIPLE):
            raise StylizeError(f"halo must be a multiple of {MULTIPLE} and >= 0 (got {halo})")
        self.provider, self.threads, self.precision, self.spin = provider, threads, precision, spin
        self.tile, self.stats_side = tile, stats_side
        self.stats_passes, self.stats_tolerance = stats_passes, stats_tolerance
        self.halo = halo
        self._layout: list[tuple[int, int]] = []
        self._tiling: tuple[ort.InferenceSession, ...] | None = None  # (tile, stats, sums)
        self._legacy_tiling = False
        self.style: registry.Style | None = None
        if model_path is not None:
            path = Path(model_path)
            self.name = path.stem
            self.session = make_session(path, provider, threads, spin=spin)
        else:
            self._open_style(style, models_dir, precision)
        self._input = self.session.get_inputs()[0].name
        self.last_infer_ms = 0.0
        self.last_stats_passes = 0  # streaming passes of the last tiled image
        self.last_stats_change = 0.0  # how much its last pass still moved the statistics

    def _open_style(self, style: str | registry.Style, models_dir: str | Path | None, precision: str) -> None:
        """Every session from ONE resolved version (resolved again if that version is pruned meanwhile)."""
        for attempt in range(5):
            st = style if isinstance(style, registry.Style) else registry.get_style(style, models_dir)
            try:
                self._open_version(st, precision)
                return
            except Exception:
                if isinstance(style, registry.Style) or st.version_dir.is_dir() or attempt == 4:
                    raise

    def _open_version(self, st: registry.Style, precision: str) -> None:
        if st.kind != "generator":
            raise StylizeError(f"style {st.name!r} is an {st.kind} style: it needs a style image "
                               "(raystyle.infer.arbitrary.ArbitraryStylizer; --style-image on the CLI)")
        path = st.file(precision)
        entry = st.meta["precisions"][precision]
        tiling = st.meta.get("tiling")
        self.session = make_session(path, self.provider, self.threads, spin=self.spin)
        if tiling is not None:
            self.halo = int(tiling["halo"])
            self._layout = [(int(c), int(s)) for c, s in tiling.get("norms", [])]
        if "tile" in entry and "sums" in entry and tiling is not None:
            self._tiling = tuple(make_session(st.version_dir / entry[k], self.provider, self.threads,
                                              low_memory=True, spin=self.spin) for k in ("tile", "stats", "sums"))
        elif "tile" in entry:
            self._legacy_tiling = True  # exported before exact tiling: no sums graph / halo
        self.style, self.name = st, st.name

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
        tile = check_options(strength, max_side, self.tile if tile is None else tile)
        arrays = [self._prepare(img, max_side) for img in images]

        def whole(idx: list[int], batch: np.ndarray) -> np.ndarray:
            return self.session.run(None, {self._input: _to_input(batch)})[0]

        results, self.last_infer_ms = run_grouped(arrays, tile, lambda i, a: self._tiled(a, tile), whole,
                                                  strength, preserve_color)
        return results


    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _prepare(image: ImageInput, max_side: int | None) -> np.ndarray:
        return np.asarray(fit_within(decode(image, max_side=max_side), max_side))

    def _tiled(self, a: np.ndarray, tile: int) -> np.ndarray:
        """Cores of ``tile`` px with a halo; InstanceNorm statistics exact for the whole image."""
        if self._legacy_tiling or self.halo is None:
            what = f"style {self.name!r} was exported without exact-tiling data (re-export it)" \
                if self.style is not None else "a model_path Stylizer needs halo= (the receptive radius)"
            raise StylizeError(f"cannot tile a {a.shape[1]}x{a.shape[0]} image over {tile} px: {what}")
        plan = _Plan(a.shape, tile, self.halo)
        if self._tiling is None:  # no InstanceNorm: the model itself is a local operator
            return self._assemble(a, plan, lambda x, opts: self.session.run(None, {self._input: x}, opts)[0])
        tile_sess = self._tiling[0]
        stats = self._exact_stats(a, plan).astype(np.float32)
        return self._assemble(a, plan, lambda x, opts: tile_sess.run(None, {"image": x, "stats": stats}, opts)[0],
                              release_options(tile_sess))

    def _exact_stats(self, a: np.ndarray, plan: _Plan) -> np.ndarray:
        """The whole image's InstanceNorm statistics (1, S) float64, in streaming passes."""
        img = fit_within(Image.fromarray(a), self.stats_side, Image.BILINEAR)
        feed = {"image": _to_input(np.asarray(img)[None])}
        stats = self._tiling[1].run(None, feed, release_options(self._tiling[1]))[0].astype(np.float64)
        passes, change = 0, 0.0
        if img.size != (plan.w, plan.h):  # downscaled: an estimate, refined pass by pass
            limit = len(self._layout) if self.stats_passes is None else self.stats_passes
            while passes < limit:
                new = self._sums_pass(a, plan, stats)
                change, stats, passes = stats_change(stats, new, self._layout), new, passes + 1
                if change <= self.stats_tolerance:
                    break
        self.last_stats_passes, self.last_stats_change = passes, change
        return stats

    def _sums_pass(self, a: np.ndarray, plan: _Plan, stats: np.ndarray) -> np.ndarray:
        """One streaming pass: the statistics implied by ``stats`` (exact one layer deeper)."""
        sums = np.zeros(stats.shape[-1], np.float64)
        feed_stats = stats.astype(np.float32)
        sess = self._tiling[2]
        for i, (core, window) in enumerate(plan.boxes):
            feed = {"image": plan.window(a, window), "stats": feed_stats, "mask": plan.mask(core, window)}
            last = release_options(sess) if i == len(plan.boxes) - 1 else None  # memory back after the pass
            sums += sess.run(None, feed, last)[0][0]
        return _combine(stats, sums, self._layout, plan.height, plan.width)

    @staticmethod
    def _assemble(a: np.ndarray, plan: _Plan, run, release: ort.RunOptions | None = None) -> np.ndarray:
        """Each window through ``run(x, run_options)``; its core (cropped to the image) goes to
        the output. The last window runs with ``release`` (memory back once the image is done)."""
        out = np.empty((plan.h, plan.w, 3), np.uint8)
        for i, ((r0, r1, c0, c1), window) in enumerate(plan.boxes):
            y = run(plan.window(a, window), release if i == len(plan.boxes) - 1 else None)  # (1, 3, wh, ww)
            b, r = min(r1, plan.h), min(c1, plan.w)
            core = y[:, :, r0 - window[0] : b - window[0], c0 - window[2] : r - window[2]]
            out[r0:b, c0:r] = _to_uint8(core, b - r0, r - c0)[0]
        return out
