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
    a = sorted((sample_data / "testA").iterdir())[:3]
    photos = torch.stack([quality.centre_tensor(p, config.data) for p in a])
    truth = torch.stack([quality.centre_tensor(sample_data / "testB" / p.name, config.data) for p in a])
    with torch.no_grad():
        fakes = g_ab(photos)
        cycle = float(quality.psnr(g_ba(fakes), photos).mean())
    gt = float(quality.psnr(fakes, truth).mean())
    assert ev.images == 3 and ev.step == ckpt.read_manifest(trained_checkpoint)["step"] == 150
    assert ev.paired and ev.split == "test"
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
    assert "held-out figures (3 test images, paired with ground truth)" in out
    assert "ground-truth PSNR, dB" in out and "content SSIM vs photo" in out
    assert "ground-truth PSNR gain over the photo itself: " in out
    assert "domain classifier: held-out accuracy" in out
    assert main(["evaluate", str(trained_checkpoint), "--data", str(sample_data), "--limit", "3",
                 "--json", "--no-classifier"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["classifier"] is None and "val_domain_score" not in figures["trained"]
    assert set(figures) >= {"identity", "untrained", "trained", "step", "paired"}
