"""What the monitor shows, as plain data: the Ray cluster, the host, its GPUs, training runs,
Serve. No Streamlit here (dashboard/app.py draws these); nothing here starts or changes Ray.

Sources:
  Ray cluster   the dashboard's HTTP API: Ray's state API (``StateApiClient``, nodes),
                ``/api/cluster_status`` (resource use) and ``/nodes?view=summary`` (per-node
                CPU, memory, object store, GPUs). With token auth on (the default for local
                clusters) every request carries ``Authorization: Bearer <token>``.
  Serve         ``ServeSubmissionClient.get_serve_details`` (applications, deployments,
                replicas, autoscaling bounds) and the Prometheus metrics each Ray node
                exports (request counts, latency histograms, errors).
  host / GPUs   psutil and GPUtil on the machine the monitor runs on.
  training      STORAGE/NAME/metrics.jsonl, samples/ and checkpoints (see runlog.py);
                STORAGE is a folder or a URI such as s3://bucket/runs (storage.py).

Every function degrades to a dict that says what is missing; none raises for a cluster
that is down, a run that is half-written or a machine without GPUs.

The token goes to one origin only: the dashboard the operator configured (``raystyle
monitor --ray-dashboard`` / RAYSTYLE_RAY_DASHBOARD, or the dashboard of the Ray this
machine is attached to). The page has no box that changes where it connects or what it
reads: the dashboard, the Serve URL and the storage come from the command line only.
"""

from __future__ import annotations

import ipaddress
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout  # not the builtin before 3.11
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from raystyle import checkpoint as ckpt
from raystyle import runlog
from raystyle.config import home
from raystyle.errors import RaystyleError
from raystyle.util import storage as store

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
DEFAULT_SERVE = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 3.0
START_HINT = ("Start one with `raystyle demo` (local Ray, training, Serve) or `ray start --head`, "
              "or point the monitor at a cluster's dashboard (`raystyle monitor --ray-dashboard URL`)")


def dashboard_url(explicit: str | None = None, *, discover: bool = False) -> str:
    """--ray-dashboard / RAYSTYLE_RAY_DASHBOARD, else RAY_ADDRESS if a URL, else (``discover``)
    the dashboard of the Ray this machine is attached to, else http://127.0.0.1:8265."""
    url = explicit or os.environ.get("RAYSTYLE_RAY_DASHBOARD")
    if not url:
        address = os.environ.get("RAY_ADDRESS", "")
        if address.startswith(("http://", "https://")):
            url = address
        else:
            url = (attached_dashboard() if discover else None) or DEFAULT_DASHBOARD
    return url.rstrip("/")


def attached_dashboard(timeout: float = 10.0) -> str | None:
    """The dashboard URL that the attached Ray's GCS records (RAY_ADDRESS as host:port, else
    the latest `ray start` on this machine): the lookup `ray job submit` does. When 8265 was
    taken, Ray put its dashboard on another port and this finds it. None when no Ray runs
    here or the GCS does not answer within ``timeout``."""
    address = os.environ.get("RAY_ADDRESS") or None
    if address == "local":  # "start a new local Ray": nothing to attach to
        return None
    address = None if address == "auto" else address
    found: list[str] = []

    def look() -> None:
        try:
            from ray.dashboard.utils import ray_address_to_api_server_url

            found.append(ray_address_to_api_server_url(address))
        except Exception:  # noqa: BLE001 - no Ray here, or its GCS is down: fall back
            pass

    worker = threading.Thread(target=look, daemon=True)  # the GCS client retries for long
    worker.start()
    worker.join(timeout)
    return found[0] if found else None


def origin(url: str) -> str:
    """scheme://host:port of a URL (the port made explicit), for comparing where requests go."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------
# Ray auth token


@dataclass(frozen=True)
class Token:
    value: str | None
    source: str  # where it came from, or why there is none
    origin: str | None = None  # the only origin it is sent to (None: nowhere)

    def headers(self, url: str) -> dict[str, str]:
        """The Authorization header for a request to ``url``: only to the token's origin."""
        if self.value and self.origin is not None and origin(url) == self.origin:
            return {"Authorization": f"Bearer {self.value}"}
        return {}


