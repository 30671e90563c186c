"""Unpaired image data: folder scan, deterministic augmentation, sharding, the sample dataset.

Layout (the reference CycleGAN one): ``ROOT/trainA ROOT/trainB [ROOT/testA ROOT/testB]``.
An epoch has max(|A|, |B|) samples: sample i pairs A[i % |A|] with a B image drawn
independently. Every random choice (B index, crop, flip) is derived from
(seed, epoch, i), so a run resumed mid-epoch sees exactly the samples it would have seen.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from raystyle.config import DataConfig
from raystyle.data.images import IMAGE_SUFFIXES, ImageError, load_rgb, probe
from raystyle.errors import RaystyleError


class DataError(RaystyleError):
    """The dataset folder cannot be trained on; the message says what is missing."""


@dataclass(frozen=True)
class DomainScan:
    files: tuple[str, ...]  # readable images, sorted
    skipped: tuple[str, ...]  # files that are not images (wrong suffix or unreadable header)
    small: int  # images smaller than the crop (upscaled when loaded)


def scan_domain(folder: Path, crop_size: int) -> DomainScan:
    """List the images of one domain folder, skipping (and counting) non-images."""
    files, skipped, small = [], [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = probe(path) if path.suffix.lower() in IMAGE_SUFFIXES else None
        if size is None:
            skipped.append(str(path))
            continue
        files.append(str(path))
        small += min(size) < crop_size
    return DomainScan(tuple(files), tuple(skipped), small)


def check_dataset(root: str | Path, crop_size: int, split: str = "train") -> tuple[DomainScan, DomainScan]:
    """Both domains of ``root`` for ``split``, or a DataError naming what is wrong."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist")
    scans = []
    for domain in ("A", "B"):
        folder = root / f"{split}{domain}"
        if not folder.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise DataError(
                f"{folder} is missing: a dataset needs {split}A/ and {split}B/ "
                f"(found: {', '.join(present) or 'no folders'})"
            )
        scan = scan_domain(folder, crop_size)
        if not scan.files:
            extra = f" ({len(scan.skipped)} non-image files skipped)" if scan.skipped else ""
            raise DataError(f"{folder} has no readable images{extra}")
        scans.append(scan)
    return scans[0], scans[1]


