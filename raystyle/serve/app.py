"""[ray] Ray Serve: one autoscaled deployment per registry style behind one FastAPI ingress.

    GET  /healthz              {"status": "ok", "styles": [...]}
    GET  /styles               registry metadata of every served style
    POST /styles/{name}        raw image bytes or multipart field ``image``;
                               query: strength, preserve_color, format, max_side
                               (preserve_color: false, true = luminance, luminance,
                               histogram or swap; raystyle.data.colour)
                               -> image bytes; headers X-Raystyle-Style, X-Raystyle-Inference-Ms
                               An arbitrary (AdaIN) style also needs one or more multipart
                               fields ``style_image`` (several blend; query ``weights=0.7,0.3``,
                               default equal) and takes ``alpha`` (0..1, default 1); header
                               X-Raystyle-Style-Cache: hit|miss (its statistics were cached)

``GET /styles`` gives each style's ``kind``: "generator" (one image in, one out) or
"arbitrary" (with its ``style_size``). A generator style refuses a ``style_image`` with 422
(it takes none) and ignores ``alpha`` and ``weights``; an arbitrary style without one is 422.

Every failure is JSON ``{"error": ..., "detail": ..., "request_id": ...}`` (the id is also
the ``X-Request-ID`` response header and is in the replica's log line): 400 bad image,
404 unknown style, 408 the body came too slowly, 413 too large (body or pixels; the body
limit is checked while the replica reads it), 415 unsupported format, 422 bad parameter,
500 inference failed (not retryable), 503 with ``Retry-After`` (retryable): "overloaded"
when the ingress already holds ``max_pending`` requests, its decoded pixels in flight would
pass ``max_pixels_in_flight`` or a style deployment's queue is full, "style unavailable"
when its replica died or the deployment is being replaced.

Load is shed at every hop, never queued without bound: the ingress answers 503 JSON above
``max_pending`` requests per replica (its ``max_ongoing_requests`` is kept above that so the
refusal itself always gets in, and ``max_queued_requests`` bounds the proxy's queue in front
of it); each style deployment has ``max_ongoing_requests`` and ``max_queued_requests``.
A request counts against ``max_pending`` only once its body is in, and a body has a deadline
(``body_timeout_s`` in all, and after ``body_grace_s`` an average of at least
``body_min_bytes_per_s``; slower is 408), so clients that trickle their bodies cannot take
the places of complete requests. The ingress holds at most ``max_pixels_in_flight`` decoded
pixels (counted from the images' headers before they are decoded) and answers 503 above it.

The ingress decodes and encodes in worker threads (never on its event loop, so /healthz
answers while big uploads are decoded) and decodes JPEGs at a reduced DCT scale when
``max_side`` asks for less than the full size; it applies ``strength`` and a generator
style's ``preserve_color``. The style deployments run the network (and an arbitrary style's
``preserve_color``, whose Gatys et al. modes prepare the style images for the photo first),
with ``@serve.batch`` dynamic batching (size and wait set through ``user_config``) and one
ONNX Runtime session per replica whose threads match the replica's CPUs and do not spin
(spinning threads steal the shared cores from the ingress and the other replicas).
Requests of different image sizes may share a batch window; equal shapes share one ORT
call. Style images of an arbitrary style are decoded (same ``max_pixels`` limit as the
photo), hashed (sha256 of the uploaded bytes) and shrunk to the style's ``style_size`` by
the ingress; the replica takes their statistics from its ArbitraryStylizer's LRU cache under
that hash, or computes them once. The application is built by ``app_builder(args)`` from
YAML (serve_configs/*.yaml).
"""


