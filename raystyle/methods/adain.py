"""Arbitrary style transfer with adaptive instance normalisation (Huang & Belongie, ICCV 2017); pure torch.

One network for every painting, chosen at request time: a fixed encoder ``E`` (VGG features
up to relu4_1, raystyle.core.perceptual), the AdaIN layer, which gives the content's features the
style's per-channel means and standard deviations, and a trained decoder ``D``:

  t = alpha * AdaIN(E(c), E(s)) + (1 - alpha) * E(c)      AdaIN(x, y) = sd(y) (x - mu(x)) / sd(x) + mu(y)
  output = D(t)

Trained (on Ray Train through raystyle.methods, like the other methods) on content photos
(DATA/trainA) and paintings (DATA/trainB) with

  loss = content_weight * |E(D(t)) - t|^2 / |t|^2
         + style_weight * mean over relu1_1..relu4_1 of (|mu - mu_s|^2 + |sd - sd_s|^2) / (|mu_s|^2 + |sd_s|^2)

(the paper's losses, each divided by its target's energy so that one set of weights suits VGG
and random features; the content term's energy |t|^2 is fixed: ``content_norm``, measured on
the first batch, averaged over the workers and kept in the checkpoint's train state, so the
content weight does not change with every batch's paintings), plus, with ``identity_weight``, Park & Lee's identity term
|D(E(c)) - c|_1 (SANet, 2019), which makes the decoder invert the encoder in pixels. Several styles blend by interpolating their statistics with weights
(AdaIN is affine in them, so this equals blending the AdaIN outputs): raystyle.infer.arbitrary.blend. Checkpoints store the decoder and the encoder it was trained with
(``encoder``: the features' weights up to relu4_1), so an export needs no VGG file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raystyle.config import AdaINConfig, Config, ConfigError
from raystyle.core.perceptual import FeatureNet, fixed_energies
from raystyle.methods.base import (
    FEATURE_OPTIONS,
    PerceptualMethod,
    feature_weights,
    linear_decay,
    refuse_unused_train_settings,
    register_method,
    resolve_amp,
    run_data,
)

LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")  # style statistics; relu4_1 is the code
CODE = "relu4_1"
CHANNELS = 512  # relu4_1's channels (VGG-19 and VGG-16)
MULTIPLE = 8  # relu4_1 is at 1/8 resolution: image sides are padded to a multiple of 8
EPS = 1e-5


def mean_std(f: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> per-channel mean and standard deviation (population), (B, C, 1, 1) fp32 each."""
    f = f.float()
    mean = f.mean(dim=(2, 3), keepdim=True)
    var = f.var(dim=(2, 3), keepdim=True, unbiased=False)
    return mean, (var + eps).sqrt()


def adain(content: torch.Tensor, style_mean: torch.Tensor, style_std: torch.Tensor,
          alpha: float = 1.0, eps: float = EPS) -> torch.Tensor:
    """The content features with the style's channel statistics; ``alpha`` < 1 keeps some content."""
    mean, std = mean_std(content, eps)
    c = content.float()
    t = (c - mean) / std * style_std + style_mean
    return t if alpha == 1.0 else alpha * t + (1.0 - alpha) * c


def _width(channels: int, width: float) -> int:
    return max(8, round(channels * width))


