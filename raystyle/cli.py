"""`raystyle <command>`: the one command line. ``main(argv) -> exit code``.

Expected failures (bad input, bad config, a cluster that cannot run the job) print one
line, ``raystyle: error: ...``, and exit 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HOME = Path(os.environ.get("RAYSTYLE_HOME", "~/raystyle")).expanduser()
DEMO_STYLE = "demo"


def _add_train_args(p: argparse.ArgumentParser, data_required: bool) -> None:
    p.add_argument("--data", required=data_required, metavar="DIR",
                   help="dataset folder with trainA/ and trainB/ (see `raystyle data`)")
    p.add_argument("--style", required=data_required, metavar="NAME",
                   help="run name: the run lives in STORAGE/NAME; the same name resumes it")
    p.add_argument("--config", metavar="YAML",
                   help="YAML file or preset name (paper, tiny); default: the paper's recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--workers", type=int, help="training workers (cluster.workers)")
    p.add_argument("--cpus-per-worker", type=int, help="CPUs per worker (cluster.cpus_per_worker)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (cluster.use_gpu)")
    p.add_argument("--max-steps", type=int, help="stop after N optimisation steps (train.max_steps)")
    p.add_argument("--storage", metavar="DIR", help="where runs are written (cluster.storage)")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else start a local Ray)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raystyle",
        description="Train CycleGAN style generators on a Ray cluster.",
        epilog="Run `raystyle COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train (or resume) a CycleGAN style with Ray Train",
                       description="Train a CycleGAN on unpaired folders with Ray Train (DDP). "
                       "Running the same command again resumes from the last checkpoint.")
    _add_train_args(p, data_required=True)

    p = sub.add_parser("demo", help="the whole flow on the bundled sample data, from nothing",
                       description="Write the sample dataset, train the tiny preset on a local "
                       f"Ray into {HOME}/runs/{DEMO_STYLE}. A second run reuses what exists.")
    p.add_argument("--max-steps", type=int, help="stop training after N steps")
    p.add_argument("--workers", type=int, help="training workers (default 2)")
    p.add_argument("--home", type=Path, default=HOME, help=f"demo folder (default {HOME}; env RAYSTYLE_HOME)")

    p = sub.add_parser("data", help="the bundled sample dataset and the reference datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = dsub.add_parser("sample", help="write the bundled sample dataset (photos -> painterly)",
                        description="Domain A: crops of the photos shipped in scikit-image's "
                        "wheel. Domain B: other crops of them through a painterly filter.")
    s.add_argument("out", type=Path, help="output folder (gets trainA/ trainB/ testA/ testB/)")
    s.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    d = dsub.add_parser("download", help="download a reference CycleGAN dataset",
                        description="Resumable download with size and zip-integrity checks.")
    d.add_argument("name", help="dataset name, e.g. monet2photo, vangogh2photo, horse2zebra")
    d.add_argument("out", type=Path, help="folder that receives OUT/NAME/trainA ...")
    d.add_argument("--base-url", help="mirror URL (default: the reference server; env RAYSTYLE_DATASETS_URL)")
    d.add_argument("--sha256", help="expected SHA-256 of the zip")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _train_config(args: argparse.Namespace):
    from .config import load_config

    overrides = list(args.overrides)
    for flag, key in (("workers", "cluster.workers"), ("cpus_per_worker", "cluster.cpus_per_worker"),
                      ("max_steps", "train.max_steps"), ("storage", "cluster.storage"),
                      ("address", "cluster.address")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if getattr(args, "gpu", False):
        overrides.append("cluster.use_gpu=true")
    return load_config(args.config, overrides)


def _run_training(cfg, data: Path, style: str) -> int:
    from .train import fit

    result = fit(cfg, data, style)
    print(f"run directory:    {result.run_dir}")
    print(f"final checkpoint: {result.checkpoint} (step {result.step})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    return _run_training(_train_config(args), args.data, args.style)


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data import write_sample_dataset

    home: Path = args.home.expanduser()
    data = home / "data" / "sample"
    if (data / "trainA").is_dir() and (data / "trainB").is_dir():
        print(f"[raystyle] sample dataset: {data} (exists)")
    else:
        counts = write_sample_dataset(data)
        print(f"[raystyle] sample dataset written to {data}: {counts}")
    overrides = [f"cluster.storage={home / 'runs'}"]
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.workers is not None:
        overrides.append(f"cluster.workers={args.workers}")
    return _run_training(load_config("tiny", overrides), data, DEMO_STYLE)


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "sample":
        from .data import write_sample_dataset

        counts = write_sample_dataset(args.out, size=args.size)
        print(f"sample dataset written to {args.out}: {counts}")
        print("domain B is made from photos by a painterly filter (no paintings ship with raystyle)")
        return 0
    from .download import download_dataset

    path = download_dataset(args.name, args.out, base_url=args.base_url, sha256=args.sha256,
                            progress=not args.no_progress)
    print(f"dataset ready: {path}")
    return 0


COMMANDS = {"train": cmd_train, "demo": cmd_demo, "data": cmd_data}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("raystyle: interrupted; run the same command again to resume from the last "
              "checkpoint", file=sys.stderr)
        return 130
    except ValueError as exc:  # every expected bad-input error is a ValueError subclass
        print(f"raystyle: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from ray.train import TrainingFailedError

        if isinstance(exc, TrainingFailedError):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"raystyle: training failed: {first}", file=sys.stderr)
            return 1
        raise


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
