"""Tiling graphs: a generator whose InstanceNorms use given statistics, and their geometry (pure torch).

InstanceNorm makes a generator global: every output pixel depends on the mean and variance
of whole feature maps. With those statistics fixed the generator is a local operator, so a
large image can run tile by tile and agree with the whole image exactly:
  StatsModel  image (B, 3, H, W) -> (B, S) statistics of a whole image, layout
              [mean_0, var_0, mean_1, var_1, ...] (C_i values each, norms in traversal order)
  TileModel   (tile, stats) -> stylized tile, every InstanceNorm normalising with ``stats``
  SumsModel   (tile, stats, mask) -> (B, S) float64 per-channel sums over the tile's core
              (mask == 1) of (x - m_i) and (x - m_i)^2, x the i-th norm's input and m_i the
              given mean (the shift keeps the sums accurate); the norms normalise with
              ``stats``, so the sums of all tiles give the statistics that ``stats`` implies
              one layer deeper (the Stylizer iterates this to the exact statistics)
  receptive_radius(net)  an upper bound (input pixels) on how far an output pixel of the
              fixed-statistics generator reaches; a tile with that much halo has an exact core
An affine InstanceNorm (``model.norm_affine``) is replaced by one that applies its scale and
shift after normalising, like the original: the statistics are still those of its input.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from raystyle.core.nets import MULTIPLE
from raystyle.errors import RaystyleError


class TilingError(RaystyleError):
    """A generator that the tiling graphs cannot describe (unknown spatial layer)."""


class _Ctx:
    def __init__(self):
        self.collected: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.stats: torch.Tensor | None = None
        self.masks: dict[int, torch.Tensor] = {}


class _Affine(nn.Module):
    """What the replaced norms share: the original's eps, and its scale and shift when affine."""

    def __init__(self, norm: nn.InstanceNorm2d):
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight if norm.affine else None  # (C,) the same Parameters
        self.bias = norm.bias if norm.affine else None

    def affine(self, y: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return y
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]  # (B, C, h, w)


class _CollectNorm(_Affine):
    def __init__(self, ctx: _Ctx, norm: nn.InstanceNorm2d, index: int):
        super().__init__(norm)
        self.ctx, self.index = ctx, index

    def forward(self, x):
        mean = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        var = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True)
        self.ctx.collected[self.index] = (mean.flatten(1), var.flatten(1))  # (B, C) each
        return self.affine((x - mean) / torch.sqrt(var + self.eps))


class _ApplyNorm(_Affine):
    def __init__(self, ctx: _Ctx, norm: nn.InstanceNorm2d, offset: int, channels: int):
        super().__init__(norm)
        self.ctx, self.offset, self.c = ctx, offset, channels

    def given(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.ctx.stats  # (B, S): [mean_0, var_0, mean_1, var_1, ...]
        mean = s[:, self.offset : self.offset + self.c][:, :, None, None]  # (B, C, 1, 1)
        var = s[:, self.offset + self.c : self.offset + 2 * self.c][:, :, None, None]
        return mean, var

    def forward(self, x):
        mean, var = self.given()
        return self.affine((x - mean) / torch.sqrt(var + self.eps))


class _SumNorm(_ApplyNorm):
    def __init__(self, ctx: _Ctx, norm: nn.InstanceNorm2d, offset: int, channels: int, index: int, stride: int):
        super().__init__(ctx, norm, offset, channels)
        self.index, self.stride = index, stride

    def forward(self, x):
        mean, var = self.given()
        d = x - mean  # (B, C, h, w), shifted by the given mean
        dm = d * self.ctx.masks[self.stride]  # core pixels only (mask (B, 1, h, w) of 0/1)
        # float32 sums along rows (<= a tile's width), then float64 across rows and tiles
        s1 = dm.sum(dim=3).double().sum(dim=2)  # (B, C)
        s2 = (dm * d).sum(dim=3).double().sum(dim=2)
        self.ctx.collected[self.index] = (s1, s2)
        return self.affine(d / torch.sqrt(var + self.eps))


def instance_norms(net: nn.Module) -> list[tuple[nn.Module, str, nn.InstanceNorm2d]]:
    """Every InstanceNorm2d with its parent, in module-traversal order (the stats layout)."""
    found = []
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.InstanceNorm2d):
                found.append((parent, name, child))
    return found


def norm_layout(generator: nn.Module) -> list[tuple[int, int]]:
    """(channels, stride) of every InstanceNorm's input, in stats order (one tiny probe pass)."""
    net = copy.deepcopy(generator).eval()
    side = 16 * MULTIPLE
    shapes: dict[int, tuple[int, ...]] = {}
    for k, (_, _, norm) in enumerate(instance_norms(net)):
        norm.register_forward_hook(lambda m, i, o, k=k: shapes.__setitem__(k, tuple(i[0].shape)))
    with torch.no_grad():
        net(torch.zeros(1, 3, side, side))
    layout = []
    for i in range(len(shapes)):
        _, channels, h, w = shapes[i]
        stride = side // w
        if stride * w != side or h != w or MULTIPLE % stride:
            raise TilingError(f"InstanceNorm {i} runs at {w}/{side} of the input resolution; "
                              f"tiling needs 1/k with k dividing {MULTIPLE}")
        layout.append((channels, stride))
    return layout


