"""Pre-forked worker processes for any fastserver server.

A :class:`Supervisor` takes a server that is already bound and listening,
forks N worker processes that all run its ``serve_forever()`` on the one
listening socket, restarts workers that die, and turns signals into a
graceful drain or a fast stop::

    server = fastserver.ThreadingTCPServer(("0.0.0.0", 8000), Handler)
    status = fastserver.prefork.Supervisor(server, workers=4).run()

Design (the README's "Running in production" is the user-facing version):

- **One shared listening socket**, bound by the supervisor before the first
  fork, rather than one SO_REUSEPORT socket per worker. With a single
  accept queue, a worker that crashes or is restarted loses only the
  requests it had accepted: connections still queued wait for a sibling or
  for the replacement, because the supervisor keeps the socket open. With
  per-worker sockets each worker owns part of the queue, and closing its
  socket resets every connection queued in that part. A single socket also
  lets one action close the server to new clients during a drain, works
  the same for TCP, Unix and datagram sockets and on every POSIX system,
  and binds privileged ports once. The cost: workers share one queue, so
  every idle worker wakes for each connection and all but one find nothing
  to accept (the socket is non-blocking, so they go back to waiting).
- **Drain without resets.** Closing a listening socket resets the
  connections queued in it, and clients whose connect() already succeeded
  see ECONNRESET. So SIGTERM first closes the socket *to new clients only*
  while it stays open: on Linux TCP a classic BPF socket filter that drops
  TCP segments carrying SYN without ACK, so no new handshake starts (the
  clients' SYNs go unanswered; they retry and are refused once the socket
  is closed), while handshakes already under way complete. On a Unix
  stream socket the supervisor unlinks the socket's path, so new connects
  fail with ENOENT. The workers then keep accepting until no handshake is
  in progress (``/proc/net/tcp*`` lists none in SYN_RECV for the port) and
  the queue stays empty, serve what they accepted within the graceful
  timeout, and exit; only then does the last descriptor close.
  A filter that drops every segment would also drop the final ACK of
  handshakes already answered with SYN-ACK: those clients believe they are
  connected, and would be reset at close.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
from time import monotonic
from typing import Any, Callable, Dict, Optional, Set

__all__ = ["Supervisor", "Listener", "EXIT_GRACEFUL_TIMEOUT"]

log = logging.getLogger("fastserver.prefork")

#: A worker's exit status when the graceful timeout cut requests short.
EXIT_GRACEFUL_TIMEOUT = 3
#: A worker's exit status when post_fork() raised.
EXIT_BOOT_FAILED = 4

# --- closing a listening socket to new clients ----------------------------

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_GET_FILTER = SO_ATTACH_FILTER  # same number for getsockopt on Linux


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort),
                ("filter", ctypes.POINTER(_SockFilter))]


# Classic BPF opcodes (linux/bpf_common.h).
_BPF_LD_B_ABS = 0x00 | 0x10 | 0x20
_BPF_ALU_AND_K = 0x04 | 0x50 | 0x00
_BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00
_BPF_RET_K = 0x06 | 0x00
_TCP_FLAGS_OFFSET = 13  # a socket filter sees the segment from the TCP header
_SYN, _ACK = 0x02, 0x10

#: Drop segments with SYN set and ACK clear (new connection attempts); keep
#: everything else, so handshakes already answered can complete.
_NO_NEW_HANDSHAKES = (
    (_BPF_LD_B_ABS, 0, 0, _TCP_FLAGS_OFFSET),
    (_BPF_ALU_AND_K, 0, 0, _SYN | _ACK),
    (_BPF_JMP_JEQ_K, 0, 1, _SYN),
    (_BPF_RET_K, 0, 0, 0),
    (_BPF_RET_K, 0, 0, 0xFFFFFFFF),
)


def _program_bytes(program: Any) -> bytes:
    return b"".join(bytes(_SockFilter(*ins)) for ins in program)


def attach_filter(sock: socket.socket, program: Any = _NO_NEW_HANDSHAKES) -> None:
    """Attach a classic BPF program (a sequence of (code, jt, jf, k)) to sock.

    The kernel copies the program, so the buffers need only outlive the call.
    """
    array = (_SockFilter * len(program))(*(_SockFilter(*ins) for ins in program))
    fprog = _SockFprog(len(program), ctypes.cast(array, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


def _attached_filter(sock: socket.socket) -> bytes:
    """The classic BPF program attached to sock (b"" when none).

    SO_GET_FILTER measures its buffer in instructions, not bytes, so
    socket.getsockopt() cannot ask for it safely: ask for the count first.
    """
    libc = _libc()
    count = ctypes.c_uint(0)
    if libc.getsockopt(sock.fileno(), socket.SOL_SOCKET, SO_GET_FILTER,
                       None, ctypes.byref(count)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    if not count.value:
        return b""
    program = (_SockFilter * count.value)()
    if libc.getsockopt(sock.fileno(), socket.SOL_SOCKET, SO_GET_FILTER,
                       program, ctypes.byref(count)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return bytes(program)[:8 * count.value]


_libc_handle: Any = None


def _libc() -> Any:
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


# sock_diag (linux/sock_diag.h, linux/inet_diag.h)
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_SYN_RECV = 3
_NLMSG_HEADER = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed
# inet_diag_sockid (48 bytes): every socket in the requested states.
_INET_DIAG_REQ = struct.Struct("=BBBBI48x")


def _syn_recv_ports(family: int) -> Set[int]:
    """Local ports of the TCP connections of ``family`` in SYN_RECV, asked
    of the kernel through sock_diag, which filters by state itself."""
    request = _INET_DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0,
                                  1 << _TCP_SYN_RECV)
    header = _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(request),
                                _SOCK_DIAG_BY_FAMILY,
                                _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
    ports: Set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                       _NETLINK_SOCK_DIAG) as diag:
        diag.settimeout(5.0)
        diag.sendall(header + request)
        while True:
            data = diag.recv(65536)
            offset = 0
            while offset + _NLMSG_HEADER.size <= len(data):
                length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
                if kind == _NLMSG_DONE:
                    return ports
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + 16)[0]
                    raise OSError(code, os.strerror(code))
                # inet_diag_msg: family, state, timer, retrans, then the
                # sockid, whose first field is the source port (big endian).
                ports.add(struct.unpack_from("!H", data, offset + 20)[0])
                if length < _NLMSG_HEADER.size:
                    raise OSError("malformed sock_diag reply")
                offset += (length + 3) & ~3


def _syn_recv_ports_proc() -> Set[int]:
    """The same from /proc/net/tcp*; slow when there are many sockets."""
    ports: Set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as table:
                next(table, None)
                for line in table:
                    fields = line.split(None, 4)
                    if len(fields) > 3 and fields[3] == "03":
                        ports.add(int(fields[1].rpartition(":")[2], 16))
        except (OSError, ValueError):
            continue
    return ports


def _tcp_handshakes_in_progress(port: int) -> bool:
    """Whether any connection to local ``port`` is in SYN_RECV (Linux)."""
    try:
        return port in _syn_recv_ports(socket.AF_INET) or \
            port in _syn_recv_ports(socket.AF_INET6)
    except (OSError, AttributeError):
        return port in _syn_recv_ports_proc()


class Listener:
    """The shared listening socket, as the supervisor and workers see it.

    - ``close_to_new()`` (supervisor): stop new clients from connecting
      while queued ones stay; returns False where that is not possible.
    - ``closed_to_new()`` (worker): whether close_to_new() was done.
    - ``idle()``: no connection is queued or on its way into the queue.
    """

    def __init__(self, sock: socket.socket, inherited: bool = False) -> None:
        self.sock = sock
        self.kind = "other"
        self.port = 0
        self.path: Optional[str] = None
        self.inode = 0
        linux = sys.platform.startswith("linux")
        if inherited:
            # Another process (systemd) owns the socket and keeps it open:
            # connections still queued at the end wait for the next start,
            # so never filter or unlink it (a filter would outlive us).
            self.kind = "inherited"
        elif sock.type == socket.SOCK_DGRAM:
            self.kind = "datagram"
        elif sock.family in (socket.AF_INET, socket.AF_INET6) and linux:
            self.kind = "tcp"
            self.port = sock.getsockname()[1]
        elif sock.family == getattr(socket, "AF_UNIX", None):
            name = sock.getsockname()
            if isinstance(name, bytes):
                name = os.fsdecode(name)
            if name and not name.startswith("\0"):
                self.kind = "unix"
                self.path = name
                self.inode = os.stat(name).st_ino
        self._program = _program_bytes(_NO_NEW_HANDSHAKES)

    @property
    def can_close_to_new(self) -> bool:
        return self.kind in ("tcp", "unix")

    def close_to_new(self) -> bool:
        if self.kind == "tcp":
            try:
                attach_filter(self.sock)
                return True
            except OSError as exc:
                log.warning("cannot filter new connections (%s): queued "
                            "connections may be reset at close", exc)
                return False
        if self.kind == "unix":
            if self._path_is_ours():
                try:
                    os.unlink(self.path)  # type: ignore[arg-type]
                except OSError:
                    pass
            return True
        return False

    def closed_to_new(self) -> bool:
        if self.kind == "tcp":
            try:
                attached = _attached_filter(self.sock)
            except OSError:
                return False
            return attached == self._program
        if self.kind == "unix":
            return not self._path_is_ours()
        return False

    def _path_is_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode  # type: ignore[arg-type]
        except OSError:
            return False

    def readable(self) -> bool:
        try:
            ready, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(ready)

    def idle(self) -> bool:
        # Handshakes first: once none is in progress (and no new one can
        # start), an empty queue stays empty.
        if self.kind == "tcp" and _tcp_handshakes_in_progress(self.port):
            return False
        return not self.readable()

    def wait_drained(self, deadline: float, quiet: float = 0.05) -> bool:
        """Wait until idle() has held for ``quiet`` seconds; False at the
        deadline."""
        since: Optional[float] = None
        while True:
            now = monotonic()
            if self.idle():
                if since is None:
                    since = now
                elif now - since >= quiet:
                    return True
            else:
                since = None
            if now >= deadline:
                return False
            _sleep(min(0.01, max(0.0, deadline - now)))

    def cleanup(self) -> None:
        """Remove the Unix socket path if it is still this socket's."""
        if self.kind == "unix" and self._path_is_ours():
            try:
                os.unlink(self.path)  # type: ignore[arg-type]
            except OSError:
                pass


