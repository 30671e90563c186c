"""Exact tiling: the receptive radius, streamed InstanceNorm statistics, tiles == whole image."""

import numpy as np
import pytest
import torch
from PIL import Image

from raystyle.config import ModelConfig
from raystyle.core.nets import build_generator
from raystyle.core.tiling import (
    StatsModel,
    SumsModel,
    TileModel,
    halo_for,
    norm_layout,
    receptive_radius,
)
from raystyle.data.datasets import sample_photo_dir
from raystyle.data.images import decode
from raystyle.infer.base import StylizeError, make_session
from raystyle.infer.generator import Stylizer
from raystyle.infer.tiles import TilePlan, combine, tile_boxes, to_input, to_uint8


def _psnr(a, b):
    mse = ((a.astype(float) - b.astype(float)) ** 2).mean()
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("upsample", ["deconv", "resize"])
def test_receptive_radius_is_a_tight_bound(upsample):
    torch.manual_seed(0)
    gen = build_generator(ModelConfig(ngf=8, n_blocks=2, upsample=upsample)).eval()
    radius = receptive_radius(gen)
    stats_model, tile_model = StatsModel(gen), TileModel(gen)
    x = torch.rand(1, 3, 192, 192) * 2 - 1
    reach = 0
    with torch.no_grad():
        stats = stats_model(x)  # fixed statistics: the generator is a local operator
        y = tile_model(x, stats)
        for py, px in [(96, 96), (97, 98), (98, 99), (99, 97)]:  # every phase of the stride-4 grid
            x2 = x.clone()
            x2[..., py, px] += 1.0
            changed = torch.nonzero((tile_model(x2, stats) - y).abs().amax(1)[0] > 0)
            reach = max(reach, int((changed - torch.tensor([py, px])).abs().max()))
    assert reach <= radius, "an output pixel reaches farther than the bound: tiles would not be exact"
    assert reach >= radius - 1, f"bound {radius} is loose (observed {reach}): halos cost more than needed"
    # The paper's ResNet-9: 3 + 1 + 2 + 18 * 4 + 2 + 1 + 3 px to the left (deconv), tight by the same test.
    assert receptive_radius(build_generator(ModelConfig())) == 84 and halo_for(gen) % 4 == 0


def test_tile_boxes_partition_the_image_on_the_grid():
    boxes = tile_boxes(1000, 1400, 256, 32)
    cover = np.zeros((1000, 1400), int)
    for (r0, r1, c0, c1), (t0, t1, l0, l1) in boxes:
        cover[r0:r1, c0:c1] += 1
        assert max(r1 - r0, c1 - c0) <= 256 and all(v % 4 == 0 for v in (r0, r1, c0, c1, t0, t1, l0, l1))
        assert t0 == max(0, r0 - 32) and t1 == min(1000, r1 + 32) and l0 == max(0, c0 - 32)
    assert (cover == 1).all()


def test_sums_of_tiles_are_the_whole_image_statistics():
    """SumsModel over cores + halo, given the exact statistics, gives them back (torch, float64)."""
    torch.manual_seed(0)
    gen = build_generator(ModelConfig(ngf=8, n_blocks=1)).eval()
    layout, halo = norm_layout(gen), halo_for(gen)
    a = np.asarray(decode(sample_photo_dir() / "astronaut.png").resize((200, 152)))
    plan = TilePlan(a.shape, 64, halo)
    exact = StatsModel(gen)(torch.from_numpy(to_input(a[None]))).detach().double()
    for start in (exact, exact * 0.9):  # the exact stats are a fixed point; others move
        sums = np.zeros(exact.shape[1])
        for core, window in plan.boxes:
            x, mask = torch.from_numpy(plan.window(a, window)), torch.from_numpy(plan.mask(core, window))
            with torch.no_grad():
                sums += SumsModel(gen)(x, start.float(), mask)[0].numpy()
        new = combine(start.numpy(), sums, layout, plan.height, plan.width)
        if start is exact:
            np.testing.assert_allclose(new, exact.numpy(), rtol=1e-4, atol=1e-6)
        else:
            assert np.abs(new - exact.numpy()).max() > 1e-2
    first = slice(0, 2 * layout[0][0])  # the first norm's input needs no statistics: exact at once
    np.testing.assert_allclose(new[0, first], exact.numpy()[0, first], rtol=1e-4, atol=1e-6)


