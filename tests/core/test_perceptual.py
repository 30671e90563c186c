"""raystyle.core.perceptual: VGG taps by name, weights resolution and checks, Gram and the losses."""

from __future__ import annotations

import hashlib
import shutil
import socket
from pathlib import Path

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from raystyle.core import perceptual
from raystyle.core.perceptual import (
    DEFAULT_LAYERS,
    WEIGHTS_ENV,
    FeatureError,
    FeatureNet,
    content_loss,
    gram,
    layer_names,
    load_features,
    style_loss,
    tv_loss,
    vgg_state,
)

GATYS = DEFAULT_LAYERS["vgg19"]["content"] + DEFAULT_LAYERS["vgg19"]["style"]
TV_CFG = {"vgg19": "E", "vgg16": "D"}


def save_hashed(state: dict[str, torch.Tensor], folder: Path, arch: str) -> Path:
    """Save ``state`` as torchvision names its files: ARCH-<first 8 hex of its sha256>.pth."""
    tmp = folder / f"{arch}.tmp"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{arch}-{digest[:8]}.pth"
    tmp.rename(path)
    return path


def torchvision_features(arch: str) -> torch.nn.Sequential:
    torch.manual_seed(1)
    return make_layers(cfgs[TV_CFG[arch]]).eval()  # torchvision's own vgg*.features, random init


@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory) -> tuple[Path, torch.nn.Sequential]:
    ref = torchvision_features("vgg19")
    return save_hashed(ref.state_dict(), tmp_path_factory.mktemp("w19"), "vgg19"), ref


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No RAYSTYLE_VGG_WEIGHTS and an empty torchvision cache (TORCH_HOME)."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def closed_port_url(name: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/models/{name}"  # nothing listens there: refused at once


def test_layer_names_follow_torchvision_indices():
    names19, names16 = layer_names("vgg19"), layer_names("vgg16")
    assert names19[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert len(names19) == len(make_layers(cfgs["E"])) == 37
    assert len(names16) == len(make_layers(cfgs["D"])) == 31
    assert names19.index("relu4_2") == 22 and names19.index("relu5_1") == 29
    assert names16.index("relu2_2") == 8 and names16.index("relu4_3") == 22
    assert layer_names("random") == names19


def test_random_taps_shapes_truncation_and_min_side():
    net = FeatureNet("random", GATYS)
    assert len(net.features) == 30  # cut after relu5_1, the deepest tap
    assert net.min_side == 32  # four pools before relu5_1: 32 px -> 2x2
    out = net(torch.rand(2, 3, 48, 64) * 2 - 1)
    assert list(out) == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]  # net order
    assert out["relu1_1"].shape == (2, 64, 48, 64)
    assert out["relu3_1"].shape == (2, 256, 12, 16)
    assert out["relu4_2"].shape == (2, 512, 6, 8)
    assert out["relu5_1"].shape == (2, 512, 3, 4)
    assert all(not p.requires_grad for p in net.parameters()) and not net.train().training
    shallow = FeatureNet("random", ["conv2_1"])
    assert shallow.min_side == 4 and len(shallow.features) == 6
    with pytest.raises(FeatureError, match="at least 32 px"):
        net(torch.zeros(1, 3, 31, 64))


def test_bad_layer_arch_and_weights_combinations():
    with pytest.raises(FeatureError, match="no layer 'relu6_1'"):
        FeatureNet("random", ["relu1_1", "relu6_1"])
    with pytest.raises(FeatureError, match="relu5_3"):  # vgg16 has no relu5_4
        FeatureNet("vgg16", ["relu5_4"], state={})
    with pytest.raises(FeatureError, match="features must be one of vgg19, vgg16, random"):
        layer_names("resnet50")
    with pytest.raises(FeatureError, match="random features take no weights"):
        load_features("random", GATYS, weights="vgg19.pth")
    with pytest.raises(FeatureError, match="need weights"):
        FeatureNet("vgg19", GATYS)


def test_random_features_are_deterministic():
    x = torch.rand(1, 3, 32, 40) * 2 - 1
    torch.manual_seed(123)  # the global RNG must not matter
    a = FeatureNet("random", GATYS)(x)
    torch.manual_seed(456)
    b = load_features("random", GATYS)(x)
    c = FeatureNet("random", GATYS, seed=1)(x)
    for k in GATYS:
        assert torch.equal(a[k], b[k]), k
    assert not torch.allclose(a["relu1_1"], c["relu1_1"])
    assert a["relu5_1"].abs().sum() > 0  # not dead after four pools


def test_gram_on_a_known_tensor():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 1, 2)  # C=2, H=1, W=2
    g = gram(f)
    # F F^T = [[1+4, 3+8], [3+8, 9+16]], divided by C*H*W = 4
    assert g.shape == (1, 2, 2)
    assert torch.allclose(g, torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4)
    assert gram(torch.ones(3, 4, 5, 6)).shape == (3, 4, 4)


