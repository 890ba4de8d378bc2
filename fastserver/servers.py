"""The server classes: socketserver's documented hierarchy and hooks.

Everything a subclass may override is an ordinary Python method here; the
server's core (chosen per server by ``fastserver._compat``) only runs the
loop, the accept and the datagram receive behind the default hooks, so an
override always wins.
"""

from __future__ import annotations

import socket
import ssl
import sys
import traceback
from socket import socket as _Socket
from typing import Any, Callable, Optional, Sequence, Tuple, TypeVar

from . import _compat, preamble, tls
from .handlers import keeps_nagle
from .lobby import Lobby
from .mixins import ForkingMixIn, ThreadingMixIn, close_with_handlers

__all__ = [
    "BaseServer", "TCPServer", "UDPServer", "UnixStreamServer",
    "UnixDatagramServer", "ForkingMixIn", "ThreadingMixIn",
    "close_with_handlers",
    "ForkingTCPServer", "ForkingUDPServer", "ThreadingTCPServer",
    "ThreadingUDPServer", "ThreadingUnixStreamServer",
    "ThreadingUnixDatagramServer", "ForkingUnixStreamServer",
    "ForkingUnixDatagramServer",
]

_Address = Any
_Server = TypeVar("_Server", bound="BaseServer")
_RequestHandlerClass = Callable[[Any, Any, "BaseServer"], Any]


