"""Faults: resets, half-closes, stalled and slow clients, signals, exceptions
in every hook, hostile input. The server ends the request as socketserver
does, loses no byte, and keeps serving."""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable, List, Optional

import pytest

from conftest import HOST, Impl, connect, recv_all, recv_until, serving


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Recorder:
    """Collects what handlers and handle_error saw, across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: List[Any] = []
        self.event = threading.Event()

    def add(self, item: Any) -> None:
        with self.lock:
            self.items.append(item)
        self.event.set()

    def wait_for(self, count: int, timeout: float = 10) -> List[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.items) >= count:
                    return list(self.items)
            time.sleep(0.01)
        raise AssertionError(f"only {self.items!r} after {timeout}s")


def make_server(ss: Any, handle: Callable[[Any], None], rec: Recorder,
                threading_: bool = True, **handler_attrs: Any) -> Any:
    class Handler(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            handle(self)

    for name, value in handler_attrs.items():
        setattr(Handler, name, value)
    base = ss.ThreadingTCPServer if threading_ else ss.TCPServer

    class Server(base):  # type: ignore[misc,valid-type]
        def handle_error(self, request: Any, client_address: Any) -> None:
            rec.add(("error", type(sys.exc_info()[1]).__name__))

    return Server((HOST, 0), Handler)


def assert_still_serves(server: Any) -> None:
    with connect(server) as client:
        client.sendall(b"still here\n")
        assert recv_until(client) == b"still here\n"


def answered_probe(h: Any) -> bool:
    """Read the first line; answer assert_still_serves()'s probe if it was
    that (True), else leave the request to the test's handler (False)."""
    if h.rfile.readline() == b"still here\n":
        h.wfile.write(b"still here\n")
        return True
    return False


def echo_then(extra: Optional[Callable[[Any], None]] = None) -> Callable[[Any], None]:
    def handle(h: Any) -> None:
        if extra:
            extra(h)
        for line in h.rfile:
            h.wfile.write(line)
    return handle


def test_reset_in_mid_request(ref_impl: Impl) -> None:
    rec = Recorder()

    def handle(h: Any) -> None:
        if answered_probe(h):
            return
        try:
            h.rfile.readline()
        except OSError as exc:
            rec.add(type(exc).__name__)
            raise
        rec.add("eof")

    with serving(make_server(ref_impl.ss, handle, rec)) as server:
        client = connect(server)
        client.sendall(b"first line\npartial")
        time.sleep(0.1)
        reset(client)
        got = rec.wait_for(1)
        assert got[0] in ("ConnectionResetError", "eof")
        if got[0] == "ConnectionResetError":
            assert rec.wait_for(2)[1] == ("error", "ConnectionResetError")
        assert_still_serves(server)


def test_reset_in_mid_response(ref_impl: Impl) -> None:
    rec = Recorder()

    def handle(h: Any) -> None:
        if answered_probe(h):
            return
        try:
            for _ in range(10000):
                h.wfile.write(b"x" * 65536)
        except OSError as exc:
            rec.add(type(exc).__name__)
            raise

    with serving(make_server(ref_impl.ss, handle, rec)) as server:
        client = connect(server)
        client.sendall(b"go\n")
        client.recv(1000)
        reset(client)
        got = rec.wait_for(2)
        assert got[0] in ("ConnectionResetError", "BrokenPipeError")
        assert got[1] == ("error", got[0])
        assert_still_serves(server)


def test_half_close_reads_to_eof_then_replies(ref_impl: Impl) -> None:
    rec = Recorder()

    def handle(h: Any) -> None:
        data = h.rfile.read()
        h.wfile.write(b"%d bytes\n" % len(data))

    with serving(make_server(ref_impl.ss, handle, rec)) as server:
        with connect(server) as client:
            client.sendall(b"a" * 100000)
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"100000 bytes\n"


def test_client_that_never_reads_is_bounded_by_timeout(ref_impl: Impl) -> None:
    rec = Recorder()

    def handle(h: Any) -> None:
        if answered_probe(h):
            return
        try:
            while True:
                h.wfile.write(b"y" * 65536)
        except socket.timeout:
            rec.add("timeout")

    server = make_server(ref_impl.ss, handle, rec, timeout=0.5)
    with serving(server):
        stalled = connect(server)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"flood me\n")
        time.sleep(0.1)
        # The stalled connection's handler is blocked in send; others are not.
        assert_still_serves(server)
        assert rec.wait_for(1, timeout=10) == ["timeout"]
        stalled.close()


