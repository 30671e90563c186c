"""Real Ray Train runs: 2 CPU workers (gloo DDP), tiny nets, 32 px crops."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from raystyle import checkpoint as ckpt
from raystyle import runlog
from raystyle.cluster import ClusterError
from raystyle.config import ConfigError
from raystyle.train.loop import CRASH_MARKER, fit
from tests.conftest import one_torch_thread, tiny_config

NETS = ("g_ab", "g_ba", "d_a", "d_b")  # a CycleGAN run's nets

pytestmark = pytest.mark.usefixtures("ray_session", "torch_one_thread")

SCHEDULE = {"epochs": 1, "epochs_decay": 3, "lr": 2e-4}  # 4 steps per epoch: lr halves by step 8


@pytest.fixture(scope="module", autouse=True)
def _driver_on_one_thread():
    """The driver's own torch work (the domain classifier, evaluate) on one thread, for the
    module fixtures too (see conftest.one_torch_thread); the workers set theirs."""
    with one_torch_thread():
        yield


def _cfg(storage, max_steps):
    # Dropout on: the torch RNG state then shapes the weights, so resuming must restore it.
    return tiny_config(storage, max_steps=max_steps, **SCHEDULE).replace(model={"dropout": 0.3})


@pytest.fixture(scope="module")
def full_run(sample_data, tmp_path_factory):
    """8 steps on 2 workers straight through, validating every 2 steps (between checkpoints
    too, so a validation that touched the training state would carry into the next checkpoint)."""
    storage = tmp_path_factory.mktemp("runs")
    return fit(_cfg(storage, 8).replace(train={"validate_every": 2}), sample_data, "full", verbose=False)


@pytest.fixture(scope="module")
def split_run(sample_data, tmp_path_factory):
    """The same run without validation, stopped at step 4 (max_steps 4), then run again to 8
    with its last worker killed at step 6 (Ray restarts the group from the step-4 checkpoint)."""
    storage = tmp_path_factory.mktemp("split")
    noval = {"validate": False}
    first = fit(_cfg(storage, 4).replace(train=noval), sample_data, "split", verbose=False)
    second = fit(_cfg(storage, 8).replace(train=noval), sample_data, "split", crash_at_step=6, verbose=False)
    return first, second


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


def test_ddp_keeps_all_four_nets_equal_on_both_ranks(full_run):
    # Each rank fingerprints its own copy of every net when it checkpoints. Without DDP on
    # the discriminators (or the generators) the ranks train on different shards and drift.
    ranks = [ckpt.load_rank(full_run.checkpoint, r)["fingerprints"] for r in (0, 1)]
    assert sorted(ranks[0]) == sorted(NETS)
    for name in NETS:
        assert ranks[0][name] == pytest.approx(ranks[1][name], rel=1e-6, abs=1e-7), name
    earlier = ckpt.load_rank(full_run.run_dir / "checkpoint_00000004", 0)["fingerprints"]
    for name in NETS:
        assert earlier[name] != pytest.approx(ranks[0][name], rel=1e-6), f"{name} moved between checkpoints"


def _tensors(tree, prefix=""):
    """Every tensor and number of a nested state (dicts, lists), keyed by its path."""
    if isinstance(tree, dict):
        return {k: v for key in tree for k, v in _tensors(tree[key], f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, x in enumerate(tree) for k, v in _tensors(x, f"{prefix}/{i}").items()}
    return {prefix: tree}


def _assert_same_state(resumed, straight):
    a, b = _tensors(resumed), _tensors(straight)
    assert sorted(a) == sorted(b)
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key

def _assert_same_checkpoint(one, other):
    """Both checkpoints hold the same nets, train state and per-rank pools and RNG states."""
    _, nets, state = ckpt.load_shared(one)
    _, nets_other, state_other = ckpt.load_shared(other)
    _assert_same_state(nets, nets_other)
    _assert_same_state(state, state_other)
    for rank in (0, 1):
        _assert_same_state(ckpt.load_rank(one, rank), ckpt.load_rank(other, rank))


def test_rerun_resumes_exactly_and_validation_does_not_change_training(full_run, split_run, sample_data,
                                                                       capsys):
    """Stopped at step 4, run again to 8 through a killed worker, validation off == straight to
    8 with validation on, bit for bit: resuming and recovering lose and repeat nothing, and
    validating never touches the training state."""
    first, second = split_run
    noval = {"validate": False}
    assert first.step == 4
    assert second.step == 8 and second.run_dir == first.run_dir
    assert not any("val_time_s" in r for r in runlog.read_metrics(second.run_dir))
    assert runlog.read_validation(second.run_dir) == {}
    # Interrupted at step 4 and resumed == trained straight to 8, bit for bit: weights of all
    # four nets, both optimisers' moments, schedulers, image pools and RNG states of each rank.
    _assert_same_checkpoint(second.checkpoint, full_run.checkpoint)
    resumed = runlog.read_metrics(second.run_dir)
    straight = runlog.read_metrics(full_run.run_dir)
    assert [r["step"] for r in resumed] == [2, 4, 6, 8]
    for a, b in zip(resumed, straight, strict=True):
        assert (a["epoch"], a["lr"]) == (b["epoch"], b["lr"])
        for key in ("g_total", "d_a", "d_b", "cycle_a", "cycle_b"):
            assert a[key] == b[key], (a["step"], key)
    # Running it a third time has nothing left to do: the same checkpoint, no workers started.
    capsys.readouterr()
    third = fit(_cfg(first.run_dir.parent, 8).replace(train=noval), sample_data, "split", verbose=True)
    assert third.checkpoint == second.checkpoint and third.step == 8
    out = capsys.readouterr().out
    assert "'split' is already at step 8 of 8: nothing to train" in out and "RayTrainWorker" not in out


VAL_KEYS = {"val_gt_psnr", "val_gt_gain_db", "val_domain_score", "val_domain_content",
            "val_content_ssim", "val_cycle_psnr", "val_colour_distance", "val_time_s",
            "val_kid_el0", "val_kid_el0_se", "val_fid_el0"}


def test_validation_is_logged_at_every_checkpoint(full_run):
    records = runlog.read_metrics(full_run.run_dir)
    val = {r["step"]: r for r in records if "val_time_s" in r}
    assert sorted(val) == [2, 4, 6, 8]  # validate_every 2: the checkpoint steps and between
    for r in val.values():
        assert VAL_KEYS - {"val_domain_score", "val_domain_content"} <= set(r)
    info = runlog.read_validation(full_run.run_dir)
    # the sample data's test split is paired: ground truth ranks the checkpoints
    assert (info["best_metric"], info["order"], info["split"], info["paired"]) == ("val_gt_psnr", "max", "test", True)
    assert info["held_out"] == [7, 7] and "accuracy" in info["classifier"]
    assert set(info["metrics"]) <= VAL_KEYS


@pytest.mark.slow  # a Ray Train run of its own
def test_the_best_checkpoint_survives_rotation(sample_data, tmp_path):
    from raystyle.export import pick_checkpoint

    # keep 1: Ray keeps the best by best_metric and, always, the newest. cycle_a (a loss: lower is
    # better) is best early in this deterministic run (at step 4: 0.355; 0.46 at 6 and 8), so the
    # two differ.
    cfg = _cfg(tmp_path, 8).replace(train={"checkpoint_every": 2, "keep_checkpoints": 1,
                                            "best_metric": "cycle_a", "validate_every": 3})
    result = fit(cfg, sample_data, "keep", verbose=False)
    records = {r["step"]: r for r in runlog.read_metrics(result.run_dir)}
    best = min((2, 4, 6, 8), key=lambda s: records[s]["cycle_a"])
    assert best != 8, "precondition: the best checkpoint is not the newest"
    kept = [ckpt.read_manifest(c)["step"] for c in ckpt.list_checkpoints(result.run_dir)]
    assert kept == [best, 8]
    assert ckpt.read_manifest(pick_checkpoint(result.run_dir, "auto"))["step"] == best
    # validate_every 3 validates between checkpoints too
    assert sorted(s for s, r in records.items() if "val_time_s" in r) == [2, 3, 4, 6, 8]


def test_an_unknown_best_metric_is_refused_before_training(sample_data, tmp_path):
    cfg = tiny_config(tmp_path, max_steps=2, best_metric="val_fid")
    with pytest.raises(ConfigError, match="train.best_metric 'val_fid' is not measured"):
        fit(cfg, sample_data, "nometric", verbose=False)


def test_worker_killed_mid_run_recovers_from_checkpoint(split_run):
    _, killed = split_run
    assert (killed.run_dir / CRASH_MARKER).exists(), "the worker really died"
    assert killed.step == 8
    lines = (killed.run_dir / runlog.METRICS).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6, 8]


def test_too_many_workers_is_a_clear_error(sample_data, tmp_path):
    cfg = tiny_config(tmp_path).replace(cluster={"workers": 64})
    with pytest.raises(ClusterError, match="64 workers x 1 CPU need 64 CPUs; the cluster has 4"):
        fit(cfg, sample_data, "big", verbose=False)
    cfg = tiny_config(tmp_path).replace(cluster={"workers": 1, "use_gpu": True})
    with pytest.raises(ClusterError, match=r"needs 1 GPU\(s\); the cluster has 0"):
        fit(cfg, sample_data, "gpu", verbose=False)


def test_resuming_with_another_model_is_refused(full_run, sample_data):
    cfg = _cfg(full_run.run_dir.parent, 8).replace(model={"ngf": 16})
    with pytest.raises(ConfigError, match="exists with a different model config"):
        fit(cfg, sample_data, "full", verbose=False)


@pytest.mark.slow  # a Ray Train run on 3 workers
@pytest.mark.timeout(240)
def test_one_image_per_domain_trains_on_three_workers(tmp_path):
    # |A| = |B| = 1 < 3 workers: padding by repeating the first N - world samples gave rank 2
    # no batch at all (with 2 workers one repeat was enough), and ranks 0-1 waited in
    # DDP's all-reduce forever.
    for domain, colour in (("trainA", (200, 40, 40)), ("trainB", (40, 40, 200))):
        (tmp_path / "data" / domain).mkdir(parents=True)
        Image.new("RGB", (40, 40), colour).save(tmp_path / "data" / domain / "only.png")
    cfg = tiny_config(tmp_path / "runs", max_steps=2).replace(
        train={"checkpoint_every": 2}, cluster={"workers": 3})
    result = fit(cfg, tmp_path / "data", "one", verbose=False)
    assert result.step == 2
    ranks = [ckpt.load_rank(result.checkpoint, r)["fingerprints"] for r in (0, 1, 2)]
    for name in NETS:
        assert ranks[0][name] == pytest.approx(ranks[2][name], rel=1e-6, abs=1e-7), name
    assert [r["step"] for r in runlog.read_metrics(result.run_dir)] == [2]


EXPORT_DRIVER = textwrap.dedent("""
    import sys

    import ray

    from raystyle.train.loop import export_on_cluster

    checkpoint, worker_home = sys.argv[1:3]
    # Every task of this job runs with another RAYSTYLE_HOME than the driver's.
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"RAYSTYLE_HOME": worker_home, "RAYSTYLE_MODELS": ""}})
    style = export_on_cluster(checkpoint, "driver-side", precisions=("fp32",))
    print("EXPORTED", style.path)
