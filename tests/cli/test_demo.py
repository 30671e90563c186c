"""`raystyle demo` end to end in its own process, and the monitor against what it runs.

One demo (tiny preset, 8 steps) starts its own local Ray with the dashboard and token auth,
trains, exports, serves, stylizes through HTTP and starts the monitor. The tests then use
that real cluster, finished run and Serve application: the page's sections under
``streamlit.testing``, the page in headless Chromium, Ctrl-C, and a second run that reuses
everything.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from raystyle.data.images import decode
from raystyle.monitor import snapshot as mon
from raystyle.serve import client
from tests.helpers import REPO_ROOT

# `raystyle demo` in its own process (its own Ray, Serve, monitor) and the page in Chromium: slow
pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]
# The README's command: the console script pip installed (python -m raystyle where it is not).
RAYSTYLE = [shutil.which("raystyle")] if shutil.which("raystyle") else [sys.executable, "-m", "raystyle"]
APP = REPO_ROOT / "dashboard" / "app.py"
STEPS = 8
READY_TIMEOUT_S = 600
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_refuses_a_busy_port_before_doing_anything(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([*RAYSTYLE, "demo", "--home", str(tmp_path), "--serve-port", str(port)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"raystyle: error: port {port} on 127.0.0.1 is in use (another demo, "
                                "`raystyle serve` or monitor?); stop it or pass --serve-port")
    assert list(tmp_path.iterdir()) == []  # no dataset written, no Ray started


class Demo:
    def __init__(self, home: Path, ports: dict[str, int]):
        self.home, self.ports, self.lines = home, ports, []
        self.ready = threading.Event()
        env = {**os.environ, "RAYSTYLE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [*RAYSTYLE, "demo", "--max-steps", str(STEPS), "--workers", "2",
             "--serve-port", str(ports["serve"]), "--monitor-port", str(ports["monitor"]),
             "--dashboard-port", str(ports["dashboard"])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C stops"):
                self.ready.set()
        self.ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def url(self, label: str) -> str:
        m = re.search(rf"^  {label}\s+(http://\S+)", self.output, re.M)
        assert m, self.output[-3000:]
        return m.group(1)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = Demo(tmp_path_factory.mktemp("demo_home"),
             {"serve": _free_port(), "monitor": _free_port(), "dashboard": _free_port()})
    try:
        if not d.ready.wait(READY_TIMEOUT_S) or d.proc.poll() is not None:
            pytest.fail(f"demo not ready (exit {d.proc.poll()}):\n{d.output[-4000:]}")
        yield d
    finally:
        d.stop()
        if d.proc.poll() is None:
            os.killpg(d.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def photos(demo):
    return sorted((demo.home / "data" / "sample" / "testA").iterdir())


def test_demo_prints_its_outputs_and_urls(demo):
    out = demo.output
    assert "sample dataset written" in out and "(exported)" in out
    assert f"step {STEPS}/{STEPS}" in out
    # the held-out figures of the exported checkpoint, and its ground-truth gain, whatever it is
    assert "images of the report split of test, paired with ground truth" in out
    assert re.search(r"^ground-truth PSNR gain over the photo itself: [+-]\d+\.\d\d dB", out, re.M)
    assert "validation: ground truth" in out  # training's own progress lines
    assert demo.url("Serve \\(HTTP API\\)") == f"http://127.0.0.1:{demo.ports['serve']}"
    assert demo.url("Ray dashboard") == f"http://127.0.0.1:{demo.ports['dashboard']}"
    assert demo.url("monitor") == f"http://127.0.0.1:{demo.ports['monitor']}"
    assert re.search(rf"^  stylized photos\s+{re.escape(str(demo.home / 'outputs' / 'stylized'))}$", out, re.M)
    assert "Traceback" not in out


def test_demo_outputs_exist_and_differ_from_inputs(demo, photos):
    results = sorted((demo.home / "outputs" / "stylized").iterdir())
    assert [p.stem for p in results] == [p.stem for p in photos] and len(photos) >= 4
    for src, res in zip(photos, results, strict=True):
        a, b = (np.asarray(decode(p)).astype(int) for p in (src, res))
        assert a.shape == b.shape and np.abs(a - b).mean() > 1, f"{res} is its input"
    assert (demo.home / "outputs" / "demo_grid.png").is_file()
    assert (demo.home / "runs" / "demo" / f"checkpoint_{STEPS:08d}" / "manifest.json").is_file()
    assert (demo.home / "models" / "demo" / "model.int8.onnx").is_file()


def test_demo_urls_answer(demo, photos):
    serve = demo.url("Serve \\(HTTP API\\)")
    assert requests.get(f"{serve}/healthz", timeout=10).json() == {"status": "ok", "styles": ["demo"]}
    png, _ = client.stylize(serve, "demo", photos[0].read_bytes(), fmt="jpeg")
    assert png[:3] == b"\xff\xd8\xff"
    dash = demo.url("Ray dashboard")
    token = mon.read_token(dash)
    assert token.value, "a local Ray starts with token auth: the token file exists"
    assert requests.get(f"{dash}/api/version", timeout=10).status_code == 401
    assert requests.get(f"{dash}/api/version", headers=token.headers(dash), timeout=10).status_code == 200
    assert requests.get(f"{demo.url('monitor')}/_stcore/health", timeout=10).text == "ok"


def test_readme_http_examples_against_the_demo(demo, photos, tmp_path, monkeypatch):
    """The README's curl lines and Python snippet, verbatim but for the port."""
    from PIL import Image

    readme = (REPO_ROOT / "README.md").read_text()
    api = readme[readme.index("## HTTP API"):readme.index("## CLI reference")]
    Image.open(photos[0]).convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    here = f"127.0.0.1:{demo.ports['serve']}"
    curls = [line for line in api.splitlines() if line.startswith("curl ")]
    outputs = [subprocess.run(line.replace("127.0.0.1:8000", here), shell=True, cwd=tmp_path,
                              capture_output=True, timeout=120) for line in curls]
    assert [r.returncode for r in outputs] == [0] * 3, [r.stderr for r in outputs]
    assert b'"status":"ok"' in outputs[0].stdout.replace(b" ", b"")
    jpeg, png = Image.open(tmp_path / "photo_demo.jpg"), Image.open(tmp_path / "photo_demo.png")
    assert jpeg.format == "JPEG" and png.format == "PNG"
    assert jpeg.size == Image.open(tmp_path / "photo.jpg").size and max(png.size) <= 512
    snippet = api.split("```python\n", 1)[1].split("```", 1)[0].replace("127.0.0.1:8000", here)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - the README's own example
    assert decode(scope["png"]).size == jpeg.size and scope["headers"]["x-raystyle-style"] == "demo"


