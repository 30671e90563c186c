"""`raystyle train` (CycleGAN, fast per-style nets, AdaIN) and `raystyle distill`, on Ray Train."""

from __future__ import annotations

import argparse
from pathlib import Path

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
    p.add_argument("--method", choices=["cyclegan", "fast", "adain"], default="cyclegan",
                   help="cyclegan (default): two unpaired domains; fast: photos + one --style-image; "
                   "adain: one decoder for any painting (DATA/trainA photos, DATA/trainB paintings)")
    p.add_argument("--style-image", metavar="PAINTING", help="--method fast: the style image")
    p.add_argument("--features", choices=["vgg16", "vgg19", "random"],
                   help="--method fast/adain: the feature network (fast.features: vgg16, adain.features: "
                   "vgg19 in the presets). random needs no download; see the README for how it compares")
    p.add_argument("--vgg-weights", metavar="PATH",
                   help="--method fast/adain: a VGG weights file (default: $RAYSTYLE_VGG_WEIGHTS, else "
                   "torchvision's cache under $TORCH_HOME, downloaded when missing)")
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


def train_config(args: argparse.Namespace):
    """The config of a CycleGAN run: --config (default: the paper's recipe), --set, then the flags."""
    from raystyle.config import load_config

    overrides, strings = flag_overrides(args)
    cfg = load_config(args.config, overrides)
    return cfg.replace(cluster=strings) if strings else cfg


def fast_config(args: argparse.Namespace):
    """(config, workers' extra) of a fast style run: the `fast` preset (or --config), --set,
    then the flags; the style image and the feature weights are checked here."""
    from raystyle.methods.fast import plan

    if not args.style_image:
        raise RaystyleError("--method fast needs --style-image PAINTING")
    overrides, strings = flag_overrides(args, "fast")
    settings: dict = {"cluster": strings} if strings else {}
    if args.vgg_weights:
        settings["fast"] = {"vgg_weights": str(Path(args.vgg_weights).expanduser().resolve())}
    return plan(args.style_image, args.config, overrides, settings)


def adain_config(args: argparse.Namespace):
    """(config, workers' extra) of an arbitrary-style run: the `adain` preset (or --config),
    --set, then the flags; the feature weights are checked here."""
    from raystyle.methods.adain import plan

    if args.style_image:
        raise RaystyleError("--method adain takes its paintings from DATA/trainB, not --style-image")
    overrides, strings = flag_overrides(args, "adain")
    settings: dict = {"cluster": strings} if strings else {}
    if args.vgg_weights:
        settings["adain"] = {"vgg_weights": str(Path(args.vgg_weights).expanduser().resolve())}
    return plan(args.config, overrides, settings)


def cmd_train(args: argparse.Namespace) -> int:
    from raystyle.registry import check_name
    from raystyle.util.storage import is_uri

    if args.export:
        check_name(args.export)  # fail before hours of training, not after
    cfg = train_config(args)
    if args.export and cfg.cluster.storage and is_uri(cfg.cluster.storage):
        raise RaystyleError(f"--export needs a local --storage for now (export reads local checkpoints); "
                         f"train to {cfg.cluster.storage.split('?', 1)[0]} without --export, then copy "
                         f"the checkpoint folder and run `raystyle export DIR`")
    if cfg.distill is not None:
        raise RaystyleError("a config with a distill section is a distillation: run `raystyle distill TEACHER ...`")
    extra = None
    if args.method == "fast" or cfg.fast is not None:
        cfg, extra = fast_config(args)  # the fast preset, not the paper's CycleGAN recipe
    elif args.method == "adain" or cfg.adain is not None:
        cfg, extra = adain_config(args)
    elif args.style_image or args.features or args.vgg_weights:
        raise RaystyleError("--style-image, --features and --vgg-weights are for --method fast or adain")
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
