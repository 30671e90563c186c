"""Hostile clients against a live Serve app (real Ray Serve, raw sockets): bodies that trickle
in are cut with 408 JSON and do not hold the slots of complete requests; decoded pixels in
flight are bounded per ingress replica (503 JSON); the shipped configs bound a request's time
at the proxy too. One small app for the module, a few seconds per test."""

import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import yaml

from raystyle.serve.app import AppArgs, app_builder, load_serve_config
from tests.helpers import REPO_ROOT, SMALL, png_bytes

pytestmark = pytest.mark.usefixtures("ray_session")

GRACE_S, MIN_RATE, BODY_TIMEOUT_S = 3.0, 1024, 6.0
MAX_PENDING = 3
PHOTO_SIDE = 300  # 90 000 pixels: one fits in the app's budget, two do not
ARGS = {"provider": "cpu", "max_pending": MAX_PENDING, "body_grace_s": GRACE_S,
        "body_min_bytes_per_s": MIN_RATE, "body_timeout_s": BODY_TIMEOUT_S,
        "max_pixels": 100_000, "max_pixels_in_flight": 150_000,
        "ingress": {**SMALL, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        "deployment": {**SMALL, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}}


@pytest.fixture(scope="module")
def hostile(exported, serve_url):
    """The app at /hostile of the session's Serve: (base URL, host, port)."""
    from ray import serve

    serve.run(app_builder({**ARGS, "models_dir": str(exported.path.parent)}), name="hostile",
              route_prefix="/hostile")
    host, port = serve_url.removeprefix("http://").split(":")
    url = f"{serve_url}/hostile"
    assert requests.post(f"{url}/styles/tiny", data=png_bytes(np.zeros((32, 32, 3), np.uint8)),
                         timeout=60).status_code == 200  # warm: the route and the replica's session
    yield url, host, int(port)
    serve.delete("hostile")


def _response(buf: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status, headers, body) once ``buf`` holds a whole response with a Content-Length."""
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if len(body) < int(headers.get("content-length", 0)):
        return None
    return int(lines[0].split()[1]), headers, body


def _trickle(host: str, port: int, path: str, *, chunk: int, every_s: float, length: int = 10**6,
             give_up_s: float = 15.0) -> tuple[int | None, dict | None, float]:
    """POST with ``Content-Length: length`` and then ``chunk`` bytes every ``every_s`` s until the
    server answers (or ``give_up_s`` passes): (status or None, JSON body, seconds to the answer)."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
                  f"Content-Length: {length}\r\n\r\n".encode())
        start, buf, sent = time.monotonic(), b"", 0
        while time.monotonic() - start < give_up_s:
            readable, _, _ = select.select([s], [], [], every_s)
            if readable:
                data = s.recv(65536)
                if not data:
                    break
                buf += data
                got = _response(buf)
                if got:
                    return got[0], json.loads(got[2]), time.monotonic() - start
            elif sent < length:
                try:
                    s.sendall(b"\x89" * min(chunk, length - sent))
                    sent += chunk
                except OSError:
                    break
        return None, None, time.monotonic() - start


def test_slow_bodies_get_408_and_do_not_hold_the_slots_of_complete_requests(hostile):
    """max_pending + 2 clients that send one byte a second, and one that sends 2 KiB/s but
    never finishes: each gets 408 JSON at its deadline (the floor rate after the grace, or the
    whole-body limit), and a normal request made while they are connected gets 200."""
    url, host, port = hostile
    path = "/hostile/styles/tiny"
    photo = png_bytes(np.full((64, 64, 3), 120, np.uint8))
    with ThreadPoolExecutor(MAX_PENDING + 3) as pool:
        crawlers = [pool.submit(_trickle, host, port, path, chunk=1, every_s=1.0)
                    for _ in range(MAX_PENDING + 2)]
        steady = pool.submit(_trickle, host, port, path, chunk=512, every_s=0.25)
        time.sleep(1.0)  # all of them are in the ingress replica, reading
        early = sum(f.done() for f in [*crawlers, steady])
        normal = requests.post(f"{url}/styles/tiny", data=photo, timeout=30)
        connected = sum(not f.done() for f in crawlers)
        results = [f.result() for f in crawlers]
        steady_result = steady.result()
    print(f"slow clients: {[(r[0], round(r[2], 1)) for r in results]}, steady: "
          f"{steady_result[0], round(steady_result[2], 1)}; the normal request: {normal.status_code} "
          f"with {connected} slow clients connected")
    assert early == 0, f"{early} slow clients answered within 1 s"
    assert connected == len(crawlers), "the normal request came while they were all connected"
    assert normal.status_code == 200, normal.text[:300]
    for status, body, seconds in results:
        assert status == 408, f"no 408 after {seconds:.1f} s: {status} {body}"
        assert body["error"] == "request timeout" and body["request_id"]
        assert "body_min_bytes_per_s" in body["detail"]
        assert GRACE_S - 0.5 < seconds < GRACE_S + 2.5, f"408 after {seconds:.1f} s"
    status, body, seconds = steady_result
    assert status == 408 and "body_timeout_s" in body["detail"], (status, body)
    assert BODY_TIMEOUT_S - 0.5 < seconds < BODY_TIMEOUT_S + 2.5, f"408 after {seconds:.1f} s"
    assert requests.post(f"{url}/styles/tiny", data=photo, timeout=30).status_code == 200


