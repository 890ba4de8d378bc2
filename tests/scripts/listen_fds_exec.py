"""Exec a command the way systemd starts a socket-activated service, with a
socket the caller keeps a copy of (as systemd does):

    listen_fds_exec.py FD[,FD...] [--names A:B] -- COMMAND [ARGS...]

The descriptors are moved to 3, 4, ...; LISTEN_FDS, LISTEN_PID (this
process, which the exec keeps) and LISTEN_FDNAMES are set.
"""

from __future__ import annotations

import fcntl
import os
import sys


def main() -> None:
    args = sys.argv[1:]
    fds = [int(f) for f in args.pop(0).split(",")]
    names = None
    if args[0] == "--names":
        args.pop(0)
        names = args.pop(0)
    assert args.pop(0) == "--"
    # Out of the way first, so that moving one cannot overwrite another.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds]
    for fd in fds:
        os.close(fd)
    for index, fd in enumerate(high):
        os.dup2(fd, 3 + index)  # dup2 makes the new descriptor inheritable
        os.close(fd)
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_PID"] = str(os.getpid())
    if names is not None:
        os.environ["LISTEN_FDNAMES"] = names
    os.execv(sys.executable, [sys.executable] + args)


if __name__ == "__main__":
    main()
