"""`raystyle evaluate`: held-out quality figures of a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from raystyle.cli.common import print_evaluation, say


def add_parser(sub) -> None:
    """Register `raystyle evaluate` on an argparse subparsers object."""
    p = sub.add_parser("evaluate", help="held-out quality figures of a checkpoint (no downloads)",
                       description="Held-out figures of G_ab, on the reporting split (images "
                       "training never ranked checkpoints on), for the photo itself, a colour-transfer "
                       "baseline (the photo histogram-matched to training B images), freshly "
                       "initialised nets, the checkpoint and the run's last checkpoint: KID-EL0 and "
                       "FID-EL0 (EfficientNet-Lite0 ImageNet features, installed with raystyle: not "
                       "Inception's FID), ground-truth PSNR where the test split is paired (the sample "
                       "data), the domain score (mean probability of B) of a classifier trained on "
                       "trainA vs trainB (cached per dataset; reported only at >= 85% held-out "
                       "accuracy), content SSIM, cycle PSNR, colour distance to B.")
    p.add_argument("checkpoint", type=Path, metavar="RUN_OR_CHECKPOINT",
                   help="checkpoint dir, or a run dir (its best checkpoint by the metric it ranked them on, "
                   "else its latest); the run's last checkpoint is shown beside it")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset folder: trainA/ trainB/ (the domain classifier) and testA/ testB/ "
                        "(without them: the share of train that training held back)")
    p.add_argument("--split", default="report", choices=["report", "selection", "train"],
                   help="report (default): held-out images training never ranked checkpoints on; "
                   "selection: those validation and --best ranked on; train: the training images")
    p.add_argument("--limit", type=int, default=16, metavar="N", help="images per domain (default 16)")
    p.add_argument("--grid", type=Path, metavar="PNG",
                   help="write a PNG here: rows of photos, G_ab(photos) and (paired data) ground truth")
    p.add_argument("--no-last", action="store_true", help="do not evaluate the run's last checkpoint beside it")
    p.add_argument("--no-classifier", action="store_true", help="skip the domain classifier and its score")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from raystyle.train.evaluate import evaluate

    progress = None if args.json else say
    ev = evaluate(args.checkpoint, args.data, split=args.split, limit=args.limit, grid=args.grid,
                  classifier=not args.no_classifier, progress=progress, last=not args.no_last)
    print_evaluation(ev, args.json)
    if args.grid:
        print(f"grid: {args.grid}")
    return 0


COMMANDS = {"evaluate": cmd_evaluate}
