"""Runs on object storage: a real S3-compatible server (moto) on 127.0.0.1, a real Ray Train
run writing to it, and the readers (checkpoints, metrics log, samples, monitor) reading it."""

from __future__ import annotations

import json
import os
import pickle
import socket
from pathlib import Path

import pytest

from raystyle import checkpoint as ckpt
from raystyle import runlog
from raystyle.monitor import snapshot as mon
from raystyle.util import storage
from raystyle.util.storage import StorageError
from tests.conftest import tiny_config
from tests.helpers import moto_s3, s3_keys

BUCKET = "raystyle-test"


@pytest.fixture(scope="module")
def s3(ray_session):
    """tests.helpers.moto_s3, its keys set after Ray started (the workers lack them)."""
    with moto_s3(BUCKET) as client:
        yield client


def _keys(client, prefix: str) -> set[str]:
    return s3_keys(client, BUCKET, prefix)


def _metrics(client, run: str) -> list[dict]:
    body = client.get_object(Bucket=BUCKET, Key=f"runs/{run}/metrics.jsonl")["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


# ---------------------------------------------------------------------------------------
# Resolution


def test_local_paths_stay_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = storage.resolve("runs")
    assert not loc.is_remote and loc.native == Path("runs") and loc.path == str(tmp_path / "runs")
    assert (loc / "a").native == Path("runs/a")
    assert storage.resolve(f"file://{tmp_path}").native == tmp_path
    assert storage.resolve("~/x").native == Path.home() / "x"


def test_unknown_scheme_is_a_one_line_error():
    with pytest.raises(StorageError, match=r"^cannot use storage 'nosuch://b/runs': .+") as exc:
        storage.resolve("nosuch://b/runs")
    assert "\n" not in str(exc.value)


def test_missing_bucket_is_refused_early(s3):
    loc = storage.resolve("s3://no-such-bucket/runs")
    with pytest.raises(StorageError, match=r"bucket s3://no-such-bucket does not exist"):
        storage.check_reachable(loc)
    storage.check_reachable(storage.resolve(f"s3://{BUCKET}/runs"))


def test_endpoint_from_the_uri_query(s3, monkeypatch):
    # S3-compatible servers named in the URI itself, without AWS_ENDPOINT_URL.
    host = os.environ["AWS_ENDPOINT_URL"].split("://", 1)[1]
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # restored afterwards
    loc = storage.resolve(f"s3://{BUCKET}/query?endpoint_override={host}&scheme=http")
    assert loc.native == f"s3://{BUCKET}/query"  # shown without the query
    storage.write_bytes(loc / "x.txt", b"hello")
    assert s3.get_object(Bucket=BUCKET, Key="query/x.txt")["Body"].read() == b"hello"


def test_workers_use_the_drivers_settings(s3):
    """A Location pickled to a Ray worker reaches the same endpoint with the same credentials,
    although the worker's environment has neither."""
    import ray

    loc = storage.resolve(f"s3://{BUCKET}/pickled")
    storage.write_bytes(loc / "x.txt", b"from the driver")

    @ray.remote(num_cpus=0)
    def read(where):
        return os.environ.get("AWS_ACCESS_KEY_ID"), storage.read_bytes(where / "x.txt")

    worker_key, data = ray.get(read.remote(loc), timeout=60)
    assert worker_key != os.environ["AWS_ACCESS_KEY_ID"], "precondition: the worker has no key"
    assert data == b"from the driver"
    assert pickle.loads(pickle.dumps(loc)).native == loc.native


# ---------------------------------------------------------------------------------------
# The metrics log without append


def test_remote_metrics_log_is_uploaded_whole_at_sync(s3, monkeypatch):
    monkeypatch.setattr(runlog, "UPLOAD_EVERY_S", 3600.0)
    run = storage.resolve(f"s3://{BUCKET}/logs/log")
    log = runlog.MetricsLog(run, 0)
    for step in (1, 2):
        log.append({"step": step, "g_total": 1.0 / step})
    assert [r["step"] for r in runlog.read_metrics(run)] == [1]  # the first append uploads
    log.sync()  # before a checkpoint
    log.append({"step": 3})  # then a crash: step 3 is redone by the resumed run
    Path(log.spool).unlink()  # what the crash leaves in the temp folder
    assert [r["step"] for r in runlog.read_metrics(run)] == [1, 2]
    resumed = runlog.MetricsLog(run, 1)  # resumed from a checkpoint at step 1
    assert [r["step"] for r in runlog.read_metrics(run)] == [1]
    resumed.append({"step": 2, "g_total": 0.25})
    resumed.close()
    assert runlog.read_metrics(run) == [{"step": 1, "g_total": 1.0}, {"step": 2, "g_total": 0.25}]


# ---------------------------------------------------------------------------------------
# A real run on S3


@pytest.mark.slow  # two Ray Train runs; resume itself is in tests/train (default)
@pytest.mark.timeout(240)
def test_train_on_s3_and_resume_from_the_bucket(s3, sample_data, tmp_path, monkeypatch, torch_one_thread):
    monkeypatch.chdir(tmp_path)  # a storage URI taken for a path would create ./s3: here
    uri = f"s3://{BUCKET}/runs"

    def cfg(steps):
        return tiny_config(tmp_path, max_steps=steps).replace(
            train={"log_every": 1, "checkpoint_every": 2, "sample_every": 2},
            cluster={"storage": uri})

    from raystyle.train.loop import fit

    first = fit(cfg(2), sample_data, "remote", verbose=False)
    assert (first.run_dir, first.checkpoint, first.step) == (
        f"{uri}/remote", f"{uri}/remote/checkpoint_00000002", 2)
    keys = _keys(s3, "runs/remote/")
    assert {f"checkpoint_00000002/{n}" for n in (*ckpt.SHARED_FILES, ckpt.MANIFEST, "rank_0.pt",
                                                 "rank_1.pt")} <= keys
    assert {"metrics.jsonl", "samples/step_00000002.png"} <= keys
    logged = _metrics(s3, "remote")
    assert [r["step"] for r in logged] == [1, 2] and logged[-1]["world_size"] == 2

    second = fit(cfg(4), sample_data, "remote", verbose=False)
    assert (second.checkpoint, second.step) == (f"{uri}/remote/checkpoint_00000004", 4)
    records = _metrics(s3, "remote")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[:2] == logged, "resumed from the bucket's checkpoint: steps 1-2 not redone"
    assert "samples/step_00000004.png" in _keys(s3, "runs/remote/")
    assert not (tmp_path / "s3:").exists() and not list(tmp_path.glob("s3*"))

    # Readers: checkpoints (downloaded, loaded with weights_only), metrics, the monitor.
    assert ckpt.resolve(f"{uri}/remote") == second.checkpoint
    assert ckpt.list_checkpoints(f"{uri}/remote") == [first.checkpoint, second.checkpoint]
    config, nets, state = ckpt.load_shared(second.checkpoint)
    assert config.model.ngf == 8 and set(nets) == {"g_ab", "g_ba", "d_a", "d_b"} and state["step"] == 4
    assert ckpt.load_rank(second.checkpoint, 1)["fingerprints"]["d_b"]
    assert [r["step"] for r in runlog.read_metrics(f"{uri}/remote")] == [1, 2, 3, 4]
    from raystyle.train.evaluate import evaluate

    ev = evaluate(f"{uri}/remote", sample_data, limit=2)  # the run's URI -> its latest checkpoint
    assert (ev.step, ev.images) == (4, 2)
    (run,) = mon.list_runs(uri)
    assert (run.name, run.path, run.step, run.status) == ("remote", f"{uri}/remote", 4, "finished")
    assert [c["step"] for c in run.checkpoints] == [2, 4]
    assert run.samples == [f"{uri}/remote/samples/step_0000000{s}.png" for s in (2, 4)]
    assert mon.read_sample(run.samples[-1]).startswith(b"\x89PNG")

    # The monitor page, pointed at the bucket (`raystyle monitor --storage s3://...`).
    from streamlit.testing.v1 import AppTest

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    monkeypatch.setenv("RAYSTYLE_STORAGE", mon.storage_text(uri))
    monkeypatch.setenv("RAYSTYLE_RAY_DASHBOARD", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("RAYSTYLE_SERVE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("RAYSTYLE_MONITOR_REFRESH", "0")
    page = AppTest.from_file(str(mon.app_path()), default_timeout=60).run()
    assert not page.exception and not page.error, [e.value for e in page.error]
    assert page.selectbox(key="run").options == ["remote"]
    assert {m.label: m.value for m in page.metric}["Step"] == "4 / 4"
    assert len(page.get("image")) == 2 and not (tmp_path / "s3:").exists()


def test_train_export_to_a_bucket_is_refused_before_training(sample_data, capsys):
    from raystyle.cli.main import main

    rc = main(["train", "--data", str(sample_data), "--style", "x", "--storage", "s3://b/runs",
               "--export", "x"])
    assert rc == 2
    assert "--export needs a local --storage for now" in capsys.readouterr().err
