"""Which student `raystyle distill` trains: without --student the smallest student preset that
comes out smaller than the teacher; a student no smaller than its teacher is refused, in one
line naming both sizes. Untrained teachers written here (no training, no Ray): only their
model config matters."""

from __future__ import annotations

import pytest

from raystyle import checkpoint as ckpt
from raystyle.cli.main import main
from raystyle.methods.cyclegan import CycleGAN
from raystyle.methods.distill import DistillError, generator_params, plan
from tests.conftest import tiny_config


def _teacher(tmp_path, ngf: int, n_blocks: int):
    """An (untrained) CycleGAN checkpoint of generator width ``ngf`` and ``n_blocks`` blocks."""
    cfg = tiny_config(tmp_path).replace(model={"ngf": ngf, "ndf": 8, "n_blocks": n_blocks})
    model = CycleGAN(cfg.model, cfg.loss, cfg.train)
    out = tmp_path / f"teacher_{ngf}_{n_blocks}" / ckpt.checkpoint_name(model.step)
    ckpt.save_shared(out, cfg, model.nets_state(), {**model.train_state(), "world_size": 1},
                     {"data_dir": str(tmp_path)})
    return out


@pytest.mark.parametrize("ngf, n_blocks", [(16, 9), (32, 9), (16, 6)])
def test_the_default_student_is_the_smallest_preset_smaller_than_the_teacher(tmp_path, ngf, n_blocks):
    """student-8 (ngf 8, 6 blocks), not student-16: for a teacher of student-16's own size
    (16, 9) student-16 was the teacher again."""
    messages: list[str] = []
    cfg, extra = plan(_teacher(tmp_path, ngf, n_blocks), say=messages.append)
    assert (cfg.model.ngf, cfg.model.n_blocks) == (8, 6)
    assert "student-8" in messages[0], messages
    assert generator_params(cfg.model) < generator_params(ckpt.load_config(cfg.distill.teacher).model)
    assert set(extra["teacher"]) == {"config", "g", "d"}


def test_a_teacher_no_wider_than_every_preset_is_refused_without_student(tmp_path):
    """ngf 8 and 2 blocks: student-8 comes out as the teacher itself, student-16 is wider."""
    teacher = _teacher(tmp_path, 8, 2)
    with pytest.raises(DistillError) as info:
        plan(teacher)
    message = str(info.value)
    assert "\n" not in message and "no student preset" in message, message
    params = f"{generator_params(ckpt.load_config(teacher).model):,} parameters"
    assert message.count("ngf 8, 2 blocks, " + params) == 2, message  # the teacher's and the student's
    # a narrower student asked for with --set is fine
    cfg, _ = plan(teacher, overrides=["model.ngf=4"])
    assert (cfg.model.ngf, cfg.model.n_blocks) == (4, 2)


@pytest.mark.parametrize("ngf, n_blocks", [(16, 9), (16, 6)])
def test_an_explicit_student_the_size_of_its_teacher_is_refused(tmp_path, ngf, n_blocks):
    """student-16 of a (16, 9) teacher is the teacher's model; of a (16, 6) teacher too, once
    its blocks are lowered to the teacher's."""
    teacher = _teacher(tmp_path, ngf, n_blocks)
    with pytest.raises(DistillError, match="the student is not smaller than its teacher") as info:
        plan(teacher, "student-16")
    size = f"ngf {ngf}, {n_blocks} blocks, {generator_params(ckpt.load_config(teacher).model):,} parameters"
    assert str(info.value).count(size) == 2 and "\n" not in str(info.value), info.value
    cfg, _ = plan(teacher, "student-8")  # a smaller preset, asked for, still works
    assert (cfg.model.ngf, cfg.model.n_blocks) == (8, 6)


def test_an_explicit_student_with_more_parameters_is_refused(tmp_path):
    """No wider and no deeper, another model (9x9 edge convs), more parameters than the teacher."""
    teacher = _teacher(tmp_path, 16, 6)
    with pytest.raises(DistillError, match="not smaller than its teacher"):
        plan(teacher, "student-16", overrides=["model.edge_kernel=9"])


def test_the_cli_refuses_in_one_line_and_writes_nothing(tmp_path, capsys):
    teacher = _teacher(tmp_path, 16, 9)
    code = main(["distill", str(teacher), "--data", str(tmp_path), "--style", "s", "--student", "student-16",
                 "--storage", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("raystyle: error: the student is not smaller than its teacher: the teacher (ngf 16, 9 blocks, ")
    assert not (tmp_path / "runs").exists()


def test_the_student_help_names_the_default(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: the smallest preset smaller than the teacher" in help_text
