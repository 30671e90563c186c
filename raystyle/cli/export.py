"""`raystyle export` (a checkpoint to a validated ONNX style) and `raystyle styles` (the registry)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from raystyle.cli.common import print_style


def add_parser(sub) -> None:
    """Register `raystyle export` and `raystyle styles` on an argparse subparsers object."""
    p = sub.add_parser("export", help="checkpoint -> validated ONNX style in the registry",
                       description="Export one generator of a checkpoint (or of a run's latest "
                       "or best checkpoint) to ONNX, validate it against torch, and register it "
                       "as MODELS/STYLE/ with model.json.")
    p.add_argument("source", type=Path, metavar="RUN_OR_CHECKPOINT", help="checkpoint dir, or a run dir")
    p.add_argument("--style", required=True, metavar="NAME", help="style name in the registry")
    p.add_argument("--direction", choices=["ab", "ba"],
                   help="ab: photos (A) -> style (B), the default; ba: the reverse (a distilled student: its own)")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="styles registry (default ~/raystyle/models; env RAYSTYLE_MODELS)")
    p.add_argument("--precision", default="fp32,int8", metavar="LIST",
                   help="comma list of fp32, fp16, int8 (default fp32,int8; fp32 is always written)")
    p.add_argument("--best", metavar="METRIC",
                   help="given a run dir, pick its best checkpoint by this metric of the metrics "
                        "log: auto (the one the run ranked checkpoints by), a validation figure "
                        "such as val_gt_psnr (higher is better) or a loss such as cycle_a (lower)")
    p.add_argument("--torchscript", action="store_true", help="also write model.ts (TorchScript)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="export.KEY=VALUE",
                   help="override a validation threshold of the checkpoint's export config, e.g. "
                        "--set export.int8_min_psnr_db=35 (repeatable)")
    p.add_argument("--allow-unvalidated-fp16", action="store_true",
                   help="register fp16 even where this machine's CPU provider cannot run (validate) it; "
                        "model.json then says validated: false")
    p.add_argument("--ray", action="store_true", help="run the export as a Ray task on the cluster")
    p.add_argument("--address", metavar="ADDR", help="Ray address for --ray (default: RAY_ADDRESS, else local)")

    p = sub.add_parser("styles", help="list the styles in the registry")
    p.add_argument("--models-dir", type=Path, metavar="DIR", help="styles registry (default ~/raystyle/models; env RAYSTYLE_MODELS)")
    p.add_argument("--json", action="store_true", help="full metadata as JSON")


def _precisions(text: str) -> tuple[str, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return tuple(dict.fromkeys(["fp32", *parts]))


def cmd_export(args: argparse.Namespace) -> int:
    kwargs = dict(direction=args.direction, models_dir=args.models_dir,
                  precisions=_precisions(args.precision), best=args.best,
                  torchscript=args.torchscript, overrides=args.overrides,
                  allow_unvalidated_fp16=args.allow_unvalidated_fp16)
    if args.ray:
        from raystyle.train.loop import export_on_cluster

        style = export_on_cluster(args.source, args.style, address=args.address, **kwargs)
    else:
        from raystyle.export import export_style

        style = export_style(args.source, args.style, verbose=True, **kwargs)
    print(f"style {style.name!r} -> {style.path}")
    print_style(style)
    return 0


def cmd_styles(args: argparse.Namespace) -> int:
    from raystyle.registry import list_styles, models_dir

    styles = list_styles(args.models_dir)
    if args.json:
        print(json.dumps({s.name: s.meta for s in styles}, indent=2))
        return 0
    if not styles:
        print(f"no styles in {models_dir(args.models_dir)} (create one with `raystyle export`)")
    for s in styles:
        print_style(s)
    return 0


COMMANDS = {"export": cmd_export, "styles": cmd_styles}
