"""raystyle.monitor.snapshot and the page without a live Ray: metrics parsing, runs, token, Ray absent.

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

import psutil
import pytest
import requests

from raystyle import runlog
from raystyle.monitor import snapshot as mon
from raystyle.serve import client
from tests.helpers import REPO_ROOT, free_port

APP = REPO_ROOT / "dashboard" / "app.py"




def test_histogram_quantile_interpolates_like_prometheus():
    buckets = [(10.0, 5.0), (20.0, 10.0), (math.inf, 10.0)]
    assert mon.histogram_quantile(buckets, 0.5) == pytest.approx(10.0)
    assert mon.histogram_quantile(buckets, 0.95) == pytest.approx(19.0)
    assert mon.histogram_quantile([(10.0, 0.0), (math.inf, 0.0)], 0.5) is None
    # everything above the last finite bound: the bound, not infinity
    assert mon.histogram_quantile([(10.0, 0.0), (math.inf, 4.0)], 0.5) == 10.0


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


def _snap(t: float, requests: float, buckets: list[tuple[float, float]], name: str = "d") -> dict:
    return {"time": t, "deployments": [{"application": "x", "deployment": name, "requests": requests,
                                        "buckets": buckets}]}


def test_rates_and_percentiles_are_over_the_recent_window():
    """A slow start (1000 requests at ~100 ms) then a fast minute (100 at ~5 ms): the page shows
    the fast minute, not the whole history."""
    inf = math.inf
    history: list[dict] = []
    start = _snap(0.0, 1000.0, [(10.0, 0.0), (200.0, 1000.0), (inf, 1000.0)])
    assert mon.windowed(start, history)["deployments"][0]["requests_per_s"] is None  # no earlier sample
    assert start["deployments"][0]["window_s"] is None
    assert start["deployments"][0]["latency_p50_ms"] > 10  # since start: the slow requests
    history = mon.remember(history, start)
    mid = _snap(30.0, 1050.0, [(10.0, 50.0), (200.0, 1050.0), (inf, 1050.0)])
    history = mon.remember(history, mon.windowed(mid, history))
    now = _snap(60.0, 1100.0, [(10.0, 100.0), (200.0, 1100.0), (inf, 1100.0)])
    d = mon.windowed(now, history)["deployments"][0]
    assert d["window_s"] == 60.0 and d["requests_per_s"] == pytest.approx(100 / 60, abs=0.01)
    assert d["latency_p50_ms"] <= 10 and d["latency_p99_ms"] <= 10  # only the fast minute
    history = mon.remember(history, now)
    later = _snap(95.0, 1100.0, [(10.0, 100.0), (200.0, 1100.0), (inf, 1100.0)])
    assert mon.windowed(later, history)["deployments"][0]["window_s"] == 65.0  # base: t=30
    assert [h["time"] for h in mon.remember(history, later)] == [30.0, 60.0, 95.0]  # t=0 dropped
    restarted = _snap(100.0, 3.0, [(10.0, 3.0), (200.0, 3.0), (inf, 3.0)])
    d = mon.windowed(restarted, history)["deployments"][0]
    assert d["requests_per_s"] is None and d["latency_p50_ms"] <= 10  # counters reset


def test_scrape_asks_every_node_at_once_within_one_budget():
    """4 nodes whose metrics port accepts connections but never answers: one budget, not four."""
    silent = []
    for _ in range(4):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)  # connections queue in the backlog; nothing ever answers
        silent.append(s)
    nodes = [{"state": "ALIVE", "ip": "127.0.0.1", "metrics_port": s.getsockname()[1]} for s in silent]
    try:
        start = time.monotonic()
        text, errors = mon.scrape(nodes, 1.0)
        took = time.monotonic() - start
    finally:
        for s in silent:
            s.close()
    assert text == "" and len(errors) == 4 and all("no answer within 1 s" in e or "Timeout" in e for e in errors)
    assert took < 2.5, f"{took:.1f} s for 4 silent nodes with a 1 s budget"


def test_a_wedged_nvidia_smi_does_not_hang_the_page(tmp_path, monkeypatch):
    """GPUtil runs nvidia-smi without a timeout; here a nvidia-smi that never answers."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(mon, "_gpu_probe", {"thread": None, "result": None})
    start = time.monotonic()
    snap = mon.gpu_snapshot(timeout=1.0)
    assert time.monotonic() - start < 3
    assert snap["gpus"] == [] and "did not answer within 1 s" in snap["note"]
    start = time.monotonic()  # the stuck probe is not started again; a second call waits once more
    assert "did not answer" in mon.gpu_snapshot(timeout=0.5)["note"]
    assert time.monotonic() - start < 2


