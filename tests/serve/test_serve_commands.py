"""The README's two ways to start the API, as a user types them: `raystyle serve` and Ray's
own `serve run serve_configs/local.yaml`, each in its own process with its own local Ray."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.helpers import REPO_ROOT, free_port

ROOT = REPO_ROOT
# `raystyle serve` and `serve run` each start a Ray and Serve of their own: end to end, slow
pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        try:
            r = requests.get(f"{url}/healthz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except requests.RequestException:
            pass
        time.sleep(1)
    pytest.fail(f"{url} not healthy after {timeout} s")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
    return rc, proc.stdout.read()


def _photo(sample_data: Path) -> bytes:
    return sorted((sample_data / "testA").iterdir())[0].read_bytes()


def test_raystyle_serve_command(exported, sample_data):
    port = free_port()
    exe = [shutil.which("raystyle")] if shutil.which("raystyle") else [sys.executable, "-m", "raystyle"]
    proc = subprocess.Popen([*exe, "serve", "--models-dir", str(exported.path.parent), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        # Ctrl-C is the way to stop it once it says it serves (before that, it interrupts)
        line = ""
        while "raystyle is serving at" not in line and proc.poll() is None:
            line = proc.stdout.readline()
        assert line.startswith(f"raystyle is serving at {url}"), line
        assert _wait_healthy(url, proc) == {"status": "ok", "styles": ["tiny"]}
        r = requests.post(f"{url}/styles/tiny", data=_photo(sample_data), timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    finally:
        rc, out = _stop(proc)
    assert rc == 0, out[-3000:]
    assert "raystyle: serve stopped" in out
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=2)


def test_serve_run_with_the_local_config(exported, sample_data, tmp_path):
    """`serve run serve_configs/local.yaml`, the file as shipped but for the port."""
    port = free_port()
    cfg = yaml.safe_load((ROOT / "serve_configs" / "local.yaml").read_text())
    cfg["http_options"]["port"] = port
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(cfg))
    serve = Path(sys.executable).with_name("serve")
    cmd = [str(serve)] if serve.exists() else [sys.executable, "-m", "ray.serve.scripts"]
    proc = subprocess.Popen([*cmd, "run", str(tmp_path / "local.yaml")], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(RAYSTYLE_MODELS=str(exported.path.parent)),
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert _wait_healthy(url, proc)["styles"] == ["tiny"]
        r = requests.post(f"{url}/styles/tiny?format=jpeg", data=_photo(sample_data), timeout=60)
        assert r.status_code == 200 and r.content[:3] == b"\xff\xd8\xff"
    finally:
        _stop(proc)
