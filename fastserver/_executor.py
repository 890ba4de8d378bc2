"""The handler threads of ThreadingMixIn and ThreadPoolMixIn: one executor.

ThreadingMixIn uses it unbounded: a request never waits for a thread that
is busy with another, as in socketserver. ThreadPoolMixIn uses it bounded:
at most ``max_workers`` threads, and the server waits for room
(wait_for_room) before it accepts more than ``max_queued`` requests beyond
those threads.

A thread that has finished a request waits ``idle_timeout`` seconds for the
next one instead of exiting, because starting a thread costs far more than
handing a request to a waiting one (``Thread.start()`` even waits for the new
thread to run).

Requests go through a queue, and no queued request is forgotten thanks to one
invariant: while the queue holds a request, at least one *spare* thread (woken
from idle, or just started, and not yet running a request) is on its way to
it, or, bounded, every thread is busy and takes it when done. submit() wakes
or starts a spare only when there is none; a spare that takes a request wakes
the next one if more are queued. A thread that finishes a request takes the
next queued one before it parks, so under load one thread serves a run of
short requests with no thread switch in between, instead of one wake-up per
request.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Set, Tuple

Job = Tuple[Callable[..., Any], Tuple[Any, ...]]


class _Lane:
    """Queued jobs and idle threads that share a daemon flag."""

    __slots__ = ("daemon", "jobs", "idle", "spare")

    def __init__(self, daemon: bool) -> None:
        # The flag of threads started from now on.
        self.daemon = daemon
        self.jobs: Deque[Job] = deque()
        self.idle: List[_Worker] = []
        # Threads woken or started for the queue that have not taken a job yet.
        self.spare = 0


class _Worker:
    __slots__ = ("thread", "wake", "stop", "lane")

    def __init__(self, lane: _Lane) -> None:
        self.thread: Optional[threading.Thread] = None
        # Held while the worker is idle; released to make it a spare (or, with
        # stop set, to end it).
        self.wake = threading.Lock()
        self.wake.acquire()
        self.stop = False
        self.lane = lane


class HandlerThreads:
    """The handler threads of one server.

    Methods for the server:

    - submit(fn, args, daemon): run fn(*args) in an idle or a new thread
    - wait_for_room(timeout) -> bool: bounded, wait until one more fits
    - interrupt() / resume(): make every wait_for_room() return at once
    - close(join): stop idle threads, let busy ones finish what is queued
      and, with join, wait for the busy non-daemon ones
    - wait_idle(timeout) -> bool: wait until nothing runs or is queued

    Settings, read as they are needed, so that a change takes effect at
    once:

    - idle_timeout: seconds an idle thread waits for another request; None
      waits until close(); 0 gives each request a thread of its own
    - max_workers, max_queued: the bounds, when constructed bounded

    Unbounded, daemon and non-daemon requests have their own queues and
    threads, so that each request runs in a thread of the daemon_threads
    setting it came with. Bounded, there is one queue: every thread takes
    any request and keeps the daemon flag it started with.

    ``len()`` counts live threads, busy or idle; ``running`` the requests
    being handled, ``queued`` those waiting for a thread.
    """

    def __init__(self, bounded: bool = False,
                 name: Optional[str] = None) -> None:
        self._lock = threading.Lock()
        # Waited on for room (bounded) and for idleness; notified only while
        # someone waits, which keeps the notify off the unbounded fast path.
        self._changed = threading.Condition(self._lock)
        self._waiting = 0
        self._lanes = (_Lane(False), _Lane(True))
        self._live: Set[_Worker] = set()
        self._closed = False
        self._interrupted = 0
        self._bounded = bounded
        self._name = name
        self.running = 0
        self.idle_timeout: Optional[float] = None
        self.max_workers = 1
        self.max_queued = 0
        release_idle_at_exit(self)

    def __len__(self) -> int:
        return len(self._live)

    @property
    def queued(self) -> int:
        return len(self._lanes[0].jobs) + len(self._lanes[1].jobs)

    def submit(self, fn: Callable[..., Any], args: Tuple[Any, ...],
               daemon: bool) -> None:
        """Run fn(*args) in an idle thread, or in a new one.

        Bounded, it does not wait: call wait_for_room() first.
        """
        with self._lock:
            if self._bounded:
                lane = self._lanes[0]
                lane.daemon = daemon
            else:
                lane = self._lanes[daemon]
            lane.jobs.append((fn, args))
            if lane.spare:
                return
            try:
                self._add_spare(lane)
            except BaseException:
                # No thread for it: the caller handles the error, as
                # socketserver's process_request would, so the job goes. It
                # is still the last one: the lock has been held throughout.
                lane.jobs.pop()
                raise

    def _add_spare(self, lane: _Lane) -> None:
        """Wake an idle thread, or start one if the bound allows; called
        with _lock held.

        Starting under the lock is safe: Thread.start() returns once the
        thread runs, before _run() asks for the lock.
        """
        if lane.idle:
            worker = lane.idle.pop()
            lane.spare += 1
            worker.wake.release()
            return
        if self._bounded and len(self._live) >= max(1, self.max_workers):
            return  # every thread is busy; the first one done takes the job
        worker = _Worker(lane)
        worker.thread = threading.Thread(target=self._run, args=(worker,),
                                         daemon=lane.daemon, name=self._name)
        self._live.add(worker)
        lane.spare += 1
        try:
            worker.thread.start()
        except BaseException:
            self._live.discard(worker)
            lane.spare -= 1
            raise

    def _keeps_idle(self) -> bool:
        timeout = self.idle_timeout
        return timeout is None or timeout > 0

    def _run(self, worker: _Worker) -> None:
        lane = worker.lane
        jobs = lane.jobs
        spare = True
        busy = False
        try:
            while True:
                with self._lock:
                    if busy:
                        busy = False
                        self.running -= 1
                        if self._waiting:
                            self._changed.notify_all()
                    if spare:
                        lane.spare -= 1
                    # With no idle time, a thread serves one request only:
                    # socketserver's thread per request.
                    timeout = self.idle_timeout   # inline: once per request
                    keep = timeout is None or timeout > 0
                    reuse = spare or keep
                    spare = False
                    job = jobs.popleft() if jobs and reuse else None
                    if job is None:
                        if self._closed or not keep:
                            return
                        lane.idle.append(worker)
                        if self._waiting:
                            self._changed.notify_all()
                    else:
                        busy = True
                        self.running += 1
                        if jobs and not lane.spare:
                            self._add_spare_quietly(lane)
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
                    lane.spare -= 1
                if busy:
                    # The job raised past process_request_thread (SystemExit,
                    # say): what it left queued still needs a thread.
                    self.running -= 1
                    if jobs and not lane.spare:
                        self._add_spare_quietly(lane)
                if self._waiting:
                    self._changed.notify_all()

    def _add_spare_quietly(self, lane: _Lane) -> None:
        # The rest of the queue is served by threads that finish their
        # request if no new one can start; this one must not fail its own.
        try:
            self._add_spare(lane)
        except Exception:
            pass

    def _park(self, worker: _Worker) -> bool:
        """Wait idle (already in the idle list) to be made a spare; False
        when the thread should exit instead."""
        timeout = self.idle_timeout
        if not worker.wake.acquire(timeout=-1 if timeout is None else timeout):
            with self._lock:
                idle = worker.lane.idle
                if worker in idle:
                    idle.remove(worker)
                    return False
            # Chosen just as the wait expired: the wake-up is on its way.
            worker.wake.acquire()
        return not worker.stop

    def _has_room(self) -> bool:
        bound = max(1, self.max_workers) + max(0, self.max_queued)
        return self.running + self.queued < bound

    def _wait(self, ready: Callable[[], bool], timeout: Optional[float]) -> bool:
        """Wait until ready() or interrupt(), at most timeout seconds (None:
        no limit); called with _lock held. Returns ready()."""
        self._waiting += 1
        try:
            self._changed.wait_for(lambda: ready() or self._interrupted > 0,
                                   timeout)
        finally:
            self._waiting -= 1
        return ready()

    def wait_for_room(self, timeout: Optional[float] = None) -> bool:
        """Wait until one more job fits; False if timeout expired or
        interrupt() came first."""
        with self._lock:
            if not self._bounded or self._has_room():
                return True
            return self._wait(self._has_room, timeout)

    @property
    def interrupted(self) -> bool:
        return self._interrupted > 0

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted += 1
            self._changed.notify_all()

    def resume(self) -> None:
        with self._lock:
            self._interrupted -= 1

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Wait until no job runs or is queued and every live thread is idle
        (or has exited); False if timeout expired first."""
        def idle() -> bool:
            parked = len(self._lanes[0].idle) + len(self._lanes[1].idle)
            return parked == len(self._live) and not self.queued

        with self._lock:
            self._waiting += 1
            try:
                return self._changed.wait_for(idle, timeout)
            finally:
                self._waiting -= 1

    def close(self, join: bool) -> None:
        with self._lock:
            self._closed = True
            idle = set(self._stop_idle())
            live = list(self._live)
        for worker in live:
            thread = worker.thread
            if thread is None or thread is threading.current_thread():
                continue
            if worker in idle or (join and not thread.daemon):
                thread.join()

    def release_idle(self) -> None:
        """Stop the idle threads now; used at interpreter exit."""
        with self._lock:
            self._closed = True
            self._stop_idle()

    def _stop_idle(self) -> List[_Worker]:
        idle: List[_Worker] = []
        for lane in self._lanes:
            idle += lane.idle
            lane.idle = []
        for worker in idle:
            worker.stop = True
            worker.wake.release()
        return idle


class NoThreads:
    """The class-level ``_threads`` of a server that has run no request."""

    def __len__(self) -> int:
        return 0

    def close(self, join: bool) -> None:
        pass

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        return True


_all_executors: "weakref.WeakSet[HandlerThreads]" = weakref.WeakSet()


def release_idle_at_exit(executor: HandlerThreads) -> None:
    """Call executor.release_idle() when the interpreter starts to exit."""
    _all_executors.add(executor)


def _release_all_idle() -> None:
    # Runs before the interpreter joins non-daemon threads at exit, so that
    # idle threads of a server that was never closed do not hold it up.
    for executor in list(_all_executors):
        executor.release_idle()


_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_release_all_idle)
