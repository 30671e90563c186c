"""`raystyle export`, `styles` and `stylize` from the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from raystyle.cli.main import main
from raystyle.data.images import decode


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("raystyle: error:"), err
    return err[0]


@pytest.mark.slow  # exports through the CLI
def test_export_then_list_styles(trained_checkpoint, tmp_path, capsys):
    models = tmp_path / "models"
    assert main(["export", str(trained_checkpoint.parent), "--style", "cli", "--models-dir", str(models),
                 "--precision", "int8", "--best", "nope"]) == 2
    assert "no checkpoint of" in _one_error_line(capsys)
    # README: raystyle export RUN_DIR --style S (the run's latest checkpoint, fp32 + int8)
    assert main(["export", str(trained_checkpoint.parent), "--style", "cli",
                 "--models-dir", str(models)]) == 0
    out = capsys.readouterr().out
    assert "style 'cli' ->" in out and "max |ORT-torch|" in out and "PSNR vs fp32" in out
    assert {p.name for p in (models / "cli").glob("model.*")} == {
        "model.json", "model.onnx", "model.int8.onnx"}
    assert main(["styles", "--models-dir", str(models), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert list(meta) == ["cli"] and meta["cli"]["training"]["step"] == 150
    assert meta["cli"]["training"]["checkpoint"] == str(trained_checkpoint)
    assert sorted(meta["cli"]["precisions"]) == ["fp32", "int8"]
    assert main(["styles", "--models-dir", str(tmp_path / "empty")]) == 0
    assert "no styles in" in capsys.readouterr().out


def test_stylize_files_folders_and_json(exported, sample_data, tmp_path, capsys):
    models = str(exported.path.parent)
    out = tmp_path / "out"
    rc = main(["stylize", str(sample_data / "testA"), "--style", "tiny", "--models-dir", models,
               "-o", str(out), "--json", "--max-side", "40"])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 7 and all(r["width"] == 40 for r in lines)
    for r in lines:
        assert np.asarray(decode(r["output"])).shape == (40, 40, 3)
    single = tmp_path / "one.webp"
    src = sorted((sample_data / "testA").iterdir())[0]
    assert main(["stylize", str(src), "--style", "tiny", "--models-dir", models, "-o", str(single),
                 "--strength", "0"]) == 0
    assert single.read_bytes().startswith(b"RIFF")


def test_stylize_large_tif_tiled_int8_preserve_color(exported, sample_data, tmp_path, capsys):
    # README: raystyle stylize huge.tif --style S --tile N --preserve-color --strength 0.7 -o out.png
    # (plus --precision int8 from the folder line), with a tile smaller than the image.
    models = str(exported.path.parent)
    src = sorted((sample_data / "testA").iterdir())[0]
    huge = tmp_path / "huge.tif"
    with Image.open(src) as img:
        img.convert("RGB").resize((200, 150), Image.BICUBIC).save(huge)
    opts = ["--style", "tiny", "--models-dir", models, "--precision", "int8",
            "--preserve-color", "--strength", "0.7"]
    tiled, whole = tmp_path / "out.png", tmp_path / "whole.png"
    assert main(["stylize", str(huge), *opts, "--tile", "64", "-o", str(tiled)]) == 0
    assert main(["stylize", str(huge), *opts, "-o", str(whole)]) == 0  # default tile 1024: one pass
    assert f"-> {tiled} (200x150," in capsys.readouterr().out
    original = np.asarray(decode(huge))
    out, one_pass = np.asarray(decode(tiled)), np.asarray(decode(whole))
    assert out.shape == original.shape == (150, 200, 3)
    assert not np.array_equal(out, one_pass), "--tile 64 must really tile a 200x150 image"
    assert np.abs(out.astype(int) - one_pass).mean() < 8, "tiles agree with the one-pass result"
    diff = np.abs(out.astype(int) - original)
    assert diff.mean() > 1, "the output must differ from the input"
    ycc_in, ycc_out = (np.asarray(Image.fromarray(a).convert("YCbCr"), dtype=int) for a in (original, out))
    chroma = np.abs(ycc_out[..., 1:] - ycc_in[..., 1:]).mean()
    luma = np.abs(ycc_out[..., 0] - ycc_in[..., 0]).mean()
    assert chroma < 3 < luma, (chroma, luma)  # --preserve-color: new luminance, input colours


def test_stylize_errors_are_one_line(exported, tmp_path, capsys):
    models = str(exported.path.parent)
    assert main(["stylize", "x.png", "--style", "tiny", "--models-dir", models, "--tile", "66"]) == 2
    assert _one_error_line(capsys) == "raystyle: error: tile must be a multiple of 4 and at least 64 (got 66)"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert main(["stylize", str(bad), "--style", "tiny", "--models-dir", models, "-o", str(tmp_path / "o")]) == 2
    assert "bad.png: not an image (unrecognised data)" in _one_error_line(capsys)
    assert main(["stylize", str(bad), "--style", "nope", "--models-dir", models]) == 2
    assert "unknown style 'nope'" in _one_error_line(capsys)
    ok = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(ok)
    assert main(["stylize", str(ok), "--style", "tiny", "--models-dir", models, "--strength", "2"]) == 2
    assert "strength must be between 0 and 1" in _one_error_line(capsys)
    assert main(["stylize", str(ok), "--style", "tiny", "--models-dir", models, "--provider", "cuda"]) == 2
    assert "cuda is not available" in _one_error_line(capsys)


def test_stdin_to_stdout(exported, sample_data):
    src = sorted((sample_data / "testA").iterdir())[0]
    done = subprocess.run(
        [sys.executable, "-m", "raystyle", "stylize", "-", "--style", "tiny", "--models-dir",
         str(exported.path.parent), "-o", "-", "--format", "jpeg"],
        input=src.read_bytes(), capture_output=True, check=True)
    assert done.stdout.startswith(b"\xff\xd8")
    assert np.asarray(decode(done.stdout)).shape == np.asarray(decode(src)).shape


@pytest.mark.slow  # an export as a Ray task
@pytest.mark.usefixtures("ray_session")
def test_export_as_a_ray_task(trained_checkpoint, tmp_path, capsys):
    assert main(["export", str(trained_checkpoint), "--style", "onray", "--models-dir",
                 str(tmp_path), "--precision", "fp32", "--ray"]) == 0
    assert (tmp_path / "onray" / "model.onnx").is_file()
    assert "style 'onray'" in capsys.readouterr().out
