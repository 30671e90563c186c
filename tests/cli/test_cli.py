"""The `raystyle` command line: one-line errors (exit 2) for bad input, help, happy paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from raystyle import checkpoint as ckpt
from raystyle.cli.main import main
from raystyle.data.download import DATASETS

# Shrinks the tiny preset further so a CLI training run takes seconds on 2 CPU cores.
TINY = ["--config", "tiny", "--set", "data.load_size=36", "--set", "data.crop_size=32",
        "--set", "model.ngf=8", "--set", "model.ndf=8", "--set", "model.n_blocks=2",
        "--set", "data.loader_workers=0", "--set", "train.checkpoint_every=2"]


def run_error(capsys, argv: list[str]) -> str:
    """Run main(argv); it must exit 2 with exactly one `raystyle: error:` line on stderr."""
    capsys.readouterr()  # drop anything printed earlier (e.g. Ray log forwarding)
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("raystyle: error: "), lines[0]
    return lines[0]


def write_images(folder: Path, n: int = 2, size: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (size, size), (40 * i, 100, 200)).save(folder / f"img_{i}.png")


# ------------------------------------------------------------------------------ bad data


def test_missing_data_folder(capsys, tmp_path):
    missing = tmp_path / "nope"
    line = run_error(capsys, ["train", "--data", str(missing), "--style", "x",
                              "--storage", str(tmp_path / "runs")])
    assert f"dataset folder {missing} does not exist" in line
    assert not (tmp_path / "runs").exists(), "nothing is written for a bad dataset"


def test_data_with_only_trainA_names_trainB(capsys, tmp_path):
    write_images(tmp_path / "trainA")
    line = run_error(capsys, ["train", "--data", str(tmp_path), "--style", "x",
                              "--storage", str(tmp_path / "runs")])
    assert f"{tmp_path / 'trainB'} is missing" in line
    assert "found: trainA" in line


def test_empty_trainB(capsys, tmp_path):
    write_images(tmp_path / "trainA")
    (tmp_path / "trainB").mkdir()
    line = run_error(capsys, ["train", "--data", str(tmp_path), "--style", "x",
                              "--storage", str(tmp_path / "runs")])
    assert f"{tmp_path / 'trainB'} has no readable images" in line
    assert "skipped" not in line


def test_only_non_image_files(capsys, tmp_path):
    for domain in ("trainA", "trainB"):
        (tmp_path / domain).mkdir()
        (tmp_path / domain / "notes.txt").write_text("not a picture")
        (tmp_path / domain / "fake.png").write_bytes(b"this is no PNG")
    line = run_error(capsys, ["train", "--data", str(tmp_path), "--style", "x",
                              "--storage", str(tmp_path / "runs")])
    assert f"{tmp_path / 'trainA'} has no readable images (2 non-image files skipped)" in line


# ---------------------------------------------------------------------------- bad config


def test_unknown_config_key_is_named(capsys, sample_data, tmp_path):
    line = run_error(capsys, ["train", "--data", str(sample_data), "--style", "x",
                              "--storage", str(tmp_path), "--set", "train.lrr=1"])
    assert "unknown config key" in line and "lrr" in line
    assert "lr" in line.split("allowed:")[1], "the allowed keys are listed"


def test_wrong_type_is_named(capsys, sample_data, tmp_path):
    line = run_error(capsys, ["train", "--data", str(sample_data), "--style", "x",
                              "--storage", str(tmp_path), "--set", "train.lr=abc"])
    assert "train.lr: expected a number, got 'abc'" in line


def test_unknown_config_preset(capsys, sample_data, tmp_path):
    line = run_error(capsys, ["train", "--data", str(sample_data), "--style", "x",
                              "--storage", str(tmp_path), "--config", "nosuch"])
    assert "'nosuch' is neither a file nor a preset" in line
    assert "paper" in line and "tiny" in line


# ------------------------------------------------------------------- cluster too small


def test_too_many_workers_for_the_cluster(capsys, ray_session, sample_data, tmp_path):
    line = run_error(capsys, ["train", "--data", str(sample_data), "--style", "big",
                              "--storage", str(tmp_path), "--workers", "64"])
    assert "64 workers x 1 CPU need 64 CPUs; the cluster has 4" in line


def test_gpu_on_a_cluster_without_gpus(capsys, ray_session, sample_data, tmp_path):
    line = run_error(capsys, ["train", "--data", str(sample_data), "--style", "gpu",
                              "--storage", str(tmp_path), "--workers", "1", "--gpu"])
    assert "--gpu with 1 worker(s) needs 1 GPU(s); the cluster has 0" in line
    assert "without --gpu" in line


# ------------------------------------------------------------------------ data commands


def test_sample_size_must_be_a_multiple_of_4(capsys, tmp_path):
    out = tmp_path / "out"
    line = run_error(capsys, ["data", "sample", str(out), "--size", "30"])
    assert "--size must be a multiple of 4" in line and "got 30" in line
    assert not out.exists()


def test_download_unknown_dataset_lists_names(capsys, tmp_path):
    out = tmp_path / "out"
    line = run_error(capsys, ["data", "download", "nosuch", str(out)])
    assert "unknown dataset 'nosuch'" in line
    assert all(name in line for name in DATASETS)
    assert not out.exists()


def test_data_sample_writes_all_four_folders(capsys, tmp_path):
    out = tmp_path / "sample"
    assert main(["data", "sample", str(out), "--size", "32"]) == 0
    stdout = capsys.readouterr().out
    for folder in ("trainA", "trainB", "testA", "testB"):
        pngs = list((out / folder).glob("*.png"))
        assert pngs, folder
        with Image.open(pngs[0]) as img:
            assert img.size == (32, 32)
    assert len(list((out / "trainA").glob("*.png"))) == len(list((out / "trainB").glob("*.png")))
    assert any("domain B" in line and "painterly filter" in line for line in stdout.splitlines()), stdout


# ----------------------------------------------------------------------- console script


def test_console_error_path_via_python_m(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-m", "raystyle", "train", "--data", "/nonexistent", "--style", "x",
         "--storage", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert lines == ["raystyle: error: dataset folder /nonexistent does not exist"], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


# -------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["train", "demo", "data", "monitor", "serve", "batch", "export", "stylize", "styles"]),
        (["train"], ["--data", "--style", "--config", "--set", "--workers", "--cpus-per-worker",
                     "--gpu", "--max-steps", "--storage", "--address"]),
        (["data", "sample"], ["out", "--size", "painterly"]),
        (["data", "download"], ["NAME", "OUT", "--base-url", "--sha256", "--no-progress"]),
        (["demo"], ["--max-steps", "--workers", "--home", "--serve-port", "--monitor-port",
                    "--dashboard-port", "--no-monitor", "--no-wait", "Ctrl-C"]),
        (["monitor"], ["--port", "--host", "--ray-dashboard", "--serve-url", "--storage",
                       "--refresh", "--max-upload-mb", "token"]),
    ],
    ids=["raystyle", "train", "data-sample", "data-download", "demo", "monitor"],
)
def test_help(capsys, argv, expected):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: raystyle {' '.join(argv)}".rstrip())
    missing = [word for word in expected if word not in out]
    assert not missing, out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage: raystyle" in capsys.readouterr().err


# ---------------------------------------------------------------------------- training


@pytest.mark.slow  # a Ray Train run through the CLI
def test_train_happy_path(capsys, ray_session, sample_data, tmp_path):
    # README: train ... --set train.amp=bf16 (bf16 autocast works on CPU too) and
    # train ... --export STYLE --models-dir DIR (export after training, as a Ray task).
    storage, models = tmp_path / "runs", tmp_path / "models"
    rc = main(["train", "--data", str(sample_data), "--style", "cli", *TINY,
               "--set", "train.amp=bf16", "--max-steps", "2", "--workers", "2",
               "--storage", str(storage), "--export", "cli-style", "--models-dir", str(models)])
    out, err = capsys.readouterr()
    assert rc == 0, (out, err)
    run_lines = [m.group(1) for m in re.finditer(r"^run directory:\s+(\S+)$", out, re.M)]
    ckpt_lines = re.findall(r"^final checkpoint:\s+(\S+) \(step (\d+)\)$", out, re.M)
    assert len(run_lines) == 1 and len(ckpt_lines) == 1, out
    run_dir, (checkpoint, step) = Path(run_lines[0]), ckpt_lines[0]
    assert run_dir == storage.resolve() / "cli" and run_dir.is_dir()
    checkpoint = Path(checkpoint)
    assert checkpoint.name == "checkpoint_00000002" and checkpoint.parent == run_dir
    assert (checkpoint / "manifest.json").is_file()
    assert step == "2"
    assert ckpt.load_shared(checkpoint)[0].train.amp == "bf16"
    exported = re.findall(r"^exported style:\s+(\S+) -> (\S+)$", out, re.M)
    assert exported == [("cli-style", str(models / "cli-style"))], out
    meta = json.loads((models / "cli-style" / "model.json").read_text())
    assert meta["training"]["checkpoint"] == str(checkpoint) and meta["training"]["step"] == 2
    assert sorted(meta["precisions"]) == ["fp32", "int8"]
    assert (models / "cli-style" / "model.onnx").is_file()
    assert (models / "cli-style" / "model.int8.onnx").is_file()




def test_a_bug_keeps_its_traceback_and_bad_input_is_one_line(monkeypatch, capsys):
    """Only errors raised on purpose (RaystyleError) and missing files are one line with exit 2;
    a ValueError from a bug (numpy, torch, our own code) is not reported as the user's fault."""
    from raystyle.cli import main as cli_main
    from raystyle.errors import RaystyleError

    def bug(args):
        raise ValueError("operands could not be broadcast together")

    def bad_input(args):
        raise RaystyleError("--tile must be a multiple of 4\nand at least 64")

    monkeypatch.setitem(cli_main.COMMANDS, "data", bug)
    with pytest.raises(ValueError, match="broadcast"):
        cli_main.main(["data", "sample", "unused"])
    monkeypatch.setitem(cli_main.COMMANDS, "data", bad_input)
    assert cli_main.main(["data", "sample", "unused"]) == 2
    err = capsys.readouterr().err
    assert err == "raystyle: error: --tile must be a multiple of 4; and at least 64\n"