_ACCEPT_INHERITS_NONBLOCK = not sys.platform.startswith("linux")


def _sleep(seconds: float) -> None:
    select.select([], [], [], seconds)


# --- process helpers --------------------------------------------------------


def _set_parent_death_signal(signum: int) -> None:
    """Ask Linux to send signum when the parent exits (best effort)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        _libc().prctl(1, int(signum), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _read_signals(fd: int, timeout: float) -> Set[int]:
    """Wait up to timeout for the wakeup pipe; the signal numbers read."""
    try:
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    except InterruptedError:  # pragma: no cover - PEP 475 retries
        ready = []
    if not ready:
        return set()
    try:
        data = os.read(fd, 512)
    except BlockingIOError:
        return set()
    return set(data)


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


def _noop_handler(signum: int, frame: Any) -> None:
    # The wakeup fd carries the signal number; the handler need not act.
    pass


class _InFlight:
    """Counts a worker's requests between process_request() and
    close_request(), by wrapping the two on the server instance (so that
    subclass overrides still run)."""

    def __init__(self, server: Any) -> None:
        self._ids: Set[int] = set()
        self._cond = threading.Condition()
        process, close = server.process_request, server.close_request

        def process_request(request: Any, client_address: Any) -> None:
            with self._cond:
                self._ids.add(id(request))
            if _ACCEPT_INHERITS_NONBLOCK and isinstance(request, socket.socket) \
                    and request.gettimeout() is None:
                # The listening socket is non-blocking; on the BSDs and
                # macOS accepted sockets inherit that.
                request.setblocking(True)
            process(request, client_address)

        def close_request(request: Any) -> None:
            try:
                close(request)
            finally:
                with self._cond:
                    self._ids.discard(id(request))
                    if not self._ids:
                        self._cond.notify_all()

        server.process_request = process_request
        server.close_request = close_request

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


#: The signals the supervisor handles (and blocks while it forks).
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                    signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                    signal.SIGCHLD)


class _Slot:
    __slots__ = ("index", "pid", "started", "failures", "restart_at")

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.started = 0.0
        self.failures = 0
        self.restart_at: Optional[float] = None


# --- the supervisor ---------------------------------------------------------


class Supervisor:
    """Run one server in N forked worker processes.

    Methods for the caller:

    - __init__(server, workers=None, graceful_timeout=30.0, post_fork=None)
    - run() -> exit status; call it from the main thread

    The server must be bound and activated (the constructor's default).
    Every worker runs ``server.serve_forever()`` on the shared socket.
    ``post_fork(server, worker_index)``, when given, runs in each worker
    before it serves.

    Signals to the supervisor:

    - SIGTERM: drain. Stop accepting new clients, serve every connection
      already accepted or queued, give in-flight requests up to
      ``graceful_timeout`` seconds, then exit with status 0.
    - SIGINT, SIGQUIT: stop fast; in-flight requests are cut.
    - SIGHUP: replace every worker with a fresh one, gracefully.
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
                 post_fork: Optional[Callable[[Any, int], None]] = None) -> None:
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
        self.listener = Listener(server.socket, inherited=bool(
            getattr(server, "socket_inherited", False)))
        self._slots = [_Slot(i) for i in range(workers)]
        self._pids: Dict[int, _Slot] = {}       # live workers
        self._retiring: Dict[int, _Slot] = {}   # replaced by SIGHUP
        self._mode = "serving"                  # "draining", "stopping"
        self._deadline = 0.0
        self._pid = 0
        self._rescues = 0
        self._wake_r = self._wake_w = -1

    # -- supervisor side --

    def run(self) -> int:
        """Fork the workers and supervise them until a stop signal.

        Returns the exit status for the process (0 after SIGTERM or SIGINT).
        """
        self._pid = os.getpid()
        # Workers share the socket: non-blocking, so that one that loses the
        # race for a connection goes back to waiting instead of blocking in
        # accept() (where shutdown() could not reach it).
        self.server.socket.setblocking(False)
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        old_handlers = {s: signal.signal(s, _noop_handler)
                        for s in _HANDLED_SIGNALS}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
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
            signal.set_wakeup_fd(old_wakeup)
            for s, handler in old_handlers.items():
                signal.signal(s, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)
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
            for signum in sorted(_read_signals(self._wake_r, timeout)):
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
        """Replace every worker gracefully (what SIGHUP does)."""
        if self._mode != "serving":
            return
        log.info("replacing %d workers", len(self._pids))
        old = dict(self._pids)
        for pid, slot in old.items():
            del self._pids[pid]
            self._retiring[pid] = slot
            slot.failures = 0
            self._spawn(slot)
        for pid in old:
            _kill(pid, signal.SIGTERM)

    def _kill_all(self, signum: int) -> None:
        for pid in list(self._pids) + list(self._retiring):
            _kill(pid, signum)

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
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid == 0:
            status = 1
            try:
                status = self._worker_main(slot.index, drain_deadline, mask)
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

    # -- worker side --

    def _worker_main(self, index: int, drain_deadline: Optional[float],
                     mask: Any) -> int:
        server = self.server
        wake_r, wake_w = self._worker_signals()
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _set_parent_death_signal(signal.SIGTERM)
        inflight = _InFlight(server)
        if self.post_fork is not None:
            try:
                self.post_fork(server, index)
            except Exception:
                log.exception("post_fork failed in worker %d", index)
                return EXIT_BOOT_FAILED
        serving = threading.Thread(target=server.serve_forever,
                                   kwargs={"poll_interval": self.poll_interval},
                                   name="fastserver-serve", daemon=True)
        serving.start()
        if drain_deadline is None:
            while True:
                signums = _read_signals(wake_r, 1.0)
                if signums & {signal.SIGINT, signal.SIGQUIT}:
                    return 0
                if signal.SIGTERM in signums:
                    break
                if os.getppid() != self._pid:
                    log.warning("worker %d: supervisor is gone; stopping", index)
                    break
                if not serving.is_alive():
                    log.error("worker %d: serve_forever() ended", index)
                    return 1
            deadline = monotonic() + self.graceful_timeout
        else:
            deadline = drain_deadline
        return self._worker_drain(index, inflight, wake_r, deadline)

    def _worker_signals(self) -> "tuple[int, int]":
        os.close(self._wake_r)
        os.close(self._wake_w)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, _noop_handler)
        for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        return wake_r, wake_w

    def _worker_drain(self, index: int, inflight: _InFlight, wake_r: int,
                      deadline: float) -> int:
        server, listener = self.server, self.listener
        closed = listener.closed_to_new()
        if not closed and listener.can_close_to_new:
            # A SIGTERM sent to the whole process group reaches us at the
            # same time as the supervisor: give it a moment to close the
            # socket to new clients, serving meanwhile.
            end = min(deadline, monotonic() + self.drain_mark_wait)
            while not closed and monotonic() < end:
                if _read_signals(wake_r, 0.01) & {signal.SIGINT, signal.SIGQUIT}:
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
            if _read_signals(wake_r, min(remaining, 0.02)) & \
                    {signal.SIGINT, signal.SIGQUIT}:
                return 0
        return 0


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _format_address(address: Any) -> str:
    if isinstance(address, (str, bytes)):
        return "unix:%s" % (os.fsdecode(address),)
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        if ":" in host:
            host = "[%s]" % host
        return "%s:%s" % (host, address[1])
    return repr(address)