""")


@pytest.mark.slow  # starts its own Ray in a subprocess
def test_export_on_cluster_uses_the_drivers_registry(trained_checkpoint, tmp_path):
    # `train --export` / `export --ray` without --models-dir: the registry is the driver's
    # ($RAYSTYLE_HOME/models here), not the one of the node that runs the export task.
    driver_home, worker_home = tmp_path / "driver", tmp_path / "worker"
    env = {k: v for k, v in os.environ.items() if k not in ("RAYSTYLE_MODELS", "RAY_ADDRESS")}
    env["RAYSTYLE_HOME"] = str(driver_home)
    proc = subprocess.run([sys.executable, "-c", EXPORT_DRIVER, str(trained_checkpoint), str(worker_home)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"EXPORTED {driver_home / 'models' / 'driver-side'}" in proc.stdout
    assert (driver_home / "models" / "driver-side" / "model.onnx").is_file()
    assert not (worker_home / "models").exists()


def _no_test_split(sample_data, tmp_path):
    import shutil

    data = tmp_path / "data"
    for d in ("trainA", "trainB"):
        shutil.copytree(sample_data / d, data / d)
    return data


def test_a_resumed_run_keeps_its_held_back_images_and_metric(sample_data, trained_checkpoint, tmp_path, capsys):
    import shutil

    from raystyle.data.datasets import check_dataset
    from raystyle.methods import quality
    from raystyle.train.loop import plan_validation, run_location

    data = _no_test_split(sample_data, tmp_path)
    cfg = tiny_config(tmp_path / "runs", max_steps=4)
    scan = [s.files for s in check_dataset(data, cfg.data.crop_size)]
    run = run_location(cfg, "held")
    a, b, plan, best = plan_validation(cfg, data, scan, run, verbose=False)
    held = plan["info"]["held_back"]
    assert held[0] and held[1] and not set(held[0]) & set(a) and set(a) | set(held[0]) == set(scan[0])
    assert best is None  # no ground truth here; the tiny classifier decides whether it ranks
    runlog.write_validation(run, {**plan["info"], "best_metric": "val_cycle_psnr"})
    shutil.copytree(trained_checkpoint, run.local / "checkpoint_00000004")  # the run has started
    # resumed with validation off: the same images stay out of training
    off = cfg.replace(train={"validate": False})
    assert plan_validation(off, data, scan, run, verbose=False)[:2] == (a, b)
    # resumed with validation on: the same held-out images, the same ranking metric
    a2, b2, plan2, best2 = plan_validation(cfg, data, scan, run, verbose=False)
    assert (a2, b2, best2) == (a, b, "val_cycle_psnr")
    assert plan2["files_a"] == list(quality.divide(held[0])[0])  # validation: the selection split
    with pytest.raises(ConfigError, match="ranks its checkpoints by val_cycle_psnr"):
        plan_validation(cfg.replace(train={"best_metric": "cycle_a"}), data, scan, run, verbose=False)
    # a run that started before validation existed: nothing is held back later
    other = run_location(cfg, "old")
    shutil.copytree(trained_checkpoint, other.local / "checkpoint_00000004")
    capsys.readouterr()
    a3, b3, plan3, _ = plan_validation(cfg, data, scan, other, verbose=True)
    assert (a3, b3, plan3) == (tuple(scan[0]), tuple(scan[1]), None)
    assert "validation off: the run started without holding train images back" in capsys.readouterr().out


@pytest.mark.slow  # a Ray Train run of its own
def test_averaged_colour_skip_generators_are_what_validation_judges(sample_data, tmp_path):
    """The `cpu` recipe's train.ema and model.colour_skip on Ray Train: the checkpoint keeps
    the averaged generators, the validation logged at a step is the average's figure (not the
    trained weights'), both ranks hold the same average, and evaluate agrees with the log."""
    from raystyle.core.nets import build_generator
    from raystyle.methods import quality
    from raystyle.methods.quality import centre_tensor, psnr
    from raystyle.train.evaluate import evaluate

    cfg = tiny_config(tmp_path, max_steps=6, **SCHEDULE).replace(
        model={"residual": True, "colour_skip": True}, train={"ema": 0.5, "lr": 2e-3})
    res = fit(cfg, sample_data, "ema", verbose=False)
    config, nets, _ = ckpt.load_shared(res.checkpoint)
    assert {"g_ab_ema", "g_ba_ema"} <= set(nets)
    assert any(not torch.equal(nets["g_ab"][k], nets["g_ab_ema"][k]) for k in nets["g_ab"])
    assert not torch.equal(nets["g_ab_ema"]["skip.weight"].flatten(), torch.eye(3).flatten())  # it learned
    ranks = [ckpt.load_rank(res.checkpoint, r)["fingerprints"] for r in (0, 1)]
    for name in ("g_ab_ema", "g_ba_ema"):
        assert ranks[0][name] == pytest.approx(ranks[1][name], rel=1e-6, abs=1e-7), name
    logged = [r for r in runlog.read_metrics(res.run_dir) if r["step"] == 6 and "val_gt_psnr" in r][0]
    info = runlog.read_validation(res.run_dir)
    n = info["selection"][0]  # validation judges on the selection split only
    split = quality.split_dataset(sample_data, config.data.crop_size, config.train.val_holdout)
    photos = [Path(f) for f in split.part("selection")[0]]
    assert len(photos) == n
    a = torch.stack([centre_tensor(p, config.data) for p in photos])
    b = torch.stack([centre_tensor(sample_data / "testB" / p.name, config.data) for p in photos])
    scores = {}
    for key in ("g_ab", "g_ab_ema"):
        g = build_generator(config.model).eval()
        g.load_state_dict(nets[key])
        with torch.no_grad():
            scores[key] = float(psnr(g(a), b).mean())
    assert logged["val_gt_psnr"] == pytest.approx(scores["g_ab_ema"], abs=1e-3)
    assert abs(scores["g_ab"] - scores["g_ab_ema"]) > 1e-2  # the two differ, so the check means something
    ev = evaluate(res.checkpoint, sample_data, split="selection", limit=n, classifier=False)
    assert ev.trained["val_gt_psnr"] == pytest.approx(logged["val_gt_psnr"], abs=1e-3)
    report = evaluate(res.checkpoint, sample_data, limit=n, classifier=False)  # other images
    assert report.trained["val_gt_psnr"] != pytest.approx(logged["val_gt_psnr"], abs=1e-3)


