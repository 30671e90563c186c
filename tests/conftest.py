"""Shared fixtures: tiny configs, the sample dataset, one local Ray for the session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from raystyle.config import Config, load_config
from raystyle.data.datasets import write_sample_dataset

os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
# Domain classifiers (raystyle.methods.quality) are cached here, not in ~/.cache, and shared by the session
os.environ.setdefault("RAYSTYLE_CACHE", tempfile.mkdtemp(prefix="raystyle_test_cache_"))


def tiny_config(tmp: Path, **train) -> Config:
    """The tiny preset shrunk further: 32 px crops, 8-channel nets, 2 CPU workers."""
    return load_config("tiny").replace(
        data={"load_size": 36, "crop_size": 32, "loader_workers": 0},
        model={"ngf": 8, "ndf": 8, "n_blocks": 2},
        train={"pool_size": 4, "log_every": 2, "checkpoint_every": 4, "sample_every": 4, **train},
        cluster={"workers": 2, "max_failures": 1, "storage": str(tmp)},
    )


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    write_sample_dataset(root, size=48, per_photo=1, test_per_photo=1)
    return root


@pytest.fixture(scope="session")
def trained_checkpoint(sample_data, tmp_path_factory) -> Path:
    """A tiny CycleGAN trained for real (plain torch, no Ray) for 150 steps, as a checkpoint."""
    import torch
    from torch.utils.data import DataLoader

    from raystyle import checkpoint as ckpt
    from raystyle.data.datasets import EpochBatches, UnpairedDataset, check_dataset
    from raystyle.methods.cyclegan import CycleGAN

    cfg = tiny_config(tmp_path_factory.mktemp("unused")).replace(
        model={"ngf": 8, "ndf": 8, "n_blocks": 2}, train={"lr": 1e-3, "pool_size": 10})
    a, b = check_dataset(sample_data, cfg.data.crop_size)
    ds = UnpairedDataset(a.files, b.files, cfg.data)
    loader = iter(DataLoader(ds, batch_sampler=EpochBatches(len(ds), 1, 0, 2, 0)))
    torch.set_num_threads(2)
    model = CycleGAN(cfg.model, cfg.loss, cfg.train)
    for _ in range(150):
        model.train_step(*next(loader))
    out = tmp_path_factory.mktemp("trained") / ckpt.checkpoint_name(model.step)
    ckpt.save_shared(out, cfg, model.nets_state(), {**model.train_state(), "world_size": 1},
                     {"data_dir": str(sample_data)})
    return out


@pytest.fixture(scope="session")
def exported(trained_checkpoint, tmp_path_factory):
    """The trained tiny checkpoint exported as style 'tiny' (fp32, int8, fp16, TorchScript)."""
    from raystyle.export.generator import export_style

    models = tmp_path_factory.mktemp("models")
    return export_style(trained_checkpoint, "tiny", models_dir=models,
                        precisions=("fp32", "int8", "fp16"), torchscript=True)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


# tiny AdaIN: 32 px crops, random VGG-19-shaped features, a decoder at 1/8 of the paper's width,
# the identity loss on (as in adain-small)
ADAIN_TINY = ["adain.features=random", "adain.decoder_width=0.125", "adain.style_size=64", "adain.identity_weight=1",
              "data.load_size=36", "data.crop_size=32", "data.loader_workers=0", "train.batch_size=2",
              "train.lr=0.001", "train.log_every=2", "train.checkpoint_every=2", "train.sample_every=2",
              "cluster.max_failures=1"]


@pytest.fixture(scope="session")
def arbitrary_style(sample_data, tmp_path_factory):
    """A tiny AdaIN decoder trained 30 steps (plain torch, no Ray), exported as arbitrary style
    'anystyle' (fp32 + int8; a decoder this small and this little trained holds ~26 dB in int8,
    so the int8 gate is lowered to 20 dB here): returns the registry.Style."""
    import torch
    from torch.utils.data import DataLoader

    from raystyle import checkpoint as ckpt
    from raystyle.data.datasets import EpochBatches, UnpairedDataset, check_dataset
    from raystyle.export.generator import export_style
    from raystyle.methods.adain import AdaINMethod, plan

    cfg, extra = plan(overrides=ADAIN_TINY)
    a, b = check_dataset(sample_data, cfg.data.crop_size)
    ds = UnpairedDataset(a.files, b.files, cfg.data)
    loader = iter(DataLoader(ds, batch_sampler=EpochBatches(len(ds), 1, 0, 2, 0)))
    torch.set_num_threads(2)
    model = AdaINMethod.from_config(cfg, torch.device("cpu"), 0, extra)
    for _ in range(30):
        model.train_step(*next(loader))
    out = tmp_path_factory.mktemp("adain_trained") / ckpt.checkpoint_name(model.step)
    ckpt.save_shared(out, cfg, model.nets_state(), {**model.train_state(), "world_size": 1},
                     {"data_dir": str(sample_data), "method": "adain"})
    return export_style(out, "anystyle", models_dir=tmp_path_factory.mktemp("adain_models"),
                        precisions=("fp32", "int8"), overrides=["export.int8_min_psnr_db=20"])
