from pathlib import Path

import pytest

from raystyle import checkpoint as ckpt
from raystyle.config import Config
from raystyle.methods.cyclegan import CycleGAN
from raystyle.train.evaluate import evaluate


def _save(directory, step=3, config=None):
    cfg = config or Config().replace(model={"ngf": 4, "ndf": 4, "n_blocks": 1})
    m = CycleGAN(cfg.model, cfg.loss, cfg.train)
    m.step = step
    ckpt.save_shared(directory, cfg, m.nets_state(), {**m.train_state(), "world_size": 1})
    ckpt.save_rank(directory, 0, m.rank_state())
    return cfg


def test_round_trip(tmp_path):
    cfg = _save(tmp_path / "checkpoint_00000003")
    config, nets, state = ckpt.load_shared(tmp_path / "checkpoint_00000003")
    assert config == cfg and state["step"] == 3 and set(nets) == {"g_ab", "g_ba", "d_a", "d_b"}
    assert ckpt.load_rank(tmp_path / "checkpoint_00000003", 0)["pool_a"]["images"] == []
    assert ckpt.load_rank(tmp_path / "checkpoint_00000003", 5) is None


def test_incomplete_checkpoints_are_never_loaded(tmp_path):
    for step in (2, 4, 6):
        _save(tmp_path / ckpt.checkpoint_name(step), step)
    nets = tmp_path / "checkpoint_00000006" / "nets.pt"
    nets.write_bytes(nets.read_bytes()[:100])  # a crash mid-copy
    (tmp_path / "checkpoint_00000004" / ckpt.MANIFEST).unlink()  # a crash before the manifest
    (tmp_path / "checkpoint_00000009").mkdir()  # an empty leftover
    with pytest.raises(ckpt.CheckpointError, match="nets.pt is missing or truncated"):
        ckpt.load_shared(tmp_path / "checkpoint_00000006")
    with pytest.raises(ckpt.CheckpointError, match="no manifest.json"):
        ckpt.load_shared(tmp_path / "checkpoint_00000004")
    assert ckpt.list_checkpoints(tmp_path) == [tmp_path / "checkpoint_00000002"]
    assert ckpt.resolve(tmp_path) == tmp_path / "checkpoint_00000002"


def test_truncated_rank_file_costs_only_exactness(tmp_path):
    _save(tmp_path)
    (tmp_path / "rank_0.pt").write_bytes(b"garbage")
    assert ckpt.load_rank(tmp_path, 0) is None


def test_resolve_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="neither a checkpoint nor a run directory"):
        ckpt.resolve(tmp_path)


def test_evaluate_scores_the_checkpoints_own_weights(trained_checkpoint, sample_data, tmp_path):
    """The "trained" figures come from the checkpoint's weights (computed here independently
    from nets.pt), the "untrained" ones from fresh nets, and the two differ: an evaluate that
    scored fresh nets twice, or ignored the checkpoint, fails. The sample data's test split is
    paired, so the ground-truth PSNR and its gain over the photo are reported."""
    import torch

    from raystyle.core.nets import build_generator
    from raystyle.methods import quality

    ev = evaluate(trained_checkpoint, sample_data, limit=3, grid=tmp_path / "g.png")
    config, nets, _ = ckpt.load_shared(trained_checkpoint)
    g_ab, g_ba = build_generator(config.model).eval(), build_generator(config.model).eval()
    g_ab.load_state_dict(nets["g_ab"])
    g_ba.load_state_dict(nets["g_ba"])
    split = quality.split_dataset(sample_data, config.data.crop_size, config.train.val_holdout)
    a = [Path(f) for f in split.part("report")[0][:3]]  # evaluate reports on the reporting split
    photos = torch.stack([quality.centre_tensor(p, config.data) for p in a])
    truth = torch.stack([quality.centre_tensor(sample_data / "testB" / p.name, config.data) for p in a])
    with torch.no_grad():
        fakes = g_ab(photos)
        cycle = float(quality.psnr(g_ba(fakes), photos).mean())
    gt = float(quality.psnr(fakes, truth).mean())
    assert ev.images == 3 and ev.step == ckpt.read_manifest(trained_checkpoint)["step"] == 150
    assert ev.paired and ev.split == "report" and ev.source == "test"
    assert ev.trained["val_cycle_psnr"] == pytest.approx(cycle, abs=1e-3)
    assert ev.trained["val_gt_psnr"] == pytest.approx(gt, abs=1e-3)
    identity = float(quality.psnr(photos, truth).mean())
    assert ev.identity["val_gt_psnr"] == pytest.approx(identity, abs=1e-3)
    assert ev.trained["val_gt_gain_db"] == pytest.approx(gt - identity, abs=2e-3)
    assert ev.identity["val_content_ssim"] == pytest.approx(1.0)
    assert abs(ev.trained["val_cycle_psnr"] - ev.untrained["val_cycle_psnr"]) > 1.0, "trained and fresh nets differ"
    assert (tmp_path / "g.png").stat().st_size > 0


