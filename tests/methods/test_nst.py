"""raystyle.methods.nst: Gatys optimisation on random features (tiny images, few steps) and `raystyle nst`."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.vgg import cfgs, make_layers

from raystyle.cli.main import main
from raystyle.core import perceptual
from raystyle.core.perceptual import WEIGHTS_ENV, FeatureNet
from raystyle.data.colour import luminance
from raystyle.data.datasets import painterly, sample_photo_dir
from raystyle.data.images import decode
from raystyle.methods import nst
from raystyle.methods.nst import NSTError, NSTOptions, run_nst

RANDOM = dict(features="random", size=64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a small machine shared with other jobs, two spinning OpenMP threads
    made these 64 px steps 30x slower (2 s instead of 0.07 s); the figures are not the point."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def content() -> np.ndarray:
    return np.asarray(Image.open(sample_photo_dir() / "astronaut.png").convert("RGB").resize((96, 96)))


@pytest.fixture(scope="module")
def style() -> np.ndarray:
    cat = Image.open(sample_photo_dir() / "chelsea.png").convert("RGB")
    return np.asarray(painterly(cat).resize((90, 60)))


@pytest.fixture(scope="module")
def net() -> FeatureNet:
    o = NSTOptions(**RANDOM)
    return FeatureNet("random", o.layers["content"] + o.layers["style"])


@pytest.fixture(scope="module")
def files(content, style, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nst_in")
    Image.fromarray(content).save(root / "content.png")
    Image.fromarray(style).save(root / "style.jpg", quality=95)
    return root / "content.png", root / "style.jpg"


def chroma(a: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(a).convert("YCbCr"))[..., 1:].astype(int)


def test_options_are_validated():
    for kwargs, message in [
        (dict(steps=0), "--steps must be at least 1, got 0"),
        (dict(size=8), "--size must be at least 16"),
        (dict(style_weight=-1.0), "--style-weight must be a number >= 0"),
        (dict(tv_weight=float("nan")), "--tv-weight must be a number >= 0"),
        (dict(content_weight=0.0, style_weight=0.0), "nothing to optimise"),
        (dict(optimizer="sgd"), "--optimizer must be one of lbfgs, adam"),
        (dict(features="random", vgg_weights="x.pth"), "does not go with --features random"),
        (dict(scales=0), "--scales must be between 1 and 8"),
        (dict(lr=0.0), "--lr must be a number > 0"),
        (dict(preserve_color="sepia"), "--preserve-color must be true, false or one of luminance, histogram, swap"),
    ]:
        with pytest.raises(NSTError, match=message):
            NSTOptions(**kwargs)
    # a boolean still works: True is the paper's luminance-only transfer
    assert NSTOptions(preserve_color=True).preserve_color == "luminance"
    assert NSTOptions(preserve_color=False).preserve_color is None is NSTOptions().preserve_color
    assert NSTOptions(preserve_color="swap").to_dict()["preserve_color"] == "swap"


def test_scales_and_the_split_of_steps():
    assert NSTOptions(size=512).scale_sides() == [512]
    assert NSTOptions(size=1024, steps=100).scale_sides() == [256, 512, 1024]
    assert NSTOptions(size=1024, steps=100).steps_per_scale() == [33, 33, 34]
    assert NSTOptions(size=600).scale_sides() == [300, 600]
    assert NSTOptions(size=64, scales=2, steps=5).steps_per_scale() == [2, 3]


@pytest.mark.parametrize("optimizer,steps", [("lbfgs", 12), ("adam", 25)])
def test_content_and_style_losses_fall_from_noise(optimizer, steps, content, style, net):
    options = NSTOptions(**RANDOM, optimizer=optimizer, steps=steps, init="noise")  # default lr
    seen: list[dict] = []
    result, report = run_nst(content, style, options, features=net, progress=seen.append)
    assert result.shape == (64, 64, 3) and result.dtype == np.uint8
    assert [p["step"] for p in seen] == list(range(1, steps + 1))
    first, last = report["initial"], report["final"]
    assert last["style"] < 0.5 * first["style"], (first, last)
    assert last["content"] < 0.8 * first["content"], (first, last)
    assert last["total"] < first["total"]
    assert report["steps"] == steps and report["features"] == "random"
    assert report["weights_sha256"] is None and report["seconds"] > 0


def test_content_init_takes_the_style_colours_and_keeps_the_layout(content, style, net):
    result, report = run_nst(content, style, NSTOptions(**RANDOM, steps=15), features=net)
    small = np.asarray(Image.fromarray(content).resize((64, 64), Image.LANCZOS)).astype(float)
    assert report["initial"]["content"] == 0  # started from the content itself
    assert report["final"]["style"] < 0.3 * report["initial"]["style"]
    # the layout stays: the result correlates with the content's luminance
    lum = result.astype(float).mean(axis=2)
    assert np.corrcoef(lum.ravel(), small.mean(axis=2).ravel())[0, 1] > 0.5
    # and the colours move towards the style's (warm, orange painterly cat)
    style_mean, before, after = style.reshape(-1, 3).mean(0), small.reshape(-1, 3).mean(0), \
        result.reshape(-1, 3).mean(0)
    assert np.abs(after - style_mean).sum() < np.abs(before - style_mean).sum()


def test_multiscale_runs_coarse_to_fine(content, style, net):
    options = NSTOptions(**RANDOM, steps=6, scales=2)
    result, report = run_nst(content, style, options, features=net)
    assert [s["size"] for s in report["scales"]] == [[32, 32], [64, 64]]
    assert [s["steps"] for s in report["scales"]] == [3, 3] and report["steps"] == 6
    assert all(s["style_size"][1] >= 32 for s in report["scales"])  # never under min_side
    assert result.shape == (64, 64, 3)
    # the second scale starts from the first's result, not from the content: non-zero content loss
    assert report["scales"][1]["initial"]["content"] > 0
    wide = np.zeros((40, 96, 3), np.uint8)  # at 32 px its shorter side is 12: too small
    with pytest.raises(NSTError, match="raise --size or lower --scales"):
        run_nst(wide, style, options, features=net)


def test_preserve_color_keeps_the_content_chroma(content, style, net):
    kept, _ = run_nst(content, style, NSTOptions(**RANDOM, steps=8, preserve_color=True), features=net)
    swapped, _ = run_nst(content, style, NSTOptions(**RANDOM, steps=8, preserve_color="swap"), features=net)
    plain, _ = run_nst(content, style, NSTOptions(**RANDOM, steps=8), features=net)
    small = np.asarray(Image.fromarray(content).resize((64, 64), Image.LANCZOS))
    for out in (kept, swapped):
        assert np.abs(chroma(out) - chroma(small)).mean() < 2
    assert np.abs(chroma(plain) - chroma(small)).mean() > 4  # without it the colours change
    y = lambda a: np.asarray(Image.fromarray(a).convert("L")).astype(int)  # noqa: E731
    assert np.abs(y(swapped) - y(plain)).mean() < 3  # swap: the stylized luminance is kept as it is


@pytest.fixture(scope="module")
def bright_and_dark() -> tuple[np.ndarray, np.ndarray]:
    """A bright photo (luminance mean ~178) and a dark painting (~30)."""
    photo = np.asarray(Image.open(sample_photo_dir() / "astronaut.png").convert("RGB").resize((96, 96)))
    cat = Image.open(sample_photo_dir() / "chelsea.png").convert("RGB")
    painting = np.asarray(painterly(cat).resize((90, 60))).astype(float) * 0.25
    return np.clip(photo * 0.5 + 120, 0, 255).astype(np.uint8), painting.astype(np.uint8)


def test_a_dark_style_keeps_the_bright_contents_luminance(bright_and_dark, net):
    """Gatys et al. 2017: luminance-only transfer (the default) and colour histogram matching
    keep the content's luminance mean and spread; the old swap keeps the result's, which the
    dark style pulls down."""
    bright, dark = bright_and_dark
    y0 = luminance(np.asarray(Image.fromarray(bright).resize((64, 64), Image.LANCZOS)))
    means = {}
    for mode in ("luminance", "histogram", "swap"):
        out, _ = run_nst(bright, dark, NSTOptions(**RANDOM, steps=16, preserve_color=mode), features=net)
        y = luminance(out)
        means[mode] = y.mean()
        if mode != "swap":
            assert abs(y.mean() - y0.mean()) < 5 and abs(y.std() / y0.std() - 1) < 0.1, (mode, y.mean(), y.std())
    assert means["swap"] < y0.mean() - 25, means  # the old way: darker than the content


def test_lbfgs_keeps_true_curvature_pairs_and_gets_lower_on_a_saturated_image(net):
    """After the clamp to [-1, 1], L-BFGS's memory holds the step actually taken (nst.TRUE_STEPS);
    the step before the clamp (raystyle before) made its curvature pairs describe moves the clamp
    undid wherever pixels saturate, and ended higher."""
    photo = np.asarray(Image.open(sample_photo_dir() / "astronaut.png").convert("RGB").resize((64, 64))).astype(int)
    saturated = np.clip((photo - 128) * 4 + 128, 0, 255).astype(np.uint8)  # ~80% of values at 0 or 255
    cat = Image.open(sample_photo_dir() / "chelsea.png").convert("RGB")
    painting = np.asarray(painterly(cat).resize((90, 60)))
    options = NSTOptions(**RANDOM, steps=10)
    final = {}
    for true_steps in (False, True):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(nst, "TRUE_STEPS", true_steps)
            final[true_steps] = run_nst(saturated, painting, options, features=net)[1]["final"]["total"]
    assert final[True] < 0.85 * final[False], final  # measured 4.70 against 6.81


def test_too_small_style_and_mismatched_features(content, style, net):
    with pytest.raises(NSTError, match="style image is 20x40; random features need at least 32 px"):
        run_nst(content, np.zeros((40, 20, 3), np.uint8), NSTOptions(**RANDOM), features=net)
    shallow = FeatureNet("random", ["relu1_1"])
    with pytest.raises(NSTError, match="the options need random with relu4_2"):
        run_nst(content, style, NSTOptions(**RANDOM), features=shallow)


# -- the command line ----------------------------------------------------------------------
def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, argv: list[str]) -> str:
    rc, out, err = run_cli(capsys, argv)
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("raystyle: error: "), err
    return lines[0]


def test_cli_end_to_end_json(files, tmp_path, capsys):
    content, style = files
    out = tmp_path / "sub" / "result.jpg"
    rc, stdout, stderr = run_cli(capsys, ["nst", str(content), str(style), "-o", str(out),
                                          "--features", "random", "--size", "64", "--steps", "4",
                                          "--optimizer", "adam", "--json", "--preserve-color"])
    assert rc == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 1  # the progress bar went to stderr
    report = json.loads(lines[0])
    assert report["output"] == str(out) and report["steps"] == 4 and report["size"] == [64, 64]
    assert report["options"]["optimizer"] == "adam" and report["features"] == "random"
    assert report["options"]["preserve_color"] == "luminance"  # the flag alone: Gatys et al.'s luminance mode
    assert set(report["final"]) == {"content", "style", "tv", "total"}
    img = decode(out)
    assert img.size == (64, 64)
    assert Image.open(out).format == "JPEG"
    assert "4/4" in stderr  # tqdm's bar


def test_cli_vgg19_from_a_weights_file(files, tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    tmp = tmp_path / "w.pth"
    torch.save(make_layers(cfgs["E"]).state_dict(), tmp)  # VGG-19 shapes, random values
    weights = tmp.rename(tmp_path / f"vgg19-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth")
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    content, style = files
    out = tmp_path / "out.png"
    rc, stdout, stderr = run_cli(capsys, ["nst", str(content), str(style), "-o", str(out),
                                          "--size", "48", "--steps", "2"])
    assert rc == 0, stderr
    assert stdout.startswith(f"{content} -> {out} (48x48, 2 steps") and "style" in stdout
    assert decode(out).size == (48, 48)


def test_cli_bad_inputs_are_one_line_errors(files, tmp_path, capsys, monkeypatch):
    content, style = files
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (24, 24), (200, 100, 0)).save(tiny)
    out = str(tmp_path / "o.png")
    base = ["--features", "random", "--size", "64", "--steps", "2"]
    assert "content.png" not in one_line_error(capsys, ["nst", str(garbage), str(style), "-o", out, *base])
    assert "garbage.png: not an image" in one_line_error(
        capsys, ["nst", str(content), str(garbage), "-o", out, *base])
    assert "nope.png: no such file" in one_line_error(
        capsys, ["nst", str(tmp_path / "nope.png"), str(style), "-o", out, *base])
    assert "style image is 24x24" in one_line_error(capsys, ["nst", str(content), str(tiny), "-o", out, *base])
    assert "--steps must be at least 1, got 0" in one_line_error(
        capsys, ["nst", str(content), str(style), "-o", out, "--features", "random", "--steps", "0"])
    assert "must end in .png" in one_line_error(
        capsys, ["nst", str(content), str(style), "-o", str(tmp_path / "o.gif"), *base])
    assert "does not exist" in one_line_error(
        capsys, ["nst", str(content), str(style), "-o", out, "--vgg-weights", str(tmp_path / "no.pth")])
    # no weights anywhere and no network: where to put the file, in one line
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(perceptual.URLS, "vgg19", f"http://127.0.0.1:{port}/vgg19-dcbb9e9d.pth")
    line = one_line_error(capsys, ["nst", str(content), str(style), "-o", out, "--size", "64"])
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in line
    assert "--vgg-weights" in line
    assert not Path(out).exists()
