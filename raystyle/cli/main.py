"""`raystyle <command>`: the one command line. ``main(argv) -> exit code``.

Each command (or family of commands) is a module of raystyle.cli with ``add_parser(sub)``
and its ``cmd_*`` functions (``COMMANDS``); this module puts them under one parser, runs the
one asked for and maps expected failures to exit codes: bad input, bad config or a cluster
that cannot run the job print one line, ``raystyle: error: ...``, and exit 2; nothing prints
a traceback for them. Building the parser imports neither torch nor Ray (`raystyle train`
alone loads the training methods, whose own flags it takes).
"""

from __future__ import annotations

import argparse
import os
import sys

from raystyle.cli import batch, data, demo, evaluate, export, nst, serve, stylize, train
from raystyle.config import VERBOSE_ENV
from raystyle.errors import RaystyleError

# In the order of `raystyle --help`.
MODULES = (train, demo, evaluate, export, stylize, serve, batch, nst, data)
COMMANDS = {name: cmd for module in MODULES for name, cmd in module.COMMANDS.items()}


def build_parser(methods: bool = False) -> argparse.ArgumentParser:
    """The whole command line; ``methods``: with every training method's own `train` flags
    (raystyle.methods: imports torch, so only when the command is `train`)."""
    parser = argparse.ArgumentParser(
        prog="raystyle",
        description="Train CycleGAN style generators on a Ray cluster.",
        epilog="Run `raystyle COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in MODULES:
        module.add_parser(sub)
    if methods:
        train.add_method_options(sub.choices["train"])
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    return build_parser(methods=bool(argv) and argv[0] == "train").parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if getattr(args, "verbose", False):  # read by raystyle.cluster (and inherited by a local Ray)
        os.environ[VERBOSE_ENV] = "1"
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        hint = ("; run the same command again to resume from the last checkpoint"
                if args.command in ("train", "distill", "demo") else "")
        print(f"raystyle: interrupted{hint}", file=sys.stderr)
        return 130
    except (RaystyleError, FileNotFoundError) as exc:  # bad input: one line; a bug keeps its traceback
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"raystyle: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:
        from ray.train import TrainingFailedError

        if isinstance(exc, TrainingFailedError):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"raystyle: training failed: {first}", file=sys.stderr)
            return 1
        raise


def entrypoint() -> None:
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. `raystyle stylize ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    entrypoint()
