"""Hostile videos for raystyle.infer.video, `raystyle stylize` and the batch driver: files that
make FFmpeg read other files or the network (concat lists, playlists, SDP, names like URLs),
streams whose frames grow past the pixel cap after a small header, timestamp gaps that would
plan billions of frames. Each clip is a few frames of 32x32 written here with PyAV; the style
is an identity ONNX graph (no training), so each test takes seconds."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from raystyle.infer import video as V
from tests.helpers import SIDE, h264_packets, mkv_of, one_line_error, run, small_clip


def stylize(path: Path, identity_models: Path, out: Path, *extra: str) -> list[str]:
    return ["stylize", str(path), "--style", "ident", "--models-dir", str(identity_models), "-o", str(out), *extra]


# -- opened as data: never a playlist, another file or a URL --------------------------------
def test_lists_playlists_and_non_videos_are_one_line_refusals(identity_models, noise_photo, tmp_path, capsys, monkeypatch):
    """An ffconcat list named evil.mp4 must not stylize secret.png into the output (FFmpeg's
    concat demuxer would read it, relative to the working directory for a file object too);
    HLS and SDP text, an MPEG-TS stream, an audio-only file and a cut clip: one line each."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.fromarray(noise_photo[:SIDE, :SIDE]).save(tmp_path / "secret.png")
    (tmp_path / "evil.mp4").write_text("ffconcat version 1.0\nfile secret.png\n")
    line = one_line_error(stylize(tmp_path / "evil.mp4", identity_models, tmp_path / "out.mp4"), capsys)
    assert "evil.mp4: not a video" in line and "MP4/MOV/M4V, Matroska/WebM or AVI" in line, line
    assert not (tmp_path / "out.mp4").exists()
    with open(tmp_path / "evil.mp4", "rb") as f, pytest.raises(V.VideoError, match="not a video"):
        V.probe(f, name="bucket/evil.mp4")  # a bucket's file object: the same refusal

    (tmp_path / "hls.mp4").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nsecret.png\n"
                                      "#EXT-X-ENDLIST\n")
    (tmp_path / "sdp.mp4").write_text("v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
                                      "m=video 5004 RTP/AVP 96\na=rtpmap:96 H264/90000\n")
    clip = small_clip(tmp_path / "clip.mp4", noise_photo)
    with av.open(str(clip)) as src, av.open(str(tmp_path / "ts.mp4"), "w", format="mpegts") as out:
        o = out.add_stream_from_template(src.streams.video[0])
        for p in src.demux(src.streams.video[0]):
            if p.dts is not None:
                p.stream = o
                out.mux(p)
    with av.open(str(tmp_path / "audio.mp4"), "w") as out:
        a = out.add_stream("aac", rate=44100)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate, f.pts = 44100, 0
        for p in [*a.encode(f), *a.encode()]:
            out.mux(p)
    mkv = small_clip(tmp_path / "whole.mkv", noise_photo, frames=24)
    (tmp_path / "cut.mkv").write_bytes(mkv.read_bytes()[: mkv.stat().st_size * 6 // 10])
    for name, message in (("hls.mp4", "not a video"), ("sdp.mp4", "not a video"), ("ts.mp4", "not a video"),
                          ("audio.mp4", "no video stream"), ("cut.mkv", "truncated")):
        line = one_line_error(stylize(tmp_path / name, identity_models, tmp_path / "out.mp4"), capsys)
        assert f"{name}: {message}" in line, (name, line)
        assert not (tmp_path / "out.mp4").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if "raystyle-tmp" in p.name) == []


def test_file_names_like_urls_are_files_and_open_no_connection(identity_models, noise_photo, tmp_path, capsys, monkeypatch):
    """`raystyle stylize .` over clips named http:127.0.0.1:PORT.mp4 and tcp:127.0.0.1:PORT.mp4:
    FFmpeg takes a relative name's prefix for a protocol; they must be read as the files."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    seen: list[str] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            seen.append("connection")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    folder = tmp_path / "in"
    folder.mkdir()
    names = [f"http:127.0.0.1:{port}.mp4", f"tcp:127.0.0.1:{port}.mp4"]
    for name in names:
        small_clip(folder / name, noise_photo)
    monkeypatch.chdir(folder)
    try:
        for name in names:
            assert V.probe(name).frames == 6
        rc, out, err = run(["stylize", ".", "--style", "ident", "--models-dir", str(identity_models),
                            "-o", str(tmp_path / "out"), "--smooth", "0"], capsys)
    finally:
        done.set()
        thread.join(timeout=5)
        listener.close()
    assert seen == [], "FFmpeg opened a connection for a file name"
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)


def test_unlisted_codecs_are_refused_and_unlisted_audio_left_out(noise_photo, tmp_path):
    png = tmp_path / "png.mov"  # PNG frames in a MOV: a codec FFmpeg decodes, not on the list
    with av.open(str(png), "w") as out:
        s = out.add_stream("png", rate=24)
        s.width, s.height, s.pix_fmt = SIDE, SIDE, "rgb24"
        for i in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(noise_photo[i:i + SIDE, :SIDE].copy(), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    with pytest.raises(V.VideoError, match="png.mov: its video codec png is not one raystyle reads"):
        V.probe(png)

    odd = tmp_path / "adpcm.avi"  # MPEG-4 video with IMA ADPCM audio: the track is left out
    with av.open(str(odd), "w") as out:
        s = out.add_stream("mpeg4", rate=24)
        s.width, s.height, s.pix_fmt = SIDE, SIDE, "yuv420p"
        a = out.add_stream("adpcm_ima_wav", rate=22050)
        for i in range(6):
            for p in s.encode(av.VideoFrame.from_ndarray(noise_photo[i:i + SIDE, :SIDE].copy(), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
        tone = av.AudioFrame.from_ndarray(np.zeros((1, 2041), np.int16), format="s16", layout="mono")
        tone.sample_rate, tone.pts = 22050, 0
        for p in [*a.encode(tone), *a.encode()]:
            out.mux(p)
    info = V.probe(odd)
    assert (info.frames, info.codec, info.audio, info.container) == (6, "mpeg4", None, "avi")
    result = V.stylize_video(odd, tmp_path / "o.mp4", lambda fs: fs, smooth=0)
    assert result.frames == 6 and not result.audio


# -- caps that hold for every frame -----------------------------------------------------------
def test_a_stream_that_grows_past_the_pixel_cap_is_refused_and_nothing_written(noise_photo, tmp_path):
    """30 frames of 32x32 (the header says so), then 128x128 frames: over a 2,000-pixel cap."""
    path = mkv_of(tmp_path / "grow.mkv", h264_packets(32, 32, 30, 0) + h264_packets(128, 128, 3, 30), (32, 32))
    info = V.probe(path, max_pixels=2000)
    assert (info.size, info.frames) == ((32, 32), 33)  # the header and the first frame pass
    message = "grow.mkv: frame 30 is 128x128 (16,384 pixels), over the 2,000-pixel limit (RAYSTYLE_MAX_PIXELS)"
    with pytest.raises(V.VideoError, match=rf"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        V.stylize_video(path, tmp_path / "out" / "o.mp4", lambda fs: fs, max_pixels=2000)
    assert list((tmp_path / "out").iterdir()) == []  # no output, no temporary file
    with pytest.raises(V.VideoError, match="over the 1,200-pixel limit"):  # the decoder itself refuses
        list(V.decode_frames(path, V.probe(path, max_pixels=1200), 0, 33, raw=True))
    assert V.stylize_video(path, tmp_path / "ok.mp4", lambda fs: fs).frames == 33  # within the cap: read


def test_a_timestamp_gap_is_refused_before_any_frame_plan(identity_models, noise_photo, tmp_path, capsys, monkeypatch):
    """Two frames 10^12 ms apart in a 1 KB mkv: with --fps 24 that was a plan of 2.4e10 frames."""
    gap = mkv_of(tmp_path / "gap.mkv", h264_packets(SIDE, SIDE, 2, 0), (SIDE, SIDE), pts=[0, 10**12],
                 time_base=Fraction(1, 1000))
    assert gap.stat().st_size < 4000
    with pytest.raises(V.VideoError, match=r"gap.mkv: its frames span 1,000,000,000 s, over the 14,400-second"):
        V.probe(gap)
    began = time.perf_counter()
    tracemalloc.start()
    try:
        line = one_line_error(stylize(gap, identity_models, tmp_path / "out.mp4", "--fps", "24"), capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "over the 14,400-second limit (--max-duration, RAYSTYLE_MAX_DURATION)" in line, line
    assert time.perf_counter() - began < 20 and peak < 50e6, (time.perf_counter() - began, peak)
    assert not (tmp_path / "out.mp4").exists()

    clip = small_clip(tmp_path / "clip.mp4", noise_photo, frames=24)  # 1 s at 24 fps
    assert "more than 10 frames" in one_line_error(stylize(clip, identity_models, tmp_path / "o.mp4", "--max-frames", "10"),
                                                   capsys)
    line = one_line_error(stylize(clip, identity_models, tmp_path / "o.mp4", "--fps", "96", "--max-frames", "30"), capsys)
    assert "1 s at 96 fps is 96 frames, over the 30-frame limit" in line, line
    assert "over the 0.5-second limit" in one_line_error(
        stylize(clip, identity_models, tmp_path / "o.mp4", "--max-duration", "0.5"), capsys)
    assert "--max-frames must be at least 1" in one_line_error(
        stylize(clip, identity_models, tmp_path / "o.mp4", "--max-frames", "0"), capsys)
    monkeypatch.setenv("RAYSTYLE_MAX_DURATION", "0.25")
    assert "over the 0.25-second limit" in one_line_error(stylize(clip, identity_models, tmp_path / "o.mp4"), capsys)
    monkeypatch.setenv("RAYSTYLE_MAX_DURATION", "lots")
    assert "RAYSTYLE_MAX_DURATION must be a number" in one_line_error(stylize(clip, identity_models, tmp_path / "o.mp4"),
                                                                      capsys)
    monkeypatch.delenv("RAYSTYLE_MAX_DURATION")
    rc, out, err = run(stylize(clip, identity_models, tmp_path / "o.mp4", "--max-frames", "24", "--max-duration", "2"), capsys)
    assert rc == 0 and V.probe(tmp_path / "o.mp4").frames == 24, err
    assert not list(tmp_path.glob("*raystyle-tmp"))


def test_frames_waiting_for_the_stylizer_are_held_within_a_byte_budget(noise_photo, tmp_path, monkeypatch):
    clip = small_clip(tmp_path / "clip.mp4", noise_photo, frames=12)
    monkeypatch.setattr(V, "BUFFER_BYTES", 3 * SIDE * SIDE * 3)  # three frames
    calls: list[int] = []

    def count(frames):
        calls.append(len(frames))
        return frames

    assert V.stylize_video(clip, tmp_path / "o.mp4", count, batch=100, smooth=0).frames == 12
    assert calls == [3, 3, 3, 3]
