import pytest

from raystyle import checkpoint as ckpt
from raystyle.config import Config
from raystyle.cyclegan import CycleGAN
from raystyle.evaluate import evaluate


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


def test_evaluate_untrained_checkpoint_matches_fresh_nets(tmp_path, sample_data):
    # A checkpoint of freshly initialised nets (same seed) must score exactly like fresh nets:
    # the "trained" column is computed from the checkpoint's weights, not from anything else.
    _save(tmp_path / "c")
    ev = evaluate(tmp_path / "c", sample_data, limit=3, grid=tmp_path / "g.png")
    assert ev.images == 3 and ev.step == 3
    assert ev.colour_distance_trained == pytest.approx(ev.colour_distance_init)
    assert ev.cycle_psnr_trained == pytest.approx(ev.cycle_psnr_init)
    assert ev.colour_distance_real_a > 0 and (tmp_path / "g.png").stat().st_size > 0
