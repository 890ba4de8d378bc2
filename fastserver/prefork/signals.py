"""Signal plumbing for the supervisor and its workers.

Signals are not handled in Python handlers: each process routes the ones it
cares about through a self-pipe (``signal.set_wakeup_fd``), and its main
loop reads the signal numbers from the pipe when it is ready for them, so
that nothing runs at an arbitrary point of the program.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from typing import Any, Dict, Iterable, Set

from .drain import libc

__all__ = ["HANDLED_SIGNALS", "SignalPipe", "kill", "set_parent_death_signal"]

#: The signals the supervisor handles (and blocks while it forks).
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                   signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGCHLD)


def _noop_handler(signum: int, frame: Any) -> None:
    # The wakeup fd carries the signal number; the handler need not act.
    pass


class SignalPipe:
    """A non-blocking pipe that the signal module writes signal numbers into.

    - ``install(handled, ignored=(), default=())``: route ``handled``
      through the pipe, ignore ``ignored``, give ``default`` its default
      action; remembers what it replaced
    - ``read(timeout)``: wait up to timeout; the signal numbers read
    - ``restore()``: put back the handlers and wakeup fd install() replaced
    - ``close()``: close both ends (also in a forked child, which inherits
      the parent's pipe and must not read its signals)
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        for fd in (self.read_fd, self.write_fd):
            os.set_blocking(fd, False)
        self._old_handlers: Dict[int, Any] = {}
        self._old_wakeup = -1

    def install(self, handled: Iterable[int], ignored: Iterable[int] = (),
                default: Iterable[int] = ()) -> None:
        for handler, signums in ((_noop_handler, handled),
                                 (signal.SIG_IGN, ignored),
                                 (signal.SIG_DFL, default)):
            for signum in signums:
                self._old_handlers[signum] = signal.signal(signum, handler)
        self._old_wakeup = signal.set_wakeup_fd(self.write_fd,
                                                warn_on_full_buffer=False)

    def read(self, timeout: float) -> Set[int]:
        try:
            ready, _, _ = select.select([self.read_fd], [], [], max(0.0, timeout))
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            ready = []
        if not ready:
            return set()
        try:
            data = os.read(self.read_fd, 512)
        except BlockingIOError:
            return set()
        return set(data)

    def restore(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def kill(pid: int, signum: int) -> None:
    """Send signum to pid, which may have exited already."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def set_parent_death_signal(signum: int) -> None:
    """Ask Linux to send signum when the parent exits (best effort)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc().prctl(1, int(signum), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
