"""`raystyle demo`: the whole flow on the bundled sample data, from nothing (orchestration only).

Every step is a call into the module that owns it (data, train, evaluate, export, serve,
monitor); ``add_parser`` declares the flags and ``run`` does the steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from raystyle.cli.common import (
    DEMO_STYLE,
    HOME,
    SERVE_CONFIG,
    add_verbose_arg,
    print_evaluation,
    run_training,
    stop_on_signals,
)
from raystyle.errors import RaystyleError
from raystyle.util.ports import port_free


def add_parser(sub) -> None:
    """Register `raystyle demo` on an argparse subparsers object."""
    p = sub.add_parser("demo", help="the whole flow on the bundled sample data, from nothing",
                       description="Start a local Ray, write the sample dataset, train a "
                       f"preset into {HOME}/runs/{DEMO_STYLE}, export it as style '{DEMO_STYLE}' "
                       f"into {HOME}/models, serve it with Ray Serve, stylize the held-out sample "
                       f"photos through the HTTP API into {HOME}/outputs/stylized, start the "
                       "monitor, print the URLs and keep serving until Ctrl-C. A second run "
                       "reuses what exists.")
    p.add_argument("--preset", default="tiny", choices=["tiny", "cpu"],
                   help="training preset: tiny (the default: ~2 minutes of training, quick to see "
                        "the flow) or cpu (~10 minutes, the recipe that learns the filter); a run "
                        "per preset")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop training after N steps")
    p.add_argument("--workers", type=int, metavar="N", help="training workers (default 2)")
    p.add_argument("--home", type=Path, default=HOME, metavar="DIR", help=f"demo folder (default {HOME}; env RAYSTYLE_HOME)")
    p.add_argument("--serve-port", type=int, default=8000, metavar="PORT", help="Serve HTTP port on 127.0.0.1 (default 8000)")
    p.add_argument("--monitor-port", type=int, default=8501, metavar="PORT", help="monitor port on 127.0.0.1 (default 8501)")
    p.add_argument("--dashboard-port", type=int, metavar="PORT",
                   help="Ray dashboard port of the local Ray the demo starts (Ray's default 8265)")
    p.add_argument("--no-monitor", action="store_true", help="do not start the monitor page")
    p.add_argument("--no-wait", action="store_true",
                   help="stop Serve, the monitor and Ray once the photos are stylized, instead of "
                        "keeping them up until Ctrl-C")
    add_verbose_arg(p)


def cmd_demo(args: argparse.Namespace) -> int:
    return run(args)


def run(args: argparse.Namespace) -> int:
    """`raystyle demo`: sample data -> train -> pick the best checkpoint -> evaluate -> export ->
    serve -> stylize the held-out photos over HTTP -> monitor; waits until Ctrl-C."""
    from raystyle.cluster import connect
    from raystyle.config import load_config
    from raystyle.data.datasets import write_sample_dataset
    from raystyle.methods.quality import is_paired

    home: Path = args.home.expanduser()
    if not args.no_monitor:
        from raystyle.monitor.snapshot import app_path

        app_path()  # an incomplete installation: say so now, not after training
    ports = [("--serve-port", args.serve_port)] + ([] if args.no_monitor else [("--monitor-port", args.monitor_port)])
    for flag, port in ports:  # before minutes of training, not after
        if not port_free(port):
            raise RaystyleError(f"port {port} on 127.0.0.1 is in use (another demo, `raystyle serve` "
                             f"or monitor?); stop it or pass {flag}")
    data = home / "data" / "sample"
    if (data / "trainA").is_dir() and is_paired(data):
        print(f"[raystyle] sample dataset: {data} (exists)")
    else:  # none yet, or one from before the test split was paired (ground truth)
        counts = write_sample_dataset(data)
        print(f"[raystyle] sample dataset written to {data}: {counts}")
    overrides = []
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.workers is not None:
        overrides.append(f"cluster.workers={args.workers}")
    cfg = load_config(args.preset, overrides).replace(cluster={"storage": str(home / "runs")})
    dashboard = connect(cfg.cluster.address, dashboard_port=args.dashboard_port)
    result = run_training(cfg, data, DEMO_STYLE if args.preset == "tiny" else f"{DEMO_STYLE}-{args.preset}")
    from raystyle.export import pick_checkpoint
    from raystyle.export.gates import ExportError
    from raystyle.train.evaluate import evaluate

    try:  # the best checkpoint by held-out validation (ground truth on the sample data)
        chosen = pick_checkpoint(result.run_dir, "auto")
    except ExportError:
        chosen = result.checkpoint
    if str(chosen) != str(result.checkpoint):
        print(f"[raystyle] best checkpoint by validation: {chosen}")
    out = home / "outputs"
    out.mkdir(parents=True, exist_ok=True)
    ev = evaluate(chosen, data, grid=out / "demo_grid.png")
    print_evaluation(ev)
    print(f"sample translations (rows: photo | G_ab(photo) | the filter itself): {out / 'demo_grid.png'}")

    # Export the trained photo -> painting generator, serve it, stylize the held-out photos
    # through the HTTP API.
    from raystyle.export import export_style
    from raystyle.registry import get_style

    models = home / "models"
    try:
        style = get_style(DEMO_STYLE, models)
        fresh = style.meta["training"]["checkpoint"] != str(chosen)
    except RaystyleError:
        fresh = True
    if fresh:
        style = export_style(chosen, DEMO_STYLE, models_dir=models,
                             precisions=("fp32", "int8"))
    print(f"style {DEMO_STYLE!r} in {models}{' (exported)' if fresh else ' (exists)'}")

    from ray import serve

    from raystyle.monitor import snapshot as mon
    from raystyle.serve import client
    from raystyle.serve.app import run_from_config

    monitor_proc = None
    try:
        serve_url = run_from_config(SERVE_CONFIG, models_dir=models, port=args.serve_port)
        print(f"[raystyle] serving style {DEMO_STYLE!r} at {serve_url}")
        stylized = out / "stylized"
        stylized.mkdir(exist_ok=True)
        photos = sorted(p for p in (data / "testA").iterdir() if p.is_file())
        for src in photos:
            png, _ = client.stylize(serve_url, DEMO_STYLE, src.read_bytes())
            (stylized / src.name).with_suffix(".png").write_bytes(png)
        print(f"[raystyle] {len(photos)} sample photos stylized through {serve_url}/styles/{DEMO_STYLE}")
        monitor_url = None
        if not args.no_monitor:
            monitor_url = f"http://127.0.0.1:{args.monitor_port}"
            (home / "logs").mkdir(exist_ok=True)
            monitor_proc = mon.launch(port=args.monitor_port, dashboard=dashboard, serve_url=serve_url,
                                      storage=home / "runs", log=home / "logs" / "monitor.log")
            mon.wait_ready(monitor_url, monitor_proc)
        print()
        print("raystyle demo is ready")
        print(f"  stylized photos   {stylized}")
        print(f"  sample grid       {out / 'demo_grid.png'}")
        print(f"  Serve (HTTP API)  {serve_url}  (docs {serve_url}/docs)")
        print(f"  Ray dashboard     {dashboard or 'not running (needs ray[default])'}")
        print(f"  monitor           {monitor_url or 'not started (--no-monitor)'}")
        print(f"  try:  curl --data-binary @PHOTO.jpg {serve_url}/styles/{DEMO_STYLE} -o out.png")
        if args.no_wait:
            return 0
        stop_on_signals()
        print("Ctrl-C stops Serve, the monitor and this Ray instance.", flush=True)
        try:
            while monitor_proc is None or monitor_proc.poll() is None:
                time.sleep(1)
            print(f"raystyle: the monitor exited (code {monitor_proc.returncode}); see "
                  f"{home / 'logs' / 'monitor.log'}. Serve keeps running until Ctrl-C.", file=sys.stderr)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nraystyle: demo stopped; `raystyle demo` brings it back (everything is reused)")
        return 0
    finally:
        if monitor_proc is not None and monitor_proc.poll() is None:
            monitor_proc.terminate()
            try:
                monitor_proc.wait(10)
            except Exception:
                monitor_proc.kill()
        serve.shutdown()


COMMANDS = {"demo": cmd_demo}
