import pytest
import torch

from raystyle.config import ModelConfig
from raystyle.core.nets import (
    PatchDiscriminator,
    ResnetGenerator,
    build_discriminator,
    build_generator,
)


@pytest.mark.parametrize("upsample", ["deconv", "resize"])
@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_generator_keeps_shape_and_range(upsample, norm):
    g = build_generator(ModelConfig(ngf=4, n_blocks=1, norm=norm, upsample=upsample)).eval()
    x = torch.rand(2, 3, 36, 52) * 2 - 1
    y = g(x)
    assert y.shape == x.shape
    assert y.min() >= -1 and y.max() <= 1


def test_paper_generator_and_discriminator_sizes():
    # ResNet-9 with ngf 64 has 11.378M parameters; the 70x70 PatchGAN 2.765M (reference repo).
    g = ResnetGenerator(64, 9)
    d = PatchDiscriminator(64, 3)
    assert sum(p.numel() for p in g.parameters()) == 11_378_179
    assert sum(p.numel() for p in d.parameters()) == 2_764_737
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_patchgan_receptive_field_is_70px():
    d = build_discriminator(ModelConfig(ndf=4, d_layers=3, norm="none")).eval()
    x = torch.zeros(1, 3, 140, 140, requires_grad=True)
    d(x)[0, 0, 5, 5].backward()
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    assert int(rows.max() - rows.min() + 1) == 70


def test_resize_upsampling_has_no_transposed_conv():
    g = ResnetGenerator(4, 1, upsample="resize")
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in g.modules())
    assert any(isinstance(m, torch.nn.Upsample) for m in g.modules())


def test_residual_generator_starts_near_the_identity():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.manual_seed(0)
    plain = build_generator(ModelConfig(ngf=4, n_blocks=1)).eval()
    torch.manual_seed(0)
    skip = build_generator(ModelConfig(ngf=4, n_blocks=1, residual=True)).eval()
    with torch.no_grad():
        assert torch.equal(skip(x), (x + plain(x)).clamp(-1, 1))  # the same net plus the input
        assert (skip(x) - x).abs().mean() < 0.2 < (plain(x) - x).abs().mean()
    x_big = torch.ones(1, 3, 32, 32)
    assert skip(x_big).max() <= 1  # clamped to the image range


def test_colour_skip_starts_as_the_identity_and_learns_a_global_colour_map(torch_one_thread):
    """model.colour_skip: the residual's skip is a 1x1 conv (identity at start) that can
    express a global colour change, which the instance-normalised main path cannot."""
    from raystyle.config import ConfigError

    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.manual_seed(0)
    plain_skip = build_generator(ModelConfig(ngf=4, n_blocks=1, residual=True)).eval()
    torch.manual_seed(0)
    colour = build_generator(ModelConfig(ngf=4, n_blocks=1, residual=True, colour_skip=True)).eval()
    with torch.no_grad():
        assert torch.allclose(colour(x), plain_skip(x), atol=1e-6)  # same start
    with pytest.raises(ConfigError, match="colour_skip needs model.residual"):
        ModelConfig(colour_skip=True)
    # fit a warm, saturated grade (a global affine colour map) for 60 steps: the colour skip
    # gets much closer than the same net with the photo as its skip (measured at 50 steps:
    # L1 0.004-0.008 against 0.113; at 150: 0.004-0.007 against 0.08)
    m = torch.tensor([[1.3, -0.2, -0.1], [-0.1, 1.2, -0.1], [-0.2, -0.2, 1.0]])
    target = (torch.einsum("ij,bjhw->bihw", m, x) + torch.tensor([0.15, 0.0, -0.2]).view(1, 3, 1, 1)).clamp(-1, 1)
    errors = {}
    for name, net in (("photo", plain_skip), ("colour", colour)):
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(60):
            opt.zero_grad()
            loss = (net(x) - target).abs().mean()
            loss.backward()
            opt.step()
        errors[name] = loss.item()
    assert errors["colour"] < 0.5 * errors["photo"], errors
