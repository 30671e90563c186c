"""Serving throughput and latency: Ray Serve vs the raw Stylizer loop, side by side.

Serve runs three ways: "before" (ONNX Runtime's idle threads spinning, ORT's default and
what raystyle served with before), "after" (spinning off, the serving default now) and
"after, batching off". Then the large-upload drill: 4 uploads of 24 MP in flight while
/healthz is probed every 50 ms (p50/p99/max of the probes).

Clients POST PNGs over real HTTP to 127.0.0.1 (decode + infer + encode on the server) at
1, 4, 16 and 32 concurrent clients. The raw loop does the same work (decode + Stylizer +
encode) in one process with every core as ONNX Runtime threads. Each cell runs for
``--seconds``; latencies are per request (p50/p99). The client threads run on the same
cores as the server (this machine has no other), which the Serve figures pay for.

    python bench/serve_load.py                        # random-init tiny generator, 256 px
    python bench/serve_load.py --preset paper         # paper-size ResNet-9 (inference-bound)
    python bench/serve_load.py --style NAME --models-dir DIR --side 512
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch import random_style  # noqa: E402

from raystyle.data.datasets import sample_photo_dir  # noqa: E402
from raystyle.data.images import decode, encode  # noqa: E402
from raystyle.infer.generator import Stylizer


def payloads(side: int, n: int = 8) -> list[bytes]:
    img = decode(sample_photo_dir() / "astronaut.png")
    out = []
    for i in range(n):
        crop = img.crop((i * 20, i * 10, i * 20 + 400, i * 10 + 400)).resize((side, side), Image.BICUBIC)
        buf = io.BytesIO()
        crop.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def raw_loop(stylizer: Stylizer, bodies: list[bytes], seconds: float) -> tuple[float, list[float]]:
    lat, start, i = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        encode(stylizer.stylize(bodies[i % len(bodies)]), "png")
        lat.append(time.perf_counter() - t)
        i += 1
    return i / (time.perf_counter() - start), lat


def load(url: str, bodies: list[bytes], clients: int, seconds: float) -> tuple[float, list[float], dict]:
    lat: list[float] = []
    codes: dict[int, int] = {}
    stop = time.perf_counter() + seconds
    lock = threading.Lock()

    def client(k: int):
        s = requests.Session()
        i = k
        while time.perf_counter() < stop:
            t = time.perf_counter()
            r = s.post(url, data=bodies[i % len(bodies)], timeout=120)
            dt = time.perf_counter() - t
            with lock:
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    lat.append(dt)
            i += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat) / (time.perf_counter() - start), lat, codes


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--style")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--side", type=int, default=256)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--clients", default="1,4,16,32")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--preset", default="tiny", help="architecture of the random-init style: tiny or paper")
    p.add_argument("--no-drill", action="store_true", help="skip the /healthz large-upload drill")
    args = p.parse_args()

    import ray
    from ray import serve

    from raystyle.serve.app import app_builder

    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="raystyle_serve_bench_"))
    models, style = (args.models_dir, args.style) if args.style else (random_style(tmp, args.preset), "bench")
    bodies = payloads(args.side)
    print(f"# style {style} ({args.style and 'registry' or 'random-init ' + args.preset}), {args.side} px PNG in and out, {cores} cores, {args.seconds:.0f} s per cell")
    raw_ips, raw_lat = raw_loop(Stylizer(style, models_dir=models, threads=cores), bodies, args.seconds)
    print(f"raw Stylizer loop (1 process, {cores} threads): {raw_ips:.2f} img/s, "
          f"p50 {pct(raw_lat, 50):.0f} ms, p99 {pct(raw_lat, 99):.0f} ms", flush=True)

    ray.init(num_cpus=cores, include_dashboard=False, logging_level="ERROR")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = []
    for label, batch, spin in (("before (spin on)", args.batch_size, True),
                               ("after (spin off)", args.batch_size, False),
                               ("after, no batching", 1, False)):
        app_args = {
            "models_dir": str(models), "provider": "cpu", "ort_spinning": spin, "max_pending": 128,
            "ingress": {"ray_actor_options": {"num_cpus": 0}, "max_ongoing_requests": 256},
            "deployment": {"ray_actor_options": {"num_cpus": cores},
                           "max_ongoing_requests": 64, "max_queued_requests": 1024,
                           "autoscaling_config": {"min_replicas": 1, "max_replicas": 1},
                           "user_config": {"max_batch_size": batch, "batch_wait_timeout_s": 0.005}},
            "styles": [style],
        }
        serve.run(app_builder(app_args), name="bench", route_prefix="/")
        url = f"http://127.0.0.1:{port}/styles/{style}"
        load(url, bodies, 2, 2.0)  # warm-up
        for clients in (int(c) for c in args.clients.split(",")):
            ips, lat, codes = load(url, bodies, clients, args.seconds)
            rows.append((label, clients, ips, pct(lat, 50), pct(lat, 99), codes))
            print(f"Serve {label:<18} {clients:>3} clients: {ips:6.2f} img/s  p50 {pct(lat, 50):7.0f} ms  "
                  f"p99 {pct(lat, 99):7.0f} ms  p99/p50 {pct(lat, 99) / pct(lat, 50):4.1f}  "
                  f"x raw {ips / raw_ips:4.2f}  {codes}", flush=True)
        serve.delete("bench")
    probes = healthz_drill(port, models, style) if not args.no_drill else []
    serve.shutdown()
    ray.shutdown()
    at16 = {label: (ips, p99 / p50) for label, c, ips, p50, p99, _ in rows if c == 16}
    print("\nat 16 clients: " + ", ".join(f"{k} {v[0] / raw_ips:.2f}x the raw loop, p99/p50 {v[1]:.1f}"
                                          for k, v in at16.items())
          + f" (goals: 0.85x, p99 <= 3x p50); raw loop {raw_ips:.2f} img/s")
    if probes:
        print(f"/healthz during 4 x 24 MP uploads: {len(probes)} probes, p50 {pct(probes, 50):.0f} ms, "
              f"p99 {pct(probes, 99):.0f} ms, max {max(probes) * 1000:.0f} ms")


def healthz_drill(port: int, models: Path, style: str) -> list[float]:
    """4 uploads of 24 MP (2 PNG, 2 JPEG; strength 0.5, colours kept, max_side 1024) in flight,
    /healthz probed meanwhile; returns the probe latencies in seconds."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from raystyle.serve.app import app_builder

    serve.run(app_builder({"models_dir": str(models), "provider": "cpu", "styles": [style],
                           "max_pixels": 30_000_000}), name="drill", route_prefix="/drill")
    base = f"http://127.0.0.1:{port}/drill"
    h, w = 4000, 6000
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    photo = Image.fromarray(np.stack([x / w * 255, y / h * 255, 128 + 100 * np.sin(x / 50) * np.cos(y / 70)],
                                     -1).astype(np.uint8))
    bodies = []
    for fmt, kw in (("PNG", {"compress_level": 1}), ("JPEG", {"quality": 90})) * 2:
        buf = io.BytesIO()
        photo.save(buf, format=fmt, **kw)
        bodies.append(buf.getvalue())
    params = {"strength": 0.5, "preserve_color": "true", "max_side": 1024}
    requests.get(f"{base}/healthz", timeout=30)
    probes = []
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(requests.post, f"{base}/styles/{style}", params=params, data=b, timeout=300)
                   for b in bodies]
        time.sleep(0.3)
        while not all(f.done() for f in futures):
            t = time.perf_counter()
            requests.get(f"{base}/healthz", timeout=30)
            probes.append(time.perf_counter() - t)
            time.sleep(0.05)
        codes = [f.result().status_code for f in futures]
    print(f"large-upload drill answers: {codes}")
    serve.delete("drill")
    return probes


if __name__ == "__main__":
    main()
