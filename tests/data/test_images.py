"""A hostile-input corpus, generated here: each case gives its specific error or the right RGB."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from raystyle.data.images import (
    CorruptImage,
    ImageTooLarge,
    UnsupportedFormat,
    as_uint8_rgb,
    decode,
    encode,
    format_for_path,
)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_an_error_before_decoding():
    with pytest.raises(ImageTooLarge, match="over the 100 MP limit"):
        decode(_bomb(50_000, 50_000))
    with pytest.raises(ImageTooLarge, match="3x3 = 0.0 MP is over"):
        decode(_png_bytes(Image.new("RGB", (3, 3))), max_pixels=8)


def test_truncated_png_and_jpeg():
    png = _png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(CorruptImage, match="damaged or truncated"):
        decode(png[: len(png) // 2])
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")
    with pytest.raises(CorruptImage, match="damaged or truncated"):
        decode(buf.getvalue()[:300])


@pytest.mark.parametrize("data", [b"GIF89a-not-really", b"hello world", b"\x00" * 32, b"%PDF-1.4\n"])
def test_wrong_magic(data):
    with pytest.raises(CorruptImage):
        decode(data)


def test_empty_and_missing():
    with pytest.raises(CorruptImage, match="empty input"):
        decode(b"")
    with pytest.raises(CorruptImage, match="no such file"):
        decode("/nonexistent/x.png")


def test_real_image_in_an_unsupported_format():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PPM")
    with pytest.raises(UnsupportedFormat, match="format PPM is not supported"):
        decode(buf.getvalue())


def test_cmyk_jpeg_becomes_rgb():
    buf = io.BytesIO()
    Image.new("CMYK", (10, 6), (0, 255, 255, 0)).save(buf, format="JPEG", quality=100)  # red
    out = np.asarray(decode(buf.getvalue()))
    assert out.shape == (6, 10, 3)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 60


def test_16_bit_png_is_scaled_not_clipped():
    arr = np.full((5, 7), 32768, dtype=np.uint16)
    out = np.asarray(decode(_png_bytes(Image.fromarray(arr))))
    assert out.shape == (5, 7, 3) and abs(int(out[0, 0, 0]) - 128) <= 1


def test_palette_with_transparency_is_composited_on_white():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    img.info["transparency"] = 0
    out = np.asarray(decode(_png_bytes(img)))
    assert out[0, 0].tolist() == [255, 255, 255]


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=100)
    out = np.asarray(decode(buf.getvalue()))
    assert out.shape == (40, 20, 3)  # width and height swapped
    assert out[2, 10, 2] > 200 and out[-3, 10, 0] > 200  # blue at the top, red at the bottom


def test_one_pixel_image():
    out = np.asarray(decode(_png_bytes(Image.new("RGB", (1, 1), (1, 2, 3)))))
    assert out.tolist() == [[[1, 2, 3]]]


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = np.asarray(decode(buf.getvalue()))
    assert out.shape == (6, 6, 3) and out[0, 0, 0] > 200 and out[0, 0, 1] < 50


def test_arrays_and_encoding_round_trip():
    rgba = np.zeros((3, 4, 4), np.uint8)
    assert as_uint8_rgb(rgba).tolist() == np.full((3, 4, 3), 255).tolist()  # transparent -> white
    with pytest.raises(ValueError, match="must be uint8"):
        as_uint8_rgb(np.zeros((2, 2, 3), np.float32))
    arr = np.random.default_rng(0).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(decode(encode(arr, "png"))), arr)
    for fmt, magic in (("jpeg", b"\xff\xd8"), ("webp", b"RIFF")):
        assert encode(arr, fmt).startswith(magic)
    with pytest.raises(ValueError, match="not one of png, jpeg, webp"):
        encode(arr, "bmp")
    assert format_for_path("x.JPG") == "jpg"
    with pytest.raises(ValueError, match="must end in"):
        format_for_path("x.gif")


def test_jpeg_is_decoded_at_a_reduced_scale_when_max_side_allows():
    """README: a JPEG is decoded at 1/2, 1/4 or 1/8 scale when max_side asks for less; never
    below what fit_within then makes, and other formats decode in full."""
    import io

    import numpy as np
    from PIL import Image

    from raystyle.data.images import decode, fit_within

    y, x = np.mgrid[0:1600, 0:2400]
    arr = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(arr).save(jpeg, format="JPEG", quality=90)
    Image.fromarray(arr).save(png, format="PNG")
    assert decode(jpeg.getvalue(), max_side=500).size == (600, 400)  # 1/4: still >= 500 x 333
    assert decode(jpeg.getvalue(), max_side=300).size == (300, 200)  # 1/8
    assert decode(jpeg.getvalue(), max_side=2400).size == (2400, 1600)
    assert decode(jpeg.getvalue()).size == (2400, 1600)
    assert decode(png.getvalue(), max_side=300).size == (2400, 1600)
    small = fit_within(decode(jpeg.getvalue(), max_side=500), 500)
    full = fit_within(decode(jpeg.getvalue()), 500)
    assert small.size == full.size == (500, 333)
    assert np.abs(np.asarray(small).astype(int) - np.asarray(full)).mean() < 12
