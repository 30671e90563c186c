"""Shared fixtures: tiny configs, the sample dataset, one local Ray for the session."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
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


@contextlib.contextmanager
def one_torch_thread():
    """torch on one intra-op thread in this process for the block, then as it was. The tests'
    tensors are tiny (32 px, 4-16 channels): a second OpenMP thread buys nothing there, and
    while anything else runs on the 2 cores (Ray's processes, another test run) its
    spin-waiting makes a loop of small steps 10-30x slower (measured: the domain classifier
    2 s on one thread, 67 s on two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def torch_one_thread():
    """The test body on one torch thread (see one_torch_thread)."""
    with one_torch_thread():
        yield


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
    from raystyle.export import export_style

    models = tmp_path_factory.mktemp("models")
    with one_torch_thread():
        return export_style(trained_checkpoint, "tiny", models_dir=models,
                            precisions=("fp32", "int8", "fp16"), torchscript=True)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole run. Its dashboard runs and its actors are told where
    (RAY_API_SERVER_ADDRESS, as raystyle.cluster.connect does): Ray Train's placement-group
    cleaner asks the state API whether the controller lives, and without an address it scans
    for local clusters, fails when a test's subprocess runs another Ray ("Found multiple
    active Ray instances"), takes the controller for dead and kills the run. The variable is
    set for Ray's processes only, not for the subprocesses that tests start."""
    import ray

    from tests.helpers import free_port

    port = free_port()
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    try:
        ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_port=port,
                 logging_level="WARNING")  # a new one, even where another Ray runs here
    finally:
        if saved is None:
            del os.environ["RAY_API_SERVER_ADDRESS"]
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(ray_session):
    """One Ray Serve instance for the whole run (HTTP on a free 127.0.0.1 port): each test
    module deploys its own application on it and deletes it when done (starting and stopping
    Serve per module cost more than the tests themselves)."""
    from ray import serve

    from tests.helpers import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


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
    from raystyle.export import export_style
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
    with one_torch_thread():
        return export_style(out, "anystyle", models_dir=tmp_path_factory.mktemp("adain_models"),
                            precisions=("fp32", "int8"), overrides=["export.int8_min_psnr_db=20"])


def write_graph_style(root: Path, name: str, nodes: list, initializers: tuple = ()) -> Path:
    """A registry style NAME under ROOT: an ONNX graph of ``nodes`` from "image" to "stylized"
    (both (b, 3, h, w) float), registered as an fp32 generator. Returns ROOT."""
    import onnx
    from onnx import TensorProto, helper

    (root / name).mkdir()
    shape = ["b", 3, "h", "w"]
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("stylized", TensorProto.FLOAT, shape)],
                              list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(root / name / "model.onnx"))
    (root / name / "model.json").write_text(json.dumps(
        {"kind": "generator", "precisions": {"fp32": {"file": "model.onnx"}}}))
    return root


@pytest.fixture(scope="session")
def identity_models(tmp_path_factory) -> Path:
    """A registry with style 'ident': one Identity node (frames come out as they went in)."""
    from onnx import helper

    return write_graph_style(tmp_path_factory.mktemp("models"), "ident",
                             [helper.make_node("Identity", ["image"], ["stylized"])])


@pytest.fixture(scope="session")
def noise_photo() -> np.ndarray:
    return (np.random.default_rng(0).random((200, 200, 3)) * 255).astype(np.uint8)