def read_token(dashboard: str) -> Token:
    """Ray's own lookup order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token; the
    token is bound to the configured ``dashboard`` and never sent anywhere else."""
    bound = origin(dashboard)
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN", bound)
    path_env = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(path_env).expanduser() if path_env else Path.home() / ".ray" / "auth_token"
    try:
        value = path.read_text().strip()
    except OSError:
        return Token(None, f"no token ({path} not found)")
    return Token(value or None, str(path) if value else f"no token ({path} is empty)", bound)


# ---------------------------------------------------------------------------------------
# Ray cluster


class RayUnavailable(Exception):
    """The dashboard cannot be reached or refuses us; the message says which and what to do."""


def _get_json(url: str, token: Token, timeout: float) -> Any:
    try:
        r = requests.get(url, headers=token.headers(url), timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        raise RayUnavailable(f"no Ray dashboard at {url.split('/', 3)[:3][-1]}: "
                             f"{type(exc).__name__}") from None
    if r.status_code in (401, 403):
        raise RayUnavailable(
            f"the Ray dashboard refused the request ({r.status_code}): token auth is on and "
            f"the token is {'wrong' if token.value else 'missing'} ({token.source}); set "
            "RAY_AUTH_TOKEN or copy the cluster's ~/.ray/auth_token")
    if r.status_code != 200:
        raise RayUnavailable(f"{url} answered {r.status_code}: {r.text[:200]}")
    return r.json()


def _gib(x: float | None) -> float | None:
    return None if x is None else round(x / 2**30, 2)


def cluster_snapshot(url: str, token: Token | None = None, timeout: float = DEFAULT_TIMEOUT_S
                     ) -> dict[str, Any]:
    """Nodes, cluster-wide resource use, per-node load. ``ok`` False says why, with a hint."""
    token = token if token is not None else read_token(url)
    out: dict[str, Any] = {"ok": False, "url": url, "auth": token.source, "nodes": [],
                           "usage": {}, "error": None, "hint": START_HINT}
    try:
        version = _get_json(f"{url}/api/version", token, timeout)
    except RayUnavailable as exc:
        out["error"] = str(exc)
        return out
    out["ray_version"] = version.get("ray_version")
    out["session"] = version.get("session_name")

    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource

    try:
        client = StateApiClient(address=url, headers={"Content-Type": "application/json",
                                                      **token.headers(url)})
        nodes = client.list(StateResource.NODES, options=ListApiOptions(detail=True, timeout=int(timeout) + 1),
                            raise_on_missing_output=False)
    except Exception as exc:  # the state API's errors are many types; all mean "no data"
        out["error"] = f"Ray state API failed: {str(exc).splitlines()[0][:200]}"
        return out
    status = _get_json(f"{url}/api/cluster_status", token, timeout)
    usage = (status.get("data", {}).get("clusterStatus", {}).get("loadMetricsReport", {})
             .get("usage", {}))
    for key, label in (("CPU", "CPU"), ("GPU", "GPU"), ("memory", "memory"),
                       ("objectStoreMemory", "object_store_memory")):
        if key in usage:
            used, total = usage[key]
            if label in ("memory", "object_store_memory"):
                used, total = _gib(used), _gib(total)
            out["usage"][label] = {"used": used, "total": total}
    summary = {s.get("raylet", {}).get("nodeId"): s
               for s in _get_json(f"{url}/nodes?view=summary", token, timeout)
               .get("data", {}).get("summary", [])}
    for n in nodes:
        n = n if isinstance(n, dict) else n.__dict__
        s = summary.get(n["node_id"], {})
        raylet = s.get("raylet", {})
        mem = s.get("mem") or [None, None, None, None]  # total, available, percent, used
        store_used = raylet.get("objectStoreUsedMemory")
        res = n.get("resources_total") or {}
        out["nodes"].append({
            "node_id": n["node_id"], "ip": n.get("node_ip"), "head": bool(n.get("is_head_node")),
            "state": n.get("state"), "hostname": s.get("hostname"),
            "cpus": res.get("CPU", 0.0), "gpus": res.get("GPU", 0.0),
            "cpu_percent": s.get("cpu"),
            "mem_used_gib": _gib(mem[3]) if mem[3] is not None else None,
            "mem_total_gib": _gib(mem[0]),
            "object_store_used_gib": _gib(float(store_used)) if store_used is not None else None,
            "object_store_total_gib": _gib(res.get("object_store_memory")),
            "gpu_devices": [{"name": g.get("name"), "load": g.get("utilizationGpu"),
                             "mem_used_mb": g.get("memoryUsed"), "mem_total_mb": g.get("memoryTotal")}
                            for g in s.get("gpus") or []],
            "metrics_port": raylet.get("metricsExportPort"),
        })
    out["ok"] = True
    return out


def host_snapshot(storage: str | Path | None = None) -> dict[str, Any]:
    """This machine, by psutil (CPU %, memory, disk of the storage path, load)."""
    import psutil

    vm = psutil.virtual_memory()
    remote = storage is not None and store.is_uri(str(storage))
    disk_path = Path(storage).expanduser() if storage and not remote else Path.home()
    while not disk_path.exists() and disk_path != disk_path.parent:
        disk_path = disk_path.parent
    disk = psutil.disk_usage(str(disk_path))
    return {
        "cpu_count": psutil.cpu_count(), "cpu_percent": psutil.cpu_percent(interval=0.2),
        "per_cpu": psutil.cpu_percent(percpu=True),
        "mem_used_gib": _gib(vm.total - vm.available), "mem_total_gib": _gib(vm.total),
        "mem_percent": vm.percent, "disk_path": str(disk_path),
        "disk_free_gib": _gib(disk.free), "disk_percent": disk.percent,
        "load": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


_gpu_probe: dict[str, Any] = {"thread": None, "result": None}
_gpu_lock = threading.Lock()


def _read_gpus(timeout: float) -> Any:
    """GPUtil.getGPUs() in a daemon thread, given up after ``timeout`` (GPUtil runs nvidia-smi
    without a timeout; a wedged driver would hang the page). While a probe is still stuck,
    no second one starts: later calls wait on that one (again at most ``timeout``)."""
    import GPUtil

    with _gpu_lock:
        thread = _gpu_probe["thread"]
        if thread is None or not thread.is_alive():
            box: dict[str, Any] = {}

            def probe() -> None:
                try:
                    box["gpus"] = GPUtil.getGPUs()
                except Exception as exc:  # noqa: BLE001 - nvidia-smi missing or failing
                    box["error"] = exc

            thread = threading.Thread(target=probe, daemon=True, name="raystyle-gpu-probe")
            _gpu_probe.update(thread=thread, result=box)
            thread.start()
        box = _gpu_probe["result"]
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"nvidia-smi did not answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["gpus"]


def gpu_snapshot(timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """GPUtil's view of this machine's NVIDIA GPUs; ``gpus == []`` with a note when none."""
    try:
        gpus = _read_gpus(timeout)
    except Exception as exc:  # GPUtil raises when nvidia-smi is missing or fails
        return {"gpus": [], "note": f"no GPU (GPUtil: {type(exc).__name__}: {exc})"[:200]}
    if not gpus:
        return {"gpus": [], "note": "no GPU on this machine (GPUtil found none; nvidia-smi absent "
                                    "or no NVIDIA device): training and serving run on CPU"}
    return {"gpus": [{"id": g.id, "name": g.name, "load_percent": round(100 * g.load, 1),
                      "mem_used_mb": g.memoryUsed, "mem_total_mb": g.memoryTotal,
                      "temperature_c": g.temperature} for g in gpus], "note": None}


# ---------------------------------------------------------------------------------------
# Training runs


@dataclass
class Run:
    name: str
    path: Path | str  # a local folder or a URI
    metrics: list[dict[str, Any]] = field(default_factory=list)
    samples: list[Path | str] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)  # the run's validation.json

    @property
    def best_metric(self) -> str | None:
        return self.validation.get("best_metric")

    @property
    def step(self) -> int:
        return int(self.metrics[-1]["step"]) if self.metrics else 0

    @property
    def total_steps(self) -> int | None:
        return self.metrics[-1].get("total_steps") if self.metrics else None

    @property
    def status(self) -> str:
        if not self.metrics:
            return "no metrics yet"
        total, last = self.total_steps, self.metrics[-1]
        if total and self.step >= total:
            return "finished"
        age = time.time() - float(last.get("time", 0))
        step_s = float(last.get("step_time_s", 1.0)) * 20  # silent for ~ 2 logging windows
        return "running" if age < max(120.0, step_s) else f"stopped at step {self.step}"


_MARKDOWN_SPECIAL = frozenset("\\`*_{}[]()#+-.!|<>~$:&")


def plain(value: Any) -> str:
    """``value`` as literal text inside Streamlit markdown (captions, ``st.markdown``): every
    ASCII punctuation mark is backslash-escaped (CommonMark), so a run's files (validation.json,
    folder names) cannot add links, images, HTML, colours or LaTeX to the page; newlines become
    spaces."""
    text = " ".join(str(value).split())
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in text)


def list_runs(storage: str | Path) -> list[Run]:
    """Runs under ``storage`` (a folder or a URI): folders with a metrics log or a
    checkpoint, most recently logged first."""
    import pyarrow.fs as pafs

    root = store.resolve(storage)
    found: list[tuple[float, Run]] = []
    for entry in store.listdir(root):
        if entry.type != pafs.FileType.Directory:
            continue
        d = root / entry.base_name
        files = {e.base_name: e for e in store.listdir(d)}
        log = files.get(runlog.METRICS)
        if log is None and not any(n.startswith("checkpoint_") for n in files):
            continue
        metrics = runlog.read_metrics(d)
        validation = runlog.read_validation(d) if runlog.VALIDATION in files else {}
        best = validation.get("best_metric")
        by_step = {r.get("step"): r for r in metrics}
        cks = []
        for c in ckpt.list_checkpoints(d):
            m = ckpt.read_manifest(c)
            written = store.mtime(store.resolve(c) / ckpt.MANIFEST)
            row = {"checkpoint": store.resolve(c).name, "step": m.get("step"), "epoch": m.get("epoch")}
            if best:
                row[best] = by_step.get(m.get("step"), {}).get(best)
            row.update(written=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(written or 0)),
                       path=str(c))
            cks.append(row)
        if best and any(r[best] is not None for r in cks):
            pick = max if runlog.metric_order(best) == "max" else min
            top = pick((r for r in cks if r[best] is not None), key=lambda r: r[best])
            for r in cks:
                r["best"] = r is top
        logged = log.mtime.timestamp() if log is not None and log.mtime is not None else 0.0
        found.append((logged, Run(entry.base_name, d.native, metrics, runlog.list_samples(d), cks,
                                  validation)))
    found.sort(key=lambda t: t[0], reverse=True)
    return [run for _, run in found]


