"""Real Ray Serve on 127.0.0.1, real HTTP: errors, concurrency, shedding, autoscaling, redeploy."""

import http.client
import io
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from raystyle.data.images import decode
from raystyle.infer.generator import Stylizer
from raystyle.serve.app import app_builder
from tests.helpers import REPO_ROOT, SMALL, png_bytes

pytestmark = pytest.mark.usefixtures("ray_session")




@pytest.fixture(scope="module")
def models(exported, tmp_path_factory):
    """A private copy of the registry: the redeploy test adds a style to it."""
    import shutil

    root = tmp_path_factory.mktemp("serve_models")
    shutil.copytree(exported.path, root / "tiny")
    return root


@pytest.fixture(scope="module")
def server(models, serve_url):
    from ray import serve

    args = {"models_dir": str(models), "provider": "cpu", "max_body_mb": 0.5,
            "max_pixels": 1_000_000, "ingress": SMALL,
            "deployment": {**SMALL, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}}
    serve.run(app_builder(args), name="main", route_prefix="/")
    yield serve_url, args
    serve.delete("main")




@pytest.fixture(scope="module")
def images(sample_data):
    return [np.asarray(decode(p)) for p in sorted((sample_data / "testA").iterdir())]


def test_health_styles_and_openapi(server):
    url, _ = server
    assert requests.get(f"{url}/healthz").json() == {"status": "ok", "styles": ["tiny"]}
    meta = requests.get(f"{url}/styles").json()
    assert meta["tiny"]["direction"] == "ab" and "fp32" in meta["tiny"]["precisions"]
    spec = requests.get(f"{url}/openapi.json").json()
    params = {p["name"] for p in spec["paths"]["/styles/{name}"]["post"]["parameters"]}
    assert {"name", "strength", "preserve_color", "format", "max_side"} <= params


def test_stylize_raw_and_multipart(server, images, exported):
    url, _ = server
    offline = Stylizer("tiny", models_dir=exported.path.parent).stylize(images[0])
    r = requests.post(f"{url}/styles/tiny", data=png_bytes(images[0]))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-raystyle-style"] == "tiny" and float(r.headers["x-raystyle-inference-ms"]) > 0
    assert np.abs(np.asarray(decode(r.content)).astype(int) - offline).max() <= 1
    r = requests.post(f"{url}/styles/tiny?format=webp&max_side=24",
                      files={"image": ("x.png", png_bytes(images[0]), "image/png")})
    assert r.status_code == 200 and r.content.startswith(b"RIFF")
    assert max(decode(r.content).size) == 24
    r = requests.post(f"{url}/styles/tiny?strength=0", data=png_bytes(images[1]))
    assert np.array_equal(np.asarray(decode(r.content)), images[1])


def test_python_client(server, images, exported):
    """raystyle.serve.client (the demo's and the monitor's way in) against the real API."""
    from raystyle.serve import client

    url, _ = server
    assert set(client.styles(url)) == {"tiny"}
    png, headers = client.stylize(url, "tiny", png_bytes(images[0]), strength=0.5, max_side=32)
    assert max(decode(png).size) == 32 and headers["x-raystyle-style"] == "tiny"
    with pytest.raises(client.ApiError, match=r"^404 unknown style: 'nope'"):
        client.stylize(url, "nope", png_bytes(images[0]))
    with pytest.raises(client.ApiError, match=r"^400 bad image"):
        client.stylize(url, "tiny", b"not an image")


def _ppm() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PPM")
    return buf.getvalue()


@pytest.mark.parametrize(("path", "body", "status", "error"), [
    ("/styles/nope", b"x", 404, "unknown style"),
    ("/styles/tiny", b"not an image", 400, "bad image"),
    ("/styles/tiny", b"", 400, "bad image"),
    ("/styles/tiny", "ppm", 415, "unsupported image format"),
    ("/styles/tiny", "huge", 413, "image too large"),
    ("/styles/tiny", b"x" * (600 * 1024), 413, "request too large"),
    ("/styles/tiny?strength=1.5", b"x", 422, "invalid parameter"),
    ("/styles/tiny?format=gif", b"x", 422, "invalid parameter"),
    ("/styles/tiny?max_side=3", b"x", 422, "invalid parameter"),
    ("/styles/tiny?preserve_color=sepia", b"x", 422, "invalid parameter"),
])
def test_errors_are_json_and_the_server_still_answers(server, path, body, status, error):
    url, _ = server
    if body == "ppm":
        body = _ppm()
    elif body == "huge":  # 1200 x 1000 = 1.2 MP > the 1 MP limit, but a small PNG
        body = png_bytes(np.zeros((1000, 1200, 3), np.uint8))
    r = requests.post(f"{url}{path}", data=body)
    assert r.status_code == status
    assert r.json()["error"] == error and r.json()["detail"]
    assert requests.get(f"{url}/healthz").status_code == 200


def test_413_comes_before_the_body_is_read(server):
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/styles/tiny")
    conn.putheader("Content-Length", str(10**9))  # claims 1 GB, sends 10 bytes
    conn.endheaders()
    conn.send(b"0123456789")
    start = time.perf_counter()
    resp = conn.getresponse()
    assert resp.status == 413 and time.perf_counter() - start < 5


