"""raystyle.infer.video and `raystyle stylize clip.mp4`: real clips written by the test (a pan across a
photo, so the true motion is known), decoded and encoded with PyAV, stylized with real styles; the
smoother and the temporal figures on the generated clips of raystyle.infer.synthetic (a moving
object, an occlusion, a change of light, a scene cut, a still shot), measured along their true flow."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from skimage import data as skdata

from raystyle.infer import synthetic as S
from raystyle.infer import video as V
from raystyle.infer.generator import Stylizer
from tests.helpers import one_line_error, run

SPEED = (1.5, 0.5)  # px per frame: sub-pixel, both axes


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return cv2.resize(skdata.astronaut(), (640, 640), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def clip(photo, tmp_path_factory) -> Path:
    """24 frames of 160x120 at 24 fps panning by SPEED, with an AAC tone."""
    path = tmp_path_factory.mktemp("clips") / "pan.mp4"
    assert V.write_pan_clip(path, photo, frames=24, speed=SPEED) == SPEED
    return path


@pytest.fixture(scope="module")
def tiny(exported) -> Stylizer:
    return Stylizer("tiny", models_dir=exported.path.parent)


def noisy_style(frames: list[np.ndarray], seed=[0]) -> list[np.ndarray]:  # noqa: B006 (a counter)
    """A 'stylizer' that is pure flicker: the frame inverted plus fresh noise every frame."""
    out = []
    for f in frames:
        seed[0] += 1
        noise = np.random.default_rng(seed[0]).normal(0, 12, f.shape)
        out.append(np.clip(255.0 - f + noise, 0, 255).astype(np.uint8))
    return out


# -- reading and planning ---------------------------------------------------------------------
def test_probe_reads_frames_rate_size_audio(clip):
    info = V.probe(clip)
    assert (info.frames, info.size, info.rate, info.audio, info.rotation) == (24, (160, 120), 24, "aac", 0)
    assert info.duration == pytest.approx(1.0)
    assert info.seekable and list(info.pts) == sorted(info.pts)


def test_plan_keeps_timestamps_or_resamples_by_time(clip):
    info = V.probe(clip)
    same = V.plan_frames(info)
    assert same.source == tuple(range(24)) and same.pts == info.pts and (same.width, same.height) == (160, 120)
    half = V.plan_frames(info, fps=12)
    assert half.frames == 12 and half.source == tuple(range(0, 24, 2)) and half.rate == 12
    double = V.plan_frames(info, fps=48, max_side=81)
    assert double.frames == 48 and double.source[:4] == (0, 0, 1, 1)
    assert (double.width, double.height) == (80, 60)  # within 81, both even
    assert V.output_size(161, 99) == (160, 98)
    for bad in (0, -1, float("nan"), 1000):
        with pytest.raises(V.VideoError, match="--fps"):
            V.plan_frames(info, fps=bad)


@pytest.fixture(scope="module")
def gop_clip(photo, tmp_path_factory) -> Path:
    """Like ``clip`` with a keyframe every 6 frames and B-frames: seeking really seeks."""
    path = tmp_path_factory.mktemp("clips") / "gop.mkv"
    V.write_pan_clip(path, photo, frames=24, speed=SPEED, keyframe_every=6)
    with av.open(str(path)) as c:
        assert sum(p.is_keyframe for p in c.demux(c.streams.video[0]) if p.size) == 4
    return path


def test_chunks_seek_to_the_same_frames(gop_clip):
    info = V.probe(gop_clip)
    convert = V.frame_converter(info, 160, 120)
    whole = [f for _, f in V.decode_frames(gop_clip, info, 0, 24, convert=convert)]
    for first, last in [(13, 19), (6, 8), (23, 24), (1, 24)]:  # mid-GOP, on a keyframe, the last
        part = list(V.decode_frames(gop_clip, info, first, last, convert=convert))
        assert [i for i, _ in part] == list(range(first, last))
        assert all(np.array_equal(f, whole[i]) for i, f in part)


def test_flow_recovers_the_known_pan(clip):
    _, frames = V.read_video(clip)
    map_x, map_y, mask = V.Motion().between(V.grey(frames[10]), V.grey(frames[11]))
    ys, xs = np.mgrid[0:120, 0:160]
    inner = np.s_[8:-8, 8:-8]
    assert (map_x - xs)[inner].mean() == pytest.approx(SPEED[0], abs=0.3)
    assert (map_y - ys)[inner].mean() == pytest.approx(SPEED[1], abs=0.3)
    assert mask[inner].mean() > 0.9
    assert mask[:, -1].mean() < 0.5  # the column the pan brings in has no past: unreliable


def test_rotated_phone_clip_is_turned_upright(tmp_path):
    """A display matrix of 90 degrees clockwise in the track header (as phones write it)."""
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:16, :16] = 255  # a white top-left corner
    path = tmp_path / "flat.mp4"
    out = av.open(str(path), "w")
    s = out.add_stream("libx264", rate=24)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    for _ in range(3):
        for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    out.close()
    raw = path.read_bytes()
    ident = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    rot = struct.pack(">9I", 0, 0x10000, 0, 0xFFFF0000, 0, 0, 0, 0, 0x40000000)
    at = raw.index(ident, raw.index(b"tkhd"))
    (tmp_path / "phone.mp4").write_bytes(raw[:at] + rot + raw[at + 36:])
    info, frames = V.read_video(tmp_path / "phone.mp4")
    assert info.size == (48, 64) and frames[0].shape == (64, 48, 3)
    assert frames[0][:16, -16:].mean() > 200 and frames[0][:16, :16].mean() < 50  # corner now top-right
    V.stylize_video(tmp_path / "phone.mp4", tmp_path / "out.mp4", lambda fs: fs, smooth=0)
    info2, out_frames = V.read_video(tmp_path / "out.mp4")
    assert info2.size == (48, 64) and info2.rotation == 0 and out_frames[0][:16, -16:].mean() > 200


# -- smoothing and the temporal figures -------------------------------------------------------
def figures_of(clip, style, smooth, mode="motion") -> dict[str, float]:
    """The temporal figures of a clip file run through stylized_frames, along Farneback's flow
    (the measure's own, as for any real clip) against the per-frame stylization of that run."""
    info = V.probe(clip)
    inputs: list[np.ndarray] = []
    per_frame: list[np.ndarray] = []

    def recording(frames):
        out = style(frames)
        per_frame.extend(out)
        return out

    outs = [f for _, f in V.stylized_frames(clip, info, V.plan_frames(info), recording, smooth=smooth,
                                            mode=mode, inputs=inputs)]
    assert len(outs) == len(inputs) == len(per_frame) == 24
    return V.temporal_figures(inputs, per_frame, outs)


def test_motion_smoothing_halves_pure_flicker_where_blending_smears(clip):
    """Noise that changes every frame: motion-guided smoothing at 0.6 removes over half of the
    warping error, far closer to the per-frame frames and sharper than exponential blending
    at 0.6 (it averages frames that moved: a smear that hides flicker); at motion's fidelity
    cost, blending (interpolated from per-frame to 0.6) flickers more."""
    per_frame = figures_of(clip, noisy_style, 0.0)
    motion = figures_of(clip, noisy_style, 0.6)
    blend = figures_of(clip, noisy_style, 0.6, "blend")
    assert per_frame["fidelity"] == 0.0
    assert motion["flicker"] < 0.5 * per_frame["flicker"]
    assert motion["fidelity"] < 0.7 * blend["fidelity"] and blend["sharpness"] < motion["sharpness"]
    at = float(np.interp(motion["fidelity"], [0.0, blend["fidelity"]], [per_frame["flicker"], blend["flicker"]]))
    assert motion["flicker"] < 0.8 * at, (motion, blend, per_frame)


def test_smoothing_lowers_the_flicker_of_a_real_style(clip, tiny):
    per_frame = figures_of(clip, tiny.stylize_batch, 0.0)
    smoothed = figures_of(clip, tiny.stylize_batch, 0.6)
    assert per_frame["flicker"] > 0.5  # the tiny generator does flicker on a pan
    assert smoothed["flicker"] < 0.6 * per_frame["flicker"]


@pytest.fixture(scope="module")
def clips() -> dict[str, S.SyntheticClip]:
    """Every generated kind, 160x120, 24 frames, with its true flow."""
    return S.make_clips((160, 120), 24)


def noisy(frames: list[np.ndarray]) -> list[np.ndarray]:
    """noisy_style, the same for the same frames: frame i's noise is seeded by i."""
    return [np.clip(255.0 - f + np.random.default_rng(i).normal(0, 12, f.shape), 0, 255).astype(np.uint8)
            for i, f in enumerate(frames)]


def smoothed(clip: S.SyntheticClip, styl: list[np.ndarray], smooth=0.6, start=0, **kw) -> list[np.ndarray]:
    smoother = V.Smoother(smooth, **kw)
    return [smoother(f, y) for f, y in zip(clip.frames[start:], styl[start:], strict=True)]


def test_generated_clips_carry_their_true_flow(clips):
    """Frame t-1 warped along the true flow is frame t wherever the flow is valid (light
    matched in ``lighting``; sensor noise in ``static``); occlusions, the edges that come into
    view and the cut frame are not valid."""
    for kind, clip in clips.items():
        assert len(clip.frames) == len(clip.flows) == 24 and clip.size == (160, 120) and clip.flows[0] is None
        for t in range(1, 24):
            f = clip.flows[t]
            if t in clip.cuts:
                assert f.valid.max() == 0
                continue
            warped = cv2.remap(clip.frames[t - 1], f.map_x, f.map_y, cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
            gain = clip.gains[t] / clip.gains[t - 1] if clip.gains else 1.0
            err = np.abs(warped * gain - clip.frames[t]).mean(-1)
            assert (err * f.valid).sum() / f.valid.sum() < (4.0 if kind == "static" else 1.0), (kind, t)
    assert clips["cut"].cuts == (12,) and clips["cut"].shots() == [(0, 12), (12, 24)]
    hidden = 1 - clips["occlusion"].flows[12].valid[5:-5, 5:-5]  # inside the frame: the bar's wake
    assert 0.03 < hidden.mean() < 0.2
    assert min(clips["lighting"].gains) < 0.5


def test_the_flicker_measure_has_its_own_flow(clips):
    """The measure never uses the smoother's DIS flow: along the true flow where known, else
    along Farneback's, which recovers the pan as well and agrees with the truth."""
    clip = clips["pan"]
    g0, g1 = V.grey(clip.frames[10]), V.grey(clip.frames[11])
    map_x, map_y, valid = V.reference_flow(g0, g1)
    dis_x, _, _ = V.Motion().between(g0, g1)
    ys, xs = np.mgrid[0:120, 0:160]
    inner = np.s_[8:-8, 8:-8]
    assert (map_x - xs)[inner].mean() == pytest.approx(S.PAN[0], abs=0.1)
    assert (map_y - ys)[inner].mean() == pytest.approx(S.PAN[1], abs=0.1)
    assert valid[inner].mean() > 0.9 and valid[:, -1].mean() < 0.5  # the column the pan brings in
    assert np.abs(map_x - dis_x)[inner].mean() > 0.02  # another algorithm's flow, not DIS's
    for kind in ("pan", "object"):
        styl = noisy(clips[kind].frames)
        true = V.temporal_figures(clips[kind].frames, styl, styl, clips[kind].flows)["flicker"]
        farneback = V.temporal_figures(clips[kind].frames, styl, styl)["flicker"]
        assert farneback == pytest.approx(true, rel=0.1)


def test_flicker_along_the_true_flow_is_what_the_clip_holds(clips):
    """The input itself, warped along its true flow, does not flicker (only interpolation is
    left); fresh noise each frame flickers by its own size; a wrong flow makes a still output
    flicker."""
    clip = clips["object"]
    h, w = 120, 160
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    assert V.temporal_figures(clip.frames, clip.frames, clip.frames, clip.flows)["flicker"] < 1.0
    styl = noisy(clip.frames)
    assert 9 < V.temporal_figures(clip.frames, styl, styl, clip.flows)["flicker"] < 16  # |N(0,12) - N(0,12)|
    still = [None] + [(xs, ys, np.ones((h, w), np.float32))] * 23  # as if nothing moved
    assert V.temporal_figures(clip.frames, clip.frames, clip.frames, still)["flicker"] > 8


def test_carrying_the_first_frame_forward_is_not_rewarded(clips):
    """The first stylized frame carried forward along the true flow scores no flicker at all,
    and the largest fidelity cost: smoothing is judged by both figures together. Stronger
    smoothing trades one for the other, and the measure sees it."""
    clip = clips["object"]
    styl = noisy(clip.frames)
    frozen = [styl[0]]
    for f in clip.flows[1:]:
        frozen.append(cv2.remap(frozen[-1], f.map_x, f.map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE))
    carried = V.temporal_figures(clip.frames, styl, frozen, clip.flows)
    per_frame = V.temporal_figures(clip.frames, styl, styl, clip.flows)
    runs = [V.temporal_figures(clip.frames, styl, smoothed(clip, styl, s), clip.flows) for s in (0.3, 0.6, 0.9)]
    assert carried["flicker"] < 0.05 * per_frame["flicker"]
    assert carried["fidelity"] > 15 and carried["fidelity"] > 3 * runs[1]["fidelity"]
    assert [r["flicker"] for r in runs] == sorted((r["flicker"] for r in runs), reverse=True)
    assert [r["fidelity"] for r in runs] == sorted(r["fidelity"] for r in runs)
    assert runs[1]["flicker"] < 0.5 * per_frame["flicker"]


def test_a_scene_cut_starts_the_smoothing_again(clips, tmp_path):
    """At a hard cut the output is the new shot's stylized frame as it is, and every later
    frame is what smoothing the new shot alone gives: nothing of the previous shot is left.
    Without the reset the previous shot shows through. Also through an H.264 file."""
    clip = clips["cut"]
    k = clip.cuts[0]
    styl = noisy(clip.frames)
    smoother = V.Smoother(0.6)
    outs = []
    for t, (f, y) in enumerate(zip(clip.frames, styl, strict=True)):
        outs.append(smoother(f, y))
        assert smoother.cut == (t == k)
    assert smoother.cuts == 1
    assert np.array_equal(outs[k], styl[k])
    fresh = smoothed(clip, styl, start=k)
    assert all(np.array_equal(a, b) for a, b in zip(outs[k:], fresh, strict=True))
    assert not np.array_equal(outs[k + 1], styl[k + 1])  # the new shot is smoothed as usual
    kept = smoothed(clip, styl, cuts=False)  # what the reset prevents: pixels of the old shot that
    assert not np.array_equal(kept[k], styl[k])  # pass the checks by chance (all, without them)
    assert np.abs(smoothed(clip, styl, cuts=False, photometric=False)[k].astype(float) - styl[k]).mean() > 2

    path = S.write_clip(tmp_path / "cut.mp4", clip)
    info, frames = V.read_video(path)
    got = dict(V.stylized_frames(path, info, V.plan_frames(info), lambda fs: [255 - f for f in fs]))
    assert np.array_equal(got[k], 255 - frames[k])
    again = V.Smoother(V.DEFAULT_SMOOTH)
    assert all(np.array_equal(got[t], again(frames[t], 255 - frames[t])) for t in range(k, 24))


def test_boundary_and_photometric_checks_mask_the_occlusions(clips):
    """The bar passing in front of the photo: the smoother's checks leave out most of what the
    bar uncovers (the true mask says it has no past), which the forward-backward check alone
    lets through; both checks catch some; the rest of the frame stays blended. Through the
    smoother, the output there stays the new stylized frame (the ghosting figure)."""
    clip = clips["occlusion"]
    motion = V.Motion()
    caught: dict[str, list[float]] = {"flow": [], "boundary": [], "photometric": [], "all": []}
    kept = []
    for t in range(1, 24):
        checks = motion.checks(clip.frames[t - 1], clip.frames[t])
        valid = clip.flows[t].valid > 0
        hidden = cv2.erode((~valid).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # no past, off the edges
        hidden[:3], hidden[-3:], hidden[:, :3], hidden[:, -3:] = False, False, False, False
        for name, mask in (("flow", checks.mask(False, False)), ("boundary", checks.mask(True, False)),
                           ("photometric", checks.mask(False, True)), ("all", checks.mask())):
            caught[name].append(float((mask[hidden] == 0).mean()))
        kept.append(float(checks.mask()[valid].mean()))
    share = {name: np.mean(v) for name, v in caught.items()}
    assert share["flow"] < 0.3 and share["all"] > 0.75, share
    assert share["boundary"] > share["flow"] + 0.05 and share["photometric"] > share["flow"] + 0.4, share
    assert np.mean(kept) > 0.8
    styl = noisy(clip.frames)
    with_checks = V.temporal_figures(clip.frames, styl, smoothed(clip, styl), clip.flows)
    without = V.temporal_figures(clip.frames, styl, smoothed(clip, styl, boundaries=False, photometric=False),
                                 clip.flows)
    assert with_checks["ghosting"] < 0.3 * without["ghosting"]


def test_a_change_of_light_is_not_a_cut(clips, monkeypatch):
    """The light dims to 45 %: no frame is taken for a new shot, the warped frames pass the
    photometric check (the gain is matched), and the smoothed output follows the light
    instead of lagging behind it. A sudden step of 40 % too; without the gain match it
    would be a cut."""
    clip = clips["lighting"]
    smoother = V.Smoother(0.6)
    outs, reliable = [], []
    for f in clip.frames:
        outs.append(smoother(f, f))  # the frames as their own "stylization": what lags is the light
        reliable.append(smoother.reliable)
    assert smoother.cuts == 0 and min(reliable) > 0.8
    lagging = smoothed(clip, clip.frames, relight=False)
    follows = V.temporal_figures(clip.frames, clip.frames, outs, clip.flows)["fidelity"]
    lags = V.temporal_figures(clip.frames, clip.frames, lagging, clip.flows)["fidelity"]
    assert follows < 0.5 * lags
    a = clip.frames[5]
    b = np.clip(clip.frames[6] * 0.6, 0, 255).astype(np.uint8)
    checks = V.Motion().checks(a, b)
    assert checks.share > 0.8 and checks.gain == pytest.approx(0.6, abs=0.03)
    monkeypatch.setattr(V, "GAIN_RANGE", (1.0, 1.0))
    assert V.Motion().checks(a, b).share < V.CUT_SHARE


def test_smooth_zero_is_per_frame_and_bad_values_are_refused(clip, tiny):
    info = V.probe(clip)
    plan = V.plan_frames(info)
    _, frames = V.read_video(clip)
    got = [f for _, f in V.stylized_frames(clip, info, plan, tiny.stylize_batch, smooth=0)]
    assert all(np.array_equal(g, tiny.stylize(f)) for g, f in zip(got, frames, strict=True))
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(V.VideoError, match="--smooth"):
            V.Smoother(bad)


def test_warmup_makes_a_chunk_match_the_sequential_pass(clip, tiny):
    info = V.probe(clip)
    plan = V.plan_frames(info)
    whole = dict(V.stylized_frames(clip, info, plan, tiny.stylize_batch, smooth=0.6))
    warm = V.warmup_frames(0.6)
    assert 0.6 ** warm <= 0.01 and V.warmup_frames(0) == 0
    cold = dict(V.stylized_frames(clip, info, plan, tiny.stylize_batch, smooth=0.6, start=12, stop=18))
    warmed = dict(V.stylized_frames(clip, info, plan, tiny.stylize_batch, smooth=0.6, start=12, stop=18,
                                    warmup=warm))
    assert sorted(warmed) == list(range(12, 18))

    def err(frames):
        return max(np.abs(frames[i].astype(int) - whole[i]).mean() for i in frames)

    assert err(warmed) < 0.5 < err(cold)


def test_warmup_counts_input_frames_when_fps_repeats_them(clip):
    """--fps 48 on a 24 fps clip shows each input frame twice: the warm-up still covers
    ``warmup`` earlier input frames (smoothing steps), not ``warmup`` output frames."""
    info = V.probe(clip)
    plan = V.plan_frames(info, fps=48)
    seen: list[int] = []

    def count(frames):
        seen.extend(int(f.mean() * 1000) for f in frames)  # one entry per stylized input frame
        return frames

    out = dict(V.stylized_frames(clip, info, plan, count, start=30, stop=34, warmup=10))
    assert sorted(out) == [30, 31, 32, 33]
    assert len(seen) == 10 + 2  # input frames 5..14: ten before frame 15 (output 30), then 15, 16


# -- the whole file ---------------------------------------------------------------------------
def test_output_keeps_rate_size_duration_and_audio(clip, tiny, tmp_path):
    result = V.stylize_video(clip, tmp_path / "out.mp4", tiny.stylize_batch)
    assert (result.frames, result.width, result.height, result.rate, result.audio) == (24, 160, 120, 24.0, True)
    src, out = V.probe(clip), V.probe(tmp_path / "out.mp4")
    assert (out.frames, out.size, out.rate, out.codec, out.audio) == (24, (160, 120), 24, "h264", "aac")
    assert out.duration == pytest.approx(src.duration, abs=1e-6)
    with av.open(str(clip)) as a, av.open(str(tmp_path / "out.mp4")) as b:
        sa, sb = a.streams.audio[0], b.streams.audio[0]
        assert float(sb.duration * sb.time_base) == pytest.approx(float(sa.duration * sa.time_base), abs=0.03)
        assert sb.codec_context.sample_rate == sa.codec_context.sample_rate
    _, frames = V.read_video(tmp_path / "out.mp4")
    styl = tiny.stylize(V.read_video(clip)[1][0])
    assert np.abs(frames[0].astype(int) - styl).mean() < 6  # the first frame, through H.264
    assert not list(tmp_path.glob(f"*{V.TMP_SUFFIX}"))


@pytest.mark.parametrize("start", [0, 8000])
def test_audio_the_container_cannot_hold_is_transcoded(photo, tmp_path, start):
    """PCM audio in .mkv -> .mp4: AAC in the output, same length, same start (in sync)."""
    path = tmp_path / "pcm.mkv"
    out = av.open(str(path), "w")
    s = out.add_stream("libx264", rate=24)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    a = out.add_stream("pcm_s16le", rate=16000)
    for _ in range(24):
        for p in s.encode(av.VideoFrame.from_ndarray(photo[:48, :64].copy(), format="rgb24")):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    for k in range(0, 16000, 1000):
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1000), np.int16), format="s16", layout="mono")
        f.sample_rate, f.pts = 16000, start + k
        for p in a.encode(f):
            out.mux(p)
    for p in a.encode():
        out.mux(p)
    out.close()
    V.stylize_video(path, tmp_path / "out.mp4", lambda fs: fs, smooth=0)
    assert V.probe(tmp_path / "out.mp4").audio == "aac"
    with av.open(str(tmp_path / "out.mp4")) as c:
        st = c.streams.audio[0]
        assert float(st.duration * st.time_base) == pytest.approx(1.0, abs=0.1)
        first = next(p for p in c.demux(st) if p.size)
        priming = 1024 / 16000  # AAC's encoder delay: one frame before the start, hidden by players
        assert float(first.pts * first.time_base) == pytest.approx(start / 16000 - priming, abs=0.005)