def test_decoded_pixels_in_flight_are_bounded_with_json_503(hostile):
    """max_pixels_in_flight 150 000 and photos of 90 000 pixels: two at once are one too
    many, so concurrent clients meet 503 JSON with Retry-After, and the others get 200."""
    url, _, _ = hostile
    y, x = np.mgrid[0:PHOTO_SIDE, 0:PHOTO_SIDE]
    photo = png_bytes(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))
    answers: list[requests.Response] = []
    lock = threading.Lock()
    stop = time.monotonic() + 8

    def client():
        while time.monotonic() < stop:
            r = requests.post(f"{url}/styles/tiny", data=photo, timeout=30)
            with lock:
                answers.append(r)
                if any(a.status_code == 503 and "max_pixels_in_flight" in a.json()["detail"]
                       for a in answers) and any(a.status_code == 200 for a in answers):
                    return

    threads = [threading.Thread(target=client) for _ in range(MAX_PENDING)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503}, codes
    budget = [r for r in answers if r.status_code == 503 and "max_pixels_in_flight" in r.json()["detail"]]
    print(f"{len(codes)} answers: {codes.count(200)} x 200, {len(budget)} x 503 over the pixel budget")
    assert budget and 200 in codes
    r = budget[0]
    assert r.json()["error"] == "overloaded" and r.headers["retry-after"]
    assert r.headers["content-type"].startswith("application/json") and r.json()["request_id"]


def test_a_pixel_budget_below_max_pixels_is_refused(exported):
    with pytest.raises(ValueError, match=r"max_pixels_in_flight"):
        app_builder({"models_dir": str(exported.path.parent), "max_pixels": 1000,
                     "max_pixels_in_flight": 999})


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml", "kuberay-rayservice.yaml"])
def test_the_shipped_configs_bound_requests_at_the_proxy_and_bodies_in_the_app(name):
    """http_options.request_timeout_s (Serve's schema takes it) is set, above the app's
    whole-body limit, and the app's body and pixel limits are spelt out."""
    from ray.serve.schema import ServeDeploySchema

    path = REPO_ROOT / "serve_configs" / name
    doc = yaml.safe_load(path.read_text())
    if doc.get("kind") == "RayService":
        doc = yaml.safe_load(doc["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(doc)
    timeout = schema.http_options.request_timeout_s
    (app,) = doc["applications"]
    args = AppArgs.from_dict(app["args"])
    assert timeout is not None and timeout > args.body_timeout_s, (timeout, args.body_timeout_s)
    for key in ("body_timeout_s", "body_grace_s", "body_min_bytes_per_s", "max_pixels_in_flight"):
        assert key in app["args"], key
    assert args.max_pixels_in_flight >= args.max_pixels


def test_raystyle_serve_passes_the_configs_request_timeout_to_serve(exported, monkeypatch):
    """`raystyle serve --config` starts Serve with the config's request_timeout_s."""
    from ray import serve

    import raystyle.cluster
    from raystyle.serve.app import run_from_config

    started: dict = {}
    monkeypatch.setattr(raystyle.cluster, "connect", lambda address=None: None)
    monkeypatch.setattr(serve, "start", lambda http_options: started.update(http_options))
    monkeypatch.setattr(serve, "run", lambda *a, **k: None)
    http, _ = load_serve_config(REPO_ROOT / "serve_configs" / "local.yaml")
    run_from_config(REPO_ROOT / "serve_configs" / "local.yaml", models_dir=exported.path.parent, port=1)
    assert started["request_timeout_s"] == http["request_timeout_s"] and started["port"] == 1
