"""Entrypoint for `ray job submit --working-dir . -- python jobs/distill.py TEACHER --data DIR --style NAME ...`.

Takes exactly the options of `raystyle distill` (see `python jobs/distill.py --help`).
"""

import sys

from raystyle.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
