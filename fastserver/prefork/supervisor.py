"""The supervisor: forks the workers, restarts those that die, and turns
signals into a graceful drain, a fast stop or a reload."""

from __future__ import annotations

import logging
import os
import signal
import sys
from time import monotonic
from typing import Any, Callable, Dict, Optional

from .listener import Listener
from .signals import HANDLED_SIGNALS, SignalPipe, kill
from .worker import EXIT_GRACEFUL_TIMEOUT, Worker

__all__ = ["Supervisor"]

log = logging.getLogger("fastserver.prefork")


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return "killed by %s" % name
    return "exited with status %d" % os.WEXITSTATUS(status)


def _flush_logging() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


class _Slot:
    __slots__ = ("index", "pid", "started", "failures", "restart_at")

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.started = 0.0
        self.failures = 0
        self.restart_at: Optional[float] = None


class Supervisor:
    """Run one server in N forked worker processes.

    Methods for the caller:

    - __init__(server, workers=None, graceful_timeout=30.0, post_fork=None,
      before_reload=None)
    - run() -> exit status; call it from the main thread

    The server must be bound and activated (the constructor's default).
    Every worker runs ``server.serve_forever()`` on the shared socket.
    ``post_fork(server, worker_index)``, when given, runs in each worker
    before it serves. ``before_reload(server)``, when given, runs in the
    supervisor on SIGHUP before the new workers are forked, so that what it
    changes on the server (a renewed ``ssl_context``) is what they serve
    with; if it raises, the error is logged and the workers are replaced
    all the same, with the server as it was. A hook that can fail in
    expected ways (a half-written file) should log those itself, in one
    line, and leave the server unchanged.

    Signals to the supervisor:

    - SIGTERM: drain. Stop accepting new clients, serve every connection
      already accepted or queued, give in-flight requests up to
      ``graceful_timeout`` seconds, then exit with status 0.
    - SIGINT, SIGQUIT: stop fast; in-flight requests are cut.
    - SIGHUP: call before_reload, then replace every worker with a fresh
      one, gracefully.
    - SIGUSR1, SIGUSR2: forwarded to the workers (which ignore them unless
      post_fork installed a handler).

    A worker that dies is restarted; one that dies again within
    ``stable_after`` seconds of its start is restarted after a back-off
    that doubles from ``restart_backoff_first`` up to
    ``restart_backoff_max`` seconds. A worker that receives SIGTERM on its
    own stops accepting, finishes its requests and is replaced; nothing
    queued is lost, since the queue is shared.

    Class variables that may be overridden:

    - restart_backoff_first, restart_backoff_max, stable_after
    - poll_interval: the workers' serve_forever() poll_interval
    - fast_stop_timeout: how long SIGINT waits before SIGKILL
    """

    restart_backoff_first: float = 0.1
    restart_backoff_max: float = 10.0
    stable_after: float = 10.0
    poll_interval: float = 0.5
    fast_stop_timeout: float = 2.0
    # How long a worker that got SIGTERM directly (from a process-group or
    # cgroup kill) waits for the supervisor to close the socket to new
    # clients before it concludes that only it is stopping.
    drain_mark_wait: float = 0.25

    def __init__(self, server: Any, workers: Optional[int] = None,
                 graceful_timeout: float = 30.0,
                 post_fork: Optional[Callable[[Any, int], None]] = None,
                 before_reload: Optional[Callable[[Any], None]] = None) -> None:
        if workers is None:
            workers = os.cpu_count() or 1
        if workers < 1:
            raise ValueError("workers must be at least 1, got %r" % (workers,))
        if graceful_timeout < 0:
            raise ValueError("graceful_timeout must not be negative")
        self.server = server
        self.workers = workers
        self.graceful_timeout = graceful_timeout
        self.post_fork = post_fork
        self.before_reload = before_reload
        self.listener = Listener(server.socket, inherited=bool(
            getattr(server, "socket_inherited", False)))
        self._slots = [_Slot(i) for i in range(workers)]
        self._pids: Dict[int, _Slot] = {}       # live workers
        self._retiring: Dict[int, _Slot] = {}   # replaced by SIGHUP
        self._mode = "serving"                  # "draining", "stopping"
        self._deadline = 0.0
        self._pid = 0
        self._rescues = 0
        self._signals: SignalPipe  # run() opens it

    def run(self) -> int:
        """Fork the workers and supervise them until a stop signal.

        Returns the exit status for the process (0 after SIGTERM or SIGINT).
        """
        self._pid = os.getpid()
        # Workers share the socket: non-blocking, so that one that loses the
        # race for a connection goes back to waiting instead of blocking in
        # accept() (where shutdown() could not reach it).
        self.server.socket.setblocking(False)
        self._signals = SignalPipe()
        self._signals.install(HANDLED_SIGNALS)
        try:
            log.info("listening on %s (%s, %s backend), %d worker%s",
                     _format_address(self.server.server_address),
                     type(self.server).__name__, self.server.backend,
                     self.workers, "" if self.workers == 1 else "s")
            for slot in self._slots:
                self._spawn(slot)
            self._supervise()
        finally:
            if self._pids or self._retiring:
                # Only after an error in the supervisor itself.
                self._kill_all(signal.SIGKILL)
                for pid in list(self._pids) + list(self._retiring):
                    try:
                        os.waitpid(pid, 0)
                    except ChildProcessError:
                        pass
            self._signals.restore()
            self._signals.close()
            try:
                self.server.server_close()
            finally:
                self.listener.cleanup()
        log.info("stopped")
        return 0

    def _supervise(self) -> None:
        while True:
            self._reap()
            now = monotonic()
            if self._mode == "serving":
                for slot in self._slots:
                    if slot.restart_at is not None and slot.restart_at <= now:
                        slot.restart_at = None
                        self._spawn(slot)
            elif not self._pids and not self._retiring:
                if self._mode == "draining" and now < self._deadline and \
                        self.listener.can_close_to_new and \
                        self._rescues < 3 and not self.listener.idle():
                    self._rescues += 1
                    # Every worker has gone (for instance all of them got
                    # SIGTERM before the socket was closed to new clients),
                    # but connections are still queued: serve them.
                    log.info("connections still queued; starting a worker "
                             "to serve them")
                    self._spawn(self._slots[0], drain_deadline=self._deadline)
                else:
                    return
            elif now >= self._deadline:
                self._kill_all(signal.SIGKILL)
            timeout = 1.0
            if self._mode == "serving":
                due = [s.restart_at for s in self._slots if s.restart_at is not None]
                if due:
                    timeout = min(timeout, max(0.0, min(due) - now))
            elif now < self._deadline:
                timeout = min(timeout, self._deadline - now + 0.001)
            else:
                timeout = 0.05  # SIGKILL sent: reap soon
            for signum in sorted(self._signals.read(timeout)):
                self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            self.drain()
        elif signum in (signal.SIGINT, signal.SIGQUIT):
            self.stop()
        elif signum == signal.SIGHUP:
            self.reload()
        elif signum in (signal.SIGUSR1, signal.SIGUSR2):
            self._kill_all(signum)

    def drain(self) -> None:
        """Begin a graceful stop (what SIGTERM does)."""
        if self._mode != "serving":
            return
        self._mode = "draining"
        # Workers that get SIGKILL still need a moment to be reaped.
        self._deadline = monotonic() + self.graceful_timeout + 1.0
        closed = self.listener.close_to_new()
        log.info("draining: %s; waiting up to %.1f s for %d worker%s",
                 "closed to new clients" if closed else "stopped accepting",
                 self.graceful_timeout, len(self._pids),
                 "" if len(self._pids) == 1 else "s")
        for slot in self._slots:
            slot.restart_at = None
        self._kill_all(signal.SIGTERM)

    def stop(self) -> None:
        """Stop fast (what SIGINT does)."""
        if self._mode == "stopping":
            return
        self._mode = "stopping"
        self._deadline = monotonic() + self.fast_stop_timeout
        log.info("stopping")
        for slot in self._slots:
            slot.restart_at = None
        self._kill_all(signal.SIGINT)

    def reload(self) -> None:
        """Run before_reload, then replace every worker gracefully (what
        SIGHUP does)."""
        if self._mode != "serving":
            return
        if self.before_reload is not None:
            # Before the fork: the new workers inherit what it changed. The
            # old workers keep their own copy until they have drained.
            try:
                self.before_reload(self.server)
            except Exception:
                log.exception("before_reload failed; the new workers start "
                              "with the server as it was")
        log.info("replacing %d workers", len(self._pids))
        old = dict(self._pids)
        for pid, slot in old.items():
            del self._pids[pid]
            self._retiring[pid] = slot
            slot.failures = 0
            self._spawn(slot)
        for pid in old:
            kill(pid, signal.SIGTERM)

    def _kill_all(self, signum: int) -> None:
        for pid in list(self._pids) + list(self._retiring):
            kill(pid, signum)

    def _reap(self) -> None:
        for table in (self._pids, self._retiring):
            for pid in list(table):
                try:
                    reaped, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    reaped, status = pid, 0
                if not reaped:
                    continue
                slot = table.pop(pid)
                if table is self._retiring:
                    log.info("worker %d (pid %d) replaced, %s", slot.index,
                             pid, _describe_status(status))
                    continue
                slot.pid = 0
                self._worker_exited(slot, pid, status)

    def _worker_exited(self, slot: _Slot, pid: int, status: int) -> None:
        what = _describe_status(status)
        if self._mode != "serving":
            level = logging.INFO
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_GRACEFUL_TIMEOUT:
                what += " (graceful timeout: requests were cut)"
                level = logging.WARNING
            log.log(level, "worker %d (pid %d) %s", slot.index, pid, what)
            return
        now = monotonic()
        if now - slot.started < self.stable_after:
            slot.failures += 1
        else:
            slot.failures = 1
        if slot.failures <= 1:
            delay = 0.0
        else:
            delay = min(self.restart_backoff_max,
                        self.restart_backoff_first * 2 ** (slot.failures - 2))
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        log.log(logging.INFO if clean else logging.WARNING,
                "worker %d (pid %d) %s; restarting in %.1f s",
                slot.index, pid, what, delay)
        slot.restart_at = now + delay

    def _spawn(self, slot: _Slot, drain_deadline: Optional[float] = None) -> None:
        _flush_logging()
        # Until the child has its own wakeup pipe, a signal sent to it would
        # be written into the supervisor's and read as the supervisor's own:
        # hold the signals back across the fork.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid == 0:
            status = 1
            try:
                status = Worker(self, slot.index).run(drain_deadline, mask,
                                                      self._signals)
            except BaseException:
                log.exception("worker %d failed", slot.index)
            finally:
                _flush_logging()
                os._exit(status)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        slot.pid = pid
        slot.started = monotonic()
        self._pids[pid] = slot
        log.info("worker %d started (pid %d)", slot.index, pid)


def _format_address(address: Any) -> str:
    if isinstance(address, (str, bytes)):
        return "unix:%s" % (os.fsdecode(address),)
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        if ":" in host:
            host = "[%s]" % host
        return "%s:%s" % (host, address[1])
    return repr(address)
