"""The pure-torch distiller and its plan (no Ray): the conftest's trained tiny teacher on CPU."""

import copy
import json

import pytest
import torch

from raystyle import checkpoint as ckpt
from raystyle.cli.main import main
from raystyle.methods.distill import Distiller, DistillError, plan, tap_points
from tests.helpers import REPO_ROOT

STUDENT = ["model.ngf=4", "model.n_blocks=2"]  # the teacher: ngf 8, 2 blocks


def _batch(seed, n=2, side=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=g) * 2 - 1, torch.rand(n, 3, side, side, generator=g) * 2 - 1


def test_tap_points():
    assert tap_points(9) == [-1, 2, 5, 8]
    assert tap_points(6) == [-1, 1, 3, 5]
    assert tap_points(2) == [-1, 0, 0, 1]
    with pytest.raises(DistillError):
        tap_points(0)


def test_distilling_a_trained_teacher_brings_the_student_closer_on_held_out_photos(trained_checkpoint, sample_data):
    """The conftest's tiny CycleGAN (150 steps on the sample data) teaches a half-width
    student on trainA/trainB; the student's L1 to the teacher on testA photos falls, the
    teacher does not change and the discriminator starts as the teacher's D_b."""
    from torch.utils.data import DataLoader

    from raystyle.data.datasets import EpochBatches, UnpairedDataset, check_dataset
    from raystyle.train.evaluate import load_images

    cfg, extra = plan(trained_checkpoint, overrides=["model.ngf=4", "train.lr=1e-3"])
    assert (cfg.model.ngf, cfg.model.n_blocks, cfg.model.upsample) == (4, 2, "resize")  # student-16, clamped; the teacher's upsampling
    assert cfg.data == ckpt.load_config(trained_checkpoint).data  # the teacher's data settings
    torch.set_num_threads(2)
    dist = Distiller.from_config(cfg, torch.device("cpu"), 0, extra)
    _, nets = ckpt.load_nets(trained_checkpoint)
    for k, v in nets["d_b"].items():
        assert torch.equal(dist.d.state_dict()[k], v)
    for k, v in nets["g_ab"].items():
        assert torch.equal(dist.teacher.state_dict()[k], v)
    before = copy.deepcopy(dist.teacher.state_dict())
    held_out = torch.cat(load_images(sample_data / "testA", 6, 32))

    def gap():
        with torch.no_grad():
            return float((dist.student(held_out) - dist.teacher(held_out)).abs().mean())

    start = gap()
    a, b = check_dataset(sample_data, cfg.data.crop_size)
    loader = iter(DataLoader(UnpairedDataset(a.files, b.files, cfg.data),
                             batch_sampler=EpochBatches(len(a.files), 1, 0, 2, 0)))
    for _ in range(120):
        losses = dist.train_step(*next(loader))
    assert set(losses) == {"recon_l1", "feature_mse", "g_gan", "g_total", "d"}
    end = gap()
    assert end < 0.7 * start, (start, end)
    for k, v in dist.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(p.requires_grad for p in dist.teacher.parameters())


def test_a_restored_distiller_continues_exactly(trained_checkpoint):
    cfg, extra = plan(trained_checkpoint, overrides=STUDENT + ["model.dropout=0.2"])
    ref = Distiller.from_config(cfg, torch.device("cpu"), 0, extra)
    for s in range(3):
        ref.train_step(*_batch(s))
    ref.end_epoch()
    saved = copy.deepcopy((ref.nets_state(), ref.train_state(), ref.rank_state()))
    expected = [ref.train_step(*_batch(s)) for s in (3, 4)]
    other = Distiller.from_config(cfg, torch.device("cpu"), 1, extra)  # another rank's seed
    other.load(*saved)
    got = [other.train_step(*_batch(s)) for s in (3, 4)]
    for e, g in zip(expected, got, strict=True):
        for k in e:
            assert torch.equal(e[k], g[k]), k
    for k, v in ref.nets_state()["g_ab"].items():
        assert torch.equal(v, other.nets_state()["g_ab"][k]), k
    assert (other.step, other.epoch, other.lr()) == (ref.step, ref.epoch, ref.lr())


def test_the_ba_direction_distils_g_ba_against_domain_a(trained_checkpoint):
    cfg, extra = plan(trained_checkpoint, overrides=STUDENT + ["distill.direction=ba"])
    dist = Distiller.from_config(cfg, torch.device("cpu"), 0, extra)
    _, nets = ckpt.load_nets(trained_checkpoint)
    assert all(torch.equal(dist.teacher.state_dict()[k], v) for k, v in nets["g_ba"].items())
    assert all(torch.equal(dist.d.state_dict()[k], v) for k, v in nets["d_a"].items())
    a, b = _batch(0)
    dist.train_step(a, b)
    assert torch.equal(dist.last[0], b)  # the student translates B
    assert set(dist.nets_state()) == {"g_ba", "d_a", "adapters"}


def test_the_plan_layers_teacher_preset_yaml_and_overrides(trained_checkpoint, tmp_path):
    yaml_file = tmp_path / "d.yaml"
    yaml_file.write_text("train:\n  lr: 0.0005\ndistill:\n  lambda_gan: 0.5\n")
    messages = []
    cfg, _ = plan(trained_checkpoint, "student-8", yaml_file, ["distill.lambda_gan=0.25", "model.ngf=4"],
                  {"cluster": {"workers": 1}, "train": {"max_steps": 7}}, say=messages.append)
    teacher = ckpt.load_config(trained_checkpoint)
    assert (cfg.model.ngf, cfg.model.n_blocks) == (4, 2) and cfg.model.ndf == teacher.model.ndf
    assert "2 residual blocks" in messages[0]
    assert (cfg.train.lr, cfg.train.max_steps, cfg.cluster.workers) == (5e-4, 7, 1)
    assert cfg.train.epochs == teacher.train.epochs and cfg.train.ema == 0.0
    assert cfg.distill.lambda_gan == 0.25 and cfg.distill.teacher == str(trained_checkpoint)
    assert cfg.distill.teacher_step == 150 and cfg.method == "distill"


