import numpy as np
import pytest
from PIL import Image

from raystyle.data.datasets import sample_photo_dir
from raystyle.data.images import decode
from raystyle.infer.base import ProviderError, StylizeError, make_session
from raystyle.infer.generator import Stylizer
from raystyle.infer.tiles import tile_boxes
from tests.conftest import write_graph_style


@pytest.fixture(scope="module")
def stylizer(exported):
    return Stylizer("tiny", models_dir=exported.path.parent, threads=2)


@pytest.fixture(scope="module")
def photo():
    return np.asarray(decode(sample_photo_dir() / "coffee.png").resize((300, 200)))


def _psnr(a, b):
    mse = ((a.astype(float) - b.astype(float)) ** 2).mean()
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def test_output_is_uint8_rgb_of_the_input_size(stylizer, photo):
    out = stylizer.stylize(photo)
    assert out.dtype == np.uint8 and out.shape == photo.shape
    assert _psnr(out, photo) < 30, "the style changed the image"


@pytest.mark.parametrize("shape", [(255, 257), (1, 1), (3, 50), (17, 4)])
def test_odd_sizes_come_back_at_their_own_size(stylizer, shape):
    img = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    assert stylizer.stylize(img).shape == (*shape, 3)


def test_matches_the_onnx_model_directly(stylizer, exported, photo):
    sess = make_session(exported.file("fp32"), "cpu")
    x = photo[:200, :300].astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1
    ref = np.clip((sess.run(None, {"image": x})[0][0].transpose(1, 2, 0) + 1) * 127.5 + 0.5, 0, 255)
    assert np.abs(stylizer.stylize(photo).astype(int) - ref.astype(np.uint8).astype(int)).max() <= 1


def test_tiled_equals_whole_without_seams(stylizer, photo):
    """600x400 in 128 px cores (+ halo): under the 1024 px statistics limit, so stats.onnx gives
    the whole image's statistics at once and the cores are exact (see test_tiling.py for
    images over that limit, where streaming passes make them exact)."""
    big = np.asarray(Image.fromarray(photo).resize((600, 400), Image.BICUBIC))
    whole = stylizer.stylize(big, tile=1024)
    tiled = stylizer.stylize(big, tile=128)
    assert stylizer.last_stats_passes == 0
    assert _psnr(whole, tiled) >= 40.0
    # Seams: no error on the cores' borders beyond a grey level (and no more than elsewhere).
    err = np.abs(whole.astype(int) - tiled.astype(int)).max(axis=2)
    border = np.zeros(err.shape, bool)
    for r0, r1, c0, c1 in {core for core, _ in tile_boxes(400, 600, 128, stylizer.halo)}:
        border[max(r0 - 2, 0) : r0 + 2, c0:c1] = border[r0:r1, max(c0 - 2, 0) : c0 + 2] = True
    assert border.sum() > 1000 and err[border].max() <= 1
    assert err[border].mean() <= err[~border].mean() + 0.05


def test_sessions_come_from_one_resolved_version(stylizer, exported):
    """model.json and every graph of a Stylizer are read from the same version folder."""
    assert stylizer.style.path == exported.path and stylizer.style.version_dir.name == stylizer.style.version
    assert stylizer.style.version_dir.parent.parent.name == ".versions"
    assert stylizer.tiling_sessions is not None and len(stylizer.tiling_sessions) == 3  # opened eagerly, with the model


def test_strength_and_colour(stylizer, photo):
    assert np.array_equal(stylizer.stylize(photo, strength=0.0), photo)
    full, half = stylizer.stylize(photo), stylizer.stylize(photo, strength=0.5)
    mid = (full.astype(float) + photo.astype(float)) / 2
    assert np.abs(half - mid).max() <= 1
    kept = stylizer.stylize(photo, preserve_color=True)
    cb = lambda a: np.asarray(Image.fromarray(a).convert("YCbCr"))[..., 1:].astype(float)  # noqa: E731
    assert np.abs(cb(kept) - cb(photo)).mean() < np.abs(cb(full) - cb(photo)).mean()
    assert np.abs(cb(kept) - cb(photo)).mean() < 2.5