import asyncio
import dataclasses
import hashlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import exceptions as ray_errors
from ray import serve
from ray.serve import exceptions as serve_errors
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from raystyle import registry
from raystyle.config import ConfigError, at_least_zero, from_mapping, positive
from raystyle.data.colour import MODES as COLOUR_MODES
from raystyle.data.colour import ColourError, after_feed_forward, colour_mode
from raystyle.data.images import (
    ENCODE_FORMATS,
    MEDIA_TYPES,
    CorruptImage,
    ImageError,
    ImageTooLarge,
    UnsupportedFormat,
    decode,
    encode,
    fit_within,
    probe,
)
from raystyle.errors import RaystyleError
from raystyle.infer.arbitrary import MULTIPLE as ARBITRARY_MULTIPLE
from raystyle.infer.arbitrary import normalise_weights, parse_weights, style_array
from raystyle.infer.base import StylizeError, blend_strength
from raystyle.infer.kinds import kind_of, open_stylizer
from raystyle.infer.tiles import MULTIPLE

log = logging.getLogger("ray.serve")
MAX_SIDE_LIMIT = 8192  # the largest max_side a client may ask for
RETRY_AFTER_S = 1
# Failures of a style replica that a retry can fix: it died, is being replaced, or the
# request was cancelled under it (ReplicaUnavailableError exists from Ray 2.5x on).
UNAVAILABLE = tuple(getattr(serve_errors, n) for n in (
    "DeploymentUnavailableError", "ReplicaUnavailableError", "RequestCancelledError")
    if hasattr(serve_errors, n)) + (ray_errors.RayActorError,)
DEFAULT_INGRESS: dict[str, Any] = {
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16,
                           "upscale_delay_s": 5, "downscale_delay_s": 30},
    "max_ongoing_requests": 64,  # above max_pending: the 503 of a full ingress always gets in
    "max_queued_requests": 64,  # the proxy's queue in front of the ingress is bounded too
}
DEFAULT_DEPLOYMENT: dict[str, Any] = {
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4,
                           "upscale_delay_s": 5, "downscale_delay_s": 30},
    "max_ongoing_requests": 8,
    "max_queued_requests": 32,
    "ray_actor_options": {"num_cpus": 1},
    "user_config": {"max_batch_size": 4, "batch_wait_timeout_s": 0.01},
}


@dataclass(frozen=True)
class AppArgs:
    """Arguments of ``app_builder`` (the ``args:`` block of a serve config), read like the
    training config (raystyle.config.from_mapping): an unknown key or a wrong type is one
    ConfigError naming ``args.KEY``."""

    models_dir: str | None = None  # default: RAYSTYLE_MODELS or ~/raystyle/models
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    provider: Literal["auto", "cpu", "cuda", "tensorrt"] = "auto"
    styles: list[str] | None = None  # default: every style in the registry
    max_body_mb: float = 20.0
    max_pixels: int = 40_000_000  # per request; ImageTooLarge -> 413
    max_style_images: int = 8  # style_image parts per request of an arbitrary style; more -> 422
    max_pending: int = 32  # stylize requests one ingress replica holds; more -> 503
    # (counted once the body is in: a body still arriving takes no place of a complete request)
    body_timeout_s: float = 60.0  # the whole body within this, else 408
    body_grace_s: float = 5.0  # seconds a body may take before the floor rate applies
    body_min_bytes_per_s: int = 16384  # then at least this average, else 408; 0: none
    max_pixels_in_flight: int = 120_000_000  # decoded pixels one ingress replica holds; more -> 503
    ort_spinning: bool = False  # ORT's idle threads spin (ORT's default); off for shared cores
    deployment: dict[str, Any] = dataclasses.field(default_factory=dict)  # merged over DEFAULT_DEPLOYMENT
    per_style: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # style -> overrides
    ingress: dict[str, Any] = dataclasses.field(default_factory=dict)  # merged over DEFAULT_INGRESS

    def __post_init__(self) -> None:
        positive(self, "args", "max_body_mb", "max_pixels", "max_style_images", "max_pending",
                 "body_timeout_s", "max_pixels_in_flight")
        at_least_zero(self, "args", "body_grace_s", "body_min_bytes_per_s")
        if self.max_pixels_in_flight < self.max_pixels:
            raise ConfigError(f"max_pixels_in_flight ({self.max_pixels_in_flight}) must be at least "
                              f"max_pixels ({self.max_pixels}): one image of the largest size must fit")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "AppArgs":
        return from_mapping(cls, data or {}, "args")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# What the ingress sends a replica of an arbitrary style for one request: the photo, its
