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

import collections
import errno
import os
import threading
from typing import Any, Callable, Deque, Set, Tuple

from ._workers import release_idle_at_exit
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

_Job = Tuple[Callable[..., Any], Tuple[Any, ...]]


class BoundedThreads:
    """The handler threads and the wait queue of one ThreadPoolMixIn server.

    ``running`` jobs run in threads (at most ``max_workers``); ``queued``
    jobs wait for one. A thread is started only when a job finds no idle
    thread, and idle threads wait for work until close().

    Methods for the server:

    - wait_for_room(max_workers, max_queued) -> bool
    - submit(fn, args, max_workers, max_queued, daemon)
    - interrupt() / resume(): make every wait return at once (shutdown)
    - close(join): idle threads exit, queued jobs still run; optionally
      join the non-daemon threads
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Threads wait on _work for a job; the serve loop waits on _room for
        # a free place.
        self._work = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._queue: Deque[_Job] = collections.deque()
        self._threads: Set[threading.Thread] = set()
        self._idle = 0
        self.running = 0
        self._interrupted = 0
        self._closed = False
        release_idle_at_exit(self)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def __len__(self) -> int:
        """The number of live threads, busy or idle."""
        return len(self._threads)

    def _full(self, max_workers: int, max_queued: int) -> bool:
        return self.running + len(self._queue) >= max(1, max_workers) + max(0, max_queued)

    def wait_for_room(self, max_workers: int, max_queued: int) -> bool:
        """Wait until one more job fits; False if interrupted first."""
        with self._lock:
            while self._full(max_workers, max_queued):
                if self._interrupted:
                    return False
                self._room.wait()
            return True

    def submit(self, fn: Callable[..., Any], args: Tuple[Any, ...],
               max_workers: int, max_queued: int, daemon: bool) -> None:
        """Queue fn(*args) for a thread, waiting while the pool is full.

        An interrupt() ends the wait and queues the job anyway: it was
        accepted already, and dropping it would reset the client.
        """
        start = False
        with self._lock:
            while self._full(max_workers, max_queued) and not self._interrupted:
                self._room.wait()
            self._queue.append((fn, args))
            if len(self._queue) > self._idle and \
                    len(self._threads) < max(1, max_workers):
                start = True
            else:
                self._work.notify()
            if start:
                thread = threading.Thread(target=self._run, daemon=daemon,
                                          name="fastserver-pool")
                self._threads.add(thread)
        if start:
            try:
                thread.start()
            except BaseException:
                with self._lock:
                    self._threads.discard(thread)
                    # Let an existing thread take the job, if any is left.
                    self._work.notify()
                raise

    def _run(self) -> None:
        me = threading.current_thread()
        lock = self._lock
        try:
            while True:
                with lock:
                    while not self._queue:
                        if self._closed:
                            return
                        self._idle += 1
                        try:
                            self._work.wait()
                        finally:
                            self._idle -= 1
                    fn, args = self._queue.popleft()
                    self.running += 1
                try:
                    fn(*args)
                finally:
                    # Drop the request before idling: an idle thread holds
                    # no socket.
                    fn = args = None  # type: ignore[assignment]
                    with lock:
                        self.running -= 1
                        self._room.notify_all()
        finally:
            with lock:
                self._threads.discard(me)
                self._room.notify_all()

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted += 1
            self._room.notify_all()

    def resume(self) -> None:
        with self._lock:
            self._interrupted -= 1

    def close(self, join: bool) -> None:
        """Stop idle threads; busy ones exit once the queue is empty.

        With join, wait for the non-daemon threads (queued jobs included).
        """
        self.release_idle()
        if not join:
            return
        with self._lock:
            threads = list(self._threads)
        current = threading.current_thread()
        for thread in threads:
            if thread is not current and not thread.daemon:
                thread.join()

    def release_idle(self) -> None:
        with self._lock:
            self._closed = True
            self._work.notify_all()


class ThreadPoolMixIn:
    """Mix-in class to handle each request in a bounded pool of threads.

    At most ``max_workers`` requests run at once and at most ``max_queued``
    accepted requests wait for a thread. When the pool and the queue are
    full, the server stops accepting until a thread frees up: new clients
    wait in the listen backlog (datagrams in the socket buffer) and no
    accepted request is dropped. shutdown() still returns at once.

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

    def _fs_pool(self) -> BoundedThreads:
        pool = self.__dict__.get("_fs_pool_threads")
        if pool is None:
            pool = self.__dict__["_fs_pool_threads"] = BoundedThreads()
        return pool

    def get_request(self) -> Tuple[Any, Any]:
        """Wait until the pool has room, then accept (or receive) a request.

        Raises BlockingIOError when shutdown() ends the wait, which the
        serve loop treats as "nothing to accept".
        """
        if not self._fs_pool().wait_for_room(self.max_workers, self.max_queued):
            raise BlockingIOError(errno.EAGAIN, "server is shutting down")
        return super().get_request()  # type: ignore[misc,no-any-return]

    # The same per-request entry point as ThreadingMixIn.
    process_request_thread = ThreadingMixIn.process_request_thread

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the request to a pool thread, waiting while the pool is full."""
        self._fs_pool().submit(self.process_request_thread,  # type: ignore[misc]
                               (request, client_address), self.max_workers,
                               self.max_queued, bool(self.daemon_threads))

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
