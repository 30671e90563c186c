"""Real Ray Train runs: 2 CPU workers (gloo DDP), tiny nets, 32 px crops."""

import json

import pytest
import torch

from raystyle import checkpoint as ckpt
from raystyle import runlog
from raystyle.config import ConfigError
from raystyle.train import CRASH_MARKER, ClusterError, fit

from .conftest import tiny_config

pytestmark = pytest.mark.usefixtures("ray_session")
SCHEDULE = {"epochs": 1, "epochs_decay": 3, "lr": 2e-4}  # 4 steps per epoch: lr halves by step 8


@pytest.fixture(scope="module")
def full_run(sample_data, tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    return fit(tiny_config(storage, max_steps=8, **SCHEDULE), sample_data, "full", verbose=False)


def test_run_writes_checkpoints_metrics_and_samples(full_run):
    assert full_run.step == 8
    assert full_run.checkpoint == full_run.run_dir / "checkpoint_00000008"
    manifest = ckpt.read_manifest(full_run.checkpoint)
    assert manifest["world_size"] == 2 and manifest["epoch"] == 2
    assert sorted(p.name for p in full_run.checkpoint.iterdir()) == [
        "config.json", "manifest.json", "nets.pt", "rank_0.pt", "rank_1.pt", "train_state.pt"]
    config, nets, state = ckpt.load_shared(full_run.checkpoint)
    assert config.model.ngf == 8 and set(nets) == {"g_ab", "g_ba", "d_a", "d_b"}
    records = runlog.read_metrics(full_run.run_dir)
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert records[-1]["lr"] == pytest.approx(1e-4)  # 1 - (2 + 1 - 1) / 4 = 0.5 of 2e-4
    assert all(r["images_per_s"] > 0 and r["memory_mb"] > 0 for r in records)
    assert [p.name for p in runlog.list_samples(full_run.run_dir)] == ["step_00000004.png", "step_00000008.png"]


def test_ddp_keeps_generator_weights_equal_on_both_ranks(full_run):
    r0 = torch.load(full_run.checkpoint / "rank_0.pt", weights_only=False)["g_ab_fingerprint"]
    r1 = torch.load(full_run.checkpoint / "rank_1.pt", weights_only=False)["g_ab_fingerprint"]
    assert r0 == pytest.approx(r1, rel=1e-6, abs=1e-7)
    earlier = torch.load(full_run.run_dir / "checkpoint_00000004" / "rank_0.pt", weights_only=False)
    assert earlier["g_ab_fingerprint"] != pytest.approx(r0, rel=1e-6), "weights moved between checkpoints"


def test_rerun_resumes_exactly(full_run, sample_data, tmp_path):
    first = fit(tiny_config(tmp_path, max_steps=4, **SCHEDULE), sample_data, "split", verbose=False)
    assert first.step == 4
    second = fit(tiny_config(tmp_path, max_steps=8, **SCHEDULE), sample_data, "split", verbose=False)
    assert second.step == 8 and second.run_dir == first.run_dir
    resumed = runlog.read_metrics(second.run_dir)
    straight = runlog.read_metrics(full_run.run_dir)
    assert [r["step"] for r in resumed] == [2, 4, 6, 8]
    for a, b in zip(resumed, straight, strict=True):
        assert (a["epoch"], a["lr"]) == (b["epoch"], b["lr"])
        for key in ("g_total", "d_a", "d_b", "cycle_a", "cycle_b"):
            assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-4), (a["step"], key)
    # Running it a third time has nothing left to do and returns the same checkpoint.
    third = fit(tiny_config(tmp_path, max_steps=8, **SCHEDULE), sample_data, "split", verbose=False)
    assert third.checkpoint == second.checkpoint and third.step == 8


def test_worker_killed_mid_run_recovers_from_checkpoint(sample_data, tmp_path):
    result = fit(tiny_config(tmp_path, max_steps=8), sample_data, "crash", crash_at_step=6,
                 verbose=False)
    assert (result.run_dir / CRASH_MARKER).exists(), "the worker really died"
    assert result.step == 8
    lines = (result.run_dir / runlog.METRICS).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6, 8]


def test_too_many_workers_is_a_clear_error(sample_data, tmp_path):
    cfg = tiny_config(tmp_path).replace(cluster={"workers": 64})
    with pytest.raises(ClusterError, match="64 workers x 1 CPU need 64 CPUs; the cluster has 4"):
        fit(cfg, sample_data, "big", verbose=False)
    cfg = tiny_config(tmp_path).replace(cluster={"workers": 1, "use_gpu": True})
    with pytest.raises(ClusterError, match=r"needs 1 GPU\(s\); the cluster has 0"):
        fit(cfg, sample_data, "gpu", verbose=False)


def test_resuming_with_another_model_is_refused(full_run, sample_data):
    cfg = tiny_config(full_run.run_dir.parent).replace(model={"ngf": 16})
    with pytest.raises(ConfigError, match="exists with a different model config"):
        fit(cfg, sample_data, "full", verbose=False)
