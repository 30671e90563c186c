"""Quality figures that need no downloaded network: pure torch (+ scikit-image's SSIM), no Ray.

Held-out images (``testA``/``testB``, or a share of train held back when a dataset has no test
split) are divided once more, by a hash of each file's name, into a **selection** split and a
**reporting** split that never share a file (``divide``): training validates, and ``--best``
ranks checkpoints, on the selection split only; ``raystyle evaluate`` and every figure the docs
report use the reporting split, so a reported gain is not the best of many noisy draws on the
same images. The held-out images are prepared the way training sees them at the centre: the shorter side resized to
``data.load_size``, then a centre crop of ``data.crop_size``. On them a ``Validator`` measures
a pair of generators:

- ``val_cycle_psnr``    PSNR(G_ba(G_ab(a)), a) in dB: content survives the round trip
- ``val_colour_distance``  ||mean - mean_B|| + ||std - std_B|| of G_ab(A)'s RGB (0..255) vs held-out B
- ``val_content_ssim``  SSIM of the luminance of a and G_ab(a): structure kept (1 = identical)
- ``val_domain_score``  mean probability a domain classifier (below) gives G_ab(a) of being B
- ``val_kid_el0``, ``val_fid_el0``  KID and FID of G_ab(A) against held-out B on EfficientNet-Lite0
  ImageNet features (raystyle.quality: offline, checked by hash; not Inception's FID)
- ``val_gt_psnr``       PSNR(G_ab(a), b) where the dataset pairs its held-out A and B
  (``raystyle_dataset.json``: ``{"paired": ["test"]}``, as the bundled sample data does), and
  ``val_gt_gain_db``, its gain over the identity (PSNR(a, b))

The domain classifier is a small CNN trained on trainA vs trainB at the same scale; its
held-out accuracy is measured, and below ``MIN_ACCURACY`` it is not used (a score from a
classifier that cannot tell the domains apart means nothing). It is cached per dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from raystyle import quality as pretrained
from raystyle.config import DataConfig
from raystyle.data.datasets import augment, scan_domain
from raystyle.data.images import ImageError, load_rgb
from raystyle.errors import RaystyleError
from raystyle.runlog import metric_order as order  # noqa: F401  (max or min, per metric)
from raystyle.util.storage import write_local_atomic

DATASET_INFO = "raystyle_dataset.json"
MIN_ACCURACY = 0.85  # held-out accuracy below which the domain score is not reported
CLASSIFIER_VERSION = 1



class QualityError(RaystyleError):
    """A quality figure cannot be computed as asked (no held-out images, a weak classifier)."""


def dataset_info(root: str | Path) -> dict[str, Any]:
    """``ROOT/raystyle_dataset.json`` ({} when absent or unreadable)."""
    try:
        info = json.loads((Path(root).expanduser() / DATASET_INFO).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def is_paired(root: str | Path, split: str = "test") -> bool:
    """Does the dataset say its ``split`` pairs each B image with the A image of the same name?"""
    paired = dataset_info(root).get("paired", [])
    return isinstance(paired, list) and split in paired


# ---------------------------------------------------------------------------------------
# Held-out images


def hold_back(files: Sequence[str], fraction: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, held-out): every file whose name hashes below ``fraction`` is held out.

    A file's side depends on its own name only (stable as a folder grows, once it has enough
    files for ``fraction`` to hold one back), and there is at least one image on each side
    when there are two or more (two held out from three on, so the selection and reporting
    splits get one each); a folder of one keeps it for training.
    """
    def h(path: str) -> float:
        return int(hashlib.sha256(Path(path).name.encode()).hexdigest()[:8], 16) / 2**32

    if len(files) < 2 or fraction <= 0:
        return tuple(files), ()  # nothing can be spared
    held = [f for f in files if h(f) < fraction]
    need = 2 if len(files) >= 3 else 1  # two: one to select checkpoints on, one to report (divide)
    if len(held) < need:  # small folders: the lowest hashes (adding files can then move them back)
        held = sorted(files, key=h)[:need]
    if len(held) == len(files):
        held = held[:-1]
    keep = [f for f in files if f not in set(held)]
    return tuple(keep), tuple(held)


