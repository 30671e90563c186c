"""The method seam: a fifth training method is one file plus a preset (tests/methods/toy_method.py
and toy.yaml). It registers its config section, its own `raystyle train` flag, its plan and its
export record; the config, the CLI, Ray Train and the exporter take it without naming it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from raystyle.config import Config, ConfigError, load_config, section_class
from raystyle.methods import method_class, method_names
from tests.helpers import REPO_ROOT, one_line_error, run
from tests.methods import toy_method
from tests.methods.toy_method import ToyConfig, ToyTone


def test_the_method_and_its_section_are_registered_by_its_own_file():
    assert method_class("toy") is ToyTone and "toy" in method_names()
    assert section_class("toy") is ToyConfig
    # nothing in the package names it: everything below goes through the seam
    for path in (REPO_ROOT / "raystyle").rglob("*.py"):
        assert not re.search(r"\btoy\b", path.read_text(), re.I), path
    cfg = load_config(ToyTone.default_preset, ["toy.tone=grey"])
    assert (cfg.method, cfg.toy, cfg.fast) == ("toy", ToyConfig(tone="grey"), None)
    assert Config.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg  # as checkpoints keep it
    with pytest.raises(ConfigError, match=r"unknown config key 'toy.nope'"):
        load_config(ToyTone.default_preset, ["toy.nope=1"])
    with pytest.raises(ConfigError, match=r"toy.weight must be > 0"):
        load_config(ToyTone.default_preset, ["toy.weight=0"])
    with pytest.raises(ConfigError, match=r"at most one training method's section, not toy and fast"):
        Config.from_dict({"toy": {}, "fast": {}})


def test_train_takes_its_flag_and_preset_and_refuses_flags_of_other_methods(tmp_path, capsys):
    from raystyle.cli import main as cli
    from raystyle.cli.train import plan_run

    base = ["train", "--data", str(tmp_path), "--style", "x"]
    method, cfg, extra = plan_run(cli.parse_args([*base, "--method", "toy", "--tone", "grey"]))
    assert (method, cfg.toy.tone, cfg.model.ngf, extra) == (ToyTone, "grey", 8, {})  # toy.yaml's ngf
    # the method is also the one whose section --config has
    method, cfg, _ = plan_run(cli.parse_args([*base, "--config", ToyTone.default_preset]))
    assert (method, cfg.toy.tone) == (ToyTone, "sepia")
    # ... or whose section --set gives; another method's section is refused, never trained as this one
    assert plan_run(cli.parse_args([*base, "--set", "toy.tone=grey"]))[1].toy.tone == "grey"
    assert "give the fast section; drop --method toy" in one_line_error(
        [*base, "--method", "toy", "--set", "fast.style_weight=2"], capsys)
    assert "started with `raystyle distill`" in one_line_error([*base, "--set", "distill.lambda_gan=0"], capsys)
    assert "--tone is an option of --method toy, not of cyclegan" in one_line_error([*base, "--tone", "grey"], capsys)
    line = one_line_error([*base, "--method", "toy", "--style-image", str(tmp_path / "p.png")], capsys)
    assert "--style-image is an option of --method fast, not of toy" in line
    assert "toy.weight must be > 0" in one_line_error([*base, "--method", "toy", "--set", "toy.weight=-1"], capsys)
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--tone {sepia,grey}" in out and "--method toy: the tone" in out and "cyclegan,adain,fast,toy" in out
    with pytest.raises(SystemExit) as exc:  # argparse: not one of the methods
        cli.main([*base, "--method", "nope"])
    assert exc.value.code == 2 and "choose from 'cyclegan', 'adain', 'fast', 'toy'" in capsys.readouterr().err


def test_an_installed_package_adds_its_method_through_an_entry_point(tmp_path):
    """In a new process nothing has imported the method: an installed package names its module
    in the `raystyle.methods` entry-point group, and a config with its section, `--method` and
    `train --help` find it there."""
    dist = tmp_path / "raystyle_toy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: raystyle-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[raystyle.methods]\ntoy = tests.methods.toy_method\n")
    code = ("import sys; from raystyle.config import load_config; from raystyle.cli.main import main\n"
            "print(load_config(sys.argv[1]).method)\n"
            "main(['train', '--help'])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])}
    out = subprocess.run([sys.executable, "-c", code, ToyTone.default_preset], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert out.stdout.splitlines()[0] == "toy", out.stderr
    assert "--tone {sepia,grey}" in out.stdout and "cyclegan,adain,fast,toy" in out.stdout
    (dist / "entry_points.txt").write_text("")  # without it, the section is unknown
    out = subprocess.run([sys.executable, "-c", code, ToyTone.default_preset], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert out.returncode != 0 and "unknown config key 'toy'" in out.stderr


def test_it_trains_in_process(torch_one_thread):
    cfg = load_config(ToyTone.default_preset)
    model = ToyTone.from_config(cfg, torch.device("cpu"), 0, {})
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    first = model.train_step(x, torch.empty(0))["total"].item()
    for _ in range(20):
        last = model.train_step(x, torch.empty(0))["total"].item()
    assert last < 0.7 * first
    assert model.step == 21 and len(model.sample_rows()[0]) == 3


@pytest.mark.slow  # a Ray Train run, its resume and an export as a Ray task (~50 s)
def test_train_resume_and_export_through_ray(sample_data, ray_session, tmp_path, capsys):
    """`raystyle train --method toy` on Ray Train (the workers import the method's module),
    a resume, and `--export`: model.json carries the method and its record."""
    from raystyle import registry
    from raystyle.infer.kinds import open_stylizer

    models = tmp_path / "models"
    base = ["train", "--method", "toy", "--tone", "grey", "--data", str(sample_data), "--style", "toy1",
            "--storage", str(tmp_path / "runs")]
    rc, out, err = run([*base, "--max-steps", "3"], capsys)
    assert rc == 0, err
    assert "toning 'toy1'" in out
    rc, out, err = run([*base, "--max-steps", "6", "--export", "toy1", "--models-dir", str(models)], capsys)
    assert rc == 0, err
    assert "resumed from step 3" in out + err
    meta = registry.get_style("toy1", models).meta
    assert meta["method"] == "toy" and meta["toy"] == {"tone": "grey", "step": 6}
    stylizer = open_stylizer("toy1", models_dir=models)
    assert stylizer.stylize(np.zeros((32, 40, 3), np.uint8)).shape == (32, 40, 3)
    line = one_line_error([*base[:-2], "--storage", str(tmp_path / "runs"), "--set", "toy.tone=sepia",
                           "--tone", "sepia", "--max-steps", "9"], capsys)
    assert "different toy config" in line
    assert Path(toy_method.__file__).with_name("toy.yaml").is_file()
