"""`raystyle serve` (every registry style over HTTP with Ray Serve) and `raystyle monitor`
(the Streamlit page)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from raystyle.cli.common import HOME, SERVE_CONFIG, add_verbose_arg, stop_on_signals
from raystyle.errors import RaystyleError
from raystyle.util.ports import port_free


def add_parser(sub) -> None:
    """Register `raystyle serve` and `raystyle monitor` on an argparse subparsers object."""
    p = sub.add_parser("serve", help="serve every registry style over HTTP with Ray Serve",
                       description="Start the Ray Serve application (one autoscaled deployment per "
                       "style behind one HTTP API) and print its URL. Binds 127.0.0.1 unless "
                       "--host says otherwise; see the README before exposing it.")
    p.add_argument("--config", type=Path, metavar="YAML", default=SERVE_CONFIG,
                   help="serve config YAML (default serve_configs/local.yaml)")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="styles registry (overrides the config's models_dir)")
    p.add_argument("--host", metavar="HOST", help="bind address (default: the config's, 127.0.0.1)")
    p.add_argument("--port", type=int, metavar="PORT", help="port (default: the config's, 8000)")
    p.add_argument("--address", metavar="ADDR", help="Ray address (default: RAY_ADDRESS, else start a local Ray)")
    add_verbose_arg(p)

    p = sub.add_parser("monitor", help="the Streamlit monitor: cluster, GPUs, training, Serve, try it",
                       description="Start the monitor page (dashboard/app.py) on 127.0.0.1. It "
                       "reads the Ray dashboard (sending the Ray auth token when token auth is "
                       "on), the training runs under --storage, and the raystyle API.")
    p.add_argument("--port", type=int, default=8501, metavar="PORT", help="port (default 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1; the page has no login: another address "
                        "is refused unless --behind-auth-proxy)")
    p.add_argument("--behind-auth-proxy", action="store_true",
                   help="allow a --host other than loopback: an authenticating proxy is in front")
    p.add_argument("--ray-dashboard", metavar="URL",
                   help="Ray dashboard, the only place the Ray token is sent (default: RAY_ADDRESS "
                        "if a URL, else the dashboard of the Ray this machine is attached to "
                        "(RAY_ADDRESS host:port or the latest `ray start`), else http://127.0.0.1:8265)")
    p.add_argument("--serve-url", metavar="URL", default="http://127.0.0.1:8000",
                   help="the raystyle API (default http://127.0.0.1:8000)")
    p.add_argument("--storage", default=str(HOME / "runs"), metavar="DIR_OR_URI",
                   help=f"where training runs are: a folder or a URI such as s3://bucket/runs "
                        f"(default {HOME / 'runs'})")
    p.add_argument("--refresh", type=int, default=5, metavar="S", help="seconds between refreshes, 0 = off (default 5)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                   help="largest photo 'Try it' accepts (default 20 MB)")



def cmd_serve(args: argparse.Namespace) -> int:
    from raystyle.serve.app import run_from_config

    url = run_from_config(args.config, models_dir=args.models_dir, host=args.host, port=args.port,
                          address=args.address)
    stop_on_signals()
    print(f"raystyle is serving at {url}  (API docs: {url}/docs; Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
        print("raystyle: serve stopped")
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from raystyle.monitor import snapshot as mon

    if args.max_upload_mb <= 0:
        raise RaystyleError("--max-upload-mb must be positive")
    mon.check_host(args.host, args.behind_auth_proxy)
    if not port_free(args.port, args.host):
        raise RaystyleError(f"port {args.port} on {args.host} is in use; pass --port")
    dashboard = mon.dashboard_url(args.ray_dashboard, discover=True)
    proc = mon.launch(host=args.host, port=args.port, dashboard=dashboard,
                      serve_url=args.serve_url, storage=args.storage, refresh=args.refresh,
                      max_upload_mb=args.max_upload_mb, log=None, behind_auth_proxy=args.behind_auth_proxy)
    url = f"http://{args.host}:{args.port}"
    stop_on_signals()
    try:
        mon.wait_ready(url, proc)
        print(f"raystyle monitor at {url}  (Ray dashboard {dashboard}, "
              f"API {args.serve_url}, runs in {args.storage}; Ctrl-C stops it)", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        print("raystyle: monitor stopped")
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


COMMANDS = {"serve": cmd_serve, "monitor": cmd_monitor}
