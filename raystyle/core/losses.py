"""CycleGAN losses as pure functions (Zhu et al. 2017, eqs. 1-3 and the identity term)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gan_loss(pred: torch.Tensor, target_is_real: bool, mode: str = "lsgan") -> torch.Tensor:
    """Adversarial loss on discriminator logits ``pred`` (any shape).

    lsgan:   E[(D(x) - t)^2]                 with t = 1 for real, 0 for fake (Mao et al. 2017)
    vanilla: E[-t log s(D(x)) - (1-t) log(1 - s(D(x)))]   (Goodfellow et al. 2014)
    """
    pred = pred.float()  # the loss in fp32 even under autocast
    target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
    if mode == "lsgan":
        return F.mse_loss(pred, target)
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(pred, target)
    raise ValueError(f"unknown gan mode {mode!r}; allowed: lsgan, vanilla")


def discriminator_loss(pred_real: torch.Tensor, pred_fake: torch.Tensor, mode: str) -> torch.Tensor:
    """1/2 (L_gan(D(real), 1) + L_gan(D(fake), 0)); halved to slow D relative to G, as in the paper."""
    return 0.5 * (gan_loss(pred_real, True, mode) + gan_loss(pred_fake, False, mode))


def cycle_loss(reconstructed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """||G_ba(G_ab(a)) - a||_1 (or the b -> a -> b direction), mean over pixels."""
    return F.l1_loss(reconstructed.float(), real.float())


def identity_loss(same: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """||G_ab(b) - b||_1: a generator fed its own target domain should change nothing."""
    return F.l1_loss(same.float(), real.float())
