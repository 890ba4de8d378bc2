"""Reading one PROXY header off a connection, leaving what follows unread.

The header is read from the socket itself: a receive with MSG_PEEK shows
what has arrived without taking it, :func:`~fastserver.proxy.codec.parse`
tells how long the header is (or that all of it so far is header), and a
plain receive then takes exactly the header's bytes. The first byte after
the header is therefore the first byte rfile or ``request.recv()`` returns,
whatever the handler class, its buffering or the backend, and the reading
needs no rfile: it runs in the connection preamble, before the handler
exists.

Cost: a header that arrives in one segment (as HAProxy sends it, usually
together with the client's first bytes) takes two receives, the peek and
the exact one, and no other system call: the peek does not wait
(MSG_DONTWAIT), and only when nothing has arrived yet is the socket polled,
for at most what is left of the deadline, so the socket's blocking mode and
timeout are never changed. Reading through the handler's rfile took one
receive (the header and the data after it, into the buffer) but two
settimeout() calls around it and a poll() before it.
"""

from __future__ import annotations

import socket
from time import monotonic
from typing import Any, Optional

from ..preamble import PreambleTimeout, wait_readable
from .codec import (V1_MAX_LENGTH, IncompleteHeader, ProxyHeader,
                    ProxyProtocolError, parse)

__all__ = ["read_header", "read_header_until", "HeaderTimeout"]

# Enough for a version 1 header and for the version 2 headers proxies send
# (addresses and a few TLVs); a longer one takes a second peek.
_FIRST_PEEK = 512
_PEEK_DONTWAIT = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
# The socket's own receive: on an ssl.SSLSocket whose handshake is still to
# come (PROXY before TLS), its recv() would start the handshake instead.
_raw_recv = socket.socket.recv


class HeaderTimeout(ProxyProtocolError):
    """The deadline passed before the whole header arrived."""


class _SocketSource:
    """The socket itself: peek() without taking, consume() exactly."""

    def __init__(self, sock: socket.socket, deadline: Optional[float]) -> None:
        self.sock = sock
        self.deadline = deadline

    def peek(self, size: int) -> bytes:
        while True:
            try:
                return _raw_recv(self.sock, size, _PEEK_DONTWAIT)
            except (BlockingIOError, socket.timeout):
                wait_readable(self.sock, self.deadline)

    def consume(self, n: int) -> bytes:
        data = b""
        while len(data) < n:  # the bytes were peeked: at most a few rounds
            chunk = _raw_recv(self.sock, n - len(data))
            if not chunk:
                break
            data += chunk
        return data


class _BufferedSource:
    """An rfile with peek() (the C reader, io.BufferedReader), for callers
    of read_header() that already made one: the bytes after the header
    stay in its buffer."""

    def __init__(self, sock: socket.socket, rfile: Any,
                 deadline: Optional[float]) -> None:
        self.sock = sock
        self.rfile = rfile
        self.deadline = deadline

    def peek(self, size: int) -> bytes:
        if self.deadline is not None:
            left = self.deadline - monotonic()
            if left <= 0:
                raise PreambleTimeout("deadline passed")
            self.sock.settimeout(left)
        try:
            return bytes(self.rfile.peek(1))
        except socket.timeout:
            raise PreambleTimeout("deadline passed") from None

    def consume(self, n: int) -> bytes:
        return bytes(self.rfile.read(n))


def _read(source: Any, version: str, budget: Optional[float]) -> ProxyHeader:
    data = b""
    want = V1_MAX_LENGTH if version == "v1" else _FIRST_PEEK
    try:
        while True:
            chunk = source.peek(want)
            if not chunk:
                raise ProxyProtocolError("connection closed after %d bytes of "
                                         "the header" % len(data))
            try:
                header, length = parse(data + chunk, version)
            except IncompleteHeader as exc:
                # Every byte so far belongs to the header: take them all.
                data += source.consume(len(chunk))
                room = V1_MAX_LENGTH if exc.needed is None else exc.needed
                want = max(1, room - len(data))
                continue
            data += source.consume(length - len(data))
            return header
    except PreambleTimeout:
        raise HeaderTimeout("no complete header within %g s (%d bytes "
                            "received)" % (budget or 0.0, len(data))) from None


def read_header_until(sock: socket.socket, version: str,
                      deadline: Optional[float],
                      budget: Optional[float] = None) -> ProxyHeader:
    """Read one header from sock by deadline (a time.monotonic() value, or
    None); budget is the seconds the deadline allowed, for the message.
    Raises ProxyProtocolError (a malformed header, the connection closed
    early, HeaderTimeout) or OSError."""
    saved = sock.gettimeout()
    if saved is None:
        return _read(_SocketSource(sock, deadline), version, budget)
    # A socket with a timeout polls before every receive, for up to that
    # timeout: make it blocking for the header, so that only the deadline
    # decides how long a receive may wait.
    sock.settimeout(None)
    try:
        return _read(_SocketSource(sock, deadline), version, budget)
    finally:
        _restore_timeout(sock, saved)


def _restore_timeout(sock: socket.socket, saved: Optional[float]) -> None:
    try:
        sock.settimeout(saved)
    except OSError:
        pass


def read_header(sock: socket.socket, rfile: Any = None, version: str = "auto",
                timeout: float = 3.0) -> ProxyHeader:
    """Read one header from a connection, leaving what follows unread.

    Without rfile the header is read from the socket (MSG_PEEK, then exact
    receives), and the socket's next byte is the first after the header.
    With an rfile that has peek(), it is read through it, and the bytes
    after it stay in its buffer. The whole header must arrive within
    timeout seconds. Raises ProxyProtocolError (a malformed header, the
    connection closed early, or the timeout) or OSError.
    """
    deadline = monotonic() + timeout
    if rfile is None or not hasattr(rfile, "peek"):
        return read_header_until(sock, version, deadline, timeout)
    saved = sock.gettimeout()
    try:
        return _read(_BufferedSource(sock, rfile, deadline), version, timeout)
    finally:
        _restore_timeout(sock, saved)
