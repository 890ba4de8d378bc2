"""The pure-Python core: serve loop, stream reader/writer and datagram receive.

This is one of the two implementations of fastserver's core interface; the
other is the Cython extension ``fastserver._core``. ``fastserver._compat`` is
the only module that chooses between them. Both expose the same names with the
same behaviour and the same docstrings:

- ``ServeLoop``: runs ``serve_forever`` for one server, waits for a request
  with a timeout for ``handle_request``, wakes at once for ``shutdown()`` and
  backs off when ``accept()`` runs out of descriptors or memory.
- ``accept(sock)``: the default ``TCPServer.get_request``.
- ``DatagramReceiver``: the default ``UDPServer.get_request``.
- ``sendto(sock, data, address)``: the reply of a ``DatagramRequestHandler``.
- ``open_stream(sock, rbufsize, wbufsize, coalesce_limit)``: the ``rfile`` and
  ``wfile`` pair of a ``StreamRequestHandler``.
- ``SocketWriter`` and ``CoalescingWriter``: the two unbuffered-by-default
  writers behind ``wfile``.
"""

from __future__ import annotations

import errno
import io
import os
import select
import socket
import threading
from time import monotonic
from typing import Any, Optional, Tuple

__all__ = [
    "ServeLoop",
    "accept",
    "DatagramReceiver",
    "sendto",
    "open_stream",
    "SocketWriter",
    "CoalescingWriter",
    "RESOURCE_ERRNOS",
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
]

#: accept() errors that mean "out of descriptors or memory": retrying at once
#: cannot succeed, so the loop backs off instead of spinning.
RESOURCE_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
)
#: The first back-off after a resource error, and the cap it doubles up to.
#: The cap bounds how late a freed descriptor is noticed.
BACKOFF_FIRST = 0.005
BACKOFF_MAX = 0.1
# A resource error later than this after the previous one starts afresh.
_BACKOFF_RESET = 1.0

_POLLIN = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


def _make_waker() -> Tuple[int, int]:
    """Return (read_fd, write_fd) of a non-blocking self-pipe."""
    rfd, wfd = os.pipe()
    try:
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
    except BaseException:
        os.close(rfd)
        os.close(wfd)
        raise
    return rfd, wfd


