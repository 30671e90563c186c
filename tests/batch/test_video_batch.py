"""`raystyle batch` over a folder with videos: a real Ray Data job cutting each video into chunks
(raystyle.batch.videos); chunked output against the single-machine path, bad videos, reruns."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from raystyle.batch.images import MANIFEST, run_batch
from raystyle.cli import main as cli
from raystyle.infer import video as V
from raystyle.infer.generator import Stylizer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """clip.mp4 (30 frames, audio), sub/short.mkv (5 frames), broken.mp4, photo.png."""
    photo = cv2.resize(skdata.astronaut(), (640, 640), interpolation=cv2.INTER_AREA)
    root = tmp_path_factory.mktemp("videos_in")
    V.write_pan_clip(root / "clip.mp4", photo, frames=30, keyframe_every=6)  # chunks really seek
    (root / "sub").mkdir()
    V.write_pan_clip(root / "sub" / "short.mkv", photo, frames=5, size=(96, 64), audio=False)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
    cv2.imwrite(str(root / "photo.png"), photo[:64, :80])
    return root


def frames_of(path):
    return V.read_video(path)[1]


def single_path(clip, stylizer, tmp_path, smooth):
    out = tmp_path / f"single_{smooth}.mp4"
    V.stylize_video(clip, out, stylizer.stylize_batch, smooth=smooth, crf=0)
    return frames_of(out)


def test_chunks_match_the_single_machine_path(ray_session, exported, folder, tmp_path):
    models = exported.path.parent
    out = tmp_path / "out"
    lines: list[str] = []
    result = run_batch(folder, out, "tiny", models_dir=models, workers=2, chunk_frames=8, crf=0,
                       echo=lines.append)
    assert (result.inputs, result.stylized, result.frames) == (4, 3, 35)
    assert [e["path"] for e in result.errors] == ["broken.mp4"]
    assert "not a video, or damaged" in result.errors[0]["error"]
    manifest = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert [m["path"] for m in manifest] == ["broken.mp4"]
    assert any("5 chunks of up to 8 (+10 warm-up)" in line for line in lines), lines  # 8+8+8+6, 5
    assert (out / "photo.png").is_file() and not list(out.rglob(f"*{V.TMP_SUFFIX}"))

    src, got = V.probe(folder / "clip.mp4"), V.probe(out / "clip.mp4")
    assert (got.frames, got.size, got.rate, got.audio) == (30, (160, 120), 24, "aac")
    assert got.duration == pytest.approx(src.duration, abs=1e-6)
    short = V.probe(out / "sub" / "short.mkv")
    assert (short.frames, short.size, short.audio) == (5, (96, 64), None)

    # the same frames as one sequential pass (lossless H.264: lossy x264 encodes of the same frames
    # differ from run to run by more than a seam would): no seam at chunk borders
    single = single_path(folder / "clip.mp4", Stylizer("tiny", models_dir=models), tmp_path, V.DEFAULT_SMOOTH)
    diffs = [np.abs(a.astype(int) - b).mean() for a, b in zip(frames_of(out / "clip.mp4"), single, strict=True)]
    assert max(diffs) < 1.0, [round(d, 2) for d in diffs]


def test_rerun_skips_done_videos_and_cli_options(ray_session, exported, folder, tmp_path, capsys):
    models = exported.path.parent
    out = tmp_path / "out"
    argv = ["batch", str(folder), str(out), "--style", "tiny", "--models-dir", str(models), "--workers", "1",
            "--smooth", "0", "--fps", "12", "--max-side", "80", "--chunk-frames", "4"]
    assert cli.main(argv) == 0
    info = V.probe(out / "clip.mp4")
    assert (info.frames, info.size, info.rate) == (15, (80, 60), 12)  # 30 frames at 24 fps = 1.25 s
    stamp = (out / "clip.mp4").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 already done, 1 to do" in printed  # only the broken video again
    assert (out / "clip.mp4").stat().st_mtime_ns == stamp


def test_batch_video_option_errors(exported, folder, tmp_path, capsys):
    models = str(exported.path.parent)
    for flag, value, message in (("--smooth", "1.5", "--smooth must be"), ("--fps", "-3", "--fps must be"),
                                 ("--chunk-frames", "0", "--chunk-frames must be"), ("--crf", "52", "--crf must be"),
                                 ("--tile", "0", "tile must be")):  # 0 is not "the default"
        capsys.readouterr()
        rc = cli.main(["batch", str(folder), str(tmp_path / "o"), "--style", "tiny", "--models-dir", models,
                       flag, value])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    capsys.readouterr()
    rc = cli.main(["batch", str(folder), str(tmp_path / "o"), "--nst", str(folder / "photo.png"), "--smooth", "0.2"])
    assert rc == 2 and "--smooth" in capsys.readouterr().err
