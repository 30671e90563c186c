"""Entrypoint for `ray job submit --working-dir . -- python jobs/batch_stylize.py INPUT OUTPUT --style NAME ...`.

Runs `raystyle batch` (a Ray Data job on the cluster the job was submitted to); same options.
An arbitrary style's `--style-image PAINTING` is read by this driver only (then shared with the
actors through the object store), so a painting in the working dir or any URI will do.
"""

import sys

from raystyle.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["batch", *sys.argv[1:]]))
