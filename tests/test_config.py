import pytest

from raystyle.config import Config, ConfigError, load_config


def test_defaults_are_the_papers_recipe():
    cfg = load_config("paper")
    assert cfg == Config().replace(train={"checkpoint_every": 1000, "sample_every": 500, "log_every": 50})
    assert (cfg.model.ngf, cfg.model.n_blocks, cfg.model.d_layers) == (64, 9, 3)
    assert (cfg.loss.gan_mode, cfg.loss.lambda_cycle, cfg.loss.lambda_identity) == ("lsgan", 10.0, 0.5)
    assert (cfg.train.lr, cfg.train.beta1, cfg.train.epochs, cfg.train.epochs_decay) == (2e-4, 0.5, 100, 100)
    assert (cfg.data.load_size, cfg.data.crop_size, cfg.train.batch_size, cfg.train.pool_size) == (286, 256, 1, 50)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\nmodel:\n  ngf: 32\n")
    cfg = load_config(path, ["train.lr=5e-5", "cluster.use_gpu=true", "train.max_steps=7"])
    assert cfg.train.lr == 5e-5 and cfg.model.ngf == 32
    assert cfg.cluster.use_gpu is True and cfg.train.max_steps == 7


def test_round_trip_through_dict():
    cfg = load_config("tiny", ["train.max_steps=3"])
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lrr=1"], "unknown config key 'train.lrr'"),
        (["nope.x=1"], "unknown config key 'nope'"),
        (["train.lr=fast"], "train.lr: expected a number"),
        (["train.batch_size=1.5"], "train.batch_size: expected an integer"),
        (["cluster.use_gpu=3"], "cluster.use_gpu: expected true/false"),
        (["loss.gan_mode=wgan"], "loss.gan_mode: 'wgan' is not one of"),
        (["data.crop_size=300"], "data.crop_size (300) must be <= data.load_size"),
        (["cluster.workers=0"], "cluster.workers must be > 0"),
        (["lr=1"], "must look like section.key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match=r"neither a file nor a preset \['paper', 'tiny'\]"):
        load_config("nosuch")


def test_yaml_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  width: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.width'"):
        load_config(path)
