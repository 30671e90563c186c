"""raystyle.monitor and the page without a live Ray: metrics parsing, runs, token, Ray absent.

The page against a real local Ray, a real finished run and real Serve is in test_demo.py.
"""

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from raystyle import client, runlog
from raystyle import monitor as mon

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = [(10.0, 5.0), (20.0, 10.0), (math.inf, 10.0)]
    assert mon._histogram_quantile(buckets, 0.5) == pytest.approx(10.0)
    assert mon._histogram_quantile(buckets, 0.95) == pytest.approx(19.0)
    assert mon._histogram_quantile([(10.0, 0.0), (math.inf, 0.0)], 0.5) is None
    # everything above the last finite bound: the bound, not infinity
    assert mon._histogram_quantile([(10.0, 0.0), (math.inf, 4.0)], 0.5) == 10.0


PROM = """\
# HELP ray_serve_deployment_request_counter_total The number of queries processed.
# TYPE ray_serve_deployment_request_counter_total counter
ray_serve_deployment_request_counter_total{application="raystyle",deployment="style-a",replica="r1",route="/"} 6.0
ray_serve_deployment_request_counter_total{application="raystyle",deployment="style-a",replica="r2",route="/"} 4.0
ray_serve_deployment_request_counter_total{application="raystyle",deployment="Gateway",replica="g1",route="/"} 12.0
# HELP ray_serve_deployment_error_counter_total errors
# TYPE ray_serve_deployment_error_counter_total counter
ray_serve_deployment_error_counter_total{application="raystyle",deployment="style-a",replica="r1",route="/"} 1.0
# HELP ray_serve_deployment_processing_latency_ms latency
# TYPE ray_serve_deployment_processing_latency_ms histogram
ray_serve_deployment_processing_latency_ms_bucket{application="raystyle",deployment="style-a",replica="r1",le="50.0"} 2.0
ray_serve_deployment_processing_latency_ms_bucket{application="raystyle",deployment="style-a",replica="r1",le="100.0"} 6.0
ray_serve_deployment_processing_latency_ms_bucket{application="raystyle",deployment="style-a",replica="r1",le="+Inf"} 6.0
ray_serve_deployment_processing_latency_ms_bucket{application="raystyle",deployment="style-a",replica="r2",le="50.0"} 3.0
ray_serve_deployment_processing_latency_ms_bucket{application="raystyle",deployment="style-a",replica="r2",le="100.0"} 4.0
ray_serve_deployment_processing_latency_ms_bucket{application="raystyle",deployment="style-a",replica="r2",le="+Inf"} 4.0
ray_serve_deployment_processing_latency_ms_sum{application="raystyle",deployment="style-a",replica="r1"} 400.0
ray_serve_deployment_processing_latency_ms_sum{application="raystyle",deployment="style-a",replica="r2"} 200.0
ray_serve_deployment_processing_latency_ms_count{application="raystyle",deployment="style-a",replica="r1"} 6.0
ray_serve_deployment_processing_latency_ms_count{application="raystyle",deployment="style-a",replica="r2"} 4.0
# HELP ray_serve_num_http_requests_total http
# TYPE ray_serve_num_http_requests_total counter
ray_serve_num_http_requests_total{application="raystyle",method="POST",route="/",status_code="200"} 9.0
ray_serve_num_http_requests_total{application="raystyle",method="POST",route="/",status_code="415"} 2.0
"""


def test_serve_metrics_are_summed_over_replicas():
    m = mon.parse_serve_metrics(PROM)
    a = m["raystyle/style-a"]
    assert a["requests"] == 10.0 and a["errors"] == 1.0
    assert a["buckets"] == {50.0: 5.0, 100.0: 10.0, math.inf: 10.0}
    assert a["latency_sum_ms"] / a["latency_count"] == 60.0
    assert m["raystyle/Gateway"]["requests"] == 12.0
    assert mon.parse_http_metrics(PROM) == {"200": 9.0, "415": 2.0}


def test_request_rates_come_from_two_snapshots():
    prev = {"time": 100.0, "deployments": [{"application": "x", "deployment": "d", "requests": 10.0}]}
    cur = {"time": 104.0, "deployments": [{"application": "x", "deployment": "d", "requests": 30.0},
                                          {"application": "x", "deployment": "new", "requests": 3.0}]}
    out = mon.with_rates(cur, prev)
    assert out["deployments"][0]["requests_per_s"] == 5.0
    assert out["deployments"][1]["requests_per_s"] is None  # no earlier sample
    restarted = {"time": 108.0, "deployments": [{"application": "x", "deployment": "d", "requests": 2.0}]}
    assert mon.with_rates(restarted, cur)["deployments"][0]["requests_per_s"] is None


