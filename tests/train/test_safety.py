"""A checkpoint cannot run code: a pickle that would call a function when loaded is refused by
every command that reads checkpoints (export, export --best, evaluate, train's resume), with
one line on stderr, exit 2, and no side effect (the payload never runs, nothing is registered,
no training starts)."""

from __future__ import annotations

import json
import os

import pytest

from raystyle import checkpoint as ckpt
from raystyle import runlog
from raystyle.cli.main import main
from raystyle.config import load_config

TRAIN_ARGS = ["--config", "tiny", "--set", "data.load_size=36", "--set", "data.crop_size=32",
              "--set", "data.loader_workers=0", "--set", "model.ngf=8", "--set", "model.ndf=8",
              "--set", "model.n_blocks=2", "--workers", "2", "--max-steps", "8"]


class Payload:
    """Pickles as a call to os.system: loading it with plain torch.load would run the command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def make_evil_run(tmp_path, sample_data, poisoned: tuple[str, ...]):
    """A run dir whose only checkpoint carries the payload in each of the files ``poisoned``."""
    marker = tmp_path / "PAYLOAD_RAN"
    cfg = load_config("tiny", [a for a in TRAIN_ARGS if "=" in a])
    run = tmp_path / "runs" / "evil"
    target = run / ckpt.checkpoint_name(4)
    from raystyle.methods.cyclegan import CycleGAN

    model = CycleGAN(cfg.model, cfg.loss, cfg.train)
    nets, state = model.nets_state(), {**model.train_state(), "step": 4, "world_size": 2}
    rank = model.rank_state()
    if "nets.pt" in poisoned:
        nets["g_ab"] = Payload(marker)
    if "train_state.pt" in poisoned:
        state["opt_g"] = Payload(marker)
    if "rank_0.pt" in poisoned:
        rank["pool_a"] = Payload(marker)
    ckpt.save_shared(target, cfg, nets, state, {"data_dir": str(sample_data)})
    ckpt.save_rank(target, 0, rank)
    ckpt.save_rank(target, 1, model.rank_state())
    runlog.append_metrics(run, {"step": 4, "cycle_a": 0.5})
    assert not marker.exists()
    return run, target, marker


@pytest.fixture(params=["nets.pt", "train_state.pt", "rank_0.pt"])
def evil_run(request, tmp_path, sample_data):
    """A run dir whose only checkpoint carries the payload in one of its files."""
    return (request.param, *make_evil_run(tmp_path, sample_data, (request.param,)))


def _refused(capsys, argv) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("raystyle: error: "), err
    return err


@pytest.mark.parametrize("which", ["nets.pt", pytest.param("train_state.pt and rank_0.pt", marks=pytest.mark.slow)])
def test_export_and_evaluate_refuse_or_never_read_it(which, capsys, tmp_path, sample_data, torch_one_thread):
    """Export and evaluate read only the nets and the manifest: a poisoned nets.pt is refused; a
    poisoned train_state.pt and rank_0.pt (one checkpoint with both) are never unpickled."""
    run, target, marker = make_evil_run(tmp_path, sample_data, tuple(which.split(" and ")))
    models = tmp_path / "models"
    # fp32 only: what an export reads of the checkpoint is the same for every precision (int8
    # calibrates on the data's images)
    fp32 = ["--models-dir", str(models), "--precision", "fp32"]
    commands = [["export", str(run), "--style", "x", "--best", "cycle_a", *fp32],
                ["evaluate", str(target), "--data", str(sample_data), "--limit", "2"]]
    if which == "nets.pt":  # refused before any export work: the checkpoint named directly too
        commands.insert(0, ["export", str(target), "--style", "x", *fp32])
    for argv in commands:
        if which == "nets.pt":
            err = _refused(capsys, argv)
            assert "refused" in err and "nets.pt" in err and "posix.system" in err
        else:  # export and evaluate read only the nets and the manifest
            assert main(argv) == 0, capsys.readouterr().err
        assert not marker.exists(), f"the payload ran during {argv[0]}"
    if which == "nets.pt":
        assert not models.exists() or not list(models.iterdir()), "nothing is registered"


def test_resume_refuses_before_any_worker_starts(evil_run, capsys, ray_session, sample_data):
    which, run, target, marker = evil_run
    err = _refused(capsys, ["train", "--data", str(sample_data), "--style", "evil",
                            "--storage", str(run.parent), *TRAIN_ARGS])
    assert "refused" in err and which in err
    assert not marker.exists()
    assert ckpt.list_checkpoints(run) == [target], "no training happened"
    assert json.loads((run / runlog.METRICS).read_text().splitlines()[-1])["step"] == 4