class BaseServer:
    """Base class for server classes.

    Methods for the caller:

    - __init__(server_address, RequestHandlerClass)
    - serve_forever(poll_interval=0.5)
    - shutdown()
    - handle_request()  # if you do not use serve_forever()
    - fileno() -> int   # for selector

    Methods that may be overridden:

    - server_bind()
    - server_activate()
    - get_request() -> request, client_address
    - handle_timeout()
    - verify_request(request, client_address)
    - server_close()
    - process_request(request, client_address)
    - shutdown_request(request)
    - close_request(request)
    - service_actions()
    - handle_error()

    Methods for derived classes:

    - finish_request(request, client_address)

    Class variables that may be overridden by derived classes or
    instances:

    - timeout
    - address_family
    - socket_type
    - allow_reuse_address
    - allow_reuse_port
    - backend: fastserver only; the core this server and its handlers run
      on, "cython" or "python", or None (the default) for the process
      default, fastserver.backend. Read when the server is constructed;
      afterwards the instance's backend names the core in use.
    - request_observer: fastserver only; None, or an object whose
      request_started(request, client_address) runs before process_request()
      and request_finished(request) once the request is closed (more than
      once for one request, possibly: later calls must be no-ops).
    - lobby_limit: fastserver only; how many connections may wait for
      their first bytes without a thread under serve_forever() (see
      fastserver.lobby); past it the oldest is dropped.

    Instance variables:

    - RequestHandlerClass
    - socket

    Unlike socketserver, shutdown() wakes serve_forever() at once instead of
    waiting for the next poll_interval, and serve_forever() backs off instead
    of spinning while accept() fails for lack of descriptors or memory.
    """

    timeout: Optional[float] = None
    backend: Optional[str] = None
    request_observer: Any = None
    lobby_limit: int = 1024
    # The core module; the instance gets the one its backend names.
    _fs_core: Any = _compat.default_core
    # Provided by subclasses (TCPServer and below); declared for type checkers.
    socket: _Socket
    get_request: Callable[[], Tuple[Any, _Address]]
    # A DatagramReceiver holding requests that were received in a batch and
    # are served before the loop waits again.
    _fs_buffered: Any = None
    # While serve_forever() runs: the connections waiting for their first
    # bytes, when the server's preamble has a step that waits for them.
    _fs_lobby: Optional[Lobby] = None
    # Whether the class overrides preamble_steps() (else: no preamble);
    # set per instance by __init__.
    _fs_has_steps: bool = True

    def __init__(self, server_address: _Address,
                 RequestHandlerClass: _RequestHandlerClass) -> None:
        """Constructor.  May be extended, do not override."""
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self._fs_core = _compat.load_core(self.backend)
        self.backend = self._fs_core.BACKEND
        self._fs_loop = self._fs_core.ServeLoop()
        # Read per request: instance attributes, which CPython reads several
        # times faster than class attributes through the instance.
        self._fs_lobby = None
        self.request_observer = self.request_observer
        self._fs_has_steps = type(self).preamble_steps is not BaseServer.preamble_steps

    def server_activate(self) -> None:
        """Called by constructor to activate the server.

        May be overridden.
        """

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle one request at a time until shutdown.

        service_actions() runs at least once every poll_interval seconds.
        shutdown() stops the loop at once. Ignores self.timeout.
        """
        try:
            # The loop takes the listening descriptor first, then asks for
            # the lobby (_fs_open_lobby), so that a server_close() racing
            # this call is told apart as socketserver's would be.
            self._fs_loop.serve_forever(self, poll_interval)
        finally:
            lobby, self._fs_lobby = self._fs_lobby, None
            if lobby is not None:
                # Finish what waits, unless the server was closed under us.
                if self.socket.fileno() >= 0:
                    lobby.release_all()
                lobby.close()

    def _fs_open_lobby(self) -> Optional[Lobby]:
        """Called by the serve loop as it starts: the lobby for this run
        (also set as _fs_lobby), if a preamble step waits for the client's
        first bytes."""
        self._fs_lobby = None
        if not self._fs_has_steps:
            return None
        steps = self.preamble_steps()
        for step in steps:
            if step.waits_for_first_bytes:
                self._fs_lobby = Lobby(self, step, preamble.budget(steps),
                                       self.lobby_limit)
                break
        return self._fs_lobby

    def shutdown(self) -> None:
        """Stops the serve_forever loop.

        Blocks until the loop has finished. This must be called while
        serve_forever() is running in another thread, or it will
        deadlock.
        """
        self._fs_loop.shutdown()

    def service_actions(self) -> None:
        """Called by the serve_forever() loop.

        May be overridden by a subclass / Mixin to implement any code that
        needs to be run during the loop.
        """

    # handle_request() is the top level: it waits, then get_request(),
    # verify_request() and process_request(). process_request() may hand the
    # request to a thread or a process; finish_request() instantiates the
    # handler, whose constructor handles the request.

    def handle_request(self) -> None:
        """Handle one request, possibly blocking.

        Respects self.timeout, and the listening socket's own timeout when
        that is shorter.
        """
        timeout = self.socket.gettimeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        if self._fs_loop.wait_for_request(self, timeout):
            return self._handle_request_noblock()
        return self.handle_timeout()

    def _handle_request_noblock(self) -> None:
        """Handle one request, without blocking.

        Assumes the socket is readable, so that get_request() does not block.
        """
        try:
            request, client_address = self.get_request()
        except OSError as exc:
            self._fs_loop.accept_failed(exc)
            return
        try:
            accepted = self.verify_request(request, client_address)
        except BaseException:
            # socketserver leaks the request here; we close it.
            self.shutdown_request(request)
            raise
        if not accepted:
            self.shutdown_request(request)
            return
        lobby = self._fs_lobby
        if lobby is None or not lobby.admit(request, client_address):
            self._fs_dispatch(request, client_address)

    def _fs_dispatch(self, request: Any, client_address: _Address) -> None:
        """process_request() for an accepted, verified request (from the
        loop, or from the lobby once the client has spoken)."""
        try:
            if self.request_observer is not None:
                self.request_observer.request_started(request, client_address)
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self._fs_end_request(request)
        except BaseException:
            self._fs_end_request(request)
            raise

    def handle_timeout(self) -> None:
        """Called if no new request arrives within self.timeout.

        Overridden by ForkingMixIn.
        """

    def verify_request(self, request: Any, client_address: _Address) -> bool:
        """Verify the request.  May be overridden.

        Return True if we should proceed with this request.
        """
        return True

    def process_request(self, request: Any, client_address: _Address) -> None:
        """Call finish_request.

        Overridden by ForkingMixIn and ThreadingMixIn.
        """
        self.finish_request(request, client_address)
        if self.request_observer is None:   # no frame for the common case
            self.shutdown_request(request)
        else:
            self._fs_end_request(request)

    def server_close(self) -> None:
        """Called to clean-up the server.

        May be overridden.
        """

    def finish_request(self, request: Any, client_address: _Address) -> None:
        """Finish one request by instantiating RequestHandlerClass.

        The connection's preamble (preamble_steps()) runs first, here in
        the request's own thread or process; see fastserver.preamble.
        """
        # A class that keeps BaseServer's preamble_steps() has no steps: one
        # lookup instead of a call per request (datagram servers).
        if self._fs_has_steps:
            steps = self.preamble_steps()
            if steps:
                preamble.run(self, request, client_address, steps)
                return
        self.RequestHandlerClass(request, client_address, self)

    def preamble_steps(self) -> Sequence[preamble.PreambleStep]:
        """The steps to run on a new connection before its handler, in
        order: none by default. May be extended (ProxyProtocolMixIn does).
        """
        return ()

    def shutdown_request(self, request: Any) -> None:
        """Called to shutdown and close an individual request."""
        # Around close_request(), so that an override of it that skips
        # super() cannot skip request_finished (see _fs_end_request).
        try:
            self.close_request(request)
        finally:
            if self.request_observer is not None:
                self.request_observer.request_finished(request)

    # How a forking parent lets go of its child's request, whatever
    # shutdown_request() a subclass has.
    _fs_close_request = shutdown_request

    def close_request(self, request: Any) -> None:
        """Called to clean up an individual request."""

    def _fs_end_request(self, request: Any) -> None:
        # The server's own request paths end requests here, around
        # shutdown_request(), so that an override of it that skips super()
        # cannot skip request_finished either; the call in shutdown_request()
        # serves overrides of process_request() that end requests themselves.
        try:
            self.shutdown_request(request)
        finally:
            if self.request_observer is not None:
                self.request_observer.request_finished(request)

    def handle_error(self, request: Any, client_address: _Address) -> None:
        """Handle an error gracefully.  May be overridden.

        The default is to print a traceback and continue.
        """
        print("-" * 40, file=sys.stderr)
        print("Exception occurred during processing of request from",
              client_address, file=sys.stderr)
        traceback.print_exc()
        print("-" * 40, file=sys.stderr)

    def __enter__(self: _Server) -> _Server:
        return self

    def __exit__(self, *args: object) -> None:
        self.server_close()


class TCPServer(BaseServer):
    """Base class for various socket-based server classes.

    Defaults to synchronous IP stream (i.e., TCP).

    Methods for the caller:

    - __init__(server_address, RequestHandlerClass, bind_and_activate=True)
    - serve_forever(poll_interval=0.5)
    - shutdown()
    - handle_request()  # if you don't use serve_forever()
    - fileno() -> int   # for selector

    Methods that may be overridden:

    - server_bind()
    - server_activate()
    - get_request() -> request, client_address
    - handle_timeout()
    - verify_request(request, client_address)
    - process_request(request, client_address)
    - shutdown_request(request)
    - close_request(request)
    - handle_error()

    Methods for derived classes:

    - finish_request(request, client_address)

    Class variables that may be overridden by derived classes or
    instances:

    - timeout
    - address_family
    - socket_type
    - request_queue_size (only for stream sockets)
    - allow_reuse_address
    - allow_reuse_port
    - ssl_context: fastserver only; an ssl.SSLContext to give accepted
      connections TLS, server side, or None (see fastserver.tls)
    - tls_handshake_timeout: fastserver only; seconds for the whole TLS
      handshake (None: no deadline)

    Instance variables:

    - server_address
    - RequestHandlerClass
    - socket
    """

    address_family: int = socket.AF_INET
    socket_type: int = socket.SOCK_STREAM
    request_queue_size: int = 5
    allow_reuse_address: bool = False
    allow_reuse_port: bool = False
    ssl_context: Optional[ssl.SSLContext] = None
    tls_handshake_timeout: Optional[float] = tls.DEFAULT_HANDSHAKE_TIMEOUT

    def __init__(self, server_address: _Address,
                 RequestHandlerClass: _RequestHandlerClass,
                 bind_and_activate: bool = True) -> None:
        """Constructor.  May be extended, do not override."""
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self) -> None:
        """Called by constructor to bind the socket.

        May be overridden.
        """
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.allow_reuse_port and hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Called by constructor to activate the server.

        May be overridden.
        """
        self.socket.listen(self.request_queue_size)

    def server_close(self) -> None:
        """Called to clean-up the server.

        May be overridden.
        """
        self.socket.close()

    def fileno(self) -> int:
        """Return socket file number.

        Interface required by selector.
        """
        return self.socket.fileno()

    def get_request(self) -> Tuple[Any, _Address]:
        """Get the request and client address from the socket.

        May be overridden.
        """
        nodelay = not keeps_nagle(self.RequestHandlerClass)
        settings = tls.settings_of(self)
        if settings is None:
            return self._fs_core.accept(self.socket, nodelay)  # type: ignore[no-any-return]
        # The raw connection (a wrapped listener's accept() would run the
        # handshake here, on the loop), wrapped for the preamble's handshake.
        conn, address = self._fs_core.accept(self.socket, nodelay, True)
        return tls.wrap_accepted(settings, conn), address

    def preamble_steps(self) -> Sequence[preamble.PreambleStep]:
        """The TLS handshake, when the server has TLS (fastserver.tls)."""
        if tls.settings_of(self) is None:
            return ()
        return (tls.TLSHandshake(self.tls_handshake_timeout),)

    def shutdown_request(self, request: Any) -> None:
        """Called to shutdown and close an individual request."""
        try:
            # Shut the write side down explicitly: close() only drops this
            # process's reference, and a forked child may hold another.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # ENOTCONN on some platforms
        super().shutdown_request(request)

    def close_request(self, request: Any) -> None:
        """Called to clean up an individual request."""
        request.close()


