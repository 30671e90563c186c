"""Generated test clips with what real footage has, and the truth about their motion.

Each clip is made from real photos (scikit-image's astronaut, chelsea, coffee, rocket) moved
at known sub-pixel speeds, so its true backward flow and where that flow holds are known
exactly; a flicker figure measured along it depends on no optical-flow algorithm (see
``raystyle.infer.video.temporal_figures``). numpy and OpenCV only (PyAV to write a file):
no torch, no Ray.

The kinds (``KINDS``):

- ``pan``: a window panning across a photo (1.5, 0.5 px per frame): the whole frame moves alike.
- ``object``: a textured disc (a patch of another photo) moving across a panning background at
  another speed: motion boundaries, and background that the disc uncovers (disocclusion).
- ``occlusion``: a still background and a tall bar passing in front of it, fast (4 px per
  frame): what it covers and uncovers each frame has no past.
- ``lighting``: a pan whose light dims to 45 % in the middle third of the clip (a global gain
  of about 4-7 % per frame), then holds: brightness changes, the scene does not.
- ``cut``: a hard scene cut halfway: a pan of one photo, then a pan of another.
- ``static``: a still shot with sensor noise (sigma 3 levels, fresh each frame).

``make_clip(kind, size=(160, 120), frames=24)`` returns a ``SyntheticClip``: the frames (RGB
uint8) and for each frame t > 0 its ``TrueFlow``: ``map_x, map_y`` (frame t at (x, y) shows
frame t-1 at (map_x, map_y), the convention of ``cv2.remap``) and ``valid`` (float32 1/0: 0 where
the point was hidden or outside frame t-1, on an object's anti-aliased edge, and everywhere
at a cut frame), with the cut frames' indices in ``cuts``. ``write_clip`` writes one to a file
(H.264, as ``raystyle.infer.video.write_pan_clip`` does).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import av
import cv2
import numpy as np

KINDS = ("pan", "object", "occlusion", "lighting", "cut", "static")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
PAN = (1.5, 0.5)  # px per frame: the background's motion in the moving kinds


class TrueFlow(NamedTuple):
    """Frame t at (x, y) shows frame t-1 at (map_x, map_y) where ``valid`` is 1."""

    map_x: np.ndarray  # float32 (h, w)
    map_y: np.ndarray
    valid: np.ndarray  # float32 0/1


@dataclass(frozen=True)
class SyntheticClip:
    kind: str
    frames: list[np.ndarray]  # RGB uint8 (h, w, 3)
    flows: list[TrueFlow | None]  # per frame; None for frame 0
    cuts: tuple[int, ...] = ()  # frames that start a new shot (their flow is all invalid)
    gains: tuple[float, ...] = ()  # the light of each frame (``lighting``), else empty

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        h, w = self.frames[0].shape[:2]
        return w, h

    def shots(self) -> list[tuple[int, int]]:
        """[start, stop) of each shot."""
        edges = [0, *self.cuts, len(self.frames)]
        return list(zip(edges[:-1], edges[1:], strict=True))


@functools.cache
def _photo(name: str) -> np.ndarray:
    from skimage import data  # a dependency of raystyle; the four photos ship inside its wheel

    if name not in PHOTOS:
        raise ValueError(f"photo must be one of {', '.join(PHOTOS)}, got {name!r}")
    return np.ascontiguousarray(getattr(data, name)()[..., :3])


def photo(name: str, width: int, height: int) -> np.ndarray:
    """scikit-image's photo ``name``, its centre cropped to the aspect of (width, height),
    resized to it and band-limited as a lens would (Gaussian, sigma 0.8 px), so that moving it
    by a fraction of a pixel does not alias (RGB uint8)."""
    img = _photo(name)
    h, w = img.shape[:2]
    if w * height > h * width:  # too wide: crop the sides
        cw = h * width // height
        img = img[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:
        ch = w * height // width
        img = img[(h - ch) // 2:(h - ch) // 2 + ch]
    shrink = img.shape[1] > width
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return cv2.GaussianBlur(img, (0, 0), 0.8)


def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


class _Pan:
    """A (w, h) window over ``name`` moving by ``speed`` px per frame for ``frames`` frames."""

    def __init__(self, name: str, size: tuple[int, int], frames: int, speed: tuple[float, float]):
        w, h = size
        dx, dy = speed
        margin = 4
        bw = int(np.ceil(w + abs(dx) * frames)) + 2 * margin
        bh = int(np.ceil(h + abs(dy) * frames)) + 2 * margin
        scale = max(bw / w, bh / h)  # the photo's aspect kept: cover the path
        self.image = photo(name, int(np.ceil(w * scale)), int(np.ceil(h * scale)))
        self.speed = speed
        self.x0 = margin + (abs(dx) * frames if dx < 0 else 0)
        self.y0 = margin + (abs(dy) * frames if dy < 0 else 0)
        self.xs, self.ys = _grid(w, h)

    def frame(self, t: int) -> np.ndarray:
        return cv2.remap(self.image, self.xs + np.float32(self.x0 + self.speed[0] * t),
                         self.ys + np.float32(self.y0 + self.speed[1] * t), cv2.INTER_CUBIC)

    def back(self) -> tuple[np.ndarray, np.ndarray]:
        """The backward map: the window moved by ``speed``, so frame t at x is frame t-1 at x + speed."""
        return self.xs + np.float32(self.speed[0]), self.ys + np.float32(self.speed[1])


class _Sprite:
    """A textured shape (``mask``: an anti-aliased disc or bar) moving by ``speed`` px per frame
    from ``start`` (its top-left corner in the frame)."""

    def __init__(self, texture: np.ndarray, shape: str, start: tuple[float, float], speed: tuple[float, float]):
        th, tw = texture.shape[:2]
        ys, xs = np.mgrid[0:th, 0:tw].astype(np.float32)
        if shape == "disc":
            r = min(tw, th) / 2 - 1
            dist = np.hypot(xs - (tw - 1) / 2, ys - (th - 1) / 2)
            alpha = np.clip(r - dist + 0.5, 0, 1)
        else:  # a bar with anti-aliased sides (1 px inside the texture)
            alpha = np.clip(np.minimum.reduce([xs, tw - 1 - xs, ys, th - 1 - ys]), 0, 1)
        self.texture = texture.astype(np.float32)
        self.alpha = alpha.astype(np.float32)
        self.start, self.speed = start, speed

    def layer(self, t: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """(colour, alpha) of the sprite in a (w, h) frame at time t."""
        xs, ys = _grid(w, h)
        mx = xs - np.float32(self.start[0] + self.speed[0] * t)
        my = ys - np.float32(self.start[1] + self.speed[1] * t)
        colour = cv2.remap(self.texture, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.remap(self.alpha, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return colour, alpha


def _inside(map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    h, w = map_x.shape
    return (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)


def _layered(kind: str, bg: _Pan | None, still: np.ndarray | None, sprite: _Sprite, size: tuple[int, int],
             frames: int) -> SyntheticClip:
    """A background (a pan, or a still photo) with ``sprite`` in front."""
    w, h = size
    xs, ys = _grid(w, h)
    out: list[np.ndarray] = []
    flows: list[TrueFlow | None] = []
    prev_alpha = None
    for t in range(frames):
        back = bg.frame(t).astype(np.float32) if bg is not None else still.astype(np.float32)
        colour, alpha = sprite.layer(t, w, h)
        a = alpha[..., None]
        out.append(np.clip(back * (1 - a) + colour * a + 0.5, 0, 255).astype(np.uint8))
        if t == 0:
            flows.append(None)
        else:
            bx, by = bg.back() if bg is not None else (xs, ys)
            ox, oy = xs - np.float32(sprite.speed[0]), ys - np.float32(sprite.speed[1])
            on = alpha >= 0.5
            map_x, map_y = np.where(on, ox, bx), np.where(on, oy, by)
            was = cv2.remap(prev_alpha, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0)  # the sprite's alpha at t-1 where each pixel was
            edge = (alpha > 0) & (alpha < 1)
            edge = cv2.dilate(edge.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            same = np.where(on, was >= 0.999, was <= 0.001)  # the same layer: not hidden at t-1
            valid = same & ~edge & _inside(map_x, map_y)
            flows.append(TrueFlow(map_x.astype(np.float32), map_y.astype(np.float32), valid.astype(np.float32)))
        prev_alpha = alpha
    return SyntheticClip(kind, out, flows)


def make_clip(kind: str, size: tuple[int, int] = (160, 120), frames: int = 24, seed: int = 0) -> SyntheticClip:
    """A clip of ``kind`` (``KINDS``), ``size`` = (width, height), with its true flow."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got {frames}")
    w, h = size
    xs, ys = _grid(w, h)
    if kind in ("pan", "lighting"):
        pan = _Pan("astronaut", size, frames, PAN)
        bx, by = pan.back()
        valid = _inside(bx, by).astype(np.float32)
        flows = [None] + [TrueFlow(bx, by, valid)] * (frames - 1)
        if kind == "pan":
            return SyntheticClip(kind, [pan.frame(t) for t in range(frames)], flows)
        a, b = frames // 3, max(frames // 3 + 1, 2 * frames // 3)  # the light dims over the middle third
        gains = tuple(float(1.0 - 0.55 * np.clip((t - a) / (b - a), 0, 1)) for t in range(frames))
        out = [np.clip(pan.frame(t).astype(np.float32) * g + 0.5, 0, 255).astype(np.uint8)
               for t, g in enumerate(gains)]
        return SyntheticClip(kind, out, flows, gains=gains)
    if kind == "cut":
        k = frames // 2
        shots = [_Pan("astronaut", size, k, PAN), _Pan("coffee", size, frames - k, (-1.0, 0.75))]
        out = [shots[0].frame(t) for t in range(k)] + [shots[1].frame(t) for t in range(frames - k)]
        flows: list[TrueFlow | None] = [None]
        for t in range(1, frames):
            if t == k:
                flows.append(TrueFlow(xs, ys, np.zeros((h, w), np.float32)))
            else:
                bx, by = shots[t >= k].back()
                flows.append(TrueFlow(bx, by, _inside(bx, by).astype(np.float32)))
        return SyntheticClip(kind, out, flows, cuts=(k,))
    if kind == "static":
        still = photo("rocket", w, h).astype(np.float32)
        rng = np.random.default_rng(seed)
        out = [np.clip(still + rng.normal(0, 3, still.shape) + 0.5, 0, 255).astype(np.uint8) for _ in range(frames)]
        ones = np.ones((h, w), np.float32)
        return SyntheticClip(kind, out, [None] + [TrueFlow(xs, ys, ones)] * (frames - 1))
    if kind == "object":
        side = max(8, int(min(w, h) * 0.45)) // 2 * 2
        texture = photo("chelsea", side, side)
        pace = 24 / frames  # the disc crosses the same share of the frame at any size and length
        speed = (-2.0 * w / 160 * pace, 1.0 * h / 120 * pace)
        sprite = _Sprite(texture, "disc", (w * 0.7 - side / 2, h * 0.15), speed)
        return _layered(kind, _Pan("astronaut", size, frames, PAN), None, sprite, size, frames)
    # occlusion: a tall bar passes in front of a still photo, fast
    bw, bh = max(6, w // 6), int(h * 0.8)
    texture = photo("rocket", bw * 3, bh)[:, bw:2 * bw]
    speed = 4.0 * w / 160 * 24 / frames
    sprite = _Sprite(np.ascontiguousarray(texture), "bar", (w * 0.12, h * 0.1), (speed, 0.0))
    return _layered(kind, None, photo("coffee", w, h), sprite, size, frames)


def make_clips(size: tuple[int, int] = (160, 120), frames: int = 24,
               kinds: tuple[str, ...] = KINDS) -> dict[str, SyntheticClip]:
    return {k: make_clip(k, size, frames) for k in kinds}


def write_clip(path: str | Path, clip: SyntheticClip, fps: int = 24, crf: int = 18) -> Path:
    """The clip as H.264 (libx264, yuv420p, ``crf``; 0 is lossless in luma) in .mp4/.mov/.mkv,
    no audio. The true flow holds for the file's frames up to the codec's loss."""
    fmt = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}.get(Path(str(path)).suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: a clip is written as .mp4, .mov or .mkv")
    w, h = clip.size
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in clip.frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return Path(path)
