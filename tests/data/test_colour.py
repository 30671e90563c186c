"""raystyle.data.colour: the preserve-colour modes (Gatys et al. 2017) on plain arrays."""

import numpy as np
import pytest
from PIL import Image

from raystyle.data.colour import (
    ColourError,
    after_feed_forward,
    after_transfer,
    colour_mode,
    content_for,
    luminance,
    match_colour,
    style_for,
    swap,
)
from raystyle.data.datasets import sample_photo_dir
from raystyle.data.images import keep_colour


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A photo of ordinary contrast (the astronaut's own is so high that matching anything to it
    clips a fifth of the pixels at 0 or 255, which moves every statistic)."""
    a = np.asarray(Image.open(sample_photo_dir() / "astronaut.png").convert("RGB").resize((80, 60)))
    return (a * 0.6 + 50).astype(np.uint8)


@pytest.fixture(scope="module")
def dark() -> np.ndarray:
    cat = np.asarray(Image.open(sample_photo_dir() / "chelsea.png").convert("RGB").resize((70, 50)))
    return (cat * np.array([0.3, 0.15, 0.1])).astype(np.uint8)  # dark and brownish


def _cbcr(a: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(a).convert("YCbCr"))[..., 1:].astype(float)


def test_modes_from_booleans_and_words():
    assert [colour_mode(v) for v in (None, False, "", "false", "off", "0", "No")] == [None] * 7
    assert [colour_mode(v) for v in (True, "true", "on", "1", "yes")] == ["luminance"] * 5
    assert [colour_mode(v) for v in ("luminance", "Histogram", " swap ")] == ["luminance", "histogram", "swap"]
    for bad in ("sepia", 1, 0.5):
        with pytest.raises(ColourError, match="preserve_color must be true, false or one of luminance"):
            colour_mode(bad)


def test_histogram_matching_gives_the_references_mean_and_covariance(photo, dark):
    out = match_colour(dark, photo)
    x, r = out.reshape(-1, 3).astype(float), photo.reshape(-1, 3).astype(float)
    assert np.abs(x.mean(0) - r.mean(0)).max() < 1.5
    assert np.abs(np.cov(x, rowvar=False) - np.cov(r, rowvar=False)).max() < 0.08 * np.cov(r, rowvar=False).max()
    flat = np.full((8, 8, 3), 90, np.uint8)  # no spread to stretch: the reference's mean, no noise
    assert np.abs(match_colour(flat, photo).astype(float) - photo.reshape(-1, 3).mean(0)).max() <= 1


def test_luminance_only_transfer_prepares_both_images_and_keeps_the_contents_chroma(photo, dark):
    style = style_for(dark, photo, "luminance")
    y, y0 = luminance(style), luminance(photo)
    assert (style[..., 0] == style[..., 1]).all() and (style[..., 1] == style[..., 2]).all()  # grey
    assert abs(y.mean() - y0.mean()) < 1.5 and abs(y.std() / y0.std() - 1) < 0.03  # matched to the content
    grey = content_for(photo, "luminance")
    assert np.abs(luminance(grey) - y0).max() <= 1
    result = np.clip(grey.astype(int) - 40, 0, 255).astype(np.uint8)  # a transfer's darker luminance
    out = after_transfer(result, photo, "luminance")
    assert np.abs(luminance(out) - luminance(result)).mean() < 1.5  # the result's luminance ...
    assert np.abs(_cbcr(out) - _cbcr(photo)).mean() < 1.5  # ... on the content's chroma
    assert np.array_equal(style_for(dark, photo, "swap"), dark) and np.array_equal(content_for(photo, "swap"), photo)
    assert np.array_equal(after_transfer(result, photo, "swap"), keep_colour(result, photo))


def test_feed_forward_outputs_get_the_contents_luminance_statistics(photo, dark):
    out = np.asarray(Image.fromarray(dark).resize((80, 60)))  # a dark "output" of the photo
    y0 = luminance(photo)
    for mode in ("luminance", "histogram"):
        y = luminance(after_feed_forward(out, photo, mode))
        assert abs(y.mean() - y0.mean()) < 1.5 and abs(y.std() / y0.std() - 1) < 0.03, mode
    kept = after_feed_forward(out, photo, "luminance")
    assert np.abs(_cbcr(kept) - _cbcr(photo)).mean() < 1.5
    assert np.array_equal(after_feed_forward(out, photo, "swap"), swap(out, photo))
    assert luminance(swap(out, photo)).mean() < y0.mean() - 50  # the old way stays dark
    assert after_feed_forward(out, photo, None) is out
