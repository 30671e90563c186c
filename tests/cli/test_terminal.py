"""What a newcomer sees in the terminal: raystyle's own lines by default, Ray's INFO lines (each
reported training result, the worker group) only with --verbose, and where Ray's logs are.
Each run starts its own local Ray in a subprocess, as a user's command does: slow."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RAY_CHATTER = ("Reporting training result", "Requesting resources", "Started training worker group")


def _train(sample_data, tmp_path, *extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYSTYLE_VERBOSE")}
    env["RAYSTYLE_HOME"] = str(tmp_path / "home")
    cmd = [sys.executable, "-m", "raystyle", "train", "--data", str(sample_data), "--style", "t",
           "--config", "tiny", "--workers", "1", "--max-steps", "2", "--storage", str(tmp_path / "runs"),
           "--set", "data.load_size=36", "--set", "data.crop_size=32", "--set", "model.ngf=8",
           "--set", "model.ndf=8", "--set", "model.n_blocks=2", "--set", "train.validate=false",
           "--set", "train.log_every=1", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=540)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def test_train_prints_our_lines_and_keeps_rays_info_in_its_log_files(sample_data, tmp_path):
    text = _train(sample_data, tmp_path)
    assert "[raystyle] step 2/2" in text and "final checkpoint:" in text
    assert "[raystyle] Ray's own logs: " in text
    assert not [c for c in RAY_CHATTER if c in text], text[-3000:]


def test_verbose_shows_rays_info_lines_too(sample_data, tmp_path):
    text = _train(sample_data, tmp_path, "--verbose")
    assert "[raystyle] step 2/2" in text
    assert "Reporting training result" in text and "Started training worker group" in text
