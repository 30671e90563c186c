import numpy as np
import pytest
import torch
from PIL import Image

from raystyle.config import DataConfig
from raystyle.data.datasets import (
    DataError,
    EpochBatches,
    UnpairedDataset,
    check_dataset,
    steps_per_epoch,
    write_sample_dataset,
)
from raystyle.data.images import load_rgb

CFG = DataConfig(load_size=36, crop_size=32, loader_workers=0)


def _img(path, size=(48, 40), mode="RGB", color=(200, 30, 60)):
    Image.new("RGB", size, color).convert(mode).save(path)


def _dataset(root, n_a=3, n_b=2):
    for d, n in (("trainA", n_a), ("trainB", n_b)):
        (root / d).mkdir(parents=True)
        for i in range(n):
            _img(root / d / f"{i}.png", color=(i * 40, 100, 200 if d == "trainB" else 0))
    return root


def test_missing_root_and_domains(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        check_dataset(tmp_path / "nope", 32)
    (tmp_path / "trainA").mkdir()
    _img(tmp_path / "trainA" / "x.png")
    with pytest.raises(DataError, match=r"trainB is missing: a dataset needs trainA/ and trainB/ \(found: trainA\)"):
        check_dataset(tmp_path, 32)
    (tmp_path / "trainB").mkdir()
    with pytest.raises(DataError, match="trainB has no readable images"):
        check_dataset(tmp_path, 32)
    (tmp_path / "trainB" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no readable images \(1 non-image files skipped\)"):
        check_dataset(tmp_path, 32)


def test_non_images_are_skipped_and_counted(tmp_path):
    root = _dataset(tmp_path)
    (root / "trainA" / "readme.txt").write_text("not an image")
    (root / "trainA" / "fake.jpg").write_bytes(b"\x00" * 100)
    _img(root / "trainA" / "tiny.png", size=(8, 8))
    a, b = check_dataset(root, 32)
    assert len(a.files) == 4 and len(a.skipped) == 2 and a.small == 1
    assert len(b.files) == 2 and not b.skipped


def test_truncated_file_falls_back_to_next_image(tmp_path, capsys):
    root = _dataset(tmp_path, n_a=2)
    good = (root / "trainA" / "0.png").read_bytes()
    (root / "trainA" / "0.png").write_bytes(good[: len(good) // 2])  # header intact, data cut
    a, b = check_dataset(root, 32)
    ds = UnpairedDataset(a.files, b.files, CFG)
    x, _ = ds[(0, 0)]
    assert x.shape == (3, 32, 32)
    assert "skipping unreadable image" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "1"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I") else "x.png")
    if mode == "I;16":
        Image.fromarray(np.full((10, 12), 40000, dtype=np.uint16)).save(path)
    else:
        _img(path, mode=mode)
    img = load_rgb(path)
    assert img.mode == "RGB"
    assert img.size == ((12, 10) if mode == "I;16" else (48, 40))
    if mode == "I;16":  # 40000/65535 of full scale, not clipped to white
        assert abs(int(np.asarray(img)[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "t.png")
    assert np.asarray(load_rgb(tmp_path / "t.png"))[0, 0].tolist() == [255, 255, 255]


def test_samples_are_deterministic_and_normalised(tmp_path):
    a, b = check_dataset(_dataset(tmp_path), 32)
    ds = UnpairedDataset(a.files, b.files, CFG, seed=3)
    x1, y1 = ds[(2, 1)]
    x2, y2 = ds[(2, 1)]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (3, 32, 32) and x1.min() >= -1 and x1.max() <= 1
    assert len(ds) == 3  # max(|A|, |B|)


def test_epoch_batches_shard_without_overlap_and_resume():
    it = [iter(EpochBatches(7, 2, r, 2, seed=0)) for r in (0, 1)]
    first_epoch = [[next(i) for _ in range(steps_per_epoch(7, 2, 2))] for i in it]
    keys = [k for rank in first_epoch for b in rank for k in b]
    assert {i for _, i in keys} == set(range(7)) and all(e == 0 for e, _ in keys)
    assert len(keys) == 8  # 7 samples padded to 2 x 4
    resumed = iter(EpochBatches(7, 2, 0, 2, seed=0, start_epoch=0, start_batch=1))
    assert next(resumed) == first_epoch[0][1]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("n", "world"), [(1, 4), (3, 4), (2, 2), (5, 3)])
def test_fewer_samples_than_workers_still_gives_every_rank_work(n, world):
    # A rank without samples would wait in DDP's all-reduce forever: padding cycles the
    # permutation, so every rank gets ceil(n / world) samples and every sample is used.
    shards = [EpochBatches(n, world, r, 2, seed=3).indices(e) for e in (0, 1) for r in range(world)]
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards)
    for e in (0, 1):
        assert {i for s in shards[e * world : (e + 1) * world] for i in s} == set(range(n))
    if n == 1:
        assert shards == [[0]] * (2 * world)
    last = iter(EpochBatches(n, world, world - 1, 2, seed=3))  # the rank that used to get nothing
    assert next(last) == [(0, i) for i in shards[world - 1]]


def test_sample_dataset(tmp_path):
    counts = write_sample_dataset(tmp_path, size=32, per_photo=1)
    assert counts == {"trainA": 7, "trainB": 7, "testA": 14, "testB": 14}
    a = np.asarray(Image.open(next((tmp_path / "trainA").iterdir())))
    assert a.shape == (32, 32, 3)
    with pytest.raises(DataError, match="multiple of 4"):
        write_sample_dataset(tmp_path, size=30)


def test_painterly_domain_is_warmer_and_more_saturated():
    # The filter moves colour statistics: domain B is redder / less blue than A.
    from raystyle.data.datasets import painterly, sample_photo_dir

    img = load_rgb(sample_photo_dir() / "astronaut.png").resize((128, 128))
    a, b = np.asarray(img, float), np.asarray(painterly(img), float)
    assert (b[..., 0] - b[..., 2]).mean() > (a[..., 0] - a[..., 2]).mean() + 20
    assert b.std(axis=(0, 1)).mean() > a.std(axis=(0, 1)).mean()