def test_losses_are_scale_free_and_zero_at_the_target():
    torch.manual_seed(0)
    f = {"a": torch.rand(2, 8, 6, 6), "b": torch.rand(2, 16, 3, 3)}
    t = {"a": torch.rand(1, 8, 6, 6), "b": torch.rand(1, 16, 3, 3)}
    g = {k: gram(v) for k, v in t.items()}
    assert content_loss(t, t).item() == 0 and style_loss(t, g).item() == 0
    lc, ls = content_loss(f, t), style_loss(f, g)
    assert lc > 0 and ls > 0
    k = 1000.0  # random features' activations are orders of magnitude from VGG's
    big_f = {n: k * v for n, v in f.items()}
    assert torch.allclose(content_loss(big_f, {n: k * v for n, v in t.items()}), lc, rtol=1e-4)
    assert torch.allclose(style_loss(big_f, {n: k * k * v for n, v in g.items()}), ls, rtol=1e-4)
    # only the layers in the targets count; the (1, C, C) grams broadcast over the batch
    assert torch.allclose(style_loss(f, {"a": g["a"]}), style_loss({"a": f["a"]}, {"a": g["a"]}))


def test_tv_loss_values():
    assert tv_loss(torch.full((1, 3, 8, 8), 0.3)).item() == 0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0  # vertical stripes: every horizontal neighbour differs by 1
    assert tv_loss(stripes).item() == pytest.approx(0.5)  # (0 vertical + 1 horizontal) / 2


@pytest.mark.parametrize("arch", ["vgg19", "vgg16"])
def test_vgg_from_a_hashed_file_matches_torchvision(arch, tmp_path, clean_env):
    ref = torchvision_features(arch)
    path = save_hashed(ref.state_dict(), tmp_path, arch)
    layers = DEFAULT_LAYERS[arch]["content"] + DEFAULT_LAYERS[arch]["style"]
    net = load_features(arch, layers, weights=path, progress=False)
    assert net.info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert "hash checked" in net.info["source"] and net.info["arch"] == arch
    x = torch.rand(1, 3, 40, 36) * 2 - 1
    out = net(x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = ((x + 1) / 2 - mean) / std
    names = layer_names(arch)
    with torch.no_grad():
        for i, module in enumerate(ref):
            h = module(h)
            if names[i] in layers:
                assert torch.allclose(out[names[i]], h, atol=1e-5), names[i]


def test_vgg_weights_from_the_env_var_and_a_full_model_state_dict(vgg19_file, tmp_path, clean_env,
                                                                   monkeypatch):
    path, ref = vgg19_file
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    state, info = vgg_state("vgg19", progress=False)
    assert WEIGHTS_ENV in info["source"] and info["path"] == str(path)
    assert torch.equal(state["21.weight"], ref.state_dict()["21.weight"])
    # a whole torchvision model's state dict ("features." keys + classifier), no hash in the name
    full = {f"features.{k}": v for k, v in ref.state_dict().items()}
    full["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(full, tmp_path / "my_vgg.pth")
    state, info = vgg_state("vgg19", tmp_path / "my_vgg.pth", progress=False)  # the argument wins
    assert "no hash in the name" in info["source"] and "--vgg-weights" in info["source"]
    assert sorted(state) == sorted(ref.state_dict())


def test_the_torchvision_cache_file_is_used_and_checked(vgg19_file, clean_env, monkeypatch):
    path, _ = vgg19_file
    monkeypatch.setitem(perceptual.URLS, "vgg19", closed_port_url(path.name))
    clean_env.mkdir(parents=True)
    shutil.copy(path, clean_env / path.name)
    assert perceptual.cache_path("vgg19") == clean_env / path.name
    _, info = vgg_state("vgg19", progress=False)
    assert info["source"].startswith("torchvision cache") and info["path"] == str(clean_env / path.name)
    # a damaged cache file under torchvision's real name fails its hash check
    monkeypatch.setitem(perceptual.URLS, "vgg19", closed_port_url("vgg19-dcbb9e9d.pth"))
    shutil.copy(path, clean_env / "vgg19-dcbb9e9d.pth")
    with pytest.raises(FeatureError, match="the name says dcbb9e9d"):
        vgg_state("vgg19", progress=False)


def test_bad_weight_files_are_one_line_errors(vgg19_file, tmp_path, clean_env):
    path, ref = vgg19_file
    wrong = tmp_path / "vgg19-00000000.pth"
    shutil.copy(path, wrong)
    cases = [
        (wrong, "sha256 starts"),
        (tmp_path / "nope.pth", "does not exist"),
        (tmp_path, "is a folder"),
    ]
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    cases.append((garbage, "cannot read vgg19 weights"))
    vgg16 = tmp_path / "vgg16_as_19.pth"
    torch.save(torchvision_features("vgg16").state_dict(), vgg16)
    cases.append((vgg16, "not vgg19 weights: 12 of 32 features tensors are missing"))
    reshaped = dict(ref.state_dict())
    reshaped["0.weight"] = torch.zeros(64, 3, 5, 5)
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save(reshaped, bad_shape)
    cases.append((bad_shape, r"0.weight has shape \(64, 3, 5, 5\), vgg19 needs \(64, 3, 3, 3\)"))
    for weights, message in cases:
        with pytest.raises(FeatureError, match=message) as err:
            load_features("vgg19", GATYS, weights=weights, progress=False)
        assert "\n" not in str(err.value), weights


def test_no_network_is_a_one_line_error_naming_the_cache_path(clean_env, monkeypatch):
    monkeypatch.setitem(perceptual.URLS, "vgg19", closed_port_url("vgg19-dcbb9e9d.pth"))
    with pytest.raises(FeatureError) as err:
        load_features("vgg19", GATYS, progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert str(clean_env / "vgg19-dcbb9e9d.pth") in message
    assert "--vgg-weights" in message and WEIGHTS_ENV in message and "127.0.0.1" in message
    assert not (clean_env / "vgg19-dcbb9e9d.pth").exists()  # no partial file left as if cached
