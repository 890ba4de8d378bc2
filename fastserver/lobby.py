"""The lobby: accepted connections that wait for their client's first bytes
without a thread.

A preamble step whose first act is to wait for the client (the TLS
handshake waits for the ClientHello) would hold the request's thread, or a
bounded pool's slot, or the serve loop itself on a synchronous server, for
as long as a client says nothing. Under serve_forever(), a connection such
a step wants (``step.wants_lobby(request)``) waits here instead, after
verify_request(), until ``step.first_bytes_ready(sock)`` (for TLS: the
whole first record is in); only then does it go to process_request(), and
its preamble runs as usual, without waiting for its first bytes.

How. The lobby is an epoll (kqueue, ...) set of the waiting sockets:
``selectors.DefaultSelector``. The serve loop polls its one descriptor
together with the listening socket and the waker, in the loop's one poll
(with the GIL released, in C on the cython backend), its timeout cut to
the lobby's nearest deadline, and calls :meth:`Lobby.service` after it:
one descriptor for any number of waiting connections, and a poll that costs
the same with none or thousands waiting.

Deadlines. The preamble's one deadline is counted from the accept for a
connection that waited here (preamble.note_accepted()): the time waiting is
part of the budget. One whose deadline passes here is closed and logged by
the step's rule (its logger, its level), without a thread ever holding it.
All waiting connections share one budget, so the oldest has the nearest
deadline: the lobby is a queue in order of arrival.

Bounds. At most ``limit`` connections wait (BaseServer.lobby_limit); past
it the oldest is dropped, so a flood of silent clients costs bounded
memory and descriptors and cannot push out the newest. A client that
trickles bytes after its first record holds a thread until the deadline,
which bounds it.

When serve_forever() ends, the connections still waiting go to
process_request(), so that a draining server finishes them instead of
dropping them; server_close() closes any left.
"""

from __future__ import annotations

import selectors
from collections import OrderedDict
from time import monotonic
from typing import Any, Optional, Tuple

from . import preamble
from .preamble import PreambleStep

__all__ = ["Lobby"]


class Lobby:
    """The connections of one server waiting for their first bytes."""

    def __init__(self, server: Any, step: PreambleStep,
                 budget: Optional[float], limit: int) -> None:
        self._server = server
        self._step = step
        self._budget = budget
        self._limit = max(1, int(limit))
        self._selector = selectors.DefaultSelector()
        # fd -> (request, client_address, deadline), oldest first.
        self._waiting: "OrderedDict[int, Tuple[Any, Any, Optional[float]]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def fileno(self) -> int:
        """The descriptor the serve loop polls: readable when a waiting
        connection is."""
        return self._selector.fileno()

    def timeout_ms(self, wait_ms: int) -> int:
        """wait_ms (-1: none), cut to the nearest deadline."""
        for _, _, deadline in self._waiting.values():
            if deadline is None:
                return wait_ms
            left = max(0, int((deadline - monotonic()) * 1000) + 1)
            return left if wait_ms < 0 else min(wait_ms, left)
        return wait_ms

    def admit(self, request: Any, client_address: Any) -> bool:
        """Take request to wait here, if its step wants it; False when the
        server should process it at once."""
        if not self._step.wants_lobby(request):
            return False
        now = monotonic()
        fd = request.fileno()
        try:
            self._selector.register(fd, selectors.EVENT_READ)
        except (OSError, ValueError):
            return False   # out of memory, say: the preamble waits in line
        preamble.note_accepted(request, now)
        deadline = None if self._budget is None else now + self._budget
        self._waiting[fd] = (request, client_address, deadline)
        while len(self._waiting) > self._limit:
            self._drop(next(iter(self._waiting)), "too many connections waiting")
        return True

    def service(self, readable: bool) -> None:
        """After the loop's poll: the ready go on to process_request(), the
        late are dropped. readable: the lobby's descriptor was."""
        if readable:
            for key, _ in self._selector.select(0):
                entry = self._waiting.get(key.fd)
                if entry is not None and self._step.first_bytes_ready(entry[0]):
                    self._release(key.fd)
        now = monotonic()
        while self._waiting:
            fd, (_, _, deadline) = next(iter(self._waiting.items()))
            if deadline is None or deadline > now:
                break
            self._drop(fd, "no complete first message within %g s"
                       % (self._budget or 0.0))

    def release_all(self) -> None:
        """serve_forever() is ending: every waiting connection goes on."""
        while self._waiting:
            self._release(next(iter(self._waiting)))

    def close(self) -> None:
        """server_close(): drop whatever still waits."""
        while self._waiting:
            self._drop(next(iter(self._waiting)), "server closed")
        self._selector.close()

    def _take(self, fd: int) -> Tuple[Any, Any]:
        request, client_address, _ = self._waiting.pop(fd)
        self._selector.unregister(fd)
        return request, client_address

    def _release(self, fd: int) -> None:
        request, client_address = self._take(fd)
        self._step.leave_lobby(request)
        self._server._fs_dispatch(request, client_address)

    def _drop(self, fd: int, reason: str) -> None:
        request, client_address = self._take(fd)
        step = self._step
        step.logger.log(step.log_level, "dropped connection from %s: %s",
                        preamble.describe(client_address), reason)
        self._server.shutdown_request(request)
