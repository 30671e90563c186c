"""raystyle.infer.files: what `raystyle stylize` does with files and folders, as a library."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raystyle.errors import RaystyleError
from raystyle.infer.files import Input, Job, expand_inputs, plan_outputs, style_runner


def _tree(root: Path) -> Path:
    (root / "in" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "in" / "a.jpg")
    Image.new("RGB", (8, 8)).save(root / "in" / "sub" / "b.webp")
    (root / "in" / "clip.mkv").write_bytes(b"")  # listed by its suffix; read later
    (root / "in" / "notes.txt").write_text("x")
    (root / "outside.png").write_bytes(b"")
    os.symlink(root / "outside.png", root / "in" / "leak.png")
    return root / "in"


def test_expand_inputs_lists_folders_inside_only_and_warns(tmp_path):
    folder = _tree(tmp_path)
    warnings: list[str] = []
    items = expand_inputs([str(folder), "-", str(tmp_path / "x.png")], warn=warnings.append)
    assert {(i.src, i.rel) for i in items} == {
        (str(folder / "a.jpg"), Path("a.jpg")), (str(folder / "sub" / "b.webp"), Path("sub/b.webp")),
        (str(folder / "clip.mkv"), Path("clip.mkv")), ("-", None), (str(tmp_path / "x.png"), Path("x.png"))}
    assert len(warnings) == 1 and "leak.png" in warnings[0]  # a link out of the folder is not read
    assert [i.video for i in items if i.src.endswith("clip.mkv")] == [True]


def test_plan_outputs_keeps_relative_paths_formats_and_refuses_collisions(tmp_path):
    items = [Input("in/a.jpg", Path("a.jpg")), Input("in/sub/b.webp", Path("sub/b.webp")),
             Input("in/c.tif", Path("c.tif")), Input("in/v.webm", Path("v.webm"))]
    jobs = plan_outputs(items, tmp_path / "out")
    assert jobs == [Job("in/a.jpg", tmp_path / "out" / "a.jpg", False, "jpg"),
                    Job("in/sub/b.webp", tmp_path / "out" / "sub" / "b.webp", False, "webp"),
                    Job("in/c.tif", tmp_path / "out" / "c.png", False, "png"),
                    Job("in/v.webm", tmp_path / "out" / "v.mp4", True)]
    assert [j.fmt for j in plan_outputs(items[:2], tmp_path / "out", fmt="png")] == ["png", "png"]
    assert plan_outputs(items[:1], tmp_path / "one.webp") == [Job("in/a.jpg", tmp_path / "one.webp", False, "webp")]
    assert plan_outputs([Input("-", None)], "-") == [Job("-", None, False, "png")]
    for bad_items, output, message in [
        ([], "out", "no input images or videos found"),
        (items[:2], "-", "-o - (stdout) takes exactly one input image"),
        (items[3:], "x.webm", "a video is written as .mp4, .mov or .mkv"),
        (items[:1], "x.mp4", "an image is written as .png, .jpg or .webp"),
        ([Input("a/v.webm", Path("v.webm")), Input("b/v.mp4", Path("v.mp4"))], tmp_path, "would both be written to"),
    ]:
        with pytest.raises(RaystyleError, match=re.escape(message)):
            plan_outputs(bad_items, output)


def test_style_runner_runs_a_style_of_its_kind_and_refuses_paintings_for_a_generator(identity_models, noise_photo):
    run = style_runner("ident", models_dir=identity_models)
    out = run([noise_photo])[0]
    assert out.shape == noise_photo.shape and np.abs(out.astype(int) - noise_photo).max() <= 1
    with pytest.raises(RaystyleError, match="are for arbitrary styles; 'ident' is a generator style"):
        style_runner("ident", models_dir=identity_models, style_images=["p.png"])
