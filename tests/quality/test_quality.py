"""raystyle.quality: EfficientNet-Lite0 features (checked by hash), FID/KID-EL0, style and
content distances, the colour-transfer baseline. The real ImageNet weights (installed with
raystyle) are used throughout: nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata
from torch.nn import functional as F

from raystyle import quality
from raystyle.quality import el0

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
          "cat", "retina", "horse")


def photos(side: int = 96) -> torch.Tensor:
    out = []
    for name in PHOTOS:
        a = np.asarray(getattr(skdata, name)())
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        x = torch.from_numpy(a[..., :3].astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        out.append(F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)[0])
    return torch.stack(out)


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return photos()


def test_the_weights_are_imagenet_ones_they_recognise_a_cat(real):
    """The extractor carries real pretrained weights: the whole net calls chelsea a cat
    (ImageNet classes 281-285)."""
    ext = quality.extractor()
    with torch.no_grad():
        logits = ext.net(ext.prepare(real[1:2]))
    assert 281 <= int(logits.argmax()) <= 285


def test_fid_of_a_set_against_itself_is_zero_and_against_noise_large(real):
    f = quality.features(real)
    noise = quality.features(torch.rand_like(real) * 2 - 1)
    assert quality.fid(f, f) == pytest.approx(0.0, abs=1e-6)
    assert quality.fid(f, noise) > 100
    k_noise = quality.kid(f, noise)
    assert k_noise.value > 0.1
    assert k_noise.value > 5 * k_noise.se > 0  # far above its own standard error


def test_fid_matches_the_textbook_formula(real):
    """The low-rank trace (nuclear norm of ca cb^T) equals scipy's matrix square root."""
    from scipy import linalg

    a, b = quality.features(real[:6]), quality.features(real[4:])
    xa, xb = a.pooled.numpy(), b.pooled.numpy()
    sa, sb = np.cov(xa, rowvar=False), np.cov(xb, rowvar=False)
    root = linalg.sqrtm(sa @ sb).real
    textbook = ((xa.mean(0) - xb.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * root)
    assert quality.fid(a, b) == pytest.approx(textbook, rel=1e-3)


def test_kid_is_unbiased_two_halves_of_one_set_score_near_zero(real):
    """KID of two draws of one distribution is ~0 within a couple of standard errors, while a
    blurred copy of the set is clearly apart."""
    torch.manual_seed(0)
    crops = torch.cat([real[:, :, i:i + 64, j:j + 64] for i in (0, 16, 32) for j in (0, 32)])
    perm = torch.randperm(len(crops))
    half_a, half_b = crops[perm[: len(crops) // 2]], crops[perm[len(crops) // 2:]]
    same = quality.kid(half_a, half_b)
    blurred = quality.kid(half_a, F.avg_pool2d(half_b, 5, 1, 2))
    assert abs(same.value) < 3 * same.se + 1e-3
    assert blurred.value > same.value + 3 * blurred.se


def test_weights_with_another_hash_are_refused(tmp_path, monkeypatch):
    """A file that is not the expected one is refused before anything is unpickled."""
    fake = tmp_path / el0.WEIGHTS_FILE
    torch.save({"_conv_stem.weight": torch.zeros(1)}, fake)
    monkeypatch.setenv(el0.WEIGHTS_ENV, str(fake))
    with pytest.raises(quality.FeatureError, match="SHA-256") as err:
        quality.extractor()
    assert "\n" not in str(err.value)
    monkeypatch.setenv(el0.WEIGHTS_ENV, str(tmp_path / "absent.pth"))
    with pytest.raises(quality.FeatureError, match="not found"):
        quality.extractor()


def test_the_weights_load_as_tensors_only(monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    el0.clear_cache()
    try:
        quality.extractor()
    finally:
        el0.clear_cache()
    assert calls == [True]


def test_style_distance_ranks_a_restyled_image_closer_to_its_painting(real):
    """An image given a painting's channel statistics (per-channel colour transfer) is closer in
    style to that painting than the photo was; the content distance of the photo to itself is 0."""
    painting = real[6:7]  # hubble: dark, speckled
    photo = real[0:1]
    moved = quality.colour_transfer(photo, painting)
    assert quality.style_distance(moved, painting) < quality.style_distance(photo, painting)
    assert quality.style_distance(photo, photo) == pytest.approx(0.0, abs=1e-6)
    assert quality.content_distance(photo, photo) == pytest.approx(0.0, abs=1e-9)
    assert quality.content_distance(photo.flip(-1), photo) > quality.content_distance(moved, photo)


def test_colour_transfer_takes_the_references_histogram_only(real):
    photo, ref = real[:1], real[6:8]
    out = quality.colour_transfer(photo, ref)
    for c in range(3):  # each channel's quantiles follow the reference's pixels
        q = torch.tensor([0.1, 0.5, 0.9])
        got, want = out[:, c].flatten().quantile(q), ref[:, c].flatten().quantile(q)
        assert torch.allclose(got, want, atol=0.08)
    order = lambda x: x[:, 0].flatten().argsort()[:50]  # noqa: E731 - structure: the same darkest pixels
    assert len(set(order(out).tolist()) & set(order(photo).tolist())) > 20


def test_paired_kid_leaves_the_pairs_out(real):
    """A translation and its own ground truth share their content: the two-sample formula then
    reads far below 0 (every x is closest to its own y), the paired one stays ~0 for two views
    of one distribution and still sees a blur."""
    crops = torch.cat([real[:, :, i:i + 64, j:j + 64] for i in (0, 32) for j in (0, 32)])
    flipped = crops.flip(-1)  # the same distribution (photos are flip-invariant), paired content
    unpaired, paired = quality.kid(crops, flipped), quality.kid(crops, flipped, paired=True)
    assert unpaired.value < -3 * unpaired.se
    assert abs(paired.value) < 3 * paired.se + 1e-3
    blurred = quality.kid(F.avg_pool2d(crops, 5, 1, 2), flipped, paired=True)
    assert blurred.value > paired.value + 3 * blurred.se
    with pytest.raises(ValueError, match="as many images"):
        quality.kid(crops, flipped[:-1], paired=True)
