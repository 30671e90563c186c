"""`ray job submit -- python jobs/train.py ...` end to end against a real local Ray head.

The head is its own `ray start --head --block` process group with private ports, its own
temp dir and token authentication on. It is torn down by signalling that process group
(never `ray stop`, which would kill every other Ray on the machine, the tests' included);
RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 skips the 30 s node drain that `ray start --block`
otherwise does on SIGTERM.

Token auth: with RAY_AUTH_MODE=token, Ray's C++ AuthenticationTokenLoader reads the token
from RAY_AUTH_TOKEN, else the file named by RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.
The dashboard checks `Authorization: Bearer TOKEN` on every HTTP request (401 without a
header, 403 with a wrong token) and the job CLI (JobSubmissionClient) adds that header
itself when RAY_AUTH_MODE=token. A fresh token in RAY_AUTH_TOKEN keeps ~/.ray untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
from PIL import Image

from raystyle import checkpoint as ckpt
from raystyle import runlog
from tests.helpers import REPO_ROOT, free_ports

# A `ray start --head` cluster of its own, then `ray job submit`: end to end, its own processes.
pytestmark = pytest.mark.slow

REPO = REPO_ROOT
RAY = Path(sys.executable).with_name("ray")
RAY = RAY if RAY.exists() else Path(shutil.which("ray") or "ray")
HEAD_START_TIMEOUT = 120
JOB_TIMEOUT = 420


@dataclass(frozen=True)
class Head:
    url: str
    env: dict[str, str]
    token: str
    temp_dir: str
    gcs: str  # host:port, what RAY_ADDRESS holds for a cluster




def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _worker_port_range(width: int = 100) -> tuple[int, int]:
    """A free-looking range below the ephemeral ports and above Ray's default 10002-19999."""
    for _ in range(50):
        lo = random.randrange(20000, 32000 - width)
        if all(_port_free(p) for p in range(lo, lo + width)):
            return lo, lo + width - 1
    raise RuntimeError("no free port range for Ray workers")


