"""`raystyle evaluate`: held-out quality figures of a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from raystyle.cli.common import print_evaluation, say


def add_parser(sub) -> None:
    """Register `raystyle evaluate` on an argparse subparsers object."""
    p = sub.add_parser("evaluate", help="held-out quality figures of a checkpoint (no downloads)",
                       description="Held-out figures of G_ab for the photo itself, freshly "
                       "initialised nets and the checkpoint: ground-truth PSNR where the test split "
                       "is paired (the sample data), the domain score of a classifier trained on "
                       "trainA vs trainB (cached per dataset; reported only at >= 85% held-out "
                       "accuracy), content SSIM, cycle PSNR, colour distance to B.")
    p.add_argument("checkpoint", type=Path, metavar="RUN_OR_CHECKPOINT", help="checkpoint dir, or a run dir (its latest checkpoint)")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset folder: trainA/ trainB/ (the domain classifier) and testA/ testB/ "
                        "(without them: the share of train that training held back)")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--limit", type=int, default=16, metavar="N", help="images per domain (default 16)")
    p.add_argument("--grid", type=Path, metavar="PNG",
                   help="write a PNG here: rows of photos, G_ab(photos) and (paired data) ground truth")
    p.add_argument("--no-classifier", action="store_true", help="skip the domain classifier and its score")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from raystyle.train.evaluate import evaluate

    progress = None if args.json else say
    ev = evaluate(args.checkpoint, args.data, split=args.split, limit=args.limit, grid=args.grid,
                  classifier=not args.no_classifier, progress=progress)
    print_evaluation(ev, args.json)
    if args.grid:
        print(f"grid: {args.grid}")
    return 0


COMMANDS = {"evaluate": cmd_evaluate}
