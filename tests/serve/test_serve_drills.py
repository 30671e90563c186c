"""Drills against a live `raystyle serve` application on 127.0.0.1 (real Ray Serve, real HTTP):
big uploads must not stall /healthz, a burst is shed with 503 JSON at whichever hop is full,
a killed style replica gives a JSON 503 and comes back, every failure is JSON with a request id.
Bounded in count and time (each drill a few seconds of traffic)."""

import io
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from raystyle.serve.app import app_builder
from tests.helpers import SMALL

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def proxy(serve_url):
    return serve_url


@pytest.fixture(scope="module")
def models(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("drill_models")
    shutil.copytree(exported.path, root / "tiny")
    return root


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _is_json_error(r: requests.Response, status: int) -> bool:
    return (r.status_code == status and r.headers.get("content-type", "").startswith("application/json")
            and bool(r.json().get("error")) and r.json().get("request_id") == r.headers.get("x-request-id"))


@pytest.mark.slow  # a load drill
def test_healthz_answers_while_24_mp_uploads_are_processed(proxy, models):
    """4 uploads of 24 MP (2 PNG, 2 JPEG) with strength and colour options in flight:
    /healthz answers every probe within 200 ms meanwhile."""
    from ray import serve

    args = {"models_dir": str(models), "provider": "cpu", "max_body_mb": 20, "max_pixels": 30_000_000,
            "ingress": SMALL, "deployment": {**SMALL, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}}
    serve.run(app_builder(args), name="big", route_prefix="/big")
    url = f"{proxy}/big"
    h, w = 4000, 6000
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    photo = np.stack([x / w * 255, y / h * 255, 128 + 100 * np.sin(x / 50) * np.cos(y / 70)], -1).astype(np.uint8)
    del x, y
    bodies = [_encode(photo, "PNG", compress_level=1), _encode(photo, "JPEG", quality=90)] * 2
    del photo
    for _ in range(3):  # warm: the route, the replica's session
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    params = {"strength": 0.5, "preserve_color": "true", "max_side": 1024, "format": "jpeg"}

    def upload(body):
        return requests.post(f"{url}/styles/tiny", params=params, data=body, timeout=300)

    probes: list[float] = []
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(upload, b) for b in bodies]
        time.sleep(0.3)  # the bodies are on their way
        while not all(f.done() for f in futures):
            start = time.perf_counter()
            r = requests.get(f"{url}/healthz", timeout=10)
            probes.append(time.perf_counter() - start)
            assert r.status_code == 200
            time.sleep(0.05)
        results = [f.result() for f in futures]
    for r in results:
        assert r.status_code == 200, r.text[:200]
        assert max(Image.open(io.BytesIO(r.content)).size) == 1024
    assert len(probes) >= 5
    print(f"healthz during 4 x 24 MP uploads: {len(probes)} probes, p50 "
          f"{statistics.median(probes) * 1000:.0f} ms, max {max(probes) * 1000:.0f} ms")
    assert max(probes) < 0.2, f"slowest /healthz {max(probes) * 1000:.0f} ms"
    serve.delete("big")