class Decoder(nn.Module):
    """The paper's decoder, the mirror of VGG up to relu4_1: reflection-padded 3x3 convs,
    nearest 2x upsampling; ``width`` scales its channels (256-128-64 at 1.0)."""

    def __init__(self, width: float = 1.0, in_channels: int = CHANNELS):
        super().__init__()
        c4, c3, c2 = _width(256, width), _width(128, width), _width(64, width)

        def conv(cin: int, cout: int, relu: bool = True) -> list[nn.Module]:
            return [nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3)] + ([nn.ReLU()] if relu else [])

        up = nn.Upsample(scale_factor=2, mode="nearest")
        self.layers = nn.Sequential(
            *conv(in_channels, c4), up,
            *conv(c4, c4), *conv(c4, c4), *conv(c4, c4), *conv(c4, c3), nn.Upsample(scale_factor=2, mode="nearest"),
            *conv(c3, c3), *conv(c3, c2), nn.Upsample(scale_factor=2, mode="nearest"),
            *conv(c2, c2), *conv(c2, 3, relu=False),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B, 512, h, w) features -> (B, 3, 8h, 8w) image (in [-1, 1] once trained; not clamped)."""
        return self.layers(t)


class Encoder(nn.Module):
    """image (B, 3, H, W) in [-1, 1] -> relu4_1 (B, 512, H/8, W/8): the FeatureNet's layers
    without its size check, for ONNX export and the exact tiles (any side that is a multiple of 8)."""

    def __init__(self, net: FeatureNet):
        super().__init__()
        if CODE not in net.layers:
            raise ValueError(f"the encoder needs a FeatureNet tapping {CODE}")
        self.features = net.features
        self.register_buffer("mean", net.mean.clone(), persistent=False)
        self.register_buffer("std", net.std.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(((x + 1) / 2 - self.mean) / self.std)


def receptive_radius(arch: str = "vgg19") -> int:
    """The halo of an exact tile: how far (in image pixels) the encoder's relu4_1 and the decoder
    reach, plus one code cell of alignment slack, rounded up to MULTIPLE (96 for VGG-19)."""
    from raystyle.core.perceptual import CFGS

    radius, jump = 0, 1
    for v in CFGS[arch]:  # the encoder, up to conv4_1
        if v == "M":
            radius, jump = radius + jump, jump * 2
        else:
            radius += jump
            if jump == MULTIPLE:
                break
    # the decoder, from its output back: 2 convs at 1, 2 at 1/2, 4 at 1/4, 1 at 1/8; each
    # nearest upsampling adds a pixel of the finer scale
    dec = 0
    for n_convs, jump_d in ((2, 1), (2, 2), (4, 4), (1, 8)):
        dec += n_convs * jump_d + (jump_d if jump_d > 1 else 0)
    total = radius + dec + MULTIPLE
    return -(-total // MULTIPLE) * MULTIPLE


def encoder_state(net: FeatureNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.features.state_dict().items()}


class AdaINNet(nn.Module):
    """Encoder, AdaIN and decoder in torch: ``forward(content, style, alpha)`` (the export's reference)."""

    def __init__(self, encoder: FeatureNet, decoder: Decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def style_stats(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mean_std(self.encoder(style)[CODE])

    def forward(self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        m, s = self.style_stats(style)
        return self.decoder(adain(self.encoder(content)[CODE], m, s, alpha))


@register_method("adain", section=AdaINConfig)
class AdaINMethod(PerceptualMethod):
    """The decoder, its optimiser and the fixed encoder; ``train_step`` on (content, style) batches."""

    style_kind = "arbitrary"  # raystyle.infer.kinds: an encoder + decoder and style images per request
    default_preset = "adain"
    options = FEATURE_OPTIONS
    refuses = {"--style-image": "its paintings come from DATA/trainB"}

    @classmethod
    def plan(cls, config, overrides, settings):
        """(config, workers' extra): see the module function ``plan``."""
        return plan(config, overrides, settings)

    def __init__(self, cfg: Config, features_state: dict[str, Any] | None,
                 device: torch.device | str = "cpu", rank: int = 0):
        if cfg.adain is None:
            raise ConfigError("an adain run needs an adain section")
        self.device = torch.device(device)
        self.ac: AdaINConfig = cfg.adain
        self.train_cfg = cfg.train
        self.encoder = FeatureNet(self.ac.features, LAYERS, features_state, seed=0).to(self.device)
        torch.manual_seed(cfg.train.seed)  # same init on every rank (DDP also broadcasts)
        self.decoder = Decoder(self.ac.decoder_width).to(self.device)
        torch.manual_seed(cfg.train.seed + 1000 * (rank + 1))
        self.dec_fwd: nn.Module = self.decoder  # replaced by the DDP wrapper in ``wrap``
        tc = cfg.train
        self.opt_g = torch.optim.Adam(self.decoder.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2))
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, linear_decay(tc.epochs, tc.epochs_decay))
        self.amp_dtype = resolve_amp(tc.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.net_names = ("decoder",)  # compared across ranks (DDP check)
        self.step = self.epoch = self.epoch_step = 0
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        # the content term's fixed normaliser (|t|^2 of the code): set by the first batch (or a checkpoint)
        self.content_norm = None  # measured on the first batch (PerceptualMethod keeps it)

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device, rank: int, extra: dict[str, Any]) -> AdaINMethod:
        """``extra`` (from the driver, see ``plan``): the feature weights (None: random features)."""
        return cls(cfg, extra.get("features"), device, rank)

    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        self.dec_fwd = wrapper(self.decoder)

    # -- the step -------------------------------------------------------------------------
    def losses(self, t: torch.Tensor, style_feats: dict[str, torch.Tensor], y: torch.Tensor,
               c: torch.Tensor | None = None, y_id: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The weighted terms for AdaIN targets ``t``, the style's features and the output ``y``
        (and, with an identity weight, the photos ``c`` and their reconstructions ``y_id``)."""
        if self.content_norm is None:  # once: the first batch's (every rank's) energy
            self.content_norm = fixed_energies({CODE: t})
        feats = self.encoder(y)
        code = feats[CODE].float()
        content = ((code - t) ** 2).mean() / (self.content_norm[CODE] + EPS)
        terms = []
        for k in LAYERS:
            m, s = mean_std(feats[k])
            ms, ss = mean_std(style_feats[k])
            err = ((m - ms) ** 2).mean() + ((s - ss) ** 2).mean()
            terms.append(err / ((ms ** 2).mean() + (ss ** 2).mean() + EPS))
        style = torch.stack(terms).mean()
        total = self.ac.content_weight * content + self.ac.style_weight * style
        out = {"content": content, "style": style}
        if y_id is not None:
            out["identity"] = (y_id.float() - c.float()).abs().mean()
            total = total + self.ac.identity_weight * out["identity"]
        return {"total": total, **out}

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        c = real_a.to(self.device, non_blocking=True)  # content photos
        s = real_b.to(self.device, non_blocking=True)  # paintings
        with self._autocast():  # convs in bf16/fp16 on CUDA; statistics and losses in fp32
            with torch.no_grad():
                code = self.encoder(c)[CODE]
                style_feats = self.encoder(s)
                m, sd = mean_std(style_feats[CODE])
                t = adain(code, m, sd)
            if self.ac.identity_weight > 0:  # one decoder forward for both (DDP: one per step)
                y, y_id = self.dec_fwd(torch.cat([t, code.float()])).chunk(2)
                out = self.losses(t, style_feats, y, c, y_id)
            else:
                y = self.dec_fwd(t)
                out = self.losses(t, style_feats, y)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(out["total"]).backward()
        self.scaler.step(self.opt_g)
        self.scaler.update()
        self.step += 1
        self.last = (c.detach(), y.detach().float().clamp(-1, 1), s.detach())
        return {k: v.detach() for k, v in out.items()}

    # -- what train.py shows and measures ----------------------------------------------------
    def sample_rows(self) -> list[list[torch.Tensor]]:
        """The last batch's first content photo | its stylization | the style image."""
        return [list(self.last)] if self.last is not None else []

    @staticmethod
    def progress_text(m: dict[str, Any]) -> str:
        identity = f" identity {m['identity']:.4f}" if "identity" in m else ""
        return f"loss {m['total']:.4f} | content {m['content']:.4f} style {m['style']:.4f}{identity}"

    @staticmethod
    def data_text(n_a: int, n_b: int) -> str:
        return f"{n_a} content photos, {n_b} style images"

    @staticmethod
    def loss_keys(cfg: Config) -> list[str]:
        return ["total", "content", "style"] + (["identity"] if cfg.adain and cfg.adain.identity_weight > 0 else [])

    # -- state ----------------------------------------------------------------------------
    def nets_state(self) -> dict[str, Any]:
        """The decoder, and the encoder's weights it was trained with (an export needs no VGG file)."""
        return {"decoder": self.decoder.state_dict(), "encoder": encoder_state(self.encoder)}



def load_net(nets: dict[str, Any], cfg: Config) -> AdaINNet:
    """A checkpoint's nets (``decoder``, ``encoder``) as an AdaINNet in eval mode."""
    ac = cfg.adain
    encoder = FeatureNet(ac.features, LAYERS, None if ac.features == "random" else nets["encoder"], seed=0)
    if ac.features == "random":
        encoder.features.load_state_dict(nets["encoder"])  # the one it was trained with
    decoder = Decoder(ac.decoder_width)
    decoder.load_state_dict(nets["decoder"])
    return AdaINNet(encoder, decoder.eval()).eval()


# ---------------------------------------------------------------------------------------
# The run's configuration and features (driver side; still no Ray)

DEFAULT_PRESET = AdaINMethod.default_preset


def plan(config: str | Path | None = None, overrides: list[str] | None = None,
         settings: dict[str, dict[str, Any]] | None = None) -> tuple[Config, dict[str, Any]]:
    """(the run's config, the workers' ``extra``: the feature weights) for ``raystyle train
    --method adain``. ``config`` a preset or YAML (default ``adain``), then ``overrides``
    (--set), then ``settings`` (the CLI's flags). Checked here, before Ray starts."""
    from raystyle.core.perceptual import min_side

    data = run_data(config, DEFAULT_PRESET, overrides, settings)
    data["adain"] = data.get("adain") or {}
    cfg = Config.from_dict(data)
    refuse_unused_train_settings(cfg, "an adain")
    cfg, state = feature_weights(cfg, "adain")
    ac = cfg.adain
    need = min_side(ac.features, LAYERS)
    if cfg.data.crop_size < need or cfg.data.crop_size % MULTIPLE:
        raise ConfigError(f"data.crop_size must be a multiple of {MULTIPLE} and at least the {need} px the "
                          f"features need (relu4_1 is at 1/8 scale), got {cfg.data.crop_size}")
    if ac.style_size is None and cfg.data.load_size % MULTIPLE:
        raise ConfigError(f"adain.style_size defaults to data.load_size, which must then be a multiple of "
                          f"{MULTIPLE} (got {cfg.data.load_size}); set adain.style_size")
    return cfg, {"features": state}


def pad_to(x: torch.Tensor, multiple: int = MULTIPLE) -> torch.Tensor:
    """Reflect-pad (B, 3, H, W) on the bottom and right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