def test_token_goes_to_the_configured_origin_only(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    t = mon.read_token("http://127.0.0.1:8265/")
    assert t.headers("http://127.0.0.1:8265/api/version") == {"Authorization": "Bearer secret"}
    assert t.headers("http://localhost:8265/api/version") == {}  # another name is another origin
    for other in ("http://127.0.0.1:8266/x", "https://127.0.0.1:8265/x", "http://evil.example:8265/",
                  "http://127.0.0.1:8265@evil.example/"):
        assert t.headers(other) == {}, other
    assert mon.read_token("http://head").headers("http://head:80/api") == {"Authorization": "Bearer secret"}


def test_a_non_loopback_host_needs_an_explicit_flag():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        mon.check_host(host, behind_auth_proxy=False)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        with pytest.raises(mon.UnsafeHost, match="--behind-auth-proxy"):
            mon.check_host(host, behind_auth_proxy=False)
        mon.check_host(host, behind_auth_proxy=True)
    r = subprocess.run([sys.executable, "-m", "raystyle", "monitor", "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--behind-auth-proxy" in r.stderr


def test_dashboard_url_resolution(monkeypatch):
    monkeypatch.delenv("RAYSTYLE_RAY_DASHBOARD", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address is not a dashboard
    assert mon.dashboard_url() == mon.DEFAULT_DASHBOARD
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert mon.dashboard_url() == "http://head:8265"
    assert mon.dashboard_url("http://other:1/") == "http://other:1"


def test_snapshots_without_ray_say_so():
    url = f"http://127.0.0.1:{free_port()}"
    snap = mon.cluster_snapshot(url, timeout=1)
    assert snap["ok"] is False and "no Ray dashboard" in snap["error"] and "ray start --head" in snap["hint"]
    serve = mon.serve_snapshot(url, timeout=1)
    assert serve["ok"] is False and serve["deployments"] == []
    assert client.styles(url) == {}
    with pytest.raises(client.ApiError, match="no answer"):
        client.stylize(url, "x", b"not sent")


def test_try_it_asks_for_a_style_image_only_for_arbitrary_styles():
    """The page's choices from GET /styles (the page itself: test_serve_arbitrary.py)."""
    assert mon.style_kind({"kind": "arbitrary", "style_size": 256}) == "arbitrary"
    for meta in ({"kind": "generator"}, {}, None, {"kind": None}):  # older servers send no kind
        assert mon.style_kind(meta) == "generator"
    assert mon.style_label("monet", {}) == "monet"
    assert mon.style_label("any", {"kind": "arbitrary"}) == "any (any style: upload a style image)"
    assert mon.upload_problem([("a.png", 10), ("b.png", 2**20)], 1.0) is None
    assert mon.upload_problem([("a.png", 10), ("b.png", 3 * 2**20)], 1.0) == \
        "b.png is 3.0 MB; the limit is 1 MB"


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
        val = {} if step == 50 else {  # held-out validation at steps 100 and 150
            "val_gt_psnr": 19 + step / 100, "val_cycle_psnr": 25.0, "val_content_ssim": 0.9,
            "val_domain_score": 0.5, "val_domain_content": 0.67, "val_colour_distance": 20.0,
            "val_time_s": 0.1}
        runlog.append_metrics(done, {"step": step, "total_steps": 150, "g_total": 10 - step / 50,
                                     "d_a": 0.3, "lr": 2e-4, "images_per_s": 6.0,
                                     "step_time_s": 0.2, "time": now - 3600, **val})
    runlog.write_validation(done, {"best_metric": "val_gt_psnr", "order": "max", "split": "test",
                                   "paired": True})
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
    assert done.best_metric == "val_gt_psnr"
    assert done.checkpoints[0]["val_gt_psnr"] == 20.5 and done.checkpoints[0]["best"] is True
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
    at = _app(monkeypatch, {"RAYSTYLE_RAY_DASHBOARD": f"http://127.0.0.1:{free_port()}",
               "RAYSTYLE_SERVE_URL": f"http://127.0.0.1:{free_port()}",
               "RAYSTYLE_STORAGE": str(runs), "RAYSTYLE_MONITOR_REFRESH": "0"})
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [h.value for h in at.header][:4] == ["Cluster", "Training", "Serving", "Try it"]
    # nothing on the page changes where it connects or what it lists (only the refresh period)
    assert len(at.text_input) == 0 and [n.label for n in at.number_input] == ["Refresh every N seconds (0 = off)"]
    assert str(runs) in " ".join(m.value for m in at.sidebar.markdown)
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
    # losses, total, lr, images/s and the three held-out validation charts
    assert len(charts) == 7 and len(at.get("image") or at.get("imgs")) == 1
    titles = " ".join(m.value for m in at.markdown)
    assert "Validation: PSNR, dB (held-out)" in titles and "Validation: scores 0..1 (held-out)" in titles
    assert r"ranked by **val\_gt\_psnr** (the selection split of held-out test, paired" in " ".join(c.value for c in at.caption)
    checkpoints = at.dataframe[-1].value
    assert list(checkpoints["checkpoint"]) == ["checkpoint_00000150"]
    assert list(checkpoints["val_gt_psnr"]) == [20.5] and list(checkpoints["best"]) == [True]


def test_page_with_no_runs(tmp_path, monkeypatch):
    at = _app(monkeypatch, {"RAYSTYLE_RAY_DASHBOARD": f"http://127.0.0.1:{free_port()}",
               "RAYSTYLE_SERVE_URL": f"http://127.0.0.1:{free_port()}",
               "RAYSTYLE_STORAGE": str(tmp_path / "none"), "RAYSTYLE_MONITOR_REFRESH": "0"})
    assert not at.exception and not at.error
    assert any("No training runs under" in i.value and "raystyle demo" in i.value for i in at.info)


def _start_monitor(*args: str, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "raystyle", "monitor", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.slow  # starts the monitor (Streamlit) as its own process
def test_monitor_command_serves_the_page_and_stops_on_ctrl_c(runs):
    port, dashboard = free_port(), f"http://127.0.0.1:{free_port()}"
    api = f"http://127.0.0.1:{free_port()}"  # README: monitor --ray-dashboard URL --serve-url URL
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



def test_a_runs_files_are_text_on_the_page_not_markdown(runs, monkeypatch):
    """validation.json (written by whoever can write the storage) is shown as literal text: no
    link, image, HTML or colour directive of its own reaches the page's markdown."""
    runlog.write_validation(runs / "done", {
        "best_metric": "val_gt_psnr](http://evil.example/x) ![img](http://evil.example/i.png)",
        "split": ":red[<b>alarm</b>] $x$", "paired": False})
    at = _app(monkeypatch, {"RAYSTYLE_RAY_DASHBOARD": f"http://127.0.0.1:{free_port()}",
               "RAYSTYLE_SERVE_URL": f"http://127.0.0.1:{free_port()}",
               "RAYSTYLE_STORAGE": str(runs), "RAYSTYLE_MONITOR_REFRESH": "0"})
    at = at.selectbox(key="run").set_value("done").run()
    assert not at.exception
    caption = next(c.value for c in at.caption if "ranked by" in c.value)
    assert "](http" not in caption and "![" not in caption and ":red[" not in caption
    assert "<b>" not in caption and " $x$" not in caption
    assert r"\]\(http\:" in caption and r"\:red\[\<b\>" in caption


def test_plain_escapes_every_markdown_mark():
    assert mon.plain("a_b *c* [d](e) `f`\nnext") == r"a\_b \*c\* \[d\]\(e\) \`f\` next"
