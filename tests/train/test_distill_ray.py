"""A distillation run on Ray Train (2 DDP workers, a worker killed mid-run), then export,
the registry, the Stylizer and Ray Serve with the student: the conftest's tiny teacher."""

import json
import re

import numpy as np
import pytest

from raystyle import checkpoint as ckpt
from raystyle import runlog
from raystyle.methods.distill import plan
from raystyle.train.loop import CRASH_MARKER, fit
from tests.helpers import SMALL, png_bytes

# Ray Train runs of a distillation (a dead worker, the CLI, export and Serve): the in-process
# distillation tests (tests/methods/test_distill.py) are in the default run
pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


OVERRIDES = ["model.ngf=4", "data.loader_workers=0", "train.log_every=2", "train.checkpoint_every=2",
             "train.sample_every=4", "train.val_images=4", "train.lr=1e-3", "model.dropout=0.1",
             "cluster.max_failures=1"]


@pytest.fixture(scope="module")
def student_run(trained_checkpoint, sample_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("distill_runs")
    cfg, extra = plan(trained_checkpoint, overrides=OVERRIDES,
                      settings={"cluster": {"workers": 2, "storage": str(runs)}, "train": {"max_steps": 8}})
    return fit(cfg, sample_data, "student", crash_at_step=5, verbose=False, extra=extra)


def test_a_two_worker_distillation_survives_a_dead_worker_with_equal_weights(student_run, trained_checkpoint):
    run = student_run.run_dir
    assert (run / CRASH_MARKER).exists(), "the worker really died"
    assert student_run.step == 8
    manifest = ckpt.read_manifest(student_run.checkpoint)
    assert manifest["method"] == "distill"
    config = ckpt.load_config(student_run.checkpoint)
    assert config.distill.teacher == str(trained_checkpoint) and config.distill.teacher_step == 150
    # DDP: every rank holds the same student, adapters and discriminator
    ranks = [ckpt.load_rank(student_run.checkpoint, r)["fingerprints"] for r in (0, 1)]
    assert sorted(ranks[0]) == ["adapters", "d", "student"]
    for name in ranks[0]:
        assert ranks[0][name] == pytest.approx(ranks[1][name], rel=1e-6, abs=1e-7), name
    _, nets = ckpt.load_nets(student_run.checkpoint)
    assert sorted(nets) == ["adapters", "d_b", "g_ab"]
    records = runlog.read_metrics(run)
    assert [r["step"] for r in records] == [2, 4, 6, 8]  # nothing logged twice after the restart
    for r in records:  # held-out agreement with the teacher at every checkpoint
        assert 0 < r["val_teacher_psnr"] < 100 and -1 <= r["val_teacher_ssim"] <= 1
        assert {"recon_l1", "feature_mse", "g_gan", "d"} <= set(r)
    assert runlog.read_validation(run)["best_metric"] == "val_teacher_psnr"
    assert "classifier" not in json.dumps(runlog.read_validation(run)).replace('"classifier": null', "")
    grids = runlog.list_samples(run)
    assert [p.name for p in grids] == ["step_00000004.png", "step_00000008.png"]
    from PIL import Image

    assert Image.open(grids[-1]).size[0] > 3 * 32  # input | teacher | student


def test_resuming_with_another_teacher_is_refused(student_run, trained_checkpoint, sample_data, tmp_path):
    import shutil

    from raystyle.config import ConfigError

    other = tmp_path / "checkpoint_00000150"
    shutil.copytree(trained_checkpoint, other)
    cfg, extra = plan(other, overrides=["model.ngf=4"],
                      settings={"cluster": {"storage": str(student_run.run_dir.parent)}})
    with pytest.raises(ConfigError, match="distils .* resume it with that teacher checkpoint"):
        fit(cfg, sample_data, "student", verbose=False, extra=extra)


@pytest.fixture(scope="module")
def models(student_run, trained_checkpoint, sample_data, tmp_path_factory):
    """The same `raystyle distill` command again, two steps further, with --export: it resumes
    the run and exports the student (its best checkpoint by agreement with the teacher, fp32 +
    int8, every gate) with a Ray task."""
    from raystyle.cli.main import main

    root = tmp_path_factory.mktemp("student_models")
    sets = [arg for item in OVERRIDES for arg in ("--set", item)]
    assert main(["distill", str(trained_checkpoint), "--data", str(sample_data), "--style", "student",
                 "--workers", "2", "--storage", str(student_run.run_dir.parent), "--max-steps", "10",
                 *sets, "--export", "--models-dir", str(root)]) == 0
    assert [r["step"] for r in runlog.read_metrics(student_run.run_dir)] == [2, 4, 6, 8, 10]  # resumed at 8
    return root


def test_the_student_exports_serves_and_records_its_cost_and_teacher(serve_url, student_run, trained_checkpoint,
                                                                     sample_data, models):
    from raystyle.core.macs import count_onnx_macs
    from raystyle.infer.generator import Stylizer
    from raystyle.registry import get_style

    style = get_style("student", models)
    meta = style.meta
    assert meta["method"] == "distill" and meta["direction"] == "ab"
    assert meta["architecture"]["ngf"] == 4
    # the recorded cost is the served graph's: an independent count on model.onnx agrees
    assert meta["cost"]["macs"] == count_onnx_macs(style.path / "model.onnx", 256)
    assert meta["cost"]["params"] > 0 and meta["cost"]["gmacs"] == round(meta["cost"]["macs"] / 1e9, 3)
    d = meta["distillation"]
    assert d["teacher"] == {"checkpoint": str(trained_checkpoint), "run": str(trained_checkpoint.parent),
                            "step": 150, "direction": "ab"}
    best = max(runlog.read_metrics(student_run.run_dir), key=lambda r: r["val_teacher_psnr"])
    assert d["vs_teacher"]["psnr_db"] == best["val_teacher_psnr"] and d["vs_teacher"]["step"] == best["step"]
    assert meta["precisions"]["int8"]["validated"] is True
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(sorted((sample_data / "testA").iterdir())[0]))
    out = Stylizer(style, provider="cpu").stylize(image)
    assert out.shape == image.shape and out.dtype == np.uint8

    from ray import serve

    from raystyle.serve import client
    from raystyle.serve.app import app_builder


    try:
        serve.run(app_builder({"models_dir": str(models), "provider": "cpu", "ingress": SMALL,
                               "deployment": {**SMALL, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}}),
                  name="students", route_prefix="/")
        png, _ = client.stylize(serve_url, "student", png_bytes(image))
        from raystyle.data.images import decode

        served = np.asarray(decode(png))
        assert served.shape == image.shape
        assert np.abs(served.astype(int) - out.astype(int)).max() <= 1  # the same graph
    finally:
        serve.delete("students")


def test_styles_shows_the_students_cost_and_agreement(models, capsys):
    from raystyle.cli.main import main

    assert main(["styles", "--models-dir", str(models)]) == 0
    out = capsys.readouterr().out
    assert "GMACs per 256 px image" in out and "M parameters" in out
    assert "distilled from" in out and "dB PSNR" in out
    # agreement on the selection split's images, and realism (KID-EL0 to domain B) beside it
    assert re.search(r"vs the teacher on \d+ held-out images, KID-EL0 x1000 -?[\d.]+ to domain B", out), out


def test_evaluate_reads_a_student_without_a_cycle(student_run, sample_data, capsys):
    from raystyle.cli.main import main

    assert main(["evaluate", str(student_run.checkpoint), "--data", str(sample_data), "--no-classifier",
                 "--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert "ground-truth PSNR" in out and "content SSIM" in out and "cycle-reconstruction" not in out
