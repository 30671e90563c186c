"""Fast per-style networks (Johnson et al., ECCV 2016): one feed-forward net per painting; pure torch.

A transformer net (nets.ResnetGenerator with 9x9 edge convs, resize-conv upsampling and
instance norm: Johnson et al.'s architecture, the ``fast`` presets) learns to map any photo
to the style of ONE image, by minimising on fixed features (raystyle.core.perceptual):

  loss = content_weight * content(F(y), F(x)) + style_weight * style(Gram F(y), Gram F(s))
         + tv_weight * tv(y)                       y = net(x), x a photo, s the style image

The content term is divided by a fixed energy of the photos' features (``content_norm``: mean
F(x)^2 per layer on the first batch, averaged over the workers, kept in the checkpoint's train
state so a resumed run keeps it), not by each batch's own: the content weight is one constant,
as in the paper's objective, instead of changing with every batch.

Trained once (on Ray Train, like CycleGAN: train.py runs ``FastStyle`` through the method
interface of raystyle.methods), it stylizes in one forward pass. Its checkpoints store the net
as ``g_ab`` (photo -> style) and the style image itself (``style_image``, uint8), so export,
evaluate, stylize and serve read it like any generator, and the run describes itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from raystyle.config import Config, ConfigError, FastConfig
from raystyle.core.nets import build_generator
from raystyle.core.perceptual import (
    DEFAULT_LAYERS,
    FeatureNet,
    content_loss,
    fixed_energies,
    gram,
    style_loss,
    tv_loss,
)
from raystyle.data.datasets import DomainScan, check_photos
from raystyle.errors import RaystyleError
from raystyle.methods.base import (
    FEATURE_OPTIONS,
    Option,
    PerceptualMethod,
    feature_weights,
    linear_decay,
    refuse_unused_train_settings,
    register_method,
    resolve_amp,
    run_data,
)
from raystyle.util.storage import sha256_file


class StyleImageError(RaystyleError):
    """The style image cannot be used (unreadable, too small for the features)."""


def layers_of(fc: FastConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(content layers, style layers): the config's, or the defaults of its feature network."""
    defaults = DEFAULT_LAYERS[fc.features]
    return fc.content_layers or defaults["content"], fc.style_layers or defaults["style"]


def load_style_image(path: str | Path, shorter_side: int, min_side: int) -> torch.Tensor:
    """The style image as a (3, H, W) uint8 tensor, its shorter side resized to ``shorter_side``.

    StyleImageError (one line) for an unreadable file or one smaller than ``min_side`` px (the
    deepest feature tap would see almost nothing of it: its Gram matrix means little).
    """
    from raystyle.data.images import ImageError, load_rgb

    try:
        img = load_rgb(path)
    except (ImageError, OSError) as exc:
        raise StyleImageError(f"style image {path}: {exc}") from None
    if min(img.size) < min_side:
        raise StyleImageError(f"style image {path} is {img.size[0]}x{img.size[1]} px; the style features "
                              f"need at least {min_side} px on the shorter side")
    x = TF.pil_to_tensor(img)  # (3, H, W) uint8
    return TF.resize(x, shorter_side, antialias=True)