class ServeLoop:
    """The serve loop of one server.

    Methods for the server:
    - serve_forever(server, poll_interval)
    - shutdown()
    - wait_for_request(server, timeout) -> bool
    - accept_failed(exc)

    The loop calls back into the server only through its public or
    overridable methods: fileno(), _handle_request_noblock() and
    service_actions(). A server's ``_fs_buffered`` attribute, when not None,
    is a DatagramReceiver whose ``pending`` requests are served without
    waiting.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shutdown_request = False
        # Set while no serve_forever() runs in this loop; shutdown() waits on it.
        self._is_shut_down = threading.Event()
        self._wake_fd = -1
        self._backoff_until = 0.0
        self._backoff_delay = 0.0
        self._last_resource_error = -_BACKOFF_RESET

    def serve_forever(self, server: Any, poll_interval: float = 0.5) -> None:
        """Handle requests until shutdown(); run service_actions() at least
        once per poll_interval."""
        try:
            # The listening descriptor first: opening the waker releases the
            # GIL, and a server_close() that runs then must not be mistaken
            # for a socket closed before serve_forever() was called.
            fd = _listening_fd(server)
            self._is_shut_down.clear()
            rfd, wfd = _make_waker()
        except BaseException:
            self._shutdown_request = False
            self._is_shut_down.set()
            raise
        with self._lock:
            self._wake_fd = wfd
        try:
            if server.fileno() != fd:
                return  # closed while the waker opened: leave as shutdown would
            poller = select.poll()
            poller.register(rfd, select.POLLIN)
            poller.register(fd, _POLLIN)
            listening = True
            interval_ms = _poll_ms(poll_interval)
            while not self._shutdown_request:
                buffered = server._fs_buffered
                if buffered is not None and buffered.pending:
                    ready = True
                else:
                    wait_ms = interval_ms
                    delay = self._backoff_until - monotonic()
                    if delay > 0:
                        # Out of descriptors: wait on the waker alone.
                        if listening:
                            poller.unregister(fd)
                            listening = False
                        delay_ms = _poll_ms(delay)
                        wait_ms = delay_ms if wait_ms < 0 else min(wait_ms, delay_ms)
                    elif not listening:
                        poller.register(fd, _POLLIN)
                        listening = True
                    ready = False
                    for efd, events in poller.poll(wait_ms):
                        if efd == rfd:
                            _drain(rfd)
                        elif events & select.POLLNVAL:
                            return  # server_close() under the loop: leave quietly
                        else:
                            ready = True
                if self._shutdown_request:
                    break
                if ready:
                    server._handle_request_noblock()
                server.service_actions()
        finally:
            with self._lock:
                self._wake_fd = -1
                os.close(wfd)
            os.close(rfd)
            self._shutdown_request = False
            self._is_shut_down.set()

    def shutdown(self) -> None:
        """Stop serve_forever() and wait until it has returned.

        Called before serve_forever(), it makes the next serve_forever()
        return at once; as in socketserver, it waits for that to happen.
        """
        self._shutdown_request = True
        with self._lock:
            if self._wake_fd >= 0:
                try:
                    os.write(self._wake_fd, b"\0")
                except BlockingIOError:
                    pass  # a wake-up is already pending
        self._is_shut_down.wait()

    def wait_for_request(self, server: Any, timeout: Optional[float]) -> bool:
        """Wait until server.fileno() is readable; False once timeout expires.

        timeout None waits forever. A back-off still in force after an
        accept() resource error is slept off first, within the timeout.
        """
        buffered = server._fs_buffered
        if buffered is not None and buffered.pending:
            return True
        deadline = None if timeout is None else monotonic() + timeout
        delay = self._backoff_until - monotonic()
        if delay > 0:
            if deadline is not None and deadline - monotonic() < delay:
                _sleep_until(deadline)
                return False
            _sleep_until(monotonic() + delay)
        poller = select.poll()
        poller.register(_listening_fd(server), _POLLIN)
        remaining = None if deadline is None else max(0.0, deadline - monotonic())
        return bool(poller.poll(_poll_ms(remaining)))

    def accept_failed(self, exc: OSError) -> None:
        """Note that get_request() raised exc; back off if it ran out of
        resources."""
        if exc.errno not in RESOURCE_ERRNOS:
            return
        now = monotonic()
        if now - self._last_resource_error > _BACKOFF_RESET:
            self._backoff_delay = BACKOFF_FIRST
        else:
            self._backoff_delay = min(self._backoff_delay * 2, BACKOFF_MAX)
        self._last_resource_error = now
        self._backoff_until = now + self._backoff_delay


def _poll_ms(seconds: Optional[float]) -> int:
    """poll() takes whole milliseconds; round up so that we never spin."""
    if seconds is None:
        return -1
    if seconds <= 0:
        return 0
    return max(1, int(seconds * 1000 + 0.999))


def _listening_fd(server: Any) -> int:
    """server.fileno(), or the ValueError that socketserver's selector
    raises for a closed socket."""
    fd = server.fileno()
    if fd < 0:
        raise ValueError("Invalid file descriptor: {}".format(fd))
    return fd


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _sleep_until(deadline: float) -> None:
    # poll() with no descriptors is an interruptible sleep that honours PEP 475.
    select.poll().poll(_poll_ms(deadline - monotonic()))


def accept(sock: socket.socket) -> Tuple[socket.socket, Any]:
    """Accept one connection on sock: (connection, client_address)."""
    return sock.accept()


class DatagramReceiver:
    """Receives the datagrams of one server socket.

    ``recv(max_packet_size)`` returns (data, client_address) and truncates
    longer datagrams, as recvfrom() does. ``pending`` counts datagrams
    already received and not yet returned: the Cython core receives in
    recvmmsg() batches; the pure core receives one datagram per call, so
    its count is always 0.
    """

    pending = 0

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, max_packet_size: int) -> Tuple[bytes, Any]:
        return self.sock.recvfrom(max_packet_size)


def sendto(sock: socket.socket, data: Any, address: Any) -> int:
    """sock.sendto(data, address): a DatagramRequestHandler's reply.

    The Cython core first tries one non-blocking send with the GIL held
    when the address is numeric (as every address a server receives
    from is): UDP rarely lacks buffer room, and releasing the GIL for
    every reply hands it to another handler thread and then waits to get
    it back. Anything else, or a full buffer, is sock.sendto() itself.
    """
    return sock.sendto(data, address)


class SocketWriter(io.BufferedIOBase):
    """wfile for wbufsize == 0: every write() is sent in full before it
    returns, and returns the number of bytes written."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        # No closed check, as in socketserver: the socket decides.
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self) -> int:
        return self._sock.fileno()


