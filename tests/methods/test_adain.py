"""Arbitrary style transfer (raystyle.methods.adain, raystyle.infer.arbitrary, raystyle.export.arbitrary): the AdaIN
layer, the decoder's training, its plan and bad input; a run on Ray Train (2 DDP workers, resumed),
the export's graphs and gates, exact tiles, style blending and the CLI. Random features: nothing
is downloaded. Serve and the batch job: test_serve_arbitrary.py, test_batch_arbitrary.py."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from raystyle import checkpoint as ckpt
from raystyle import runlog
from raystyle.data.datasets import EpochBatches, UnpairedDataset, check_dataset, sample_photo_dir
from raystyle.data.images import load_rgb
from raystyle.methods.adain import AdaINMethod, adain, mean_std, plan
from tests.conftest import ADAIN_TINY, one_torch_thread

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny nets: see conftest.one_torch_thread


def test_the_adain_layer_gives_each_channel_the_styles_mean_and_std():
    torch.manual_seed(0)
    content = torch.randn(2, 16, 9, 13) * 3 + 2
    style = torch.randn(2, 16, 7, 5) * torch.rand(1, 16, 1, 1) * 4 - 1
    sm, ss = mean_std(style)
    out = adain(content, sm, ss)
    om, os_ = mean_std(out)
    assert torch.allclose(om, sm, atol=1e-5) and torch.allclose(os_, ss, rtol=1e-3, atol=1e-4)
    # the content's spatial pattern is kept: per channel, an increasing affine map of it
    flat_c, flat_o = content[0, 3].flatten(), out[0, 3].flatten()
    assert torch.equal(flat_c.argsort(), flat_o.argsort())
    assert torch.allclose(adain(content, sm, ss, alpha=0.0), content)  # alpha 0: the content itself


def test_training_lowers_the_losses(sample_data):
    """Sixty steps on the sample photos (trainA) and paintings (trainB): the loss of the last 20
    steps is well below that of the first 10 (measured: 1.28 -> 0.85; style 0.71 -> 0.55, content
    0.57 -> 0.30); the grid is photo | stylized | painting."""
    cfg, extra = plan(overrides=ADAIN_TINY)
    assert cfg.method == "adain" and extra["features"] is None
    a, b = check_dataset(sample_data, 32)
    loader = iter(torch.utils.data.DataLoader(UnpairedDataset(a.files, b.files, cfg.data),
                                              batch_sampler=EpochBatches(len(a.files), 1, 0, 2, 0)))
    torch.manual_seed(0)
    model = AdaINMethod.from_config(cfg, torch.device("cpu"), 0, extra)
    losses = [model.train_step(*next(loader)) for _ in range(60)]
    total = [float(x["total"]) for x in losses]
    assert np.mean(total[-20:]) < 0.8 * np.mean(total[:10])
    assert np.mean([float(x["style"]) for x in losses[-20:]]) < np.mean([float(x["style"]) for x in losses[:10]])
    grid = model.sample_rows()
    assert len(grid) == 1 and [t.shape[-2:] for t in grid[0]] == [torch.Size([32, 32])] * 3
    assert sorted(model.nets_state()) == ["decoder", "encoder"]


def test_the_content_normaliser_is_fixed_and_survives_a_resume(sample_data, tmp_path):
    """|t|^2 of the first batch's AdaIN targets divides the content term from then on (each
    batch's own, which follows its paintings, changed the content weight every step); the
    checkpoint keeps it and a resumed model uses it."""
    from raystyle.methods.adain import CODE

    cfg, extra = plan(overrides=ADAIN_TINY)
    a, b = check_dataset(sample_data, 32)
    loader = iter(torch.utils.data.DataLoader(UnpairedDataset(a.files, b.files, cfg.data),
                                              batch_sampler=EpochBatches(len(a.files), 1, 0, 2, 0)))
    model = AdaINMethod.from_config(cfg, torch.device("cpu"), 0, extra)
    model.train_step(*next(loader))
    fixed = dict(model.content_norm)
    assert set(fixed) == {CODE} and fixed[CODE] > 0
    energies = []
    for _ in range(3):
        c, s = next(loader)
        with torch.no_grad():
            code, feats = model.encoder(c)[CODE], model.encoder(s)
            t = adain(code, *mean_std(feats[CODE]))
            y = model.decoder(t)
            got = model.losses(t, feats, y)["content"]
            want = ((model.encoder(y)[CODE] - t) ** 2).mean() / (fixed[CODE] + 1e-5)
        assert torch.allclose(got, want) and model.content_norm == fixed
        energies.append(float((t ** 2).mean()))
        model.train_step(c, s)
    assert max(abs(e / fixed[CODE] - 1) for e in energies) > 0.05, energies  # what the old way followed
    ckpt.save_shared(tmp_path / "ckpt", cfg, model.nets_state(), {**model.train_state(), "world_size": 1})
    _, nets, state = ckpt.load_shared(tmp_path / "ckpt")
    resumed = AdaINMethod.from_config(cfg, torch.device("cpu"), 0, extra)
    resumed.load(nets, state, None)
    resumed.train_step(*next(loader))
    assert resumed.content_norm == fixed


def test_plan_checks_the_config_and_the_features_before_anything_runs(tmp_path):
    from raystyle.config import ConfigError
    from raystyle.core.perceptual import FeatureError

    with pytest.raises(ConfigError, match="at least the 16 px"):
        plan(overrides=[*ADAIN_TINY, "data.load_size=12", "data.crop_size=8"])
    with pytest.raises(ConfigError, match="multiple of 8"):  # relu4_1 would floor it: outputs smaller than photos
        plan(overrides=[*ADAIN_TINY, "data.crop_size=36"])
    with pytest.raises(ConfigError, match="adain.style_size"):
        plan(overrides=[*ADAIN_TINY, "adain.style_size=60"])
    with pytest.raises(ConfigError, match="not used by an adain run"):
        plan(overrides=[*ADAIN_TINY, "train.ema=0.99"])
    with pytest.raises(ConfigError, match="random features need no file"):
        plan(overrides=[*ADAIN_TINY, "adain.vgg_weights=x.pth"])
    with pytest.raises(FeatureError):  # a VGG file that is not there: one line, no download attempted
        plan(overrides=[*ADAIN_TINY[1:], "adain.features=vgg19", f"adain.vgg_weights={tmp_path / 'vgg19-00000000.pth'}"])


def test_cli_bad_input_is_one_line_and_writes_nothing(sample_data, tmp_path, capsys):
    from raystyle.cli.main import main

    photos_only = tmp_path / "photos"
    (photos_only / "trainA").mkdir(parents=True)
    load_rgb(sample_photo_dir() / "coffee.png").resize((48, 48)).save(photos_only / "trainA" / "a.png")
    storage = tmp_path / "runs"
    sets = [a for item in ADAIN_TINY for a in ("--set", item)]
    cases = [
        (str(sample_data), ["--style-image", str(tmp_path / "p.png")], "--method adain takes no --style-image: its paintings come from DATA/trainB"),
        (str(photos_only), [], "trainB"),  # paintings are missing
        (str(sample_data), ["--vgg-weights", "x.pth"], "random features need no file"),
    ]
    for data, extra, message in cases:
        code = main(["train", "--method", "adain", "--data", data, "--style", "bad", "--storage", str(storage),
                     *sets, *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("raystyle: error:") and "\n" not in err, err
        assert message in err, err
    assert not storage.exists()


# ---------------------------------------------------------------------------------------
# On Ray


@pytest.fixture(scope="module")
def run(ray_session, sample_data, tmp_path_factory):
    """The CLI: 4 steps on 2 workers, then the same command to 6 (a resume)."""
    from raystyle.cli.main import main

    storage = tmp_path_factory.mktemp("adain_runs")
    sets = [a for item in ADAIN_TINY for a in ("--set", item)]
    argv = ["train", "--method", "adain", "--data", str(sample_data), "--style", "anynet", "--workers", "2",
            "--storage", str(storage), *sets]
    out = io.StringIO()
    # the run's lines (the workers' too, forwarded by Ray); the driver's torch on one thread
    with one_torch_thread(), contextlib.redirect_stdout(out):
        assert main([*argv, "--max-steps", "4"]) == 0
        first = ckpt.load_shared(ckpt.latest_checkpoint(storage / "anynet"))
        assert main([*argv, "--max-steps", "6"]) == 0
    return storage / "anynet", first, out.getvalue()


@pytest.mark.slow  # two Ray Train runs
def test_two_workers_train_equal_decoders_and_a_rerun_resumes(run, sample_data):
    run_dir, (_, nets4, state4), out = run
    last = ckpt.latest_checkpoint(run_dir)
    assert ckpt.read_manifest(last)["method"] == "adain" and ckpt.read_manifest(last)["step"] == 6
    ranks = [ckpt.load_rank(last, r)["fingerprints"] for r in (0, 1)]
    assert list(ranks[0]) == ["decoder"] and ranks[0]["decoder"] == pytest.approx(ranks[1]["decoder"], rel=1e-6, abs=1e-7)
    _, nets6, state6 = ckpt.load_shared(last)
    assert state4["step"] == 4 and state6["step"] == 6
    for k, v in nets4["encoder"].items():  # the encoder is frozen: the same at every step
        assert torch.equal(v, nets6["encoder"][k]), k
    assert any(not torch.equal(v, nets6["decoder"][k]) for k, v in nets4["decoder"].items())
    records = runlog.read_metrics(run_dir)
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all({"total", "content", "style", "identity"} <= set(r) for r in records)  # one DDP forward
    n = len(list((sample_data / "trainA").iterdir()))
    assert "resumed from step 4" in out and f"training 'anynet': {n} content photos, {n} style images" in out


@pytest.mark.slow  # needs the Ray Train run (conftest's arbitrary_style exports in the default run)
def test_export_writes_an_arbitrary_style_whose_graphs_match_torch(run, tmp_path, capsys):
    from raystyle.cli.main import main
    from raystyle.export.gates import ExportError
    from raystyle.infer.arbitrary import ArbitraryStylizer
    from raystyle.methods.adain import load_net, pad_to
    from raystyle.registry import get_style, list_styles

    run_dir = run[0]
    models = tmp_path / "models"
    assert main(["export", str(run_dir), "--style", "anynet", "--models-dir", str(models),
                 "--precision", "fp32", "--set", "export.int8_min_psnr_db=20"]) == 0
    style = get_style("anynet", models)
    meta = style.meta
    assert style.kind == "arbitrary" and meta["method"] == "adain"
    assert {"encoder.onnx", "decoder.onnx", "model.json"} <= {p.name for p in style.version_dir.iterdir()}
    assert meta["arbitrary"]["halo"] == 96 and meta["arbitrary"]["features"] == "random"
    assert meta["precisions"]["fp32"]["validated"] and meta["training"]["step"] == 6
    assert main(["styles", "--models-dir", str(models)]) == 0
    assert "arbitrary style (AdaIN" in capsys.readouterr().out

    # ORT (encoder -> AdaIN in numpy -> decoder) against the torch network, outside the export
    config, nets = ckpt.load_nets(ckpt.latest_checkpoint(run_dir))
    net = load_net(nets, config)
    photo = np.array(load_rgb(sample_photo_dir() / "astronaut.png").resize((72, 56)))  # writable copies
    painting = np.array(load_rgb(sample_photo_dir() / "coffee.png").resize((64, 64)))
    st = ArbitraryStylizer(style, provider="cpu")
    got = st.stylize(photo, style_images=[painting])
    with torch.no_grad():
        x = torch.from_numpy(photo).permute(2, 0, 1).float().div(127.5).sub(1).unsqueeze(0)
        s = torch.from_numpy(painting).permute(2, 0, 1).float().div(127.5).sub(1).unsqueeze(0)
        y = net(pad_to(x), s)[0, :, :56, :72].permute(1, 2, 0).numpy()
    want = np.clip((y + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    got = st.stylize(photo, style_images=[painting], alpha=0.4)  # alpha: numpy's affine map vs torch
    with torch.no_grad():
        y = net(pad_to(x), s, alpha=0.4)[0, :, :56, :72].permute(1, 2, 0).numpy()
    want = np.clip((y + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1

    # a gate that cannot be met registers nothing; generator-only options are refused
    with pytest.raises(ExportError, match="int8_min_psnr_db"):
        from raystyle.export import export_style

        export_style(run_dir, "refused", models_dir=models, precisions=("fp32", "int8"),
                     overrides=["export.int8_min_psnr_db=98"])
    assert [s.name for s in list_styles(models)] == ["anynet"]
    assert main(["export", str(run_dir), "--style", "ts", "--models-dir", str(models), "--torchscript"]) == 2
    assert "arbitrary style" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# The ArbitraryStylizer (the exported fixture style: tests/conftest.py::arbitrary_style)


def _photo(side: tuple[int, int] = (200, 152)) -> np.ndarray:
    return np.asarray(load_rgb(sample_photo_dir() / "astronaut.png").resize(side))


def test_tiles_are_exact_and_a_halo_too_small_is_not(arbitrary_style):
    """Large images run in tiles of 64 px cores: equal to the whole image (>= 60 dB; measured 99,
    i.e. identical); the same tiles with a halo of 8 px instead of 96 visibly differ."""
    from raystyle.export.gates import psnr_db
    from raystyle.infer.arbitrary import ArbitraryStylizer

    st = ArbitraryStylizer(arbitrary_style, provider="cpu")
    stats = st.blend([sample_photo_dir() / "coffee.png"])
    photo = _photo()
    whole = st.stylize_batch([photo], styles=[stats], tile=256)[0]
    tiled = st.stylize_batch([photo], styles=[stats], tile=64)[0]
    assert whole.shape == photo.shape and psnr_db(tiled, whole, 255.0) >= 60
    st.halo = 8
    assert psnr_db(st.stylize_batch([photo], styles=[stats], tile=64)[0], whole, 255.0) < 50
    assert arbitrary_style.meta["precisions"]["fp32"]["tiled_psnr_db"] >= 60


def test_blending_alpha_and_the_style_cache(arbitrary_style):
    from raystyle.infer.arbitrary import ArbitraryStylizer
    from raystyle.infer.base import StylizeError

    st = ArbitraryStylizer(arbitrary_style, provider="cpu", cache_size=2)
    photo = _photo((96, 64))
    a, b = sample_photo_dir() / "coffee.png", sample_photo_dir() / "chelsea.png"
    single = st.stylize(photo, style_images=[a])
    assert st.cache_misses == 1
    assert np.array_equal(st.stylize(photo, style_images=[a, b], weights=[1, 0]), single)
    assert np.array_equal(st.stylize(photo, style_images=[b, a], weights=[0, 3]), single)  # normalised
    assert (st.cache_hits, st.cache_misses) == (3, 2)  # a and b each computed once
    c = sample_photo_dir() / "rocket.jpg"
    st.stylize(photo, style_images=[c])  # a third painting: b, the least recently used, is evicted
    assert (st.cache_hits, st.cache_misses) == (3, 3)
    st.stylize(photo, style_images=[a])  # a was used after b: still cached
    assert (st.cache_hits, st.cache_misses) == (4, 3)
    st.stylize(photo, style_images=[b])  # computed again
    assert (st.cache_hits, st.cache_misses) == (4, 4)
    mixed = st.stylize(photo, style_images=[a, b], weights=[0.5, 0.5])
    assert not np.array_equal(mixed, single)
    assert not np.array_equal(st.stylize(photo, style_images=[a], alpha=0.0), single)
    assert np.array_equal(st.stylize(photo, style_images=[a], strength=0.0), photo)
    for bad in ([1], [-1, 2], [0, 0], ["x", 1]):
        with pytest.raises(StylizeError):
            st.stylize(photo, style_images=[a, b], weights=bad)
    with pytest.raises(StylizeError, match="alpha"):
        st.stylize(photo, style_images=[a], alpha=1.5)


@pytest.fixture(scope="module")
def colour_style(tmp_path_factory):
    """A registry with arbitrary style 'colours': encoder = 8x8 average pooling (3 "channels": the
    colours), decoder = 8x nearest upsampling; AdaIN between them gives the photo's blocks the
    painting's colour means and spreads: a dark painting makes a dark result (deterministic,
    unlike a decoder trained for a few steps)."""
    import json

    import onnx
    from onnx import TensorProto, helper

    root = tmp_path_factory.mktemp("models")
    (root / "colours").mkdir()
    shape = ["b", 3, "h", "w"]

    def save(name, node, inputs, output, inits=()):
        graph = helper.make_graph([node], name, [helper.make_tensor_value_info(inputs[0], TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info(output, TensorProto.FLOAT, shape)], list(inits))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 8
        onnx.save(model, str(root / "colours" / f"{name}.onnx"))

    save("encoder", helper.make_node("AveragePool", ["image"], ["features"], kernel_shape=[8, 8], strides=[8, 8]),
         ["image"], "features")
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 8, 8])
    save("decoder", helper.make_node("Resize", ["features", "", "scales"], ["stylized"], mode="nearest"),
         ["features"], "stylized", [scales])
    (root / "colours" / "model.json").write_text(json.dumps(
        {"kind": "arbitrary", "precisions": {"fp32": {"file": "decoder.onnx", "encoder": "encoder.onnx",
                                                      "decoder": "decoder.onnx"}},
         "arbitrary": {"halo": 8, "style_size": 64}}))
    return root


def test_a_dark_painting_keeps_the_bright_photos_luminance(colour_style):
    """Gatys et al. 2017 with the style image at hand: ``luminance`` (True) transfers on
    luminance with the painting's luminance matched to the photo's, ``histogram`` matches the
    painting's colours to the photo's first; both take the painting's statistics again for the
    photo (not from the cache). The old ``swap`` keeps the dark result's luminance. Statistics
    without their images (``style_stats``) get the feed-forward equivalent on the output."""
    from raystyle.data.colour import luminance
    from raystyle.infer.arbitrary import ArbitraryStylizer

    st = ArbitraryStylizer("colours", models_dir=colour_style, provider="cpu", threads=1)
    photo = np.clip(_photo((96, 64)) * 0.5 + 120, 0, 255).astype(np.uint8)
    painting = (np.asarray(load_rgb(sample_photo_dir() / "chelsea.png").resize((128, 96))) * 0.2).astype(np.uint8)
    y0 = luminance(photo)
    seen = {}
    for mode in (None, "swap", "luminance", True, "histogram"):
        misses = st.cache_misses
        y = luminance(st.stylize(photo, style_images=[painting], preserve_color=mode))
        seen[mode] = y.mean()
        assert st.cache_misses == misses + (mode is None)  # matched statistics never come from the cache
        if mode in ("luminance", True, "histogram"):
            assert abs(y.mean() - y0.mean()) < 5 and 0.6 < y.std() / y0.std() < 1.1, (mode, y.mean(), y.std())
    assert seen[None] < y0.mean() - 100 and abs(seen["swap"] - seen[None]) < 2, seen  # dark, as before
    stats = st.style_stats(painting)  # no images at hand: the output's luminance matched afterwards
    y = luminance(st.stylize_batch([photo], styles=[stats], preserve_color=True)[0])
    assert abs(y.mean() - y0.mean()) < 2 and abs(y.std() / y0.std() - 1) < 0.05
    # one mode per photo in a batch (Serve's replicas batch requests with different modes), tiles too
    both = st.stylize_batch([photo, photo], styles=[st.blend([painting])] * 2, preserve_color=["swap", True], tile=64)
    assert np.array_equal(both[0], st.stylize(photo, style_images=[painting], preserve_color="swap"))
    assert np.abs(both[1].astype(int) - st.stylize(photo, style_images=[painting], preserve_color=True)).max() <= 1


def test_cli_stylize_with_style_images(arbitrary_style, exported, tmp_path, capsys):
    from raystyle.cli.main import main
    from raystyle.infer.arbitrary import ArbitraryStylizer

    models = str(arbitrary_style.path.parent)
    photo = tmp_path / "photo.png"
    load_rgb(sample_photo_dir() / "astronaut.png").resize((96, 64)).save(photo)
    a, b = str(sample_photo_dir() / "coffee.png"), str(sample_photo_dir() / "chelsea.png")
    out = tmp_path / "out.png"
    assert main(["stylize", str(photo), "--style", "anystyle", "--models-dir", models, "--style-image", a,
                 "--style-image", b, "--weights", "0.7,0.3", "--alpha", "0.8", "-o", str(out)]) == 0
    want = ArbitraryStylizer(arbitrary_style, provider="cpu").stylize(
        photo, style_images=[a, b], weights=[0.7, 0.3], alpha=0.8)
    assert np.abs(np.asarray(load_rgb(out)).astype(int) - want.astype(int)).max() <= 1
    capsys.readouterr()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    cases = [([], "give --style-image"), (["--style-image", str(broken)], "style image"),
             (["--style-image", a, "--weights", "1,x"], "--weights"),
             (["--style-image", a, "--weights", "1,1"], "2 style weights for 1 style images"),
             (["--style-image", str(tmp_path / "missing.png")], "missing.png")]
    for extra, message in cases:
        code = main(["stylize", str(photo), "--style", "anystyle", "--models-dir", models, "-o",
                     str(tmp_path / "no.png"), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("raystyle: error:") and "\n" not in err and message in err, err
    # a generator style takes no style image
    code = main(["stylize", str(photo), "--style", "tiny", "--models-dir", str(exported.path.parent),
                 "--style-image", a, "-o", str(tmp_path / "no.png")])
    assert code == 2 and "for arbitrary styles" in capsys.readouterr().err
    assert not (tmp_path / "no.png").exists()


@pytest.mark.parametrize("preset, gmacs, decoder_m", [("adain", 31.63, 3.505), ("adain-small", 20.10, 1.172)])
def test_the_presets_cost_what_the_readme_says(preset, gmacs, decoder_m):
    """README: `adain` = VGG-19 to relu4_1 (15.82 GMACs at 256 px, 3.506 M) + the paper's decoder;
    `adain-small` = the same encoder + a decoder at half the width."""
    from raystyle.config import load_config
    from raystyle.core.macs import count_macs, count_params
    from raystyle.core.perceptual import FeatureNet
    from raystyle.methods.adain import LAYERS, Decoder, Encoder

    cfg = load_config(preset)
    assert cfg.method == "adain" and cfg.adain.features == "vgg19"
    encoder, decoder = Encoder(FeatureNet("random", LAYERS)), Decoder(cfg.adain.decoder_width)
    assert round(count_macs(encoder, 256) / 1e9, 2) == 15.82 and round(count_params(encoder) / 1e6, 3) == 3.506
    assert round(count_macs(torch.nn.Sequential(encoder, decoder), 256) / 1e9, 2) == gmacs
    assert round(count_params(decoder) / 1e6, 3) == decoder_m


def test_bf16_autocast_trains_and_a_vgg_encoder_travels_in_the_checkpoint():
    """AMP (bf16 here, on the CPU): finite losses, statistics in fp32. VGG features given as a
    state dict (random values in torchvision's layout, no file): the checkpoint's ``encoder`` is
    exactly those weights, and load_net rebuilds the same network from the checkpoint alone."""
    from raystyle.config import Config
    from raystyle.core.perceptual import build_features
    from raystyle.methods.adain import load_net

    torch.manual_seed(0)
    state = build_features("vgg19").state_dict()
    cfg = Config.from_dict({"adain": {"features": "vgg19", "decoder_width": 0.125},
                            "data": {"load_size": 32, "crop_size": 32}, "train": {"amp": "bf16"}})
    model = AdaINMethod(cfg, state)
    losses = model.train_step(torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1)
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
    nets = model.nets_state()
    assert sorted(nets["encoder"]) == sorted(k for k in state if int(k.split(".")[0]) <= 19)  # up to conv4_1
    assert all(torch.equal(v, state[k]) for k, v in nets["encoder"].items())
    net = load_net(nets, cfg)
    x, s = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        from raystyle.methods.adain import adain as layer

        m, sd = mean_std(model.encoder(s)["relu4_1"])
        want = model.decoder(layer(model.encoder(x)["relu4_1"], m, sd))
        assert torch.allclose(net(x, s), want, atol=1e-6)


def test_int8_falls_back_to_the_decoder_alone_or_registers_nothing(arbitrary_style, tmp_path):
    """A gate just above what both int8 graphs give: the decoder alone in int8 (encoder fp32) is
    tried next, and it either holds the gate (recorded as such) or the export fails."""
    from raystyle.export import export_style
    from raystyle.export.gates import ExportError
    from raystyle.registry import list_styles

    both = arbitrary_style.meta["precisions"]["int8"]["both_int8_psnr_vs_fp32_db"]
    checkpoint = arbitrary_style.meta["training"]["checkpoint"]
    try:
        st = export_style(checkpoint, "fallback", models_dir=tmp_path, precisions=("fp32", "int8"),
                          overrides=[f"export.int8_min_psnr_db={both + 0.01}"])
    except ExportError as exc:
        assert "decoder.int8.onnx" in str(exc) and "encoder fp32" in str(exc)
        assert list_styles(tmp_path) == []
    else:
        e8 = st.meta["precisions"]["int8"]
        assert e8["int8_graphs"] == ["decoder"] and e8["encoder"] == "encoder.onnx"
        assert e8["psnr_vs_fp32_db"] >= both + 0.01
        assert not (st.version_dir / "encoder.int8.onnx").exists()


def test_the_identity_loss_costs_one_decoder_forward_per_step():
    """README: with the identity loss the decoder runs once per step on both batches (DDP
    allows one forward per backward), and the reconstruction term is logged."""
    cfg, extra = plan(overrides=ADAIN_TINY)
    assert cfg.adain.identity_weight == 1
    model = AdaINMethod.from_config(cfg, torch.device("cpu"), 0, extra)
    calls = []
    model.decoder.register_forward_hook(lambda m, inputs, out: calls.append(inputs[0].shape[0]))
    losses = model.train_step(torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1)
    assert calls == [4] and float(losses["identity"]) > 0  # one forward of 2 targets + 2 photos
    assert AdaINMethod.loss_keys(cfg) == ["total", "content", "style", "identity"]


def test_style_images_of_any_shape_and_mode(arbitrary_style, tmp_path):
    """Long, thin, grey, palette and RGBA paintings; tiny and one-pixel-wide photos."""
    from PIL import Image

    from raystyle.infer.arbitrary import ArbitraryStylizer, style_array

    thin = style_array(Image.new("RGB", (4, 100_000), "red"), 64)  # cropped in the source, then resized
    assert thin.shape == (256, 64, 3)
    st = ArbitraryStylizer(arbitrary_style, provider="cpu")
    rgb = np.asarray(load_rgb(sample_photo_dir() / "coffee.png").resize((80, 64)))
    for mode in ("L", "P", "RGBA"):
        img = Image.fromarray(rgb).convert(mode)
        out = st.stylize(_photo((40, 24)), style_images=[img])
        assert out.shape == (24, 40, 3)
    for shape in ((1, 30), (7, 5), (16, 1)):
        photo = np.full((*shape, 3), 128, np.uint8)
        assert st.stylize(photo, style_images=[rgb]).shape == (*shape, 3)


def test_features_flag_applies_when_the_method_comes_from_the_config(tmp_path):
    """`--config adain-small --features random` (no --method): the preset makes it an adain run
    and --features sets adain.features (as `--config fast` sets fast.features)."""
    from raystyle.cli import main as cli
    from raystyle.cli import train as cli_train

    args = cli.parse_args(["train", "--data", str(tmp_path), "--style", "x", "--config",
                           "adain-small", "--features", "random"])
    assert args.method is None
    method, cfg, extra = cli_train.plan_run(args)
    assert method.name == "adain" and cfg.adain.features == "random" and extra["features"] is None
    painting = tmp_path / "p.png"
    load_rgb(sample_photo_dir() / "coffee.png").save(painting)
    args = cli.parse_args(["train", "--data", str(tmp_path), "--style", "x", "--config", "fast",
                           "--style-image", str(painting), "--features", "random"])
    _, cfg, _ = cli_train.plan_run(args)
    assert cfg.fast.features == "random"
