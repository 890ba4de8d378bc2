"""Reusable handler threads for ThreadingMixIn.

A thread that has finished a request waits ``idle_timeout`` seconds for the
next one instead of exiting, because starting a thread costs far more than
handing a request to a waiting one (``Thread.start()`` even waits for the new
thread to run). Concurrency stays unbounded, as in socketserver: a request
never waits for a busy thread; a new thread starts when none is idle.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

Job = Tuple[Callable[..., Any], Tuple[Any, ...]]


class _Worker:
    __slots__ = ("thread", "wake", "job", "daemon")

    def __init__(self, daemon: bool) -> None:
        self.thread: Optional[threading.Thread] = None
        # Held while the worker is idle; the dispatcher releases it to hand
        # over a job (or None to stop).
        self.wake = threading.Lock()
        self.wake.acquire()
        self.job: Optional[Job] = None
        self.daemon = daemon


class WorkerThreads:
    """The handler threads of one server.

    ``len()`` counts live threads, busy or idle. ``close(join)`` stops the
    idle ones, lets busy ones exit after their request and, when join is
    true, waits for the busy non-daemon ones as ``block_on_close`` asks.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: Dict[bool, List[_Worker]] = {False: [], True: []}
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
            idle = self._idle[daemon]
            worker = idle.pop() if idle else None
            if worker is None:
                worker = _Worker(daemon)
                self._live.add(worker)
        if worker.thread is not None:
            worker.job = (fn, args)
            worker.wake.release()
            return
        thread = threading.Thread(target=self._run, args=(worker, (fn, args)),
                                  daemon=daemon)
        worker.thread = thread
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._live.discard(worker)
            raise

    def _run(self, worker: _Worker, job: Optional[Job]) -> None:
        try:
            while job is not None:
                fn, args = job
                job = None
                fn(*args)
                # Drop the request before idling, so that an idle thread
                # holds no socket.
                fn = args = None  # type: ignore[assignment]
                job = self._park(worker)
        finally:
            with self._lock:
                self._live.discard(worker)

    def _park(self, worker: _Worker) -> Optional[Job]:
        """Wait idle for the next job; None when the thread should exit."""
        timeout = self.idle_timeout
        with self._lock:
            if self._closed or timeout <= 0:
                return None
            self._idle[worker.daemon].append(worker)
        if worker.wake.acquire(timeout=timeout):
            return _take(worker)
        with self._lock:
            idle = self._idle[worker.daemon]
            if worker in idle:
                idle.remove(worker)
                return None
        # A dispatcher took this worker just as the wait expired: its job
        # (or stop signal) is on the way.
        worker.wake.acquire()
        return _take(worker)

    def close(self, join: bool) -> None:
        with self._lock:
            self._closed = True
            idle = self._idle[False] + self._idle[True]
            self._idle = {False: [], True: []}
            live = list(self._live)
        for worker in idle:
            worker.job = None
            worker.wake.release()
        for worker in live:
            thread = worker.thread
            if thread is None or thread is threading.current_thread():
                continue
            if worker in idle or (join and not worker.daemon):
                thread.join()

    def release_idle(self) -> None:
        """Stop the idle threads now; used at interpreter exit."""
        with self._lock:
            idle = self._idle[False] + self._idle[True]
            self._idle = {False: [], True: []}
            self._closed = True
        for worker in idle:
            worker.job = None
            worker.wake.release()


def _take(worker: _Worker) -> Optional[Job]:
    job, worker.job = worker.job, None
    return job


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
