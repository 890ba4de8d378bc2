"""Keep-alive without the delayed-ACK stall: fastserver sets TCP_NODELAY on
every TCP connection it accepts, unless the handler asks for Nagle's
algorithm with an explicit ``disable_nagle_algorithm = False``.

A reply written in two pieces (http.server writes the headers, then the
body) otherwise waits for the client's delayed ACK of the first piece,
about 40 ms per reply on Linux. The bounds below are many times what the
requests take without the stall and several times below what they take
with it: they assert that the stall is gone, not a speed.
"""

from __future__ import annotations

import functools
import http.client
import http.server
import socket
import threading
import time
from typing import Any, Dict, List

import pytest

from conftest import HOST, Impl, connect, recv_until, serving, server_address

BODY = b"x" * 64
REQUESTS = 100


class PieceByPiece(http.server.BaseHTTPRequestHandler):
    """An HTTP/1.1 keep-alive handler written against the real socketserver,
    as users write them: headers, then the body, in separate writes."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def date_time_string(self, timestamp: Any = None) -> str:
        return "Thu, 01 Jan 2026 00:00:00 GMT"  # so that replies compare exactly

    def log_message(self, format: str, *args: Any) -> None:
        pass


def nodelay_of(sock: socket.socket) -> Any:
    if sock.family == socket.AF_UNIX:
        return None
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def reporting_handler(ss: Any, **attrs: Any) -> Any:
    """A stream handler that answers one line with TCP_NODELAY's value on
    its connection (None on a Unix socket)."""
    def handle(self: Any) -> None:
        self.rfile.readline()
        self.wfile.write(b"%r\n" % (nodelay_of(self.request),))
    return type("Report", (ss.StreamRequestHandler,), dict(attrs, handle=handle))


def asked_nodelay(server: Any) -> bytes:
    with serving(server):
        with connect(server) as client:
            client.sendall(b"?\n")
            return recv_until(client)


def timed_keepalive_requests(server: Any) -> float:
    with serving(server):
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
        try:
            start = time.monotonic()
            for i in range(REQUESTS):
                # The last request ends the connection from the server's
                # side: a forked handler's child also holds this client's
                # socket, so the client closing it would not end the handler.
                last = {"Connection": "close"} if i == REQUESTS - 1 else {}
                conn.request("GET", "/", headers=last)
                response = conn.getresponse()
                assert response.status == 200
                assert response.read() == BODY
            return time.monotonic() - start
        finally:
            conn.close()


SERVER_CLASSES = ["TCPServer", "ThreadingTCPServer", "ThreadPoolTCPServer",
                  "ForkingTCPServer"]


def make(ss: Any, class_name: str, handler: Any, family: int = socket.AF_INET) -> Any:
    base = getattr(ss, class_name)
    attrs: Dict[str, Any] = {"address_family": family}
    if "Threading" in class_name:
        attrs["daemon_threads"] = True
    server_class = type("Server", (base,), attrs)
    host = "::1" if family == socket.AF_INET6 else HOST
    return server_class((host, 0), handler)


@pytest.mark.parametrize("class_name", SERVER_CLASSES)
def test_http_keepalive_has_no_stall(impl: Impl, class_name: str) -> None:
    """100 requests on one persistent connection to http.server's handler:
    the stdlib takes about 4.5 s (45 ms each), fastserver a few ms."""
    elapsed = timed_keepalive_requests(make(impl.ss, class_name, PieceByPiece))
    assert elapsed < 1.0, "%d keep-alive requests took %.2f s" % (REQUESTS, elapsed)


def test_http_keepalive_has_no_stall_over_ipv6(impl: Impl) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    server = make(impl.ss, "ThreadingTCPServer", PieceByPiece, socket.AF_INET6)
    assert timed_keepalive_requests(server) < 1.0


def test_a_streaming_handler_is_not_held_back(impl: Impl) -> None:
    """A streaming handler answers each request with a head and a first
    chunk, then works (here: waits until the client has that chunk), then
    writes the rest. The first chunk must leave while the handler works;
    with Nagle it waits for the delayed ACK of the head, every round."""
    rounds = [threading.Event() for _ in range(REQUESTS)]
    failures: List[str] = []

    class Stream(impl.ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            for i, chunk_arrived in enumerate(rounds):
                if not self.rfile.readline():
                    return
                self.wfile.write(b"head %03d\n" % i)
                self.wfile.write(b"chunk %03d\n" % i)
                if not chunk_arrived.wait(10):
                    failures.append("round %d: the chunk did not arrive" % i)
                    return
                self.wfile.write(b"tail %03d\n" % i)

    server = make(impl.ss, "ThreadingTCPServer", Stream)
    with serving(server):
        with connect(server) as client:
            reader = client.makefile("rb")
            start = time.monotonic()
            for i, chunk_arrived in enumerate(rounds):
                client.sendall(b"next\n")
                assert reader.readline() == b"head %03d\n" % i
                assert reader.readline() == b"chunk %03d\n" % i
                chunk_arrived.set()
                assert reader.readline() == b"tail %03d\n" % i
            elapsed = time.monotonic() - start
            reader.close()
    assert not failures
    assert elapsed < 1.5, "%d rounds took %.2f s" % (REQUESTS, elapsed)


@pytest.mark.parametrize("class_name", SERVER_CLASSES)
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6],
                         ids=["ipv4", "ipv6"])
def test_every_tcp_server_sets_nodelay(impl: Impl, class_name: str, family: int) -> None:
    server = make(impl.ss, class_name, reporting_handler(impl.ss), family)
    assert asked_nodelay(server) == b"1\n"


@pytest.mark.parametrize("value, expected", [(False, b"0\n"), (True, b"1\n"),
                                             (None, b"1\n")])
def test_disable_nagle_algorithm_is_honoured(impl: Impl, value: Any,
                                             expected: bytes) -> None:
    """An explicit False still means Nagle (read back with getsockopt);
    True, and fastserver's default None, mean TCP_NODELAY."""
    handler = reporting_handler(impl.ss, disable_nagle_algorithm=value)
    assert asked_nodelay(make(impl.ss, "ThreadingTCPServer", handler)) == expected