@pytest.mark.slow  # the cpu recipe's whole schedule on Ray Train: about 9 minutes on 2 idle cores
@pytest.mark.timeout(1800)
def test_the_cpu_recipe_beats_the_colour_transfer_baseline_on_kid_el0(tmp_path):
    """The README's claim for the CPU recipe, on the reporting split of the sample data: the
    trained generator is closer to domain B than a plain colour transfer on KID-EL0 (by more
    than two standard errors) and on ground truth, and gains over the photo itself."""
    from raystyle.config import load_config
    from raystyle.data.datasets import write_sample_dataset
    from raystyle.train.evaluate import evaluate

    data = tmp_path / "sample"
    write_sample_dataset(data)
    cfg = load_config("cpu").replace(cluster={"storage": str(tmp_path / "runs")})
    fit(cfg, data, "cpu", verbose=False)
    ev = evaluate(tmp_path / "runs" / "cpu", data, limit=64, classifier=False)
    end = ev.last if ev.last is not None else ev.trained  # the end of the schedule: texture learnt
    assert ev.split == "report" and ev.paired
    assert end["val_kid_el0"] + 2 * end["val_kid_el0_se"] < ev.baseline["val_kid_el0"]
    assert ev.trained["val_gt_gain_db"] > 2.0 > ev.baseline["val_gt_gain_db"]