class UDPServer(TCPServer):
    """UDP server class."""

    allow_reuse_address = False
    allow_reuse_port = False
    socket_type = socket.SOCK_DGRAM
    max_packet_size: int = 8192

    def get_request(self) -> Tuple[Any, _Address]:
        receiver = self._fs_buffered
        if receiver is None or receiver.sock is not self.socket:
            receiver = self._fs_buffered = self._fs_core.DatagramReceiver(self.socket)
        data, client_addr = receiver.recv(self.max_packet_size)
        return (data, self.socket), client_addr

    def server_activate(self) -> None:
        # A datagram socket does not listen().
        _refuse_tls(self)

    # No preamble: a datagram is its own request.
    preamble_steps = BaseServer.preamble_steps

    def finish_request(self, request: Any, client_address: _Address) -> None:
        """Finish one request by instantiating RequestHandlerClass.

        A DatagramRequestHandler that keeps fastserver's own __init__,
        setup() and finish() has their work done by the server's core (in C
        on the cython backend); its handle() and every override run as
        usual (see fastserver._contract.Core.handle_datagram).
        """
        if self._fs_has_steps:
            BaseServer.finish_request(self, request, client_address)
            return
        self._fs_core.handle_datagram(self.RequestHandlerClass, request,
                                      client_address, self)

    def _fs_open_lobby(self) -> Optional[Lobby]:
        _refuse_tls(self)   # an ssl_context set after construction
        self._fs_lobby = None
        return None

    # Nothing to shut down: the socket is the server's; only close.
    shutdown_request = BaseServer.shutdown_request

    def close_request(self, request: Any) -> None:
        # Nothing to close: the socket is the server's.
        pass