def test_memory_does_not_grow_with_the_length(photo, tmp_path):
    """Frames stream: a clip 4x as long peaks at the same Python-side memory."""
    peaks = []
    for n in (12, 48):
        path = tmp_path / f"c{n}.mp4"
        V.write_pan_clip(path, photo, frames=n, size=(96, 64), audio=False)
        tracemalloc.start()
        V.stylize_video(path, tmp_path / f"o{n}.mp4", lambda fs: [255 - f for f in fs], smooth=0.5)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    frame = 96 * 64 * 3
    assert peaks[1] < peaks[0] + 8 * frame, peaks


def vfr_clip(path: Path, photo: np.ndarray, times_ms: list[int]) -> None:
    """Frames at irregular times (variable frame rate, as phones write in low light)."""
    out = av.open(str(path), "w")
    s = out.add_stream("libx264", rate=24)
    s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
    s.time_base = s.codec_context.time_base = Fraction(1, 1000)
    for k, t in enumerate(times_ms):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo[k * 3:k * 3 + 64, :96]), format="rgb24")
        vf.pts, vf.time_base = t, Fraction(1, 1000)
        for p in s.encode(vf):
            out.mux(p)
    for p in s.encode():
        out.mux(p)
    out.close()


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_frame_rate_keeps_every_frame_at_its_time(photo, tmp_path, suffix):
    times = [0, 40, 70, 130, 150, 200, 260, 300, 333, 400, 480]
    vfr_clip(tmp_path / f"vfr{suffix}", photo, times)
    src = V.probe(tmp_path / f"vfr{suffix}")
    assert src.frames == 11 and [round(t * 1000) for t in src.times()] == times
    V.stylize_video(tmp_path / f"vfr{suffix}", tmp_path / f"out{suffix}", lambda fs: fs, smooth=0.5)
    out = V.probe(tmp_path / f"out{suffix}")
    assert out.frames == 11 and [round(t * 1000) for t in out.times()] == times