def sample_layout(run_metrics: list[dict[str, Any]]) -> str:
    """What a run's sample grids show, by the losses it logs (a distillation, a fast style net
    or a CycleGAN)."""
    if run_metrics and "recon_l1" in run_metrics[-1]:
        return "columns: photo | teacher | student"
    if run_metrics and "style" in run_metrics[-1]:
        return "columns: photo | stylized | style image"
    return "rows: real A | fake B | rec A and real B | fake A | rec B"


def read_sample(path: Path | str) -> bytes:
    """The PNG bytes of a sample grid listed in ``Run.samples`` (local path or URI)."""
    return store.read_bytes(store.resolve(path))


# the losses of every training method (a CycleGAN run's, a distillation's, a fast style net's,
# an AdaIN decoder's); a run shows its own
LOSS_KEYS = (*runlog.LOSS_KEYS, "recon_l1", "feature_mse", "g_gan", "d", "total", "content", "style", "tv", "identity")
# Held-out validation figures (raystyle.methods.quality), drawn in groups of one scale each
VAL_CHARTS = (("Validation: PSNR, dB (held-out)", ("val_gt_psnr", "val_cycle_psnr", "val_teacher_psnr")),
              ("Validation: scores 0..1 (held-out)", ("val_domain_score", "val_content_ssim",
                                                      "val_domain_content", "val_teacher_ssim")),
              ("Validation: colour distance to B", ("val_colour_distance",)),
              ("Validation: KID-EL0 to held-out B (lower is better)", ("val_kid_el0",)),
              ("Validation: FID-EL0 to held-out B (lower; not Inception's FID)", ("val_fid_el0",)))


