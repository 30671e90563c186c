"""Arbitrary (AdaIN) styles over real Ray Serve and real HTTP: style images per request,
blending, errors, the replica's style-statistics cache, the monitor's "Try it"."""

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from raystyle.data.images import decode
from raystyle.infer.arbitrary import ArbitraryStylizer, style_array
from raystyle.monitor import snapshot as mon
from raystyle.serve import client
from raystyle.serve.app import app_builder
from tests.helpers import SMALL, free_port, png_bytes

pytestmark = pytest.mark.usefixtures("ray_session")
ONE = {**SMALL, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}


@pytest.fixture(scope="module")
def server(arbitrary_style, serve_url):
    from ray import serve

    args = {"models_dir": str(arbitrary_style.path.parent), "provider": "cpu", "max_body_mb": 0.5,
            "max_pixels": 1_000_000, "ingress": SMALL, "deployment": ONE}
    serve.run(app_builder(args), name="arbitrary", route_prefix="/")
    yield serve_url, args
    serve.delete("arbitrary")


@pytest.fixture(scope="module")
def local(arbitrary_style):
    return ArbitraryStylizer(arbitrary_style, provider="cpu")


@pytest.fixture(scope="module")
def photos(sample_data):
    return [np.asarray(decode(p)) for p in sorted((sample_data / "testA").iterdir())]


@pytest.fixture(scope="module")
def paintings(sample_data):
    """Style images as a client uploads them: file bytes."""
    return [p.read_bytes() for p in sorted((sample_data / "trainB").iterdir())]


def _post(url: str, photo: bytes, styles: list[bytes], **params) -> requests.Response:
    files = [("image", ("photo.png", photo, "image/png"))]
    files += [("style_image", (f"s{i}.png", s, "image/png")) for i, s in enumerate(styles)]
    return requests.post(f"{url}/styles/anystyle", params=params, files=files, timeout=60)


def _close(got: bytes, want: np.ndarray) -> None:
    got = np.asarray(decode(got)).astype(int)
    assert got.shape == want.shape and np.abs(got - want.astype(int)).max() <= 1


def test_styles_show_the_kind_and_the_style_size(server, arbitrary_style):
    url, _ = server
    meta = requests.get(f"{url}/styles").json()["anystyle"]
    assert meta["kind"] == "arbitrary" and meta["style_size"] == 64
    assert str(arbitrary_style.path.parent) not in str(meta) and "/tmp" not in str(meta)
    assert meta["sizes"]["multiple_of"] == 8 and meta["precisions"]["fp32"]["validated"] is True
    spec = requests.get(f"{url}/openapi.json").json()["paths"]["/styles/{name}"]["post"]
    assert {"alpha", "weights"} <= {p["name"] for p in spec["parameters"]}
    assert "style_image" in spec["description"]


def test_served_output_is_the_local_stylizers(server, local, photos, paintings):
    url, _ = server
    r = _post(url, png_bytes(photos[0]), [paintings[0]], alpha=0.8)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-raystyle-style"] == "anystyle" and float(r.headers["x-raystyle-inference-ms"]) > 0
    first = r.headers["x-raystyle-style-cache"]
    _close(r.content, local.stylize(photos[0], style_images=[paintings[0]], alpha=0.8))
    again = _post(url, png_bytes(photos[1]), [paintings[0]])
    assert again.headers["x-raystyle-style-cache"] == "hit" and first in ("hit", "miss")  # one replica
    # strength and size as for every style (the ingress); colours by Gatys et al.'s modes, which
    # prepare the painting for the photo (the replica)
    for keep in ("true", "histogram", "swap"):
        r = _post(url, png_bytes(photos[1]), [paintings[1]], strength=0.5, preserve_color=keep, max_side=32)
        _close(r.content, local.stylize(photos[1], style_images=[paintings[1]], strength=0.5,
                                        preserve_color=keep, max_side=32))
    r = _post(url, png_bytes(photos[1]), [paintings[1]], strength=0)  # nothing to run: the photo back
    assert np.array_equal(np.asarray(decode(r.content)), photos[1])


def test_two_style_images_blend_by_weights(server, local, photos, paintings):
    url, _ = server
    single = _post(url, png_bytes(photos[2]), [paintings[2]])
    pair = _post(url, png_bytes(photos[2]), [paintings[2], paintings[3]], weights="1,0")
    assert single.status_code == pair.status_code == 200
    a, b = (np.asarray(decode(r.content)).astype(int) for r in (single, pair))
    assert np.abs(a - b).max() <= 1  # weights 1,0: the first style alone
    png, headers = client.stylize(url, "anystyle", png_bytes(photos[2]), style_images=paintings[2:4],
                                  weights=[0.7, 0.3], alpha=0.6)
    _close(png, local.stylize(photos[2], style_images=paintings[2:4], weights=[0.7, 0.3], alpha=0.6))
    assert np.abs(np.asarray(decode(png)).astype(int) - a).mean() > 0.5  # the second style counts


