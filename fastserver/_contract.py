"""The core interface, written once: what both cores provide, and the policy
they share.

fastserver's core has two implementations of the same interface: the Cython
extension ``fastserver._core`` and the pure-Python ``fastserver._pure``.
``fastserver._compat`` chooses between them. Neither imports the other; both
import this module, which holds

- the interface as typing Protocols, with its documentation: ``ServeLoop``,
  ``DatagramReceiver``, the rfile (``StreamReader``), the two writers
  (``SocketWriter``, ``CoalescingWriter``), a datagram handler's files
  (``DatagramFile``) and the module itself (``Core``: ``accept``,
  ``sendto``, ``handle_datagram``, ``open_stream``, ``BACKEND``);
- the constants and the policies: the accept() back-off, poll()'s
  millisecond rounding, the datagram batch and slot bounds, the coalescing
  buffer's bounds.

A core implements the mechanism only. tests/test_core_contract.py drives
both through these Protocols; tests/test_core_discrepancies.py records where
they still differ, on purpose.
"""

from __future__ import annotations

import errno
import time
from time import monotonic
from typing import Any, Iterator, List, Optional, Protocol, Tuple, runtime_checkable

#: The names every core module exports (its ``__all__``).
INTERFACE = (
    "BACKEND",
    "ServeLoop",
    "accept",
    "DatagramReceiver",
    "sendto",
    "handle_datagram",
    "DatagramFile",
    "open_stream",
    "SocketWriter",
    "CoalescingWriter",
    "RESOURCE_ERRNOS",
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
)

# --- the accept() back-off ----------------------------------------------------

#: accept() errors that mean "out of descriptors or memory": retrying at once
#: cannot succeed, so the loop backs off instead of spinning.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: The first back-off after a resource error, and the cap it doubles up to.
#: The cap bounds how late a freed descriptor is noticed.
BACKOFF_FIRST = 0.005
BACKOFF_MAX = 0.1
#: A resource error later than this after the previous one starts afresh.
BACKOFF_RESET = 1.0


class AcceptBackoff:
    """How long a loop leaves accept() alone after it ran out of resources.

    ``until`` is the time.monotonic() before which accept() is not retried;
    the serve loop waits on its waker alone until then.
    """

    __slots__ = ("until", "_delay", "_last_error")

    def __init__(self) -> None:
        self.until = 0.0
        self._delay = 0.0
        self._last_error = -BACKOFF_RESET

    def failed(self, exc: OSError) -> None:
        """accept() raised exc: back off if it ran out of resources."""
        if exc.errno not in RESOURCE_ERRNOS:
            return
        now = monotonic()
        if now - self._last_error > BACKOFF_RESET:
            self._delay = BACKOFF_FIRST
        else:
            self._delay = min(self._delay * 2, BACKOFF_MAX)
        self._last_error = now
        self.until = now + self._delay

    def sleep_off(self, deadline: Optional[float]) -> bool:
        """Sleep until the back-off ends; False, after sleeping until the
        deadline, when the deadline comes first."""
        now = monotonic()
        if self.until <= now:
            return True
        if deadline is not None and deadline < self.until:
            time.sleep(max(0.0, deadline - now))   # PEP 475: signals run, EINTR retried
            return False
        time.sleep(self.until - now)
        return True


def poll_ms(seconds: Optional[float]) -> int:
    """poll() takes whole milliseconds: round up so that a loop never spins
    on a timeout rounded down to 0. None is -1 (forever)."""
    if seconds is None:
        return -1
    if seconds <= 0:
        return 0
    return int(min(max(1, int(seconds * 1000 + 0.999)), 0x7FFFFFFF))


def closed_socket_error(fd: int) -> ValueError:
    """What waiting on a closed server socket raises: socketserver's
    selector raises this ValueError for fileno() -1."""
    return ValueError("Invalid file descriptor: {}".format(fd))


# --- datagram batches -----------------------------------------------------------