# ---------------------------------------------------------------------------------------
# Serve


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus-style quantile from cumulative (upper bound, count) pairs."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            width = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / width if width else 0.0)
        prev_le, prev_count = le, count
    return prev_le


def parse_serve_metrics(text: str) -> dict[str, dict[str, Any]]:
    """Per-deployment request/error counters and latency histograms from Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, Any]] = {}

    def entry(labels: dict[str, str]) -> dict[str, Any]:
        key = f"{labels.get('application', '')}/{labels.get('deployment', '')}"
        return out.setdefault(key, {"requests": 0.0, "errors": 0.0, "buckets": {},
                                    "latency_sum_ms": 0.0, "latency_count": 0.0})

    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("ray_serve_deployment_"):
            continue
        for s in fam.samples:
            if "deployment" not in s.labels:
                continue
            if s.name == "ray_serve_deployment_request_counter_total":
                entry(s.labels)["requests"] += s.value
            elif s.name == "ray_serve_deployment_error_counter_total":
                entry(s.labels)["errors"] += s.value
            elif s.name == "ray_serve_deployment_processing_latency_ms_bucket":
                b = entry(s.labels)["buckets"]
                le = float(s.labels["le"])
                b[le] = b.get(le, 0.0) + s.value
            elif s.name == "ray_serve_deployment_processing_latency_ms_sum":
                entry(s.labels)["latency_sum_ms"] += s.value
            elif s.name == "ray_serve_deployment_processing_latency_ms_count":
                entry(s.labels)["latency_count"] += s.value
    return out


def parse_http_metrics(text: str) -> dict[str, float]:
    """HTTP requests at Serve's proxies by status code (all applications)."""
    from prometheus_client.parser import text_string_to_metric_families

    by_code: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "ray_serve_num_http_requests_total":
                code = s.labels.get("status_code", "?")
                by_code[code] = by_code.get(code, 0.0) + s.value
    return by_code