def test_chunked_upload_over_the_cap_gets_413(server):
    """No Content-Length (Transfer-Encoding: chunked): the cap is counted as the bytes arrive."""
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (b"x" * 65536 for _ in range(16))  # 1 MiB > the 0.5 MiB cap
    conn.request("POST", "/styles/tiny", body=chunks, encode_chunked=True,
                 headers={"Content-Type": "image/png"})
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 413, body[:200]
    assert json.loads(body)["error"] == "request too large"
    assert requests.post(f"{url}/styles/tiny", data=b"x" * 1000).status_code == 400  # still serving


def test_styles_lists_what_a_client_needs_and_no_server_paths(server, models):
    url, args = server
    meta = requests.get(f"{url}/styles").json()["tiny"]
    text = json.dumps(meta)
    assert str(models) not in text and "/tmp" not in text and "checkpoint" not in text
    assert {"training", "validation", "architecture"}.isdisjoint(meta)
    assert meta["direction"] == "ab" and meta["sizes"]["max_pixels"] == args["max_pixels"]
    assert meta["sizes"]["max_body_bytes"] == int(args["max_body_mb"] * 2**20)
    assert meta["precisions"]["fp32"]["validated"] is True
    assert meta["precisions"]["int8"]["psnr_vs_fp32_db"] > 20  # quality figures are kept


def test_16_concurrent_clients_get_the_offline_result(server, images, exported):
    url, _ = server
    stylizer = Stylizer("tiny", models_dir=exported.path.parent)
    jobs = [(images[i % len(images)], [1.0, 0.5][i % 2], [True, False, "histogram", "swap"][i % 4]) for i in range(32)]

    def call(job):
        img, strength, keep = job
        r = requests.post(f"{url}/styles/tiny", params={"strength": strength, "preserve_color": keep},
                          data=png_bytes(img), timeout=120)
        return r.status_code, np.asarray(decode(r.content)) if r.status_code == 200 else None

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, jobs))
    for (img, strength, keep), (status, got) in zip(jobs, results, strict=True):
        assert status == 200
        want = stylizer.stylize(img, strength=strength, preserve_color=keep)
        assert np.abs(got.astype(int) - want).max() <= 1


