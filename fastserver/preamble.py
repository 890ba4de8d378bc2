"""The connection preamble: per-connection work between accept and the handler.

Some work must finish on a new connection before its handler's setup()
runs: today reading the PROXY protocol header that names the real client,
next the TLS handshake. That work is the connection's *preamble*: the steps
the server asks for, run in order.

Where it runs. BaseServer.finish_request() runs the preamble, then
instantiates the handler. Every server class passes through
finish_request(): BaseServer.process_request() (synchronously),
ThreadingMixIn and ThreadPoolMixIn's process_request_thread() (in the
handler's thread), ForkingMixIn (in the child), prefork workers (in their
pool threads). So the preamble runs in the request's own context, never on
the accept loop, and an override of process_request() or
process_request_thread() that still calls finish_request() keeps it. An
override of finish_request() that does not call BaseServer's skips it.

Steps. ``server.preamble_steps()`` returns the steps for one connection, in
order; the default is none, and a mix-in extends it cooperatively
(``super().preamble_steps()``). ProxyProtocolMixIn puts its step first,
because the header is the first bytes on the wire; a TLS step goes after
it. A step is a :class:`PreambleStep`: ``step(state) -> state``. It may
replace ``state.request`` (a wrapped socket) and ``state.client_address``,
add ``state.attributes`` (set on the handler before its setup() runs) and
``state.handler_hooks`` (called with the handler right after that).

One deadline. The preamble's budget is the sum of its steps' ``timeout``
(no deadline when any is None), counted from the moment the preamble starts
in the request's context. ``state.deadline`` is that moment on the
time.monotonic() clock, and every wait in every step waits at most what is
left of it (:func:`wait_readable` does), however slowly the bytes trickle
in. The preamble's start, not the accept, begins the count: a connection
that waited in a full pool's queue is not punished for the server's delay.

One failure rule. A step that raises :class:`PreambleFailed` or OSError
(socket.timeout and ssl.SSLError included) ends the preamble: the handler is
not made, one line is logged on the step's ``logger`` at its ``log_level``
("dropped connection from ADDRESS: reason"), handle_error() is not called,
and the connection is closed by the caller of finish_request() through
shutdown_request(), as after any request; the server serves on. Any other
exception is a bug and reaches handle_error() as a handler's would. When a
step replaced the request socket, the stage closes the replacement itself
(after the handler, or at the failure); a step that takes over the
descriptor (as ``ssl.SSLContext.wrap_socket`` does) leaves the caller's
shutdown_request() nothing to do.

The handler's view. finish_request() calls the handler class with the
final request and client_address, so every handler (a stdlib
socketserver handler or a functools.partial too) sees the client the
preamble found. The attributes take a second channel: while the handler
class is called, the connection's state is the current preamble of that
thread (a context variable), and BaseRequestHandler.__init__ asks for it
(:func:`apply_to`) and sets the attributes, then runs the hooks, before
setup(). The handler is an instance of the user's class: nothing is
subclassed or patched. A handler class that does not derive from
fastserver's BaseRequestHandler can read the state with :func:`current`
during its construction (setup() and handle() included).

Waiting for the first bytes without a thread. A step whose first act is
to wait for the client (the TLS handshake waits for the ClientHello)
declares ``waits_for_first_bytes = True``. Under serve_forever(), a
connection it wants (``wants_lobby()``) then waits in the server's lobby
after verify_request(), holding no thread, until ``first_bytes_ready()``;
only then does it go to process_request() and run its preamble. Its
deadline then counts from the accept (:func:`note_accepted`), so that the
time in the lobby is part of the one budget. See fastserver.lobby. Under
handle_request() there is no lobby: the preamble waits in line, within its
deadline.
"""

from __future__ import annotations

import logging
import select
from contextvars import ContextVar
from time import monotonic
from typing import Any, Callable, Dict, List, Optional, Sequence
from weakref import WeakKeyDictionary

__all__ = [
    "ConnectionState", "PreambleStep", "PreambleFailed", "PreambleTimeout",
    "apply_to", "current", "run", "wait_for", "wait_readable", "remaining_ms",
]

log = logging.getLogger("fastserver.preamble")


class PreambleFailed(Exception):
    """Raised by a step to drop the connection; the message is logged."""


class PreambleTimeout(PreambleFailed):
    """The preamble's deadline passed."""


class ConnectionState:
    """One connection on its way to its handler.

    - server: the server
    - request, client_address: what the handler will be given; a step may
      replace them
    - peer_address: the address accept() returned; never replaced
    - budget: the preamble's seconds (None: no deadline)
    - deadline: time.monotonic() value by which the preamble must be done,
      or None
    - attributes: name -> value, set on the handler before its setup()
    - handler_hooks: callables taking the handler, called after that
    """

    __slots__ = ("server", "request", "client_address", "peer_address",
                 "budget", "deadline", "attributes", "handler_hooks")

    def __init__(self, server: Any, request: Any, client_address: Any,
                 budget: Optional[float], started: Optional[float] = None) -> None:
        self.server = server
        self.request = request
        self.client_address = client_address
        self.peer_address = client_address
        self.budget = budget
        if started is None:
            started = monotonic()
        self.deadline = None if budget is None else started + budget
        self.attributes: Dict[str, Any] = {}
        self.handler_hooks: List[Callable[[Any], None]] = []

    def remaining(self) -> Optional[float]:
        """Seconds left before the deadline (None: no deadline); raises
        PreambleTimeout once it has passed."""
        return _remaining(self.deadline)