SELECT_SHARE = 0.5  # of the held-out images, the share that selects checkpoints


def _name_hash(key: str, salt: str) -> float:
    return int(hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()[:8], 16) / 2**32


def divide(files: Sequence[str], share: float = SELECT_SHARE, key: Callable[[str], str] | None = None
           ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(selection, reporting): held-out ``files`` divided by a hash of ``key(file)`` (the file's
    stem by default, so paired A and B images of one name fall on the same side), independent of
    ``hold_back``'s. Both sides get at least one file when there are two or more; one file is
    reported (and nothing selects)."""
    key = key or (lambda f: Path(f).stem)
    if len(files) < 2:
        return (), tuple(files)
    select = [f for f in files if _name_hash(key(f), "select") < share]
    if not select:
        select = [min(files, key=lambda f: _name_hash(key(f), "select"))]
    if len(select) == len(files):
        select = [max(files, key=lambda f: _name_hash(key(f), "select"))]
        select = [f for f in files if f not in select]
    chosen = set(select)
    return tuple(select), tuple(f for f in files if f not in chosen)


def centre_tensor(path: str | Path, cfg: DataConfig) -> torch.Tensor:
    """(3, crop, crop) in [-1, 1]: shorter side -> load_size, centre crop (no randomness)."""
    return augment(load_rgb(path), cfg, random.Random(0), train=False)


@dataclass
class HeldOut:
    a: torch.Tensor  # (N, 3, C, C) in [-1, 1]
    b: torch.Tensor  # (M, 3, C, C)
    gt_b: torch.Tensor | None  # (N, 3, C, C): the B image paired with each a, or None
    names: tuple[str, ...]  # file names of a

    @classmethod
    def from_files(cls, files_a: Sequence[str], files_b: Sequence[str], cfg: DataConfig,
                   limit: int, paired: bool = False) -> HeldOut:
        """Up to ``limit`` images per domain. ``paired``: B files are matched to A by file stem."""
        files_a = list(files_a)[:limit]
        if not files_a or not files_b:
            raise QualityError("validation needs held-out images in both domains")
        a = torch.stack([centre_tensor(f, cfg) for f in files_a])
        gt = None
        if paired:
            by_stem = {Path(f).stem: f for f in files_b}
            missing = [Path(f).name for f in files_a if Path(f).stem not in by_stem]
            if missing:
                raise QualityError(f"paired split: no B image named like {missing[0]}")
            gt = torch.stack([centre_tensor(by_stem[Path(f).stem], cfg) for f in files_a])
            b = gt
        else:
            b = torch.stack([centre_tensor(f, cfg) for f in list(files_b)[:limit]])
        return cls(a, b, gt, tuple(Path(f).name for f in files_a))


# ---------------------------------------------------------------------------------------
# Figures


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (N, 3, H, W) tensors in [-1, 1] (peak 1 after mapping to [0, 1])."""
    mse = ((x - y) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def colour_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per RGB channel of (N, 3, H, W) in [-1, 1], on the 0..255 scale."""
    pixels = ((x + 1) * 127.5).clamp(0, 255).transpose(0, 1).flatten(1)  # (3, N*H*W)
    return pixels.mean(1), pixels.std(1)


def colour_distance(x: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor]) -> float:
    mean, std = colour_stats(x)
    return float((mean - ref[0]).norm() + (std - ref[1]).norm())


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) in [0, 1]: ITU-R BT.601 luma of (N, 3, H, W) in [-1, 1]."""
    rgb = (x.clamp(-1, 1) + 1) / 2
    return 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]


def content_ssim(x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per-image SSIM of the luminance of x and y (Wang et al. 2004: Gaussian window, sigma 1.5)."""
    from skimage.metrics import structural_similarity

    lx, ly = luminance(x).double().numpy(), luminance(y).double().numpy()  # 11x11 window: >= 11 px
    return [float(structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False))
            for a, b in zip(lx, ly, strict=True)]


# ---------------------------------------------------------------------------------------
# The domain classifier


class DomainClassifier(nn.Module):
    """A small CNN: (N, 3, H, W) in [-1, 1] -> (N,) logit that the image is from domain B.

    Global average pooling makes it size-agnostic; four 3x3 convs see ~30 px neighbourhoods,
    enough for brush texture and palette, too little to memorise whole scenes.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        c = width
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),  # (N, c, H/2, W/2)
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),  # (N, 2c, H/4, W/4)
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),  # (N, 4c, H/8, W/8)
            nn.Conv2d(4 * c, 4 * c, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
        )
        self.head = nn.Linear(4 * c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3))).squeeze(1)  # (N,)

    @torch.no_grad()
    def prob_b(self, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
        was = self.training
        self.eval()
        out = torch.cat([torch.sigmoid(self(x[i:i + batch])) for i in range(0, len(x), batch)])
        self.train(was)
        return out


@dataclass
class Classifier:
    net: DomainClassifier
    accuracy: float  # on the held-out images of both domains
    held_out: int  # how many images that accuracy is measured on
    train_images: tuple[int, int]
    seconds: float
    cached: bool = False

    @property
    def usable(self) -> bool:
        return self.accuracy >= MIN_ACCURACY

    def describe(self) -> str:
        where = "cached" if self.cached else f"trained in {self.seconds:.0f} s"
        return (f"domain classifier: held-out accuracy {100 * self.accuracy:.1f}% on {self.held_out} "
                f"images ({where}; {self.train_images[0]}+{self.train_images[1]} training images)")

    def state(self) -> dict[str, Any]:
        """Plain tensors and numbers (travels to Ray workers, saved with weights_only loads)."""
        return {"version": CLASSIFIER_VERSION, "net": self.net.state_dict(), "accuracy": self.accuracy,
                "held_out": self.held_out, "train_images": list(self.train_images),
                "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any], cached: bool = False) -> Classifier:
        with torch.random.fork_rng(devices=[]):  # building a net draws from the global RNG:
            net = DomainClassifier()  # in a training worker that would shift its dropout masks
        net.load_state_dict(state["net"])
        return cls(net.eval(), float(state["accuracy"]), int(state["held_out"]),
                   tuple(state["train_images"]), float(state["seconds"]), cached)


def _load_resized(files: Sequence[str], cfg: DataConfig) -> list[torch.Tensor]:
    """uint8 (3, H, W) tensors, shorter side at load_size (decoded once, cropped per step)."""
    out = []
    for f in files:
        try:
            out.append(TF.resize(TF.pil_to_tensor(load_rgb(f)), cfg.load_size, antialias=True))
        except ImageError:
            continue
    return out


def train_classifier(train_a: Sequence[str], train_b: Sequence[str], held_a: Sequence[str],
                     held_b: Sequence[str], cfg: DataConfig, *, steps: int = 300, batch: int = 32,
                     max_images: int = 400, seed: int = 0,
                     progress: Callable[[str], None] | None = None) -> Classifier:
    """Train the domain classifier on random crops of train A (label 0) vs train B (label 1)."""
    # Its own RNG stream (the caller's global one is left as it was) and gradients on even
    # when called under no_grad (evaluate).
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        return _train_classifier(train_a, train_b, held_a, held_b, cfg, steps, batch, max_images,
                                 seed, progress)


def _train_classifier(train_a, train_b, held_a, held_b, cfg, steps, batch, max_images, seed,
                      progress) -> Classifier:
    start = time.perf_counter()
    rng = random.Random(seed)
    picks = [sorted(rng.sample(list(f), min(len(f), max_images))) for f in (train_a, train_b)]
    imgs = [_load_resized(f, cfg) for f in picks]
    if not imgs[0] or not imgs[1]:
        raise QualityError("the domain classifier needs training images in both domains")
    torch.manual_seed(seed)
    net = DomainClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    c = cfg.crop_size
    for step in range(steps):
        xs, ys = [], []
        for k in range(batch):
            label = k % 2
            img = imgs[label][rng.randrange(len(imgs[label]))]
            h, w = img.shape[-2:]
            top, left = rng.randint(0, h - c), rng.randint(0, w - c)
            x = img[:, top:top + c, left:left + c]
            xs.append(x.flip(-1) if rng.random() < 0.5 else x)
            ys.append(float(label))
        x = torch.stack(xs).float().div(127.5).sub(1)
        loss = nn.functional.binary_cross_entropy_with_logits(net(x), torch.tensor(ys))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and (step + 1) % 100 == 0:
            progress(f"domain classifier: step {step + 1}/{steps}, loss {float(loss.detach()):.3f}")
    net.eval()
    ha = torch.stack([centre_tensor(f, cfg) for f in held_a]) if held_a else torch.empty(0, 3, c, c)
    hb = torch.stack([centre_tensor(f, cfg) for f in held_b]) if held_b else torch.empty(0, 3, c, c)
    right = int((net.prob_b(ha) < 0.5).sum()) + int((net.prob_b(hb) >= 0.5).sum())
    n = len(ha) + len(hb)
    if n == 0:
        raise QualityError("the domain classifier needs held-out images to measure its accuracy")
    return Classifier(net, right / n, n, (len(imgs[0]), len(imgs[1])), time.perf_counter() - start)


def cache_dir() -> Path:
    """$RAYSTYLE_CACHE, else $XDG_CACHE_HOME/raystyle, else ~/.cache/raystyle."""
    env = os.environ.get("RAYSTYLE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "raystyle"


def _cache_key(files: Sequence[Sequence[str]], cfg: DataConfig) -> str:
    h = hashlib.sha256(f"v{CLASSIFIER_VERSION} {cfg.load_size} {cfg.crop_size}".encode())
    for group in files:
        h.update(b"|")
        for f in sorted(group):
            st = os.stat(f)
            h.update(f"{Path(f).name}:{st.st_size}:{int(st.st_mtime)};".encode())
    return h.hexdigest()[:24]


def get_classifier(train_a: Sequence[str], train_b: Sequence[str], held_a: Sequence[str],
                   held_b: Sequence[str], cfg: DataConfig, *, cache: Path | None = None,
                   progress: Callable[[str], None] | None = None) -> Classifier:
    """The dataset's classifier from the cache, or trained now and cached (keyed by the files'
    names, sizes and times, and the scale)."""
    folder = cache or cache_dir() / "classifiers"
    path = folder / f"{_cache_key([train_a, train_b, held_a, held_b], cfg)}.pt"
    if path.is_file():
        try:
            return Classifier.from_state(torch.load(path, weights_only=True), cached=True)
        except Exception:  # an old or damaged cache file is retrained, not trusted
            path.unlink(missing_ok=True)
    clf = train_classifier(train_a, train_b, held_a, held_b, cfg, progress=progress)
    try:  # a fresh temporary name, created exclusively, renamed
        write_local_atomic(path, lambda f: torch.save(clf.state(), f))
    except OSError as exc:  # a read-only home on a cluster node: use it uncached
        if progress:
            progress(f"domain classifier not cached ({exc.__class__.__name__}: {folder}); "
                     "set RAYSTYLE_CACHE to a writable folder")
    return clf


# ---------------------------------------------------------------------------------------
# The validator


@contextlib.contextmanager
def _eval_mode(*nets: nn.Module | None) -> Iterator[None]:
    """The nets in eval mode for the block (batch-norm statistics, dropout), then as they were."""
    live = [n for n in nets if n is not None]
    modes = [n.training for n in live]
    for n in live:
        n.eval()
    try:
        yield
    finally:
        for n, m in zip(live, modes, strict=True):
            n.train(m)


class Validator:
    """Held-out figures of a generator pair; no randomness, no state kept between calls."""

    def __init__(self, heldout: HeldOut, classifier: Classifier | None = None, batch: int = 8,
                 realism: bool = True):
        self.h, self.batch = heldout, batch
        self.classifier = classifier if classifier is not None and classifier.usable else None
        self.ref_b = colour_stats(heldout.b)
        self.identity_gt = psnr(heldout.a, heldout.gt_b).mean() if heldout.gt_b is not None else None
        self.realism = realism and len(heldout.a) >= 3 and len(heldout.b) >= 3  # KID needs 3 a side
        self._features_b: pretrained.Features | None = None
        self._features_a: pretrained.Features | None = None

    def realism_figures(self, fake: torch.Tensor, target: str = "b") -> dict[str, float]:
        """KID-EL0 (with its standard error) and FID-EL0 of ``fake`` against the held-out
        images of domain ``target`` (their features computed once)."""
        if not self.realism:
            return {}
        if target == "b":
            self._features_b = self._features_b or pretrained.features(self.h.b)
            ref = self._features_b
        else:
            self._features_a = self._features_a or pretrained.features(self.h.a)
            ref = self._features_a
        f = pretrained.features(fake)
        # a paired split: fake[i] and its ground truth b[i] share their content (pairs left out)
        paired = target == "b" and self.h.gt_b is not None and len(fake) == len(self.h.b)
        k = pretrained.kid(f, ref, paired=paired)
        return {"val_kid_el0": round(k.value, 6), "val_kid_el0_se": round(k.se, 6),
                "val_fid_el0": round(pretrained.fid(f, ref), 3)}

    def _run(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        device = next(net.parameters()).device
        return torch.cat([net(x[i:i + self.batch].to(device)).float().cpu()
                          for i in range(0, len(x), self.batch)])

    @torch.no_grad()
    def translate(self, g_ab: nn.Module, g_ba: nn.Module | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """G_ab(a) and G_ba(G_ab(a)) in eval mode (batch-norm statistics and dropout untouched)."""
        with _eval_mode(g_ab, g_ba):
            fake = self._run(g_ab, self.h.a)
            rec = self._run(g_ba, fake) if g_ba is not None else None
        return fake, rec

    def measure(self, fake: torch.Tensor, rec: torch.Tensor | None = None) -> dict[str, float]:
        """The figures for translations ``fake`` of the held-out A images (and their cycle)."""
        h = self.h
        out = {"val_colour_distance": round(colour_distance(fake, self.ref_b), 4),
               "val_content_ssim": round(sum(content_ssim(h.a, fake)) / len(fake), 5)}
        if rec is not None:
            out["val_cycle_psnr"] = round(float(psnr(rec, h.a).mean()), 4)
        if self.classifier is not None:
            share = float(self.classifier.net.prob_b(fake).mean())  # mean probability, not a count
            out["val_domain_score"] = round(share, 5)
            # both at once: painting every photo the same scores 0 on content
            out["val_domain_content"] = round(math.sqrt(share * max(out["val_content_ssim"], 0.0)), 5)
        out.update(self.realism_figures(fake))
        if h.gt_b is not None:
            gt = float(psnr(fake, h.gt_b).mean())
            out["val_gt_psnr"] = round(gt, 4)
            out["val_gt_gain_db"] = round(gt - float(self.identity_gt), 4)
        return out

    def __call__(self, g_ab: nn.Module, g_ba: nn.Module | None = None) -> dict[str, float]:
        start = time.perf_counter()
        out = self.measure(*self.translate(g_ab, g_ba))
        out["val_time_s"] = round(time.perf_counter() - start, 4)
        return out


    @torch.no_grad()
    def agreement(self, student: nn.Module, teacher: nn.Module, source: str = "a") -> dict[str, float]:
        """How close a distilled student is to its teacher on the held-out images of its
        source domain: mean PSNR (RGB, dB) and mean luminance SSIM of student vs teacher."""
        start = time.perf_counter()
        x = self.h.a if source == "a" else self.h.b
        with _eval_mode(student, teacher):
            s, t = self._run(student, x), self._run(teacher, x)
        return {"val_teacher_psnr": round(float(psnr(s, t).mean()), 4),
                "val_teacher_ssim": round(sum(content_ssim(t, s)) / len(s), 5),
                **self.realism_figures(s, "b" if source == "a" else "a"),  # realism beside agreement
                "val_time_s": round(time.perf_counter() - start, 4)}


def metrics_available(paired: bool, classifier: Classifier | None) -> list[str]:
    """The figures a Validator reports for such a dataset and classifier."""
    names = ["val_colour_distance", "val_content_ssim", "val_cycle_psnr", "val_kid_el0", "val_fid_el0"]
    if classifier is not None and classifier.usable:
        names += ["val_domain_score", "val_domain_content"]
    if paired:
        names += ["val_gt_psnr", "val_gt_gain_db"]
    return names


def auto_metric(paired: bool, classifier: Classifier | None) -> str | None:
    """The metric ``best_metric: auto`` means: ground truth where there is one, else the domain
    score with content, else none (checkpoints are then kept newest first)."""
    if paired:
        return "val_gt_psnr"
    if classifier is not None and classifier.usable:
        return "val_domain_content"
    return None


@dataclass(frozen=True)
class Split:
    train_a: tuple[str, ...]
    train_b: tuple[str, ...]
    held_a: tuple[str, ...]
    held_b: tuple[str, ...]
    paired: bool  # held_b[i] is the ground truth of the held_a image with the same name
    source: str  # "test" (testA/testB) or "held-back train"

    def part(self, which: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(A files, B files) of ``which``: "selection" or "report" (``divide``; paired B files
        follow their A file's stem), "held-out" (both) or "train"."""
        if which == "train":
            return self.train_a, self.train_b
        if which == "held-out":
            return self.held_a, self.held_b
        if which not in ("selection", "report"):
            raise ValueError(f"no split {which!r}: selection, report, held-out or train")
        side = 0 if which == "selection" else 1
        a = divide(self.held_a)[side]
        if self.paired:
            stems = {Path(f).stem for f in a}
            b = tuple(f for f in self.held_b if Path(f).stem in stems)
        else:
            b = divide(self.held_b)[side]
        return a, b


def split_dataset(root: str | Path, crop_size: int, holdout: float,
                  train: tuple[Sequence[str], Sequence[str]] | None = None) -> Split:
    """The training and held-out images of a dataset folder (``train``: its train files, when
    already scanned).

    testA/testB when both exist with images; else ``holdout`` of each train folder held back
    (those images are then not trained on).
    """
    root = Path(root).expanduser()
    if train is None:
        train = (scan_domain(root / "trainA", crop_size).files, scan_domain(root / "trainB", crop_size).files)
    train_a, train_b = tuple(train[0]), tuple(train[1])
    if (root / "testA").is_dir() and (root / "testB").is_dir():
        test_a = scan_domain(root / "testA", 0).files
        test_b = scan_domain(root / "testB", 0).files
        if test_a and test_b:
            return Split(train_a, train_b, test_a, test_b, is_paired(root, "test"), "test")
    if holdout <= 0:
        raise QualityError(f"{root} has no testA/testB and no share of train is held back "
                        f"(train.val_holdout is 0): nothing to validate on")
    train_a, held_a = hold_back(train_a, holdout)
    train_b, held_b = hold_back(train_b, holdout)
    if not held_a or not held_b:
        raise QualityError(f"{root} has no testA/testB and too few train images to hold any back")
    return Split(train_a, train_b, held_a, held_b, False, "held-back train")
