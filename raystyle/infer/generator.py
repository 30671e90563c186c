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
  keeps the input's colours (raystyle.data.colour: True or "luminance", the stylized
  luminance matched to the input's mean and spread on the input's chroma; "histogram";
  "swap", the old stylized-luminance, original-chroma swap);
- batched calls run equal-shaped images in one ONNX Runtime call.

ONNX Runtime session options: graph optimisation ORT_ENABLE_ALL, ``intra_op_num_threads``
= the physical cores (or ``threads``), sequential execution, one inter-op thread.
Execution providers: ``auto`` uses CUDA when onnxruntime-gpu can load it, else the CPU;
``cuda`` and ``tensorrt`` fail loudly (ProviderError) when they cannot load instead of
silently running on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from raystyle import registry
from raystyle.data.images import ImageInput, decode, fit_within
from raystyle.infer.base import (
    StylizeError,
    check_options,
    make_session,
    release_options,
    run_grouped,
)
from raystyle.infer.kinds import StyleKind
from raystyle.infer.tiles import MULTIPLE, TilePlan, combine, stats_change, to_input


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

    kind = "generator"

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
        self.layout: list[tuple[int, int]] = []
        self.tiling_sessions: tuple | None = None  # (tile, stats, sums)
        self._legacy_tiling = False
        self.style: registry.Style | None = None
        if model_path is not None:
            path = Path(model_path)
            self.name = path.stem
            self.session = make_session(path, provider, threads, spin=spin)
        else:
            self._open_style(style, models_dir, precision)
        self.input_name = self.session.get_inputs()[0].name
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
        if st.kind != self.kind:
            raise StylizeError(f"style {st.name!r} is an {st.kind} style: it needs a style image "
                               "(raystyle.infer.arbitrary.ArbitraryStylizer; --style-image on the CLI)")
        path = st.file(precision)
        entry = st.meta["precisions"][precision]
        tiling = st.meta.get("tiling")
        self.session = make_session(path, self.provider, self.threads, spin=self.spin)
        if tiling is not None:
            self.halo = int(tiling["halo"])
            self.layout = [(int(c), int(s)) for c, s in tiling.get("norms", [])]
        if "tile" in entry and "sums" in entry and tiling is not None:
            self.tiling_sessions = tuple(make_session(st.file(precision, k), self.provider, self.threads,
                                              low_memory=True, spin=self.spin) for k in ("tile", "stats", "sums"))
        elif "tile" in entry:
            self._legacy_tiling = True  # exported before exact tiling: no sums graph / halo
        self.style, self.name = st, st.name

    # -- public API -----------------------------------------------------------------------
    def stylize(self, image: ImageInput, *, strength: float = 1.0, preserve_color: bool | str | None = False,
                max_side: int | None = None, tile: int | None = None) -> np.ndarray:
        """One image (path, bytes, PIL image or uint8 array) -> (H, W, 3) uint8."""
        return self.stylize_batch([image], strength=strength, preserve_color=preserve_color,
                                  max_side=max_side, tile=tile)[0]

    __call__ = stylize

    def stylize_batch(self, images: list[ImageInput], *, strength: float = 1.0,
                      preserve_color: bool | str | None = False, max_side: int | None = None,
                      tile: int | None = None) -> list[np.ndarray]:
        """Several images; equal shapes share one ONNX Runtime call. Order is kept."""
        tile = check_options(strength, max_side, self.tile if tile is None else tile)
        arrays = [self._prepare(img, max_side) for img in images]

        def whole(idx: list[int], batch: np.ndarray) -> np.ndarray:
            return self.session.run(None, {self.input_name: to_input(batch)})[0]

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
        plan = TilePlan(a.shape, tile, self.halo)
        if self.tiling_sessions is None:  # no InstanceNorm: the model itself is a local operator
            return plan.assemble(a, lambda x, opts: self.session.run(None, {self.input_name: x}, opts)[0])
        tile_sess = self.tiling_sessions[0]
        stats = self._exact_stats(a, plan).astype(np.float32)
        return plan.assemble(a, lambda x, opts: tile_sess.run(None, {"image": x, "stats": stats}, opts)[0],
                              release_options(tile_sess))

    def _exact_stats(self, a: np.ndarray, plan: TilePlan) -> np.ndarray:
        """The whole image's InstanceNorm statistics (1, S) float64, in streaming passes."""
        img = fit_within(Image.fromarray(a), self.stats_side, Image.BILINEAR)
        feed = {"image": to_input(np.asarray(img)[None])}
        stats = self.tiling_sessions[1].run(None, feed, release_options(self.tiling_sessions[1]))[0].astype(np.float64)
        passes, change = 0, 0.0
        if img.size != (plan.w, plan.h):  # downscaled: an estimate, refined pass by pass
            limit = len(self.layout) if self.stats_passes is None else self.stats_passes
            while passes < limit:
                new = self.sums_pass(a, plan, stats)
                change, stats, passes = stats_change(stats, new, self.layout), new, passes + 1
                if change <= self.stats_tolerance:
                    break
        self.last_stats_passes, self.last_stats_change = passes, change
        return stats

    def sums_pass(self, a: np.ndarray, plan: TilePlan, stats: np.ndarray) -> np.ndarray:
        """One streaming pass: the statistics implied by ``stats`` (exact one layer deeper)."""
        sums = np.zeros(stats.shape[-1], np.float64)
        feed_stats = stats.astype(np.float32)
        sess = self.tiling_sessions[2]
        for i, (core, window) in enumerate(plan.boxes):
            feed = {"image": plan.window(a, window), "stats": feed_stats, "mask": plan.mask(core, window)}
            last = release_options(sess) if i == len(plan.boxes) - 1 else None  # memory back after the pass
            sums += sess.run(None, feed, last)[0][0]
        return combine(stats, sums, self.layout, plan.height, plan.width)


KIND = StyleKind(name="generator", stylizer=Stylizer, style_images=False, multiple=MULTIPLE, graph="model")