def _processes_using(temp_dir: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and any(temp_dir in arg for arg in proc.info["cmdline"] or ()):
                found.append(proc)
    return found


def _stop_head(proc: subprocess.Popen, temp_dir: str) -> list[str]:
    """SIGTERM the head's process group, then SIGKILL; returns what had to be killed by hand."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Ray's own children (GCS, raylet, dashboard, workers) exit after the head; give them time.
    deadline = time.monotonic() + 20
    while _processes_using(temp_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    leftovers = _processes_using(temp_dir)
    killed = []
    for p in leftovers:
        with contextlib.suppress(psutil.Error):
            killed.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
            p.kill()
    psutil.wait_procs(leftovers, timeout=10)
    return killed


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rsj", dir="/tmp")  # short: Unix socket paths <= 107 chars
    token = secrets.token_hex(32)  # the format of ray's generate_new_authentication_token()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    # No 30 s node drain on SIGTERM (Ray's default for `ray start --block`): tear down at once.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    (gcs, dash, client, agent_http, agent_grpc, metrics, node_manager, object_manager,
     runtime_env_agent) = free_ports(9, host="")
    min_worker, max_worker = _worker_port_range()
    log_path = Path(temp_dir) / "head.log"
    cmd = [
        str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
        "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
        f"--runtime-env-agent-port={runtime_env_agent}",
        f"--min-worker-port={min_worker}", f"--max-worker-port={max_worker}",
        "--object-store-memory=200000000",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=temp_dir)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                r = requests.get(f"{url}/api/jobs/", timeout=5,
                                 headers={"Authorization": f"Bearer {token}"})
                if r.status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"dashboard not ready after {HEAD_START_TIMEOUT}s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield Head(url, env, token, temp_dir, f"127.0.0.1:{gcs}")
    finally:
        killed = _stop_head(proc, temp_dir)
        left = [p.pid for p in _processes_using(temp_dir)]
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the test head survived SIGKILL: {left}"
        if killed:
            print(f"\n[test_jobs] killed Ray processes left after the head exited: {killed}")


def test_token_auth_is_on(ray_head):
    jobs = f"{ray_head.url}/api/jobs/"
    assert requests.get(jobs, timeout=10).status_code == 401
    wrong = {"Authorization": f"Bearer {secrets.token_hex(32)}"}
    assert requests.get(jobs, timeout=10, headers=wrong).status_code == 403
    right = {"Authorization": f"Bearer {ray_head.token}"}
    assert requests.get(jobs, timeout=10, headers=right).status_code == 200


RUNTIME_ENV = {"excludes": [".git", "runs", ".ruff_cache", ".benchmarks", "__pycache__"]}


def _submit(head: Head, cwd: Path, *entrypoint: str) -> str:
    """`ray job submit --working-dir REPO -- python ENTRYPOINT...`; its output, checked."""
    cmd = [str(RAY), "job", "submit", "--address", head.url, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(RUNTIME_ENV), "--", "python", *entrypoint]
    proc = subprocess.run(cmd, env=head.env, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT, cwd=cwd)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", output), output[-6000:]
    return output


def test_job_submit_trains_and_checkpoints(ray_head, sample_data, tmp_path):
    # README: ray job submit --working-dir . -- python jobs/train.py ... --export NAME
    storage, models = tmp_path / "runs", tmp_path / "models"
    output = _submit(
        ray_head, tmp_path, "jobs/train.py", "--data", str(sample_data), "--style", "jobtest",
        "--config", "tiny", "--set", "data.load_size=36", "--set", "data.crop_size=32",
        "--set", "model.ngf=8", "--set", "model.ndf=8", "--set", "model.n_blocks=2",
        "--set", "data.loader_workers=0", "--set", "train.checkpoint_every=2",
        "--max-steps", "2", "--workers", "1", "--storage", str(storage),
        "--export", "jobstyle", "--models-dir", str(models))
    found = re.findall(r"^final checkpoint:\s+(\S+) \(step (\d+)\)$", output, re.M)
    assert len(found) == 1, output[-6000:]
    checkpoint, step = Path(found[0][0]), int(found[0][1])
    run_dir = storage.resolve() / "jobtest"
    assert step == 2
    assert checkpoint == run_dir / "checkpoint_00000002"
    assert (checkpoint / "manifest.json").is_file()
    assert ckpt.read_manifest(checkpoint)["step"] == 2
    records = runlog.read_metrics(run_dir)
    assert [r["step"] for r in records] == [2]
    assert records[0]["world_size"] == 1
    assert f"exported style:   jobstyle -> {models / 'jobstyle'}" in output, output[-6000:]
    meta = json.loads((models / "jobstyle" / "model.json").read_text())
    assert meta["training"]["checkpoint"] == str(checkpoint)
    assert (models / "jobstyle" / "model.onnx").is_file()
    assert (models / "jobstyle" / "model.int8.onnx").is_file()


def test_job_submit_batch_stylizes_a_folder(ray_head, sample_data, exported, tmp_path):
    # README: ray job submit --working-dir . -- python jobs/batch_stylize.py IN OUT --style S
    photos, out = sample_data / "testA", tmp_path / "stylized"
    output = _submit(ray_head, tmp_path, "jobs/batch_stylize.py", str(photos), str(out),
                     "--style", "tiny", "--models-dir", str(exported.path.parent))
    inputs = sorted(p.name for p in photos.iterdir())
    assert len(inputs) == 7 and f"{len(inputs)} stylized, 0 errors, 0 skipped" in output, output[-6000:]
    for name in inputs:
        with Image.open(out / name) as res, Image.open(photos / name) as src:
            assert res.size == src.size and res.tobytes() != src.convert("RGB").tobytes(), name
    assert (out / "_errors.jsonl").read_text() == ""


# -- the monitor against this token-auth `ray start` head -------------------------------------


def test_monitor_finds_the_dashboard_of_the_attached_ray(ray_head):
    """RAY_ADDRESS=host:port (a GCS, as after `ray start`): `raystyle monitor` finds that Ray's
    dashboard on its real port (not 8265) through the GCS, as `ray job submit` does."""
    assert not ray_head.url.endswith(":8265")
    env = {**ray_head.env, "RAY_ADDRESS": ray_head.gcs}
    env.pop("RAYSTYLE_RAY_DASHBOARD", None)
    r = subprocess.run([sys.executable, "-c", "from raystyle.monitor import snapshot as m; "
                        "print(m.dashboard_url(discover=True))"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == ray_head.url


class _CaptureProxy:
    """An HTTP forward proxy on 127.0.0.1 that records every request (URL, Authorization)."""

    def __init__(self):
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                seen.append((self.path, self.headers.get("Authorization")))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "host")}
                try:
                    r = requests.get(self.path, headers=headers, timeout=10, allow_redirects=False,
                                     proxies={"http": None, "https": None})
                    body, status, ctype = r.content, r.status_code, r.headers.get("content-type", "text/plain")
                except requests.RequestException:
                    body, status, ctype = b"upstream unreachable", 502, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_the_monitor_sends_the_token_to_the_configured_dashboard_only(ray_head, monkeypatch, tmp_path):
    """The page's every outgoing HTTP request goes through a capture proxy: the Ray token is
    on requests to the configured dashboard and on nothing else (node metrics, the Serve URL),
    and with it the page draws the token-auth cluster."""
    from streamlit.testing.v1 import AppTest

    from raystyle.monitor import snapshot as mon

    proxy = _CaptureProxy()
    elsewhere = _CaptureProxy()  # stands for the Serve URL: another origin on 127.0.0.1
    try:
        for k, v in {"RAYSTYLE_RAY_DASHBOARD": ray_head.url, "RAYSTYLE_SERVE_URL": elsewhere.url,
                     "RAYSTYLE_STORAGE": str(tmp_path), "RAYSTYLE_MONITOR_REFRESH": "0",
                     "RAY_AUTH_TOKEN": ray_head.token, "HTTP_PROXY": proxy.url, "http_proxy": proxy.url,
                     "NO_PROXY": "", "no_proxy": ""}.items():
            monkeypatch.setenv(k, v)
        at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=90).run()
        deadline = time.monotonic() + 30
        while True:  # a head just started may list no node for a moment
            assert not at.exception and not at.error, [e.value for e in at.error]
            alive = {m.label: m.value for m in at.metric}.get("Ray nodes alive")
            if alive == "1 / 1" or time.monotonic() > deadline:
                break
            time.sleep(1.5)  # past the page's 1 s cache
            at.run()
        assert alive == "1 / 1", [w.value for w in at.warning]
    finally:
        proxy.close()
        elsewhere.close()
    dash = mon.origin(ray_head.url)
    with_token = [url for url, auth in proxy.seen if auth]
    assert with_token and all(mon.origin(url) == dash for url in with_token), with_token
    assert all(auth == f"Bearer {ray_head.token}" for _, auth in proxy.seen if auth)
    others = {mon.origin(url) for url, _ in proxy.seen} - {dash}
    assert mon.origin(elsewhere.url) in others  # the page did reach other origins, without the token
    assert any(url.endswith("/metrics") for url, _ in proxy.seen)  # node metrics were scraped, no token
