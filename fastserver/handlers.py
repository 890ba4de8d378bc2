"""The request handler classes: BaseRequestHandler and its stream and
datagram flavours, with rfile/wfile served by the core."""

from __future__ import annotations

import socket
from io import BytesIO
from typing import Any, BinaryIO, Optional

from . import preamble
from ._compat import core


class BaseRequestHandler:
    """Base class for request handler classes.

    This class is instantiated for each request to be handled.  The
    constructor sets the instance variables request, client_address
    and server, and then calls the handle() method.  To implement a
    specific service, all you need to do is to derive a class which
    defines a handle() method.

    The handle() method can find the request as self.request, the
    client address as self.client_address, and the server (in case it
    needs access to per-server information) as self.server.  Since a
    separate instance is created for each request, the handle() method
    can define other arbitrary instance variables.

    Methods that may be overridden:

    - setup(): runs first; when it raises, neither handle() nor finish() runs
    - handle(): serves the request
    - finish(): runs after handle(), even when handle() raised
    """

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server
        # The connection preamble's attributes (proxy_address, ...).
        preamble.apply_to(self, request, server)
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self) -> None:
        pass

    def handle(self) -> None:
        pass

    def finish(self) -> None:
        pass


class StreamRequestHandler(BaseRequestHandler):
    """Define self.rfile and self.wfile for stream sockets.

    Class variables that may be overridden:

    - rbufsize: rfile's buffer size; -1 (default) for io.DEFAULT_BUFFER_SIZE,
      0 for unbuffered
    - wbufsize: wfile's buffer size; 0 (default) sends every write() in full
      before it returns
    - timeout: a timeout to apply to the request socket, if not None
    - disable_nagle_algorithm: set TCP_NODELAY on the request socket
    - coalesce_writes: fastserver only, default False. When True, write()
      appends to a buffer that is sent in one piece just before the handler
      blocks reading rfile, when handle() returns, on wfile.flush(), and
      whenever it reaches coalesce_limit bytes. Use it for request/response
      protocols whose handler writes several pieces per request; wbufsize is
      then ignored.
    - coalesce_limit: the size bound of that buffer (64 KiB)

    Instance variables set by setup(): connection (the request socket),
    rfile, wfile.
    """

    rbufsize: int = -1
    wbufsize: int = 0
    timeout: Optional[float] = None
    # Use only when wbufsize != 0 or coalesce_writes, to avoid small packets.
    disable_nagle_algorithm: bool = False
    coalesce_writes: bool = False
    coalesce_limit: int = 65536
    # Set by setup().
    connection: Any
    rfile: BinaryIO
    wfile: BinaryIO

    def __init__(self, request: Any, client_address: Any, server: Any) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server
        # The connection preamble's attributes (proxy_address, ...).
        preamble.apply_to(self, request, server)
        self.setup()
        try:
            self.handle()
            if self.coalesce_writes:
                # Sent here too, so that a finish() override that does not
                # flush cannot lose the reply.
                wfile = getattr(self, "wfile", None)
                if wfile is not None and not wfile.closed:
                    wfile.flush()
        finally:
            self.finish()

    def setup(self) -> None:
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP,
                                       socket.TCP_NODELAY, True)
        limit = self.coalesce_limit if self.coalesce_writes else 0
        if self.coalesce_writes and limit <= 0:
            raise ValueError("coalesce_limit must be positive, got %r" % (limit,))
        self.rfile, self.wfile = core.open_stream(
            self.connection, self.rbufsize, self.wbufsize, limit)

    def finish(self) -> None:
        if not self.wfile.closed:
            try:
                self.wfile.flush()
            except OSError:
                # A last socket error, such as ECONNABORTED, ends the
                # request quietly.
                pass
        self.wfile.close()
        self.rfile.close()


class DatagramRequestHandler(BaseRequestHandler):
    """Define self.rfile and self.wfile for datagram sockets.

    rfile reads the request datagram; whatever handle() wrote to wfile is
    sent back to client_address by finish(), as one datagram, even when it
    is empty. Instance variables set by setup(): packet, socket, rfile, wfile.
    """

    packet: bytes
    socket: socket.socket
    rfile: BytesIO
    wfile: BytesIO

    def setup(self) -> None:
        self.packet, self.socket = self.request
        self.rfile = BytesIO(self.packet)
        self.wfile = BytesIO()

    def finish(self) -> None:
        core.sendto(self.socket, self.wfile.getvalue(), self.client_address)