class CoalescingWriter(io.BufferedIOBase):
    """wfile for coalesce_writes: write() only appends to a buffer.

    The buffer is sent in one sendall() on flush(), when it reaches
    ``limit`` bytes, when the paired reader is about to block for more
    input, and when the handler's handle() returns. write() returns the
    number of bytes accepted.
    """

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self._sock = sock
        self._limit = limit
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self.closed:
            raise ValueError("write to closed file")
        with memoryview(b) as view:
            n = view.nbytes
            self._buf += view
        if len(self._buf) >= self._limit:
            self.flush()
        return n

    def flush(self) -> None:
        if self.closed:
            raise ValueError("flush of closed file")
        if self._buf:
            # Swap first: after a failed send the bytes are gone, as they
            # would be from an unbuffered wfile.
            buf, self._buf = self._buf, bytearray()
            self._sock.sendall(buf)

    @property
    def pending(self) -> int:
        """Bytes written but not yet sent."""
        return len(self._buf)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            super().close()

    def fileno(self) -> int:
        return self._sock.fileno()


class _FlushingSocketIO(socket.SocketIO):
    """A raw socket reader that sends the paired writer's buffer before
    every recv, that is, before the handler can block for more input."""

    def __init__(self, sock: socket.socket, writer: CoalescingWriter) -> None:
        super().__init__(sock, "rb")
        self._writer = writer

    def readinto(self, b: Any) -> Optional[int]:
        writer = self._writer
        if writer._buf and not writer.closed:
            writer.flush()
        return super().readinto(b)


def open_stream(
    sock: socket.socket, rbufsize: int, wbufsize: int, coalesce_limit: int
) -> Tuple[Any, Any]:
    """Return (rfile, wfile) for a connected stream socket.

    rfile reads like ``sock.makefile('rb', rbufsize)``. wfile is a
    SocketWriter when wbufsize is 0, else ``sock.makefile('wb', wbufsize)``;
    a coalesce_limit above 0 makes it a CoalescingWriter of that limit whose
    buffer rfile sends before each receive.
    """
    if coalesce_limit <= 0:
        rfile = sock.makefile("rb", rbufsize)
        if wbufsize == 0:
            return rfile, SocketWriter(sock)
        return rfile, sock.makefile("wb", wbufsize)
    writer = CoalescingWriter(sock, coalesce_limit)
    raw = _FlushingSocketIO(sock, writer)
    # makefile() counts its files so that sock.close() keeps the descriptor
    # open until they are closed too; SocketIO.close() undoes this.
    sock._io_refs += 1  # type: ignore[attr-defined]
    if rbufsize == 0:
        return raw, writer
    size = io.DEFAULT_BUFFER_SIZE if rbufsize < 0 else rbufsize
    return io.BufferedReader(raw, size), writer