def test_wrong_token_is_named_not_hidden(demo):
    dash = demo.url("Ray dashboard")
    snap = mon.cluster_snapshot(dash, mon.Token("not-the-token", "test", mon.origin(dash)))
    assert snap["ok"] is False and "403" in snap["error"] and "token is wrong" in snap["error"]


def test_request_metrics_reach_the_monitor(demo, photos):
    dash = demo.url("Ray dashboard")
    for p in photos[:3]:
        client.stylize(demo.url("Serve \\(HTTP API\\)"), "demo", p.read_bytes())
    deadline, dep = time.monotonic() + 60, None
    while time.monotonic() < deadline:  # Ray exports metrics every few seconds
        snap = mon.windowed(mon.serve_snapshot(dash, nodes=mon.cluster_snapshot(dash)["nodes"]), [])
        dep = next(d for d in snap["deployments"] if d["deployment"] == "style-demo")
        if dep["requests"] >= len(photos) + 4:
            break
        time.sleep(2)
    assert dep["requests"] >= len(photos) + 4, dep  # the demo's photos, the URL test's, these 3
    assert dep["latency_p50_ms"] > 0 and dep["errors"] == 0
    assert dep["replicas"] >= 1 and (dep["min_replicas"], dep["max_replicas"]) == (1, 2)
    assert snap["http"].get("200", 0) >= dep["requests"]