def _to_net(x: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) -> float (1, 3, H, W) in [-1, 1]."""
    return x.float().div(127.5).sub(1.0).unsqueeze(0)


@register_method("fast", section=FastConfig)
class FastStyle(PerceptualMethod):
    """The transformer net, its optimiser and the fixed style targets; ``train_step``."""

    default_preset = "fast"
    one_folder = True  # any folder of photos (or a dataset: its trainA/)
    options = (Option("--style-image", "style_image", "the style image", metavar="PAINTING", path=True),
               *FEATURE_OPTIONS)

    @classmethod
    def plan(cls, config, overrides, settings):
        """(config, workers' extra): see the module function ``plan``; the painting is
        ``fast.style_image`` (--style-image)."""
        data = run_data(config, cls.default_preset, overrides, settings)
        image = (data.get("fast") or {}).get("style_image")
        if not image:
            raise StyleImageError("--method fast needs --style-image PAINTING")
        return plan_data(image, data)

    @classmethod
    def export_record(cls, config, checkpoint, manifest, work):
        """``style_image``: the painting's file, sha256, size, features, and a thumbnail
        (``style.jpg`` beside model.onnx) from the copy the checkpoint carries."""
        from PIL import Image

        from raystyle import checkpoint as ckpt

        _, nets = ckpt.load_nets(checkpoint)
        image = nets["style_image"]  # (3, H, W) uint8, as trained on
        Image.fromarray(thumbnail(image)).save(work / "style.jpg", quality=90)
        fc = config.fast
        content, style = layers_of(fc)
        return {"style_image": {
            "file": fc.style_image, "sha256": fc.style_sha256, "thumbnail": "style.jpg",
            "trained_size": [int(image.shape[2]), int(image.shape[1])],
            "features": fc.features, "features_sha256": fc.features_sha256 or None,
            "content_layers": list(content), "style_layers": list(style),
            "weights": {"content": fc.content_weight, "style": fc.style_weight, "tv": fc.tv_weight}}}

    def __init__(self, cfg: Config, style: torch.Tensor, features_state: dict[str, Any] | None,
                 device: torch.device | str = "cpu", rank: int = 0):
        if cfg.fast is None:
            raise ConfigError("a fast style run needs a fast section")
        self.device = torch.device(device)
        self.fc, self.train_cfg = cfg.fast, cfg.train
        self.content_layers, self.style_layers = layers_of(cfg.fast)
        self.features = FeatureNet(cfg.fast.features, self.content_layers + self.style_layers,
                                   features_state, seed=0).to(self.device)
        self.style_u8 = style.cpu()
        with torch.no_grad():
            feats = self.features(_to_net(style).to(self.device))
            self.target_grams = {k: gram(feats[k].float()) for k in self.style_layers}  # (1, C, C) each
        torch.manual_seed(cfg.train.seed)  # same init on every rank (DDP also broadcasts)
        self.g_ab = build_generator(cfg.model).to(self.device)
        torch.manual_seed(cfg.train.seed + 1000 * (rank + 1))
        self.net_fwd: nn.Module = self.g_ab  # replaced by the DDP wrapper in ``wrap``
        tc = cfg.train
        self.opt_g = torch.optim.Adam(self.g_ab.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2))
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, linear_decay(tc.epochs, tc.epochs_decay))
        self.amp_dtype = resolve_amp(tc.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.net_names = ("g_ab",)  # compared across ranks (DDP check)
        self.step = self.epoch = self.epoch_step = 0
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # photo, stylized
        # the content term's fixed normaliser per layer: set by the first batch (or a checkpoint)
        self.content_norm = None  # measured on the first batch (PerceptualMethod keeps it)

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device, rank: int, extra: dict[str, Any]) -> FastStyle:
        """``extra`` (from the driver, see ``plan``): the style image and the feature weights."""
        return cls(cfg, extra["style"], extra.get("features"), device, rank)

    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        self.net_fwd = wrapper(self.g_ab)

    # -- the step -------------------------------------------------------------------------
    def losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted terms for photos ``x`` and their stylized ``y`` (both in [-1, 1])."""
        fc = self.fc
        with torch.no_grad():
            targets = self.features(x)
            content_targets = {k: targets[k].float() for k in self.content_layers}
            if self.content_norm is None:  # once: the first batch's (every rank's) energy
                self.content_norm = fixed_energies(content_targets)
        feats = self.features(y)
        content = content_loss({k: feats[k].float() for k in self.content_layers}, content_targets,
                               self.content_norm)
        style = style_loss({k: feats[k].float() for k in self.style_layers}, self.target_grams)
        tv = tv_loss(y.float())
        total = fc.content_weight * content + fc.style_weight * style + fc.tv_weight * tv
        return {"total": total, "content": content, "style": style, "tv": tv}

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        x = real_a.to(self.device, non_blocking=True)  # photos; real_b is empty (one domain)
        with self._autocast():  # the nets in bf16/fp16 on CUDA; Grams and losses in fp32
            y = self.net_fwd(x)
            out = self.losses(x, y)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(out["total"]).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self.step += 1
        self.last = (x.detach(), y.detach())
        return {k: v.detach() for k, v in out.items()}

    # -- what train.py shows and measures ----------------------------------------------------
    def sample_rows(self) -> list[list[torch.Tensor]]:
        """The last batch's first photo | its stylization | the style image (centre square)."""
        if self.last is None:
            return []
        x, y = self.last
        s = _to_net(self.style_u8)
        side = min(s.shape[-2:])
        top, left = (s.shape[-2] - side) // 2, (s.shape[-1] - side) // 2
        s = F.interpolate(s[..., top:top + side, left:left + side], size=tuple(x.shape[-2:]),
                          mode="bilinear", antialias=True, align_corners=False)
        return [[x, y, s.to(x.device)]]

    @staticmethod
    def progress_text(m: dict[str, Any]) -> str:
        return f"loss {m['total']:.4f} | content {m['content']:.4f} style {m['style']:.4f} tv {m['tv']:.4f}"

    @staticmethod
    def check_data(data_dir: str | Path, crop_size: int) -> tuple[DomainScan, DomainScan]:
        """Photos only: DATA/trainA when it exists, else every image under DATA."""
        return check_photos(data_dir, crop_size), DomainScan((), (), 0)

    @staticmethod
    def data_text(n_a: int, n_b: int) -> str:
        return f"{n_a} photos"

    @staticmethod
    def loss_keys(cfg: Config) -> list[str]:
        return ["total", "content", "style", "tv"]

    # -- state ----------------------------------------------------------------------------
    def nets_state(self) -> dict[str, Any]:
        """The net as ``g_ab`` (photo -> style) and the style image it learned (uint8)."""
        return {"g_ab": self.g_ab.state_dict(), "style_image": self.style_u8.clone()}


# ---------------------------------------------------------------------------------------
# The run's configuration, style image and features (driver side; still no Ray)

DEFAULT_PRESET = FastStyle.default_preset


def plan(style_image: str | Path, config: str | Path | None = None, overrides: list[str] | None = None,
         settings: dict[str, dict[str, Any]] | None = None) -> tuple[Config, dict[str, Any]]:
    """(the run's config, the workers' ``extra``: style image and feature weights) for
    ``raystyle train --method fast``. ``config`` a preset or YAML (default ``fast``), then
    ``overrides`` (--set), then ``settings`` (the CLI's flags). Every check happens here, before
    Ray starts: config, style image, feature weights (a missing VGG file is a one-line error).
    """
    return plan_data(style_image, run_data(config, DEFAULT_PRESET, overrides, settings))


def plan_data(style_image: str | Path, data: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    """``plan`` of a config already read into ``data`` (sections as dicts)."""
    path = Path(style_image).expanduser().resolve()
    if not path.is_file():
        raise StyleImageError(f"style image {style_image} does not exist")
    data["fast"] = {**(data.get("fast") or {}), "style_image": str(path), "style_sha256": sha256_file(path)}
    cfg = Config.from_dict(data)
    refuse_unused_train_settings(cfg, "a fast")
    content, style_layers = layers_of(cfg.fast)
    cfg, state = feature_weights(cfg, "fast")
    fc = cfg.fast
    net = FeatureNet(fc.features, content + style_layers, state)  # bad layer names fail here
    for key, value in (("data.crop_size", cfg.data.crop_size), ("fast.style_size", fc.style_size)):
        if value < net.min_side:
            raise ConfigError(f"{key} {value} is below the {net.min_side} px the features need")
    style = load_style_image(path, fc.style_size, net.min_side)
    return cfg, {"style": style, "features": state}


def thumbnail(style_u8: torch.Tensor, side: int = 128) -> np.ndarray:
    """(H, W, 3) uint8, the longer side ``side`` px: the style image recorded with an export."""
    h, w = style_u8.shape[-2:]
    scale = side / max(h, w)
    small = TF.resize(style_u8, [max(1, round(h * scale)), max(1, round(w * scale))], antialias=True)
    return small.permute(1, 2, 0).contiguous().numpy()

