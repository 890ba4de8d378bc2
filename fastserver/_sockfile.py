"""rfile/wfile pairs made of the socket module's own file objects, and
their twin for an ssl.SSLSocket, which skips its Python layers.

Not a core: both cores use it. The pure core builds every stream this way;
the Cython core falls back on it where its C reader cannot drive the socket
(rbufsize 0, a non-blocking socket, or a socket that overrides the methods
the C path stands in for: a socket.socket subclass's recv or send, an
ssl.SSLSocket's recv_into, read, sendall, send or _checkClosed). Each core
passes its own writer classes.
"""

from __future__ import annotations

import errno
import io
import socket
import sys
from typing import Any, Callable, Optional, Tuple

# The SSLSocket methods that SocketIO.readinto() and sendall() reach:
# recv_into -> read, sendall -> send, and _checkClosed in each.
TLS_PATH_METHODS = ("_checkClosed", "recv_into", "read", "sendall", "send")
# SocketIO.readinto's: None for these, as for a non-blocking socket.
_BLOCKING_ERRNOS = frozenset((errno.EAGAIN, errno.EWOULDBLOCK))


def keeps_tls_methods(sock: Any) -> bool:
    """Whether sock is an ssl.SSLSocket that keeps, on its class and on
    itself, every method in TLS_PATH_METHODS: then calling its _ssl object
    directly (TLSSocketIO, the cores' TLS writers) gives what they give."""
    ssl = sys.modules.get("ssl")
    if ssl is None or not isinstance(sock, ssl.SSLSocket):
        return False   # no SSLSocket exists before ssl is imported
    cls = type(sock)
    attributes = getattr(sock, "__dict__", {})
    return all(getattr(cls, name, None) is ssl.SSLSocket.__dict__[name]
               and name not in attributes for name in TLS_PATH_METHODS)


class FlushingSocketIO(socket.SocketIO):
    """A raw socket reader that sends the paired writer's buffer before
    every recv, that is, before the handler can block for more input."""

    def __init__(self, sock: socket.socket, writer: Any) -> None:
        super().__init__(sock, "rb")
        self._writer = writer

    def readinto(self, b: Any) -> Optional[int]:
        writer = self._writer
        if writer.pending and not writer.closed:
            writer.flush()
        return super().readinto(b)


class TLSSocketIO(socket.SocketIO):
    """SocketIO over an SSLSocket that keeps_tls_methods() vouched for:
    readinto() is recv_into() -> read() in one frame. With a
    writer, that writer's buffer is sent before every receive, as
    FlushingSocketIO does."""

    def __init__(self, sock: Any, writer: Any = None) -> None:
        super().__init__(sock, "rb")
        self._writer = writer
        ssl = sys.modules["ssl"]
        self._ssl_error = ssl.SSLError
        self._ssl_eof = ssl.SSL_ERROR_EOF

    def readinto(self, b: Any) -> Optional[int]:
        writer = self._writer
        if writer is not None and writer.pending and not writer.closed:
            writer.flush()
        # SocketIO's own checks and state (private, so untyped in typeshed).
        self._checkClosed()
        self._checkReadable()  # type: ignore[attr-defined]
        if self._timeout_occurred:  # type: ignore[has-type]
            raise OSError("cannot read from timed out object")
        sock = self._sock  # type: ignore[attr-defined]
        try:
            sslobj = sock._sslobj
            with memoryview(b) as view:
                nbytes = view.nbytes
            if sslobj is None or not nbytes:
                # Unwrapped (a plain socket's receive), or recv_into()'s
                # reading of an empty buffer: the method itself.
                return sock.recv_into(b)  # type: ignore[no-any-return]
            try:
                return sslobj.read(nbytes, b)  # type: ignore[no-any-return]
            except self._ssl_error as exc:
                if exc.args[0] == self._ssl_eof and sock.suppress_ragged_eofs:
                    return 0
                raise
        except socket.timeout:
            self._timeout_occurred = True
            raise
        except OSError as exc:
            if exc.errno in _BLOCKING_ERRNOS:
                return None
            raise


def tls_sendall(sock: Any, data: Any) -> int:
    """sock.sendall(data) for an SSLSocket that keeps_tls_methods()
    vouched for, without its two Python frames; data's size in bytes."""
    sslobj = sock._sslobj
    if sslobj is None:
        sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes
    with memoryview(data) as view, view.cast("B") as octets:
        amount = len(octets)
        count = 0
        while count < amount:
            # All of it unless the socket is non-blocking; the loop is
            # sendall()'s, for a partial write all the same.
            count += sslobj.write(octets[count:] if count else octets)
            if count < amount:
                sslobj = sock._sslobj
                if sslobj is None:
                    sock.sendall(octets[count:])
                    break
        return view.nbytes


def open_tls_stream(
    sock: Any,
    rbufsize: int,
    wbufsize: int,
    coalesce_limit: int,
    socket_writer: Callable[[Any], Any],
    coalescing_writer: Callable[[Any, int], Any],
) -> Tuple[Any, Any]:
    """open_stream() for an SSLSocket that keeps_tls_methods() vouched
    for, blocking or with a timeout, and rbufsize other than 0: a
    BufferedReader over TLSSocketIO, and the given writers (the core's
    TLS SocketWriter, its CoalescingWriter)."""
    if rbufsize is None or rbufsize < 0:
        rbufsize = io.DEFAULT_BUFFER_SIZE
    if coalesce_limit > 0:
        writer = coalescing_writer(sock, coalesce_limit)
        raw = TLSSocketIO(sock, writer)
    else:
        writer = socket_writer(sock) if wbufsize == 0 else sock.makefile("wb", wbufsize)
        raw = TLSSocketIO(sock)
    # As makefile(): sock.close() keeps the descriptor until raw is closed.
    sock._io_refs += 1
    return io.BufferedReader(raw, rbufsize), writer


def open_file_stream(
    sock: socket.socket,
    rbufsize: int,
    wbufsize: int,
    coalesce_limit: int,
    socket_writer: Callable[[Any], Any],
    coalescing_writer: Callable[[Any, int], Any],
) -> Tuple[Any, Any]:
    """open_stream() (see fastserver._contract.Core) over sock.makefile(),
    with the given SocketWriter and CoalescingWriter classes."""
    if rbufsize is None:
        rbufsize = -1
    if coalesce_limit <= 0:
        rfile = sock.makefile("rb", rbufsize)
        if wbufsize == 0:
            return rfile, socket_writer(sock)
        return rfile, sock.makefile("wb", wbufsize)
    writer = coalescing_writer(sock, coalesce_limit)
    raw = FlushingSocketIO(sock, writer)
    # makefile() counts its files so that sock.close() keeps the descriptor
    # open until they are closed too; SocketIO.close() undoes this.
    sock._io_refs += 1  # type: ignore[attr-defined]
    if rbufsize == 0:
        return raw, writer
    size = io.DEFAULT_BUFFER_SIZE if rbufsize < 0 else rbufsize
    return io.BufferedReader(raw, size), writer
