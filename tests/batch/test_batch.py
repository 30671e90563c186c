"""`raystyle batch`: a real Ray Data job over a folder; outputs, manifest, reruns, CLI errors."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raystyle.batch import images as batch
from raystyle.batch.images import MANIFEST, run_batch
from raystyle.batch.stages import BatchError
from raystyle.cli.batch import add_parser, cmd_batch
from raystyle.data.images import decode
from raystyle.infer.generator import Stylizer
from raystyle.util.storage import STALE_TMP_S, TMP_SUFFIX

BROKEN = "broken.png"


def cli(argv: list[str]) -> int:
    """`raystyle batch ...` through add_parser/cmd_batch, with cli.main's error handling."""
    parser = argparse.ArgumentParser(prog="raystyle")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["batch", *argv])
    try:
        return cmd_batch(args)
    except ValueError as exc:
        print(f"raystyle: error: {exc}", file=sys.stderr)
        return 2


def one_line_error(capsys, argv: list[str], ray_logs: bool = False) -> str:
    """Exit 2 and one `raystyle: error:` line (``ray_logs``: besides what Ray forwards)."""
    capsys.readouterr()
    rc = cli(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    lines = err.splitlines()
    if ray_logs:  # actors' own tracebacks are forwarded to the driver's stderr by Ray
        lines = [line for line in lines if line.startswith("raystyle: ")]
    assert len(lines) == 1 and lines[0].startswith("raystyle: error: "), err
    return lines[0]


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.png")}


@pytest.fixture(scope="module")
def models(exported) -> Path:
    return exported.path.parent


@pytest.fixture(scope="module")
def photos(sample_data, tmp_path_factory) -> Path:
    """7 PNGs at the top, 3 in nested/deeper/, a BMP, an odd-sized PNG, a corrupt file, a .txt."""
    root = tmp_path_factory.mktemp("batch_in")
    for p in sorted((sample_data / "testA").glob("*.png")):
        shutil.copy(p, root / p.name)
    deeper = root / "nested" / "deeper"
    deeper.mkdir(parents=True)
    train = sorted((sample_data / "trainA").glob("*.png"))
    for p in train[:3]:
        shutil.copy(p, deeper / p.name)
    Image.open(train[3]).save(root / "nested" / "bitmap.bmp")
    Image.open(train[4]).resize((40, 52)).save(root / "odd.png")
    (root / BROKEN).write_bytes(b"\x89PNG\r\n\x1a\n but then nothing useful")
    (root / "notes.txt").write_text("not an image suffix: ignored")
    return root


@pytest.fixture(scope="module")
def first_run(ray_session, photos, models, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch_out") / "stylized"
    lines: list[str] = []
    result = run_batch(photos, out, "tiny", models_dir=models, workers=2, batch_size=4,
                       echo=lines.append)
    return result, out, lines


def test_outputs_and_manifest_cover_every_input(first_run, photos, models):
    result, out, lines = first_run
    inputs = sorted(str(p.relative_to(photos)) for p in photos.rglob("*")
                    if p.suffix in (".png", ".bmp"))
    assert len(inputs) == 13 and result.inputs == 13 and result.skipped == 0
    manifest = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert [row["path"] for row in manifest] == [BROKEN]
    assert "not an image" in manifest[0]["error"]
    assert result.stylized == 12 and [e["path"] for e in result.errors] == [BROKEN]
    outputs = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
                     and p.name != MANIFEST)
    expected = sorted(str(Path(rel).with_suffix(".png")) for rel in inputs if rel != BROKEN)
    assert outputs == expected  # same names and subfolders; the BMP became nested/bitmap.png
    assert len(outputs) + len(manifest) == len(inputs)
    assert "12 stylized, 1 errors" in lines[-1] and "images/s" in lines[-1]

    offline = Stylizer("tiny", models_dir=models)
    for rel in inputs:
        if rel == BROKEN:
            continue
        got = np.asarray(decode(out / Path(rel).with_suffix(".png")))
        want = offline.stylize(photos / rel)
        assert got.shape == want.shape == np.asarray(decode(photos / rel)).shape
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, rel
    assert got.std() > 1  # a real picture, not a flat fill


def test_rerun_redoes_a_deleted_output_and_retries_errors(first_run, photos, models, tmp_path):
    _, first_out, _ = first_run
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    victim = sorted((out / "nested" / "deeper").iterdir())[0]
    victim.unlink()
    before = mtimes(out)
    result = run_batch(photos, out, "tiny", models_dir=models, workers=1, echo=None)
    assert (result.skipped, result.todo, result.stylized) == (11, 2, 1)
    assert [e["path"] for e in result.errors] == [BROKEN]  # retried, still broken
    after = mtimes(out)
    assert sorted(set(after) - set(before)) == [str(victim.relative_to(out))]
    assert {k: after[k] for k in before} == before  # nothing else was rewritten
    assert [json.loads(x)["path"] for x in (out / MANIFEST).read_text().splitlines()] == [BROKEN]


def test_rerun_with_everything_done_does_no_work(first_run, photos, models, tmp_path, capsys):
    _, first_out, _ = first_run
    clean, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(photos, clean)
    (clean / BROKEN).unlink()  # the one failure of the first run
    shutil.copytree(first_out, out)
    before = mtimes(out)
    rc = cli([str(clean), str(out), "--style", "tiny", "--models-dir", str(models)])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert "0 to do" in stdout and "0 stylized, 0 errors, 12 skipped" in stdout
    assert mtimes(out) == before
    assert (out / MANIFEST).read_text() == ""  # the rerun rewrote the manifest: no failures left


def test_cli_options_format_and_size(ray_session, photos, models, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(batch, "io_stage", lambda uri: True)  # the s3:// plan: IO tasks first
    small = tmp_path / "in"
    (small / "sub").mkdir(parents=True)
    for name in ("astronaut_0.png", "coffee_0.png"):
        shutil.copy(photos / name, small / "sub" / name)
    Image.open(photos / "odd.png").save(small / "odd.jpg", quality=95)
    out = tmp_path / "out"
    rc = cli([str(small), out.as_uri(), "--style", "tiny", "--models-dir", str(models), "--workers", "1",
              "--batch-size", "2", "--format", "jpeg", "--max-side", "32", "--strength", "0.5",
              "--preserve-color"])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jp*g")) == [
        "odd.jpg", "sub/astronaut_0.jpeg", "sub/coffee_0.jpeg"]  # .jpg is already a JPEG name
    with Image.open(out / "sub" / "coffee_0.jpeg") as img:
        assert img.format == "JPEG" and max(img.size) == 32
    assert "3 stylized, 0 errors, 0 skipped" in stdout


def test_stale_temporary_files_are_not_outputs(photos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (8, 8)).save(out / "astronaut_0.png")
    stale = out / f".coffee_0.png.1234abcd{TMP_SUFFIX}"
    stale.write_bytes(b"half an image")
    long_ago = time.time() - STALE_TMP_S - 60  # younger ones may be another live run's
    os.utime(stale, (long_ago, long_ago))
    work = batch.plan(str(photos), str(out))
    assert "astronaut_0.png" not in work.todo and "coffee_0.png" in work.todo
    assert not list(out.glob(f"*{TMP_SUFFIX}"))  # removed, never taken for a finished image
    assert batch.output_name("a/b.JPG") == ("a/b.JPG", "jpg")
    assert batch.output_name("a/b.tif") == ("a/b.png", "png")
    assert batch.output_name("b.png", "webp") == ("b.webp", "webp")


def test_one_line_errors(capsys, photos, models, tmp_path):
    base = ["--style", "tiny", "--models-dir", str(models)]
    missing = tmp_path / "nope"
    assert "does not exist" in one_line_error(capsys, [str(missing), str(tmp_path / "o"), *base])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    assert "no images or videos in" in one_line_error(capsys, [str(empty), str(tmp_path / "o"), *base])
    line = one_line_error(capsys, [str(photos), str(tmp_path / "o"), "--style", "nope",
                                   "--models-dir", str(models)])
    assert "unknown style 'nope'" in line and "tiny" in line
    line = one_line_error(capsys, [str(photos), str(tmp_path / "o"), *base, "--workers", "0"])
    assert "--workers must be at least 1" in line
    clash = tmp_path / "clash"
    clash.mkdir()
    Image.new("RGB", (16, 16)).save(clash / "a.png")
    Image.new("RGB", (16, 16)).save(clash / "a.bmp")
    assert "both be written as a.png" in one_line_error(capsys, [str(clash), str(tmp_path / "o"), *base])
    assert "another folder than INPUT" in one_line_error(capsys, [str(photos), str(photos), *base])
    with pytest.raises(BatchError):
        run_batch(photos, tmp_path / "o", "tiny", models_dir=models, strength=2.0, echo=None)
    assert not (tmp_path / "o").exists()  # nothing written before the checks passed


def test_cluster_problems_are_one_line_errors(capsys, ray_session, photos, models, tmp_path):
    base = [str(photos), str(tmp_path / "o"), "--style", "tiny"]
    line = one_line_error(capsys, [*base, "--models-dir", str(models), "--gpu"])
    assert "needs 1 GPU(s); the cluster has 0" in line
    broken = tmp_path / "models"
    shutil.copytree(models, broken)
    (broken / "tiny" / "model.onnx").write_bytes(b"not onnx")  # fails in the actors only
    line = one_line_error(capsys, [*base, "--models-dir", str(broken), "--workers", "1"],
                          ray_logs=True)
    assert line.startswith("raystyle: error: batch workers could not start: ")
    assert not list((tmp_path / "o").rglob("*.png"))


def test_wired_into_raystyle_main(capsys, tmp_path):
    from raystyle.cli import main as cli_module

    assert "batch" in cli_module.COMMANDS, "raystyle.cli.main does not wire `batch`"
    capsys.readouterr()
    assert cli_module.main(["batch", str(tmp_path / "nope"), str(tmp_path / "o"), "--style", "x",
                            "--models-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("raystyle: error: unknown style 'x'")