# style images as (sha256 of the uploaded bytes, decoded pixels), their normalised weights,
# alpha and the colour mode (None: off; the replica applies it: Gatys et al.'s modes prepare
# the style images for the photo before the nets run).
StyleParts = list[tuple[str, np.ndarray]]
ArbitraryRequest = tuple[np.ndarray, StyleParts, list[float], float, str | None]


@serve.deployment
class StyleModel:
    """One style: its stylizer (``open_stylizer``: a Stylizer, or an ArbitraryStylizer with its
    style-statistics cache) and a batched inference method."""

    def __init__(self, style: str, models_dir: str | None, precision: str, provider: str,
                 spin: bool = False):
        import ray

        # One ORT session per replica, its threads matched to the replica's CPUs.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        threads = max(1, math.floor(cpus))
        self.stylizer = open_stylizer(style, models_dir=models_dir, precision=precision,
                                      provider=provider, threads=threads, spin=spin)
        self.style = style
        self.kind = kind_of(self.stylizer.style)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        for method in (self.infer, self.infer_arbitrary):
            method.set_max_batch_size(int(user_config.get("max_batch_size", 4)))
            method.set_batch_wait_timeout_s(float(user_config.get("batch_wait_timeout_s", 0.01)))

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def infer(self, arrays: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        # ORT releases the GIL: run it in a thread so the replica keeps accepting requests
        # (and forming the next batch) while this one computes.
        start = time.perf_counter()
        outs = await asyncio.to_thread(self.stylizer.stylize_batch, arrays)
        ms = (time.perf_counter() - start) * 1000
        return [(o, ms) for o in outs]

    def _arbitrary_batch(self, reqs: list[ArbitraryRequest]) -> tuple[list[np.ndarray], list[bool]]:
        """Style statistics through the replica's LRU cache (keyed by the uploads' sha256),
        blended per request, then one ``stylize_batch``; and per request whether every one of
        its style images was a cache hit. One batch at a time (``serve.batch`` runs one per
        method unless told otherwise), so the cache and its counters see one thread."""
        st = self.stylizer
        styles, hits = [], []
        for _, parts, weights, _, _ in reqs:
            before = st.cache_hits
            styles.append(st.blend([pixels for _, pixels in parts], weights, keys=[key for key, _ in parts]))
            hits.append(st.cache_hits - before == len(parts))
        outs = st.stylize_batch([r[0] for r in reqs], styles=styles, alpha=[r[3] for r in reqs],
                                preserve_color=[r[4] for r in reqs])
        return outs, hits

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def infer_arbitrary(self, reqs: list[ArbitraryRequest]) -> list[tuple[np.ndarray, float, bool]]:
        start = time.perf_counter()
        outs, hits = await asyncio.to_thread(self._arbitrary_batch, reqs)
        ms = (time.perf_counter() - start) * 1000
        return [(o, ms, h) for o, h in zip(outs, hits, strict=True)]

    async def __call__(self, array: np.ndarray, styles: StyleParts | None = None,
                       weights: list[float] | None = None, alpha: float = 1.0,
                       preserve_color: str | None = None):
        """Generator: (output, ms). Arbitrary: (output, ms, every style image a cache hit), its
        colours kept by ``preserve_color`` (a generator's are kept by the ingress)."""
        if self.kind.style_images:
            return await self.infer_arbitrary((array, styles or [], weights or [], alpha, preserve_color))
        return await self.infer(array)


def request_id(request: Request) -> str | None:
    """Serve's proxy gives every request an ``x-request-id`` (and returns it as X-Request-ID)."""
    return request.headers.get("x-request-id")


def _error(status: int, error: str, detail: Any, request: Request | None = None) -> JSONResponse:
    rid = request_id(request) if request is not None else None
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": error, "detail": detail, "request_id": rid},
                        status_code=status, headers=headers)