@pytest.fixture(scope="module")
def dark_models(tmp_path_factory):
    """A registry with generator style 'dark': out = 0.3 * image - 0.6 (a dark, low-contrast style)."""
    from onnx import TensorProto, helper

    consts = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("k", 0.3), ("c", -0.6))]
    return write_graph_style(tmp_path_factory.mktemp("models"), "dark",
                             [helper.make_node("Mul", ["image", "k"], ["scaled"]),
                              helper.make_node("Add", ["scaled", "c"], ["stylized"])], consts)


def test_a_dark_style_keeps_the_contents_luminance_with_the_new_modes(dark_models, photo):
    """A per-style net has no style image at inference: ``luminance`` (True) matches the
    output's luminance mean and std to the photo's and keeps the photo's chroma; ``histogram``
    gives it the photo's colour mean and covariance; the old ``swap`` stays dark."""
    from raystyle.data.colour import luminance

    s = Stylizer("dark", models_dir=dark_models, threads=1)
    y0 = luminance(photo)
    cb = lambda a: np.asarray(Image.fromarray(a).convert("YCbCr"))[..., 1:].astype(float)  # noqa: E731
    for mode in (True, "luminance", "histogram"):
        out = s.stylize(photo, preserve_color=mode)
        y = luminance(out)
        assert abs(y.mean() - y0.mean()) < 2 and abs(y.std() / y0.std() - 1) < 0.05, (mode, y.mean(), y.std())
        assert np.abs(cb(out) - cb(photo)).mean() < 2.5
    swapped = luminance(s.stylize(photo, preserve_color="swap"))
    plain = luminance(s.stylize(photo))
    assert abs(swapped.mean() - plain.mean()) < 1 and swapped.mean() < y0.mean() - 50  # dark, as before
    with pytest.raises(StylizeError, match="preserve_color must be true, false or one of"):
        s.stylize(photo, preserve_color="sepia")


def test_batch_equals_single_calls(stylizer, photo):
    small = photo[:64, :96]
    images = [photo, small, photo[::-1].copy(), Image.fromarray(small)]
    batch = stylizer.stylize_batch(images)
    for img, out in zip(images, batch, strict=True):
        assert np.abs(out.astype(int) - stylizer.stylize(img).astype(int)).max() <= 1


def test_max_side_and_inputs(stylizer, photo, tmp_path):
    assert stylizer.stylize(photo, max_side=100).shape == (67, 100, 3)
    path = tmp_path / "p.png"
    Image.fromarray(photo).save(path)
    assert np.array_equal(stylizer.stylize(path), stylizer.stylize(path.read_bytes()))


def test_int8_precision_runs(exported, photo):
    s = Stylizer("tiny", models_dir=exported.path.parent, precision="int8")
    assert _psnr(s.stylize(photo), Stylizer("tiny", models_dir=exported.path.parent).stylize(photo)) > 25


def test_bad_parameters(stylizer, exported, photo):
    with pytest.raises(StylizeError, match="strength must be between 0 and 1"):
        stylizer.stylize(photo, strength=1.5)
    with pytest.raises(StylizeError, match="tile must be a multiple of 4"):
        stylizer.stylize(photo, tile=130)
    with pytest.raises(StylizeError, match="max_side must be at least 4"):
        stylizer.stylize(photo, max_side=2)


def test_gpu_provider_fails_loudly_without_a_gpu(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA provider is available here")
    with pytest.raises(ProviderError, match="cuda is not available"):
        Stylizer("tiny", models_dir=exported.path.parent, provider="cuda")
    with pytest.raises(ProviderError, match="tensorrt is not available"):
        Stylizer("tiny", models_dir=exported.path.parent, provider="tensorrt")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_provider_matches_cpu(exported, photo, precision):
    gpu = Stylizer("tiny", models_dir=exported.path.parent, provider="cuda", precision=precision)
    cpu = Stylizer("tiny", models_dir=exported.path.parent, provider="cpu")
    assert _psnr(gpu.stylize(photo), cpu.stylize(photo)) > 35
