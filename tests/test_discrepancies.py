"""Every known divergence of fastserver from socketserver, on purpose.

Each test's docstring says what differs and why; each asserts both sides,
so a change on either side shows up here. Add a test whenever a new
divergence is found, whether or not it gets fixed.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import sys
import threading
import time
from typing import Any, List

import pytest

from conftest import HOST, Impl, serving
from test_tls import pki  # noqa: F401  (the fixture)


def test_shutdown_wakes_the_loop_at_once(impl: Impl) -> None:
    """socketserver's shutdown() waits until its loop next polls the flag,
    up to poll_interval (340 ms median at the default 0.5 s); fastserver
    wakes the loop through a self-pipe. Reported upstream as the XXX in
    socketserver.serve_forever."""
    def latency(ss: Any) -> float:
        server = ss.TCPServer((HOST, 0), ss.BaseRequestHandler)
        with serving(server, poll_interval=1.0):
            time.sleep(0.2)
            start = time.monotonic()
            server.shutdown()
            return time.monotonic() - start

    assert latency(impl.ss) < 0.25
    assert latency(socketserver) > 0.25


def test_verify_request_exception_closes_the_request(impl: Impl) -> None:
    """When verify_request() raises, socketserver lets the exception out of
    serve_forever()/handle_request() and leaks the accepted socket until
    garbage collection; fastserver calls shutdown_request() first."""
    def shut(ss: Any) -> List[Any]:
        closed: List[Any] = []

        class Server(ss.TCPServer):  # type: ignore[name-defined,misc]
            def verify_request(self, request: Any, client_address: Any) -> bool:
                raise RuntimeError("verify failed")

            def shutdown_request(self, request: Any) -> None:
                closed.append(request)
                super().shutdown_request(request)

        with Server((HOST, 0), ss.BaseRequestHandler) as server:
            with socket.create_connection(server.server_address):
                with pytest.raises(RuntimeError):
                    server.handle_request()
        return closed

    assert len(shut(impl.ss)) == 1
    assert shut(socketserver) == []


def test_handler_threads_are_reused(impl: Impl) -> None:
    """socketserver starts a thread per request; fastserver's ThreadingMixIn
    hands requests to idle handler threads (thread_idle_timeout seconds).
    Visible consequence: threading.local() values set by one request are
    still there in a later request served by the same thread. Set
    thread_idle_timeout = 0 for a fresh thread per request."""
    def leaked(ss: Any, idle_timeout: float) -> List[Any]:
        local = threading.local()
        seen: List[Any] = []
        done = threading.Event()

        class Handler(ss.BaseRequestHandler):  # type: ignore[name-defined,misc]
            def handle(self) -> None:
                seen.append(getattr(local, "value", None))
                local.value = "from an earlier request"

        class Server(ss.ThreadingTCPServer):  # type: ignore[name-defined,misc]
            thread_idle_timeout = idle_timeout

            def shutdown_request(self, request: Any) -> None:
                super().shutdown_request(request)
                done.set()

        with Server((HOST, 0), Handler) as server:
            for _ in range(2):
                done.clear()
                with socket.create_connection(server.server_address):
                    server.handle_request()
                assert done.wait(5)
                if ss is not socketserver:
                    # The thread goes idle (or, without idle time, exits).
                    assert server._threads.wait_idle(5)
        return seen

    assert leaked(impl.ss, 2.0) == [None, "from an earlier request"]
    assert leaked(impl.ss, 0) == [None, None]
    assert leaked(socketserver, 2.0) == [None, None]


def test_threads_attribute_is_a_worker_set(impl: Impl) -> None:
    """socketserver keeps non-daemon request threads in a list subclass,
    ``_threads``; fastserver keeps its handler threads (busy and idle) in
    an object that supports len() but is not a list."""
    with impl.ss.ThreadingTCPServer((HOST, 0), impl.ss.BaseRequestHandler) as server:
        with socket.create_connection(server.server_address):
            server.handle_request()
        assert len(server._threads) == 1
        assert not isinstance(server._threads, list)


def test_newer_api_on_older_interpreters(impl: Impl) -> None:
    """fastserver offers CPython 3.13's socketserver API on every supported
    interpreter: allow_reuse_port (3.11+) and the ForkingUnix*Server
    classes (3.12+) exist everywhere."""
    assert impl.ss.TCPServer.allow_reuse_port is False
    assert issubclass(impl.ss.ForkingUnixStreamServer, impl.ss.UnixStreamServer)
    assert issubclass(impl.ss.ForkingUnixDatagramServer,
                      impl.ss.UnixDatagramServer)


def test_datagram_server_close_lets_replies_out(impl: Impl) -> None:
    """socketserver's threading (and forking) datagram servers close the
    server socket in server_close() before joining the handler threads that
    reply through it, so a reply still in flight fails (EBADF) and is lost.
    fastserver's ThreadingMixIn and ThreadPoolMixIn wait for those handlers
    first on datagram servers; stream servers keep socketserver's order."""
    def reply_after_close(ss: Any, cls_name: str) -> Any:
        started = threading.Event()
        errors: List[str] = []

        class Slow(ss.DatagramRequestHandler):  # type: ignore[name-defined,misc]
            def handle(self) -> None:
                started.set()
                time.sleep(0.2)
                self.wfile.write(b"late reply")

        class Server(getattr(ss, cls_name)):  # type: ignore[misc]
            def handle_error(self, request: Any, client_address: Any) -> None:
                errors.append(type(sys.exc_info()[1]).__name__)

        server = Server((HOST, 0), Slow)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind((HOST, 0))
            client.settimeout(2)
            client.sendto(b"x", server.server_address)
            server.handle_request()
            assert started.wait(5)
            server.server_close()
            try:
                return client.recv(100)
            except socket.timeout:
                return errors

    assert reply_after_close(impl.ss, "ThreadingUDPServer") == b"late reply"
    assert reply_after_close(impl.ss, "ThreadPoolUDPServer") == b"late reply"
    assert reply_after_close(socketserver, "ThreadingUDPServer") == ["OSError"]


