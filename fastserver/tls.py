"""TLS on stream servers: the handshake as a connection-preamble step.

Two ways in, one path:

- ``ssl_context`` (a class or instance attribute of every stream server,
  default None): accepted connections get TLS, server side.
- socketserver's idiom, ``server.socket = ctx.wrap_socket(server.socket,
  server_side=True)``: with the socketserver module, accept() then runs the
  whole handshake on the serve loop's thread, with no deadline, so one
  client that connects and sends nothing stops the server for good. When
  the server keeps TCPServer.get_request(), fastserver accepts the raw
  connection instead and wraps it with the listening socket's own context
  and options (do_handshake_on_connect, suppress_ragged_eofs).

Either way the connection is wrapped (no I/O yet) when it is accepted, so
verify_request(), process_request() and shutdown_request() get the same
``ssl.SSLSocket`` the handler gets; only its handshake is still to come
there. The handshake is the :class:`TLSHandshake` preamble step, after a
PROXY header if there is one (the header precedes the ClientHello on the
wire). It runs in the request's own thread or process, with one deadline,
``tls_handshake_timeout`` seconds (default 10; None for none), however
slowly the bytes arrive. Under serve_forever() a connection that has not
sent its whole first TLS record waits in the server's lobby
(fastserver.lobby), holding no thread; see there.

A failed or late handshake closes the connection and logs one line at
DEBUG on the ``fastserver.tls`` logger (scanners make these all day);
handle_error() is not called, as the stdlib's accept path does not call it
either, and the server serves on.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
from typing import Any, NamedTuple, Optional

from .preamble import ConnectionState, PreambleStep, wait_for

__all__ = ["TLSHandshake", "TLSSettings", "settings_of", "wrap_accepted",
           "DEFAULT_HANDSHAKE_TIMEOUT"]

log = logging.getLogger("fastserver.tls")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0

# A TLS record starts with its content type (22: handshake), two version
# bytes and a two-byte length; a ClientHello record is at most 16 KiB + 5.
_HANDSHAKE_RECORD = 22
_RECORD_HEADER = 5
_PEEK_DONTWAIT = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
# Where poll() honours SO_RCVLOWAT (TCP); elsewhere (AF_UNIX on Linux) a
# socket with any byte stays readable, and waiting for more would spin, so
# the lobby lets such a connection go on its first byte.
_LOWAT_FAMILIES = (socket.AF_INET, socket.AF_INET6)
# The socket's own receive, not SSLSocket's: peeking at the ClientHello
# must not start the handshake.
_raw_recv = socket.socket.recv


class TLSSettings(NamedTuple):
    """What a server's accepted connections are wrapped with."""

    context: ssl.SSLContext
    do_handshake_on_connect: bool
    suppress_ragged_eofs: bool


def settings_of(server: Any) -> Optional[TLSSettings]:
    """The server's TLS settings: from its ssl_context, else from a wrapped
    listening socket; None for plain connections."""
    context = getattr(server, "ssl_context", None)
    if context is not None:
        if not isinstance(context, ssl.SSLContext):
            raise TypeError("ssl_context must be an ssl.SSLContext or None, "
                            "not %s" % type(context).__name__)
        return TLSSettings(context, True, True)
    listener = getattr(server, "socket", None)
    if isinstance(listener, ssl.SSLSocket):
        # Attributes ssl.py sets on every SSLSocket (typeshed omits them).
        return TLSSettings(listener.context,
                           getattr(listener, "do_handshake_on_connect", True),
                           getattr(listener, "suppress_ragged_eofs", True))
    return None


def wrap_accepted(settings: TLSSettings, conn: socket.socket) -> ssl.SSLSocket:
    """conn, wrapped server side with its handshake still to do (no I/O
    here). The wrapper takes over conn's descriptor."""
    try:
        wrapped = settings.context.wrap_socket(
            conn, server_side=True, do_handshake_on_connect=False,
            suppress_ragged_eofs=settings.suppress_ragged_eofs)
    except BaseException:
        conn.close()
        raise
    # What the listening socket said, for code that reads it; the
    # handshake itself is the preamble's.
    setattr(wrapped, "do_handshake_on_connect", settings.do_handshake_on_connect)
    return wrapped


def handshake_pending(sock: Any) -> bool:
    """Whether sock is a server-side SSLSocket whose handshake has not
    completed (version() is None until it has)."""
    return isinstance(sock, ssl.SSLSocket) and sock.version() is None


class TLSHandshake(PreambleStep):
    """The preamble step that completes the server-side TLS handshake."""

    logger = log
    log_level = logging.DEBUG
    #: The lobby may hold the connection until first_bytes_ready().
    waits_for_first_bytes = True

    def __init__(self, timeout: Optional[float]) -> None:
        self.timeout = None if timeout is None else float(timeout)

    def wants_lobby(self, request: Any) -> bool:
        """Whether request should wait in the lobby: its handshake is still
        to come, so its client speaks first."""
        return handshake_pending(request)

    def first_bytes_ready(self, sock: Any) -> bool:
        """Whether the client's first TLS record has fully arrived, or what
        arrived is not TLS at all (the handshake then fails at once), or
        the client hung up. While a record is incomplete, the socket is
        made readable only once all of it is in (SO_RCVLOWAT), so that a
        client that trickles its ClientHello holds no thread either."""
        if sock.family not in _LOWAT_FAMILIES:
            return True   # readable at all: see _LOWAT_FAMILIES
        try:
            head = _raw_recv(sock, _RECORD_HEADER, _PEEK_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True   # the handshake reports it
        if len(head) < _RECORD_HEADER or head[0] != _HANDSHAKE_RECORD:
            if head and head[0] == _HANDSHAKE_RECORD:
                _set_lowat(sock, _RECORD_HEADER)
                return False
            return True
        need = _RECORD_HEADER + int.from_bytes(head[3:5], "big")
        try:
            have = len(_raw_recv(sock, need, _PEEK_DONTWAIT))
        except OSError:
            return True
        if have >= need:
            return True
        _set_lowat(sock, need)
        return False

    def leave_lobby(self, sock: Any) -> None:
        """Undo first_bytes_ready()'s SO_RCVLOWAT before the handshake."""
        _set_lowat(sock, 1)

    def __call__(self, state: ConnectionState) -> ConnectionState:
        sock = state.request
        if not handshake_pending(sock):
            return state
        saved = sock.gettimeout()
        # Non-blocking, so that only the one deadline bounds each wait.
        sock.settimeout(0.0)
        try:
            while True:
                try:
                    sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    wait_for(sock, select.POLLIN, state.deadline)
                except ssl.SSLWantWriteError:
                    wait_for(sock, select.POLLOUT, state.deadline)
        finally:
            try:
                sock.settimeout(saved)
            except OSError:
                pass
        return state


def _set_lowat(sock: Any, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
    except OSError:
        pass   # not everywhere: the lobby then wakes on every segment
