"""A worker process: serve the shared socket until told to stop, then drain.

The worker runs ``server.serve_forever()`` in a thread while its main
thread waits for signals. SIGINT and SIGQUIT end the process at once.
SIGTERM (from the supervisor, from a process-group kill, or for this worker
alone) starts a drain: when the supervisor has closed the socket to new
clients, keep accepting until nothing is queued or on its way; then stop
the serve loop, close the server, and wait for the requests in flight, all
within the graceful timeout.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from time import monotonic
from typing import Any, Optional, Set

from .signals import SignalPipe, set_parent_death_signal

__all__ = ["Worker", "InFlight", "EXIT_GRACEFUL_TIMEOUT", "EXIT_BOOT_FAILED"]

log = logging.getLogger("fastserver.prefork")

#: A worker's exit status when the graceful timeout cut requests short.
EXIT_GRACEFUL_TIMEOUT = 3
#: A worker's exit status when post_fork() raised.
EXIT_BOOT_FAILED = 4

_STOP_NOW = frozenset((signal.SIGINT, signal.SIGQUIT))
_ACCEPT_INHERITS_NONBLOCK = not sys.platform.startswith("linux")


class InFlight:
    """A worker's requests in flight: the server's ``request_observer``.

    The server calls request_started() before process_request() and
    request_finished() once the request is closed, around the overridable
    methods rather than inside them, so overrides that skip super() are
    counted too (see BaseServer.request_observer). ``len()`` is the number
    in flight; ``wait(deadline)`` waits for none.
    """

    def __init__(self) -> None:
        self._ids: Set[int] = set()
        self._cond = threading.Condition()
        self._pid = os.getpid()

    def request_started(self, request: Any, client_address: Any) -> None:
        with self._cond:
            self._ids.add(id(request))
        if _ACCEPT_INHERITS_NONBLOCK and isinstance(request, socket.socket) \
                and request.gettimeout() is None:
            # The listening socket is non-blocking; on the BSDs and macOS
            # accepted sockets inherit that.
            request.setblocking(True)

    def request_finished(self, request: Any) -> None:
        # The request is alive during every call for it, so its id cannot
        # name another request yet; a repeated call finds nothing. A child
        # of a forking server ends its copy of the request: not ours.
        if os.getpid() != self._pid:
            return
        with self._cond:
            self._ids.discard(id(request))
            if not self._ids:
                self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._ids)

    def wait(self, deadline: float) -> bool:
        with self._cond:
            while self._ids:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True


class Worker:
    """One worker process of a :class:`~fastserver.prefork.Supervisor`,
    from just after the fork to its exit status.

    Its settings are the supervisor's: ``server``, ``listener``,
    ``post_fork``, ``poll_interval``, ``graceful_timeout`` and
    ``drain_mark_wait``.
    """

    def __init__(self, supervisor: Any, index: int) -> None:
        self.supervisor = supervisor
        self.server = supervisor.server
        self.listener = supervisor.listener
        self.index = index

    def run(self, drain_deadline: Optional[float], mask: Any,
            inherited_signals: SignalPipe) -> int:
        """Serve until a signal says stop; the process's exit status.

        ``mask`` is the signal mask to restore (the supervisor blocked its
        signals across the fork); ``inherited_signals`` is the supervisor's
        pipe, which this process must stop reading. With ``drain_deadline``
        the worker drains at once, by that deadline.
        """
        supervisor, server, index = self.supervisor, self.server, self.index
        inherited_signals.close()
        signals = SignalPipe()
        signals.install((signal.SIGTERM, signal.SIGINT, signal.SIGQUIT),
                        ignored=(signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2),
                        default=(signal.SIGCHLD,))
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        set_parent_death_signal(signal.SIGTERM)
        inflight = server.request_observer = InFlight()
        if supervisor.post_fork is not None:
            try:
                supervisor.post_fork(server, index)
            except Exception:
                log.exception("post_fork failed in worker %d", index)
                return EXIT_BOOT_FAILED
        serving = threading.Thread(target=server.serve_forever,
                                   kwargs={"poll_interval": supervisor.poll_interval},
                                   name="fastserver-serve", daemon=True)
        serving.start()
        if drain_deadline is None:
            while True:
                signums = signals.read(1.0)
                if signums & _STOP_NOW:
                    return 0
                if signal.SIGTERM in signums:
                    break
                if os.getppid() != supervisor._pid:
                    log.warning("worker %d: supervisor is gone; stopping", index)
                    break
                if not serving.is_alive():
                    log.error("worker %d: serve_forever() ended", index)
                    return 1
            deadline = monotonic() + supervisor.graceful_timeout
        else:
            deadline = drain_deadline
        return self._drain(inflight, signals, deadline)

    def _drain(self, inflight: InFlight, signals: SignalPipe,
               deadline: float) -> int:
        server, listener, index = self.server, self.listener, self.index
        closed = listener.closed_to_new()
        if not closed and listener.can_close_to_new:
            # A SIGTERM sent to the whole process group reaches us at the
            # same time as the supervisor: give it a moment to close the
            # socket to new clients, serving meanwhile.
            end = min(deadline, monotonic() + self.supervisor.drain_mark_wait)
            while not closed and monotonic() < end:
                if signals.read(0.01) & _STOP_NOW:
                    return 0
                closed = listener.closed_to_new()
        log.debug("worker %d draining (%s)", index,
                  "server-wide" if closed else "this worker only")
        done = threading.Event()

        def finish() -> None:
            try:
                if closed:
                    # Keep accepting until nothing is queued or on the way.
                    listener.wait_drained(deadline)
                server.shutdown()
                server.server_close()
                inflight.wait(deadline)
            except Exception:
                log.exception("worker %d: error while draining", index)
            finally:
                done.set()

        threading.Thread(target=finish, name="fastserver-drain",
                         daemon=True).start()
        while not done.is_set():
            remaining = deadline - monotonic()
            if remaining <= 0:
                log.warning("worker %d: graceful timeout, %d request%s cut",
                            index, len(inflight), "" if len(inflight) == 1 else "s")
                return EXIT_GRACEFUL_TIMEOUT
            if signals.read(min(remaining, 0.02)) & _STOP_NOW:
                return 0
        return 0
