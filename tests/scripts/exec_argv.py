"""``python exec_argv.py PROGRAM ARGS...``: become PROGRAM (same pid), so
that tests/scripts/supervised.py can follow commands that are not Python
scripts, such as systemd-socket-activate."""

import os
import sys

if __name__ == "__main__":
    os.execvp(sys.argv[1], sys.argv[1:])
