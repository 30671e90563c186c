"""`raystyle train` (CycleGAN, fast per-style nets, AdaIN) and `raystyle distill`, on Ray Train."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from raystyle.cli.common import (
    add_cluster_args,
    add_train_args,
    export_run,
    flag_overrides,
    print_run,
    run_training,
    say,
)
from raystyle.errors import RaystyleError


def add_parser(sub) -> None:
    """Register `raystyle train` and `raystyle distill` on an argparse subparsers object."""
    p = sub.add_parser("train", help="train (or resume) a CycleGAN or a fast per-style net with Ray Train",
                       description="Train a CycleGAN on unpaired folders, or (--method fast) a fast "
                       "feed-forward network for one painting on a folder of photos (Johnson et al. "
                       "2016), with Ray Train (DDP). Running the same command again resumes from the "
                       "last checkpoint.")
    add_train_args(p, data_required=True)
    p.add_argument("--method",
                   help="the training method (default: the one whose section --config has, else cyclegan): "
                   "cyclegan, two unpaired domains; fast, photos + one --style-image; adain, one decoder "
                   "for any painting (DATA/trainA photos, DATA/trainB paintings); or another registered one")
    p.add_argument("--export", metavar="STYLE",
                   help="after training, export g_ab as STYLE (fp32 + int8) with a Ray task")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="styles registry for --export (env RAYSTYLE_MODELS)")

    p = sub.add_parser("distill", help="distil a trained style into a small, fast student (Ray Train)",
                       description="Distil a trained generator (the teacher) into a smaller student "
                       "generator on Ray Train: L1 to the teacher's output, feature matching through "
                       "1x1 adapters, and a GAN term with the teacher's discriminator as a warm start. "
                       "The student run lives in STORAGE/NAME like a training run; the same command "
                       "again resumes it. `raystyle export STORAGE/NAME --style NAME` exports it.")
    p.add_argument("teacher", metavar="TEACHER_RUN_OR_CHECKPOINT",
                   help="a training run (its latest checkpoint) or one checkpoint folder")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="dataset with trainA/ and trainB/ (the teacher's source domain to translate, its "
                        "target domain for the discriminator); testA/testB or a held-back share validate")
    p.add_argument("--style", required=True, metavar="NAME",
                   help="run name: the student run lives in STORAGE/NAME; the same name resumes it")
    p.add_argument("--student", metavar="PRESET",
                   help="student preset or YAML with model keys (student-16, student-8; default: the "
                        "smallest preset smaller than the teacher); a student not smaller than its teacher is refused")
    p.add_argument("--config", metavar="YAML",
                   help="YAML whose sections go over the teacher's (data, train, distill ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value, e.g. --set distill.lambda_gan=0 or --set model.ngf=12 (repeatable)")
    add_cluster_args(p, "where runs are written (cluster.storage; default: the teacher's, else $RAYSTYLE_HOME/runs)")
    p.add_argument("--export", action="store_true",
                   help="then export the student as style NAME (its best checkpoint by agreement with the teacher)")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="styles registry for --export (env RAYSTYLE_MODELS)")


def _train_methods() -> list[str]:
    """The methods `raystyle train` runs, CycleGAN first."""
    from raystyle.methods import method_class, method_names

    return sorted((n for n in method_names() if method_class(n).command == "train"),
                  key=lambda n: (n != "cyclegan", n))


def _options() -> dict[str, tuple[Any, list[str]]]:
    """flag -> (its Option, the train methods that take it), in the order they are met."""
    from raystyle.methods import method_class

    found: dict[str, tuple[Any, list[str]]] = {}
    for name in _train_methods():
        for option in method_class(name).options:
            found.setdefault(option.flag, (option, []))[1].append(name)
    return found


def add_method_options(p: argparse.ArgumentParser) -> None:
    """Every training method's own flags (``Method.options``) on `raystyle train`; a flag that
    several methods share is added once. Imports the methods (torch): only `train` needs them."""
    next(a for a in p._actions if a.dest == "method").choices = _train_methods()
    for o, users in _options().values():
        p.add_argument(o.flag, dest=o.dest, metavar=o.metavar, choices=o.choices, type=o.type,
                       help=f"--method {'/'.join(users)}: {o.help}")


def method_of(args: argparse.Namespace):
    """The run's training method: --method, else the one whose section --config or --set
    gives, else CycleGAN."""
    from raystyle.config import CORE_SECTIONS, parse_overrides, read_yaml, section_class
    from raystyle.methods import method_class

    data = read_yaml(args.config) if args.config else {}
    parse_overrides(args.overrides, data)
    given = [k for k, v in data.items() if v is not None and k not in CORE_SECTIONS and section_class(k) is not None]
    if len(given) > 1:
        raise RaystyleError(f"--config and --set give the sections of two training methods: {' and '.join(given)}")
    if args.method and given and given != [args.method]:
        raise RaystyleError(f"--config/--set give the {given[0]} section; drop --method {args.method} "
                            f"or the {given[0]} settings")
    return method_class(args.method or (given[0] if given else "cyclegan"))


def plan_run(args: argparse.Namespace):
    """(method, config, workers' extra) of `raystyle train`: the method's preset (or --config),
    --set, then the flags (its own ones into its section); the method checks them all."""
    method = method_of(args)
    if method.command != "train":
        raise RaystyleError(f"a {method.name} run is started with `raystyle {method.command}`, not "
                            f"`raystyle train` (a config with a {method.name} section is one)")
    own = {o.flag for o in method.options}
    foreign = [(flag, users) for flag, (o, users) in _options().items()
               if flag not in own and getattr(args, o.dest, None) is not None]
    if foreign:
        flag, users = foreign[0]
        why = method.refuses.get(flag)
        raise RaystyleError(f"--method {method.name} takes no {flag}: {why}" if why else
                            f"{flag} is an option of --method {' and '.join(users)}, not of {method.name} "
                            "(see `raystyle train --help`)")
    overrides, strings = flag_overrides(args)
    settings: dict = {"cluster": strings} if strings else {}
    values = {}
    for o in method.options:
        value = getattr(args, o.dest, None)
        if value is not None:
            values[o.key] = str(Path(value).expanduser().resolve()) if o.path else value
    if values:
        settings[method.name] = values
    cfg, extra = method.plan(args.config, overrides, settings)
    if cfg.method != method.name:  # a method's plan must build its own config
        raise RaystyleError(f"--method {method.name}: its plan built a {cfg.method} config")
    return method, cfg, extra


def _local_for_export(storage: str | None) -> None:
    from raystyle.util.storage import is_uri

    if storage and is_uri(storage):
        raise RaystyleError(f"--export needs a local --storage for now (export reads local checkpoints); "
                            f"train to {storage.split('?', 1)[0]} without --export, then copy "
                            f"the checkpoint folder and run `raystyle export DIR`")


def cmd_train(args: argparse.Namespace) -> int:
    from raystyle.registry import check_name

    if args.export:
        check_name(args.export)  # fail before hours of training, not after
        _local_for_export(args.storage)  # before the plan (which may load VGG weights)
    _, cfg, extra = plan_run(args)
    if args.export:
        _local_for_export(cfg.cluster.storage)
    result = run_training(cfg, args.data, args.style, extra)
    if args.export:
        export_run(result, args.export, args.models_dir)
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from raystyle.methods.distill import plan
    from raystyle.registry import check_name
    from raystyle.train.loop import fit

    if args.export:
        check_name(args.style)  # fail before the distillation, not after
    cluster: dict = {k: v for k, v in (("workers", args.workers), ("cpus_per_worker", args.cpus_per_worker),
                                       ("storage", args.storage), ("address", args.address)) if v is not None}
    if args.gpu:
        cluster["use_gpu"] = True
    settings: dict = {"cluster": cluster} if cluster else {}
    if args.max_steps is not None:
        settings["train"] = {"max_steps": args.max_steps}
    cfg, extra = plan(args.teacher, args.student, args.config, args.overrides, settings, say=say)
    d = cfg.distill
    say(f"teacher: {d.teacher} (step {d.teacher_step}, g_{d.direction}); student: ngf "
        f"{cfg.model.ngf}, {cfg.model.n_blocks} blocks, upsample {cfg.model.upsample}")
    result = fit(cfg, args.data, args.style, extra=extra)
    print_run(result)
    if args.export:
        export_run(result, args.style, args.models_dir)
    return 0


COMMANDS = {"train": cmd_train, "distill": cmd_distill}
