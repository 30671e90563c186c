"""Video: decode, stylize frame by frame with motion-guided temporal smoothing, encode.
No torch, no Ray: the CLI (``raystyle stylize clip.mp4``) and the Ray Data chunk actors
(raystyle.batch.images) run this with any stylizer (generator, student, fast net, arbitrary style).

- Decoding and encoding are PyAV's (FFmpeg ships in its wheel): H.264 (libx264, yuv420p) in
  .mp4, .mov or .mkv; the input's frame timestamps are kept (so its rate and duration are), or
  frames are picked by time for ``fps``; the audio track is copied (transcoded to AAC only where
  the output container cannot hold its codec). Frames stream one by one: memory does not grow
  with the video's length. Phone clips with a rotation flag are turned upright.
- Temporal smoothing (after Ruder et al., "Artistic style transfer for videos", 2016, in its
  cheap, feed-forward form; ``Smoother``): DIS optical flow (OpenCV) between consecutive
  *input* frames; the previous *output* frame is warped along it and blended with the new
  stylized frame, ``out = (1 - s m) new + s m warped``, ``s`` = ``smooth``. ``m`` is 1 where the
  warp can be trusted, 0 elsewhere (the new frame as it is): the flow passes the
  forward-backward check (Sundaram et al.: the two flows cancel, the pixel stays in the
  frame), the pixel is off a motion boundary (Ruder et al.: |grad u|^2 + |grad v|^2 <=
  0.01 |w|^2 + 0.002) and the warped previous *input* matches the current one within
  ``PHOTO_LEVELS`` in every channel, after a global gain match (``GAIN_RANGE``), so what the
  flow smoothed over (an occlusion) is not blended but a change of light is. The warped
  output takes the same gain, so it follows the light instead of lagging. Where fewer than
  ``CUT_SHARE`` of the pixels pass the flow and photometric checks, the frame starts a new
  shot: the output is its stylized frame as it is, and nothing of the previous shot is
  carried on. ``smooth=0`` is plain per-frame stylization. Exponential blending without
  motion (``mode="blend"``, no checks) is kept as the baseline the benchmark compares
  against: it trades shimmer for smearing.
- Temporal figures (``TemporalMeter``, ``temporal_figures(inputs, per_frame, outputs, flow)``),
  measured independently of the smoother: ``flicker`` is the warping error (Lai et al.), the
  mean |out_t - W(out_t-1)| over the pixels that have a past, in 0-255 levels, where W warps
  along the clip's *true* flow and mask when known (the generated clips of
  ``raystyle.infer.synthetic``), else along a different algorithm's flow (Farneback's,
  ``reference_flow``, with its own forward-backward check), never the smoother's DIS flow and
  mask (along those, blending by ``s`` cuts the error by ``1 - s`` whatever the output looks
  like). Always beside it: ``fidelity``, the mean |out_t - per_frame_t|, how far smoothing
  took the output from the per-frame stylization (carrying the first frame forward scores no
  flicker and the largest fidelity cost); ``ghosting``, the same over the pixels with no past
  (occlusions, a cut frame), where the output should be the new frame; ``sharpness``, the
  mean gradient magnitude. Methods are compared at equal fidelity cost. Measured by
  ``python bench/video.py --sizes ''`` (the random-init ``cpu`` generator, generated clips of
  320x240 and 48 frames, docs/stylize.md): at the default 0.6, flicker 0.37-0.41x per-frame
  on the pan, moving-object, dimming, cut and still clips and 0.54x on the occlusion; 0.52-0.59x
  blending's at equal fidelity cost (0.72x on the occlusion; 1.08x on the still shot, where
  blending is what is wanted); ghosting at the occlusion 4.7 levels (17.4 with the
  forward-backward check alone); nothing of the previous shot after the cut.
- Chunks (for Ray Data): output frames ``[start, stop)`` can be produced on their own
  (``stylized_frames(start=, stop=, warmup=)``): decoding seeks to the keyframe before the
  chunk, and smoothing starts ``warmup`` frames early, so the chunk's first frame carries the
  same history as in one sequential pass, to within ``smooth ** warmup`` (``warmup_frames``).

Bad input (not a video, truncated or damaged data, a codec FFmpeg cannot decode, no frames,
frames over the pixel cap) raises ``VideoError`` with one line naming the file.

A video is opened as data, never as a URL or a playlist: local paths are made absolute (a
file named ``http:host:port.mp4`` is a file), FFmpeg may use its ``file`` protocol only,
only the demuxers of ``CONTAINERS`` (MP4/MOV/M4V, Matroska/WebM, AVI: never concat, HLS, SDP,
image2, ... that would read other files or the network) and only the decoders of
``VIDEO_CODECS`` (audio: ``AUDIO_CODECS``; another audio codec is left out). The caps hold
for every frame: the pixel cap (``RAYSTYLE_MAX_PIXELS``) on each decoded frame (the decoder
itself refuses far larger ones before allocating them), the frame count and the duration
(``RAYSTYLE_MAX_FRAMES``, ``RAYSTYLE_MAX_DURATION``) before any frame plan is built, so a
timestamp gap cannot make a plan of billions of frames; frames waiting for the stylizer are
held within ``BUFFER_BYTES``.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
import cv2
import numpy as np

from raystyle.data.images import DEFAULT_MAX_PIXELS
from raystyle.errors import RaystyleError

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
# What is read as a video: FFmpeg demuxers (``mov`` reads .mp4/.mov/.m4v, ``matroska`` .mkv
# and .webm) and codecs by their canonical names; anything else is refused before decoding.
CONTAINERS = ("mov", "matroska", "avi")
_CONTAINER_NAMES = "MP4/MOV/M4V, Matroska/WebM or AVI"
VIDEO_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg1video", "mpeg2video",
                          "mjpeg", "prores", "dnxhd", "theora", "h263", "msmpeg4v2", "msmpeg4v3", "ffv1"})
AUDIO_CODECS = frozenset({"aac", "mp3", "mp2", "ac3", "eac3", "opus", "vorbis", "flac", "alac",
                          "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_s24be", "pcm_s32le", "pcm_s32be",
                          "pcm_f32le", "pcm_f32be", "pcm_f64le", "pcm_u8", "pcm_alaw", "pcm_mulaw"})
DEFAULT_MAX_FRAMES = 360_000  # 4 hours at 25 fps (RAYSTYLE_MAX_FRAMES, --max-frames)
DEFAULT_MAX_DURATION = 4 * 3600.0  # seconds of video (RAYSTYLE_MAX_DURATION, --max-duration)
BUFFER_BYTES = 256 << 20  # decoded frames waiting for one stylizer call (--batch-size), at most
OUTPUT_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}  # H.264 in these
# Audio codecs each output container takes as they are (others are transcoded to AAC).
COPY_AUDIO: dict[str, frozenset[str] | None] = {
    "mp4": frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"}),
    "mov": frozenset({"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s24le", "pcm_f32le",
                      "pcm_s16be", "pcm_s24be"}),
    "matroska": None,  # anything
}
DEFAULT_SMOOTH = 0.6
# Frames up to this side run whole (1080p included); only larger ones run in exact tiles. (The
# images' 1024 px default would tile every 720p frame, with the statistics passes that costs.)
VIDEO_TILE = 2048
MAX_FPS = 240.0
TMP_SUFFIX = ".raystyle-tmp"  # as raystyle.batch.images's: never taken for a finished output

Source = str | Path | BinaryIO
FrameFn = Callable[[list[np.ndarray]], list[np.ndarray]]


class VideoError(RaystyleError):
    """A file is not a usable video, or bad video options; the message says which and why."""


def _env_limit(var: str, default: float, kind: type) -> float:
    text = os.environ.get(var)
    if text is None or not text.strip():
        return default
    try:
        value = kind(text)
    except ValueError:
        raise VideoError(f"{var} must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise VideoError(f"{var} must be above 0, got {text!r}")
    return value


def check_limits(max_frames: int | None = None, max_duration: float | None = None) -> tuple[int, float]:
    """(frames, seconds): the caps on a video's frame count and duration, as given (--max-frames,
    --max-duration), else RAYSTYLE_MAX_FRAMES / RAYSTYLE_MAX_DURATION, else 360,000 frames and
    4 hours. VideoError (one line) for values that are not above 0."""
    if max_frames is None:
        max_frames = int(_env_limit("RAYSTYLE_MAX_FRAMES", DEFAULT_MAX_FRAMES, int))
    elif max_frames < 1:
        raise VideoError(f"--max-frames must be at least 1, got {max_frames}")
    if max_duration is None:
        max_duration = float(_env_limit("RAYSTYLE_MAX_DURATION", DEFAULT_MAX_DURATION, float))
    elif not (math.isfinite(max_duration) and max_duration > 0):
        raise VideoError(f"--max-duration must be above 0 seconds, got {max_duration:g}")
    return int(max_frames), float(max_duration)


def is_video(path: str | Path) -> bool:
    return Path(str(path)).suffix.lower() in VIDEO_SUFFIXES


def output_format(path: str | Path) -> str:
    """The container (FFmpeg muxer name) for an output file name; VideoError for others."""
    fmt = OUTPUT_FORMATS.get(Path(str(path)).suffix.lower())
    if fmt is None:
        raise VideoError(f"{path}: a stylized video is written as .mp4, .mov or .mkv (H.264)")
    return fmt


def output_name(rel: str) -> str:
    """A video's output name: the same, or with .mp4 where the container cannot hold H.264."""
    stem, dot, suffix = rel.rpartition(".")
    return rel if dot and f".{suffix.lower()}" in OUTPUT_FORMATS else f"{stem}.mp4"


