"""Fast per-style networks (raystyle.methods.fast): the pure-torch method, its plan and bad input;
then a run on Ray Train (2 DDP workers, a worker killed mid-run, a rerun), export, Serve over
HTTP and the batch job with the trained net. Random features: nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from raystyle import checkpoint as ckpt
from raystyle import runlog
from raystyle.data.datasets import (
    EpochBatches,
    UnpairedDataset,
    check_photos,
    painterly,
    sample_photo_dir,
)
from raystyle.data.images import load_rgb
from raystyle.methods.fast import FastStyle, StyleImageError, plan
from tests.helpers import SMALL, png_bytes

# tiny: 32 px photos, a 4-channel transformer net with one block, random features to relu3_1
TINY = ["fast.features=random", "data.load_size=36", "data.crop_size=32", "data.loader_workers=0",
        "model.ngf=4", "model.n_blocks=1", "fast.style_layers=[relu1_1,relu2_1,relu3_1]",
        "fast.content_layers=[relu2_1]", "fast.style_size=64", "train.batch_size=2",
        "train.log_every=2", "train.checkpoint_every=2", "train.sample_every=2", "cluster.max_failures=1"]


@pytest.fixture(scope="module")
def painting(tmp_path_factory):
    path = tmp_path_factory.mktemp("painting") / "painting.png"
    painterly(load_rgb(sample_photo_dir() / "chelsea.png")).save(path)
    return path


def test_training_brings_the_photos_style_statistics_to_the_paintings(painting, sample_data):
    """Sixty steps on the sample photos: the Gram (style) loss falls well below its start,
    the content loss stays bounded, and the painting's targets come from the painting."""
    cfg, extra = plan(painting, overrides=TINY + ["train.batch_size=4"])
    assert cfg.method == "fast" and cfg.model.edge_kernel == 9 and cfg.model.upsample == "resize"
    assert extra["style"].dtype == torch.uint8 and min(extra["style"].shape[1:]) == 64
    torch.set_num_threads(2)
    model = FastStyle.from_config(cfg, torch.device("cpu"), 0, extra)
    photos = check_photos(sample_data, 32)
    assert len(photos.files) == len(list((sample_data / "trainA").iterdir()))  # a dataset: its trainA
    loader = iter(torch.utils.data.DataLoader(UnpairedDataset(photos.files, (), cfg.data),
                                              batch_sampler=EpochBatches(len(photos.files), 1, 0, 4, 0)))
    first = model.train_step(*next(loader))
    for _ in range(59):
        last = model.train_step(*next(loader))
    assert float(last["style"]) < 0.2 * float(first["style"])
    assert float(last["content"]) < 1.0
    grid = model.sample_rows()
    assert len(grid) == 1 and [t.shape[-2:] for t in grid[0]] == [torch.Size([32, 32])] * 3  # photo | stylized | style


def _photo_batches(sample_data, cfg, batch):
    photos = check_photos(sample_data, 32)
    return iter(torch.utils.data.DataLoader(UnpairedDataset(photos.files, (), cfg.data),
                                            batch_sampler=EpochBatches(len(photos.files), 1, 0, batch, 0)))


