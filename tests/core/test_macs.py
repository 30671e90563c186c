import pytest
import torch
from torch import nn

from raystyle.config import ModelConfig
from raystyle.core.macs import count_macs, count_onnx_macs, count_params
from raystyle.core.nets import build_generator
from raystyle.export.gates import export_onnx

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny nets: see conftest.one_torch_thread


def test_hand_counted_layers():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    assert count_macs(conv, side=8) == 8 * 8 * 4 * 3 * 9
    grouped = nn.Sequential(nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6))
    assert count_macs(grouped, side=8) == 64 * 6 * 3 + 64 * 6 * 1 * 9
    # a stride-2 transposed conv: every input pixel multiplies the whole (out, k, k) kernel
    up = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1))
    assert count_macs(up, side=8) == 64 * 8 * 3 + 64 * 8 * 4 * 9


def test_the_papers_generator_costs_about_50_gmacs():
    """ResNet-9, ngf 64, 256 px: 11.378M parameters (GAN Compression's table: 11.4M) and
    49.55 GMACs by this convention (56.8 G by torchprofile's, which counts transposed convs
    per output pixel: 4x for the two stride-2 upsamplers). The count is a function of the
    layers' shapes alone, so the net runs on the meta device (no arithmetic: ~250 GMACs of
    real convolutions otherwise)."""
    g = build_generator(ModelConfig()).to("meta")
    assert count_params(g) == 11_378_179
    assert count_macs(g) == pytest.approx(49.55e9, rel=1e-3)
    assert count_macs(g, side=512) == 4 * count_macs(g)


@pytest.mark.parametrize("model", [
    ModelConfig(ngf=8, n_blocks=2),  # transposed-conv upsampling
    ModelConfig(ngf=8, n_blocks=2, upsample="resize"),
    ModelConfig(ngf=4, n_blocks=1, upsample="resize", residual=True, colour_skip=True),
], ids=["deconv", "resize", "colour-skip"])
def test_the_onnx_graph_count_matches_the_torch_count(model, tmp_path):
    g = build_generator(model).eval()
    path = tmp_path / "g.onnx"
    export_onnx(g, path, (torch.rand(1, 3, 32, 32) * 2 - 1,), ["image"], "stylized")
    for side in (64, 256):
        assert count_onnx_macs(path, side) == count_macs(g, side) > 0
