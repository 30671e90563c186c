"""`raystyle export`, `styles` and `stylize` from the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from raystyle.cli import main
from raystyle.images import decode


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("raystyle: error:"), err
    return err[0]


def test_export_then_list_styles(trained_checkpoint, tmp_path, capsys):
    models = tmp_path / "models"
    assert main(["export", str(trained_checkpoint.parent), "--style", "cli", "--models-dir", str(models),
                 "--precision", "int8", "--best", "nope"]) == 2
    assert "no checkpoint of" in _one_error_line(capsys)
    assert main(["export", str(trained_checkpoint), "--style", "cli", "--models-dir", str(models),
                 "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "style 'cli' ->" in out and "max |ORT-torch|" in out
    assert main(["styles", "--models-dir", str(models), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert list(meta) == ["cli"] and meta["cli"]["training"]["step"] == 150
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


def test_stylize_errors_are_one_line(exported, tmp_path, capsys):
    models = str(exported.path.parent)
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


@pytest.mark.usefixtures("ray_session")
def test_export_as_a_ray_task(trained_checkpoint, tmp_path, capsys):
    assert main(["export", str(trained_checkpoint), "--style", "onray", "--models-dir",
                 str(tmp_path), "--precision", "fp32", "--ray"]) == 0
    assert (tmp_path / "onray" / "model.onnx").is_file()
    assert "style 'onray'" in capsys.readouterr().out
