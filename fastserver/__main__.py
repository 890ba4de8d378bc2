"""``python -m fastserver``: the ``fastserver`` command (see fastserver.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m fastserver"))