def check_photos(root: str | Path, crop_size: int) -> DomainScan:
    """The photos a one-domain method trains on (a fast style net): ROOT/trainA when ROOT is a
    dataset, else every image under ROOT. DataError when there are none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"photo folder {root} does not exist")
    folder = root / "trainA" if (root / "trainA").is_dir() else root
    scan = scan_domain(folder, crop_size)
    if not scan.files:
        extra = f" ({len(scan.skipped)} non-image files skipped)" if scan.skipped else ""
        raise DataError(f"{folder} has no readable images{extra}")
    return scan


def _rng(*key: int) -> random.Random:
    # A private generator per sample: independent of worker processes and global state
    # (seeding from a str hashes it with SHA-512, the same in every process).
    return random.Random("/".join(map(str, key)))


def augment(img: Image.Image, cfg: DataConfig, rng: random.Random, train: bool = True) -> torch.Tensor:
    """Resize the shorter side to load_size, crop crop_size (random or centre), maybe flip.

    Returns a float tensor (3, crop, crop) in [-1, 1].
    """
    x = TF.pil_to_tensor(img)  # (3, H, W) uint8
    x = TF.resize(x, cfg.load_size, antialias=True)  # shorter side -> load_size
    h, w = x.shape[-2:]
    c = cfg.crop_size
    if train:
        top, left = rng.randint(0, h - c), rng.randint(0, w - c)
    else:
        top, left = (h - c) // 2, (w - c) // 2
    x = x[:, top : top + c, left : left + c]
    if train and cfg.flip and rng.random() < 0.5:
        x = x.flip(-1)
    return x.float().div_(127.5).sub_(1.0)


class UnpairedDataset(Dataset):
    """Map-style dataset keyed by (epoch, i); returns (a, b) tensors of shape (3, crop, crop).

    With no B files (a one-domain method such as a fast style net) b is an empty tensor.
    """

    def __init__(self, files_a: tuple[str, ...], files_b: tuple[str, ...], cfg: DataConfig,
                 seed: int = 0):
        self.files_a, self.files_b, self.cfg, self.seed = files_a, files_b, cfg, seed

    def __len__(self) -> int:
        return max(len(self.files_a), len(self.files_b))

    def _load(self, files: tuple[str, ...], index: int) -> Image.Image:
        # A file that passed the header scan can still be truncated: use the next one.
        for k in range(len(files)):
            path = files[(index + k) % len(files)]
            try:
                return load_rgb(path)
            except ImageError as exc:
                if k == 0:
                    print(f"raystyle: skipping unreadable image: {exc}", flush=True)
        raise DataError("no image of this domain could be decoded")

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = key
        rng = _rng(self.seed, epoch, i)
        if not self.files_b:
            return augment(self._load(self.files_a, i % len(self.files_a)), self.cfg, rng), torch.zeros(0)
        j = rng.randrange(len(self.files_b))  # B drawn independently of A
        a = augment(self._load(self.files_a, i % len(self.files_a)), self.cfg, rng)
        b = augment(self._load(self.files_b, j), self.cfg, rng)
        return a, b


def steps_per_epoch(n_samples: int, world_size: int, batch_size: int) -> int:
    return math.ceil(math.ceil(n_samples / world_size) / batch_size)


class EpochBatches:
    """Batches of (epoch, i) keys for one rank, from (epoch, batch) onwards, endlessly.

    Like DistributedSampler: a per-epoch permutation (same on all ranks), padded so every
    rank gets ceil(N / world) samples and so the same number of steps (DDP needs that).
    The padding cycles the permutation, so even N < world gives every rank work (a rank
    without samples would leave the others waiting in DDP's all-reduce forever).
    """

    def __init__(self, n: int, world_size: int, rank: int, batch_size: int, seed: int,
                 start_epoch: int = 0, start_batch: int = 0):
        self.n, self.world, self.rank, self.bs, self.seed = n, world_size, rank, batch_size, seed
        self.start_epoch, self.start_batch = start_epoch, start_batch

    def indices(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        padded = math.ceil(self.n / self.world) * self.world
        order = (order * math.ceil(padded / self.n))[:padded]  # cycle to equal shards
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, first = self.start_epoch, self.start_batch
        while True:
            mine = self.indices(epoch)
            for b in range(first, math.ceil(len(mine) / self.bs)):
                yield [(epoch, i) for i in mine[b * self.bs : (b + 1) * self.bs]]
            epoch, first = epoch + 1, 0


# ----------------------------------------------------------------------------------------
# The bundled sample dataset: real photos from scikit-image's wheel (domain A) and other
# crops of them through a painterly filter (domain B). No paintings ship with any package.

SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                 "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg")


def sample_photo_dir() -> Path:
    """The folder of photos inside the installed scikit-image wheel (no import needed)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-image is not installed; `pip install scikit-image` ships the photos")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def painterly(img: Image.Image) -> Image.Image:
    """A cheap "oil painting" look: mode-filter blobs, richer warm colours, flat tones, edges."""
    k = max(3, (min(img.size) // 48) | 1)  # odd brush size that scales with the image
    out = img.filter(ImageFilter.ModeFilter(k)).filter(ImageFilter.SMOOTH_MORE)
    out = ImageEnhance.Color(out).enhance(1.8)
    out = ImageOps.posterize(out, 4)
    warm = Image.new("RGB", out.size, (255, 170, 60))
    out = Image.blend(out, warm, 0.18)
    out = out.filter(ImageFilter.EDGE_ENHANCE_MORE)
    return ImageEnhance.Contrast(out).enhance(1.15)


def _crops(img: Image.Image, n: int, size: int, rng: random.Random) -> list[Image.Image]:
    w, h = img.size
    out = []
    for _ in range(n):
        side = int(min(w, h) * rng.uniform(0.5, 0.95))
        left, top = rng.randint(0, w - side), rng.randint(0, h - side)
        crop = img.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
        out.append(crop)
    return out


SAMPLE_VERSION = 2  # 2: the test split is paired (ground truth for evaluation)


def write_sample_dataset(out: str | Path, size: int = 128, per_photo: int = 4,
                         test_per_photo: int = 2) -> dict[str, int]:
    """Write trainA/trainB/testA/testB PNGs under ``out``; returns the count per folder.

    The train split is unpaired (A and B are different crops). The test split is paired:
    ``testB/X.png`` is the painterly filter applied to ``testA/X.png``, which gives evaluation
    a ground truth; ``raystyle_dataset.json`` says so (``"paired": ["test"]``).
    """
    if size < 32 or size % 4:
        raise DataError(f"--size must be a multiple of 4 and at least 32, got {size}")
    out = Path(out).expanduser()
    counts: dict[str, int] = {}
    rng = random.Random(1234)
    photos = [(Path(n).stem, load_rgb(sample_photo_dir() / n)) for n in SAMPLE_PHOTOS]
    for domain in ("A", "B"):  # unpaired: each domain draws its own crops
        folder = out / f"train{domain}"
        folder.mkdir(parents=True, exist_ok=True)
        counts[folder.name] = 0
        for name, photo in photos:
            for k, crop in enumerate(_crops(photo, per_photo, size, rng)):
                (painterly(crop) if domain == "B" else crop).save(folder / f"{name}_{k}.png")
                counts[folder.name] += 1
    for folder in (out / "testA", out / "testB"):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):  # a version-1 test split had other crops
            old.unlink()
    counts["testA"] = counts["testB"] = 0
    for name, photo in photos:  # paired: the same crop, as a photo and through the filter
        for k, crop in enumerate(_crops(photo, test_per_photo, size, rng)):
            crop.save(out / "testA" / f"{name}_{k}.png")
            painterly(crop).save(out / "testB" / f"{name}_{k}.png")
            counts["testA"] += 1
            counts["testB"] += 1
    info = {"name": "raystyle-sample", "version": SAMPLE_VERSION, "paired": ["test"],
            "domains": {"A": "photos (scikit-image's sample images)",
                        "B": "the same kind of photos through raystyle.data.datasets.painterly"}}
    (out / "raystyle_dataset.json").write_text(json.dumps(info, indent=2) + "\n")
    return counts
