"""Entrypoint for `ray job submit --working-dir . -- python jobs/train.py --data DIR --style NAME ...`.

Takes exactly the options of `raystyle train` (see `python jobs/train.py --help`).
"""

import sys

from raystyle.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
