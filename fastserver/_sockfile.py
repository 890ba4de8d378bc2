"""rfile/wfile pairs made of the socket module's own file objects.

Not a core: both cores use it. The pure core builds every stream this way;
the Cython core falls back on it where its C reader cannot drive the socket
(rbufsize 0, a non-blocking socket, or a socket that overrides the methods
the C path stands in for: a socket.socket subclass's recv or send, an
ssl.SSLSocket's recv_into, read, sendall, send or _checkClosed). Each core
passes its own writer classes.
"""

from __future__ import annotations

import io
import socket
from typing import Any, Callable, Optional, Tuple


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