def _figure(v: Any) -> bool:
    """A quality figure (a number, a flag, or a dict of numbers), never a name or a path."""
    if isinstance(v, dict):
        return bool(v) and all(isinstance(x, bool | int | float) for x in v.values())
    return isinstance(v, bool | int | float)


def public_meta(meta: dict[str, Any], args: AppArgs) -> dict[str, Any]:
    """What a client needs of a style's model.json: no server paths (checkpoint, run, data)."""
    precisions = {}
    for name, entry in (meta.get("precisions") or {}).items():
        precisions[name] = {k: v for k, v in entry.items() if _figure(v)}
    quality = meta.get("quality")
    kind = kind_of(meta)
    return {
        "style": meta.get("style"), "version": meta.get("version"), "kind": kind.name,
        **kind.describe(meta),
        "direction": meta.get("direction"), "source_domain": meta.get("source_domain"),
        "target_domain": meta.get("target_domain"), "exported_at": meta.get("exported_at"),
        "precisions": precisions, "served_precision": args.precision,
        "tiled": meta.get("tiling") is not None,
        "sizes": {"multiple_of": (meta.get("input") or {}).get("multiple_of", MULTIPLE),
                  "max_pixels": args.max_pixels, "max_body_bytes": int(args.max_body_mb * 2**20),
                  "max_side_limit": MAX_SIDE_LIMIT, "body_timeout_s": args.body_timeout_s,
                  "body_min_bytes_per_s": args.body_min_bytes_per_s},
        **({"quality": quality} if isinstance(quality, dict) else {}),
    }


def pixel_cost(parts: list[bytes], max_pixels: int) -> int:
    """The pixels that decoding these images will hold, read from their headers (the stored
    size, before any reduced JPEG scale). An image over ``max_pixels``, or not an image,
    counts 0: ``decode`` refuses it before decoding. Runs in a worker thread."""
    total = 0
    for data in parts:
        size = probe(io.BytesIO(data))  # PIL opens a file object as it opens a path
        if size is not None and size[0] * size[1] <= max_pixels:
            total += size[0] * size[1]
    return total


def _prepare(data: bytes, max_pixels: int, max_side: int | None) -> np.ndarray:
    """Decode (at a reduced JPEG scale when max_side allows) and fit: runs in a worker thread."""
    img = decode(data, max_pixels=max_pixels, name="upload", max_side=max_side)
    return np.asarray(fit_within(img, max_side))  # same resampling as the Stylizer


def _finish(out: np.ndarray, original: np.ndarray, strength: float, preserve_color: str | None,
            fmt: str) -> bytes:
    """Colour (a generator style's: ``after_feed_forward``; None: none or done by the replica),
    strength and encoding: runs in a worker thread."""
    if strength > 0.0:
        out = after_feed_forward(out, original, preserve_color)
        out = blend_strength(out, original, strength)
    return encode(out, fmt)


def prepare_styles(parts: list[bytes], max_pixels: int, style_size: int | None) -> StyleParts:
    """Each style image: (sha256 of its bytes, pixels). Decoded with the photo's pixel limit,
    then shrunk as the replica's encoder will see it (``style_array``: shorter side
    ``style_size``, both sides multiples of 8) so that little crosses to the replica; that is
    exact, since ``style_array`` leaves such an array unchanged. Runs in a worker thread."""
    out = []
    for i, data in enumerate(parts):
        name = "style image" if len(parts) == 1 else f"style image {i + 1}"
        key = hashlib.sha256(data).hexdigest()
        img = decode(data, max_pixels=max_pixels, name=name)
        if style_size and style_size % ARBITRARY_MULTIPLE == 0:
            out.append((key, style_array(img, style_size, max_pixels)))
        else:
            out.append((key, np.asarray(img)))
    return out


def _weights(text: str | None, n: int) -> list[float]:
    """``weights=0.7,0.3`` for ``n`` style images, normalised; StylizeError when bad."""
    return normalise_weights(parse_weights(text, "weights"), n)