def _fetch_metrics(url: str, timeout: float) -> str:
    r = requests.get(url, timeout=timeout, allow_redirects=False)  # no token: not the dashboard
    r.raise_for_status()
    return r.text


def scrape(nodes: list[dict[str, Any]], budget: float) -> tuple[str, list[str]]:
    """Every alive node's /metrics at once, all within ``budget`` seconds: a silent node costs
    the budget once, not once per node. Nodes that do not answer in time are named."""
    urls = [f"http://{n['ip']}:{n['metrics_port']}/metrics" for n in nodes
            if n.get("state") == "ALIVE" and n.get("metrics_port")]
    if not urls:
        return "", []
    texts, errors = [], []
    pool = ThreadPoolExecutor(max_workers=min(16, len(urls)), thread_name_prefix="raystyle-scrape")
    futures = {pool.submit(_fetch_metrics, url, budget): url for url in urls}
    deadline = time.monotonic() + budget
    for future, url in futures.items():
        try:
            texts.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
        except (FutureTimeout, TimeoutError):
            errors.append(f"{url}: no answer within {budget:g} s")
        except requests.RequestException as exc:
            errors.append(f"{url}: {type(exc).__name__}")
    pool.shutdown(wait=False, cancel_futures=True)
    return "\n".join(texts), errors


