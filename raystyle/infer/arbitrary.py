"""Arbitrary styles (AdaIN, raystyle.methods.adain) through ONNX Runtime: a photo and style images in,
uint8 RGB out. No torch, no Ray: the CLI, Serve replicas and Ray Data actors run this.

An exported arbitrary style is two graphs of one registry version: ``encoder.onnx`` (image ->
relu4_1 features, sides multiples of 8) and ``decoder.onnx`` (features -> image). Between them,
AdaIN is a per-channel affine map (numpy): the content's features get the style's means and
standard deviations. A style image's statistics are computed once and kept in an LRU cache
keyed by the sha256 of its bytes (``cache_size`` entries, per Stylizer: per Serve replica,
per batch actor). Several style images blend by interpolating their statistics with weights.

``preserve_color`` follows Gatys et al. 2017 (raystyle.data.colour) where the style images are
at hand (``blend`` keeps them with the statistics it returns): ``luminance`` (the default of
True) runs the photo's luminance through the nets with each style image's luminance matched
to the photo's mean and std, and puts the result's luminance on the photo's chroma;
``histogram`` matches each style image's colour mean and covariance to the photo's first.
Both take the style images' statistics again for every photo (one more encoder run per style
image: what they see depends on the photo), never from the cache. Statistics given without
their images (``style_stats``, the module's ``blend``) get the feed-forward equivalent on the
output, as a generator style does; ``swap`` is the old swap of chroma after the fact.

Large images run in exact tiles, like the generators' (raystyle.infer.generator): cores on the
8-pixel grid plus a halo of the encoder's and decoder's reach (model.json ``arbitrary.halo``).
A first pass encodes each window and sums the cores' features into the whole image's channel
statistics; a second encodes again, applies AdaIN with those statistics and decodes. Memory is
bounded by one window; the cores form the whole image's output (the export checks it).
"""

from __future__ import annotations

import hashlib
import numbers
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from raystyle import registry
from raystyle.data import colour
from raystyle.data.images import ImageInput, decode, fit_within
from raystyle.infer.base import (
    StylizeError,
    check_options,
    colour_modes,
    make_session,
    release_options,
    run_grouped,
)
from raystyle.infer.kinds import StyleKind
from raystyle.infer.tiles import MULTIPLE as GENERATOR_MULTIPLE
from raystyle.infer.tiles import TilePlan, to_input

MULTIPLE = 8  # relu4_1 is at 1/8 resolution
EPS = 1e-5
Stats = tuple[np.ndarray, np.ndarray]  # per-channel mean and std, (C,) float64 each
assert MULTIPLE % GENERATOR_MULTIPLE == 0  # tiles on the 8 grid are on the generators' 4 grid


def normalise_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """``weights`` (default: equal) as non-negative floats summing to 1; StylizeError otherwise."""
    if n < 1:
        raise StylizeError("an arbitrary style needs at least one style image")
    if weights is None:
        return [1.0 / n] * n
    try:
        w = [float(x) for x in weights]
    except (TypeError, ValueError):
        raise StylizeError(f"style weights must be numbers, got {weights!r}") from None
    if len(w) != n:
        raise StylizeError(f"{len(w)} style weights for {n} style images")
    if any(not np.isfinite(x) or x < 0 for x in w) or not 0 < sum(w) < float("inf"):
        raise StylizeError(f"style weights must be >= 0 with a positive sum, got {','.join(f'{x:g}' for x in w)}")
    total = sum(w)
    return [x / total for x in w]