def test_a_lossless_trim_is_read_as_players_show_it(clip, tmp_path):
    """A lossless trim: the first 3 frames stay in the file (the next ones need them) and an
    edit list hides them; not a truncated file."""
    trimmed = tmp_path / "trim.mp4"
    with av.open(str(clip)) as src, av.open(str(trimmed), "w") as out:
        vs = src.streams.video[0]
        o = out.add_stream_from_template(vs)
        shift = int(Fraction(3, 24) / vs.time_base)  # 3 frames before time 0: discarded when read
        for p in src.demux(vs):
            if p.dts is not None:
                p.pts, p.dts, p.stream = p.pts - shift, p.dts - shift, o
                out.mux(p)
    with av.open(str(trimmed)) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
    if len(packets) != 24 or not packets[0].is_keyframe:  # PyAV 14's mp4 muxer loses the keyframe flag
        pytest.skip(f"PyAV {av.__version__} cannot write the trimmed test file (its reader handles one)")
    assert sum(p.is_discard for p in packets) == 3
    assert V.probe(trimmed).frames == 21
    assert V.stylize_video(trimmed, tmp_path / "o1.mp4", lambda fs: fs).frames == 21


def test_late_tracks_and_unknown_audio_are_read(photo, tmp_path):
    """Valid files that look odd: a Matroska video track starting at 0.5 s (not truncated),
    an audio track FFmpeg does not know (left out, the video still made)."""
    late = tmp_path / "late.mkv"
    vfr_clip(late, photo, [500 + 40 * k for k in range(12)])
    assert V.probe(late).frames == 12
    assert V.stylize_video(late, tmp_path / "o2.mkv", lambda fs: fs).frames == 12

    mkv = tmp_path / "tone.mkv"
    V.write_pan_clip(mkv, photo, frames=12, size=(96, 64))
    raw = mkv.read_bytes()
    assert raw.count(b"A_AAC") == 1
    (tmp_path / "zzz.mkv").write_bytes(raw.replace(b"A_AAC", b"A_ZZZ"))
    info = V.probe(tmp_path / "zzz.mkv")
    assert (info.frames, info.audio) == (12, None)
    result = V.stylize_video(tmp_path / "zzz.mkv", tmp_path / "o3.mkv", lambda fs: fs)
    assert result.frames == 12 and not result.audio


