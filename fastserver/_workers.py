"""Reusable handler threads for ThreadingMixIn.

A thread that has finished a request waits ``idle_timeout`` seconds for the
next one instead of exiting, because starting a thread costs far more than
handing a request to a waiting one (``Thread.start()`` even waits for the new
thread to run).

Concurrency stays unbounded, as in socketserver: a request never waits for a
thread that is busy with another request. Requests go through a queue, and
the promise is kept by one invariant: while the queue holds a request, at
least one *spare* thread (woken from idle, or just started, and not yet
running a request) is on its way to it. submit() wakes or starts a spare only
when there is none; a spare that takes a request wakes the next one if more
are queued. A thread that finishes a request takes the next queued one
before it parks, so under load one thread serves a run of short requests
with no thread switch in between, instead of one wake-up per request.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

Job = Tuple[Callable[..., Any], Tuple[Any, ...]]


class _Worker:
    __slots__ = ("thread", "wake", "stop", "daemon")

    def __init__(self, daemon: bool) -> None:
        self.thread: Optional[threading.Thread] = None
        # Held while the worker is idle; released to make it a spare (or, with
        # stop set, to end it).
        self.wake = threading.Lock()
        self.wake.acquire()
        self.stop = False
        self.daemon = daemon


class WorkerThreads:
    """The handler threads of one server.

    ``len()`` counts live threads, busy or idle. ``close(join)`` stops the
    idle ones, lets busy ones finish what is queued and exit and, when join
    is true, waits for the busy non-daemon ones as ``block_on_close`` asks.
    Daemon and non-daemon requests have separate queues and threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: Dict[bool, List[_Worker]] = {False: [], True: []}
        self._jobs: Dict[bool, Deque[Job]] = {False: deque(), True: deque()}
        # Threads woken or started for the queue that have not taken a job yet.
        self._spare: Dict[bool, int] = {False: 0, True: 0}
        self._live: Set[_Worker] = set()
        self._closed = False
        self.idle_timeout = 0.0
        release_idle_at_exit(self)

    def __len__(self) -> int:
        return len(self._live)

    def submit(self, fn: Callable[..., Any], args: Tuple[Any, ...],
               daemon: bool, idle_timeout: float) -> None:
        """Run fn(*args) in an idle thread, or in a new one."""
        self.idle_timeout = idle_timeout
        with self._lock:
            self._jobs[daemon].append((fn, args))
            if self._spare[daemon]:
                return
            try:
                self._add_spare(daemon)
            except BaseException:
                # No thread for it: the caller handles the error, as
                # socketserver's process_request would, so the job goes. It
                # is still the last one: the lock has been held throughout.
                self._jobs[daemon].pop()
                raise

    def _add_spare(self, daemon: bool) -> None:
        """Wake an idle thread, or start one; called with _lock held.

        Starting under the lock is safe: Thread.start() returns once the
        thread runs, before _run() asks for the lock.
        """
        idle = self._idle[daemon]
        if idle:
            worker = idle.pop()
            self._spare[daemon] += 1
            worker.wake.release()
            return
        worker = _Worker(daemon)
        worker.thread = threading.Thread(target=self._run, args=(worker,),
                                         daemon=daemon)
        self._live.add(worker)
        self._spare[daemon] += 1
        try:
            worker.thread.start()
        except BaseException:
            self._live.discard(worker)
            self._spare[daemon] -= 1
            raise

    def _run(self, worker: _Worker) -> None:
        daemon = worker.daemon
        jobs = self._jobs[daemon]
        spare = True
        try:
            while True:
                with self._lock:
                    if spare:
                        self._spare[daemon] -= 1
                    # With no idle time, a thread serves one request only:
                    # socketserver's thread per request.
                    reuse = spare or self.idle_timeout > 0
                    spare = False
                    job = jobs.popleft() if jobs and reuse else None
                    if job is None:
                        if self._closed or self.idle_timeout <= 0:
                            return
                        self._idle[daemon].append(worker)
                    elif jobs and not self._spare[daemon]:
                        self._add_spare_quietly(daemon)
                if job is None:
                    if not self._park(worker):
                        return
                    spare = True
                    continue
                fn, args = job
                job = None
                fn(*args)
                # Drop the request before idling, so that an idle thread
                # holds no socket.
                fn = args = None  # type: ignore[assignment]
        finally:
            with self._lock:
                self._live.discard(worker)
                if spare:
                    self._spare[daemon] -= 1

    def _add_spare_quietly(self, daemon: bool) -> None:
        # The rest of the queue is served by threads that finish their
        # request if no new one can start; this one must not fail its own.
        try:
            self._add_spare(daemon)
        except Exception:
            pass

    def _park(self, worker: _Worker) -> bool:
        """Wait idle (already in the idle list) to be made a spare; False
        when the thread should exit instead."""
        if not worker.wake.acquire(timeout=self.idle_timeout):
            with self._lock:
                idle = self._idle[worker.daemon]
                if worker in idle:
                    idle.remove(worker)
                    return False
            # Chosen just as the wait expired: the wake-up is on its way.
            worker.wake.acquire()
        return not worker.stop

    def close(self, join: bool) -> None:
        with self._lock:
            self._closed = True
            idle = self._stop_idle()
            live = list(self._live)
        for worker in live:
            thread = worker.thread
            if thread is None or thread is threading.current_thread():
                continue
            if worker in idle or (join and not worker.daemon):
                thread.join()

    def release_idle(self) -> None:
        """Stop the idle threads now; used at interpreter exit."""
        with self._lock:
            self._closed = True
            self._stop_idle()

    def _stop_idle(self) -> List[_Worker]:
        idle = self._idle[False] + self._idle[True]
        self._idle = {False: [], True: []}
        for worker in idle:
            worker.stop = True
            worker.wake.release()
        return idle


class NoWorkers:
    """The class-level ``_threads`` of a server that has run no request."""

    def __len__(self) -> int:
        return 0

    def close(self, join: bool) -> None:
        pass


_all_pools: "weakref.WeakSet[Any]" = weakref.WeakSet()


def release_idle_at_exit(pool: Any) -> None:
    """Call pool.release_idle() when the interpreter starts to exit."""
    _all_pools.add(pool)


def _release_all_idle() -> None:
    # Runs before the interpreter joins non-daemon threads at exit, so that
    # idle threads of a server that was never closed do not hold it up.
    for pool in list(_all_pools):
        pool.release_idle()


_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_release_all_idle)