def _invalid(request: Request, where: str, msg: str) -> JSONResponse:
    """422 in the shape of FastAPI's own validation errors."""
    loc = ["query", where] if where != "style_image" else ["body", where]
    return _error(422, "invalid parameter", [{"loc": loc, "msg": msg}], request)


class BodyTooLarge(RaystyleError):
    """The body passed ``max_body_mb``; its one argument is the byte count seen (413)."""


class BodyTooSlow(RaystyleError):
    """The body did not arrive in time; its one argument says which limit it broke (408)."""


async def _read_limited(request: Request, limit: int, *, timeout_s: float, grace_s: float,
                        min_rate: int) -> bytes:
    """The body, refused as soon as it passes ``limit`` (Content-Length is checked first),
    or as soon as it is late: the whole of it must be in within ``timeout_s``, and after
    ``grace_s`` it must have averaged ``min_rate`` bytes/s (each byte buys 1/min_rate s more,
    as Apache's mod_reqtimeout counts), so a client that trickles bytes is cut at once."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(int(declared))
    of = f" of {declared}" if declared is not None and declared.isdigit() else ""
    loop = asyncio.get_running_loop()
    start = loop.time()
    hard = start + timeout_s
    chunks, size = [], 0
    stream = request.stream()
    try:
        while True:
            deadline = min(hard, start + grace_s + size / min_rate) if min_rate else hard
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                break
            except TimeoutError:
                took = loop.time() - start
                if deadline >= hard:
                    raise BodyTooSlow(f"the body was not in within {timeout_s:g} s (body_timeout_s): "
                                      f"{size}{of} bytes arrived") from None
                raise BodyTooSlow(f"the body came too slowly: {size}{of} bytes in {took:.1f} s; after "
                                  f"{grace_s:g} s (body_grace_s) it must average at least {min_rate} "
                                  "bytes/s (body_min_bytes_per_s)") from None
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(size)
            chunks.append(chunk)
    finally:
        await stream.aclose()
    return b"".join(chunks)


async def _image_bytes(request: Request, body: bytes) -> tuple[bytes, list[bytes]]:
    """(the photo, the style images): a raw body is the photo alone; multipart has a file
    field ``image`` and any number of file fields ``style_image``."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        return body, []

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form()
    except (HTTPException, MultiPartException) as exc:  # not a 500: the client sent it
        raise CorruptImage(f"malformed multipart body: {getattr(exc, 'detail', None) or exc}") from None
    try:
        field = form.get("image")
        if field is None or isinstance(field, str):
            raise CorruptImage("multipart body has no file field 'image'")
        styles = []
        for part in form.getlist("style_image"):
            if isinstance(part, str):
                raise CorruptImage("multipart field 'style_image' is not a file")
            styles.append(await part.read())
        return await field.read(), styles
    finally:
        await form.close()


api = FastAPI(title="raystyle", version="1", description=(
    "Stylize images with the registry's styles served by Ray Serve. POST raw image bytes or a "
    "multipart field `image` to /styles/{name}. An arbitrary style (`kind` in /styles) also "
    "needs one or more multipart fields `style_image`; several are blended by `weights`."))


@api.exception_handler(RequestValidationError)
async def _bad_parameter(request: Request, exc: RequestValidationError):
    detail = [{"loc": list(e.get("loc", [])), "msg": e.get("msg")} for e in exc.errors()]
    return _error(422, "invalid parameter", detail, request)


@api.exception_handler(404)
async def _not_found(request: Request, exc: Exception):
    return _error(404, "not found", f"{request.method} {request.url.path}", request)


@api.exception_handler(405)
async def _not_allowed(request: Request, exc: Exception):
    return _error(405, "method not allowed", f"{request.method} {request.url.path}", request)


@api.exception_handler(Exception)
async def _internal(request: Request, exc: Exception):
    log.error("request %s failed: %s: %s", request_id(request), type(exc).__name__, exc, exc_info=exc)
    return _error(500, "internal error", type(exc).__name__, request)


