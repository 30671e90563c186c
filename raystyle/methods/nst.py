"""Gatys neural style transfer: optimise one image's pixels (no training).

Gatys, Ecker & Bethge, "Image Style Transfer Using Convolutional Neural Networks" (CVPR 2016):
start from the content image (or noise) and minimise, over the pixels x,

    w_c * L_content(x, content) + w_s * L_style(x, style) + w_tv * L_tv(x)

with the perceptual features of raystyle.core.perceptual (VGG-19 relu4_2 for content, relu1_1 ...
relu5_1 Grams for style; or random features). The image lives in the nets' [-1, 1] range and
is clamped to it after every step (a projection). L-BFGS (one iteration per step, its history
kept across steps) or Adam. L-BFGS remembers the step it took (s = t d) to pair it with the
change of the gradient (y); where the clamp moved a saturated pixel back, the step actually
taken differs, and a pair (t d, y) describes a move that never happened. So after each clamp
its last direction is set to the step actually taken (``TRUE_STEPS``): every pair is a true
secant pair of the loss. (Clipping only at the end, as Gatys et al.'s and jcjohnson's code
do, measured worse here: the unconstrained iterate leans on out-of-range pixels and the final
clip costs more than it gained; a tanh reparametrisation left saturated pixels stuck.) Adam
keeps the plain projection: it stores moments of gradients, not iterate differences.

Outputs larger than ``MULTISCALE_ABOVE`` px go coarse to fine: the first scale near 256 px,
each next one double the size, started from the previous result upsampled; the steps are
split evenly over the scales (the remainder to the finest ones). Pure torch, no Ray:
``run_nst`` is what `raystyle nst` (raystyle.cli.nst) and the batch job (``raystyle batch --nst``)
both call.

``preserve_color`` follows Gatys et al., "Preserving Color in Neural Artistic Style Transfer"
(2017; raystyle.data.colour): ``luminance`` (the default of ``True``) optimises on luminance
images, the style's luminance matched to the content's mean and std, and puts the result's
luminance on the content's chroma; ``histogram`` matches the style image's colour mean and
covariance to the content's before the transfer; ``swap`` is the old swap after the fact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from raystyle.config import FEATURE_ARCHS as ARCHS
from raystyle.config import FEATURE_LAYERS as DEFAULT_LAYERS
from raystyle.errors import RaystyleError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from raystyle.core.perceptual import FeatureNet

# torch, numpy, PIL and raystyle.core.perceptual are imported where they are used: the CLI imports
# this module for its parser, and `raystyle stylize` / `styles` must not pay torch's start-up.

MULTIPLE = 4  # output sides are rounded to a multiple of this
MULTISCALE_ABOVE = 512  # larger outputs are optimised coarse to fine
COARSEST = 256  # about the longer side of the first scale then
OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise")
# After the clamp, L-BFGS's memory gets the step actually taken (see the module docstring).
# False: the step before the clamp, as raystyle did before; kept so a test can measure both.
TRUE_STEPS = True


class NSTError(RaystyleError):
    """Bad style-transfer options or images (steps, size, weights, a too small image)."""


@dataclass(frozen=True)
class NSTOptions:
    """Everything one style transfer needs besides the two images. Loss weights apply to the
    scale-free losses of raystyle.core.perceptual (see there), so they hold for any features."""

    size: int = 512  # the output's longer side (px)
    steps: int = 300  # optimiser steps over all scales
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    lr: float | None = None  # None: 1 for L-BFGS, 0.02 for Adam (the image is in [-1, 1])
    content_weight: float = 1.0
    style_weight: float = 10.0
    tv_weight: float = 0.5
    init: Literal["content", "noise"] = "content"
    features: str = "vgg19"  # vgg19 | vgg16 | random
    vgg_weights: str | None = None  # None: $RAYSTYLE_VGG_WEIGHTS, torchvision's cache, download
    # the content's colours (raystyle.data.colour): None (off), "luminance" (True), "histogram",
    # "swap"; normalised to None or a mode
    preserve_color: bool | str | None = None
    scales: int | None = None  # None: 1 up to MULTISCALE_ABOVE px, else coarse to fine from ~256
    seed: int = 0  # noise init and random features
    device: str = "auto"  # auto: CUDA when available, else CPU

    def __post_init__(self) -> None:
        from raystyle.data.colour import ColourError, colour_mode

        try:
            object.__setattr__(self, "preserve_color", colour_mode(self.preserve_color))
        except ColourError as exc:
            raise NSTError(f"--{exc}".replace("preserve_color", "preserve-color", 1)) from None
        if self.steps < 1:
            raise NSTError(f"--steps must be at least 1, got {self.steps}")
        if self.size < 16:
            raise NSTError(f"--size must be at least 16 px, got {self.size}")
        if self.optimizer not in OPTIMIZERS:
            raise NSTError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.init not in INITS:
            raise NSTError(f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.features not in ARCHS:
            raise NSTError(f"--features must be one of {', '.join(ARCHS)}, got {self.features!r}")
        if self.features == "random" and self.vgg_weights:
            raise NSTError("--vgg-weights does not go with --features random (random features take no file)")
        for name in ("content_weight", "style_weight", "tv_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise NSTError(f"--{name.replace('_', '-')} must be a number >= 0, got {value}")
        if self.content_weight == self.style_weight == 0:
            raise NSTError("--content-weight and --style-weight are both 0: nothing to optimise")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise NSTError(f"--lr must be a number > 0, got {self.lr}")
        if self.scales is not None and not 1 <= self.scales <= 8:
            raise NSTError(f"--scales must be between 1 and 8, got {self.scales}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise NSTError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    @property
    def layers(self) -> dict[str, tuple[str, ...]]:
        return DEFAULT_LAYERS[self.features]

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1.0 if self.optimizer == "lbfgs" else 0.02)

    def scale_sides(self) -> list[int]:
        """The longer side of each scale, coarse to fine (the last is ``size``)."""
        n = self.scales or (1 if self.size <= MULTISCALE_ABOVE
                            else 1 + int(math.log2(self.size / COARSEST)))
        return [max(MULTIPLE, round(self.size / 2 ** (n - 1 - i))) for i in range(n)]

    def steps_per_scale(self) -> list[int]:
        """``steps`` split evenly over the scales, the remainder to the finest ones."""
        n = len(self.scale_sides())
        return [self.steps // n + (1 if i >= n - self.steps % n else 0) for i in range(n)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NSTError(f"device {device} asked for, but torch sees no CUDA GPU (use cpu)")
    return torch.device(device)


def fit_side(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(w, h) scaled so the longer side is about ``side``, aspect kept, multiples of MULTIPLE."""
    w, h = size
    scale = side / max(w, h)
    return (max(MULTIPLE, round(w * scale / MULTIPLE) * MULTIPLE),
            max(MULTIPLE, round(h * scale / MULTIPLE) * MULTIPLE))