#: What a core's serve loop may do in place of a UDPServer's own request
#: path (see fastserver._contract.ServeLoop): each name with its value as
#: this module defined it, captured at import. A server whose class finds
#: another value for any name, or whose instance has one of them set on
#: it, is served through its methods. The receiving half, from
#: _handle_request_noblock() to _fs_dispatch():
_DATAGRAM_RECEIVE_DEFAULTS = tuple(
    (name, getattr(UDPServer, name)) for name in (
        "_handle_request_noblock", "get_request", "verify_request",
        "_fs_dispatch", "__getattribute__"))
#: ... and the processing half, from process_request() to close_request(),
#: which a ThreadingUDPServer (say) has its own of.
_DATAGRAM_PROCESS_DEFAULTS = tuple(
    (name, getattr(UDPServer, name)) for name in (
        "process_request", "finish_request", "shutdown_request",
        "close_request", "preamble_steps"))


def _refuse_tls(server: Any) -> None:
    if getattr(server, "ssl_context", None) is not None:
        raise ValueError(
            "%s: ssl_context is for stream servers; datagram servers cannot "
            "use TLS (Python's ssl module has no DTLS)" % type(server).__name__)


class ForkingUDPServer(ForkingMixIn, UDPServer):
    pass


class ForkingTCPServer(ForkingMixIn, TCPServer):
    pass


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    pass


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    pass


class UnixStreamServer(TCPServer):
    address_family = socket.AF_UNIX


class UnixDatagramServer(UDPServer):
    address_family = socket.AF_UNIX


class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
    pass


class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
    pass


class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
    pass


class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
    pass