def test_slowloris_is_bounded_by_timeout(ref_impl: Impl) -> None:
    rec = Recorder()

    def handle(h: Any) -> None:
        try:
            h.rfile.readline()
        except socket.timeout:
            rec.add("timeout")

    server = make_server(ref_impl.ss, handle, rec, timeout=0.3)
    with serving(server):
        with connect(server) as client:
            start = time.monotonic()
            for _ in range(5):
                try:
                    client.send(b"a")
                except OSError:
                    break
                if rec.items:
                    break
                time.sleep(1.0)
            assert rec.wait_for(1) == ["timeout"]
            assert time.monotonic() - start < 4
            assert recv_all(client) == b""  # the server closed it


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX only")
def test_signals_during_blocking_read_lose_no_byte(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    got: List[bytes] = []
    signals: List[int] = []

    class Handler(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            got.append(self.rfile.read(300000))

    old = signal.signal(signal.SIGUSR1, lambda signum, frame: signals.append(signum))
    main = threading.get_ident()
    payload = bytes(range(256)) * 1171  # 299776 bytes, then a tail
    try:
        with ss.TCPServer((HOST, 0), Handler) as server:
            def client() -> None:
                with connect(server) as sock:
                    for start in range(0, len(payload), 30000):
                        sock.sendall(payload[start:start + 30000])
                        signal.pthread_kill(main, signal.SIGUSR1)
                        time.sleep(0.02)
                    sock.sendall(b"tail" + b"." * 220)

            thread = threading.Thread(target=client)
            thread.start()
            server.handle_request()  # the handler runs in this (main) thread
            thread.join(10)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert got == [(payload + b"tail" + b"." * 220)[:300000]]
    assert len(signals) >= 5


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX only")
def test_exception_from_signal_handler_interrupts_read(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    seen: List[str] = []

    class Interrupted(Exception):
        pass

    def on_signal(signum: int, frame: Any) -> None:
        raise Interrupted()

    class Handler(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            try:
                self.rfile.readline()
            except Interrupted:
                seen.append("interrupted")

    old = signal.signal(signal.SIGUSR1, on_signal)
    main = threading.get_ident()
    try:
        with ss.TCPServer((HOST, 0), Handler) as server:
            with connect(server):
                timer = threading.Timer(0.2, signal.pthread_kill,
                                        (main, signal.SIGUSR1))
                timer.start()
                server.handle_request()
                timer.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert seen == ["interrupted"]


@pytest.mark.parametrize("where", ["setup", "handle", "finish"])
def test_exception_in_handler_method(ref_impl: Impl, where: str) -> None:
    ss = ref_impl.ss
    rec = Recorder()

    class Handler(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def setup(self) -> None:
            super().setup()
            rec.add("setup")
            if where == "setup":
                raise ValueError(where)

        def handle(self) -> None:
            rec.add("handle")
            if where == "handle":
                raise ValueError(where)

        def finish(self) -> None:
            rec.add("finish")
            super().finish()
            if where == "finish":
                raise ValueError(where)

    class Server(ss.ThreadingTCPServer):  # type: ignore[name-defined,misc]
        def handle_error(self, request: Any, client_address: Any) -> None:
            rec.add(("error", str(sys.exc_info()[1])))

    with serving(Server((HOST, 0), Handler)) as server:
        with connect(server) as client:
            assert recv_all(client) == b""
        expected = {"setup": ["setup", ("error", "setup")],
                    "handle": ["setup", "handle", "finish", ("error", "handle")],
                    "finish": ["setup", "handle", "finish", ("error", "finish")]}
        assert rec.wait_for(len(expected[where])) == expected[where]


def test_exception_in_process_request(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    rec = Recorder()

    class Server(ss.TCPServer):  # type: ignore[name-defined,misc]
        def process_request(self, request: Any, client_address: Any) -> None:
            raise ValueError("process")

        def handle_error(self, request: Any, client_address: Any) -> None:
            rec.add("error")

        def shutdown_request(self, request: Any) -> None:
            rec.add("shutdown_request")
            super().shutdown_request(request)

    with serving(Server((HOST, 0), ss.StreamRequestHandler)) as server:
        with connect(server) as client:
            assert recv_all(client) == b""
        assert rec.wait_for(2) == ["error", "shutdown_request"]


def test_binary_garbage_and_long_lines(ref_impl: Impl) -> None:
    rec = Recorder()
    garbage = bytes((i * 7919) % 256 for i in range(200000)).replace(b"\n", b"\0")

    def handle(h: Any) -> None:
        rec.add(h.rfile.readline(1000))    # limited: stops at 1000 bytes
        rec.add(h.rfile.readline())        # unlimited: the rest of the line
        rec.add(h.rfile.read())

    with serving(make_server(ref_impl.ss, handle, rec)) as server:
        with connect(server) as client:
            client.sendall(garbage + b"\n" + b"\xff\x00\r\n" * 1000)
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b""
        first, second, rest = rec.wait_for(3)
    assert first == garbage[:1000]
    assert second == garbage[1000:] + b"\n"
    assert rest == b"\xff\x00\r\n" * 1000


def test_shutdown_with_200_active_connections(impl: Impl) -> None:
    ss = impl.ss
    entered = Recorder()

    class Server(ss.ThreadingTCPServer):  # type: ignore[name-defined,misc]
        request_queue_size = 256

    class Handler(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            entered.add(1)
            for line in self.rfile:
                self.wfile.write(line)

    server = Server((HOST, 0), Handler)
    thread = threading.Thread(target=server.serve_forever,
                              kwargs={"poll_interval": 5})
    thread.start()
    clients = [connect(server) for _ in range(200)]
    try:
        entered.wait_for(200, timeout=30)
        start = time.monotonic()
        server.shutdown()
        assert time.monotonic() - start < 1.0
        thread.join(5)
        # The open connections are still served after the loop stopped.
        for i, client in enumerate(clients[:20]):
            client.sendall(b"after %d\n" % i)
            assert recv_until(client) == b"after %d\n" % i
    finally:
        for client in clients:
            client.close()
        server.server_close()  # joins the 200 handler threads
    assert len(server._threads) == 0


def test_server_close_is_idempotent(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    for cls in (ss.TCPServer, ss.ThreadingTCPServer, ss.UDPServer,
                ss.ForkingTCPServer):
        server = cls((HOST, 0), ss.BaseRequestHandler)
        server.server_close()
        server.server_close()
        assert server.socket.fileno() == -1


def test_open_descriptors_do_not_leak(impl: Impl) -> None:
    ss = impl.ss

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    class Server(ss.ThreadingTCPServer):  # type: ignore[name-defined,misc]
        request_queue_size = 64

    before = fds()
    for _ in range(3):
        server = Server((HOST, 0), ss.StreamRequestHandler)
        with serving(server):
            for _ in range(20):
                client = connect(server)
                client.sendall(b"x\n")
                reset(client)
    assert fds() == before
