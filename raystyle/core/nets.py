"""The networks, and nothing else: ResNet generator and PatchGAN discriminator (pure torch).

Generator (Johnson et al. 2016, as used by CycleGAN): c7s1-ngf, d2ngf, d4ngf, n x R4ngf,
u2ngf, ungf, c7s1-3. Spatial size must be a multiple of 4 (two stride-2 stages). With
``edge_kernel`` 9, ngf 32, 5 blocks and resize-conv upsampling it is Johnson et al.'s own fast
style-transfer network (c9s1-32 ... c9s1-3; reflection padding instead of their valid convs),
and with ``norm_affine`` its instance norms learn a per-channel scale and shift, as in
pytorch/examples' TransformerNet (the ``fast`` presets); CycleGAN's are not affine.
Discriminator: the n-layer PatchGAN; with 3 layers each output sees a 70x70 patch.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from raystyle.config import ModelConfig

MULTIPLE = 4  # generator input height and width must be multiples of this


def _norm_layer(kind: str, affine: bool = False) -> type[nn.Module] | functools.partial | None:
    if kind == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=affine, track_running_stats=False)
    if kind == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True)
    return None


def _norm(kind: str, channels: int, affine: bool = False) -> list[nn.Module]:
    layer = _norm_layer(kind, affine)
    return [layer(channels)] if layer is not None else []


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str, dropout: float, bias: bool, norm_affine: bool = False):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=bias),
            *_norm(norm, channels, norm_affine),
            nn.ReLU(True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias),
                   *_norm(norm, channels, norm_affine)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)  # (B, C, H, W)


class ResnetGenerator(nn.Module):
    """Image-to-image generator; input and output in [-1, 1], shape (B, 3, H, W), H, W % 4 == 0."""

    def __init__(self, ngf: int = 64, n_blocks: int = 9, norm: str = "instance",
                 upsample: str = "deconv", dropout: float = 0.0, residual: bool = False,
                 colour_skip: bool = False, edge_kernel: int = 7, norm_affine: bool = False):
        super().__init__()
        self.residual = residual
        bias = norm != "batch"  # BatchNorm has its own affine shift; the others need a bias
        pad = edge_kernel // 2
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(pad),
            nn.Conv2d(3, ngf, edge_kernel, bias=bias),  # (B, ngf, H, W)
            *_norm(norm, ngf, norm_affine),
            nn.ReLU(True),
        ]
        for mult in (1, 2):  # (B, 2ngf, H/2, W/2) then (B, 4ngf, H/4, W/4)
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=bias),
                *_norm(norm, ngf * mult * 2, norm_affine),
                nn.ReLU(True),
            ]
        layers += [ResidualBlock(ngf * 4, norm, dropout, bias, norm_affine) for _ in range(n_blocks)]
        for mult in (4, 2):  # (B, 2ngf, H/2, W/2) then (B, ngf, H, W)
            if upsample == "resize":
                # Nearest-neighbour resize then conv: no checkerboard artefacts (Odena et al. 2016).
                up = [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1),
                      nn.Conv2d(ngf * mult, ngf * mult // 2, 3, bias=bias)]
            else:
                up = [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1,
                                         output_padding=1, bias=bias)]
            layers += [*up, *_norm(norm, ngf * mult // 2, norm_affine), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(pad), nn.Conv2d(ngf, 3, edge_kernel), nn.Tanh()]  # (B, 3, H, W)
        self.model = nn.Sequential(*layers)
        # colour_skip: the global skip is a learned colour map (a 1x1 conv, the identity at
        # start) rather than the photo itself, so a global colour change (saturation, tint,
        # contrast) needs no help from the normalised main path, which cannot see it. Its
        # default init draws from a forked RNG, so the main path's init is unchanged.
        with torch.random.fork_rng(devices=[]):
            self.skip = nn.Conv2d(3, 3, 1) if colour_skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            # A global skip: the net learns the change, starting near the identity.
            base = x if self.skip is None else self.skip(x)
            return (base + self.model(x)).clamp(-1.0, 1.0)  # (B, 3, H, W)
        return self.model(x)

    @torch.no_grad()
    def reset_skip(self) -> None:
        """The colour map starts as the identity (after ``init_weights``)."""
        if self.skip is not None:
            self.skip.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.skip.bias.zero_()


class PatchDiscriminator(nn.Module):
    """n-layer PatchGAN: (B, 3, H, W) -> (B, 1, H', W') realness logits, one per patch."""

    def __init__(self, ndf: int = 64, n_layers: int = 3, norm: str = "instance"):
        super().__init__()
        bias = norm != "batch"
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # last feature layer keeps resolution
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                *_norm(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))  # (B, 1, H/8-2, W/8-2)
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """The paper's init: conv weights ~ N(0, 0.02), batch-norm scales ~ N(1, 0.02), biases 0
    (affine instance norms keep torch's scale 1 and shift 0, as TransformerNet's)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net


def build_generator(cfg: ModelConfig) -> ResnetGenerator:
    gen = init_weights(ResnetGenerator(cfg.ngf, cfg.n_blocks, cfg.norm, cfg.upsample, cfg.dropout,
                                       cfg.residual, cfg.colour_skip, cfg.edge_kernel, cfg.norm_affine))
    gen.reset_skip()
    return gen


def build_discriminator(cfg: ModelConfig) -> PatchDiscriminator:
    return init_weights(PatchDiscriminator(cfg.ndf, cfg.d_layers, cfg.d_norm or cfg.norm))