#: Datagrams received per recvmmsg() at the most.
DATAGRAM_BATCH = 64
#: A slot holds any UDP datagram whole (the largest is 65535 bytes), so each
#: recv() cuts at the max_packet_size of its own call, as recvfrom() would.
DATAGRAM_MIN_SLOT = 65536
#: The slots of one receiver together hold no more than this: a larger
#: max_packet_size gets fewer slots per batch (at least one).
DATAGRAM_SLOTS_BYTES = DATAGRAM_BATCH * DATAGRAM_MIN_SLOT


def datagram_slots(max_packet_size: int) -> Tuple[int, int]:
    """(slot size, slots per batch) for a receive of max_packet_size."""
    size = max(max_packet_size, DATAGRAM_MIN_SLOT)
    return size, max(1, min(DATAGRAM_BATCH, DATAGRAM_SLOTS_BYTES // size))


# --- the coalescing writer --------------------------------------------------------

#: After a send, a coalescing buffer larger than this is released rather
#: than kept for the next writes: one large reply must not pin its size for
#: the life of the connection.
COALESCE_KEEP = 64 * 1024


# --- the interface ------------------------------------------------------------------

class Server(Protocol):
    """What a ServeLoop calls on its server (BaseServer provides it)."""

    _fs_buffered: Optional["DatagramReceiver"]
    def fileno(self) -> int: ...
    def _fs_open_lobby(self) -> Optional["Lobby"]: ...
    def _handle_request_noblock(self) -> None: ...
    def service_actions(self) -> None: ...


class Lobby(Protocol):
    """What a ServeLoop calls on a server's lobby (fastserver.lobby.Lobby)."""

    def fileno(self) -> int: ...
    def timeout_ms(self, wait_ms: int) -> int: ...
    def service(self, readable: bool) -> None: ...


@runtime_checkable
class ServeLoop(Protocol):
    """The serve loop of one server.

    Methods for the server:
    - serve_forever(server, poll_interval)
    - shutdown()
    - wait_for_request(server, timeout) -> bool
    - accept_failed(exc)

    The loop calls back into the server only through its public or
    overridable methods: fileno(), _handle_request_noblock() and
    service_actions(). The Cython loop does the work of
    _handle_request_noblock() itself for a server whose class is a
    subclass of fastserver's UDPServer (with ``type`` as its metaclass)
    that keeps every method of servers._DATAGRAM_RECEIVE_DEFAULTS (the
    request path down to _fs_dispatch()), whose instance has none of those
    names nor of servers._DATAGRAM_PROCESS_DEFAULTS set on it, and that has
    no request_observer: it receives as get_request() would, then calls
    handle_datagram() where the class also keeps every method of
    _DATAGRAM_PROCESS_DEFAULTS (process_request() down to close_request()),
    else the server's process_request(); and it hands an Exception to
    handle_error() and then _fs_end_request(), as _fs_dispatch() does.
    Which classes qualify is cached per class and looked at again when the
    class is modified; the instance's attributes are looked at again when
    they are a new dict or a different number of them (an override set on
    the instance adds a name). A server's ``_fs_buffered`` attribute, when not None,
    is a DatagramReceiver whose ``pending`` requests are served without
    waiting. serve_forever() calls the server's ``_fs_open_lobby()`` once,
    after it has taken the listening descriptor. A Lobby it returns has
    its descriptor polled with the listener, cuts the poll's timeout with
    its timeout_ms(), and has its service() run after every poll
    (fastserver.lobby).

    The loop takes server.fileno() before anything else: a socket closed
    before serve_forever() or handle_request() raises ValueError, as
    socketserver's selector does. A server_close() while the loop runs ends
    it quietly, as shutdown() would.
    """

    def serve_forever(self, server: Server, poll_interval: float = 0.5) -> None:
        """Handle requests until shutdown(); run service_actions() at least
        once per poll_interval."""

    def shutdown(self) -> None:
        """Stop serve_forever() and wait until it has returned.

        Called before serve_forever(), it makes the next serve_forever()
        return at once; as in socketserver, it waits for that to happen.
        """

    def wait_for_request(self, server: Server, timeout: Optional[float]) -> bool:
        """Wait until server.fileno() is readable; False once timeout expires.

        timeout None waits forever. A back-off still in force after an
        accept() resource error is slept off first, within the timeout.
        """
        ...

    def accept_failed(self, exc: OSError) -> None:
        """Note that get_request() raised exc; back off if it ran out of
        resources (AcceptBackoff)."""


@runtime_checkable
class DatagramReceiver(Protocol):
    """Receives the datagrams of one server socket.

    ``recv(max_packet_size)`` returns (data, client_address) and truncates
    longer datagrams, as recvfrom() does. ``pending`` counts datagrams
    already received and not yet returned: the Cython core receives in
    recvmmsg() batches; the pure core receives one datagram per call, so
    its count is always 0. ``sock`` is the server socket.

    Several threads may call recv() on one receiver: each datagram is
    returned once, with its own address. A thread that blocks in the socket
    meanwhile does not see the datagrams another thread's batch holds (the
    serve loop, which checks ``pending`` first, never blocks so).
    """

    sock: Any

    @property
    def pending(self) -> int: ...

    def recv(self, max_packet_size: int) -> Tuple[bytes, Any]: ...


@runtime_checkable
class StreamReader(Protocol):
    """rfile: reads like ``sock.makefile('rb', rbufsize)``, an
    io.BufferedReader over socket.SocketIO, results and exceptions alike.

    Shared between threads, the Cython reader returns whole lines to each
    concurrent readline(); io.BufferedReader can interleave them, since its
    lock-free fast path runs while another thread's recv is in Python code.
    """

    @property
    def closed(self) -> bool: ...

    def read(self, size: Optional[int] = -1) -> Optional[bytes]: ...
    def read1(self, size: int = -1) -> bytes: ...
    def readline(self, size: Optional[int] = -1) -> bytes: ...
    def readlines(self, hint: Optional[int] = -1) -> List[bytes]: ...
    def readinto(self, b: Any) -> Optional[int]: ...
    def readinto1(self, b: Any) -> Optional[int]: ...
    def peek(self, size: int = 0) -> bytes: ...
    def readable(self) -> bool: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def __iter__(self) -> Iterator[bytes]: ...


@runtime_checkable
class SocketWriter(Protocol):
    """wfile for wbufsize == 0: every write() is sent in full before it
    returns, and returns the number of bytes written."""

    @property
    def closed(self) -> bool: ...

    def write(self, b: Any) -> int: ...
    def writelines(self, lines: Any) -> None: ...
    def flush(self) -> None: ...
    def writable(self) -> bool: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


@runtime_checkable
class CoalescingWriter(SocketWriter, Protocol):
    """wfile for coalesce_writes: write() only appends to a buffer.

    The buffer is sent in one sendall() on flush(), when it reaches
    ``limit`` bytes, when the paired reader is about to block for more
    input, and when the handler's handle() returns. write() returns the
    number of bytes accepted. A payload of ``limit`` bytes or more is sent
    straight after the buffer, without a copy; a buffer that grew past
    COALESCE_KEEP is released once sent.
    """

    @property
    def pending(self) -> int:
        """Bytes written but not yet sent."""
        ...


@runtime_checkable
class DatagramFile(Protocol):
    """The rfile and wfile of a handler that handle_datagram() stands in
    for: ``DatagramFile(initial_bytes)`` behaves as
    ``io.BytesIO(initial_bytes)`` in everything a handler can do with it,
    results and exceptions alike.

    The pure core's is io.BytesIO itself. The Cython core's keeps the
    contents in C and does the common operations there (read, read1,
    readline, readlines, readinto, iteration, write, writelines, getvalue,
    seek, tell, close, closed, flush, readable, writable, seekable, isatty,
    context management, attributes set on it); for anything else
    (BytesIO's other methods, an argument of an unusual type or range, any
    call once it is closed) it hands its contents and position to a real
    io.BytesIO, which answers from then on. It is not an io.BytesIO instance (it is an
    io.BufferedIOBase, as BytesIO is), and its methods take their arguments
    positionally, as BytesIO's do (their errors for a wrong count of
    arguments are worded differently).
    """

    @property
    def closed(self) -> bool: ...

    def read(self, size: Optional[int] = -1, /) -> bytes: ...
    def readline(self, size: Optional[int] = -1, /) -> bytes: ...
    def readlines(self, size: Optional[int] = None, /) -> List[bytes]: ...
    def readinto(self, buffer: Any, /) -> int: ...
    def write(self, b: Any, /) -> int: ...
    def writelines(self, lines: Any, /) -> None: ...
    def getvalue(self) -> bytes: ...
    def seek(self, pos: int, whence: int = 0, /) -> int: ...
    def tell(self) -> int: ...
    def close(self) -> None: ...
    def __iter__(self) -> Iterator[bytes]: ...


class Core(Protocol):
    """A core module: ``fastserver._core`` or ``fastserver._pure``."""

    #: "cython" or "python": the value of fastserver.backend for this core.
    BACKEND: str
    RESOURCE_ERRNOS: frozenset[int]
    BACKOFF_FIRST: float
    BACKOFF_MAX: float

    def ServeLoop(self) -> ServeLoop: ...
    def DatagramReceiver(self, sock: Any) -> DatagramReceiver: ...
    def SocketWriter(self, sock: Any) -> SocketWriter: ...
    def DatagramFile(self, initial_bytes: Any = b"") -> DatagramFile: ...
    def CoalescingWriter(self, sock: Any, limit: int) -> CoalescingWriter: ...

    def accept(self, sock: Any, nodelay: bool = False,
               raw: bool = False) -> Tuple[Any, Any]:
        """Accept one connection on sock: (connection, client_address),
        as sock.accept(); with raw true, as socket.socket.accept(sock): a
        plain socket whatever sock's class does (an ssl.SSLSocket's
        accept() would run the TLS handshake).

        With nodelay true, a TCP connection (IPv4 or IPv6) gets TCP_NODELAY
        before it is returned (best effort: a connection already reset may
        refuse it, and its first recv or send reports the reset); other
        families are left as they are.
        """
        ...

    def sendto(self, sock: Any, data: Any, address: Any) -> int:
        """sock.sendto(data, address): a DatagramRequestHandler's reply.

        The Cython core first tries one non-blocking send with the GIL held
        when the address is numeric (as every address a server receives
        from is): UDP rarely lacks buffer room, and releasing the GIL for
        every reply hands it to another handler thread and then waits to get
        it back. Anything else, or a full buffer, is sock.sendto() itself.
        """
        ...

    def handle_datagram(self, handler_class: Any, request: Any,
                        client_address: Any, server: Any) -> None:
        """``handler_class(request, client_address, server)``: UDPServer's
        finish_request(), for a server of this core.

        The pure core makes exactly that call. The Cython core does too,
        unless handler_class is a subclass of fastserver's
        DatagramRequestHandler (with ``type`` as its metaclass) that keeps
        its __init__, setup(), finish(), __new__ and attribute access as
        fastserver.handlers defines them (``_DATAGRAM_DEFAULTS``, captured
        at import: a patch of the base classes is an override too), no data
        descriptor intercepts the attributes that setup() sets, and no
        connection preamble is current: then it does their work itself,
        with DatagramFiles for rfile and wfile, calls the handler's
        handle(), and sends the reply as finish() would (re-reading socket,
        wfile and client_address, since handle() may replace them). The
        handler is an instance of handler_class either way. Which classes
        qualify is cached per class and looked at again when the class is
        modified; the instance is not looked at (a finish assigned to it by
        handle() is not called: see test_core_discrepancies).
        """
        ...

    def open_stream(self, sock: Any, rbufsize: int, wbufsize: int,
                    coalesce_limit: int) -> Tuple[StreamReader, Any]:
        """Return (rfile, wfile) for a connected stream socket.

        rfile reads like ``sock.makefile('rb', rbufsize)``. wfile is a
        SocketWriter when wbufsize is 0, else ``sock.makefile('wb', wbufsize)``;
        a coalesce_limit above 0 makes it a CoalescingWriter of that limit whose
        buffer rfile sends before each receive.

        On an ssl.SSLSocket the same holds, with the SSLSocket's results and
        errors: a ragged EOF is an EOF when its suppress_ragged_eofs is true;
        after unwrap() the stream goes on in the clear; a method that
        SocketIO.readinto() or sendall() would call, overridden on the
        socket's class or on the socket, is called. (When none is, both
        cores read and write such a socket through its _ssl object, without
        SocketIO's and SSLSocket's Python frames.)
        """
        ...