def test_the_same_style_image_again_is_a_cache_hit(server, photos):
    """Keyed by the sha256 of the uploaded bytes: the same file is a hit for any photo; the
    same pixels saved differently are other bytes, so a miss."""
    url, _ = server
    rng = np.random.default_rng(7)
    painting = rng.integers(0, 256, (40, 56, 3), np.uint8)  # seen by no other test
    first = _post(url, png_bytes(photos[0]), [png_bytes(painting)])
    again = _post(url, png_bytes(photos[1]), [png_bytes(painting)])
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.headers["x-raystyle-style-cache"] == "miss"
    assert again.headers["x-raystyle-style-cache"] == "hit"
    buf = io.BytesIO()
    Image.fromarray(painting).save(buf, format="PNG", compress_level=0)
    assert _post(url, png_bytes(photos[1]), [buf.getvalue()]).headers["x-raystyle-style-cache"] == "miss"
    # two style images: a hit only when both were cached
    both = _post(url, png_bytes(photos[0]), [png_bytes(painting), png_bytes(painting[::-1])])
    assert both.headers["x-raystyle-style-cache"] == "miss"


def test_concurrent_requests_each_get_their_own_style(server, local, photos, paintings):
    url, _ = server
    jobs = [(photos[i % 2], paintings[i % 3], [1.0, 0.5][i % 2]) for i in range(8)]  # equal shapes

    def call(job):
        photo, painting, alpha = job
        return _post(url, png_bytes(photo), [painting], alpha=alpha)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, jobs))
    for (photo, painting, alpha), r in zip(jobs, results, strict=True):
        assert r.status_code == 200
        _close(r.content, local.stylize(photo, style_images=[painting], alpha=alpha))


def test_missing_style_image_is_422_json(server, photos):
    url, _ = server
    for r in (requests.post(f"{url}/styles/anystyle", data=png_bytes(photos[0])),
              _post(url, png_bytes(photos[0]), [])):
        assert r.status_code == 422 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["error"] == "invalid parameter" and body["request_id"]
        assert body["detail"][0]["loc"] == ["body", "style_image"]
        assert "arbitrary style" in body["detail"][0]["msg"]
    with pytest.raises(client.ApiError, match=r"^422 invalid parameter: style_image: style 'anystyle' is an arbitrary"):
        client.stylize(url, "anystyle", png_bytes(photos[0]))


def _ppm() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PPM")
    return buf.getvalue()


@pytest.mark.parametrize(("styles", "params", "status", "error"), [
    ([b"not an image"], {}, 400, "bad image"),
    ([b""], {}, 400, "bad image"),
    (["ok", b"not an image"], {}, 400, "bad image"),
    (["ppm"], {}, 415, "unsupported image format"),
    (["huge"], {}, 413, "image too large"),
    ([b"x" * (600 * 1024)], {}, 413, "request too large"),
    ([b"not an image"], {"strength": 0}, 400, "bad image"),  # checked even when nothing runs
    (["ok", "ok"], {"weights": "1"}, 422, "invalid parameter"),
    (["ok", "ok"], {"weights": "-1,2"}, 422, "invalid parameter"),
    (["ok", "ok"], {"weights": "a,b"}, 422, "invalid parameter"),
    (["ok", "ok"], {"weights": "0,0"}, 422, "invalid parameter"),
    (["ok"], {"weights": "nan"}, 422, "invalid parameter"),
    (["ok"], {"alpha": 1.5}, 422, "invalid parameter"),
    (["ok"] * 9, {}, 422, "invalid parameter"),  # over max_style_images (8)
    ([b"x" * 900] * 9, {}, 422, "invalid parameter"),  # counted before any is decoded
])
def test_hostile_style_images_and_bad_weights_are_json_errors(server, photos, paintings, styles, params,
                                                              status, error):
    url, _ = server
    made = {"ok": paintings[0], "ppm": _ppm(),  # 1200 x 1000 = 1.2 MP > the 1 MP limit, a small PNG
            "huge": png_bytes(np.zeros((1000, 1200, 3), np.uint8))}
    r = _post(url, png_bytes(photos[0]), [made.get(s, s) if isinstance(s, str) else s for s in styles], **params)
    assert r.status_code == status, r.text[:300]
    body = r.json()
    assert body["error"] == error and body["detail"] and body["request_id"]
    if status in (400, 413, 415) and error != "request too large":
        assert "style image" in body["detail"]
    if "weights" in params:
        assert body["detail"][0]["loc"] == ["query", "weights"]
    assert requests.get(f"{url}/healthz").status_code == 200


