"""Shared fixtures: tiny configs, the sample dataset, one local Ray for the session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raystyle.config import Config, load_config
from raystyle.data import write_sample_dataset

os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


def tiny_config(tmp: Path, **train) -> Config:
    """The tiny preset shrunk further: 32 px crops, 8-channel nets, 2 CPU workers."""
    cfg = load_config("tiny", [f"cluster.storage={tmp}"])
    return cfg.replace(
        data={"load_size": 36, "crop_size": 32, "loader_workers": 0},
        model={"ngf": 8, "ndf": 8, "n_blocks": 2},
        train={"pool_size": 4, "log_every": 2, "checkpoint_every": 4, "sample_every": 4, **train},
        cluster={"workers": 2, "max_failures": 1},
    )


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample")
    write_sample_dataset(root, size=48, per_photo=1)
    return root


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
