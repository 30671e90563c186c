"""The raystyle monitor: `raystyle monitor` starts it (or `streamlit run dashboard/app.py`).

Draws what raystyle.monitor.snapshot gathers; no business logic here. Where it connects and what it
reads come from the environment that `raystyle monitor` sets (RAYSTYLE_RAY_DASHBOARD,
RAYSTYLE_SERVE_URL, RAYSTYLE_STORAGE, RAYSTYLE_MONITOR_REFRESH,
RAYSTYLE_MONITOR_MAX_UPLOAD_MB), never from the page: a visitor cannot point it (and the
Ray token it sends to the dashboard) at another server, or make it list another folder.
"""

import functools
import io
import os
from pathlib import Path, PurePosixPath

import pandas as pd
import streamlit as st
from PIL import Image

from raystyle.config import home
from raystyle.monitor import snapshot as mon
from raystyle.serve import client

st.set_page_config(page_title="raystyle monitor", page_icon=":art:", layout="wide")

MAX_UPLOAD_MB = float(os.environ.get("RAYSTYLE_MONITOR_MAX_UPLOAD_MB", "20"))
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"]

DASHBOARD = mon.dashboard_url()  # RAYSTYLE_RAY_DASHBOARD as `raystyle monitor` resolved it
SERVE_URL = os.environ.get("RAYSTYLE_SERVE_URL", mon.DEFAULT_SERVE).rstrip("/")
STORAGE = os.environ.get("RAYSTYLE_STORAGE") or str(home() / "runs")
dashboard, serve_url, storage = DASHBOARD, SERVE_URL, STORAGE

with st.sidebar:
    st.header("Settings")
    st.caption("Set by whoever started the monitor (`raystyle monitor --ray-dashboard URL "
               "--serve-url URL --storage DIR`); the page cannot change them.")
    st.markdown(f"**Ray dashboard**  \n`{DASHBOARD}`")
    st.markdown(f"**raystyle API (Serve)**  \n`{SERVE_URL}`")
    st.markdown(f"**Training storage**  \n`{STORAGE}`")
    refresh = st.number_input("Refresh every N seconds (0 = off)", min_value=0, max_value=600,
                              value=int(os.environ.get("RAYSTYLE_MONITOR_REFRESH", "5")))
    token = mon.read_token(DASHBOARD)
    st.caption(f"Ray auth token: {'sent to the dashboard only, from ' + token.source if token.value else token.source}")

RUN_EVERY = refresh if refresh > 0 else None

st.title("raystyle monitor")
st.caption("Ray cluster, GPUs, training runs and served styles; "
           + (f"refreshes every {refresh} s." if RUN_EVERY else "auto-refresh off."))


@st.cache_data(ttl=1.0, show_spinner=False)
def cluster(url: str) -> dict:
    return mon.cluster_snapshot(url)


def guarded(title: str):
    """Run a section; a failing source shows one line, never a traceback for the whole page."""
    def wrap(fn):
        @functools.wraps(fn)
        def run():
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - one bad source must not blank the page
                st.error(f"{title}: {type(exc).__name__}: {mon.plain(str(exc).splitlines()[0][:300]) if str(exc) else ''}")
        return run
    return wrap


def _fmt(used, total, unit="") -> str:
    if used is None or total is None:
        return "n/a"
    return f"{used:.3g} / {total:.3g}{unit}"


# ---------------------------------------------------------------------------------------
st.header("Cluster")