# -- reading ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` learnt: the frames' presentation timestamps (from a pass over the packets,
    no decoding), the stored frame size and rotation, rate, codec and audio codec."""

    name: str
    width: int  # as stored (before rotation)
    height: int
    rotation: int  # degrees counter-clockwise to turn a decoded frame upright: 0, 90, 180, 270
    pts: tuple[int, ...]  # every frame's timestamp in time_base units, in presentation order
    time_base: Fraction
    rate: Fraction  # average frame rate
    seekable: bool  # every packet has a timestamp (else frames are counted from the start)
    codec: str
    audio: str | None  # the first audio stream's codec, if any (None too where not in AUDIO_CODECS)
    container: str | None = None  # the demuxer that read it (CONTAINERS): every later open names it
    max_pixels: int = DEFAULT_MAX_PIXELS  # the cap each decoded frame is held to
    max_frames: int = DEFAULT_MAX_FRAMES  # the cap on the frames of a plan (--fps)

    @property
    def frames(self) -> int:
        return len(self.pts)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) upright."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)

    def times(self) -> list[float]:
        """Each frame's time in seconds from the first frame."""
        if not self.seekable:
            return [i / float(self.rate) for i in range(self.frames)]
        return [float((p - self.pts[0]) * self.time_base) for p in self.pts]

    @property
    def duration(self) -> float:
        return self.times()[-1] + 1.0 / float(self.rate)


def _canonical(codec: av.Codec) -> str:
    """The codec's own name (h264, av1), not its decoder's (libdav1d)."""
    return getattr(codec, "canonical_name", None) or codec.name


@functools.cache
def _decoders() -> str:
    """FFmpeg's decoders of the allowed codecs (its codec_whitelist: the decoders it may open
    while reading a file's header)."""
    names = set()
    for codec in av.codecs_available:
        try:
            found = av.Codec(codec, "r")
        except Exception:  # an encoder only
            continue
        if _canonical(found) in VIDEO_CODECS | AUDIO_CODECS:
            names.add(found.name)
    return ",".join(sorted(names))


def _read_options() -> dict[str, str]:
    """FFmpeg options of every input open: the file protocol only (no http:, tcp:, ... even in a
    name), the allowed demuxers and decoders only."""
    return {"protocol_whitelist": "file", "format_whitelist": ",".join(CONTAINERS),
            "codec_whitelist": _decoders()}


def _target(source: Source) -> Any:
    """What FFmpeg is given: an absolute path (``http:x.mp4`` stays a file name), or the file."""
    if isinstance(source, (str, Path)):
        return os.path.abspath(os.fspath(source))
    return source


def _open(source: Source, name: str, mode: str = "r", container: str | None = None, **kw):
    """``av.open`` of a video to read (the allowlists of ``_read_options``, the demuxer
    ``container`` when it is known) or of a file to write; VideoError (one line) otherwise."""
    if mode == "r":
        kw = {**kw, "container_options": _read_options()}
        if container is not None:
            kw["format"] = container
    try:
        opened = av.open(_target(source), mode, **kw)
    except FileNotFoundError:
        raise VideoError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise VideoError(f"{name}: is a directory") from None
    except av.error.FFmpegError as exc:
        if mode != "r":
            raise VideoError(f"{name}: cannot write ({_why(exc)})") from None
        if getattr(exc, "errno", None) == errno.EINVAL:  # format_whitelist: a playlist, concat, sdp, ...
            raise VideoError(f"{name}: not a video, or damaged (not an {_CONTAINER_NAMES} file)") from None
        raise VideoError(f"{name}: not a video, or damaged ({_why(exc)})") from None
    if mode == "r" and not set(opened.format.name.split(",")) & set(CONTAINERS):
        opened.close()
        raise VideoError(f"{name}: a {opened.format.name} file is not read as a video "
                         f"(only {_CONTAINER_NAMES})")
    return opened



