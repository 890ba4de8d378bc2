"""The request handler classes: BaseRequestHandler and its stream and
datagram flavours, with rfile/wfile served by the server's core."""

from __future__ import annotations

import functools
import socket
from io import BytesIO
from typing import Any, BinaryIO, Callable, Optional

from . import _compat, preamble


def _core_of(server: Any) -> Any:
    """The core of the server the handler serves: a handler given some other
    server (or none) gets the process default."""
    return getattr(server, "_fs_core", _compat.default_core)


def keeps_nagle(handler_class: Any) -> bool:
    """Whether connections for handler_class keep Nagle's algorithm: only
    when its disable_nagle_algorithm is False, and not merely inherited
    from socketserver's own StreamRequestHandler (whose default False a
    handler written against the real socketserver carries without asking
    for it)."""
    if isinstance(handler_class, functools.partial):
        handler_class = handler_class.func
    if getattr(handler_class, "disable_nagle_algorithm", None) is not False:
        return False
    for cls in getattr(handler_class, "__mro__", ()):
        if "disable_nagle_algorithm" in cls.__dict__:
            return not (cls.__module__ == "socketserver"
                        and cls.__qualname__ == "StreamRequestHandler")
    return True


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
        # The connection preamble's attributes (proxy_address, ...). Most
        # connections have no preamble: the check is a C call, no frame.
        if preamble.current() is not None:
            preamble.apply_to(self, request, server)
        self.setup()
        try:
            self.handle()
            if self._fs_handled is not None:
                self._fs_handled()
        finally:
            self.finish()

    # None, or a method that runs after handle() returns, before finish():
    # what a flavour of handler must do whatever finish() an override does.
    # None rather than a no-op method: one attribute lookup per request
    # instead of a call.
    _fs_handled: Optional[Callable[[], None]] = None

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
    - disable_nagle_algorithm: True sets TCP_NODELAY on the request socket
      in setup(); False keeps Nagle's algorithm. fastserver's default, None,
      means TCP_NODELAY too: TCP servers set it on every connection they
      accept for such a handler, so that a reply written in pieces is not
      held back waiting for the client's delayed ACK (socketserver's default
      is False, which stalls keep-alive clients ~40 ms per reply)
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
    # None: TCP_NODELAY, set when the connection is accepted (see above).
    disable_nagle_algorithm: Optional[bool] = None
    coalesce_writes: bool = False
    coalesce_limit: int = 65536
    # Set by setup().
    connection: Any
    rfile: BinaryIO
    wfile: BinaryIO

    def _fs_handled(self) -> None:
        if self.coalesce_writes:
            # Sent here too, so that a finish() override that does not
            # flush cannot lose the reply.
            wfile = getattr(self, "wfile", None)
            if wfile is not None and not wfile.closed:
                wfile.flush()

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
        self.rfile, self.wfile = _core_of(self.server).open_stream(
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

    On the cython backend, a handler that keeps this class's setup() and
    finish() (and BaseRequestHandler's __init__) has their work done in C
    under UDPServer.finish_request(), with the core's DatagramFile as rfile
    and wfile: io.BytesIO work-alikes that do the common operations in C.
    Overriding any of these methods brings them all back, as written here,
    with io.BytesIO files.
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
        getattr(self.server, "_fs_core", _compat.default_core).sendto(
            self.socket, self.wfile.getvalue(), self.client_address)


#: What a core's handle_datagram() may do in place of a handler class's
#: own: each name with its value as this module defined it, captured at
#: import, so that a patch of these classes is seen as an override. A class
#: whose lookup of any name finds another value is instantiated as it is.
_DATAGRAM_DEFAULTS = (
    ("__init__", BaseRequestHandler.__init__),
    ("setup", DatagramRequestHandler.setup),
    ("finish", DatagramRequestHandler.finish),
    ("_fs_handled", None),
    ("__new__", object.__new__),
    ("__getattribute__", object.__getattribute__),
    ("__setattr__", object.__setattr__),
    ("__delattr__", object.__delattr__),
)