@pytest.mark.parametrize("extra_args, message", [
    (["--set", "model.ngf=16"], "wider or deeper than its teacher"),
    (["--set", "model.n_blocks=3"], "wider or deeper than its teacher"),
    (["--set", "model.ndf=4", "--set", "model.ngf=4"], "must match the teacher's"),
    (["--student", "nonesuch"], "neither a file nor a preset"),
    (["--set", "distill.direction=up"], "distill.direction"),
    (["--set", "distill.lambda_recon=-1"], "distill.lambda_recon must be >= 0"),
])
def test_bad_students_are_one_line_errors_and_nothing_is_written(trained_checkpoint, sample_data, tmp_path,
                                                                 capsys, extra_args, message):
    code = main(["distill", str(trained_checkpoint), "--data", str(sample_data), "--style", "s",
                 "--storage", str(tmp_path / "runs"), *extra_args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_an_incomplete_or_unsafe_teacher_is_refused(trained_checkpoint, sample_data, tmp_path, capsys):
    import shutil

    broken = tmp_path / "checkpoint_00000001"
    shutil.copytree(trained_checkpoint, broken)
    (broken / "nets.pt").write_bytes((broken / "nets.pt").read_bytes()[:100])
    args = ["--data", str(sample_data), "--style", "s", "--storage", str(tmp_path / "runs")]
    assert main(["distill", str(broken), *args]) == 2
    assert "incomplete: nets.pt is missing or truncated" in capsys.readouterr().err
    assert main(["distill", str(tmp_path / "nowhere"), *args]) == 2
    assert "neither a checkpoint nor a run directory" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_dataset_without_the_source_domain_is_refused(trained_checkpoint, tmp_path, capsys):
    from PIL import Image

    (tmp_path / "data" / "trainB").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(tmp_path / "data" / "trainB" / "b.png")
    code = main(["distill", str(trained_checkpoint), "--data", str(tmp_path / "data"), "--style", "s",
                 "--storage", str(tmp_path / "runs"), "--set", "model.ngf=4"])
    err = capsys.readouterr().err
    assert code == 2 and "trainA" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_train_refuses_a_distillation_config(sample_data, tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps({"distill": {"lambda_gan": 0.5}}))
    code = main(["train", "--data", str(sample_data), "--style", "x", "--config", str(cfg_file),
                 "--storage", str(tmp_path / "runs")])
    assert code == 2 and "raystyle distill" in capsys.readouterr().err


def test_the_jobs_wrapper_takes_the_distill_options():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(REPO_ROOT / "jobs" / "distill.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "TEACHER_RUN_OR_CHECKPOINT" in out and "--student PRESET" in out and "--export" in out


def test_the_monitor_draws_a_distillation_s_losses_validation_and_grids():
    from raystyle.config import load_config
    from raystyle.monitor import snapshot as mon

    charted = {k for _, keys in mon.VAL_CHARTS for k in keys}
    assert set(Distiller.validation_metrics(True, None)) <= charted
    assert set(Distiller.loss_keys(load_config("tiny"))) <= set(mon.LOSS_KEYS)
    assert mon.sample_layout([{"recon_l1": 0.1}]) == "columns: photo | teacher | student"
    assert mon.sample_layout([{"cycle_a": 0.1}]).startswith("rows: real A")


@pytest.mark.parametrize("upsample, residual", [("deconv", False), ("resize", True)])
def test_a_student_starts_as_a_slice_of_its_teacher(upsample, residual):
    """distill.init teacher: a student as wide and deep as the teacher is the teacher; a
    narrower one keeps the teacher's strongest channels and starts closer to its output than
    a randomly initialised one; another upsampling cannot be sliced (left random)."""
    from raystyle.config import ModelConfig
    from raystyle.core.nets import build_generator
    from raystyle.methods.distill import transfer_weights

    def gen(ngf, blocks, up=upsample):
        return build_generator(ModelConfig(ngf=ngf, n_blocks=blocks, upsample=up, residual=residual,
                                           colour_skip=residual)).eval()

    torch.manual_seed(0)
    teacher = gen(8, 3)
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(0, 0.2)
    x = _batch(1, 2, 32)[0]
    same = gen(8, 3)
    assert transfer_weights(teacher, same)
    assert torch.equal(same(x), teacher(x))
    sliced, random = gen(6, 2), gen(6, 2)
    assert transfer_weights(teacher, sliced)
    first_t, first_s = teacher.model[1], sliced.model[1]  # the 7x7 input conv
    keep = first_t.weight.abs().sum((1, 2, 3)).topk(6).indices.sort().values
    assert torch.equal(first_s.weight, first_t.weight[keep]) and torch.equal(first_s.bias, first_t.bias[keep])
    with torch.no_grad():
        gap_sliced = float((sliced(x) - teacher(x)).abs().mean())
        gap_random = float((random(x) - teacher(x)).abs().mean())
    assert gap_sliced < gap_random, (gap_sliced, gap_random)
    assert not transfer_weights(teacher, gen(6, 2, "resize" if upsample == "deconv" else "deconv"))