def serve_snapshot(url: str, token: Token | None = None, nodes: list[dict[str, Any]] | None = None,
                   timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Serve applications, per-deployment replicas/bounds/status, and request metrics."""
    token = token if token is not None else read_token(url)
    out: dict[str, Any] = {"ok": False, "running": False, "applications": [], "deployments": [],
                           "http": {}, "error": None, "time": time.time(), "metrics_errors": []}
    try:
        details = _get_json(f"{url}/api/serve/applications/", token, timeout)
    except RayUnavailable as exc:
        out["error"] = str(exc)
        return out
    out["ok"] = True
    http = details.get("http_options") or {}
    out["proxy_url"] = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    apps = details.get("applications") or {}
    out["running"] = bool(apps)
    text, errors = scrape(nodes or [], timeout)
    out["metrics_errors"] = errors
    metrics = parse_serve_metrics(text) if text else {}
    out["http"] = parse_http_metrics(text) if text else {}
    for name, app in sorted(apps.items()):
        deps = app.get("deployments") or {}
        out["applications"].append({"name": name, "status": app.get("status"),
                                    "route_prefix": app.get("route_prefix"),
                                    "message": app.get("message") or "",
                                    "deployments": len(deps)})
        for dname, d in sorted(deps.items()):
            cfg = d.get("deployment_config") or {}
            auto = cfg.get("autoscaling_config") or {}
            running = sum(1 for r in d.get("replicas") or [] if r.get("state") == "RUNNING")
            m = metrics.get(f"{name}/{dname}", {})
            out["deployments"].append({
                "application": name, "deployment": dname, "status": d.get("status"),
                "replicas": running, "target_replicas": d.get("target_num_replicas"),
                "min_replicas": auto.get("min_replicas", cfg.get("num_replicas")),
                "max_replicas": auto.get("max_replicas", cfg.get("num_replicas")),
                "max_ongoing_requests": cfg.get("max_ongoing_requests"),
                "max_queued_requests": cfg.get("max_queued_requests"),
                "requests": m.get("requests", 0.0), "errors": m.get("errors", 0.0),
                "buckets": sorted(m.get("buckets", {}).items()),  # cumulative since replica start
            })
    return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


WINDOW_S = 60.0  # latency percentiles and request rates are over this recent window


def _bucket_delta(now: list[tuple[float, float]], then: list[tuple[float, float]]
                  ) -> list[tuple[float, float]] | None:
    """Per-bound counts added between two cumulative histograms; None after a counter reset."""
    before = dict(then)
    delta = []
    for le, count in now:
        d = count - before.get(le, 0.0)
        if d < 0:
            return None
        delta.append((le, d))
    return delta


def windowed(current: dict[str, Any], history: list[dict[str, Any]],
             window_s: float = WINDOW_S) -> dict[str, Any]:
    """Requests/s and latency p50/p95/p99 per deployment over the recent window, from the
    cumulative counters of ``current`` and the snapshot in ``history`` (oldest first) that is
    the newest at least ``window_s`` old (else the oldest there). Without an earlier
    snapshot, or after a counter reset (a replica restarted), rates are None and percentiles
    are since the replicas started (``window_s`` None)."""
    now = current.get("time", 0.0)
    older = [h for h in history if h.get("time", 0.0) <= now - window_s]
    base = older[-1] if older else (history[0] if history else None)
    prev = {(d["application"], d["deployment"]): d for d in (base or {}).get("deployments", [])}
    dt = now - base["time"] if base else 0.0
    for d in current.get("deployments", []):
        p = prev.get((d["application"], d["deployment"]))
        delta = None
        if p is not None and dt > 0 and d["requests"] >= p["requests"]:
            delta = _bucket_delta(d.get("buckets", []), p.get("buckets", []))
        if delta is not None:
            d["requests_per_s"] = round((d["requests"] - p["requests"]) / dt, 2)
            d["window_s"] = round(dt, 1)
        else:
            d["requests_per_s"], d["window_s"] = None, None
            delta = d.get("buckets", [])
        for q, key in ((0.5, "latency_p50_ms"), (0.95, "latency_p95_ms"), (0.99, "latency_p99_ms")):
            d[key] = _round(histogram_quantile(delta, q))
    return current


def remember(history: list[dict[str, Any]], current: dict[str, Any],
             window_s: float = WINDOW_S) -> list[dict[str, Any]]:
    """``history`` plus the counters of ``current``, trimmed to what ``windowed`` needs (the
    newest snapshot at least ``window_s`` old and everything after it)."""
    slim = {"time": current.get("time", 0.0), "deployments": [
        {k: d.get(k) for k in ("application", "deployment", "requests", "buckets")}
        for d in current.get("deployments", [])]}
    kept = [*history, slim]
    cutoff = slim["time"] - window_s
    older = [i for i, h in enumerate(kept) if h["time"] <= cutoff]
    return kept[older[-1]:] if older else kept


# ---------------------------------------------------------------------------------------
# Try it: what the page asks for, per served style (from the API's GET /styles)


def style_kind(meta: Any) -> str:
    """A served style's kind: "generator" (a photo in, a picture out) or "arbitrary" (AdaIN:
    the photo and one or more style images). A server that sends no kind serves generators."""
    kind = meta.get("kind") if isinstance(meta, dict) else None
    return kind if isinstance(kind, str) and kind else "generator"


def takes_style_images(meta: Any) -> bool:
    """Whether a served style's requests carry style images (its kind says so; raystyle.infer.kinds).
    A kind this monitor does not know is offered as a plain photo-in style."""
    from raystyle.infer.kinds import UnknownKind, get_kind

    try:
        return get_kind(style_kind(meta)).style_images
    except UnknownKind:
        return False


def style_label(name: str, meta: Any) -> str:
    """The style as the page's style picker shows it."""
    return f"{name} (any style: upload a style image)" if takes_style_images(meta) else name