def test_token_lookup_order(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    t = mon.read_token()
    assert t.value is None and "not found" in t.source and t.headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-file\n")
    assert mon.read_token().value == "from-file"
    other = tmp_path / "tok"
    other.write_text("from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(other))
    assert mon.read_token().value == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    t = mon.read_token()
    assert t.value == "from-env" and t.headers() == {"Authorization": "Bearer from-env"}


def test_dashboard_url_resolution(monkeypatch):
    monkeypatch.delenv("RAYSTYLE_RAY_DASHBOARD", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address is not a dashboard
    assert mon.dashboard_url() == mon.DEFAULT_DASHBOARD
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert mon.dashboard_url() == "http://head:8265"
    assert mon.dashboard_url("http://other:1/") == "http://other:1"


def test_snapshots_without_ray_say_so():
    url = f"http://127.0.0.1:{_free_port()}"
    snap = mon.cluster_snapshot(url, timeout=1)
    assert snap["ok"] is False and "no Ray dashboard" in snap["error"] and "ray start --head" in snap["hint"]
    serve = mon.serve_snapshot(url, timeout=1)
    assert serve["ok"] is False and serve["deployments"] == []
    assert client.styles(url) == {}
    with pytest.raises(client.ApiError, match="no answer"):
        client.stylize(url, "x", b"not sent")


def test_host_and_gpu_snapshots(tmp_path):
    host = mon.host_snapshot(tmp_path / "not" / "yet")
    assert host["cpu_count"] >= 1 and 0 <= host["cpu_percent"] <= 100
    assert 0 < host["mem_used_gib"] <= host["mem_total_gib"] and host["disk_path"] == str(tmp_path)
    gpus = mon.gpu_snapshot()
    if gpus["gpus"]:  # a GPU machine: every field the page shows is there
        assert {"load_percent", "mem_used_mb", "mem_total_mb", "temperature_c"} <= set(gpus["gpus"][0])
    else:
        assert gpus["note"].startswith("no GPU")


@pytest.fixture
def runs(tmp_path, trained_checkpoint):
    """Three runs: finished (with a checkpoint and a sample), running, stopped."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "runs"
    done = root / "done"
    shutil.copytree(trained_checkpoint, done / trained_checkpoint.name)
    now = time.time()
    for step in (50, 100, 150):
        runlog.append_metrics(done, {"step": step, "total_steps": 150, "g_total": 10 - step / 50,
                                     "d_a": 0.3, "lr": 2e-4, "images_per_s": 6.0,
                                     "step_time_s": 0.2, "time": now - 3600})
    with (done / runlog.METRICS).open("a") as f:
        f.write('{"step": 160, "g_to')  # a torn line from a crash mid-write
    (done / runlog.SAMPLES).mkdir()
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(done / runlog.SAMPLES / "step_00000150.png")
    for i, (name, step, age) in enumerate((("busy", 5, 0), ("dead", 7, 3600))):
        (root / name).mkdir()
        runlog.append_metrics(root / name, {"step": step, "total_steps": 100, "step_time_s": 0.2,
                                            "time": now - age})
        os.utime(root / name / runlog.METRICS, (now - 10 + i, now - 10 + i))  # dead is newest
    os.utime(done / runlog.METRICS, (now - 20, now - 20))
    (root / "not_a_run").mkdir()
    return root


def test_list_runs(runs):
    found = {r.name: r for r in mon.list_runs(runs)}
    assert set(found) == {"done", "busy", "dead"}
    done = found["done"]
    assert done.status == "finished" and done.step == 150 and len(done.metrics) == 3
    assert [c["step"] for c in done.checkpoints] == [150] and len(done.samples) == 1
    assert found["busy"].status == "running"
    assert found["dead"].status == "stopped at step 7"
    assert mon.list_runs(runs / "missing") == []


def _app(monkeypatch, env: dict[str, str]):
    """The page under AppTest; the environment stays set for later .run() calls."""
    from streamlit.testing.v1 import AppTest

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return AppTest.from_file(str(APP), default_timeout=60).run()


def test_page_without_ray_says_how_to_start_it(runs, monkeypatch):
    """Ray absent, no Serve: no exception, no error box; each section says what to do;
    the training section still shows the finished run from disk."""
    at = _app(monkeypatch, {"RAYSTYLE_RAY_DASHBOARD": f"http://127.0.0.1:{_free_port()}",
               "RAYSTYLE_SERVE_URL": f"http://127.0.0.1:{_free_port()}",
               "RAYSTYLE_STORAGE": str(runs), "RAYSTYLE_MONITOR_REFRESH": "0"})
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [h.value for h in at.header][:4] == ["Cluster", "Training", "Serving", "Try it"]
    warning = " ".join(w.value for w in at.warning)
    assert "Ray is not running" in warning and "ray start --head" in warning
    infos = " ".join(i.value for i in at.info)
    assert "Serve needs Ray" in infos and "No raystyle API answers" in infos
    local_gpus = mon.gpu_snapshot()["gpus"]
    if local_gpus:  # one row per GPU GPUtil sees, with its name
        gpu_frames = [d.value for d in at.dataframe if "mem_total_mb" in d.value.columns]
        assert len(gpu_frames) == 1 and list(gpu_frames[0]["name"]) == [g["name"] for g in local_gpus]
    else:
        assert "No GPU: no GPU on this machine" in infos
    assert at.selectbox(key="run").options == ["dead", "busy", "done"]  # newest log first
    busy = at.selectbox(key="run").set_value("busy").run()
    assert not busy.exception and not busy.error
    assert {m.label: m.value for m in busy.metric}["Status"] == "running"
    at = at.selectbox(key="run").set_value("done").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Status"] == "finished" and metrics["Step"] == "150 / 150"
    assert metrics["Checkpoints"] == "1" and metrics["Learning rate"] == "2.00e-04"
    # Streamlit's test tool names these elements arrow_vega_lite_chart / imgs before 1.55 / 1.59
    charts = at.get("vega_lite_chart") or at.get("arrow_vega_lite_chart")
    assert len(charts) == 4 and len(at.get("image") or at.get("imgs")) == 1
    checkpoints = at.dataframe[-1].value
    assert list(checkpoints["checkpoint"]) == ["checkpoint_00000150"]


def test_page_with_no_runs(tmp_path, monkeypatch):
    at = _app(monkeypatch, {"RAYSTYLE_RAY_DASHBOARD": f"http://127.0.0.1:{_free_port()}",
               "RAYSTYLE_SERVE_URL": f"http://127.0.0.1:{_free_port()}",
               "RAYSTYLE_STORAGE": str(tmp_path / "none"), "RAYSTYLE_MONITOR_REFRESH": "0"})
    assert not at.exception and not at.error
    assert any("No training runs under" in i.value and "raystyle demo" in i.value for i in at.info)


def _start_monitor(*args: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "raystyle", "monitor", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_monitor_command_serves_the_page_and_stops_on_ctrl_c(runs):
    port, dashboard = _free_port(), f"http://127.0.0.1:{_free_port()}"
    api = f"http://127.0.0.1:{_free_port()}"  # README: monitor --ray-dashboard URL --serve-url URL
    proc = _start_monitor("--ray-dashboard", dashboard, "--serve-url", api,
                          "--storage", str(runs), "--max-upload-mb", "3", port=port)
    try:
        line = proc.stdout.readline()
        deadline = time.monotonic() + 60
        while "raystyle monitor at" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert f"raystyle monitor at http://127.0.0.1:{port}" in line, line
        assert f"(Ray dashboard {dashboard}, API {api}, runs in {runs};" in line, line
        page = psutil.Process(proc.pid).children()[0]  # streamlit: the page reads these
        assert page.environ()["RAYSTYLE_SERVE_URL"] == api
        assert page.environ()["RAYSTYLE_RAY_DASHBOARD"] == dashboard
        assert requests.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=5).text == "ok"
        assert "<title>Streamlit</title>" in requests.get(f"http://127.0.0.1:{port}/", timeout=5).text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert "monitor stopped" in proc.stdout.read()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_monitor_command_bad_input_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "raystyle", "monitor", "--max-upload-mb", "0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "raystyle: error: --max-upload-mb must be positive"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "raystyle", "monitor", "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"port {port}" in r.stderr