def test_the_content_normaliser_is_fixed_and_survives_a_resume(painting, sample_data, tmp_path, torch_one_thread):
    """The content term is divided by the first batch's feature energy, kept: the next batches'
    own energies differ (by a third here), so a per-batch normaliser changed the content weight
    every step. A checkpoint keeps it (train_state.pt), and a resumed model uses it."""
    from raystyle.core.perceptual import content_loss

    cfg, extra = plan(painting, overrides=TINY)
    model = FastStyle.from_config(cfg, torch.device("cpu"), 0, extra)
    assert model.content_norm is None
    loader = _photo_batches(sample_data, cfg, 2)
    model.train_step(*next(loader))
    fixed = dict(model.content_norm)
    assert set(fixed) == {"relu2_1"} and fixed["relu2_1"] > 0
    energies = []
    for _ in range(3):
        x, _ = next(loader)
        with torch.no_grad():
            y = model.g_ab(x)
            targets = {k: v.float() for k, v in model.features(x).items() if k in model.content_layers}
            got = model.losses(x, y)["content"]
            want = content_loss({k: v.float() for k, v in model.features(y).items() if k in targets}, targets, fixed)
        assert torch.allclose(got, want) and model.content_norm == fixed
        energies.append(float(targets["relu2_1"].pow(2).mean()))
        model.train_step(x, torch.empty(0))
    assert max(abs(e / fixed["relu2_1"] - 1) for e in energies) > 0.05, energies  # what the old way followed
    ckpt.save_shared(tmp_path / "ckpt", cfg, model.nets_state(), {**model.train_state(), "world_size": 1})
    _, nets, state = ckpt.load_shared(tmp_path / "ckpt")
    resumed = FastStyle.from_config(cfg, torch.device("cpu"), 0, extra)
    resumed.load(nets, state, None)
    assert resumed.content_norm == fixed
    resumed.train_step(*next(loader))
    assert resumed.content_norm == fixed
    older = FastStyle.from_config(cfg, torch.device("cpu"), 0, extra)  # a checkpoint from before: the next batch's
    older.load(nets, {k: v for k, v in state.items() if k != "content_norm"}, None)
    assert older.content_norm is None


def test_the_fast_presets_have_affine_instance_norms_and_old_configs_load(painting, tmp_path):
    """pytorch/examples' TransformerNet: InstanceNorm2d(affine=True) in the fast presets; CycleGAN's
    presets keep the paper's non-affine norms. A checkpoint written before the key existed (its
    config without model.norm_affine) builds its non-affine net and loads its weights."""
    import json

    from torch import nn

    from raystyle.config import Config, ConfigError, load_config
    from raystyle.core.nets import build_generator

    def norms(cfg):
        return [m for m in build_generator(cfg.model).modules() if isinstance(m, nn.InstanceNorm2d)]

    for preset in ("fast", "fast-small"):
        cfg = load_config(preset)
        assert cfg.model.norm_affine and norms(cfg) and all(m.affine for m in norms(cfg))
    for preset in ("paper", "cpu", "tiny"):
        cfg = load_config(preset)
        assert not cfg.model.norm_affine and norms(cfg) and not any(m.affine for m in norms(cfg))
    with pytest.raises(ConfigError, match="model.norm_affine is for model.norm: instance"):
        Config().replace(model={"norm": "batch", "norm_affine": True})
    cfg, extra = plan(painting, overrides=[*TINY, "model.norm_affine=false"])
    model = FastStyle.from_config(cfg, torch.device("cpu"), 0, extra)
    ckpt.save_shared(tmp_path / "old", cfg, model.nets_state(), {**model.train_state(), "world_size": 1})
    config_file = tmp_path / "old" / "config.json"
    data = json.loads(config_file.read_text())
    del data["model"]["norm_affine"]  # as written before the key existed
    config_file.write_text(json.dumps(data))
    manifest_file = tmp_path / "old" / ckpt.MANIFEST
    manifest = json.loads(manifest_file.read_text())
    manifest["files"]["config.json"] = config_file.stat().st_size
    manifest_file.write_text(json.dumps(manifest))
    old, nets = ckpt.load_nets(tmp_path / "old")
    assert old.model.norm_affine is False
    build_generator(old.model).load_state_dict(nets["g_ab"])  # strict: no missing affine weights


def test_plan_checks_the_painting_and_the_features_before_anything_runs(painting, tmp_path):
    from raystyle.config import ConfigError
    from raystyle.core.perceptual import FeatureError

    with pytest.raises(StyleImageError, match="does not exist"):
        plan(tmp_path / "missing.png", overrides=TINY)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(StyleImageError, match="broken.png"):
        plan(broken, overrides=TINY)
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 40), "red").save(small)
    with pytest.raises(StyleImageError, match="at least 32 px"):  # relu5_1 of the default style layers
        plan(small, overrides=["fast.features=random"])
    with pytest.raises(ConfigError, match="fast.style_weight"):
        plan(painting, overrides=TINY + ["fast.style_weight=0"])
    with pytest.raises(FeatureError):  # a VGG file that is not there: one line, no download attempted
        plan(painting, overrides=["fast.features=vgg16", f"fast.vgg_weights={tmp_path / 'vgg16-00000000.pth'}"])


