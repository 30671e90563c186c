"""`raystyle batch` against hostile inputs, without Ray: bucket keys with "..", folder links and
loops, links leaving INPUT, another run's temporary files, an upload cut off half-way.

Each batch here has nothing to stylize once the hostile entries are refused, so ``run_batch``
never starts Ray (``cluster.connect`` is made to fail to prove it): the plan, the manifest and
what lands in the bucket are what is checked. The actor's own write and the video upload are
driven directly, with a stand-in stylizer and a real H.264 writer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from raystyle import cluster
from raystyle.batch import images as batch
from raystyle.batch.images import MANIFEST, run_batch
from raystyle.batch.stages import StylizeActor, resolve
from raystyle.util import storage
from tests.helpers import REPO_ROOT, moto_s3, png_bytes, s3_keys

BUCKET = "raystyle-hostile"
PNG = png_bytes(np.full((8, 8, 3), 200, np.uint8))


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as client:
        yield client


@pytest.fixture
def no_ray(monkeypatch):
    """Starting Ray fails the test: every batch here has nothing left to stylize."""
    def refuse(*args, **kwargs):
        raise AssertionError("Ray would start: a hostile input was planned for stylization")

    monkeypatch.setattr(cluster, "connect", refuse)


@pytest.fixture
def models(tmp_path):
    """A registry with one generator style whose graph is never opened (nothing to stylize)."""
    folder = tmp_path / "models" / "fake"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"never opened")
    (folder / "model.json").write_text(json.dumps(
        {"style": "fake", "kind": "generator", "precisions": {"fp32": {"file": "model.onnx"}}}))
    return folder.parent


def manifest_rows(text: str) -> dict[str, str]:
    return {row["path"]: row["error"] for row in map(json.loads, text.splitlines())}


def test_bucket_keys_with_dot_dot_are_manifest_rows_and_nothing_leaves_output(s3, no_ray, models):
    """A key ``in/../../BUCKET/x.png`` (S3 takes it as it is; pyarrow lists it so) is refused:
    never read (its read would land on BUCKET/x.png) and never written (its output would land
    on BUCKET/x.png, over that object)."""
    for key, body in (("in/ok.png", PNG), ("out/ok.png", PNG), ("x.png", b"precious"),
                      (f"in/../../{BUCKET}/x.png", PNG), ("in/./dot.png", PNG), ("in//twice.png", PNG)):
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    before = s3_keys(s3, BUCKET)
    work = batch.plan(f"s3://{BUCKET}/in", f"s3://{BUCKET}/out")
    assert (work.inputs, work.todo) == (["ok.png"], [])
    assert set(work.refused) == {f"../../{BUCKET}/x.png", "./dot.png", "/twice.png"}

    result = run_batch(f"s3://{BUCKET}/in", f"s3://{BUCKET}/out", "fake", models_dir=models, echo=None)
    assert (result.inputs, result.skipped, result.stylized) == (1, 1, 0)
    rows = manifest_rows(s3.get_object(Bucket=BUCKET, Key=f"out/{MANIFEST}")["Body"].read().decode())
    assert set(rows) == set(work.refused) and all("not read" in e for e in rows.values())
    assert "'..' part" in rows[f"../../{BUCKET}/x.png"]
    assert s3_keys(s3, BUCKET) == before | {f"out/{MANIFEST}"}  # the whole bucket, listed after
    assert s3.get_object(Bucket=BUCKET, Key="x.png")["Body"].read() == b"precious"


def test_the_actor_never_writes_outside_output(s3):
    """Belt and braces: a row whose output would leave OUTPUT (a plan made by an older driver,
    a hand-made dataset) is an error row, and the bucket outside OUTPUT is untouched."""
    s3.put_object(Bucket=BUCKET, Key="x.png", Body=b"precious")

    class Same:  # a stylizer that returns its input
        def stylize_batch(self, images, **options):
            return [np.asarray(image) for image in images]

    actor = StylizeActor.__new__(StylizeActor)  # no ONNX model: only the read/write path runs
    actor.stylizer, actor.options, actor.stats = Same(), {}, None
    actor.fs, actor.root = resolve(f"s3://{BUCKET}/actor-out")
    actor.input, actor.made_dirs = f"s3://{BUCKET}/actor-in", set()
    evil = f"../../{BUCKET}/x.png"
    rows = actor({"path": np.array([evil, "fine.png"], dtype=object),
                  "output": np.array([evil, "fine.png"], dtype=object),
                  "format": np.array(["png", "png"], dtype=object),
                  "bytes": np.array([PNG, PNG], dtype=object),
                  "read_error": np.array(["", ""], dtype=object)})
    assert rows["status"] == ["error", "ok"], rows["error"]
    assert "'..' part" in rows["error"][0]
    assert s3.get_object(Bucket=BUCKET, Key="x.png")["Body"].read() == b"precious"
    assert s3_keys(s3, BUCKET, "actor-out/") == {"fine.png"}
    # and the read stage refuses the same key (it would read BUCKET/x.png)
    read = actor({"path": np.array([evil], dtype=object), "output": np.array(["y.png"], dtype=object),
                  "format": np.array(["png"], dtype=object)})
    assert read["status"] == ["error"] and "not read" in read["error"][0]


def _tree(tmp_path):
    """INPUT with a.png, sub/b.png, and hostile links; OUTPUT with the two outputs done."""
    inp, out, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    for folder in (inp / "sub", out / "sub", outside / "private"):
        folder.mkdir(parents=True)
    for path in (inp / "a.png", inp / "sub" / "b.png", out / "a.png", out / "sub" / "b.png",
                 outside / "private" / "p.png", outside / "secret.png"):
        path.write_bytes(PNG)
    return inp, out, outside


def test_folder_links_and_links_leaving_input_are_refused(tmp_path, no_ray, models):
    inp, out, outside = _tree(tmp_path)
    os.symlink("..", inp / "sub" / "up")  # one image became 41 planned outputs
    os.symlink(outside / "private", inp / "linked")  # a folder outside INPUT
    os.symlink(outside / "secret.png", inp / "secret.png")  # a file outside INPUT
    os.symlink("sub/b.png", inp / "again.png")  # a file link inside INPUT: read
    (out / "again.png").write_bytes(PNG)
    work = batch.plan(str(inp), str(out))
    assert work.inputs == ["a.png", "again.png", "sub/b.png"] and work.todo == []
    assert set(work.refused) == {"sub/up", "linked", "secret.png"}

    result = run_batch(inp, out, "fake", models_dir=models, echo=None)
    rows = manifest_rows((out / MANIFEST).read_text())
    assert set(rows) == {"sub/up", "linked", "secret.png"}
    assert "a link to a folder" in rows["linked"] and "outside the folder" in rows["secret.png"]
    assert (result.inputs, result.skipped, len(result.errors)) == (3, 3, 3)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        MANIFEST, "a.png", "again.png", "sub", "sub/b.png"]


def test_link_loops_list_in_bounded_time(tmp_path):
    """``ln -s . x; ln -s . y``: following them, the listing doubles at every level and never
    ends; listed in a child process so that a hang is a failure, not a stuck run."""
    inp, out, _ = _tree(tmp_path)
    os.symlink(".", inp / "x")
    os.symlink(".", inp / "y")
    code = ("import json, sys; from raystyle.batch.images import plan; "
            "p = plan(sys.argv[1], sys.argv[2]); print(json.dumps([p.inputs, sorted(p.refused)]))")
    began = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", code, str(inp), str(out)], capture_output=True,
                              text=True, timeout=60, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("listing a folder with two link loops did not finish in 60 s")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [["a.png", "sub/b.png"], ["x", "y"]]
    assert time.monotonic() - began < 60


def test_another_runs_fresh_temporary_files_are_kept(tmp_path):
    """Two runs into one OUTPUT: planning one must not delete the other's temporary files
    while it writes them; only those older than storage.STALE_TMP_S go."""
    inp, out, _ = _tree(tmp_path)
    (out / "a.png").unlink()
    live = out / f".a.png.0123456789abcdef{storage.TMP_SUFFIX}"  # another run's, being written
    live.write_bytes(b"half an image, still growing")
    stale = out / "sub" / f".b.png.fedcba9876543210{storage.TMP_SUFFIX}"  # a run that died
    stale.write_bytes(b"half an image")
    old = time.time() - 7 * 24 * 3600  # a week ago: well past storage.STALE_TMP_S
    os.utime(stale, (old, old))
    work = batch.plan(str(inp), str(out))
    assert work.todo == ["a.png"]  # a temporary file is never taken for a finished output
    assert live.read_bytes() == b"half an image, still growing"
    assert not stale.exists()
    batch.plan(str(inp), str(out))  # a second plan while the first run is still writing
    assert live.exists()


def test_an_interrupted_video_upload_leaves_no_object(s3, tmp_path, monkeypatch):
    """A video is encoded locally and uploaded; an upload cut off half-way (here: after its
    first 100 bytes) leaves nothing under the final key for the next run to skip as done."""
    from raystyle.batch.videos import VideoJob, VideoOutput
    from raystyle.infer import video as V

    clip = tmp_path / "clip.mp4"
    V.write_pan_clip(clip, np.zeros((64, 64, 3), np.uint8), frames=3, size=(32, 32), audio=False)
    info = V.probe(clip)
    plan = V.plan_frames(info, None, None)
    output = VideoOutput(VideoJob("clip.mp4", "clip.mp4", info, plan), str(tmp_path), f"s3://{BUCKET}/videos", 18)
    output.add(0, np.zeros((plan.frames, plan.height, plan.width, 3), np.uint8))
    assert output.done

    def cut_off(src, dst, length=0):
        dst.write(src.read(100))
        raise OSError("connection reset by peer")

    monkeypatch.setattr(shutil, "copyfileobj", cut_off)
    with pytest.raises(OSError, match="connection reset"):
        output.publish()
    output.abort()
    # neither clip.mp4 nor a temporary key (pyarrow may leave the folder's own "videos/" marker)
    assert s3_keys(s3, BUCKET, "videos/") - {""} == set()
    monkeypatch.undo()
    again = VideoOutput(VideoJob("clip.mp4", "clip.mp4", info, plan), str(tmp_path), f"s3://{BUCKET}/videos", 18)
    again.add(0, np.zeros((plan.frames, plan.height, plan.width, 3), np.uint8))
    again.publish()
    assert s3_keys(s3, BUCKET, "videos/") - {""} == {"clip.mp4"}
    body = s3.get_object(Bucket=BUCKET, Key="videos/clip.mp4")["Body"].read()
    (tmp_path / "back.mp4").write_bytes(body)
    assert V.probe(tmp_path / "back.mp4").frames == plan.frames


def test_a_local_video_output_stays_inside_output(tmp_path):
    """A video's output path is checked after resolving links: a folder link planted in OUTPUT
    never takes the file elsewhere; no temporary file is left beside the output."""
    from raystyle.batch.videos import VideoJob, VideoOutput
    from raystyle.infer import video as V

    src = tmp_path / "in"
    src.mkdir()
    V.write_pan_clip(src / "clip.mp4", np.zeros((64, 64, 3), np.uint8), frames=2, size=(32, 32), audio=False)
    info = V.probe(src / "clip.mp4")
    plan = V.plan_frames(info, None, None)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "up")  # a folder link inside OUTPUT: outputs never go through it
    with pytest.raises(ValueError, match="outside the output folder"):  # storage.ContainmentError
        VideoOutput(VideoJob("up/clip.mp4", "up/clip.mp4", info, plan), str(src), str(out), 18)
    output = VideoOutput(VideoJob("sub/clip.mp4", "sub/clip.mp4", info, plan), str(src), str(out), 18)
    output.add(0, np.zeros((plan.frames, plan.height, plan.width, 3), np.uint8))
    output.publish()
    assert V.probe(out / "sub" / "clip.mp4").frames == plan.frames
    assert list(elsewhere.iterdir()) == []
    assert [p.name for p in (out / "sub").iterdir()] == ["clip.mp4"]  # no temporary file left


def test_images_are_not_read_through_a_link_made_after_the_plan(tmp_path):
    """The read stage checks again: a file swapped for a link to a file outside INPUT between
    the listing and the read is an error row, not read."""
    inp, _, outside = _tree(tmp_path)
    (inp / "a.png").unlink()
    os.symlink(outside / "secret.png", inp / "a.png")
    from raystyle.batch.stages import read_bytes

    rows = read_bytes({"path": np.array(["a.png", "sub/b.png"], dtype=object)}, str(inp))
    assert rows["read_error"][0].startswith("a.png: not read") and rows["bytes"][0] == b""
    assert rows["read_error"][1] == "" and rows["bytes"][1] == PNG