def test_affine_instance_norms_tile_exactly():
    """model.norm_affine (the fast presets' TransformerNet norms): the tiling graphs apply each
    norm's scale and shift, so tiles with the whole image's statistics equal the whole pass and
    the streamed sums give those statistics back."""
    torch.manual_seed(0)
    gen = build_generator(ModelConfig(ngf=8, n_blocks=1, norm_affine=True, edge_kernel=9, upsample="resize")).eval()
    for m in gen.modules():  # away from their start (1, 0), which would hide a missing scale or shift
        if isinstance(m, torch.nn.InstanceNorm2d):
            torch.nn.init.normal_(m.weight, 1.0, 0.5)
            torch.nn.init.normal_(m.bias, 0.0, 0.5)
    a = np.asarray(decode(sample_photo_dir() / "astronaut.png").resize((200, 152)))
    x = torch.from_numpy(to_input(a[None]))
    tile_model, sums_model = TileModel(gen), SumsModel(gen)
    with torch.no_grad():
        whole, stats = gen(x), StatsModel(gen)(x)
        assert torch.allclose(tile_model(x, stats), whole, atol=1e-5)
        plan = TilePlan(a.shape, 64, halo_for(gen))
        out = plan.assemble(a, lambda w, _: tile_model(torch.from_numpy(w), stats).numpy())
        sums = sum(sums_model(torch.from_numpy(plan.window(a, window)), stats,
                              torch.from_numpy(plan.mask(core, window)))[0].numpy() for core, window in plan.boxes)
    ref = to_uint8(whole.numpy(), *a.shape[:2])[0]
    assert ref.std() > 10 and _psnr(out, ref) >= 60.0
    exact = stats.double().numpy()
    np.testing.assert_allclose(combine(exact, sums, norm_layout(gen), plan.height, plan.width), exact,
                               rtol=1e-4, atol=1e-6)


# -- through the exported style (ONNX Runtime) ------------------------------------------------

TILE = 256


@pytest.fixture(scope="module")
def big():
    """1100x720, over the tile and over the Stylizer's 1024 px statistics limit, with 1-px
    stripes on the left half: fine texture that a downscaled copy averages away."""
    img = np.asarray(decode(sample_photo_dir() / "coffee.png").resize((1100, 720), Image.BICUBIC)).astype(int)
    img[:, :550] += 24 * ((np.arange(550)[None, :, None] % 2) * 2 - 1)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def whole(exported, big):
    """The untiled result: model.onnx on the whole image at once."""
    y = make_session(exported.file("fp32"), "cpu", 2).run(None, {"image": to_input(big[None])})[0]
    return to_uint8(y, *big.shape[:2])[0]


def _seams(out, whole, plan):
    """(max, mean) |out - whole| within 2 px of the cores' edges, and (max, mean) elsewhere."""
    err = np.abs(out.astype(int) - whole.astype(int)).max(axis=2)
    edge = np.zeros(err.shape, bool)
    for r0, r1, c0, c1 in {core for core, _ in plan.boxes}:
        for r in (r0, r1):
            edge[max(r - 2, 0) : r + 2, c0:c1] = True
        for c in (c0, c1):
            edge[r0:r1, max(c - 2, 0) : c + 2] = True
    return err[edge].max(), err[edge].mean(), err[~edge].max(), err[~edge].mean()