def test_tcp_nodelay_is_on_by_default(impl: Impl) -> None:
    """socketserver leaves Nagle's algorithm on unless the handler sets
    disable_nagle_algorithm = True, so a keep-alive client of http.server
    waits ~40 ms per reply for its own delayed ACK (22 requests/s on one
    connection). fastserver's default (None) sets TCP_NODELAY on every TCP
    connection it accepts; an explicit False keeps Nagle on both.
    tests/test_keepalive.py times both sides."""
    from test_keepalive import asked_nodelay, make, reporting_handler

    def nodelay(ss: Any, **attrs: Any) -> bytes:
        return asked_nodelay(make(ss, "ThreadingTCPServer",
                                  reporting_handler(ss, **attrs)))

    assert nodelay(impl.ss) == b"1\n"
    assert nodelay(socketserver) == b"0\n"
    assert nodelay(impl.ss, disable_nagle_algorithm=False) == b"0\n"
    assert nodelay(socketserver, disable_nagle_algorithm=False) == b"0\n"


def test_server_close_under_the_loop_ends_it(impl: Impl) -> None:
    """server_close() while serve_forever() runs in another thread: the
    fastserver loop sees the closed descriptor (POLLNVAL) at its next poll
    and returns quietly, as if shutdown() had been called. socketserver's
    loop finds the descriptor "ready" forever, fails accept() with EBADF
    and spins at full CPU until shutdown()."""
    def still_serving(ss: Any) -> bool:
        polled = threading.Event()

        class Server(ss.TCPServer):  # type: ignore[name-defined,misc]
            def service_actions(self) -> None:
                polled.set()

        server = Server((HOST, 0), ss.BaseRequestHandler)
        thread = threading.Thread(target=server.serve_forever,
                                  kwargs={"poll_interval": 0.02})
        thread.start()
        try:
            assert polled.wait(10)
            server.server_close()
            thread.join(2)
            return thread.is_alive()
        finally:
            server.shutdown()
            thread.join(10)

    assert still_serving(impl.ss) is False
    assert still_serving(socketserver) is True


# --- TLS (fastserver.tls) -----------------------------------------------------

def _wrapped_threading_server(ss: Any, cert: Any, seen: List[Any]) -> Any:
    """socketserver's HTTPS idiom: a ThreadingTCPServer whose listening
    socket is wrapped; verify_request() records what TLS version its
    request has negotiated so far."""
    from test_tls import echo_handler
    from tlscerts import server_context

    class Server(ss.ThreadingTCPServer):
        daemon_threads = True

        def verify_request(self, request: Any, client_address: Any) -> bool:
            seen.append(request.version())
            return True

    server = Server((HOST, 0), echo_handler(ss))
    server.socket = server_context(cert).wrap_socket(server.socket, server_side=True)
    return server


def test_a_silent_client_no_longer_stalls_a_wrapped_listener(impl: Impl, pki: Any) -> None:
    """With the listening socket wrapped, socketserver's accept() runs the
    whole handshake on the serve loop, with no deadline: one client that
    connects and sends nothing keeps the next real client from being
    served at all. fastserver accepts the raw connection and handshakes
    off the loop."""
    from test_tls import tls_request

    ca, cert, _ = pki

    def served_beside_a_silent_client(ss: Any) -> bool:
        server = _wrapped_threading_server(ss, cert, [])
        with serving(server):
            silent = socket.create_connection(server.server_address)
            try:
                return tls_request(server, ca, timeout=1.0).endswith(b" hello\n")
            except (socket.timeout, ssl.SSLError, ConnectionError):
                return False
            finally:
                silent.close()   # socketserver's loop then moves on

    assert served_beside_a_silent_client(impl.ss)
    assert not served_beside_a_silent_client(socketserver)


def test_verify_request_runs_before_the_handshake(impl: Impl, pki: Any) -> None:
    """socketserver's accept() has finished the handshake before
    verify_request(); fastserver's verify_request() gets the same
    ssl.SSLSocket with its handshake still to come (version() None), since
    the handshake is the preamble's, in the request's own thread. The
    handler sees the finished handshake on both."""
    from test_tls import tls_request

    ca, cert, _ = pki

    def versions_seen(ss: Any) -> List[Any]:
        seen: List[Any] = []
        server = _wrapped_threading_server(ss, cert, seen)
        with serving(server):
            assert tls_request(server, ca) == b"SSLSocket TLSv1.3 - - hello\n"
        return seen

    assert versions_seen(impl.ss) == [None]
    assert versions_seen(socketserver) == ["TLSv1.3"]
