"""TLS under bad input: plain bytes on a TLS port, handshakes that stall
halfway, floods of silent and slow clients, and thousands of failed
handshakes. The server closes what cannot finish, by the one deadline,
logs it at DEBUG on fastserver.tls, never calls handle_error(), leaks
nothing, and serves on."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from contextlib import ExitStack
from typing import Any, List

import pytest

from conftest import HOST, Impl, serving
from test_tls import Recorder, make_server, pki, silent_clients, tls_log, tls_request  # noqa: F401
from tlscerts import CertFiles

# The handshake deadline these tests set: short, so that stalls end soon.
DEADLINE = 0.5
# How long a test waits for something the server must do by DEADLINE: a
# generous bound, never a timing measurement.
PATIENCE = 10.0


def client_hello(ca: CertFiles) -> bytes:
    """The bytes of a real ClientHello, as a client would send them."""
    context = ssl.create_default_context(cafile=ca.cert)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed sock within PATIENCE (EOF or a reset)."""
    sock.settimeout(PATIENCE)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return True


def _record_error(self: Any, request: Any, client_address: Any) -> None:
    self.errors.append(client_address)


def counting_server(impl: Impl, class_name: str, cert: CertFiles, **attrs: Any) -> Any:
    """A TLS server with the short deadline whose handle_error() calls are
    recorded in its ``errors``."""
    server = make_server(impl, class_name, cert, "ssl_context",
                         tls_handshake_timeout=DEADLINE,
                         handle_error=_record_error, **attrs)
    server.errors = []
    return server


@pytest.mark.parametrize("payload", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                     b"\x00" * 64, b"\x16\x03\x01\x00\x05hello"])
def test_plain_bytes_are_closed_and_the_server_serves_on(
        impl: Impl, pki: Any, payload: bytes, tls_log: Recorder) -> None:
    ca, cert, _ = pki
    server = counting_server(impl, "ThreadingTCPServer", cert)
    with serving(server):
        with socket.create_connection(server.server_address, timeout=PATIENCE) as sock:
            sock.sendall(payload)
            assert closed_by_server(sock)
        assert tls_request(server, ca).endswith(b" hello\n")
        assert tls_log.seen.wait(PATIENCE)
    assert server.errors == []
    assert "dropped connection from" in tls_log.records[0].getMessage()


@pytest.mark.parametrize("part", ["half", "whole"])
def test_a_stalled_handshake_is_closed_at_the_deadline(
        impl: Impl, pki: Any, part: str, tls_log: Recorder) -> None:
    """Half a ClientHello (waits in the lobby) or a whole one (its thread
    then waits for the client's next flight): either way the connection
    is closed once the deadline passes, and logged once."""
    ca, cert, _ = pki
    hello = client_hello(ca)
    sent = hello[: len(hello) // 2] if part == "half" else hello
    server = counting_server(impl, "ThreadingTCPServer", cert)
    with serving(server):
        with socket.create_connection(server.server_address) as sock:
            sock.sendall(sent)
            assert closed_by_server(sock)
        assert tls_log.seen.wait(PATIENCE)
        assert tls_request(server, ca).endswith(b" hello\n")
    assert server.errors == []
    assert len(tls_log.records) == 1


def test_the_deadline_holds_however_slowly_bytes_trickle(impl: Impl, pki: Any) -> None:
    """One byte of the ClientHello every 50 ms would reset a per-receive
    timeout forever; the one deadline still closes the connection."""
    ca, cert, _ = pki
    hello = client_hello(ca)
    server = counting_server(impl, "ThreadingTCPServer", cert)
    with serving(server):
        with socket.create_connection(server.server_address) as sock:
            closed = threading.Event()
            def trickle() -> None:
                for byte in hello:
                    if closed.wait(0.05):
                        return
                    try:
                        sock.send(bytes([byte]))
                    except OSError:
                        return
            sender = threading.Thread(target=trickle, daemon=True)
            sender.start()
            try:
                assert closed_by_server(sock)
            finally:
                closed.set()
                sender.join(PATIENCE)


def test_trickling_clients_hold_no_pool_thread(impl: Impl, pki: Any) -> None:
    """Clients that send part of a ClientHello and stop wait in the lobby
    until the whole record is in (SO_RCVLOWAT): more of them than the pool
    has threads still leave every thread for real clients."""
    ca, cert, _ = pki
    hello = client_hello(ca)
    server = make_server(impl, "ThreadPoolTCPServer", cert, "ssl_context",
                         max_workers=2)
    with serving(server), ExitStack() as stack:
        for sock in silent_clients(server, stack, 8):
            sock.sendall(hello[:20])
        for _ in range(3):
            assert tls_request(server, ca).endswith(b" hello\n")


def test_a_flood_of_silent_and_slow_clients_leaves_real_ones_served(
        impl: Impl, pki: Any) -> None:
    """500 silent connections and 50 with half a ClientHello, on a pool of
    4 threads: real clients are served throughout."""
    ca, cert, _ = pki
    hello = client_hello(ca)
    server = make_server(impl, "ThreadPoolTCPServer", cert, "ssl_context",
                         max_workers=4)
    with serving(server), ExitStack() as stack:
        silent_clients(server, stack, 500)
        for sock in silent_clients(server, stack, 50):
            sock.sendall(hello[: len(hello) // 2])
        for index in range(5):
            line = b"real %d\n" % index
            assert tls_request(server, ca, line).endswith(b" " + line)


def test_the_lobby_is_bounded(impl: Impl, pki: Any, tls_log: Recorder) -> None:
    """Past lobby_limit waiting connections the oldest is dropped (and
    logged), the newest kept."""
    ca, cert, _ = pki
    server = make_server(impl, "ThreadingTCPServer", cert, "ssl_context",
                         lobby_limit=3)
    with serving(server), ExitStack() as stack:
        first, *rest = silent_clients(server, stack, 4)
        assert closed_by_server(first)
        assert tls_log.wait_for("too many connections waiting")
        assert tls_request(server, ca).endswith(b" hello\n")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
def test_ten_thousand_failed_handshakes_leak_nothing(impl: Impl, pki: Any) -> None:
    """Descriptors and threads stay flat over 10,000 failed handshakes
    (plain bytes, then close), on the threading server."""
    ca, cert, _ = pki
    server = counting_server(impl, "ThreadingTCPServer", cert)
    with serving(server):
        def fail(count: int) -> None:
            for _ in range(count):
                with socket.create_connection(server.server_address) as sock:
                    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    closed_by_server(sock)

        fail(200)   # warm up: handler threads, caches
        assert tls_request(server, ca).endswith(b" hello\n")
        fds, threads = _open_fds(), threading.active_count()
        fail(10_000)
        assert tls_request(server, ca).endswith(b" hello\n")
        # A client sees EOF at shutdown(SHUT_WR), just before its handler
        # thread closes the descriptor: wait until every thread is idle.
        assert server._threads.wait_idle(PATIENCE)
        assert _open_fds() <= fds
        # Idle handler threads are kept for reuse (thread_idle_timeout): a
        # few, as many as were ever busy at once; a thread per failure
        # would be thousands.
        assert threading.active_count() <= threads + 8
    assert server.errors == []