def parse_weights(text: str | None, flag: str = "--weights") -> list[float] | None:
    """``"0.7,0.3"`` -> [0.7, 0.3] (None: none given); their count and signs are checked by
    ``normalise_weights``. StylizeError (one line, naming ``flag``) for anything else."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise StylizeError(f"{flag} must be numbers separated by commas, got {text!r}") from None


def blend(stats: Sequence[Stats], weights: Sequence[float] | None = None) -> Stats:
    """Several styles' statistics interpolated by ``weights``: AdaIN is affine in them, so this
    equals blending the AdaIN outputs (Huang & Belongie's style interpolation)."""
    w = normalise_weights(weights, len(stats))
    mean = sum(wi * m for wi, (m, _) in zip(w, stats, strict=True))
    std = sum(wi * s for wi, (_, s) in zip(w, stats, strict=True))
    return np.asarray(mean, np.float64), np.asarray(std, np.float64)


class StyleStats(tuple):
    """A blend's (mean, std), as ``Stats`` (it unpacks the same), that also keeps the style
    images it came from (``sources``, any ImageInput) and their normalised ``weights``: a colour
    mode that matches the style images to each photo (Gatys et al. 2017) takes them again."""

    sources: tuple[ImageInput, ...]
    weights: tuple[float, ...]

    def __new__(cls, stats: Stats, sources: Sequence[ImageInput] = (), weights: Sequence[float] = ()) -> StyleStats:
        self = super().__new__(cls, stats)
        self.sources, self.weights = tuple(sources), tuple(weights)
        return self


def affine(content: Stats, style: Stats, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift), (C, 1, 1) float32 each: ``t = f * scale + shift`` is AdaIN with ``alpha``
    (t = alpha * AdaIN(f) + (1 - alpha) * f, both affine in f)."""
    (cm, cs), (sm, ss) = content, style
    scale = ss / cs
    shift = sm - cm * scale
    scale = alpha * scale + (1.0 - alpha)
    shift = alpha * shift
    return scale.astype(np.float32)[:, None, None], shift.astype(np.float32)[:, None, None]


def feature_stats(f: np.ndarray, eps: float = EPS) -> Stats:
    """(C, h, w) features -> per-channel mean and population std (with ``eps`` in the variance)."""
    mean = f.mean(axis=(1, 2), dtype=np.float64)
    var = f.var(axis=(1, 2), dtype=np.float64)
    return mean, np.sqrt(var + eps)


def image_key(image: ImageInput) -> str:
    """The cache key of a style image: sha256 of its file's bytes, or of its pixels."""
    if isinstance(image, str | Path):
        h = hashlib.sha256()
        with open(image, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    if isinstance(image, bytes | bytearray):
        return hashlib.sha256(image).hexdigest()
    if isinstance(image, Image.Image):  # its RGB pixels (a palette image's indices are not enough)
        image = image.convert("RGB")
    a = np.ascontiguousarray(np.asarray(image))
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


def style_array(image: ImageInput, side: int, max_pixels: int | None = None) -> np.ndarray:
    """A style image as the encoder sees it: shorter side ``side`` px, the longer at most 4x
    that (centre crop), both cropped to multiples of 8. ImageError (one line) if unreadable.
    The crop is taken in the source's pixels and only it is resampled, so a long, thin
    painting never becomes a huge intermediate image."""
    img = decode(image, name="style image") if max_pixels is None else decode(image, max_pixels, "style image")
    w, h = img.size
    scale = side / min(w, h)
    cw = max(MULTIPLE, min(round(w * scale), 4 * side) // MULTIPLE * MULTIPLE)
    ch = max(MULTIPLE, min(round(h * scale), 4 * side) // MULTIPLE * MULTIPLE)
    sw, sh = min(w, cw / scale), min(h, ch / scale)  # the crop, in source pixels
    left, top = (w - sw) / 2, (h - sh) / 2
    resample = Image.BICUBIC if scale > 1 else Image.LANCZOS
    return np.asarray(img.resize((cw, ch), resample, box=(left, top, left + sw, top + sh)))


class ArbitraryStylizer:
    """Stylize images with an arbitrary (AdaIN) registry style and style images given per call.

    ``style`` is a registry name (resolved to ONE version: both graphs from the same folder) or
    a ``registry.Style``. ``style_size``: a style image's shorter side when its statistics are
    taken (default: model.json's ``style_size``, the training's load size). ``cache_size``: style statistics kept.
    """

    kind = "arbitrary"

    def __init__(self, style: str | registry.Style, *, models_dir: str | Path | None = None,
                 precision: str = "fp32", provider: str = "auto", threads: int | None = None,
                 tile: int = 1024, spin: bool = True, cache_size: int = 32, style_size: int | None = None):
        if tile < 64 or tile % MULTIPLE:
            raise StylizeError(f"tile must be a multiple of {MULTIPLE} and at least 64 (got {tile})")
        if cache_size < 0:
            raise StylizeError(f"cache_size must be >= 0 (got {cache_size})")
        self.provider, self.threads, self.precision, self.spin = provider, threads, precision, spin
        self.tile, self.cache_size = tile, cache_size
        for attempt in range(5):  # a version pruned between resolving and opening: resolve again
            st = style if isinstance(style, registry.Style) else registry.get_style(style, models_dir)
            try:
                self._open(st, precision)
                break
            except Exception:
                if isinstance(style, registry.Style) or st.version_dir.is_dir() or attempt == 4:
                    raise
        arb = self.style.meta["arbitrary"]
        self.halo, self.eps = int(arb["halo"]), float(arb.get("eps", EPS))
        self.style_size = int(style_size or arb["style_size"])
        if self.style_size < 2 * MULTIPLE:
            raise StylizeError(f"style_size must be at least {2 * MULTIPLE} px (got {self.style_size})")
        self._cache: OrderedDict[str, Stats] = OrderedDict()
        self.cache_hits = self.cache_misses = 0
        self.last_infer_ms = 0.0

    def _open(self, st: registry.Style, precision: str) -> None:
        if st.meta.get("kind") != self.kind:
            raise StylizeError(f"style {st.name!r} is not an arbitrary style (it needs no style image)")
        entry = st.meta.get("precisions", {}).get(precision)
        if entry is None:
            raise registry.RegistryError(f"style {st.name!r} has no {precision} model "
                                         f"(exported: {', '.join(st.precisions)})")
        self.encoder = make_session(st.file(precision, "encoder"), self.provider, self.threads, spin=self.spin)
        self.decoder = make_session(st.file(precision, "decoder"), self.provider, self.threads, spin=self.spin)
        self.style, self.name = st, st.name

    # -- style statistics ---------------------------------------------------------------------
    def style_stats(self, image: ImageInput, key: str | None = None, max_pixels: int | None = None) -> Stats:
        """One style image's relu4_1 channel statistics, from the cache when its sha256 is there."""
        key = key or image_key(image)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return found
        self.cache_misses += 1
        a = style_array(image, self.style_size, max_pixels)
        f = self.encoder.run(None, {"image": to_input(a[None], MULTIPLE)})[0][0]
        stats = feature_stats(f, self.eps)
        if self.cache_size:
            self._cache[key] = stats
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return stats

    def blend(self, style_images: Sequence[ImageInput], weights: Sequence[float] | None = None,
              keys: Sequence[str] | None = None) -> StyleStats:
        """The statistics of ``style_images`` blended by ``weights`` (default equal), with the
        images kept for the colour modes (``StyleStats``); ``keys``: their cache keys when known
        (the sha256 of each upload), else computed."""
        if isinstance(style_images, str | Path | bytes | bytearray | Image.Image | np.ndarray):
            style_images = [style_images]
        w = normalise_weights(weights, len(style_images))
        keys = list(keys) if keys is not None else [None] * len(style_images)
        if len(keys) != len(style_images):
            raise StylizeError(f"{len(keys)} keys for {len(style_images)} style images")
        stats = [self.style_stats(s, key=k) for s, k in zip(style_images, keys, strict=True)]
        return StyleStats(blend(stats, w), style_images, w)

    def matched_stats(self, style: StyleStats, photo: np.ndarray, mode: str) -> Stats:
        """``style``'s images prepared for ``photo`` by colour ``mode`` (raystyle.data.colour
        ``style_for``: luminance matched, or colours matched), their statistics blended."""
        stats = []
        for source in style.sources:
            a = colour.style_for(style_array(source, self.style_size), photo, mode)
            f = self.encoder.run(None, {"image": to_input(a[None], MULTIPLE)})[0][0]
            stats.append(feature_stats(f, self.eps))
        return blend(stats, style.weights)

    # -- public API -----------------------------------------------------------------------------
    def stylize(self, image: ImageInput, *, style_images: Sequence[ImageInput] | ImageInput,
                weights: Sequence[float] | None = None, alpha: float = 1.0, strength: float = 1.0,
                preserve_color: bool | str | None = False, max_side: int | None = None,
                tile: int | None = None) -> np.ndarray:
        """One photo in the style of ``style_images`` (blended by ``weights``) -> (H, W, 3) uint8."""
        stats = self.blend(style_images, weights)
        return self.stylize_batch([image], styles=[stats], alpha=alpha, strength=strength,
                                  preserve_color=preserve_color, max_side=max_side, tile=tile)[0]

    __call__ = stylize

    def stylize_batch(self, images: list[ImageInput], *, styles: Sequence[Stats],
                      alpha: float | Sequence[float] = 1.0, strength: float = 1.0,
                      preserve_color: bool | str | None | Sequence[bool | str | None] = False,
                      max_side: int | None = None, tile: int | None = None) -> list[np.ndarray]:
        """Several photos, each with its own style statistics (``styles[i]``, from ``blend`` or
        ``style_stats``) and ``alpha``; equal shapes share one encoder and one decoder call.
        ``preserve_color``: one value, or one per photo (see the module docstring)."""
        alphas = [float(alpha)] * len(images) if isinstance(alpha, numbers.Real) else [float(a) for a in alpha]
        if len(styles) != len(images) or len(alphas) != len(images):
            raise StylizeError(f"{len(images)} images need as many styles and alphas")
        if any(not 0.0 <= a <= 1.0 for a in alphas):
            raise StylizeError(f"alpha must be between 0 and 1, got {alphas}")
        tile = check_options(strength, max_side, self.tile if tile is None else tile, MULTIPLE)
        modes = colour_modes(preserve_color, len(images))
        arrays = [np.asarray(fit_within(decode(img, max_side=max_side), max_side)) for img in images]
        # Gatys et al. 2017 where the style images are at hand: a prepared photo, matched statistics
        inputs, styles, paper = list(arrays), list(styles), [False] * len(images)
        if strength > 0.0:
            for i, (a, mode) in enumerate(zip(arrays, modes, strict=True)):
                if mode in ("luminance", "histogram") and getattr(styles[i], "sources", None):
                    styles[i] = self.matched_stats(styles[i], a, mode)
                    inputs[i], paper[i] = colour.content_for(a, mode), True

        def finish(i: int, stylized: np.ndarray, original: np.ndarray) -> np.ndarray:
            if paper[i]:
                return colour.after_transfer(stylized, original, modes[i])
            return colour.after_feed_forward(stylized, original, modes[i])

        def whole(idx: list[int], batch: np.ndarray) -> np.ndarray:
            f = self.encoder.run(None, {"image": to_input(batch, MULTIPLE)})[0]
            t = np.empty_like(f)
            for j, i in enumerate(idx):
                scale, shift = affine(feature_stats(f[j], self.eps), styles[i], alphas[i])
                t[j] = f[j] * scale + shift
            return self.decoder.run(None, {"features": t})[0]

        def tiled(i: int, a: np.ndarray) -> np.ndarray:
            return self._tiled(a, styles[i], alphas[i], tile)

        results, self.last_infer_ms = run_grouped(inputs, tile, tiled, whole, strength, modes,
                                                  originals=arrays, finish=finish)
        return results

    # -- exact tiles ------------------------------------------------------------------------------
    def _tiled(self, a: np.ndarray, style: Stats, alpha: float, tile: int) -> np.ndarray:
        plan = TilePlan(a.shape, tile, self.halo, MULTIPLE)
        content = self.content_stats(a, plan)
        scale, shift = affine(content, style, alpha)

        def run(x: np.ndarray, opts) -> np.ndarray:
            f = self.encoder.run(None, {"image": x})[0]
            return self.decoder.run(None, {"features": f * scale + shift}, opts)[0]

        return plan.assemble(a, run, release_options(self.decoder))

    def content_stats(self, a: np.ndarray, plan: TilePlan) -> Stats:
        """The whole (padded) image's relu4_1 channel statistics, summed over the tiles' cores."""
        s1 = s2 = None
        for i, ((r0, r1, c0, c1), (t0, _, l0, _)) in enumerate(plan.boxes):
            last = release_options(self.encoder) if i == len(plan.boxes) - 1 else None
            f = self.encoder.run(None, {"image": plan.window(a, plan.boxes[i][1])}, last)[0][0]
            core = f[:, (r0 - t0) // MULTIPLE:(r1 - t0) // MULTIPLE, (c0 - l0) // MULTIPLE:(c1 - l0) // MULTIPLE]
            core = core.astype(np.float64)
            s1 = core.sum(axis=(1, 2)) + (0 if s1 is None else s1)
            s2 = (core * core).sum(axis=(1, 2)) + (0 if s2 is None else s2)
        n = (plan.height // MULTIPLE) * (plan.width // MULTIPLE)
        mean = s1 / n
        return mean, np.sqrt(np.maximum(s2 / n - mean * mean, 0.0) + self.eps)


def _describe(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"style_size": (meta.get("arbitrary") or {}).get("style_size")}


KIND = StyleKind(name="arbitrary", stylizer=ArbitraryStylizer, style_images=True, multiple=MULTIPLE,
                 graph="encoder", describe=_describe)