@pytest.mark.slow  # a load drill (test_serve's overload test is default)
def test_a_burst_of_4x_capacity_is_shed_with_json_503_and_recovers(proxy, models, sample_data):
    """Ingress admits 4 (max_pending), the style 2 (1 running + 1 queued): 16 clients at once.
    Every answer is 200 or 503 JSON, nothing hangs, and a request succeeds within 2 s after."""
    from ray import serve

    args = {"models_dir": str(models), "provider": "cpu", "max_pending": 4,
            "ingress": {**SMALL, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
            "deployment": {**SMALL, "max_ongoing_requests": 1, "max_queued_requests": 1,
                           "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
                           "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.0}}}
    serve.run(app_builder(args), name="burst", route_prefix="/burst")
    url = f"{proxy}/burst"
    img = Image.open(sorted((sample_data / "testA").iterdir())[0]).convert("RGB").resize((320, 320))
    body = _encode(np.asarray(img), "PNG")
    answers: list[requests.Response] = []
    lock = threading.Lock()
    stop = time.monotonic() + 5

    def client():
        while time.monotonic() < stop:
            r = requests.post(f"{url}/styles/tiny", data=body, timeout=30)
            with lock:
                answers.append(r)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive(), "a client hung"
    codes = [r.status_code for r in answers]
    bad = [r for r in answers if r.status_code != 200 and not _is_json_error(r, 503)]
    assert not bad, f"{len(bad)} answers neither 200 nor 503 JSON: {bad[0].status_code} {bad[0].text[:200]}"
    details = {r.json()["detail"].split(";")[0][:40] for r in answers if r.status_code == 503}
    print(f"burst: {len(codes)} answers, {codes.count(200)} x 200, {codes.count(503)} x 503; {details}")
    assert 200 in codes and 503 in codes
    assert any(d.startswith("the ingress holds") for d in details), "the ingress sheds above max_pending"
    assert all(r.headers.get("retry-after") for r in answers if r.status_code == 503)
    start = time.monotonic()
    while True:  # 200 again within 2 s after the burst
        r = requests.post(f"{url}/styles/tiny", data=body, timeout=10)
        if r.status_code == 200 or time.monotonic() - start > 2:
            break
    assert r.status_code == 200 and time.monotonic() - start < 2
    serve.delete("burst")


def _replica_actors(app: str, deployment: str) -> list[str]:
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(prefix)]


@pytest.mark.slow  # a replica-kill drill
def test_killing_the_style_replica_mid_request_gives_json_503_then_200(proxy, models, sample_data):
    import ray
    from ray import serve

    args = {"models_dir": str(models), "provider": "cpu", "ingress": SMALL,
            "deployment": {**SMALL, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}}
    serve.run(app_builder(args), name="kill", route_prefix="/kill")
    url = f"{proxy}/kill"
    small = _encode(np.asarray(Image.open(sorted((sample_data / "testA").iterdir())[0]).convert("RGB")), "PNG")
    assert requests.post(f"{url}/styles/tiny", data=small, timeout=30).status_code == 200
    big = _encode(np.full((2000, 2000, 3), 90, np.uint8), "PNG")  # seconds of inference
    [name] = _replica_actors("kill", "style-tiny")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, f"{url}/styles/tiny", data=big, timeout=120)
        time.sleep(1.0)  # decoded and inside the replica by now
        assert not pending.done()
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        r = pending.result()
    assert _is_json_error(r, 503), f"{r.status_code} {r.text[:300]}"
    assert r.json()["error"] == "style unavailable" and r.headers.get("retry-after")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        r = requests.post(f"{url}/styles/tiny", data=small, timeout=30)
        if r.status_code == 200:
            break
        assert r.status_code == 503 and r.headers["content-type"].startswith("application/json"), r.text[:200]
        time.sleep(0.5)
    assert r.status_code == 200, "the style answers again once Serve replaced the replica"
    serve.delete("kill")


@pytest.mark.slow  # an app of its own with a broken model
def test_an_inference_error_is_a_json_500_with_the_request_id(proxy, models, tmp_path, sample_data):
    """A model that fails inside ONNX Runtime (a real ORT error, in the style replica)."""
    import onnx
    from onnx import TensorProto, helper
    from ray import serve

    from raystyle import registry

    root = tmp_path / "models"
    shutil.copytree(models / "tiny", root / "broken")
    version_dir = registry.get_style("broken", root).version_dir
    graph = helper.make_graph(  # reshapes to rows of 7 values: fails for any 3*H*W not divisible by 7
        [helper.make_node("Constant", [], ["shape"], value=helper.make_tensor("s", TensorProto.INT64, [2], [-1, 7])),
         helper.make_node("Reshape", ["image", "shape"], ["stylized"])],
        "broken", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("stylized", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(version_dir / "model.onnx"))
    args = {"models_dir": str(root), "provider": "cpu", "ingress": SMALL,
            "deployment": {**SMALL, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}}
    serve.run(app_builder(args), name="broken", route_prefix="/broken")
    body = _encode(np.full((64, 64, 3), 100, np.uint8), "PNG")
    r = requests.post(f"{proxy}/broken/styles/broken", data=body, timeout=60)
    assert _is_json_error(r, 500), f"{r.status_code} {r.text[:300]}"
    assert r.json()["error"] == "inference failed" and r.json()["request_id"] in r.json()["detail"]
    r = requests.get(f"{proxy}/broken/no/such/route", timeout=10)
    assert _is_json_error(r, 404)
    serve.delete("broken")
