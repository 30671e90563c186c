import pytest
import torch

from raystyle.core.losses import cycle_loss, discriminator_loss, gan_loss, identity_loss


def test_lsgan_values():
    pred = torch.tensor([0.0, 1.0, 2.0])
    assert gan_loss(pred, True, "lsgan").item() == pytest.approx((1 + 0 + 1) / 3)
    assert gan_loss(pred, False, "lsgan").item() == pytest.approx((0 + 1 + 4) / 3)


def test_vanilla_is_bce_with_logits():
    pred = torch.tensor([0.0])
    assert gan_loss(pred, True, "vanilla").item() == pytest.approx(0.693147, rel=1e-5)


def test_discriminator_loss_is_half_the_sum():
    real, fake = torch.ones(4), torch.zeros(4)
    assert discriminator_loss(real, fake, "lsgan").item() == 0.0
    assert discriminator_loss(fake, real, "lsgan").item() == pytest.approx(1.0)


def test_l1_terms():
    a = torch.zeros(1, 3, 2, 2)
    assert cycle_loss(a + 0.5, a).item() == pytest.approx(0.5)
    assert identity_loss(a - 0.25, a).item() == pytest.approx(0.25)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown gan mode"):
        gan_loss(torch.zeros(1), True, "wgan")