def test_a_style_image_sent_as_text_or_a_broken_multipart_body_is_400(server, photos):
    url, _ = server
    r = requests.post(f"{url}/styles/anystyle", files={"image": ("p.png", png_bytes(photos[0]), "image/png")},
                      data={"style_image": "not a file"})
    assert r.status_code == 400 and "'style_image' is not a file" in r.json()["detail"]
    r = requests.post(f"{url}/styles/anystyle", data=b"--xyz\r\ngarbage",
                      headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 400 and r.json()["error"] == "bad image", r.text[:300]


def test_a_generator_style_refuses_a_style_image(server, arbitrary_style, photos, paintings):
    """The ingress goes by each style's model.json: one without ``kind`` (every generator's)
    is a generator style, listed as such, and a ``style_image`` sent to it is a 422."""
    from ray import serve

    from raystyle.serve.app import AppArgs, Gateway, StyleModel

    url, args = server
    model = StyleModel.options(name="style-alias", **ONE).bind(
        "anystyle", args["models_dir"], "fp32", "cpu", False)
    generator_meta = {k: v for k, v in arbitrary_style.meta.items() if k not in ("kind", "arbitrary")}
    serve.run(Gateway.options(**SMALL).bind({"gen": model}, {"gen": generator_meta},
                                            AppArgs.from_dict(args).to_dict()), name="gen", route_prefix="/gen")
    try:
        meta = requests.get(f"{url}/gen/styles").json()["gen"]
        assert meta["kind"] == "generator" and "style_size" not in meta
        files = [("image", ("p.png", png_bytes(photos[0]), "image/png")),
                 ("style_image", ("s.png", paintings[0], "image/png"))]
        r = requests.post(f"{url}/gen/styles/gen", files=files)
        assert r.status_code == 422, r.text[:300]
        assert r.json()["detail"][0] == {"loc": ["body", "style_image"],
                                         "msg": "style 'gen' is a generator style: it takes no style_image"}
    finally:
        serve.delete("gen")


def test_the_ingress_shrinks_style_images_exactly_as_the_replica_would():
    """serve.prepare_styles sends style_array's result; style_array leaves that unchanged,
    so the replica's statistics are those of the original upload."""
    from raystyle.serve.app import prepare_styles

    rng = np.random.default_rng(0)
    for shape in [(48, 48), (37, 91), (1000, 10), (10, 700), (5, 3), (300, 200), (63, 65)]:
        x = rng.integers(0, 256, (*shape, 3), np.uint8)
        for side in (64, 256):
            ((key, sent),) = prepare_styles([png_bytes(x)], 10**6, side)
            assert len(key) == 64 and max(sent.shape[:2]) <= 4 * side and min(sent.shape[:2]) == side
            assert np.array_equal(style_array(sent, side), style_array(png_bytes(x), side)), (shape, side)
    ((_, full),) = prepare_styles([png_bytes(x)], 10**6, 60)  # a style_size off the 8 grid: sent whole
    assert np.array_equal(full, x)


def test_the_monitor_asks_for_a_style_image_and_sends_it(server, local, photos, paintings, tmp_path,
                                                        monkeypatch):
    """The "Try it" section against the real API: an arbitrary style shows a style-image
    uploader and an alpha slider; Stylize stays off until a style image is there."""
    from streamlit.testing.v1 import AppTest

    url, _ = server
    for k, v in {"RAYSTYLE_RAY_DASHBOARD": f"http://127.0.0.1:{free_port()}", "RAYSTYLE_SERVE_URL": url,
                 "RAYSTYLE_STORAGE": str(tmp_path), "RAYSTYLE_MONITOR_REFRESH": "0"}.items():
        monkeypatch.setenv(k, v)
    at = AppTest.from_file(str(mon.app_path()), default_timeout=60).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key="style").value == "anystyle"
    assert at.file_uploader(key="style_images").accept_multiple_files
    at.file_uploader(key="photo").set_value(("photo.png", png_bytes(photos[0]), "image/png")).run()
    assert at.button(key="go").disabled  # a photo but no style image yet
    at.file_uploader(key="style_images").set_value([("painting.png", paintings[4], "image/png")]).run()
    assert not at.button(key="go").disabled
    at.slider(key="alpha").set_value(0.6)
    at.button(key="go").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    res = at.session_state["result"]
    assert res["style"] == "anystyle" and res["style_images"] == ["painting.png"]
    _close(res["output"], local.stylize(photos[0], style_images=[paintings[4]], alpha=0.6))
