"""[ray] The cluster: attach to Ray or start a local one, and refuse what it cannot place.

Training, serving, batch jobs and the demo all start here, so none of them depends on
another's module for it.
"""

from __future__ import annotations

import os
import re
from typing import Any

import ray

from raystyle.config import VERBOSE_ENV
from raystyle.errors import RaystyleError
from raystyle.util.ports import port_or_free


class ClusterError(RaystyleError):
    """The Ray cluster cannot run what was asked (too few CPUs/GPUs, unreachable address)."""


_DASHBOARD: dict[str, str | None] = {"url": None}


def ray_verbose() -> bool:
    """Whether Ray's INFO chatter goes to the console (``--verbose``, RAYSTYLE_VERBOSE=1); without
    it only raystyle's own lines, Ray's warnings and errors are printed, and Ray's INFO lines
    stay in Ray's log files (``logs_dir()``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def ray_log_level() -> str:
    """The console level of Ray Train's and Serve's own loggers."""
    return "INFO" if ray_verbose() else "WARNING"


def logs_dir() -> str | None:
    """Where this Ray session writes its logs (on the head node; None when unknown)."""
    try:
        from ray._private.worker import _global_node  # no public accessor for the session folder

        return _global_node.get_logs_dir_path() if _global_node is not None else None
    except (ImportError, AttributeError):
        return None


def connect(address: str | None = None, *, dashboard_port: int | None = None) -> str | None:
    """Attach to ``address`` / RAY_ADDRESS when given, else start a local Ray instance.

    Returns the Ray dashboard URL (None when the dashboard does not run). ``dashboard_port``
    only applies to a local Ray started here.
    """
    # Worker prints go straight to the driver's console (the V2 print patch logs them twice);
    # set before a local Ray starts, so its workers inherit it.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not ray_verbose():  # Serve's access and INFO lines go to its log files, not the console
        os.environ.setdefault("RAY_SERVE_LOG_TO_STDERR", "0")
    if ray.is_initialized():
        return _DASHBOARD["url"]
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {}
    if address is None:
        # Ray starts workers at niceness 15, below its own daemons. On a small machine that
        # costs a single training worker a lot (2 cores, 1 worker x 2 CPUs: 5.10 img/s at 15
        # vs 7.74 img/s at 0, same benchmark run). Only for the local Ray started here; a
        # cluster keeps its own setting, and RAY_worker_niceness in the environment wins.
        os.environ.setdefault("RAY_worker_niceness", "0")
        port = dashboard_port or port_or_free(8265)
        kwargs["dashboard_port"] = port
        # Ray's own state-API calls inside its actors (Ray Train V2's placement-group
        # cleaner) find "the" local cluster by scanning for GCS processes and crash with a
        # traceback when the machine runs two local Ray instances; name this one's dashboard.
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"  # this one, not an inherited one
        address = "local"  # start one, even if a `ray start` cluster runs here (README)
    try:
        ctx = ray.init(address=address, logging_level="WARNING", log_to_driver=True, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "start a local Ray" if address == "local" else f"connect to Ray at {address!r}"
        raise ClusterError(f"cannot {where}: {exc}") from None
    if address == "local" and not ray_verbose() and logs_dir():
        print(f"[raystyle] Ray's own logs: {logs_dir()} (--verbose prints them here too)", flush=True)
    url = getattr(ctx, "dashboard_url", None)
    _DASHBOARD["url"] = (url if url.startswith("http") else f"http://{url}") if url else None
    return _DASHBOARD["url"]


def check_resources(workers: int, cpus_per_worker: int, use_gpu: bool) -> None:
    """Refuse up front what the cluster cannot place (Ray would wait for it forever)."""
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if use_gpu and gpus < workers:
        raise ClusterError(
            f"--gpu with {workers} worker(s) needs {workers} GPU(s); the cluster has {gpus:g}"
            + ("" if gpus else " (train on CPU without --gpu)")
        )
    if cpus < workers * cpus_per_worker:
        raise ClusterError(
            f"{workers} workers x {cpus_per_worker} CPU need {workers * cpus_per_worker} CPUs; "
            f"the cluster has {cpus:g}. Lower --workers or cluster.cpus_per_worker, or add nodes"
        )


def actor_pool(workers: int | None, cpus_per_worker: int, gpu: bool) -> int:
    """Workers to start; refuses up front what the cluster cannot place (Ray would wait)."""
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    if workers is None:
        workers = int(gpus) if gpu else int(cpus // cpus_per_worker)
        workers = max(1, workers)
    if gpu and gpus < workers:
        raise ClusterError(f"--gpu with {workers} worker(s) needs {workers} GPU(s); the cluster "
                           f"has {gpus:g}" + ("" if gpus else " (run without --gpu)"))
    if cpus < workers * cpus_per_worker:
        raise ClusterError(f"{workers} workers x {cpus_per_worker} CPU need "
                           f"{workers * cpus_per_worker} CPUs; the cluster has {cpus:g}. "
                           "Lower --workers or --cpus-per-worker")
    return workers


def root_cause(exc: BaseException) -> str:
    """The last ``SomeError: message`` line of a Ray error (its remote traceback), shortened."""
    for line in reversed(str(exc).splitlines()):
        m = re.match(r"^(?:[\w]+\.)*(\w+(?:Error|Exception)): (.+)$", line.strip())
        if m:
            return f"{m.group(1)}: {m.group(2)}"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
