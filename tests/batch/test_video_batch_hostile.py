"""Hostile videos in `raystyle batch` (raystyle.batch.videos): each is a row of
OUTPUT/_errors.jsonl and the batch goes on; chunks are cut by bytes, not only by frames. No Ray
cluster: the refusals happen on the driver before Ray starts, and the chunk actor is called
as a plain object."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from raystyle.batch.images import MANIFEST, run_batch
from raystyle.infer import video as V
from tests.helpers import SIDE, h264_packets, mkv_of, small_clip


def test_hostile_videos_are_manifest_rows_and_the_batch_goes_on(identity_models, noise_photo, tmp_path, capsys):
    """A concat list, a timestamp gap that --fps 24 would fill with 2.4e10 frames (the driver's
    MemoryError ended the whole batch), a clip over --max-frames: rows, exit 0."""
    from raystyle.cli import main as cli

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(noise_photo[:SIDE, :SIDE]).save(src / "secret.bin", format="PNG")  # not listed, but named
    (src / "a_evil.mp4").write_text("ffconcat version 1.0\nfile secret.bin\n")
    mkv_of(src / "b_gap.mkv", h264_packets(SIDE, SIDE, 2, 0), (SIDE, SIDE), pts=[0, 10**12],
           time_base=Fraction(1, 1000))
    small_clip(src / "c_long.mp4", noise_photo, frames=24)
    out = tmp_path / "out"
    result = run_batch(src, out, "ident", models_dir=identity_models, fps=24, max_frames=12, echo=None)
    errors = {e["path"]: e["error"] for e in result.errors}
    assert "not a video" in errors["a_evil.mp4"] and "over the 14,400-second limit" in errors["b_gap.mkv"], errors
    assert "more than 12 frames" in errors["c_long.mp4"], errors
    manifest = {json.loads(line)["path"] for line in (out / MANIFEST).read_text().splitlines()}
    assert {"a_evil.mp4", "b_gap.mkv", "c_long.mp4"} <= manifest
    assert not list(out.rglob("*.mp4")) and not list(out.rglob("*.mkv"))

    capsys.readouterr()
    rc = cli.main(["batch", str(src), str(tmp_path / "out2"), "--style", "ident", "--models-dir", str(identity_models),
                   "--fps", "24", "--max-duration", "0.5"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    rows = {json.loads(line)["path"]: json.loads(line)["error"]
            for line in (tmp_path / "out2" / MANIFEST).read_text().splitlines()}
    assert "over the 0.5-second limit" in rows["c_long.mp4"], rows
    capsys.readouterr()
    assert cli.main(["batch", str(src), str(tmp_path / "o3"), "--style", "ident", "--models-dir", str(identity_models),
                     "--max-frames", "-1"]) == 2
    assert "--max-frames must be at least 1" in capsys.readouterr().err


def test_a_chunk_that_grows_past_the_pixel_cap_is_an_error(identity_models, tmp_path):
    """The chunk actor (called here without Ray) gives the error, not 33 frames."""
    from raystyle.batch.videos import VideoChunkActor

    path = mkv_of(tmp_path / "grow.mkv", h264_packets(32, 32, 30, 0) + h264_packets(128, 128, 3, 30), (32, 32))
    info = V.probe(path, max_pixels=2000)
    actor = VideoChunkActor(jobs={"grow.mkv": (info, V.plan_frames(info))}, input=str(tmp_path), smooth=0.5,
                            warmup=2, style="ident", models_dir=str(identity_models), output=str(tmp_path / "out"))
    row = actor({"path": np.array(["grow.mkv"], dtype=object), "start": np.array([24]), "stop": np.array([33])})
    assert "grow.mkv: frame 30 is 128x128 (16,384 pixels), over the 2,000-pixel limit" in row["error"][0]
    assert row["frames"][0] == b""
    good = actor({"path": np.array(["grow.mkv"], dtype=object), "start": np.array([4]), "stop": np.array([12])})
    assert good["error"][0] == "" and list(good["shape"][0]) == [8, 32, 32, 3]


def test_chunks_are_cut_by_bytes(monkeypatch):
    from raystyle.batch.videos import chunk_budget, chunk_size

    def plan(width: int, height: int) -> V.FramePlan:
        return V.FramePlan(width, height, (0,), (0,), Fraction(1, 24), Fraction(24))

    budget = chunk_budget()
    assert budget == 512 << 20
    assert [chunk_size(plan(w, h), 48, budget) for w, h in ((1920, 1080), (3840, 2160), (10000, 10000))] == [48, 21, 1]
    monkeypatch.setenv("RAYSTYLE_CHUNK_MB", "1")
    assert chunk_size(plan(320, 240), 48, chunk_budget()) == 4  # 230 KB a frame
    monkeypatch.setenv("RAYSTYLE_CHUNK_MB", "none")
    with pytest.raises(ValueError, match="RAYSTYLE_CHUNK_MB must be"):
        chunk_budget()