@serve.deployment(**DEFAULT_INGRESS)
@serve.ingress(api)
class Gateway:
    """The HTTP ingress: admission, validation, body limits, decode/encode (in threads),
    routing to the style deployments."""

    def __init__(self, handles: dict[str, DeploymentHandle], meta: dict[str, dict], args: dict):
        self.handles, self.args = handles, AppArgs.from_dict(args)
        self.meta = {name: public_meta(m, self.args) for name, m in meta.items()}
        self.limit = int(self.args.max_body_mb * 2**20)
        # one event loop: no lock needed for either count
        self.pending = 0  # stylize requests in this replica whose body is in
        self.pixels = 0  # decoded pixels these requests hold (or are about to)

    @api.get("/healthz", summary="liveness: the ingress answers and lists its styles")
    async def healthz(self) -> dict:
        return {"status": "ok", "styles": sorted(self.handles)}

    @api.get("/styles", summary="every served style: direction, precisions, sizes, quality figures")
    async def styles(self) -> dict:
        return self.meta

    @api.post(
        "/styles/{name}",
        summary="stylize one image (raw bytes or multipart field `image`)",
        description=(
            "Generator styles: the photo as the raw body or a multipart file field `image`. "
            "Arbitrary styles (`kind: arbitrary` in /styles): multipart with the photo as `image` "
            "and one or more file fields `style_image` (same size and format limits as the photo); "
            "several are blended by `weights` (default equal) and `alpha` sets how much of the "
            "style the features take. A `style_image` sent to a generator style is refused (422)."),
        response_class=Response,
        responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()},
                         "description": "the stylized image; headers X-Raystyle-Style and "
                                        "X-Raystyle-Inference-Ms (and, for arbitrary styles, "
                                        "X-Raystyle-Style-Cache: hit or miss)"},
                   400: {"description": "not a readable image"}, 404: {"description": "unknown style"},
                   408: {"description": "the body came too slowly (body_timeout_s, body_grace_s, "
                                        "body_min_bytes_per_s)"},
                   413: {"description": "body or pixel count too large"},
                   415: {"description": "unsupported image format"},
                   422: {"description": "invalid parameter (also: an arbitrary style without "
                                         "`style_image`, bad `weights`, a generator style "
                                         "with `style_image`)"},
                   500: {"description": "inference failed (JSON with request_id)"},
                   503: {"description": "overloaded (max_pending, max_pixels_in_flight, a full style "
                                        "queue) or style unavailable: retry after Retry-After s"}},
    )
    async def stylize(
        self, name: str, request: Request,
        strength: float = Query(1.0, ge=0.0, le=1.0, description="0 = input unchanged, 1 = full style"),
        preserve_color: str = Query("false", max_length=20, description="keep the input's colours: "
                                    f"false, true (= luminance), {', '.join(COLOUR_MODES)} (Gatys et al. "
                                    "2017: luminance-only transfer, colour histogram matching, or the "
                                    "old swap of chroma)"),
        format: Literal["png", "jpeg", "webp"] = Query("png", description="output format"),  # noqa: A002
        max_side: int | None = Query(None, ge=16, le=MAX_SIDE_LIMIT,
                                     description="downscale so the longer side is at most this"),
        alpha: float = Query(1.0, ge=0.0, le=1.0, description="arbitrary styles: 0 = the photo's "
                             "own features, 1 = the style image's statistics"),
        weights: str | None = Query(None, description="arbitrary styles: one weight per "
                                    "`style_image`, comma-separated (e.g. 0.7,0.3); default equal",
                                    max_length=1000),
    ) -> Response:
        handle = self.handles.get(name)
        if handle is None:
            return _error(404, "unknown style", f"{name!r}; available: {sorted(self.handles)}", request)
        try:
            mode = colour_mode(preserve_color)
        except ColourError as exc:
            return _invalid(request, "preserve_color", str(exc))
        if self.pending >= self.args.max_pending:  # full already: refuse before reading the body
            return self._full(request)
        a = self.args
        try:  # a body still arriving does not count against max_pending; it has a deadline
            body = await _read_limited(request, self.limit, timeout_s=a.body_timeout_s,
                                       grace_s=a.body_grace_s, min_rate=a.body_min_bytes_per_s)
        except BodyTooLarge as exc:
            return _error(413, "request too large", f"{exc.args[0]} bytes > {self.limit} bytes", request)
        except BodyTooSlow as exc:
            log.warning("request %s: %s", request_id(request), exc.args[0])
            response = _error(408, "request timeout", exc.args[0], request)
            response.headers["Connection"] = "close"  # the rest of the body is not read
            return response
        except ClientDisconnect:  # nobody reads the answer; not a server error either
            log.info("request %s: the client left before its body was in", request_id(request))
            return _error(400, "incomplete body", "the client closed the connection before its "
                          "body was in", request)
        if self.pending >= self.args.max_pending:
            return self._full(request)
        self.pending += 1
        try:
            return await self._stylize(name, handle, request, body, strength, mode,
                                       format, max_side, alpha, weights)
        except UNAVAILABLE as exc:
            log.warning("request %s: style %s unavailable: %s", request_id(request), name,
                        str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
            return _error(503, "style unavailable", f"{name!r} has no live replica right now "
                          f"({type(exc).__name__}); retry later", request)
        except Exception as exc:  # ORT errors and anything else: 500 JSON, logged with the id
            log.error("request %s: stylize %s failed: %s", request_id(request), name, exc, exc_info=exc)
            return _error(500, "inference failed", f"{type(exc).__name__}; see the server log for "
                          f"request {request_id(request)}", request)
        finally:
            self.pending -= 1

    def _full(self, request: Request) -> JSONResponse:
        return _error(503, "overloaded", f"the ingress holds {self.pending} requests "
                      f"(max_pending {self.args.max_pending}); retry later", request)

    async def _stylize(self, name: str, handle: DeploymentHandle, request: Request, body: bytes,
                       strength: float, preserve_color: str | None, fmt: str, max_side: int | None,
                       alpha: float, weights: str | None) -> Response:
        meta = self.meta[name]
        arbitrary = kind_of(meta).style_images
        try:
            data, style_data = await _image_bytes(request, body)
            del body
            if arbitrary and not style_data:
                return _invalid(request, "style_image", f"style {name!r} is an arbitrary style: send "
                                "one or more style images as multipart file fields 'style_image' "
                                "(and the photo as 'image')")
            if len(style_data) > self.args.max_style_images:
                return _invalid(request, "style_image", f"{len(style_data)} style images; at most "
                                f"{self.args.max_style_images} per request (max_style_images)")
            if style_data and not arbitrary:
                return _invalid(request, "style_image", f"style {name!r} is a {meta['kind']} style: "
                                "it takes no style_image")
            try:
                blend_weights = _weights(weights, len(style_data)) if arbitrary else []
            except StylizeError as exc:
                return _invalid(request, "weights", str(exc))
        except ImageError as exc:
            return _error(400, "bad image", str(exc), request)
        budget = self.args.max_pixels_in_flight
        cost = await asyncio.to_thread(pixel_cost, [data, *style_data], self.args.max_pixels)
        if cost > budget:
            return _error(413, "image too large", f"the images of this request are {cost:,} pixels, "
                          f"over the {budget:,} one ingress replica holds (max_pixels_in_flight)", request)
        if self.pixels + cost > budget:
            return _error(503, "overloaded", f"{self.pixels:,} decoded pixels in flight and this "
                          f"request's {cost:,} are over max_pixels_in_flight ({budget:,}); retry later",
                          request)
        self.pixels += cost
        try:  # decode, stylize, encode: what holds the request's share of max_pixels_in_flight
            try:
                original = await asyncio.to_thread(_prepare, data, self.args.max_pixels, max_side)
                del data
                styles = await asyncio.to_thread(prepare_styles, style_data, self.args.max_pixels,
                                                 meta.get("style_size")) if arbitrary else []
                del style_data
            except ImageTooLarge as exc:
                return _error(413, "image too large", str(exc), request)
            except UnsupportedFormat as exc:
                return _error(415, "unsupported image format", str(exc), request)
            except ImageError as exc:
                return _error(400, "bad image", str(exc), request)
            headers = {"X-Raystyle-Style": name}
            if strength == 0.0:
                out, ms = original, 0.0
            else:
                try:
                    if arbitrary:
                        out, ms, hit = await handle.remote(original, styles, blend_weights, alpha, preserve_color)
                        headers["X-Raystyle-Style-Cache"] = "hit" if hit else "miss"
                    else:
                        out, ms = await handle.remote(original)
                except BackPressureError as exc:
                    return _error(503, "overloaded", str(exc), request)
            payload = await asyncio.to_thread(_finish, out, original, strength,
                                              None if arbitrary else preserve_color, fmt)
            headers["X-Raystyle-Inference-Ms"] = f"{ms:.1f}"
            return Response(payload, media_type=MEDIA_TYPES[ENCODE_FORMATS[fmt]], headers=headers)
        finally:
            self.pixels -= cost


def deployment_name(style: str) -> str:
    return f"style-{style}"


def app_builder(args: dict[str, Any] | AppArgs):
    """The Serve application: ``import_path: raystyle.serve:app_builder`` in a serve config."""
    args = args if isinstance(args, AppArgs) else AppArgs.from_dict(args)
    found = {s.name: s for s in registry.list_styles(args.models_dir)}
    names = args.styles if args.styles is not None else sorted(found)
    missing = [n for n in names if n not in found]
    if missing:
        raise registry.RegistryError(
            f"styles not in {registry.models_dir(args.models_dir)}: {missing} (available: {sorted(found)})")
    if not names:
        raise registry.RegistryError(
            f"no styles in {registry.models_dir(args.models_dir)}; create one with `raystyle export`")
    handles = {}
    for name in names:
        opts = _merge(_merge(DEFAULT_DEPLOYMENT, args.deployment), args.per_style.get(name, {}))
        handles[name] = StyleModel.options(name=deployment_name(name), **opts).bind(
            name, args.models_dir, args.precision, args.provider, args.ort_spinning)
    meta = {n: found[n].meta for n in names}
    ingress = _merge(DEFAULT_INGRESS, args.ingress)
    if int(ingress.get("max_ongoing_requests", 0)) <= args.max_pending:
        raise ConfigError(f"ingress.max_ongoing_requests ({ingress.get('max_ongoing_requests')}) must be "
                         f"above max_pending ({args.max_pending}) so that overload is answered with "
                         "503 JSON by the ingress rather than queued at the proxy")
    return Gateway.options(**ingress).bind(handles, json.loads(json.dumps(meta)), args.to_dict())


def load_serve_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(http_options, app args) of the raystyle application in a serve config YAML."""
    try:
        doc = yaml.safe_load(Path(path).expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read serve config {path}: {exc}") from None
    for app in doc.get("applications", []):
        if app.get("import_path") == "raystyle.serve:app_builder":
            return doc.get("http_options", {}), app.get("args") or {}
    raise ConfigError(f"{path}: no application with import_path raystyle.serve:app_builder")


def run_from_config(config: str | Path, *, models_dir: str | Path | None = None,
                    host: str | None = None, port: int | None = None,
                    address: str | None = None, name: str = "raystyle") -> str:
    """Start Serve (HTTP on host:port, default 127.0.0.1:8000) and deploy; returns the URL."""
    from raystyle.cluster import connect

    http, app_args = load_serve_config(config)
    if models_dir is not None:
        app_args = {**app_args, "models_dir": str(models_dir)}
    host = host or http.get("host", "127.0.0.1")
    port = port or http.get("port", 8000)
    app = app_builder(app_args)  # errors (no styles, bad args) before anything starts
    connect(address)
    # request_timeout_s: the proxy's bound on a whole request (408 plain text past it)
    extra = {k: http[k] for k in ("request_timeout_s", "keep_alive_timeout_s") if k in http}
    serve.start(http_options={"host": host, "port": port, **extra})
    serve.run(app, name=name, route_prefix="/")
    return f"http://{host}:{port}"