@pytest.fixture
def page(demo, monkeypatch):
    """The page under AppTest, pointed at the demo's Ray, Serve and storage."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RAYSTYLE_RAY_DASHBOARD", demo.url("Ray dashboard"))
    monkeypatch.setenv("RAYSTYLE_SERVE_URL", demo.url("Serve \\(HTTP API\\)"))
    monkeypatch.setenv("RAYSTYLE_STORAGE", str(demo.home / "runs"))
    monkeypatch.setenv("RAYSTYLE_MONITOR_REFRESH", "0")
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def test_page_cluster_section(page):
    m = {x.label: x.value for x in page.metric}
    assert m["Ray nodes alive"] == "1 / 1"
    used, total = (float(v) for v in m["CPUs in use"].split(" / "))
    assert total == os.cpu_count() and 1.5 <= used <= total  # Serve's replicas hold 1.5 CPU
    import ray

    ray_gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else None
    if ray_gpus is None:  # not attached here: the page's figure must still match GPUtil's
        ray_gpus = len(mon.gpu_snapshot()["gpus"])
    if ray_gpus:
        assert m["GPUs in use"].endswith(f" / {ray_gpus:g}"), m["GPUs in use"]
    else:
        assert m["GPUs in use"] == "no GPU", m["GPUs in use"]
    store_used, store_total = (float(v) for v in m["Object store, GiB"].split(" / "))
    assert 0 <= store_used < store_total
    nodes = page.dataframe[0].value
    assert list(nodes["state"]) == ["ALIVE"] and bool(nodes["head"][0])
    assert 0 <= float(m["CPU"].rstrip(" %")) <= 100
    if not mon.gpu_snapshot()["gpus"]:
        assert any(i.value.startswith("No GPU") for i in page.info)


def test_page_training_section(page):
    assert page.selectbox(key="run").value == "demo"
    m = {x.label: x.value for x in page.metric}
    assert m["Status"] == "finished" and m["Step"] == f"{STEPS} / {STEPS}"
    assert m["Checkpoints"] == "1" and float(m["Images/s"]) > 0
    # losses, total, lr, images/s, and 5 held-out validation charts (PSNR, scores, colour, KID-EL0, FID-EL0)
    assert len(page.get("vega_lite_chart")) == 9
    (grid,) = page.get("image")
    assert f"step {STEPS:08d}" in grid.proto.imgs[0].caption
    cks = next(d.value for d in page.dataframe if "checkpoint" in d.value.columns)
    assert list(cks["checkpoint"]) == [f"checkpoint_{STEPS:08d}"]


def test_page_serving_section(page, demo):
    deps = next(d.value for d in page.dataframe if "deployment" in d.value.columns)
    row = deps[deps["deployment"] == "style-demo"].iloc[0]
    assert row["status"] == "HEALTHY" and row["replicas"] >= 1 and row["min..max"] == "1..2"
    apps = next(d.value for d in page.dataframe if "route_prefix" in d.value.columns)
    assert list(apps["name"]) == ["raystyle"] and list(apps["status"]) == ["RUNNING"]
    links = " ".join(md.value for md in page.markdown)
    assert f"{demo.url('Ray dashboard')}/#/serve" in links


def test_page_try_it_section(page, photos):
    data = photos[0].read_bytes()
    assert page.button(key="go").disabled  # nothing uploaded yet
    page.file_uploader(key="photo").set_value((photos[0].name, data, "image/png")).run()
    page.selectbox(key="style").set_value("demo")
    page.slider(key="strength").set_value(0.5)
    page.button(key="go").click()
    page.run()
    assert not page.exception and not page.error, [e.value for e in page.error]
    res = page.session_state["result"]
    before, after = np.asarray(decode(data)).astype(int), np.asarray(decode(res["output"])).astype(int)
    assert after.shape == before.shape and np.abs(after - before).mean() > 0.5
    assert res["style"] == "demo" and float(res["ms"]) > 0
    assert len(page.get("download_button")) == 1


def test_page_try_it_refuses_an_oversized_upload(demo, monkeypatch, photos):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("RAYSTYLE_SERVE_URL", demo.url("Serve \\(HTTP API\\)"))
    monkeypatch.setenv("RAYSTYLE_RAY_DASHBOARD", demo.url("Ray dashboard"))
    monkeypatch.setenv("RAYSTYLE_MONITOR_MAX_UPLOAD_MB", "0.001")  # 1 kB
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.file_uploader(key="photo").set_value((photos[0].name, photos[0].read_bytes(), "image/png")).run()
    at.button(key="go").click()
    at.run()
    assert any("the limit is 0.001 MB" in e.value for e in at.error)
    assert "result" not in at.session_state


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("headless Chromium is needed: `apt-get install chromium` (.ci/run does it) "
                    "or set CHROMIUM=/path/to/chrome")
    return path


def test_monitor_in_headless_chromium(demo, photos, tmp_path):
    """The demo's own monitor in a real browser: every section drawn with data, no error;
    then a photo uploaded and stylized through Try it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 3800})
            page.goto(demo.url("monitor"))
            for text in ("Ray nodes alive", "finished", "Stylize"):
                page.get_by_text(text).first.wait_for(timeout=90_000)
            # Tables are drawn on a canvas; their cells are in the DOM for accessibility.
            for text in ("ALIVE", "style-demo", "HEALTHY", f"checkpoint_{STEPS:08d}"):
                page.get_by_text(text).first.wait_for(state="attached", timeout=60_000)
            page.wait_for_selector("[data-testid=stVegaLiteChart]", timeout=60_000)
            page.wait_for_function("() => !document.querySelector('[data-testid=stSkeleton]')")
            body = page.inner_text("body")  # what is visible
            for section in ("Cluster", "This machine", "Training", "Serving", "Try it"):
                assert section in body
            assert f"{STEPS} / {STEPS}" in body and "Ray nodes alive" in body
            assert "20MB per file" in body  # the demo's upload cap reached Streamlit
            assert page.locator("[data-testid=stException]").count() == 0
            assert page.locator("[data-testid=stAlertContentError]").count() == 0
            assert page.locator("[data-testid=stVegaLiteChart]").count() == 9
            shot = tmp_path / "monitor.png"
            page.screenshot(path=str(shot), full_page=True)
            from PIL import Image

            pixels = np.asarray(Image.open(shot).convert("RGB"))
            assert pixels.shape[1] >= 1400 and pixels.std() > 10  # drawn, not a blank page

            page.locator("[data-testid=stFileUploaderDropzoneInput]").set_input_files(str(photos[1]))
            page.get_by_text(photos[1].name).first.wait_for(timeout=30_000)
            page.get_by_role("button", name="Stylize").click()
            page.get_by_text("after: style demo").first.wait_for(timeout=60_000)
            page.get_by_role("button", name="Download the result").wait_for(timeout=30_000)
            assert page.locator("[data-testid=stAlertContentError]").count() == 0
            page.screenshot(path=str(tmp_path / "monitor_try_it.png"), full_page=True)
            keep = os.environ.get("RAYSTYLE_SCREENSHOTS")
            if keep:  # how docs/monitor.png is made
                Path(keep).mkdir(parents=True, exist_ok=True)
                for name in ("monitor.png", "monitor_try_it.png"):
                    shutil.copy(tmp_path / name, Path(keep) / name)
        finally:
            browser.close()


def test_ctrl_c_stops_everything_and_a_rerun_reuses_it(demo):
    serve, monitor = demo.url("Serve \\(HTTP API\\)"), demo.url("monitor")
    assert demo.stop() == 0, demo.output[-3000:]
    assert "demo stopped" in demo.output
    for url in (f"{serve}/healthz", f"{monitor}/_stcore/health"):
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=3)
    first = {p.name: p.stat().st_mtime for p in (demo.home / "models" / "demo").iterdir()}
    env = {**os.environ, "RAYSTYLE_HOME": str(demo.home)}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([*RAYSTYLE, "demo", "--max-steps", str(STEPS),
                        "--workers", "2", "--serve-port", str(demo.ports["serve"]),
                        "--dashboard-port", str(_free_port()), "--no-monitor", "--no-wait"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "sample dataset: " in r.stdout and "(exists)" in r.stdout
    assert "style 'demo'" in r.stdout and "(exported)" not in r.stdout
    assert "monitor           not started (--no-monitor)" in r.stdout
    assert {p.name: p.stat().st_mtime for p in (demo.home / "models" / "demo").iterdir()} == first
    assert "Traceback" not in r.stdout + r.stderr