def test_large_image_tiles_equal_the_whole_image(exported, big, whole):
    s = Stylizer("tiny", models_dir=exported.path.parent, threads=2, tile=TILE)
    out = s.stylize(big)
    assert out.shape == big.shape
    assert _psnr(out, whole) >= 40.0
    norms = len(exported.meta["tiling"]["norms"])
    assert 1 <= s.last_stats_passes <= norms  # the estimate was refined, at most one pass per norm
    edge_max, edge_mean, rest_max, rest_mean = _seams(out, whole, TilePlan(big.shape, TILE, s.halo))
    assert edge_max <= 2 and edge_mean <= rest_mean + 0.05, (edge_max, edge_mean, rest_max, rest_mean)


def test_downscaled_statistics_alone_fail_the_bar(exported, big, whole):
    """The old way (statistics of a copy downscaled to 1024 px, no refinement) is far off."""
    s = Stylizer("tiny", models_dir=exported.path.parent, threads=2, tile=TILE, stats_passes=0)
    db = _psnr(s.stylize(big), whole)
    assert s.last_stats_passes == 0
    assert db < 40.0, f"{db:.1f} dB: this image no longer shows what the streaming passes fix"


def test_halo_below_the_receptive_radius_shows_seams(exported, big, whole):
    s = Stylizer("tiny", models_dir=exported.path.parent, threads=2, tile=TILE, stats_passes=0)
    small = Stylizer("tiny", models_dir=exported.path.parent, threads=2, tile=TILE, stats_passes=0)
    small.halo = 8  # what the seam check must catch
    crop = big[:, 550:]  # the smooth half: statistics alone are fine here, only the halo differs
    ref = to_uint8(s.session.run(None, {"image": to_input(crop[None])})[0], *crop.shape[:2])[0]
    edge_max, edge_mean, _, rest_mean = _seams(small.stylize(crop), ref, TilePlan(crop.shape, TILE, 8))
    assert edge_max > 2 or edge_mean > rest_mean + 0.05
    assert _psnr(s.stylize(crop), ref) >= 40.0  # with the full halo, exact


def test_model_path_and_legacy_entries_refuse_to_tile_without_a_halo(exported, big):
    s = Stylizer(model_path=exported.file("fp32"), tile=TILE)
    with pytest.raises(StylizeError, match="model_path Stylizer needs halo="):
        s.stylize(big[:300, :300])
    legacy = Stylizer("tiny", models_dir=exported.path.parent, tile=TILE)
    legacy._legacy_tiling = True  # an entry exported before exact tiling (no sums.onnx / halo)
    with pytest.raises(StylizeError, match="exported without exact-tiling data"):
        legacy.stylize(big[:300, :300])


def test_generator_without_instancenorm_tiles_exactly(tmp_path, big):
    """norm=none: no tiling graphs, the plain model runs cores + halo, still equal to the whole."""
    from raystyle import checkpoint as ckpt
    from raystyle.config import Config
    from raystyle.export import export_style
    from raystyle.methods.cyclegan import CycleGAN

    cfg = Config().replace(model={"ngf": 4, "ndf": 4, "n_blocks": 1, "norm": "none"},
                           data={"load_size": 36, "crop_size": 32})
    torch.manual_seed(0)
    model = CycleGAN(cfg.model, cfg.loss, cfg.train)
    for m in model.g_ab.modules():  # He init: without norms, N(0, 0.02) fades to flat grey
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    ckpt.save_shared(tmp_path / "ckpt", cfg, model.nets_state(), {**model.train_state(), "world_size": 1})
    style = export_style(tmp_path / "ckpt", "plain", models_dir=tmp_path / "models")
    assert "tile" not in style.meta["precisions"]["fp32"] and style.meta["tiling"]["halo"] == 20
    s = Stylizer("plain", models_dir=tmp_path / "models", threads=2, tile=TILE)
    crop = big[:400, :700]
    ref = to_uint8(s.session.run(None, {"image": to_input(crop[None])})[0], *crop.shape[:2])[0]
    assert ref.std() > 10, "a flat output would pass anything"
    assert _psnr(s.stylize(crop), ref) >= 60.0
    s.halo = 0  # the same cores without their halo: the test sees the difference
    assert _psnr(s.stylize(crop), ref) < 50.0