def _style_size(size: tuple[int, int], side: int, least: int) -> tuple[int, int]:
    """The style image at about the output's scale (longer side ``side``), never with a
    shorter side below ``least`` (the features' pyramid)."""
    w, h = size
    scale = max(side / max(w, h), least / min(w, h))
    return max(least, round(w * scale)), max(least, round(h * scale))


def _tensor(img: Image.Image, device: torch.device) -> torch.Tensor:
    """RGB PIL -> (1, 3, H, W) float32 in [-1, 1]."""
    import numpy as np
    import torch

    a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous().to(device)  # (1, 3, H, W)


def _uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    import numpy as np

    a = x.detach()[0].permute(1, 2, 0).float().cpu().numpy()  # (H, W, 3)
    return np.clip((a + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def _as_image(image: np.ndarray | Image.Image, what: str) -> Image.Image:
    from raystyle.data.images import ImageError, decode

    try:
        return decode(image)
    except ImageError as exc:
        raise NSTError(f"{what} image: {exc}") from None


def check_style(style: Image.Image, options: NSTOptions) -> None:
    """Fail early (before weights load or Ray starts) when the style image is too small for
    the feature pyramid (``perceptual.min_side``)."""
    from raystyle.core.perceptual import min_side

    layers = options.layers
    least = min_side(options.features, layers["content"] + layers["style"])
    sw, sh = style.size
    if min(sw, sh) < least:
        raise NSTError(f"style image is {sw}x{sh}; {options.features} features need at least "
                       f"{least} px on its shorter side")


def check_content(content: Image.Image, options: NSTOptions) -> None:
    """The content image at the first (coarsest) scale must still be seen by every tap."""
    from raystyle.core.perceptual import min_side

    layers = options.layers
    least = min_side(options.features, layers["content"] + layers["style"])
    first = fit_side(content.size, options.scale_sides()[0])
    if min(first) < least:
        raise NSTError(f"the content image at {first[0]}x{first[1]} (--size {options.size}, "
                       f"first scale) is below the {least} px a side the features need: "
                       "raise --size or lower --scales")


def check_images(content: Image.Image, style: Image.Image, options: NSTOptions) -> None:
    check_style(style, options)
    check_content(content, options)


class _Objective:
    """The weighted loss of an image against one scale's content and style targets."""

    def __init__(self, net: FeatureNet, content: torch.Tensor, style: torch.Tensor,
                 options: NSTOptions):
        import torch

        from raystyle.core.perceptual import gram

        self.net, self.options = net, options
        layers = options.layers
        with torch.no_grad():
            c = net(content)
            s = net(style)
        self.content = {k: c[k] for k in layers["content"]}  # (1, C, h, w) each
        self.grams = {k: gram(s[k]) for k in layers["style"]}  # (1, C, C) each

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        from raystyle.core.perceptual import content_loss, style_loss, tv_loss

        o = self.options
        feats = self.net(x)
        lc = content_loss(feats, self.content)
        ls = style_loss(feats, self.grams)
        lt = tv_loss(x)
        total = o.content_weight * lc + o.style_weight * ls + o.tv_weight * lt
        return total, {"content": lc.item(), "style": ls.item(), "tv": lt.item(), "total": total.item()}


def _optimise(objective: _Objective, x: torch.Tensor, steps: int, options: NSTOptions,
              on_step: Callable[[dict[str, float]], None]) -> torch.Tensor:
    import torch

    x = x.detach().clone().requires_grad_(True)
    if options.optimizer == "lbfgs":
        # max_iter=1: one L-BFGS iteration per step() call, so progress shows every step; the
        # optimizer object (and its curvature history) lives across the calls.
        opt: torch.optim.Optimizer = torch.optim.LBFGS([x], lr=options.learning_rate, max_iter=1,
                                                       history_size=50)
    else:
        opt = torch.optim.Adam([x], lr=options.learning_rate)
    last: dict[str, float] = {}

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        total, terms = objective(x)
        total.backward()
        last.update(terms)
        return total

    lbfgs = isinstance(opt, torch.optim.LBFGS)
    for _ in range(steps):
        before = x.detach().clone() if lbfgs and TRUE_STEPS else None
        opt.step(closure)
        with torch.no_grad():
            x.clamp_(-1.0, 1.0)  # stay a valid image (losses above are those before the step)
            state = opt.state[x]
            if before is not None and "d" in state and state.get("t"):
                # torch's L-BFGS pairs s = t * d with the next gradient change: make s the step
                # actually taken, so no curvature pair describes the part the clamp undid
                state["d"] = (x - before).flatten().div_(state["t"])
        on_step(dict(last))
    return x.detach()


def run_nst(content: np.ndarray | Image.Image, style: np.ndarray | Image.Image,
            options: NSTOptions, features: FeatureNet | None = None,
            progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Stylize ``content`` (H, W, 3 uint8) with ``style``'s Grams -> (uint8 result, report).

    The result's longer side is ``options.size``. ``features`` (loaded from the options when
    None) must tap the options' content and style layers. ``progress`` is called after every
    step with {scale, scales, step, steps, content, style, tv, total} (losses before the
    step). The report holds the initial and final losses (content, style, tv unweighted;
    total weighted), steps, seconds, the sizes per scale and the features' arch and weights.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from raystyle.core.perceptual import load_features
    from raystyle.data import colour

    content_img, style_img = _as_image(content, "content"), _as_image(style, "style")
    check_images(content_img, style_img, options)
    mode = options.preserve_color
    colours = content_img  # whose chroma a luminance or swap result takes
    if mode in ("luminance", "histogram"):  # Gatys et al. 2017: prepare the images
        c_arr, s_arr = np.asarray(content_img), np.asarray(style_img)
        style_img = Image.fromarray(colour.style_for(s_arr, c_arr, mode))
        content_img = Image.fromarray(colour.content_for(c_arr, mode))
    layers = options.layers
    if features is None:
        features = load_features(options.features, layers["content"] + layers["style"],
                                 options.vgg_weights, seed=options.seed)
    missing = [k for k in layers["content"] + layers["style"] if k not in features.layers]
    if features.arch != options.features or missing:
        raise NSTError(f"the features given are {features.arch} tapping {', '.join(features.layers)}; "
                       f"the options need {options.features} with {', '.join(missing) or 'the same layers'}")
    device = resolve_device(options.device)
    net = features.to(device)
    start = time.perf_counter()
    total_steps = sum(options.steps_per_scale())
    done = 0
    x: torch.Tensor | None = None
    initial: dict[str, float] | None = None
    scales: list[dict[str, Any]] = []
    plan = [(side, n) for side, n in zip(options.scale_sides(), options.steps_per_scale(), strict=True)
            if n > 0 or side == options.size]
    for index, (side, n) in enumerate(plan):
        size = fit_side(content_img.size, side)
        style_size = _style_size(style_img.size, max(size), net.min_side)
        c = _tensor(content_img.resize(size, Image.LANCZOS), device)  # (1, 3, h, w)
        s = _tensor(style_img.resize(style_size, Image.LANCZOS), device)  # (1, 3, hs, ws)
        objective = _Objective(net, c, s, options)
        if x is None and options.init == "noise":
            gen = torch.Generator().manual_seed(options.seed)
            x = (torch.rand(c.shape, generator=gen) * 2 - 1).to(device)  # (1, 3, h, w) uniform
        elif x is None:
            x = c
        else:  # the previous scale's result, upsampled, starts this one
            x = F.interpolate(x, size=c.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
        with torch.no_grad():
            first = objective(x)[1]
        initial = initial or first
        scale_start = time.perf_counter()

        def on_step(terms: dict[str, float], index: int = index) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress({"scale": index + 1, "scales": len(plan), "step": done,
                          "steps": total_steps, **terms})

        x = _optimise(objective, x, n, options, on_step)
        with torch.no_grad():
            final = objective(x)[1]
        scales.append({"size": list(size), "style_size": list(style_size), "steps": n,
                       "seconds": round(time.perf_counter() - scale_start, 3),
                       "initial": first, "final": final})
    assert x is not None and initial is not None
    result = _uint8(x)
    if mode is not None:
        result = colour.after_transfer(result, np.asarray(colours.resize(result.shape[1::-1], Image.LANCZOS)), mode)
    seconds = time.perf_counter() - start
    report = {
        "size": [int(result.shape[1]), int(result.shape[0])],
        "steps": done, "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / max(done, 1), 4),
        "initial": initial, "final": scales[-1]["final"], "scales": scales,
        "features": features.arch, "weights_sha256": features.info.get("sha256"),
        "weights_source": features.info.get("source"),
        "device": str(device), "options": options.to_dict(),
    }
    return result, report