def _why(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _rotation(frame: av.VideoFrame) -> int:
    """Degrees counter-clockwise that make the frame upright (its display matrix), 0/90/180/270."""
    angle = getattr(frame, "rotation", 0) or 0  # PyAV: counter-clockwise degrees of the matrix
    return int(round(angle / 90.0)) % 4 * 90


def probe(source: Source, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None, *,
          max_frames: int | None = None, max_duration: float | None = None) -> VideoInfo:
    """Open ``source`` (a path or a seekable binary file), list its frames' timestamps from the
    packets and decode the first frame (so a codec FFmpeg cannot decode fails here, not later).
    VideoError (one line) for anything that is not a readable video within ``max_pixels``,
    ``max_frames`` and ``max_duration`` (None: ``check_limits``'s), checked before any frame
    plan is made: the returned info carries the caps, and every decoded frame is held to
    ``max_pixels``."""
    name = name or str(getattr(source, "name", source))
    max_frames, max_duration = check_limits(max_frames, max_duration)
    with _open(source, name) as container:
        fmt = next(f for f in CONTAINERS if f in container.format.name.split(","))  # _open checked
        if not container.streams.video:
            raise VideoError(f"{name}: no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        codec = ctx.name if ctx is not None else "unknown"
        if ctx is None or codec == "none":
            raise VideoError(f"{name}: its video codec is not one FFmpeg can decode")
        canonical = _canonical(ctx.codec)
        if canonical not in VIDEO_CODECS:
            raise VideoError(f"{name}: its video codec {canonical} is not one raystyle reads "
                             f"({', '.join(sorted(VIDEO_CODECS))})")
        width, height = ctx.width, ctx.height
        if width * height > max_pixels:
            raise VideoError(f"{name}: {width}x{height} frames ({width * height:,} pixels) are over "
                             f"the {max_pixels:,}-pixel limit (RAYSTYLE_MAX_PIXELS)")
        if width < 1 or height < 1:
            raise VideoError(f"{name}: no frame size in the stream (damaged)")
        stamps: list[int | None] = []
        stored = 0  # packets in the file, those an edit list discards included (the index counts them)
        try:
            for packet in container.demux(stream):
                # the demuxer's last, empty packet is a flush marker; a discarded one (before an
                # edit list's start: a lossless trim) is in the file but never shown
                if not packet.size:
                    continue
                stored += 1
                if not getattr(packet, "is_discard", False):
                    stamps.append(packet.pts if packet.pts is not None else packet.dts)
                    if len(stamps) > max_frames:
                        raise VideoError(f"{name}: more than {max_frames:,} frames, over the limit "
                                         "(--max-frames, RAYSTYLE_MAX_FRAMES)")
        except av.error.FFmpegError as exc:
            raise VideoError(f"{name}: damaged ({_why(exc)})") from None
        if not stamps:
            raise VideoError(f"{name}: no video frames")
        declared = stream.frames  # from the container's index where it has one (mp4, mov)
        if declared and stored < declared:
            raise VideoError(f"{name}: truncated ({stored} of {declared} frames are in the file)")
        seekable = None not in stamps
        pts = tuple(sorted(set(stamps))) if seekable else tuple(range(len(stamps)))
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        audio = _audio_codec(container)
        time_base = stream.time_base or Fraction(1, 90000)
        said = _declared_seconds(stream)  # the stream's own duration, or Matroska's track end
        if said is not None and seekable:
            said, from_zero = said
            first = float(pts[0] * time_base) if from_zero else 0.0  # a track starting late
            found = first + float((pts[-1] - pts[0]) * time_base) + 2.0 / float(rate)
            if found + 0.05 < said:
                raise VideoError(f"{name}: truncated (the file says {said - first:.2f} s of video; "
                                 f"{found - first - 1.0 / float(rate):.2f} s are in it)")
    if hasattr(source, "seek"):
        source.seek(0)
    rotation = 0
    caps = dict(container=fmt, max_pixels=max_pixels, max_frames=max_frames)
    info = VideoInfo(name, width, height, 0, pts, Fraction(time_base), Fraction(rate), seekable, codec, audio,
                     **caps)
    seconds = info.duration  # a gap between two timestamps counts: --fps would fill it with frames
    if not (math.isfinite(seconds) and seconds <= max_duration):
        raise VideoError(f"{name}: its frames span {seconds:,.0f} s, over the {max_duration:,g}-second limit "
                         "(--max-duration, RAYSTYLE_MAX_DURATION)")
    for _, frame in decode_frames(source, info, 0, 1, raw=True):
        rotation = _rotation(frame)
    if hasattr(source, "seek"):
        source.seek(0)
    return VideoInfo(name, width, height, rotation, pts, Fraction(time_base), Fraction(rate), seekable,
                     codec, audio, **caps)


def _audio_codec(container) -> str | None:
    """The first audio stream's codec; None without one, or with one FFmpeg does not know or
    that is not in AUDIO_CODECS (that track is left out rather than failing the video)."""
    if not container.streams.audio:
        return None
    ctx = container.streams.audio[0].codec_context
    if ctx is None or ctx.name == "none" or _canonical(ctx.codec) not in AUDIO_CODECS:
        return None
    return ctx.name


def _declared_seconds(stream) -> tuple[float, bool] | None:
    """(seconds, counted from time 0) of the video stream as its container declares it: the
    stream's duration (from its first frame), else Matroska's DURATION tag (the track's end
    time); None where neither is there."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base), False
    tag = (stream.metadata or {}).get("DURATION")  # Matroska: "HH:MM:SS.nnnnnnnnn"
    try:
        h, m, sec = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec), True
    except (AttributeError, ValueError):
        return None


def decode_frames(source: Source, info: VideoInfo, first: int, last: int, raw: bool = False,
            convert: Callable[[av.VideoFrame], np.ndarray] | None = None,
            wanted: Callable[[int], bool] | None = None) -> Iterator[tuple[int, Any]]:
    """(index, frame) of input frames ``first .. last - 1`` in order: decoding seeks to the
    keyframe before ``first``. ``convert`` makes the arrays (frames ``wanted`` refuses yield
    None). A missing frame, a decoder error or a frame over ``info.max_pixels`` (a stream
    may change its size after the header) is a VideoError."""
    index_of = {p: i for i, p in enumerate(info.pts)} if info.seekable else None
    expected = first
    cap = info.max_pixels
    with _open(source, info.name, container=info.container) as container:
        stream = container.streams.video[0]
        if _canonical(stream.codec_context.codec) not in VIDEO_CODECS:  # the file changed since probe
            raise VideoError(f"{info.name}: its video codec is not one raystyle reads")
        # slice threads only: with frame threads (AUTO/FRAME), closing a decoder mid-stream (a
        # chunk's end) deadlocks in avcodec_free_context on PyAV 14 once torchvision is imported
        # (PyAV-Org/PyAV#1849; the floors CI hung here). Slice threads decoded H.264 as fast.
        stream.thread_type = "SLICE"
        # the decoder refuses to allocate a far larger picture (its check pads the width to
        # the stride alignment, hence the slack); each frame is held to the exact cap below
        stream.codec_context.options = {"max_pixels": str(min(2**31 - 1, 2 * cap + 64 * 4096))}
        try:
            if first > 0 and info.seekable:
                container.seek(info.pts[first], stream=stream, backward=True)
            counted = 0
            for frame in container.decode(stream):
                if index_of is not None and frame.pts is not None:
                    i = index_of.get(frame.pts)
                else:
                    i, counted = counted, counted + 1
                    if index_of is not None:  # a frame without a timestamp: take it as the next
                        i = expected
                if frame.width * frame.height > cap:  # skipped frames too: the clip stops here
                    raise _over_cap(info, expected if i is None else i, frame.width, frame.height)
                if i is None or i < first:
                    continue
                if i != expected:
                    raise VideoError(f"{info.name}: frame {expected} of {info.frames} is missing "
                                     "(damaged data)")
                expected += 1
                if raw:
                    yield i, frame
                else:
                    yield i, convert(frame) if wanted is None or wanted(i) else None
                if expected >= last:
                    return
        except av.error.FFmpegError as exc:
            ctx = stream.codec_context  # the size a refused picture announced
            if ctx.width * ctx.height > cap:
                raise _over_cap(info, expected, ctx.width, ctx.height) from None
            raise VideoError(f"{info.name}: cannot decode frame {expected} ({_why(exc)})") from None
    if expected < last:
        raise VideoError(f"{info.name}: decoded {expected} of {info.frames} frames (truncated or damaged)")


def _over_cap(info: VideoInfo, index: int, width: int, height: int) -> VideoError:
    return VideoError(f"{info.name}: frame {index} is {width}x{height} ({width * height:,} pixels), over the "
                      f"{info.max_pixels:,}-pixel limit (RAYSTYLE_MAX_PIXELS)")


def frame_converter(info: VideoInfo, width: int, height: int) -> Callable[[av.VideoFrame], np.ndarray]:
    """Decoded frame -> upright (height, width, 3) uint8 RGB at the output size."""
    turns = info.rotation // 90
    sw, sh = (height, width) if turns % 2 else (width, height)  # the size before turning upright
    shrink = sw * sh < info.width * info.height

    def convert(frame: av.VideoFrame) -> np.ndarray:
        if (frame.width, frame.height) == (sw, sh):
            a = frame.to_ndarray(format="rgb24")
        else:
            a = frame.reformat(width=sw, height=sh, format="rgb24",
                               interpolation="AREA" if shrink else "BICUBIC").to_ndarray()
        return np.ascontiguousarray(np.rot90(a, turns)) if turns else a

    return convert


# -- what to produce --------------------------------------------------------------------------
@dataclass(frozen=True)
class FramePlan:
    """The output: its (even) size, which input frame each output frame shows, its timestamps."""

    width: int
    height: int
    source: tuple[int, ...]  # input frame index of each output frame (non-decreasing)
    pts: tuple[int, ...]  # output timestamps, in time_base units
    time_base: Fraction
    rate: Fraction

    @property
    def frames(self) -> int:
        return len(self.source)


def output_size(width: int, height: int, max_side: int | None = None) -> tuple[int, int]:
    """(width, height) within ``max_side``, both even (H.264 in yuv420p needs it)."""
    scale = 1.0 if max_side is None or max(width, height) <= max_side else max_side / max(width, height)

    def even(n: float) -> int:
        return max(2, int(n) // 2 * 2)

    return even(round(width * scale)), even(round(height * scale))


def plan_frames(info: VideoInfo, max_side: int | None = None, fps: float | None = None,
                max_frames: int | None = None) -> FramePlan:
    """Every input frame with its own timestamp (``fps`` None: rate and duration kept exactly),
    or frames at ``fps`` over the same duration, each showing the latest input frame by then.
    A plan of more than ``max_frames`` (None: the cap ``probe`` was given) is refused before
    it is built."""
    if max_side is not None and max_side < 16:
        raise VideoError(f"--max-side must be at least 16 for a video, got {max_side}")
    width, height = output_size(*info.size, max_side)
    if fps is None:
        if info.seekable:
            return FramePlan(width, height, tuple(range(info.frames)), info.pts, info.time_base, info.rate)
        return FramePlan(width, height, tuple(range(info.frames)), tuple(range(info.frames)),
                         1 / info.rate, info.rate)
    check_fps(fps)
    rate = Fraction(fps).limit_denominator(1001)
    cap = info.max_frames if max_frames is None else max_frames
    seconds = info.duration
    wanted = seconds * float(rate)  # counted before any list is made: a timestamp gap makes it huge
    if not (math.isfinite(wanted) and round(wanted) <= cap):
        raise VideoError(f"{info.name}: {seconds:,.0f} s at {fps:g} fps is {wanted:,.0f} frames, over the "
                         f"{cap:,}-frame limit (--max-frames, RAYSTYLE_MAX_FRAMES)")
    times = info.times()
    count = max(1, round(seconds * rate))
    source = tuple(max(0, bisect.bisect_right(times, float(i / rate) + 1e-6) - 1) for i in range(count))
    start = float(info.pts[0] * info.time_base) if info.seekable else 0.0
    offset = round(start * rate)
    return FramePlan(width, height, source, tuple(offset + i for i in range(count)), 1 / rate, rate)


# -- motion -----------------------------------------------------------------------------------
def grey(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


# The checks of a warped pixel (Ruder et al. 2016, section 3.1, with a photometric one added):
BOUNDARY = (0.01, 0.002)  # motion boundary where |grad u|^2 + |grad v|^2 > 0.01 |w|^2 + 0.002
PHOTO_LEVELS = 16.0  # levels (any channel, after the gain match) the warped previous input may differ by
GAIN_RANGE = (0.5, 2.0)  # a global change of light matched between consecutive frames, at most
CUT_SHARE = 0.4  # a new shot where fewer pixels than this pass the flow and photometric checks


@dataclass(frozen=True)
class Reliability:
    """Where the previous frame, warped along the flow, may stand in for the current one."""

    map_x: np.ndarray  # current (x, y) shows the previous frame at (map_x, map_y)
    map_y: np.ndarray
    consistent: np.ndarray  # bool: forward and backward flows cancel and the point stays inside, or still
    boundary: np.ndarray  # bool: on a motion boundary (the flow's gradient is large), not still
    photometric: np.ndarray  # bool: the warped previous input matches the current one
    gain: float  # current / previous brightness, matched over the consistent pixels
    still: np.ndarray  # bool: no motion taken (it matches better than the flow)

    def mask(self, boundaries: bool = True, photometric: bool = True) -> np.ndarray:
        """float32 0/1: the pixels that pass the checks asked for (the flow's always)."""
        keep = self.consistent.copy()
        if boundaries:
            keep &= ~self.boundary
        if photometric:
            keep &= self.photometric
        return keep.astype(np.float32)

    @property
    def share(self) -> float:
        """The share of pixels that pass the flow and photometric checks: a new shot has few."""
        return float((self.consistent & self.photometric).mean())


class Motion:
    """Optical flow between consecutive frames (OpenCV's DIS, ``preset`` fast) and the warp of
    the previous frame onto the current one, with its reliability checks."""

    def __init__(self, preset: str = "fast"):
        presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
                   "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST, "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        self.dis = cv2.DISOpticalFlow_create(presets[preset])
        self._grid: tuple[np.ndarray, np.ndarray] | None = None

    def _xy(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        if self._grid is None or self._grid[0].shape != (h, w):
            ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
            self._grid = (xs, ys)
        return self._grid

    def between(self, prev: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grey ``prev`` and ``cur`` -> (map_x, map_y, mask): ``cur(x) ~ prev(map(x))``, and mask
        (float32 0/1) where the backward flow is confirmed by the forward flow and stays inside."""
        back = self.dis.calc(cur, prev, None)  # cur(x) ~ prev(x + back(x))
        fwd = self.dis.calc(prev, cur, None)  # prev(y) ~ cur(y + fwd(y))
        h, w = cur.shape
        xs, ys = self._xy(h, w)
        map_x, map_y = xs + back[..., 0], ys + back[..., 1]
        return map_x, map_y, forward_backward(back, fwd, map_x, map_y).astype(np.float32)

    def checks(self, prev: np.ndarray, cur: np.ndarray, prev_grey: np.ndarray | None = None,
               cur_grey: np.ndarray | None = None) -> Reliability:
        """The flow from RGB frame ``cur`` back to ``prev`` (their greys, if already made), no
        motion where that matches better, and the three checks: forward-backward consistency,
        motion boundaries, photometric match (after a global gain match)."""
        prev_grey = grey(prev) if prev_grey is None else prev_grey
        cur_grey = grey(cur) if cur_grey is None else cur_grey
        map_x, map_y, mask = self.between(prev_grey, cur_grey)
        consistent = mask > 0
        xs, ys = self._xy(*cur_grey.shape)
        boundary = motion_boundaries(map_x - xs, map_y - ys)
        moved, still, gain = photometric_errors(prev, cur, map_x, map_y, consistent)
        # where no motion explains the frame better than the flow does (a still background the
        # flow of a moving thing bled into, the flow's noise on a still shot), no motion is
        # taken: nothing is resampled there. Not where the flow leaves the frame: what came
        # into view has no past.
        keep = (still < moved) & inside(map_x, map_y)
        map_x, map_y = np.where(keep, xs, map_x), np.where(keep, ys, map_y)
        matches = np.where(keep, still, moved) <= PHOTO_LEVELS
        return Reliability(map_x, map_y, consistent | keep, boundary & ~keep, matches, gain, keep)

    @staticmethod
    def warp(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
        return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def forward_backward(back: np.ndarray, fwd: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """bool: the backward flow ``back`` is confirmed by the forward flow ``fwd`` (Sundaram et
    al.: the two cancel) and its target ``(map_x, map_y)`` lies inside the frame."""
    fwd_at = cv2.remap(fwd, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    bx, by, fx, fy = back[..., 0], back[..., 1], fwd_at[..., 0], fwd_at[..., 1]
    lx, ly = bx + fx, by + fy  # ~0 where the two flows agree
    agree = lx * lx + ly * ly <= 0.01 * (bx * bx + by * by + fx * fx + fy * fy) + 0.5
    return agree & inside(map_x, map_y)


def inside(map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """bool: the map's target lies inside the frame."""
    h, w = map_x.shape
    return (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)


def motion_boundaries(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """bool: where the flow (u, v) changes fast, |grad u|^2 + |grad v|^2 > 0.01 |w|^2 + 0.002
    (Ruder et al.): the edges of things that move against their background, where the flow
    of one side bleeds into the other."""
    a, b = BOUNDARY
    grad = np.zeros_like(u)
    for f in (u, v):
        for dx, dy in ((1, 0), (0, 1)):  # central differences
            d = cv2.Sobel(f, cv2.CV_32F, dx, dy, ksize=1, scale=0.5, borderType=cv2.BORDER_REPLICATE)
            grad += d * d
    return grad > a * (u * u + v * v) + b


def photometric_errors(prev: np.ndarray, cur: np.ndarray, map_x: np.ndarray, map_y: np.ndarray,
                       consistent: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(moved, still, gain): how far the RGB frame ``prev`` warped along the map (``moved``) and
    as it is (``still``) is from ``cur``, the largest channel's difference (both blurred 3x3
    first), after a global change of light: the previous frame is first scaled by ``gain``,
    the ratio of the two frames' mean brightness over the ``consistent`` pixels (within
    GAIN_RANGE). Over PHOTO_LEVELS, the flow missed something (an occlusion it smoothed over,
    a new shot)."""
    a = cv2.GaussianBlur(prev, (3, 3), 0)
    b = cv2.GaussianBlur(cur, (3, 3), 0)
    warped = cv2.remap(a, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    gain = 1.0
    if consistent.any():
        where = consistent.astype(np.uint8)
        gain = float(np.clip((sum(cv2.mean(b, where)[:3]) + 1.0) / (sum(cv2.mean(warped, where)[:3]) + 1.0),
                             *GAIN_RANGE))
    if abs(gain - 1.0) > 1e-3:
        a, warped = cv2.convertScaleAbs(a, alpha=gain), cv2.convertScaleAbs(warped, alpha=gain)

    def largest(diff: np.ndarray) -> np.ndarray:  # the largest channel's difference, uint8
        return cv2.max(cv2.max(diff[..., 0], diff[..., 1]), diff[..., 2])

    return largest(cv2.absdiff(b, warped)), largest(cv2.absdiff(b, a)), gain


def check_crf(crf: int) -> int:
    """``crf`` if it is a usable x264 quality (0 lossless .. 51), else VideoError (one line)."""
    if not 0 <= crf <= 51:
        raise VideoError(f"--crf must be between 0 (lossless) and 51, got {crf}")
    return crf


def check_fps(fps: float | None) -> float | None:
    """``fps`` if it is a usable --fps (None: the input's timestamps), else VideoError (one line)."""
    if fps is not None and not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
        raise VideoError(f"--fps must be above 0 and at most {MAX_FPS:g}, got {fps:g}")
    return fps


def check_smooth(strength: float) -> float:
    """``strength`` if it is a usable --smooth (0 <= s < 1), else VideoError (one line)."""
    if not (math.isfinite(strength) and 0.0 <= strength < 1.0):
        raise VideoError(f"--smooth must be at least 0 and below 1, got {strength:g}")
    return strength


class Smoother:
    """Temporal smoothing of stylized frames, fed in order: ``smooth(frame, stylized) -> out``.

    ``mode="motion"``: the previous output warped along the input's flow (``Motion.checks``:
    no motion where that explains the frame better), blended where the warp is reliable
    (``strength`` s: ``out = (1 - s m) new + s m warped``; ``m`` is 1 where the flow passes the
    forward-backward check, is off motion boundaries and the warped previous input matches
    the current one, after matching a global change of light); a frame where fewer than
    ``CUT_SHARE`` of the pixels pass starts a new shot: the stylized frame as it is, nothing
    of the previous shot carried on. The warped output takes the input's change of light too
    (``relight``: scaled by the same gain), so a dimming scene does not lag. ``boundaries``,
    ``photometric``, ``cuts``, ``relight``: those steps (all on; off only to measure what each
    does). ``mode="blend"``: plain exponential blending with the previous output (no motion,
    no checks; the baseline); ``strength`` 0: the stylized frame as it is. ``reliable``: the
    share of pixels blended at the last frame; ``cut``: the last frame started a new shot;
    ``cuts``: new shots so far."""

    def __init__(self, strength: float = DEFAULT_SMOOTH, mode: str = "motion", motion: Motion | None = None, *,
                 boundaries: bool = True, photometric: bool = True, cuts: bool = True, relight: bool = True):
        check_smooth(strength)
        if mode not in ("motion", "blend"):
            raise VideoError(f"smoothing mode must be motion or blend, got {mode!r}")
        self.strength, self.mode = strength, mode
        self.motion = motion or (Motion() if mode == "motion" and strength > 0 else None)
        self.boundaries, self.photometric, self.detect_cuts, self.relight = boundaries, photometric, cuts, relight
        self.reliable = 1.0  # share of pixels blended at the last frame
        self.cut = False  # the last frame started a new shot
        self.cuts = 0  # new shots seen
        self._prev: tuple[np.ndarray | None, np.ndarray | None, np.ndarray] | None = None  # input, grey, output

    def reset(self) -> None:
        self._prev = None

    def __call__(self, frame: np.ndarray, stylized: np.ndarray) -> np.ndarray:
        if self.strength == 0.0:
            return stylized
        motion = self.mode == "motion"
        g = grey(frame) if motion else None
        out = stylized
        self.cut = False
        if self._prev is not None and self._prev[2].shape == stylized.shape:
            prev_frame, prev_grey, prev_out = self._prev
            s = self.strength
            if self.mode == "blend":
                mixed = (1 - s) * stylized.astype(np.float32) + s * prev_out.astype(np.float32)
                out = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
            else:
                checks = self.motion.checks(prev_frame, frame, prev_grey, g)
                if self.detect_cuts and checks.share < CUT_SHARE:  # a new shot: start again from it
                    self.cut, self.cuts, self.reliable = True, self.cuts + 1, 0.0
                else:
                    mask = checks.mask(self.boundaries, self.photometric)
                    warped = Motion.warp(prev_out, checks.map_x, checks.map_y).astype(np.float32)
                    if self.relight and checks.gain != 1.0:
                        warped *= checks.gain
                    w = (s * mask)[..., None]
                    mixed = stylized.astype(np.float32) * (1 - w) + warped * w
                    self.reliable = float(mask.mean())
                    out = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
        self._prev = (frame if motion else None, g, out)
        return out


def warmup_frames(smooth: float, tolerance: float = 0.01, cap: int = 32) -> int:
    """Frames of history a chunk needs so its first frame's smoothing state matches one
    sequential pass to within ``tolerance`` (the history fades as ``smooth ** n`` or faster:
    the checks only take weight away, and a new shot drops it), at most ``cap`` (above
    ``smooth`` 0.87 the history left out is then over 1 %: 3.4 % at 0.9)."""
    if smooth <= 0:
        return 0
    return min(cap, math.ceil(math.log(tolerance) / math.log(smooth)))


# -- measuring temporal quality ---------------------------------------------------------------
def reference_flow(prev: np.ndarray, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The measure's own flow, independent of the smoother's: Farneback's (OpenCV), backward
    and forward between grey ``prev`` and ``cur``, with its own forward-backward check ->
    (map_x, map_y, valid float32 0/1), as ``Motion.between`` returns but by another algorithm."""
    args = (None, 0.5, 4, 15, 3, 5, 1.1, 0)  # pyramid 0.5 x 4 levels, 15 px windows, 3 iterations
    back = cv2.calcOpticalFlowFarneback(cur, prev, *args)
    fwd = cv2.calcOpticalFlowFarneback(prev, cur, *args)
    h, w = cur.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x, map_y = xs + back[..., 0], ys + back[..., 1]
    return map_x, map_y, forward_backward(back, fwd, map_x, map_y).astype(np.float32)


class TemporalMeter:
    """Temporal figures of a smoothed video, fed in order: ``add(frame, per_frame, out, flow)``
    with the input frame, its per-frame stylization and the smoothed output.

    - ``flicker``: the warping error, the mean over consecutive frames of mean
      |out_t - W(out_t-1)| (0-255 levels) over the valid pixels, where W warps (bicubic) along
      ``flow``: the true (map_x, map_y, valid) back to the previous frame where known (the
      generated clips of raystyle.infer.synthetic), else ``reference_flow`` (Farneback, its
      own check). Never the smoother's DIS flow and mask: along those, blending by ``s``
      cuts the error by ``1 - s`` whatever the output looks like. Frames with no valid pixel
      (a cut) are left out.
    - ``fidelity``: the mean |out_t - per_frame_t| (0-255 levels), how far smoothing moved
      the output from the per-frame stylization; lower is better. Carrying the first frame
      forward scores a flicker near 0 and a large fidelity cost.
    - ``ghosting``: the mean |out_t - per_frame_t| over the pixels the flow gives no past
      (occluded or disoccluded, come into view, every pixel of a cut frame): there the output
      should be the new stylized frame, and anything else is carried over from what is no
      longer there. Frames where every pixel has a past are left out.
    - ``sharpness``: the mean gradient magnitude of the outputs (``sharpness``)."""

    def __init__(self) -> None:
        self.errors: list[float] = []
        self.costs: list[float] = []
        self.ghosts: list[float] = []
        self.sharp: list[float] = []
        self._prev: tuple[np.ndarray, np.ndarray] | None = None  # (grey input, output)

    def add(self, frame: np.ndarray, per_frame: np.ndarray, out: np.ndarray,
            flow: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
        g = grey(frame)
        o = out.astype(np.float32)
        cost = np.abs(o - per_frame.astype(np.float32)).mean(-1)
        self.costs.append(float(cost.mean()))
        self.sharp.append(sharpness(out))
        if self._prev is not None:
            map_x, map_y, valid = flow if flow is not None else reference_flow(self._prev[0], g)
            total = float(valid.sum())
            if total < valid.size:
                self.ghosts.append(float((cost * (1 - valid)).sum() / (valid.size - total)))
            if total >= 1.0:
                warped = cv2.remap(self._prev[1], map_x, map_y, cv2.INTER_CUBIC,
                                   borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
                self.errors.append(float((np.abs(o - warped).mean(-1) * valid).sum() / total))
        self._prev = (g, out)

    @property
    def flicker(self) -> float:
        return float(np.mean(self.errors)) if self.errors else 0.0

    @property
    def fidelity(self) -> float:
        return float(np.mean(self.costs)) if self.costs else 0.0

    @property
    def ghosting(self) -> float:
        return float(np.mean(self.ghosts)) if self.ghosts else 0.0

    @property
    def sharpness(self) -> float:
        return float(np.mean(self.sharp)) if self.sharp else 0.0

    def figures(self) -> dict[str, float]:
        return {"flicker": self.flicker, "fidelity": self.fidelity, "ghosting": self.ghosting,
                "sharpness": self.sharpness}


def temporal_figures(inputs: Iterable[np.ndarray], per_frame: Iterable[np.ndarray], outputs: Iterable[np.ndarray],
                     flow: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray] | None] | None = None) -> dict[str, float]:
    """{"flicker", "fidelity", "ghosting", "sharpness"} of ``outputs`` (``TemporalMeter``):
    ``flow`` gives each frame's true (map_x, map_y, valid) back to the previous one (None for
    the first frame; None for all: Farneback's flow of ``inputs``)."""
    meter = TemporalMeter()
    frames, styl, outs = list(inputs), list(per_frame), list(outputs)
    flows = [None] * len(frames) if flow is None else list(flow)
    if not len(frames) == len(styl) == len(outs) == len(flows):
        raise ValueError(f"{len(frames)} inputs, {len(styl)} per-frame, {len(outs)} outputs, {len(flows)} flows")
    for frame, y, out, f in zip(frames, styl, outs, flows, strict=True):
        meter.add(frame, y, out, f)
    return meter.figures()


def sharpness(frame: np.ndarray) -> float:
    """Mean gradient magnitude (Sobel on grey, 0-255 levels per pixel)."""
    g = grey(frame).astype(np.float32)
    return float(np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3),
                          cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)).mean() / 8.0)


# -- the pipeline -----------------------------------------------------------------------------
def stylized_frames(source: Source, info: VideoInfo, plan: FramePlan, stylize: FrameFn, *,
                    smooth: float = DEFAULT_SMOOTH, start: int = 0, stop: int | None = None,
                    warmup: int = 0, batch: int = 1, mode: str = "motion",
                    inputs: list[np.ndarray] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(output index, stylized and smoothed frame) for output frames ``[start, stop)`` in order.
    Smoothing starts ``warmup`` input frames before ``start``'s (those are stylized, not
    yielded). ``stylize`` takes a list of RGB frames (up to ``batch``, equal sizes) and returns
    theirs. An input frame shown by several output frames is stylized once. ``inputs``: a list
    the input frame of each yielded output is appended to (for ``temporal_figures``)."""
    stop = plan.frames if stop is None else min(stop, plan.frames)
    if not 0 <= start < stop:
        return
    if batch < 1:
        raise VideoError(f"batch must be at least 1, got {batch}")
    first, steps = start, 0  # back until ``warmup`` earlier input frames (smoothing steps) are in
    while first > 0 and steps < warmup:
        first -= 1
        steps += plan.source[first] != plan.source[first + 1]
    need = plan.source[first:stop]
    wanted = set(need)
    smoother = Smoother(smooth, mode)
    convert = frame_converter(info, plan.width, plan.height)
    k = first  # the next output index
    last: np.ndarray | None = None
    pending: list[tuple[int, np.ndarray]] = []
    held = 0  # bytes of the pending frames: a batch is also cut at BUFFER_BYTES

    def flush() -> Iterator[tuple[int, np.ndarray]]:
        nonlocal k, last, held
        results = stylize([f for _, f in pending])
        if len(results) != len(pending):
            raise VideoError(f"the stylizer returned {len(results)} frames for {len(pending)}")
        for (si, frame), styl in zip(pending, results, strict=True):
            fresh = True
            while k < stop and plan.source[k] == si:
                if fresh:
                    last, fresh = smoother(frame, np.asarray(styl)), False
                if k >= start:
                    if inputs is not None:
                        inputs.append(frame)
                    yield k, last
                k += 1
        pending.clear()
        held = 0

    for si, frame in decode_frames(source, info, need[0], need[-1] + 1, convert=convert, wanted=wanted.__contains__):
        if frame is None:
            continue
        pending.append((si, frame))
        held += frame.nbytes
        if len(pending) >= batch or held >= BUFFER_BYTES:
            yield from flush()
    if pending:
        yield from flush()


class VideoWriter:
    """H.264 (libx264, yuv420p, ``crf``) frames with their timestamps into .mp4/.mov/.mkv; the
    first audio track of ``audio`` (a path or binary file: the input video) is copied along,
    interleaved by time (transcoded to AAC if the container cannot hold its codec)."""

    def __init__(self, path: str | Path, plan: FramePlan, fmt: str, audio: Source | None = None,
                 crf: int = 18, preset: str = "medium", name: str | None = None,
                 audio_container: str | None = None):
        self.name = name or str(path)
        self.container = _open(path, self.name, "w", format=fmt)
        self.time_base = plan.time_base
        try:
            stream = self.container.add_stream("libx264", rate=plan.rate)
            stream.width, stream.height, stream.pix_fmt = plan.width, plan.height, "yuv420p"
            stream.time_base = plan.time_base
            stream.codec_context.time_base = plan.time_base  # else pts are rounded to 1/rate: VFR frames merge
            stream.options = {"crf": str(crf), "preset": preset}
            self.stream = stream
            self.audio = _AudioCopy(self.container, audio, fmt, self.name, audio_container) \
                if audio is not None else None
        except BaseException:
            self.abort()
            raise
        self.frames = 0

    def write(self, frame: np.ndarray, pts: int) -> None:
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts, vf.time_base = pts, self.time_base
        with self._errors():
            for packet in self.stream.encode(vf):
                self.container.mux(packet)
        self.frames += 1
        if self.audio is not None:
            self.audio.until(float(pts * self.time_base) + 0.5)

    def close(self) -> None:
        with self._errors():
            for packet in self.stream.encode():
                self.container.mux(packet)
            if self.audio is not None:
                self.audio.until(math.inf)
                self.audio.close()
            self.container.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Encoder and muxer failures (a full disk, a rejected timestamp) as one-line errors."""
        try:
            yield
        except av.error.FFmpegError as exc:
            raise VideoError(f"{self.name}: cannot encode ({_why(exc)})") from None
        except OSError as exc:
            raise VideoError(f"{self.name}: cannot write ({_why(exc)})") from None

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            if getattr(self, "audio", None) is not None:
                self.audio.close()
        with contextlib.suppress(Exception):
            self.container.close()


class _AudioCopy:
    """The input's first audio stream, muxed into ``out`` up to a given time (copied packets,
    or decoded and encoded as AAC when ``fmt`` cannot hold the codec)."""

    def __init__(self, out, source: Source, fmt: str, name: str, container: str | None = None):
        self.input = _open(source, name, container=container)
        self.name = name
        if not self.input.streams.audio:
            self.input.close()
            raise VideoError(f"{name}: no audio stream to copy")
        self.src = self.input.streams.audio[0]
        if _audio_codec(self.input) is None:
            self.input.close()
            raise VideoError(f"{name}: its audio codec is not one FFmpeg knows")
        codec = self.src.codec_context.name
        allowed = COPY_AUDIO.get(fmt)
        self.copy = allowed is None or codec in allowed
        if self.copy:
            self.dst = out.add_stream_from_template(self.src)
        else:
            rate = self.src.codec_context.sample_rate or 48000
            self.rate, self.next_pts = rate, None  # samples: the track keeps its start time
            self.dst = out.add_stream("aac", rate=rate)
            self.resampler = av.AudioResampler(format="fltp", layout=self.dst.codec_context.layout, rate=rate)
        self.packets = self.input.demux(self.src)
        self.pending = None
        self.done = False

    def until(self, seconds: float) -> None:
        out = self.dst.container
        try:
            while not self.done:
                packet = self.pending or next(self.packets, None)
                self.pending = None
                if packet is None:
                    self.done = True
                    if not self.copy:
                        self._encode(None)
                    return
                if packet.size == 0 or packet.dts is None:
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                if float(ts * packet.time_base) > seconds:
                    self.pending = packet
                    return
                if self.copy:
                    packet.stream = self.dst
                    out.mux(packet)
                else:
                    for frame in packet.decode():
                        self._encode(frame)
        except av.error.FFmpegError as exc:
            raise VideoError(f"{self.name}: cannot copy the audio track ({_why(exc)})") from None

    def _encode(self, frame) -> None:
        if frame is not None and self.next_pts is None and frame.pts is not None and frame.time_base:
            self.next_pts = round(float(frame.pts * frame.time_base) * self.rate)
        frames = self.resampler.resample(frame)
        for f in frames:
            if self.next_pts is None:
                f.pts = None
            else:  # consecutive samples from the first decoded frame's time
                f.pts, f.time_base = self.next_pts, Fraction(1, self.rate)
                self.next_pts += f.samples
            for packet in self.dst.encode(f):
                self.dst.container.mux(packet)
        if frame is None:
            for packet in self.dst.encode(None):
                self.dst.container.mux(packet)

    def close(self) -> None:
        self.input.close()


@dataclass(frozen=True)
class VideoResult:
    input: str
    output: str
    frames: int
    width: int
    height: int
    rate: float  # output frames per second of video
    duration: float  # seconds of video
    seconds: float  # wall time
    audio: bool

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def temp_path(dest: Path) -> Path:
    """A new, empty temporary file beside ``dest`` (a fresh name created exclusively, never an
    existing file or a planted link); the writer fills it and it is renamed over ``dest``."""
    from raystyle.util.storage import create_temp

    fd, tmp = create_temp(dest)
    os.close(fd)
    return tmp


def stylize_video(source: str | Path, dest: str | Path, stylize: FrameFn, *, smooth: float = DEFAULT_SMOOTH,
                  max_side: int | None = None, fps: float | None = None, batch: int = 1, crf: int = 18,
                  max_pixels: int = DEFAULT_MAX_PIXELS, max_frames: int | None = None,
                  max_duration: float | None = None, on_start: Callable[[VideoInfo, FramePlan], None] | None = None,
                  progress: Callable[[int], None] | None = None) -> VideoResult:
    """Stylize the video file ``source`` into ``dest`` (.mp4/.mov/.mkv) frame by frame, streaming.
    ``on_start(info, plan)`` is called once probed (a progress bar's total), ``progress(1)`` per
    frame. The output appears at ``dest`` only when complete (written under a temporary name):
    a frame over ``max_pixels`` stops the clip with nothing written. ``max_frames`` and
    ``max_duration``: ``check_limits``."""
    began = time.perf_counter()
    dest = Path(dest)
    fmt = output_format(dest)
    check_smooth(smooth)  # before anything is opened
    check_crf(crf)
    info = probe(source, max_pixels, max_frames=max_frames, max_duration=max_duration)
    plan = plan_frames(info, max_side, fps)
    if on_start is not None:
        on_start(info, plan)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    writer = VideoWriter(tmp, plan, fmt, audio=source if info.audio else None, crf=crf, name=str(dest),
                         audio_container=info.container)
    try:
        for i, frame in stylized_frames(source, info, plan, stylize, smooth=smooth, batch=batch):
            writer.write(frame, plan.pts[i])
            if progress is not None:
                progress(1)
        writer.close()
        os.replace(tmp, dest)
    except BaseException:
        writer.abort()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return VideoResult(str(source), str(dest), plan.frames, plan.width, plan.height, float(plan.rate),
                       info.duration, time.perf_counter() - began, info.audio is not None)


def read_video(path: str | Path) -> tuple[VideoInfo, list[np.ndarray]]:
    """Every frame of a (short) video as RGB arrays, upright: for tests and benchmarks."""
    info = probe(path)
    convert = frame_converter(info, *info.size)
    return info, [f for _, f in decode_frames(path, info, 0, info.frames, convert=convert)]


def write_pan_clip(path: str | Path, image: np.ndarray, *, frames: int = 24, size: tuple[int, int] = (160, 120),
                   speed: tuple[float, float] = (1.5, 0.5), fps: int = 24, audio: bool = True, crf: int = 20,
                   options: dict[str, str] | None = None, keyframe_every: int | None = None) -> tuple[float, float]:
    """A test clip with known motion: a ``size`` window panning across ``image`` (RGB, larger
    than the window plus the path) by ``speed`` px per frame (sub-pixel, bilinear), H.264 at
    ``fps``, with a 440 Hz AAC tone for the clip's duration when ``audio``. Returns the true
    backward flow (dx, dy): frame t at x shows frame t-1 at x + (dx, dy). ``keyframe_every``: a
    keyframe each N frames, with B-frames (else libx264's default: one keyframe in a short clip)."""
    w, h = size
    dx, dy = speed
    need = (w + abs(dx) * frames + 2, h + abs(dy) * frames + 2)
    if image.shape[1] < need[0] or image.shape[0] < need[1]:
        raise VideoError(f"the image must be at least {need[0]:.0f}x{need[1]:.0f} for this pan")
    fmt = OUTPUT_FORMATS.get(Path(str(path)).suffix.lower())
    out = av.open(str(path), "w", format=fmt, options=options or {})
    stream = out.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.options = {"crf": str(crf)}
    if keyframe_every:
        stream.options = {**stream.options, "g": str(keyframe_every), "keyint_min": str(keyframe_every),
                          "bf": "3", "sc_threshold": "0"}
    tone = out.add_stream("aac", rate=44100) if audio else None
    x0 = w / 2 + 1 + (abs(dx) * frames if dx < 0 else 0)
    y0 = h / 2 + 1 + (abs(dy) * frames if dy < 0 else 0)
    for t in range(frames):
        crop = cv2.getRectSubPix(image, (w, h), (x0 + dx * t, y0 + dy * t))
        for packet in stream.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    if tone is not None:
        rate, size_ = 44100, 1024
        n = int(rate * frames / fps)
        wave = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
        for k in range(0, n, size_):
            part = np.zeros((1, size_), np.float32)
            part[0, : min(size_, n - k)] = wave[k : k + size_]
            frame = av.AudioFrame.from_ndarray(part, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, k
            for packet in tone.encode(frame):
                out.mux(packet)
        for packet in tone.encode():
            out.mux(packet)
    out.close()
    return dx, dy