def test_encoder_errors_are_one_line_errors(clip, tmp_path):
    info = V.probe(clip)
    writer = V.VideoWriter(tmp_path / "dup.mp4", V.plan_frames(info), "mp4")
    frame = np.zeros((120, 160, 3), np.uint8)
    with pytest.raises(V.VideoError, match=r"dup.mp4: cannot encode \("):
        for _ in range(40):  # the same timestamp again and again: the encoder refuses
            writer.write(frame, 5)
        writer.close()
    writer.abort()


def test_a_failure_leaves_no_output(clip, tmp_path):
    def broken(frames):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        V.stylize_video(clip, tmp_path / "out.mp4", broken)
    assert list(tmp_path.iterdir()) == []


# -- hostile inputs ---------------------------------------------------------------------------
def hostile(tmp_path: Path, photo: np.ndarray) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected message part)."""
    files = {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 50)
    files["not a video"] = (tmp_path / "text.mp4", "not a video, or damaged")
    (tmp_path / "empty.mp4").write_bytes(b"")
    files["empty"] = (tmp_path / "empty.mp4", "not a video, or damaged")
    whole = tmp_path / "whole.mp4"
    V.write_pan_clip(whole, photo, frames=24, audio=False)
    raw = whole.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(raw[: len(raw) // 2])  # index at the end: gone
    files["truncated"] = (tmp_path / "cut.mp4", "not a video, or damaged")
    fast = tmp_path / "fast.mp4"  # index first (faststart): the index says 24 frames
    V.write_pan_clip(fast, photo, frames=24, audio=False, options={"movflags": "faststart"})
    raw = fast.read_bytes()
    (tmp_path / "fastcut.mp4").write_bytes(raw[: len(raw) * 6 // 10])
    files["truncated after its index"] = (tmp_path / "fastcut.mp4", "truncated")
    mkv = tmp_path / "clip.mkv"
    V.write_pan_clip(mkv, photo, frames=24, audio=False)
    raw = mkv.read_bytes()
    (tmp_path / "mkvcut.mkv").write_bytes(raw[: len(raw) * 6 // 10])
    files["truncated matroska"] = (tmp_path / "mkvcut.mkv", "truncated")
    assert raw.count(b"V_MPEG4/ISO/AVC") == 1
    (tmp_path / "codec.mkv").write_bytes(raw.replace(b"V_MPEG4/ISO/AVC", b"V_RAYSTYLE/NONE"))
    files["unknown codec"] = (tmp_path / "codec.mkv", "not one FFmpeg can decode")
    audio_only = tmp_path / "audio.mp4"
    out = av.open(str(audio_only), "w")
    a = out.add_stream("aac", rate=44100)
    f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    f.sample_rate, f.pts = 44100, 0
    for p in [*a.encode(f), *a.encode()]:
        out.mux(p)
    out.close()
    files["no video stream"] = (audio_only, "no video stream")
    nothing = tmp_path / "noframes.mkv"  # a video track without a single frame (audio only)
    out = av.open(str(nothing), "w")
    s = out.add_stream("libx264", rate=24)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    a = out.add_stream("aac", rate=44100)
    for p in [*a.encode(f), *a.encode()]:
        out.mux(p)
    out.close()
    files["zero frames"] = (nothing, "no video frames")
    return files


def test_hostile_inputs_are_one_line_errors(exported, photo, tmp_path, capsys):
    models = str(exported.path.parent)
    for what, (path, message) in hostile(tmp_path / "in", photo).items():
        line = one_line_error(["stylize", str(path), "--style", "tiny", "--models-dir", models,
                               "-o", str(tmp_path / "out.mp4")], capsys)
        assert message in line and path.name in line, (what, line)
    assert not (tmp_path / "out.mp4").exists()


def test_frames_over_the_pixel_cap_are_refused(exported, clip, tmp_path):
    env = {**os.environ, "RAYSTYLE_MAX_PIXELS": "10000"}  # 160x120 = 19,200 px
    proc = subprocess.run([sys.executable, "-m", "raystyle", "stylize", str(clip), "--style", "tiny",
                           "--models-dir", str(exported.path.parent), "-o", str(tmp_path / "o.mp4")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "160x120 frames (19,200 pixels) are over the 10,000-pixel limit" in proc.stderr


# -- the command line -------------------------------------------------------------------------
def test_cli_stylizes_a_video_with_progress(exported, clip, tmp_path, capsys):
    rc, out, err = run(["stylize", str(clip), "--style", "tiny", "--models-dir", str(exported.path.parent),
                        "-o", str(tmp_path / "out.mp4"), "--fps", "12", "--max-side", "80"], capsys)
    assert rc == 0, err
    assert "out.mp4 (80x60, 12 frames at 12 fps, audio copied; " in out, out  # not the input's 24 frames
    assert "frame/s" in err and "12/12" in err  # tqdm: rate and total
    info = V.probe(tmp_path / "out.mp4")
    assert (info.frames, info.size, info.rate) == (12, (80, 60), 12)
    assert info.duration == pytest.approx(1.0)


def test_cli_video_json_and_folder_outputs(exported, clip, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.mov").write_bytes(clip.read_bytes())
    (folder / "b.webm.avi").write_bytes(clip.read_bytes())  # any container FFmpeg reads; written as .mp4
    rc, out, err = run(["stylize", str(folder), "--style", "tiny", "--models-dir", str(exported.path.parent),
                        "-o", str(tmp_path / "out"), "--json", "--smooth", "0"], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert {Path(r["output"]).relative_to(tmp_path / "out").as_posix() for r in rows} == {"sub/a.mov", "b.webm.mp4"}
    assert all(r["frames"] == 24 and r["audio"] for r in rows)
    assert "frame/s" not in err


def test_cli_refuses_two_inputs_for_one_output(exported, clip, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(clip.read_bytes())
    (folder / "a.webm").write_bytes(clip.read_bytes())  # both would be out/a.mp4
    line = one_line_error(["stylize", str(folder), "--style", "tiny", "--models-dir", str(exported.path.parent),
                           "-o", str(tmp_path / "out")], capsys)
    assert "would both be written to" in line and "a.mp4" in line
    assert not (tmp_path / "out").exists()


def test_cli_video_option_errors(exported, clip, tmp_path, capsys):
    models = str(exported.path.parent)
    base = ["stylize", str(clip), "--style", "tiny", "--models-dir", models]
    assert "--smooth must be" in one_line_error([*base, "--smooth", "1", "-o", str(tmp_path / "a.mp4")], capsys)
    assert "--fps must be" in one_line_error([*base, "--fps", "0", "-o", str(tmp_path / "a.mp4")], capsys)
    assert "--fps must be" in one_line_error(["stylize", str(clip), str(clip), "--style", "tiny", "--models-dir",
                                              models, "--fps", "0", "-o", str(tmp_path / "many")], capsys)  # once
    assert ".mp4, .mov or .mkv" in one_line_error([*base, "-o", str(tmp_path / "a.png")], capsys)
    assert "tile must be" in one_line_error([*base, "--tile", "0", "-o", str(tmp_path / "a.mp4")], capsys)
    assert ".mp4, .mov or .mkv" in one_line_error([*base, "-o", str(tmp_path / "a.webm")], capsys)
    assert "stdout" in one_line_error([*base, "-o", "-"], capsys)
    photo = next((exported.path.parent).rglob("*.onnx"))  # any non-video input: --fps means nothing
    assert "are for videos" in one_line_error(["stylize", str(photo), "--style", "tiny", "--models-dir", models,
                                               "--fps", "12"], capsys)


def test_cli_arbitrary_style_video(arbitrary_style, clip, photo, tmp_path, capsys):
    painting = tmp_path / "painting.png"
    cv2.imwrite(str(painting), cv2.cvtColor(photo[::-1], cv2.COLOR_RGB2BGR))
    rc, out, err = run(["stylize", str(clip), "--style", "anystyle", "--models-dir",
                        str(arbitrary_style.path.parent), "--style-image", str(painting),
                        "--alpha", "0.8", "-o", str(tmp_path / "o.mkv")], capsys)
    assert rc == 0, err
    info = V.probe(tmp_path / "o.mkv")
    assert (info.frames, info.size, info.audio) == (24, (160, 120), "aac")


def test_video_module_needs_neither_torch_nor_ray():
    """Serve replicas and batch actors run it with ONNX Runtime only."""
    code = "import sys, raystyle.infer.video; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