def test_overload_is_shed_with_503_and_recovers(server, models, images):
    from ray import serve

    args = {"models_dir": str(models), "provider": "cpu", "ingress": SMALL,
            "deployment": {**SMALL, "max_ongoing_requests": 1, "max_queued_requests": 1,
                           "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
                           "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}}
    serve.run(app_builder(args), name="limits", route_prefix="/limits")
    url = f"{server[0]}/limits"
    body = png_bytes(np.asarray(Image.fromarray(images[0]).resize((256, 256))))
    statuses: list[int] = []
    stop = time.monotonic() + 4

    def client():
        while time.monotonic() < stop:
            r = requests.post(f"{url}/styles/tiny", data=body, timeout=60)
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["error"] == "overloaded"

    threads = [threading.Thread(target=client) for _ in range(8)]  # 4x the capacity of 2
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
    start = time.monotonic()
    assert requests.post(f"{url}/styles/tiny", data=body, timeout=10).status_code == 200
    assert time.monotonic() - start < 1.0
    serve.delete("limits")


def _replicas(app: str) -> int:
    from ray import serve

    dep = serve.status().applications[app].deployments["style-tiny"]
    return sum(n for state, n in dep.replica_states.items() if state == "RUNNING")


@pytest.mark.slow  # an autoscaling drill (overload shedding stays default)
def test_autoscaling_goes_up_under_load_and_back_down(server, models, images):
    from ray import serve

    args = {"models_dir": str(models), "provider": "cpu", "ingress": SMALL,
            "deployment": {**SMALL, "max_ongoing_requests": 2, "max_queued_requests": 100,
                           "autoscaling_config": {
                               "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                               "upscale_delay_s": 0.5, "downscale_delay_s": 2,
                               "metrics_interval_s": 0.5, "look_back_period_s": 1},
                           "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}}
    serve.run(app_builder(args), name="auto", route_prefix="/auto")
    url = f"{server[0]}/auto"
    body = png_bytes(np.asarray(Image.fromarray(images[0]).resize((192, 192))))
    assert _replicas("auto") == 1
    done = threading.Event()

    def client():
        while not done.is_set():
            requests.post(f"{url}/styles/tiny", data=body, timeout=60)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    peak, deadline = 1, time.monotonic() + 40
    while time.monotonic() < deadline and peak < 2:
        peak = max(peak, _replicas("auto"))
        time.sleep(0.5)
    done.set()
    for t in threads:
        t.join()
    assert peak == 2, "scaled up under load"
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and _replicas("auto") > 1:
        time.sleep(0.5)
    assert _replicas("auto") == 1, "scaled back down after the load"
    serve.delete("auto")


@pytest.mark.slow  # a redeploy drill
def test_redeploy_with_a_new_style_drops_no_request(server, trained_checkpoint, images, tmp_path_factory):
    from ray import serve

    from raystyle.export import export_style

    url, args = server
    body = png_bytes(images[0])
    results: list[int] = []
    done = threading.Event()

    def client():
        while not done.is_set():
            results.append(requests.post(f"{url}/styles/tiny", data=body, timeout=60).status_code)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    export_style(trained_checkpoint, "second", models_dir=args["models_dir"], direction="ba")
    serve.run(app_builder(args), name="main", route_prefix="/")  # redeploy: adds style-second
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "second" not in requests.get(f"{url}/healthz").json()["styles"]:
        time.sleep(0.2)
    time.sleep(1)
    done.set()
    for t in threads:
        t.join()
    assert "second" in requests.get(f"{url}/healthz").json()["styles"]
    assert results and set(results) == {200}, f"{len(results)} requests: {set(results)}"
    assert requests.post(f"{url}/styles/second", data=body).status_code == 200


def test_the_ingress_is_bounded_and_a_config_that_would_queue_at_the_proxy_is_refused(models):
    """README: the ingress holds max_pending, its max_ongoing_requests stays above that, its
    queue is bounded and it autoscales 1..2."""
    from raystyle.serve.app import Gateway

    assert Gateway.max_queued_requests == 64 and Gateway.max_ongoing_requests == 64
    auto = Gateway._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas) == (1, 2)
    with pytest.raises(ValueError, match=r"must be above max_pending \(32\)"):
        app_builder({"models_dir": str(models), "ingress": {"max_ongoing_requests": 32}})
    app_builder({"models_dir": str(models), "max_pending": 8, "ingress": {"max_ongoing_requests": 9}})


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml"])
def test_serve_configs_are_valid_and_bind_localhost(name):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from raystyle.serve.app import AppArgs, load_serve_config

    path = REPO_ROOT / "serve_configs" / name
    ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    http, args = load_serve_config(path)
    assert http["host"] == "127.0.0.1"
    AppArgs.from_dict(args)  # every key is one app_builder knows


def test_app_args_are_read_like_the_training_config():
    """The Serve app's `args:` go through raystyle.config like the training config: a typo or a
    wrong type is one line naming the key (pydantic's default let an unknown key pass unseen)."""
    from raystyle.config import ConfigError
    from raystyle.serve.app import AppArgs

    args = AppArgs.from_dict({"styles": ["a"], "per_style": {"a": {"num_replicas": 2}}, "max_pending": 4})
    assert (args.styles, args.per_style, args.max_pending) == (["a"], {"a": {"num_replicas": 2}}, 4)
    assert AppArgs.from_dict(args.to_dict()) == args  # as the ingress replica receives it
    for bad, message in [({"max_pendnig": 4}, "unknown config key 'args.max_pendnig'"),
                         ({"max_pending": 0}, "args.max_pending must be > 0"),
                         ({"styles": "a"}, "args.styles: expected a list"),
                         ({"precision": "fp8"}, "args.precision: 'fp8' is not one of"),
                         ({"body_grace_s": -1}, "args.body_grace_s must be >= 0"),
                         ({"per_style": {"a": 3}}, "args.per_style.a: expected a mapping"),
                         ({"max_pixels": 10, "max_pixels_in_flight": 5}, "must be at least max_pixels")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            AppArgs.from_dict(bad)


def test_raystyle_serve_refuses_a_misspelt_arg_in_one_line_before_ray(tmp_path, capsys):
    """docs/serving.md: a key the app does not know stops `raystyle serve` with one line naming it."""
    from tests.helpers import one_line_error

    config = tmp_path / "serve.yaml"
    config.write_text("applications:\n- name: raystyle\n  import_path: raystyle.serve:app_builder\n"
                      "  args: {max_pendnig: 4}\n")
    line = one_line_error(["serve", "--config", str(config), "--models-dir", str(tmp_path)], capsys)
    assert "unknown config key 'args.max_pendnig'" in line


def test_kuberay_rayservice_carries_the_same_application():
    """serve_configs/kuberay-rayservice.yaml: valid for Serve, same app as local.yaml."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from raystyle.serve.app import AppArgs, load_serve_config

    root = REPO_ROOT / "serve_configs"
    doc = yaml.safe_load((root / "kuberay-rayservice.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_cfg)
    (app,) = serve_cfg["applications"]
    _, local = load_serve_config(root / "local.yaml")
    args = AppArgs.from_dict(app["args"])
    assert app["import_path"] == "raystyle.serve:app_builder" and args.models_dir == "/models"
    assert set(app["args"]) == set(local) and app["args"]["deployment"].keys() == local["deployment"].keys()
    assert re.fullmatch(r"\d+\.\d+\.\d+", doc["spec"]["rayClusterConfig"]["rayVersion"])
    spec = doc["spec"]["rayClusterConfig"]
    mounts = [m["mountPath"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"] for m in c["volumeMounts"]]
    assert mounts == ["/models", "/models"]
    # token auth on every node, the token from a Secret (README: KubeRay)
    for c in [c for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]] for c in g["template"]["spec"]["containers"]]:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "raystyle-ray-token", "key": "token"}