def ray_cluster() -> None:
    snap = cluster(dashboard)
    if not snap["ok"]:
        st.warning(f"Ray is not running or not reachable ({snap['error']}).  \n{snap['hint']}.")
        return
    u = snap["usage"]
    alive = sum(1 for n in snap["nodes"] if n["state"] == "ALIVE")
    c = st.columns(5)
    c[0].metric("Ray nodes alive", f"{alive} / {len(snap['nodes'])}", help=f"Ray {snap.get('ray_version')}")
    c[1].metric("CPUs in use", _fmt(u.get("CPU", {}).get("used"), u.get("CPU", {}).get("total")))
    gpu = u.get("GPU")
    c[2].metric("GPUs in use", _fmt(gpu["used"], gpu["total"]) if gpu else "no GPU")
    c[3].metric("Memory (Ray), GiB", _fmt(u.get("memory", {}).get("used"), u.get("memory", {}).get("total")))
    c[4].metric("Object store, GiB", _fmt(u.get("object_store_memory", {}).get("used"),
                                          u.get("object_store_memory", {}).get("total")))
    rows = [{"node": n["node_id"][:12], "ip": n["ip"], "head": n["head"], "state": n["state"],
             "CPUs": n["cpus"], "GPUs": n["gpus"], "CPU %": n["cpu_percent"],
             "memory GiB": _fmt(n["mem_used_gib"], n["mem_total_gib"]),
             "object store GiB": _fmt(n["object_store_used_gib"], n["object_store_total_gib"])}
            for n in snap["nodes"]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    node_gpus = [{"node": n["node_id"][:12], "ip": n["ip"], "GPU": g["name"], "load %": g["load"],
                  "memory MB": _fmt(g["mem_used_mb"], g["mem_total_mb"])}
                 for n in snap["nodes"] for g in n["gpu_devices"]]
    if node_gpus:
        st.markdown("**GPUs of the cluster's nodes** (from Ray)")
        st.dataframe(pd.DataFrame(node_gpus), hide_index=True, width="stretch", key="node_gpus")


def this_machine() -> None:
    host = mon.host_snapshot(storage)
    st.subheader("This machine")
    c = st.columns(4)
    c[0].metric("CPU", f"{host['cpu_percent']:.0f} %", help=f"{host['cpu_count']} logical CPUs; "
                f"per CPU {host['per_cpu']}")
    c[1].metric("Memory, GiB", _fmt(host["mem_used_gib"], host["mem_total_gib"]))
    c[2].metric("Disk free, GiB", f"{host['disk_free_gib']:.3g}", help=f"where runs are: {host['disk_path']}")
    c[3].metric("Load (1 min)", f"{host['load'][0]:.2f}" if host["load"] else "n/a")


def local_gpus() -> None:
    gpus = mon.gpu_snapshot()
    if not gpus["gpus"]:
        st.info(f"No GPU: {gpus['note']}")
    else:
        st.dataframe(pd.DataFrame(gpus["gpus"]), hide_index=True, width="stretch")


@st.fragment(run_every=RUN_EVERY)
def cluster_section() -> None:
    # each source on its own: a failing one leaves the others drawn
    guarded("Ray cluster")(ray_cluster)()
    guarded("This machine")(this_machine)()
    guarded("GPUs")(local_gpus)()


cluster_section()

# ---------------------------------------------------------------------------------------
st.header("Training")


@st.fragment(run_every=RUN_EVERY)
@guarded("Training")
def training_section() -> None:
    runs = mon.list_runs(storage)
    if not runs:
        st.info(f"No training runs under {mon.plain(storage)}. Start one with `raystyle demo` or "
                "`raystyle train --data DIR --style NAME`.")
        return
    names = [r.name for r in runs]
    chosen = st.selectbox("Run", names, key="run")
    run = runs[names.index(chosen)] if chosen in names else runs[0]
    last = run.metrics[-1] if run.metrics else {}
    c = st.columns(5)
    c[0].metric("Status", run.status)
    c[1].metric("Step", f"{run.step} / {run.total_steps or '?'}")
    c[2].metric("Images/s", f"{last.get('images_per_s', 0):.1f}" if last else "n/a")
    c[3].metric("Learning rate", f"{last.get('lr', 0):.2e}" if last else "n/a")
    c[4].metric("Checkpoints", len(run.checkpoints))
    if run.metrics:
        df = pd.DataFrame(run.metrics).set_index("step")
        charts = [("Losses", [k for k in mon.LOSS_KEYS if k in df and k != "g_total"], 260),
                  ("Generator total", [k for k in ("g_total",) if k in df], 260),
                  ("Learning rate", [k for k in ("lr",) if k in df], 200),
                  ("Images/s (all workers)", [k for k in ("images_per_s",) if k in df], 200)]
        # validation runs every few hundred steps: its own rows, not gaps in the loss rows
        charts += [(title, [k for k in keys if k in df], 220) for title, keys in mon.VAL_CHARTS]
        cols = st.columns(2)
        for i, (title, keys, height) in enumerate(c for c in charts if c[1]):
            cols[i % 2].markdown(f"**{title}**")
            cols[i % 2].line_chart(df[keys].dropna(how="all"), height=height)
        if run.best_metric:
            v = run.validation
            st.caption(f"Checkpoints are ranked by **{mon.plain(run.best_metric)}** (the selection split of held-out {mon.plain(v.get('split'))}"
                       f"{', paired with ground truth' if v.get('paired') else ''}); "
                       "`raystyle export RUN --best auto` exports the best one.")
    if run.samples:
        shown = run.samples[-3:]
        st.markdown(f"**Latest sample grids** ({len(run.samples)} in all; {mon.sample_layout(run.metrics)})")
        for col, path in zip(st.columns(3), shown, strict=False):
            stem = PurePosixPath(str(path)).stem  # a local path or a URI (s3://...)
            col.image(mon.read_sample(path), caption=mon.plain(f"{run.name}, {stem.replace('_', ' ')}"), width="stretch")
    if run.checkpoints:
        st.markdown("**Checkpoints**")
        st.dataframe(pd.DataFrame(run.checkpoints), hide_index=True, width="stretch")


training_section()

# ---------------------------------------------------------------------------------------
st.header("Serving")


@st.fragment(run_every=RUN_EVERY)
@guarded("Serving")
def serving_section() -> None:
    snap = cluster(dashboard)
    if not snap["ok"]:
        st.info("Serve needs Ray; start both with `raystyle demo` or `raystyle serve`.")
        return
    serve = mon.serve_snapshot(dashboard, nodes=snap["nodes"])
    history = st.session_state.get("serve_history", [])
    serve = mon.windowed(serve, history)
    st.session_state["serve_history"] = mon.remember(history, serve)
    if not serve["ok"]:
        st.warning(f"Serve status unavailable: {mon.plain(serve['error'])}")
        return
    if not serve["running"]:
        st.info("Serve is not running on this cluster. Start it with `raystyle serve` "
                "(or `serve deploy serve_configs/local.yaml`).")
        return
    st.markdown(f"HTTP proxy: {serve['proxy_url']} · [Serve in the Ray dashboard]({dashboard}/#/serve) "
                f"· [metrics]({dashboard}/#/metrics)")
    st.dataframe(pd.DataFrame(serve["applications"]), hide_index=True, width="stretch")
    rows = [{"application": d["application"], "deployment": d["deployment"], "status": d["status"],
             "replicas": d["replicas"], "target": d["target_replicas"],
             "min..max": f"{d['min_replicas']}..{d['max_replicas']}",
             "requests": int(d["requests"]), "req/s": d["requests_per_s"],
             "p50 ms": d["latency_p50_ms"], "p95 ms": d["latency_p95_ms"], "p99 ms": d["latency_p99_ms"],
             "window s": d["window_s"], "errors": int(d["errors"])} for d in serve["deployments"]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption(f"req/s and latency percentiles over the last {mon.WINDOW_S:.0f} s (window s); "
               "blank window: since the replicas started (no earlier sample yet).")
    codes = serve["http"]
    if codes:
        errors = sum(v for k, v in codes.items() if not k.startswith("2"))
        st.caption("HTTP requests by status: " + ", ".join(f"{k}: {int(v)}" for k, v in sorted(codes.items()))
                   + f" (errors {int(errors)})")
    else:
        st.caption("No request metrics yet (Ray exports them every few seconds).")
    if serve["metrics_errors"]:
        st.caption("metrics not read from: " + "; ".join(serve["metrics_errors"]))


serving_section()

# ---------------------------------------------------------------------------------------
st.header("Try it")


@guarded("Try it")
def try_section() -> None:
    styles = client.styles(serve_url)
    if not styles:
        st.info(f"No raystyle API answers at {serve_url}. Start it with `raystyle serve` "
                "(or `raystyle demo`), or set the API URL in the sidebar.")
        return
    upload = st.file_uploader(f"A photo (up to {MAX_UPLOAD_MB:g} MB)", type=UPLOAD_TYPES, key="photo")
    c = st.columns(4)
    style = c[0].selectbox("Style", sorted(styles), key="style",
                           format_func=lambda name: mon.style_label(name, styles.get(name)))
    strength = c[1].slider("Strength", 0.0, 1.0, 1.0, 0.05, key="strength")
    max_side = c[2].number_input("Longest side (px)", 64, 4096, 1024, 64, key="max_side")
    preserve = c[3].checkbox("Keep the photo's colours", key="preserve")
    arbitrary = mon.takes_style_images(styles.get(style))
    style_uploads, alpha = [], None
    if arbitrary:  # AdaIN: the style comes from the visitor's own painting(s)
        cols = st.columns([3, 1])
        style_uploads = cols[0].file_uploader(
            f"Style image: a painting whose style to copy (several are blended equally; up to "
            f"{MAX_UPLOAD_MB:g} MB each)", type=UPLOAD_TYPES, accept_multiple_files=True,
            key="style_images") or []
        alpha = cols[1].slider("Style amount (alpha)", 0.0, 1.0, 1.0, 0.05, key="alpha",
                            help="0 keeps the photo's own features, 1 takes the style image's")
    ready = upload is not None and (not arbitrary or bool(style_uploads))
    if st.button("Stylize", type="primary", disabled=not ready, key="go"):
        data = upload.getvalue()
        style_data = [u.getvalue() for u in style_uploads]
        problem = mon.upload_problem([(upload.name, len(data))] + [
            (u.name, len(d)) for u, d in zip(style_uploads, style_data, strict=True)], MAX_UPLOAD_MB)
        if problem:
            st.error(problem)
            return
        try:
            out, headers = client.stylize(serve_url, style, data, strength=strength,
                                          preserve_color=preserve, max_side=int(max_side),
                                          style_images=style_data or None, alpha=alpha)
        except client.ApiError as exc:
            st.error(f"Serve refused {mon.plain(upload.name)}: {mon.plain(exc)}")
            return
        st.session_state["result"] = {"name": upload.name, "input": data, "output": out,
                                      "style": style, "ms": headers.get("x-raystyle-inference-ms"),
                                      "style_images": [u.name for u in style_uploads]}
    res = st.session_state.get("result")
    if res:
        before, after = st.columns(2)
        before.image(Image.open(io.BytesIO(res["input"])), caption=mon.plain(f"before: {res['name']}"))
        painted = f" from {', '.join(res['style_images'])}" if res.get("style_images") else ""
        after.image(res["output"], caption=f"after: style {res['style']}{painted}, {res['ms']} ms inference")
        st.download_button("Download the result", res["output"], key="download",
                           file_name=f"{Path(res['name']).stem}_{res['style']}.png", mime="image/png")


try_section()
