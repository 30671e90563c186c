"""`raystyle data sample` (the bundled sample dataset) and `raystyle data download`."""

from __future__ import annotations

import argparse
from pathlib import Path

# raystyle.data.download.Limits' defaults (imported lazily with requests; tests/data checks these)
MAX_MEMBERS, MAX_GIB, MAX_RATIO = 50_000, 4.0, 100.0


def positive(text: str) -> float:
    """A finite number > 0 (argparse turns the ValueError into a usage error)."""
    value = float(text)
    if not 0 < value < 1e9:
        raise ValueError(text)
    return value


def count(text: str) -> int:
    """A whole number > 0."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


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
                        description="Resumable https download (If-Range), checked against the "
                        "pinned size and sha256 (or --sha256; otherwise the hash is printed so "
                        "that it can be pinned), and against caps on the archive's members, size "
                        "and compression ratio before anything is extracted.")
    d.add_argument("name", metavar="NAME", help="dataset name, e.g. monet2photo, vangogh2photo, horse2zebra")
    d.add_argument("out", type=Path, metavar="OUT", help="folder that receives OUT/NAME/trainA ...")
    d.add_argument("--base-url", metavar="URL", help="mirror URL (default: the reference server over https; env RAYSTYLE_DATASETS_URL)")
    d.add_argument("--allow-http", action="store_true", help="accept a plain-http mirror URL (loopback hosts need no flag)")
    d.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of the zip (replaces the pinned one)")
    d.add_argument("--max-members", type=count, default=MAX_MEMBERS, metavar="N",
                   help=f"refuse an archive with more members (default {MAX_MEMBERS})")
    d.add_argument("--max-gib", type=positive, default=MAX_GIB, metavar="G",
                   help=f"refuse an archive that unpacks to more GiB (default {MAX_GIB:g})")
    d.add_argument("--max-ratio", type=positive, default=MAX_RATIO, metavar="R",
                   help=f"refuse a compression ratio above R (default {MAX_RATIO:g})")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "sample":
        from raystyle.data.datasets import write_sample_dataset

        counts = write_sample_dataset(args.out, size=args.size)
        print(f"sample dataset written to {args.out}: {counts}")
        print("domain B is made from photos by a painterly filter (no paintings ship with raystyle)")
        return 0
    from raystyle.data.download import Limits, download_dataset

    limits = Limits(max_members=args.max_members, max_bytes=int(args.max_gib * 2**30),
                    max_ratio=args.max_ratio)
    path = download_dataset(args.name, args.out, base_url=args.base_url, sha256=args.sha256,
                            allow_http=args.allow_http, limits=limits, report=print,
                            progress=not args.no_progress)
    print(f"dataset ready: {path}")
    return 0


COMMANDS = {"data": cmd_data}
