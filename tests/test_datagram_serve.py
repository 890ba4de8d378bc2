"""A UDPServer's request path under serve_forever().

On the cython backend the serve loop itself does a plain UDPServer's
_handle_request_noblock(), get_request(), verify_request(),
process_request(), finish_request(), shutdown_request() and
close_request() (fastserver._contract.ServeLoop). That must not be
visible:

- each of those methods, overridden on the class, set on the instance
  before or while the server runs, or patched into the class while it
  runs, runs for every datagram from then on, as on socketserver, on a
  UDPServer and on a ThreadingUDPServer (whose own process_request() the
  loop calls after receiving in C);
- a handler's exception reaches handle_error() with the request and
  address socketserver gives it, and the server serves on; an exception
  that is not an Exception ends serve_forever() with it;
- max_packet_size, set on the instance between datagrams, cuts the next
  one;
- a request_observer set while the server runs sees the next request.

Each test runs on both backends and, where socketserver defines the
behaviour, on socketserver itself with the same assertions.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable, List, Optional, Tuple

import pytest

from conftest import HOST, Impl, close_dgram_client, dgram_client, serving

#: The methods the cython serve loop stands in for.
REQUEST_PATH = ["_handle_request_noblock", "get_request", "verify_request",
                "process_request", "finish_request", "shutdown_request",
                "close_request"]

#: How an override gets there: "class" (a subclass), "instance" (set on
#: the server before serve_forever()), "instance-later" (set while it
#: runs), "class-later" (patched into the server's class while it runs),
#: "dict-later" (a new __dict__ with the override, while it runs).
PLACES = ["class", "instance", "instance-later", "class-later", "dict-later"]


class Calls:
    """What was called, and a wait for a condition on it."""

    def __init__(self) -> None:
        self.entries: List[Any] = []
        self._changed = threading.Condition()

    def add(self, entry: Any) -> None:
        with self._changed:
            self.entries.append(entry)
            self._changed.notify_all()

    def wait_until(self, done: Callable[[List[Any]], bool]) -> List[Any]:
        with self._changed:
            assert self._changed.wait_for(lambda: done(self.entries), 10), \
                self.entries
            return list(self.entries)

    def wait_for(self, count: int) -> List[Any]:
        return self.wait_until(lambda entries: len(entries) >= count)


def echo_handler(ss: Any) -> type:
    class Echo(ss.DatagramRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            self.wfile.write(self.rfile.read())
    return Echo


def round_trip(client: socket.socket, server: Any, payload: bytes) -> bytes:
    client.sendto(payload, server.server_address)
    return client.recv(65536)


def recording(name: str, calls: Calls, original: Callable[..., Any]) -> Callable[..., Any]:
    """A function that does what original does (original takes the server
    as its first argument) and records name with the datagram it was
    called for (None for _handle_request_noblock(), which receives it)."""
    def method(server: Any, *args: Any) -> Any:
        result = original(server, *args)
        if name == "get_request":
            calls.add((name, result[0][0]))
        else:
            calls.add((name, args[0][0] if args else None))
        return result
    return method


def install(place: str, name: str, calls: Calls, server: Any) -> None:
    """Set a recording override of method name where place says."""
    cls = type(server)
    original = getattr(cls, name)
    method = recording(name, calls, original)
    if place.startswith("instance"):
        setattr(server, name, method.__get__(server))
    elif place.startswith("class"):
        setattr(cls, name, method)
    else:
        server.__dict__ = dict(server.__dict__, **{name: method.__get__(server)})


@pytest.mark.parametrize("base", ["UDPServer", "ThreadingUDPServer"])
@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name", REQUEST_PATH)
def test_each_request_method_runs(ref_impl: Impl, name: str, place: str,
                                  base: str) -> None:
    ss = ref_impl.ss
    calls = Calls()
    # A subclass of its own in every case: "class-later" patches it.
    server_class = type("Server", (getattr(ss, base),), {})
    server = server_class((HOST, 0), echo_handler(ss))
    if place in ("class", "instance"):
        install(place, name, calls, server)
    client = dgram_client(server)
    try:
        with serving(server):
            assert round_trip(client, server, b"one") == b"one"
            if place.endswith("later"):
                install(place, name, calls, server)
            assert round_trip(client, server, b"two") == b"two"
            assert round_trip(client, server, b"three") == b"three"
            # shutdown_request() and close_request() run after the reply
            # (in a handler thread, in any order, on a ThreadingUDPServer):
            # wait for each datagram's call.
            last = None if name == "_handle_request_noblock" else b"three"
            expected = 3 if place in ("class", "instance") else 2
            needed = [(name, payload) for payload in [b"one", b"two", b"three"][-expected:]]
            entries = calls.wait_until(
                lambda entries: len(entries) >= expected if last is None
                else all(call in entries for call in needed))
    finally:
        close_dgram_client(client)
    assert {entry[0] for entry in entries} == {name}
    payloads = [entry[1] for entry in entries]
    if base == "ThreadingUDPServer":
        # Handler threads may end one request after the next has begun.
        payloads.sort(key=lambda payload: [None, b"one", b"two", b"three"].index(payload))
    if last is None:
        assert payloads == [None] * expected
    elif place in ("class", "instance"):
        assert payloads == [b"one", b"two", b"three"]
    else:
        # Installed after the first reply, while the server may still be
        # ending the first request (shutdown_request, close_request).
        assert payloads[-2:] == [b"two", b"three"]
        assert payloads[:-2] in ([], [b"one"])


def test_verify_request_set_while_serving_drops_datagrams(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    server = ss.UDPServer((HOST, 0), echo_handler(ss))
    refused = Calls()
    client = dgram_client(server)
    try:
        with serving(server):
            assert round_trip(client, server, b"one") == b"one"

            def verify(request: Tuple[bytes, Any], client_address: Any) -> bool:
                refused.add(request[0])
                return request[0] != b"drop"

            server.verify_request = verify
            client.sendto(b"drop", server.server_address)
            assert refused.wait_for(1) == [b"drop"]
            assert round_trip(client, server, b"kept") == b"kept"
            assert refused.wait_for(2) == [b"drop", b"kept"]
    finally:
        close_dgram_client(client)


def test_handler_errors_reach_handle_error(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    errors: List[Any] = []
    reported = Calls()

    class Handler(ss.DatagramRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            data = self.rfile.read()
            if data == b"fail":
                raise ValueError("handler failed")
            self.wfile.write(data)

    class Server(ss.UDPServer):  # type: ignore[name-defined,misc]
        def handle_error(self, request: Any, client_address: Any) -> None:
            import sys
            errors.append((request, client_address, sys.exc_info()[1]))
            reported.add(client_address)

    server = Server((HOST, 0), Handler)
    client = dgram_client(server)
    try:
        with serving(server):
            # DatagramRequestHandler.finish() still sends what was written:
            # nothing, so an empty datagram.
            assert round_trip(client, server, b"fail") == b""
            reported.wait_for(1)
            assert round_trip(client, server, b"after") == b"after"
        (request, address, exc), = errors
        assert request == (b"fail", server.socket)
        assert address == client.getsockname()
        assert isinstance(exc, ValueError) and str(exc) == "handler failed"
    finally:
        close_dgram_client(client)


class Stop(BaseException):
    """Not an Exception: handle_error() does not get it."""


def test_a_base_exception_ends_serve_forever(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    ended: List[Optional[BaseException]] = []
    shut_down = Calls()

    class Handler(ss.DatagramRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            raise Stop("stop")

    class Server(ss.UDPServer):  # type: ignore[name-defined,misc]
        def handle_error(self, request: Any, client_address: Any) -> None:
            ended.append(None)   # must not be called

    server = Server((HOST, 0), Handler)

    def run() -> None:
        try:
            server.serve_forever(poll_interval=0.05)
        except Stop as exc:
            ended.append(exc)
        shut_down.add("returned")

    thread = threading.Thread(target=run, daemon=True)
    client = dgram_client(server)
    try:
        thread.start()
        client.sendto(b"x", server.server_address)
        shut_down.wait_for(1)
        thread.join(10)
        assert len(ended) == 1 and isinstance(ended[0], Stop)
        # The loop is free again: shutdown() does not wait for it.
        server.shutdown()
    finally:
        close_dgram_client(client)
        server.server_close()


def test_max_packet_size_set_between_datagrams(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    server = ss.UDPServer((HOST, 0), echo_handler(ss))
    client = dgram_client(server)
    try:
        with serving(server):
            assert round_trip(client, server, b"abcdefgh") == b"abcdefgh"
            server.max_packet_size = 3
            assert round_trip(client, server, b"abcdefgh") == b"abc"
            del server.max_packet_size
            assert round_trip(client, server, b"abcdefgh") == b"abcdefgh"
    finally:
        close_dgram_client(client)


def test_a_request_observer_set_while_serving(impl: Impl) -> None:
    ss = impl.ss
    seen = Calls()
    server = ss.UDPServer((HOST, 0), echo_handler(ss))

    class Observer:
        def request_started(self, request: Any, client_address: Any) -> None:
            seen.add("started %s" % request[0].decode())

        def request_finished(self, request: Any) -> None:
            seen.add("finished %s" % request[0].decode())

    client = dgram_client(server)
    try:
        with serving(server):
            assert round_trip(client, server, b"one") == b"one"
            server.request_observer = Observer()
            assert round_trip(client, server, b"two") == b"two"
            # The first request may still be ending as the observer is set;
            # request_finished may come twice (README).
            names = seen.wait_until(lambda names: "finished two" in names)
            names = [name for name in names if name != "finished one"]
            assert names[0] == "started two"
            assert set(names[1:]) == {"finished two"}
    finally:
        close_dgram_client(client)