class PreambleStep:
    """One piece of the preamble: ``step(state) -> state``.

    Class variables that may be overridden:

    - logger: where the step's failures are logged
    - log_level: at what level (WARNING by default)
    - timeout: the step's share of the preamble's deadline, in seconds;
      None for no deadline
    """

    logger: logging.Logger = log
    log_level: int = logging.WARNING
    timeout: Optional[float] = None
    #: True for a step whose first act is to wait for the client's first
    #: bytes: under serve_forever() its connections may wait for them in
    #: the server's lobby (fastserver.lobby), holding no thread.
    waits_for_first_bytes: bool = False

    def __call__(self, state: ConnectionState) -> ConnectionState:
        raise NotImplementedError

    def wants_lobby(self, request: Any) -> bool:
        """Whether this connection should wait in the lobby."""
        return self.waits_for_first_bytes

    def first_bytes_ready(self, sock: Any) -> bool:
        """Called when sock, waiting in the lobby, is readable: whether it
        may leave for its preamble (True by default: any byte will do)."""
        return True

    def leave_lobby(self, sock: Any) -> None:
        """Called as sock leaves the lobby for its preamble."""


_current: ContextVar[Optional[ConnectionState]] = ContextVar(
    "fastserver_preamble", default=None)


#: current() -> Optional[ConnectionState]: the state of the connection
#: whose handler is being constructed in this thread, or None. The context
#: variable's own get (a C call): every handler's constructor asks.
current: Callable[[], Optional[ConnectionState]] = _current.get


def apply_to(handler: Any, request: Any, server: Any) -> None:
    """Give handler its connection's preamble result: the attributes, then
    the hooks. Called by BaseRequestHandler.__init__ before setup()."""
    state = _current.get()
    if state is None or state.request is not request or state.server is not server:
        return
    for name, value in state.attributes.items():
        setattr(handler, name, value)
    for hook in state.handler_hooks:
        hook(handler)


def run(server: Any, request: Any, client_address: Any,
        steps: Sequence[PreambleStep]) -> None:
    """Run the connection's preamble (steps, from server.preamble_steps()),
    then its handler: the body of BaseServer.finish_request()."""
    state = ConnectionState(server, request, client_address, budget(steps),
                            _accepted.pop(request, None))
    try:
        for step in steps:
            try:
                state = step(state)
            except (PreambleFailed, OSError) as exc:
                step.logger.log(step.log_level, "dropped connection from %s: %s",
                                describe(state.client_address), exc)
                return
        token = _current.set(state)
        try:
            server.RequestHandlerClass(state.request, state.client_address, server)
        finally:
            _current.reset(token)
    finally:
        if state.request is not request:
            try:
                state.request.close()
            except OSError:
                pass


# request -> when it was accepted, for a connection that waited in the
# lobby: its preamble's deadline counts from then. Weak: a connection
# dropped before its preamble leaves no entry behind.
_accepted: "WeakKeyDictionary[Any, float]" = WeakKeyDictionary()


def note_accepted(request: Any, when: float) -> None:
    """Count request's preamble deadline from when (time.monotonic())."""
    _accepted[request] = when


def budget(steps: Sequence[PreambleStep]) -> Optional[float]:
    """The preamble's seconds: the sum of its steps' (None: no deadline)."""
    total = 0.0
    for step in steps:
        if step.timeout is None:
            return None
        total += step.timeout
    return total


def _remaining(deadline: Optional[float]) -> Optional[float]:
    if deadline is None:
        return None
    left = deadline - monotonic()
    if left <= 0:
        raise PreambleTimeout("deadline passed")
    return left


def remaining_ms(deadline: Optional[float]) -> int:
    """What is left of deadline as poll()'s timeout (-1: none); raises
    PreambleTimeout once it has passed."""
    left = _remaining(deadline)
    # poll() takes whole milliseconds: round up, never spin.
    return -1 if left is None else int(left * 1000) + 1


def wait_for(sock: Any, events: int, deadline: Optional[float]) -> None:
    """Wait until sock has one of the poll() events (or hung up), at most
    until deadline; raises PreambleTimeout when it passes first."""
    poller = select.poll()
    poller.register(sock, events)
    while not poller.poll(remaining_ms(deadline)):
        pass


def wait_readable(sock: Any, deadline: Optional[float]) -> None:
    """wait_for(sock, POLLIN, deadline)."""
    wait_for(sock, select.POLLIN, deadline)


def describe(address: Any) -> str:
    """An address as a log line shows it: host:port, [v6host]:port."""
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return ("[%s]:%s" if ":" in host else "%s:%s") % (host, address[1])
    return repr(address)