def test_evaluate_command_prints_the_figures_side_by_side(trained_checkpoint, sample_data, capsys):
    import json

    from raystyle.cli.main import main

    assert main(["evaluate", str(trained_checkpoint), "--data", str(sample_data), "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "held-out figures (3 images of the report split of test, paired with ground truth" in out
    assert "ground-truth PSNR, dB" in out and "content SSIM vs photo" in out
    assert "ground-truth PSNR gain over the photo itself: " in out
    assert "domain classifier: held-out accuracy" in out
    assert main(["evaluate", str(trained_checkpoint), "--data", str(sample_data), "--limit", "3",
                 "--json", "--no-classifier"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["classifier"] is None and "val_domain_score" not in figures["trained"]
    assert set(figures) >= {"identity", "untrained", "trained", "step", "paired", "baseline"}


def test_evaluate_shows_the_colour_map_baseline_and_realism_on_pretrained_features(trained_checkpoint, sample_data,
                                                                                   capsys):
    """Every evaluation has the colour-transfer baseline beside the photo and the model, with
    KID/FID-EL0; the baseline is the photo histogram-matched to B: closer to B's colours than
    the photo, with the photo's structure."""
    from raystyle.cli.main import main

    ev = evaluate(trained_checkpoint, sample_data, limit=7, classifier=False)
    for figures in (ev.identity, ev.baseline, ev.untrained, ev.trained):
        assert {"val_kid_el0", "val_kid_el0_se", "val_fid_el0"} <= set(figures)
    assert ev.baseline["val_colour_distance"] < ev.identity["val_colour_distance"] / 2
    assert ev.baseline["val_content_ssim"] > 0.5
    assert main(["evaluate", str(trained_checkpoint), "--data", str(sample_data), "--limit", "3",
                 "--no-classifier"]) == 0
    out = capsys.readouterr().out
    assert "colour map" in out and "KID-EL0" in out and "not Inception's FID" in out


def test_evaluating_a_run_reports_its_best_checkpoint_beside_its_last(trained_checkpoint, sample_data, tmp_path):
    """A run dir -> the checkpoint its validation ranked best and, beside it, the last one."""
    import shutil

    from raystyle import runlog

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(trained_checkpoint, run / ckpt.checkpoint_name(150))
    config, _, _ = ckpt.load_shared(trained_checkpoint)
    _save(run / ckpt.checkpoint_name(300), 300, config)  # later, but untrained: worse
    runlog.write_validation(run, {"best_metric": "val_gt_psnr"})
    runlog.append_metrics(run, {"step": 150, "val_gt_psnr": 20.0})
    runlog.append_metrics(run, {"step": 300, "val_gt_psnr": 10.0})
    ev = evaluate(run, sample_data, limit=3, classifier=False)
    assert ev.step == 150 and ev.last_step == 300
    assert ev.last["val_gt_psnr"] < ev.trained["val_gt_psnr"]
    alone = evaluate(run / ckpt.checkpoint_name(300), sample_data, limit=3, classifier=False)
    assert alone.last is None and alone.step == 300  # the last one itself: nothing beside it
    first = evaluate(run / ckpt.checkpoint_name(150), sample_data, limit=3, classifier=False, last=True)
    assert first.last_step == 300