def upload_problem(files: list[tuple[str, int]], max_mb: float) -> str | None:
    """The first of ``files`` ((name, size in bytes)) over the page's upload limit, as one
    line; None when every one fits."""
    for name, size in files:
        if size > max_mb * 2**20:
            return f"{name} is {size / 2**20:.1f} MB; the limit is {max_mb:g} MB"
    return None


# ---------------------------------------------------------------------------------------
# Starting the page (`raystyle monitor`, `raystyle demo`)


def app_path() -> Path:
    """The Streamlit page, shipped inside the package (dashboard/app.py in a clone points here)."""
    path = Path(__file__).resolve().parent / "dashboard" / "app.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: this raystyle installation is incomplete "
                                "(reinstall it: pip install raystyle / pip install -e .)")
    return path


def storage_text(storage: str | Path | None) -> str:
    """A folder with ~ expanded, or a URI as given (a Path would fold s3:// into s3:/)."""
    if not storage:
        return str(home() / "runs")
    text = str(storage)
    return text if store.is_uri(text) else str(Path(text).expanduser())


class UnsafeHost(RaystyleError):
    """--host is not loopback and the operator did not say a login sits in front."""


def check_host(host: str, behind_auth_proxy: bool) -> None:
    if not is_loopback(host) and not behind_auth_proxy:
        raise UnsafeHost(
            f"--host {host} would let anyone who reaches it use the page, which acts with the Ray "
            "token; keep 127.0.0.1 (use an SSH tunnel), or put an authenticating proxy in front "
            "and pass --behind-auth-proxy")


def launch(*, host: str = "127.0.0.1", port: int = 8501, dashboard: str | None = None,
           serve_url: str | None = None, storage: str | Path | None = None, refresh: int = 5,
           max_upload_mb: float = 20.0, log: Path | None = None, behind_auth_proxy: bool = False):
    """Start ``streamlit run dashboard/app.py`` bound to host:port; returns the Popen.
    A host other than loopback needs ``behind_auth_proxy`` (UnsafeHost otherwise)."""
    import subprocess
    import sys

    check_host(host, behind_auth_proxy)
    env = {**os.environ, "RAYSTYLE_RAY_DASHBOARD": dashboard_url(dashboard, discover=True),
           "RAYSTYLE_SERVE_URL": serve_url or DEFAULT_SERVE,
           "RAYSTYLE_STORAGE": storage_text(storage),
           "RAYSTYLE_MONITOR_REFRESH": str(refresh),
           "RAYSTYLE_MONITOR_MAX_UPLOAD_MB": f"{max_upload_mb:g}"}
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path()),
           "--server.address", host, "--server.port", str(port), "--server.headless", "true",
           # Streamlit's own cap, in whole MB (checked again by the page with the exact value)
           "--server.maxUploadSize", str(max(1, math.ceil(max_upload_mb))),
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--theme.base", "light", "--client.toolbarMode", "viewer"]
    out = log.open("ab") if log is not None else None
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)


def wait_ready(url: str, proc, timeout: float = 60.0) -> None:
    """Until Streamlit's health endpoint answers; RuntimeError if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the monitor exited with code {proc.returncode} before it was ready")
        try:
            if requests.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the monitor did not answer at {url} within {timeout:.0f} s")
