"""A bounded pool of handler threads: ThreadPoolMixIn and its servers.

ThreadingMixIn starts as many threads as there are requests. ThreadPoolMixIn
runs at most ``max_workers`` requests at once and holds at most
``max_queued`` more that were accepted but wait for a free thread. When both
are full the server applies back-pressure: the serve loop waits before it
calls accept() (or recvfrom()) again, so further clients wait in the
kernel's listen backlog (or socket buffer) instead of in an unbounded Python
queue, and nothing that was accepted is ever dropped.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Optional, Tuple

from ._executor import HandlerThreads
from .servers import (TCPServer, ThreadingMixIn, UDPServer, UnixStreamServer,
                      close_with_handlers)

__all__ = [
    "ThreadPoolMixIn",
    "ThreadPoolTCPServer",
    "ThreadPoolUDPServer",
    "ThreadPoolUnixStreamServer",
    "DEFAULT_MAX_WORKERS",
]

#: The default ``max_workers``: four threads per CPU, at most 32. Handlers
#: mostly wait on the network, so a few threads per core keep the cores busy;
#: the cap keeps a big machine from starting hundreds of threads by default.
DEFAULT_MAX_WORKERS = min(32, 4 * (os.cpu_count() or 1))


class ThreadPoolMixIn:
    """Mix-in class to handle each request in a bounded pool of threads.

    At most ``max_workers`` requests run at once and at most ``max_queued``
    accepted requests wait for a thread. When the pool and the queue are
    full, the server stops accepting until a thread frees up: new clients
    wait in the listen backlog (datagrams in the socket buffer) and no
    accepted request is dropped. shutdown() still returns at once, and
    serve_forever() still calls service_actions() every poll_interval.

    Methods that may be overridden:

    - process_request_thread(request, client_address): runs in a pool
      thread for each request, as in ThreadingMixIn

    Class variables that may be overridden by derived classes or
    instances:

    - max_workers: the number of handler threads (default
      ``DEFAULT_MAX_WORKERS``: four per CPU, at most 32)
    - max_queued: accepted requests that may wait for a thread (default 0:
      a request is only accepted when a thread is free; raise it to absorb
      bursts without going back to the kernel)
    - daemon_threads: whether pool threads are daemons
    - block_on_close: whether server_close() waits for running and queued
      requests

    Idle threads wait for work until server_close(); they never hold up
    interpreter exit.
    """

    max_workers: int = DEFAULT_MAX_WORKERS
    max_queued: int = 0
    daemon_threads: bool = False
    block_on_close: bool = True

    # How long one wait for room may last: serve_forever's poll_interval,
    # so that service_actions() still runs that often while the pool is
    # full; None (no limit) outside serve_forever.
    _fs_room_wait: Optional[float] = None

    def _fs_pool(self) -> HandlerThreads:
        pool = self.__dict__.get("_fs_pool_threads")
        if pool is None:
            pool = self.__dict__["_fs_pool_threads"] = HandlerThreads(
                bounded=True, name="fastserver-pool")
        pool.max_workers = self.max_workers
        pool.max_queued = self.max_queued
        return pool

    def serve_forever(self, poll_interval: Optional[float] = 0.5) -> None:
        """Handle requests until shutdown; see BaseServer.serve_forever.

        While the pool is full, service_actions() still runs once every
        poll_interval.
        """
        self._fs_room_wait = poll_interval
        try:
            super().serve_forever(poll_interval)  # type: ignore[misc]
        finally:
            del self._fs_room_wait

    def get_request(self) -> Tuple[Any, Any]:
        """Wait until the pool has room, then accept (or receive) a request.

        Raises BlockingIOError when the wait ends without room (shutdown(),
        or poll_interval is up), which the serve loop treats as "nothing to
        accept" before it runs service_actions() and polls again.
        """
        if not self._fs_pool().wait_for_room(self._fs_room_wait):
            raise BlockingIOError(errno.EAGAIN, "the thread pool is full")
        return super().get_request()  # type: ignore[misc,no-any-return]

    # The same per-request entry point as ThreadingMixIn.
    process_request_thread = ThreadingMixIn.process_request_thread

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the request to a pool thread, waiting while the pool is full.

        The wait matters only when a get_request() override skipped the
        pool's own; service_actions() keeps running every poll_interval
        meanwhile. shutdown() ends it and the request is queued anyway: it
        was accepted already, and dropping it would reset the client.
        """
        pool = self._fs_pool()
        while not pool.wait_for_room(self._fs_room_wait) and not pool.interrupted:
            self.service_actions()  # type: ignore[attr-defined]
        pool.submit(self.process_request_thread,  # type: ignore[misc]
                    (request, client_address), bool(self.daemon_threads))

    def shutdown(self) -> None:
        """Stop the serve_forever loop, even while it waits for the pool."""
        pool = self._fs_pool()
        pool.interrupt()
        try:
            super().shutdown()  # type: ignore[misc]
        finally:
            pool.resume()

    def server_close(self) -> None:
        def close_pool() -> None:
            pool = self.__dict__.pop("_fs_pool_threads", None)
            if pool is not None:
                pool.close(join=bool(self.block_on_close))

        close_with_handlers(self, super().server_close, close_pool)  # type: ignore[misc]


class ThreadPoolTCPServer(ThreadPoolMixIn, TCPServer):
    pass


class ThreadPoolUDPServer(ThreadPoolMixIn, UDPServer):
    pass


class ThreadPoolUnixStreamServer(ThreadPoolMixIn, UnixStreamServer):
    pass