def test_an_explicit_false_is_seen_through_functools_partial(impl: Impl) -> None:
    """http.server passes its handler as functools.partial(Handler,
    directory=...): the handler class's explicit choice still counts."""
    handler = reporting_handler(impl.ss, disable_nagle_algorithm=False)
    server = make(impl.ss, "ThreadingTCPServer", functools.partial(handler))
    assert asked_nodelay(server) == b"0\n"


def test_unix_stream_sockets_are_left_alone(impl: Impl) -> None:
    """AF_UNIX has no Nagle: nothing is set and nothing fails."""
    server = impl.ss.ThreadingUnixStreamServer(server_address(socket.AF_UNIX),
                                               reporting_handler(impl.ss))
    server.daemon_threads = True
    assert asked_nodelay(server) == b"None\n"


def raw_replies(server: Any, count: int) -> bytes:
    """The bytes of count keep-alive replies, exactly as the client gets them."""
    with serving(server):
        with connect(server) as client:
            data = b""
            for _ in range(count):
                client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                reply = recv_until(client, BODY)
                data += reply
            return data


def test_the_client_receives_the_same_bytes(ref_impl: Impl) -> None:
    """Only the timing changes: the reply bytes are the stdlib's."""
    server = make(ref_impl.ss, "ThreadingTCPServer", PieceByPiece)
    data = raw_replies(server, 3)
    head = (b"HTTP/1.1 200 OK\r\nServer: %s\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT"
            b"\r\nContent-Type: text/plain\r\nContent-Length: 64\r\n\r\n"
            % (http.server.BaseHTTPRequestHandler.server_version + " "
               + http.server.BaseHTTPRequestHandler.sys_version).encode())
    assert data == (head + BODY) * 3
