"""Perceptual features: VGG taps by layer name, Gram matrices and the content/style/TV losses.

The one module the optimisation-based and perceptual-loss methods import (Gatys NST, fast
per-style nets, AdaIN); pure torch, no Ray. ``FeatureNet`` is torchvision's ``vgg19`` /
``vgg16`` ``features`` Sequential (same module indices, so torchvision's state dicts load as
they are), cut after the deepest tapped layer, frozen, with the ImageNet normalisation inside:
it takes images in the generators' [-1, 1] range and returns ``{layer name: activation}``.

Weights are resolved in this order: the ``weights`` argument (``--vgg-weights PATH``), the
``RAYSTYLE_VGG_WEIGHTS`` environment variable, torchvision's cache file
(``torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth``, under ``TORCH_HOME``), and last a
download into that cache through torch.hub, checked against the hash in the file name. A file
whose name ends in ``-<hex>.pth`` must have a sha256 starting with that hex; a file without one
is accepted after its keys and shapes are checked (``info["source"]`` says so). A machine that
cannot download gets one FeatureError line saying where to put the file: never a silent
fall-back to other features. ``random`` features need no file: a VGG-19-shaped network with
fixed-seed Kaiming-normal weights (random multi-scale features still capture texture:
Ustyuzhaninov et al., "What does it take to generate natural textures?", ICLR 2017).

The losses are scale-free (each term divided by the energy of its target), so one set of
weights works for VGG and for random features, whose activations differ by orders of
magnitude; Gatys et al.'s absolute weights (1 : 1e3 and the like) only hold for the one
network and normalisation they were tuned on. A trained net's content targets change with
every batch, so its content term is divided by a fixed energy instead (``fixed_energies``,
measured once on the first batch): a per-batch one would change the content weight each step.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raystyle.config import FEATURE_ARCHS, FEATURE_LAYERS, VGG_WEIGHTS_ENV
from raystyle.errors import RaystyleError
from raystyle.util.storage import sha256_file


class FeatureError(RaystyleError):
    """Missing or wrong VGG weights, an image too small for the taps, or a bad layer name."""


# the names, default layers and weights variable, in config.py so the CLI reads them without torch
ARCHS, WEIGHTS_ENV, DEFAULT_LAYERS = FEATURE_ARCHS, VGG_WEIGHTS_ENV, FEATURE_LAYERS
# torchvision's IMAGENET1K_V1 files (torchvision.models.VGG19_Weights / VGG16_Weights); the
# name carries the first hex digits of the file's sha256, as torch.hub checks it.
URLS = {
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
}

# torchvision's vgg cfgs "E" (19) and "D" (16): conv widths per block, "M" a 2x2 max pool.
CFGS = {
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M"),
}
CFGS["random"] = CFGS["vgg19"]
_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics torchvision's VGGs were trained with
_STD = (0.229, 0.224, 0.225)
_HASHED = re.compile(r"-([0-9a-f]{8,64})\.pth?$")  # vgg19-dcbb9e9d.pth
EPS = 1e-8


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise FeatureError(f"features must be one of {', '.join(ARCHS)}, got {arch!r}")


def layer_names(arch: str) -> tuple[str, ...]:
    """Every module's name in torchvision's ``features`` order: conv1_1, relu1_1, conv1_2,
    relu1_2, pool1, conv2_1, ... (index i of the Sequential is name i)."""
    _check_arch(arch)
    names: list[str] = []
    block, conv = 1, 0
    for v in CFGS[arch]:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
    return tuple(names)


def build_features(arch: str, n_modules: int | None = None) -> nn.Sequential:
    """torchvision's ``make_layers(cfg)`` without batch norm, cut after ``n_modules`` modules.
    ReLUs are not in-place: a tapped conv output must not be overwritten by the next ReLU."""
    layers: list[nn.Module] = []
    channels = 3
    for v in CFGS[arch]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(v)
    return nn.Sequential(*layers[:n_modules])


def _expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in build_features(arch).state_dict().items()}


def min_side(arch: str, layers: Sequence[str]) -> int:
    """The smallest input side for which the deepest of ``layers`` still sees 2x2 or more:
    each pool before it halves (floors) the size, so 2 * 2**pools (32 px for relu5_1)."""
    names = layer_names(arch)
    unknown = [name for name in layers if name not in names]
    if unknown:
        raise FeatureError(f"{arch} has no layer {unknown[0]!r} (layers are named like "
                           f"conv1_1, relu1_1, pool1 ... {names[-2]}, {names[-1]})")
    if not layers:
        raise FeatureError("no feature layers were asked for")
    deepest = max(names.index(name) for name in layers)
    return 2 * 2 ** sum(1 for name in names[:deepest] if name.startswith("pool"))


class FeatureNet(nn.Module):
    """Frozen VGG-shaped features; ``forward(x)`` -> ``{layer: activation}`` for ``layers``.

    ``x`` is (B, 3, H, W) in [-1, 1]. ``min_side`` is the smallest input side for which the
    deepest tap still sees at least 2x2 (a Gram matrix of one pixel says little; see
    ``min_side()``); smaller inputs are a FeatureError.
    """

    def __init__(self, arch: str, layers: Sequence[str], state: dict[str, torch.Tensor] | None = None,
                 seed: int = 0):
        super().__init__()
        _check_arch(arch)
        names = layer_names(arch)
        layers = tuple(dict.fromkeys(layers))  # unique, order kept
        self.min_side = min_side(arch, layers)
        if arch == "random" and state is not None:
            raise FeatureError("random features take no weights (drop --vgg-weights or use vgg19/vgg16)")
        if arch != "random" and state is None:
            raise FeatureError(f"{arch} features need weights: use load_features({arch!r}, ...)")
        self.arch, self.layers = arch, layers
        self.info: dict[str, Any] = {"arch": arch, "source": f"random, seed {seed}" if state is None
                                     else "state dict", "path": None, "sha256": None}
        self._index = {names.index(name): name for name in layers}
        deepest = max(self._index)
        self.features = build_features(arch, deepest + 1)
        if state is None:  # random: fixed-seed Kaiming-normal convs (fan-in, ReLU gain)
            gen = torch.Generator().manual_seed(seed)
            for m in self.features:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
                    nn.init.zeros_(m.bias)
        else:
            own = self.features.state_dict()
            self.features.load_state_dict({k: state[k] for k in own})
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureNet:
        return super().train(False)  # always eval: frozen features

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        if min(h, w) < self.min_side:
            raise FeatureError(f"image of {w}x{h} is too small for {self.arch} features up to "
                               f"{self._index[max(self._index)]}: at least {self.min_side} px a side")
        x = ((x + 1) / 2 - self.mean) / self.std  # (B, 3, H, W) [-1, 1] -> ImageNet-normalised
        out: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.features):
            x = module(x)  # (B, C_i, H / 2**pools, W / 2**pools)
            if i in self._index:
                out[self._index[i]] = x
        return out


# -- weights ----------------------------------------------------------------------------
def _file_name(arch: str) -> str:
    return URLS[arch].rsplit("/", 1)[-1]


def cache_path(arch: str) -> Path:
    """Where torchvision keeps (and torch.hub downloads) the weights file."""
    _check_arch(arch)
    if arch == "random":
        raise FeatureError("random features have no weights file")
    return Path(torch.hub.get_dir()) / "checkpoints" / _file_name(arch)


def _download(arch: str, progress: bool) -> None:
    """torch.hub's own download (what torchvision's ``get_state_dict`` does) into its cache."""
    url, dest = URLS[arch], cache_path(arch)
    expected = _HASHED.search(dest.name)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dest), expected.group(1) if expected else None,
                                       progress=progress)
    except Exception as exc:  # URLError, OSError, hash RuntimeError, ...: all one line
        reason = " ".join(str(getattr(exc, "reason", None) or exc or type(exc).__name__).split())
        raise FeatureError(
            f"{arch} weights are not on this machine and the download of {url} failed ({reason}): "
            f"put {_file_name(arch)} at {dest} (or any path with --vgg-weights PATH / {WEIGHTS_ENV}=PATH), "
            "or use --features random") from None


def _read_state(arch: str, path: Path) -> dict[str, torch.Tensor]:
    """A weights file -> the features state dict; one-line FeatureError when it is not one."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:160]
        raise FeatureError(f"{path}: cannot read {arch} weights ({type(exc).__name__}: {reason})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise FeatureError(f"{path}: not a state dict of tensors (a torchvision {arch} .pth is expected)")
    if any(str(k).startswith("features.") for k in raw):  # a whole torchvision model: keep features
        raw = {k[len("features."):]: v for k, v in raw.items() if k.startswith("features.")}
    expected = _expected_shapes(arch)
    missing = [k for k in expected if k not in raw]
    if missing:
        raise FeatureError(f"{path}: not {arch} weights: {len(missing)} of {len(expected)} features "
                           f"tensors are missing (first: {missing[0]})")
    for key, shape in expected.items():
        if tuple(raw[key].shape) != shape:
            raise FeatureError(f"{path}: not {arch} weights: {key} has shape "
                               f"{tuple(raw[key].shape)}, {arch} needs {shape}")
    return {k: raw[k].float() for k in expected}


def vgg_state(arch: str, weights: str | Path | None = None, *, progress: bool = True
              ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(features-only state dict, info {"arch", "source", "path", "sha256"}) for vgg19/vgg16.

    ``sha256`` is the first 16 hex digits of the file's sha256. See the module docstring for
    the resolution order; every failure is a one-line FeatureError.
    """
    _check_arch(arch)
    if arch == "random":
        raise FeatureError("random features take no weights (drop --vgg-weights or use vgg19/vgg16)")
    if weights is not None and str(weights) != "":
        path, source = Path(weights).expanduser(), "--vgg-weights"
    elif os.environ.get(WEIGHTS_ENV):
        path, source = Path(os.environ[WEIGHTS_ENV]).expanduser(), WEIGHTS_ENV
    else:
        path, source = cache_path(arch), "torchvision cache"
        if not path.is_file():
            _download(arch, progress)
            source = f"downloaded from {URLS[arch]}"
    if not path.is_file():
        where = "is a folder" if path.is_dir() else "does not exist"
        raise FeatureError(f"{arch} weights {path} ({source}) {where}; give a torchvision "
                           f"{_file_name(arch)} file, or use --features random")
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise FeatureError(f"{path}: cannot read {arch} weights ({exc.strerror or exc})") from None
    named = _HASHED.search(path.name)
    if named and not digest.startswith(named.group(1)):
        raise FeatureError(f"{path}: sha256 starts {digest[:len(named.group(1))]}, but the name "
                           f"says {named.group(1)}: a damaged or different file; download it again")
    state = _read_state(arch, path)
    check = "hash checked" if named else "no hash in the name: keys and shapes checked"
    info = {"arch": arch, "source": f"{source} ({check})", "path": str(path), "sha256": digest[:16]}
    return state, info


def load_features(arch: str, layers: Sequence[str], weights: str | Path | None = None, *,
                  seed: int = 0, progress: bool = True) -> FeatureNet:
    """A FeatureNet tapping ``layers``: VGG weights resolved by ``vgg_state``, or random ones.
    The net's ``info`` attribute holds vgg_state's info (random: the seed, no file)."""
    _check_arch(arch)
    if arch == "random":
        if weights is not None and str(weights) != "":
            raise FeatureError("random features take no weights (drop --vgg-weights or use vgg19/vgg16)")
        return FeatureNet(arch, layers, seed=seed)
    state, info = vgg_state(arch, weights, progress=progress)
    net = FeatureNet(arch, layers, state)
    net.info = info
    return net


# -- losses -----------------------------------------------------------------------------
def gram(f: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C): F F^T / (C H W), F the (C, H*W) feature matrix.

    Always in fp32, also under autocast: a sum over H*W products overflows fp16 (inf at
    relu1_1 of a 256 px image) and loses most of its digits in bf16.
    """
    b, c, h, w = f.shape
    with torch.autocast(f.device.type, enabled=False):
        flat = f.float().reshape(b, c, h * w)  # (B, C, HW)
        return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)  # (B, C, C)


def content_loss(feats: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                 energies: dict[str, float] | None = None) -> torch.Tensor:
    """Sum over the layers in ``targets``; each divided by its target's energy (scale-free), or
    by the fixed ``energies[layer]`` when given (a trained net's: see ``fixed_energies``)."""
    # L_content = sum_l mean((F_l - P_l)^2) / (E_l + eps),  E_l = mean(P_l^2) or the fixed one
    terms = [((feats[k] - t) ** 2).mean() / (((t ** 2).mean() if energies is None else energies[k]) + EPS)
             for k, t in targets.items()]
    return torch.stack(terms).sum()


def fixed_energies(targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """mean(t^2) of each target in fp32, averaged over the ranks when torch.distributed runs
    (every rank must call it at the same step): a content normaliser computed once, on the
    first batch, and kept, so the content weight of a trained net is one constant instead of
    changing with every batch's energy (raystyle.methods.fast, raystyle.methods.adain)."""
    import torch.distributed as dist

    keys = list(targets)
    e = torch.stack([targets[k].detach().float().pow(2).mean() for k in keys])  # (L,)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(e)
        e = e / dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, e.tolist(), strict=True)}


def style_loss(feats: dict[str, torch.Tensor], target_grams: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over the layers in ``target_grams`` ((1, C, C), broadcast over the batch)."""
    # L_style = mean_l mean((G(F_l) - A_l)^2) / (mean(A_l^2) + eps),  G(F) = F F^T / (C H W)
    terms = [((gram(feats[k]) - g) ** 2).mean() / ((g ** 2).mean() + EPS)
             for k, g in target_grams.items()]
    return torch.stack(terms).mean()


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Total variation: mean |difference| of vertically and of horizontally neighbouring pixels."""
    # L_tv = (mean|x[i+1,j] - x[i,j]| + mean|x[i,j+1] - x[i,j]|) / 2
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return (dh + dw) / 2
