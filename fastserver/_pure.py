"""The pure-Python core: serve loop, stream reader/writer and datagram receive.

One of the two implementations of the interface in ``fastserver._contract``,
which documents it and holds the policy both share; the other is the Cython
extension ``fastserver._core``. ``fastserver._compat`` chooses between them.
This module holds the mechanism only.
"""

from __future__ import annotations

import io
import operator
import os
import select
import socket
import sys
import threading
from time import monotonic
from typing import Any, Optional, Tuple

from . import _contract
from ._contract import (BACKOFF_FIRST, BACKOFF_MAX, RESOURCE_ERRNOS, AcceptBackoff,
                        closed_socket_error, poll_ms)
from ._sockfile import keeps_tls_methods, open_file_stream, open_tls_stream, tls_sendall

__all__ = list(_contract.INTERFACE)

BACKEND = "python"

_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
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
    """See fastserver._contract.ServeLoop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shutdown_request = False
        # Set while no serve_forever() runs in this loop; shutdown() waits on it.
        self._is_shut_down = threading.Event()
        self._wake_fd = -1
        self._backoff = AcceptBackoff()

    def serve_forever(self, server: Any, poll_interval: float = 0.5) -> None:
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
            self._run(server, fd, rfd, poll_ms(poll_interval))
        finally:
            with self._lock:
                self._wake_fd = -1
                os.close(wfd)
            os.close(rfd)
            self._shutdown_request = False
            self._is_shut_down.set()

    def _run(self, server: Any, fd: int, rfd: int, interval_ms: int) -> None:
        poller = select.poll()
        poller.register(rfd, select.POLLIN)
        poller.register(fd, _POLLIN)
        # The connections waiting for their first bytes (fastserver.lobby).
        lobby = server._fs_open_lobby()
        lobby_fd = -2
        if lobby is not None:
            lobby_fd = lobby.fileno()
            poller.register(lobby_fd, select.POLLIN)
        listening = True
        backoff = self._backoff
        while not self._shutdown_request:
            lobby_ready = False
            buffered = server._fs_buffered
            if buffered is not None and buffered.pending:
                ready = True
            else:
                wait_ms = interval_ms
                delay = backoff.until - monotonic()
                if delay > 0:
                    # Out of descriptors: wait on the waker alone.
                    if listening:
                        poller.unregister(fd)
                        listening = False
                    delay_ms = poll_ms(delay)
                    wait_ms = delay_ms if wait_ms < 0 else min(wait_ms, delay_ms)
                elif not listening:
                    poller.register(fd, _POLLIN)
                    listening = True
                if lobby is not None:
                    wait_ms = lobby.timeout_ms(wait_ms)
                ready = False
                for efd, events in poller.poll(wait_ms):
                    if efd == rfd:
                        _drain(rfd)
                    elif efd == lobby_fd:
                        lobby_ready = True
                    elif events & select.POLLNVAL:
                        return  # server_close() under the loop: leave quietly
                    else:
                        ready = True
            if self._shutdown_request:
                break
            if ready:
                server._handle_request_noblock()
            if lobby is not None:
                lobby.service(lobby_ready)
            server.service_actions()

    def shutdown(self) -> None:
        self._shutdown_request = True
        with self._lock:
            if self._wake_fd >= 0:
                try:
                    os.write(self._wake_fd, b"\0")
                except BlockingIOError:
                    pass  # a wake-up is already pending
        self._is_shut_down.wait()

    def wait_for_request(self, server: Any, timeout: Optional[float]) -> bool:
        buffered = server._fs_buffered
        if buffered is not None and buffered.pending:
            return True
        fd = _listening_fd(server)
        deadline = None if timeout is None else monotonic() + timeout
        if not self._backoff.sleep_off(deadline):
            return False
        poller = select.poll()
        poller.register(fd, _POLLIN)
        remaining = None if deadline is None else max(0.0, deadline - monotonic())
        return bool(poller.poll(poll_ms(remaining)))

    def accept_failed(self, exc: OSError) -> None:
        self._backoff.failed(exc)


def _listening_fd(server: Any) -> int:
    fd: int = server.fileno()
    if fd < 0:
        raise closed_socket_error(fd)
    return fd


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def accept(sock: socket.socket, nodelay: bool = False,
           raw: bool = False) -> Tuple[socket.socket, Any]:
    """See fastserver._contract.Core.accept."""
    # raw: socket.socket's own accept(), whatever sock's class does.
    conn, address = socket.socket.accept(sock) if raw else sock.accept()
    if nodelay and conn.family in _TCP_FAMILIES:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            # Best effort, as in the Cython core: a connection already reset
            # can refuse it, and its first recv or send reports the reset.
            pass
    return conn, address


class DatagramReceiver:
    """See fastserver._contract.DatagramReceiver."""

    pending = 0

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, max_packet_size: int) -> Tuple[bytes, Any]:
        return self.sock.recvfrom(max_packet_size)


def sendto(sock: socket.socket, data: Any, address: Any) -> int:
    """See fastserver._contract.Core.sendto."""
    return sock.sendto(data, address)


def handle_datagram(handler_class: Any, request: Any, client_address: Any,
                    server: Any) -> None:
    """See fastserver._contract.Core.handle_datagram."""
    handler_class(request, client_address, server)


if sys.version_info >= (3, 11):
    # The same call, without a Python frame per datagram.
    handle_datagram = operator.call  # type: ignore[assignment]  # noqa: F811

#: See fastserver._contract.DatagramFile.
DatagramFile = io.BytesIO


class SocketWriter(io.BufferedIOBase):
    """See fastserver._contract.SocketWriter."""

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
    """See fastserver._contract.CoalescingWriter."""

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
            if n >= self._limit:
                # Sent at once anyway: after the buffer, without a copy.
                self.flush()
                self._sock.sendall(view)
                return n
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
        return len(self._buf)

    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + self._buf.__sizeof__()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            super().close()

    def fileno(self) -> int:
        return self._sock.fileno()


class TLSSocketWriter(SocketWriter):
    """SocketWriter for an SSLSocket that keeps_tls_methods() vouched for:
    its sendall() without the Python frames."""

    def write(self, b: Any) -> int:
        return tls_sendall(self._sock, b)


def open_stream(
    sock: socket.socket, rbufsize: int, wbufsize: int, coalesce_limit: int
) -> Tuple[Any, Any]:
    """See fastserver._contract.Core.open_stream."""
    if rbufsize != 0 and keeps_tls_methods(sock) and sock.gettimeout() != 0.0:
        return open_tls_stream(sock, rbufsize, wbufsize, coalesce_limit,
                               TLSSocketWriter, CoalescingWriter)
    return open_file_stream(sock, rbufsize, wbufsize, coalesce_limit,
                            SocketWriter, CoalescingWriter)
