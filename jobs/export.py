"""Entrypoint for `ray job submit --working-dir . -- python jobs/export.py RUN_OR_CHECKPOINT --style NAME ...`.

Runs `raystyle export --ray` (the export is a Ray task on the cluster); same options.
"""

import sys

from raystyle.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["export", "--ray", *sys.argv[1:]]))