class StatsModel(nn.Module):
    """image (B, 3, H, W) -> (B, S) means and variances of every InstanceNorm input."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.ctx = _Ctx()
        self.net = copy.deepcopy(generator)
        for i, (parent, name, norm) in enumerate(instance_norms(self.net)):
            setattr(parent, name, _CollectNorm(self.ctx, norm, i))

    def forward(self, x):
        self.ctx.collected = {}
        self.net(x)
        return torch.cat([t for i in sorted(self.ctx.collected) for t in self.ctx.collected[i]], dim=1)


class TileModel(nn.Module):
    """(tile (B, 3, h, w), stats (B, S)) -> stylized tile, normalised with the given stats."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.ctx = _Ctx()
        self.net = copy.deepcopy(generator)
        offset = 0
        for (parent, name, norm), (c, _) in zip(instance_norms(self.net), norm_layout(generator), strict=True):
            setattr(parent, name, _ApplyNorm(self.ctx, norm, offset, c))
            offset += 2 * c
        self.stats_size = offset

    def forward(self, x, stats):
        self.ctx.stats = stats
        return self.net(x)


class SumsModel(nn.Module):
    """(tile (B, 3, h, w), stats (B, S), mask (B, 1, h, w)) -> (B, S) float64 shifted sums over the core."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.ctx = _Ctx()
        self.net = copy.deepcopy(generator)
        self.layout = norm_layout(generator)
        offset = 0
        for i, ((parent, name, norm), (c, stride)) in enumerate(
                zip(instance_norms(self.net), self.layout, strict=True)):
            setattr(parent, name, _SumNorm(self.ctx, norm, offset, c, i, stride))
            offset += 2 * c
        self.stats_size = offset

    def forward(self, x, stats, mask):
        self.ctx.stats, self.ctx.collected = stats, {}
        # The core box is aligned to MULTIPLE, so each pooled mask is exactly 0 or 1.
        self.ctx.masks = {s: (mask if s == 1 else F.avg_pool2d(mask, s))  # (B, 1, h/s, w/s)
                          for s in sorted({s for _, s in self.layout})}
        self.net(x)  # the layers after the last norm do not reach the output (pruned on export)
        return torch.cat([t for i in sorted(self.ctx.collected) for t in self.ctx.collected[i]], dim=1)


# ----------------------------------------------------------------------------------------
# Receptive field of the fixed-statistics generator.

_POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Identity,
              nn.InstanceNorm2d, nn.BatchNorm2d, _ApplyNorm, _CollectNorm)
_PADS = (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d, nn.ConstantPad2d)


def receptive_radius(net: nn.Module) -> int:
    """Upper bound, in input pixels, on how far any output pixel depends on the input.

    Walks the leaf modules in registration order (the execution order of the nets in
    ``raystyle.core.nets``; a residual branch adds nothing beyond its longest path) and adds
    each layer's reach on either side, scaled by the layer's resolution. With the norms'
    statistics fixed every layer is local, so a tile's pixels farther than this from its
    cut edges equal the whole image's. An unknown spatial layer is a TilingError.
    """
    scale = 1.0  # input pixels per feature pixel at the current layer
    left = right = 0.0
    pending = [0, 0, 0, 0]  # a pad module's (left, right, top, bottom), consumed by the next conv
    for name, m in net.named_modules():
        if any(True for _ in m.children()):
            continue  # containers
        if isinstance(m, _PADS):
            pending = [a + b for a, b in zip(pending, _pad4(m.padding), strict=True)]
        elif isinstance(m, nn.Conv2d):
            reach = []
            for axis in (0, 1):
                k, s, d = m.kernel_size[axis], m.stride[axis], m.dilation[axis]
                if isinstance(m.padding, str):  # "same"/"valid"
                    p = (k - 1) * d // 2 if m.padding == "same" else 0
                else:
                    p = m.padding[axis]
                p += pending[2 * (1 - axis)]  # axis 0 is height: the pad's top
                e = (k - 1) * d
                # output j covers pixels [j*S*s, (j+1)*S*s); it reads inputs j*s - p .. j*s - p + e
                reach.append((p * scale, max(0, e - p + 1 - s) * scale))
            left += max(r[0] for r in reach)
            right += max(r[1] for r in reach)
            scale *= max(m.stride)
            pending = [0, 0, 0, 0]
        elif isinstance(m, nn.ConvTranspose2d):
            if any(pending):
                raise TilingError(f"{name}: a pad before a transposed convolution is not supported")
            s, k, d, p = m.stride[0], m.kernel_size[0], m.dilation[0], m.padding[0]
            if (s, k, d, p) != (m.stride[1], m.kernel_size[1], m.dilation[1], m.padding[1]):
                raise TilingError(f"{name}: only square transposed convolutions are supported")
            out_scale = scale / s
            e = (k - 1) * d
            # output i reads inputs j with j*s = i + p - t*d, t in [0, k): j in [(i+p-e)/s, (i+p)/s]
            left += max(0, e - p) * out_scale
            right += (p + s - 1) * out_scale
            scale = out_scale
        elif isinstance(m, nn.Upsample):
            f = m.scale_factor
            f = f[0] if isinstance(f, tuple) else f
            if f is None or f != int(f):
                raise TilingError(f"{name}: only integer upsampling factors are supported")
            out_scale = scale / f
            reach = (f - 1) * out_scale + (0 if m.mode == "nearest" else scale)
            left, right, scale = left + reach, right + reach, out_scale
        elif not isinstance(m, _POINTWISE):
            raise TilingError(f"cannot bound the receptive field of layer {name} ({type(m).__name__})")
    return math.ceil(max(left, right))


def halo_for(net: nn.Module) -> int:
    """The receptive radius rounded up to MULTIPLE (tile offsets stay on the nets' grid)."""
    r = receptive_radius(net)
    return -(-r // MULTIPLE) * MULTIPLE


def _pad4(padding) -> list[int]:
    if isinstance(padding, int):
        return [padding] * 4
    return list(padding)