def test_cli_bad_input_is_one_line_and_writes_nothing(painting, sample_data, tmp_path, capsys):
    from raystyle.cli.main import main

    storage = tmp_path / "runs"
    cases = [
        (["--method", "fast"], "--style-image"),
        (["--method", "fast", "--style-image", str(tmp_path / "nope.jpg")], "does not exist"),
        (["--style-image", str(painting)], None),  # --style-image without --method fast: a CycleGAN refuses it
        (["--method", "fast", "--style-image", str(painting), "--features", "random", "--vgg-weights", "x.pth"],
         "random features need no file"),
    ]
    for extra, message in cases:
        code = main(["train", "--data", str(sample_data), "--style", "bad", "--storage", str(storage), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("raystyle: error:") and "\n" not in err, err
        assert message is None or message in err, err
    assert not storage.exists()


# ---------------------------------------------------------------------------------------
# On Ray


@pytest.fixture(scope="module")
def straight_run(ray_session, painting, sample_data, tmp_path_factory):
    """Six steps on 2 workers, straight through (a worker's death and restart are method-agnostic:
    test_train.py and test_distill_ray.py kill one)."""
    from raystyle.train.loop import fit

    cfg, extra = plan(painting, overrides=TINY, settings={
        "cluster": {"workers": 2, "storage": str(tmp_path_factory.mktemp("fast_runs"))},
        "train": {"max_steps": 6}})
    return fit(cfg, sample_data, "fastnet", verbose=False, extra=extra)


@pytest.mark.slow  # Ray Train runs (in-process fast tests above are default)
def test_two_workers_train_equal_nets_and_resume_exactly(straight_run, painting, sample_data, tmp_path, capsys):
    from raystyle.cli.main import main

    run = straight_run.run_dir
    assert straight_run.step == 6
    assert ckpt.read_manifest(straight_run.checkpoint)["method"] == "fast"
    ranks = [ckpt.load_rank(straight_run.checkpoint, r)["fingerprints"] for r in (0, 1)]
    assert list(ranks[0]) == ["g_ab"] and ranks[0]["g_ab"] == pytest.approx(ranks[1]["g_ab"], rel=1e-6, abs=1e-7)
    config, nets = ckpt.load_nets(straight_run.checkpoint)
    assert sorted(nets) == ["g_ab", "style_image"] and nets["style_image"].dtype == torch.uint8
    assert config.fast.style_image == str(painting)
    records = runlog.read_metrics(run)
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all({"total", "content", "style", "tv"} <= set(r) for r in records)
    assert [p.name for p in runlog.list_samples(run)] == ["step_00000002.png", "step_00000004.png",
                                                          "step_00000006.png"]

    # the CLI, stopped at step 4 and run again to 6: the same weights and optimiser state, bit for bit
    sets = [a for item in TINY for a in ("--set", item)]
    argv = ["train", "--method", "fast", "--data", str(sample_data), "--style-image", str(painting),
            "--style", "fastnet", "--workers", "2", "--storage", str(tmp_path), *sets]
    assert main([*argv, "--max-steps", "4"]) == 0
    assert main([*argv, "--max-steps", "6"]) == 0
    out = capsys.readouterr().out
    n = len(list((sample_data / "trainA").iterdir()))
    assert "resumed from step 4" in out and f"training 'fastnet': {n} photos" in out
    again = ckpt.latest_checkpoint(tmp_path / "fastnet")
    _, nets_b, state_b = ckpt.load_shared(again)
    _, nets_a, state_a = ckpt.load_shared(straight_run.checkpoint)
    for k, v in nets_a["g_ab"].items():
        assert torch.equal(v, nets_b["g_ab"][k]), k
    assert state_a["step"] == state_b["step"] == 6
    assert state_a["content_norm"] == state_b["content_norm"] is not None  # kept across the resume
    moments_a = [s["exp_avg"] for s in state_a["opt_g"]["state"].values()]
    moments_b = [s["exp_avg"] for s in state_b["opt_g"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(moments_a, moments_b, strict=True))

    # the same painting from another folder resumes (files compare by hash); another one is refused
    from raystyle.train.loop import check_compatible, run_location

    moved = tmp_path / "moved" / "copy.png"
    moved.parent.mkdir()
    moved.write_bytes(painting.read_bytes())
    cfg_moved, _ = plan(moved, overrides=TINY, settings={"cluster": {"workers": 2, "storage": str(tmp_path)}})
    check_compatible(run_location(cfg_moved, "fastnet"), cfg_moved)
    other = tmp_path / "other.png"
    painterly(load_rgb(sample_photo_dir() / "coffee.png")).save(other)
    assert main([*argv[:6], str(other), *argv[7:], "--max-steps", "8"]) == 2
    assert "different fast config" in capsys.readouterr().err


@pytest.fixture(scope="module")
def models(straight_run, tmp_path_factory):
    from raystyle.cli.main import main

    root = tmp_path_factory.mktemp("fast_models")
    assert main(["export", str(straight_run.run_dir), "--style", "fastnet", "--models-dir", str(root),
                 "--precision", "int8", "--best", "total"]) == 0
    return root


@pytest.mark.slow  # needs the Ray Train run and a Serve app of its own
def test_export_records_the_painting_and_serves_over_http(serve_url, models, straight_run, painting, capsys):
    from ray import serve

    from raystyle.data.images import decode
    from raystyle.infer.generator import Stylizer
    from raystyle.registry import get_style
    from raystyle.serve import client
    from raystyle.serve.app import app_builder
    from raystyle.util.storage import sha256_file


    style = get_style("fastnet", models)
    meta = style.meta
    assert meta["method"] == "fast" and meta["architecture"]["edge_kernel"] == 9
    lowest = min(runlog.read_metrics(straight_run.run_dir), key=lambda r: r["total"])
    assert meta["training"]["step"] == lowest["step"]  # --best total: the lowest loss
    rec = meta["style_image"]
    assert rec["sha256"] == sha256_file(painting) and rec["file"] == str(painting)
    assert rec["features"] == "random" and rec["style_layers"] == ["relu1_1", "relu2_1", "relu3_1"]
    thumb = Image.open(style.path / rec["thumbnail"])
    assert max(thumb.size) == 128
    assert meta["precisions"]["int8"]["validated"] is True and meta["precisions"]["fp32"]["tiled_psnr_db"] >= 60

    assert __import__("raystyle.cli.main", fromlist=["main"]).main(["styles", "--models-dir", str(models)]) == 0
    assert "fast style net of" in capsys.readouterr().out

    image = np.asarray(load_rgb(sample_photo_dir() / "astronaut.png").resize((96, 64)))
    local = Stylizer(style, provider="cpu").stylize(image)
    try:
        serve.run(app_builder({"models_dir": str(models), "provider": "cpu", "ingress": SMALL,
                               "deployment": {**SMALL, "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}}),
                  name="fast", route_prefix="/")
        png, _ = client.stylize(serve_url, "fastnet", png_bytes(image))
        served = np.asarray(decode(png))
        assert served.shape == image.shape and np.abs(served.astype(int) - local.astype(int)).max() <= 1
    finally:
        serve.delete("fast")


@pytest.mark.slow  # needs the Ray Train run
def test_the_batch_job_stylizes_a_folder_with_the_fast_net(models, tmp_path):
    from raystyle.batch.images import run_batch
    from raystyle.infer.generator import Stylizer

    photos = tmp_path / "in"
    photos.mkdir()
    for name in ("coffee.png", "rocket.jpg"):
        load_rgb(sample_photo_dir() / name).resize((64, 48)).save(photos / f"{name.split('.')[0]}.png")
    result = run_batch(photos, tmp_path / "out", "fastnet", models_dir=models, workers=1, echo=None)
    assert (result.stylized, result.errors) == (2, [])
    want = Stylizer("fastnet", models_dir=models, provider="cpu").stylize(np.asarray(load_rgb(photos / "coffee.png")))
    got = np.asarray(load_rgb(tmp_path / "out" / "coffee.png"))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert (tmp_path / "out" / "_errors.jsonl").read_text() == ""


def test_the_monitor_names_a_fast_runs_sample_columns_and_charts_its_losses():
    from raystyle.monitor.snapshot import LOSS_KEYS, sample_layout

    record = {"step": 2, "total": 1.0, "content": 0.5, "style": 0.1, "tv": 0.2}
    assert sample_layout([record]) == "columns: photo | stylized | style image"
    assert {"total", "content", "style", "tv"} <= set(LOSS_KEYS)


@pytest.mark.parametrize("preset, gmacs, params", [("fast", 10.08, 1.679), ("fast-small", 2.17, 0.277)])
def test_the_presets_cost_what_the_readme_says(preset, gmacs, params):
    """README: `fast` is Johnson et al.'s net (10.08 GMACs at 256 px), `fast-small` 2.17."""
    from raystyle.config import load_config
    from raystyle.core.macs import count_macs, count_params
    from raystyle.core.nets import build_generator

    cfg = load_config(preset)
    assert cfg.method == "fast" and cfg.fast.features == "vgg16" and cfg.model.edge_kernel == 9
    gen = build_generator(cfg.model)
    assert round(count_macs(gen, 256) / 1e9, 2) == gmacs
    assert round(count_params(gen) / 1e6, 3) == params


def test_bf16_autocast_keeps_the_grams_in_fp32(painting, sample_data):
    """AMP (train.amp bf16 here on the CPU; fp16 on CUDA) runs the nets in low precision but the
    Grams in fp32: an fp16 Gram of a 256 px relu1_1 overflows to inf and no step would train."""
    from raystyle.core.perceptual import gram

    cfg, extra = plan(painting, overrides=TINY + ["train.amp=bf16"])
    model = FastStyle.from_config(cfg, torch.device("cpu"), 0, extra)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    losses = model.train_step(x, torch.zeros(0))
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = gram(torch.full((1, 64, 256, 256), 30.0, dtype=torch.bfloat16))
    assert g.dtype == torch.float32 and torch.isfinite(g).all()


def test_vgg_features_from_a_file_train_and_their_hash_is_the_runs(painting, tmp_path):
    """The VGG path of a fast run (VGG-16, Johnson et al.'s layers) with a weights file written
    here: random values in torchvision's layout; the file's hash goes into the run's config."""
    import hashlib

    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    weights = tmp_path / "vgg16_random.pth"
    torch.save(make_layers(cfgs["D"]).state_dict(), weights)
    sets = [s for s in TINY if not s.startswith(("fast.features", "fast.style_layers", "fast.content_layers"))]
    cfg, extra = plan(painting, overrides=[*sets, "fast.features=vgg16", f"fast.vgg_weights={weights}"])
    assert cfg.fast.features_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    assert extra["features"] is not None and "0.weight" in extra["features"]
    model = FastStyle.from_config(cfg, torch.device("cpu"), 0, extra)
    assert model.style_layers == ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
    losses = [model.train_step(torch.rand(2, 3, 32, 32) * 2 - 1, torch.zeros(0)) for _ in range(2)]
    assert all(torch.isfinite(v) for step in losses for v in step.values())


def test_settings_a_fast_run_would_ignore_are_refused(painting):
    from raystyle.config import ConfigError

    for item in ("train.ema=0.99", "train.channels_last=true", "train.best_metric=val_gt_psnr"):
        with pytest.raises(ConfigError, match="not used by a fast run"):
            plan(painting, overrides=[*TINY, item])
    with pytest.raises(ConfigError, match="fast.style_size 8 is below the 8 px|fast.style_size 8"):
        plan(painting, overrides=[*TINY[:6], "fast.style_size=8", "fast.style_layers=[relu1_1,relu4_1]"])
