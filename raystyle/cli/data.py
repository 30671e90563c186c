"""`raystyle data sample` (the bundled sample dataset) and `raystyle data download`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    """Register `raystyle data` and its actions on an argparse subparsers object."""
    p = sub.add_parser("data", help="the bundled sample dataset and the reference datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("sample", help="write the bundled sample dataset (photos -> painterly)",
                        description="Domain A: crops of the photos shipped in scikit-image's "
                        "wheel. Domain B: other crops of them through a painterly filter.")
    s.add_argument("out", type=Path, metavar="OUT", help="output folder (gets trainA/ trainB/ testA/ testB/)")
    s.add_argument("--size", type=int, default=128, metavar="N", help="image side in pixels (default 128)")
    d = dsub.add_parser("download", help="download a reference CycleGAN dataset",
                        description="Resumable download with size and zip-integrity checks.")
    d.add_argument("name", metavar="NAME", help="dataset name, e.g. monet2photo, vangogh2photo, horse2zebra")
    d.add_argument("out", type=Path, metavar="OUT", help="folder that receives OUT/NAME/trainA ...")
    d.add_argument("--base-url", metavar="URL", help="mirror URL (default: the reference server; env RAYSTYLE_DATASETS_URL)")
    d.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of the zip")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "sample":
        from raystyle.data.datasets import write_sample_dataset

        counts = write_sample_dataset(args.out, size=args.size)
        print(f"sample dataset written to {args.out}: {counts}")
        print("domain B is made from photos by a painterly filter (no paintings ship with raystyle)")
        return 0
    from raystyle.data.download import download_dataset

    path = download_dataset(args.name, args.out, base_url=args.base_url, sha256=args.sha256,
                            progress=not args.no_progress)
    print(f"dataset ready: {path}")
    return 0


COMMANDS = {"data": cmd_data}
