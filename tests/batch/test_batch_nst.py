"""`raystyle batch --nst`: Gatys style transfer over a folder, one image per Ray task."""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raystyle.batch.images import MANIFEST
from raystyle.cli.batch import add_parser, cmd_batch
from raystyle.core import perceptual
from raystyle.core.perceptual import WEIGHTS_ENV
from raystyle.data.datasets import painterly, sample_photo_dir
from raystyle.data.images import decode
from raystyle.methods.nst import NSTOptions, run_nst

BROKEN = "broken.jpg"
NST = ["--features", "random", "--size", "48", "--steps", "2"]


def cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """`raystyle batch ...` through add_parser/cmd_batch, with cli.main's error handling."""
    parser = argparse.ArgumentParser(prog="raystyle")
    add_parser(parser.add_subparsers(dest="command", required=True))
    capsys.readouterr()
    try:
        rc = cmd_batch(parser.parse_args(["batch", *argv]))
    except ValueError as exc:
        print(f"raystyle: error: {exc}", file=sys.stderr)
        rc = 2
    except SystemExit as exc:  # argparse's own usage errors
        rc = int(exc.code)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, argv: list[str]) -> str:
    rc, out, err = cli(capsys, argv)
    assert rc == 2, (rc, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("raystyle: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path]:
    """3 photos (one in a subfolder, one not square) + a corrupt file; and a style image."""
    root = tmp_path_factory.mktemp("nst_in")
    photos = sample_photo_dir()
    (root / "sub").mkdir()
    Image.open(photos / "astronaut.png").convert("RGB").resize((40, 40)).save(root / "astronaut.png")
    Image.open(photos / "coffee.png").convert("RGB").resize((64, 48)).save(root / "coffee.png")
    Image.open(photos / "rocket.jpg").convert("RGB").resize((48, 48)).save(root / "sub" / "rocket.jpg")
    (root / BROKEN).write_bytes(b"\xff\xd8\xff\xe0 a JPEG header and then nothing")
    style = tmp_path_factory.mktemp("nst_style") / "style.png"
    painterly(Image.open(photos / "chelsea.png").convert("RGB")).resize((72, 48)).save(style)
    return root, style


def test_nst_batch_writes_outputs_lists_failures_and_skips_done_ones(ray_session, folder, tmp_path,
                                                                     capsys):
    root, style = folder
    out = tmp_path / "out"
    rc, stdout, err = cli(capsys, [str(root), str(out), "--nst", str(style), *NST, "--workers", "2"])
    assert rc == 0, err
    assert "4 images" in stdout and "3 stylized, 1 errors" in stdout and "one image per task" in stdout
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert written == ["astronaut.png", "coffee.png", "sub/rocket.jpg"]
    assert decode(out / "coffee.png").size == (48, 36)  # --size 48: longer side, aspect kept
    assert decode(out / "sub" / "rocket.jpg").size == (48, 48)
    manifest = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert [row["path"] for row in manifest] == [BROKEN]
    assert manifest[0]["error"].startswith(f"{BROKEN}: ")
    # the task ran the same optimisation as run_nst here (thread counts may differ: tolerance)
    torch.set_num_threads(1)
    want, _ = run_nst(np.asarray(decode(root / "astronaut.png")), np.asarray(decode(style)),
                      NSTOptions(features="random", size=48, steps=2))
    got = np.asarray(decode(out / "astronaut.png")).astype(int)
    original = np.asarray(decode(root / "astronaut.png").resize((48, 48), Image.LANCZOS)).astype(int)
    assert np.abs(got - want.astype(int)).mean() < 1.0
    assert np.abs(got - original).mean() > 1.0  # stylized, not a copy

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.*") if p.name != MANIFEST}
    rc, stdout, err = cli(capsys, [str(root), str(out), "--nst", str(style), *NST])
    assert rc == 0, err
    assert "3 already done, 1 to do" in stdout and "0 stylized, 1 errors" in stdout
    assert "3 skipped" in stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing was redone


def test_nst_option_errors(folder, tmp_path, capsys, monkeypatch):
    root, style = folder
    out = str(tmp_path / "out")
    rc, _, err = cli(capsys, [str(root), out, "--nst", str(style), "--style", "tiny"])
    assert rc == 2 and "argument --style: not allowed with argument --nst" in err
    rc, _, err = cli(capsys, [str(root), out])
    assert rc == 2 and "one of the arguments --style --nst is required" in err
    assert "--steps, --features only apply with --nst" in one_line_error(
        capsys, [str(root), out, "--style", "tiny", "--steps", "3", "--features", "random"])
    assert "--strength, --tile only apply with --style" in one_line_error(
        capsys, [str(root), out, "--nst", str(style), "--strength", "0.5", "--tile", "512"])
    assert "--steps must be at least 1" in one_line_error(
        capsys, [str(root), out, "--nst", str(style), "--features", "random", "--steps", "0"])
    assert "notes.png: no such file" in one_line_error(
        capsys, [str(root), out, "--nst", str(tmp_path / "notes.png"), *NST])
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (30, 60)).save(tiny)
    assert "style image is 30x60" in one_line_error(capsys, [str(root), out, "--nst", str(tiny), *NST])
    # missing VGG weights fail on the driver, before Ray (no network: a closed local port)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(perceptual.URLS, "vgg19", f"http://127.0.0.1:{port}/vgg19-dcbb9e9d.pth")
    line = one_line_error(capsys, [str(root), out, "--nst", str(style), "--size", "48"])
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_nst_batch_with_vgg_weights_from_a_file(ray_session, folder, tmp_path, capsys):
    """VGG-16 from a weights file (torchvision's layout, random values): read once on the driver
    and shared with the tasks; the output is run_nst's with the same weights."""
    from torchvision.models.vgg import cfgs, make_layers

    root, style = folder
    torch.manual_seed(0)
    weights = tmp_path / "my_vgg16.pth"
    torch.save(make_layers(cfgs["D"]).state_dict(), weights)
    only = tmp_path / "in"
    only.mkdir()
    (only / "astronaut.png").write_bytes((root / "astronaut.png").read_bytes())
    vgg = ["--features", "vgg16", "--vgg-weights", str(weights), "--size", "48", "--steps", "2"]
    rc, stdout, err = cli(capsys, [str(only), str(tmp_path / "out"), "--nst", str(style), *vgg])
    assert rc == 0 and "1 stylized, 0 errors" in stdout, err
    torch.set_num_threads(1)
    want, report = run_nst(np.asarray(decode(only / "astronaut.png")), np.asarray(decode(style)),
                           NSTOptions(features="vgg16", vgg_weights=str(weights), size=48, steps=2))
    assert report["features"] == "vgg16"
    got = np.asarray(decode(tmp_path / "out" / "astronaut.png")).astype(int)
    assert np.abs(got - want.astype(int)).mean() < 1.0
