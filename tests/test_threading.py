"""ThreadingMixIn: socketserver's daemon_threads/block_on_close semantics and
fastserver's reuse of idle handler threads."""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any, List

import pytest

from conftest import HOST, Impl, connect, recv_until, serving


def blocking_handler(ss: Any, entered: threading.Event,
                     release: threading.Event, finished: List[str]) -> type:
    class Blocking(ss.BaseRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            finished.append("daemon" if threading.current_thread().daemon
                            else "normal")
            entered.set()
            release.wait(10)
            finished.append("done")

    return Blocking


def settle(server: Any) -> None:
    """Wait until the server's handler threads have finished every request:
    fastserver's are then idle (or gone, without idle time), socketserver's
    have ended."""
    threads = server._threads
    if isinstance(threads, list):  # socketserver's
        for thread in list(threads):
            thread.join(10)
            assert not thread.is_alive()
    else:
        assert threads.wait_idle(10)


def thread_of_each_request(ss: Any, server_cls: Any, count: int,
                           **attrs: Any) -> List[threading.Thread]:
    threads: List[threading.Thread] = []

    class Record(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            threads.append(threading.current_thread())
            self.wfile.write(self.rfile.readline())

    server = server_cls((HOST, 0), Record)
    for name, value in attrs.items():
        setattr(server, name, value)
    with serving(server):
        for _ in range(count):
            with connect(server) as client:
                client.sendall(b"x\n")
                assert recv_until(client) == b"x\n"
            # The handler thread goes idle (or exits) before the next one.
            settle(server)
    return threads


@pytest.mark.parametrize("block_on_close", [True, False])
def test_server_close_and_block_on_close(ref_impl: Impl,
                                         block_on_close: bool) -> None:
    ss = ref_impl.ss
    entered, release, finished = threading.Event(), threading.Event(), []
    server = ss.ThreadingTCPServer(
        (HOST, 0), blocking_handler(ss, entered, release, finished))
    server.block_on_close = block_on_close
    thread = threading.Thread(target=server.serve_forever,
                              kwargs={"poll_interval": 0.05})
    thread.start()
    client = connect(server)
    try:
        assert entered.wait(5)
        server.shutdown()
        thread.join(5)
        timer = threading.Timer(0.3, release.set)
        timer.start()
        server.server_close()
        # With block_on_close, server_close() returned only after the
        # handler did; without, while it was still blocked.
        assert ("done" in finished) is block_on_close
    finally:
        release.set()
        client.close()


@pytest.mark.parametrize("daemon", [False, True])
def test_daemon_threads(ref_impl: Impl, daemon: bool) -> None:
    ss = ref_impl.ss
    entered, release, finished = threading.Event(), threading.Event(), []
    release.set()
    server = ss.ThreadingTCPServer(
        (HOST, 0), blocking_handler(ss, entered, release, finished))
    server.daemon_threads = daemon
    with serving(server):
        with connect(server):
            assert entered.wait(5)
    assert finished[0] == ("daemon" if daemon else "normal")


def test_process_request_thread_is_called(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    calls: List[Any] = []

    class Server(ss.ThreadingTCPServer):  # type: ignore[name-defined,misc]
        def process_request_thread(self, request: Any, client_address: Any) -> None:
            calls.append((threading.current_thread() is not main, client_address))
            super().process_request_thread(request, client_address)

    main = threading.current_thread()

    class Echo(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    with serving(Server((HOST, 0), Echo)) as server:
        with connect(server) as client:
            client.sendall(b"x\n")
            assert recv_until(client) == b"x\n"
            address = client.getsockname()
    assert calls == [(True, address)]


def test_threads_are_reaped(ref_impl: Impl) -> None:
    # Sequential requests leave one thread: socketserver drops the threads
    # that ended, fastserver hands each request to the same idle thread.
    ss = ref_impl.ss
    server = ss.ThreadingTCPServer((HOST, 0), ss.StreamRequestHandler)
    try:
        for _ in range(10):
            with socket.create_connection(server.server_address):
                server.handle_request()
            settle(server)
        assert len(server._threads) == 1
    finally:
        server.server_close()


def udp_burst(server: Any, client: socket.socket, count: int,
              before_replies: Any = None) -> None:
    """Send count numbered datagrams at once; each must be answered."""
    for i in range(count):
        client.sendto(b"%d" % i, server.server_address)
    if before_replies is not None:
        before_replies()
    replies = sorted(int(client.recvfrom(100)[0]) for _ in range(count))
    assert replies == list(range(count))


@pytest.mark.parametrize("transport", ["tcp", "udp burst"])
def test_concurrency_is_unbounded(ref_impl: Impl, transport: str) -> None:
    # Datagrams arrive together and are queued together: each still gets
    # a thread of its own while the others block, as each connection does.
    ss = ref_impl.ss
    count = 20
    barrier = threading.Barrier(count + 1, timeout=10)

    class Meet(ss.BaseRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            barrier.wait()
            if transport == "udp burst":
                data, sock = self.request
                sock.sendto(data, self.client_address)

    if transport == "tcp":
        class Server(ss.ThreadingTCPServer):  # type: ignore[name-defined,misc]
            request_queue_size = 64  # no SYN drops and retransmit delays

        with serving(Server((HOST, 0), Meet)) as server:
            clients = [connect(server) for _ in range(count)]
            try:
                barrier.wait()  # all 20 handlers run at the same time
            finally:
                for client in clients:
                    client.close()
        return
    with serving(ss.ThreadingUDPServer((HOST, 0), Meet)) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        udp_burst(server, client, count, before_replies=barrier.wait)


def test_short_requests_in_a_burst_share_a_few_threads(impl: Impl) -> None:
    # A thread that finishes takes the next queued request: 64 datagrams
    # in flight do not need 64 threads (a thread per queued request, as
    # socketserver starts, made 30-45 here).
    ss = impl.ss

    class Echo(ss.DatagramRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            self.wfile.write(self.rfile.read())

    peak = 0
    with serving(ss.ThreadingUDPServer((HOST, 0), Echo)) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        for _ in range(20):
            udp_burst(server, client, 64)
            peak = max(peak, len(server._threads))
    assert 1 <= peak <= 16


def test_thread_idle_timeout_zero_serves_a_burst_a_thread_each(
        impl: Impl) -> None:
    ss = impl.ss
    threads: List[threading.Thread] = []

    class Record(ss.DatagramRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            threads.append(threading.current_thread())
            self.wfile.write(self.rfile.read())

    class Server(ss.ThreadingUDPServer):  # type: ignore[name-defined,misc]
        thread_idle_timeout = 0

    with serving(Server((HOST, 0), Record)) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        udp_burst(server, client, 20)
    assert len(threads) == 20 and len(set(threads)) == 20


def test_idle_threads_are_reused(impl: Impl) -> None:
    threads = thread_of_each_request(impl.ss, impl.ss.ThreadingTCPServer, 5)
    assert len(set(threads)) == 1


def test_thread_idle_timeout_zero_starts_fresh_threads(impl: Impl) -> None:
    threads = thread_of_each_request(impl.ss, impl.ss.ThreadingTCPServer, 4,
                                     thread_idle_timeout=0)
    assert len(set(threads)) == 4


def test_idle_threads_expire(impl: Impl) -> None:
    ss = impl.ss
    workers: List[threading.Thread] = []

    class Record(ss.BaseRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            workers.append(threading.current_thread())

    server = ss.ThreadingTCPServer((HOST, 0), Record)
    server.thread_idle_timeout = 0.2
    try:
        with socket.create_connection(server.server_address):
            server.handle_request()
        assert server._threads.wait_idle(10)
        assert len(server._threads) == 1  # idle, for 0.2 s
        workers[0].join(10)  # ends on its own, without server_close()
        assert not workers[0].is_alive()
        assert len(server._threads) == 0
    finally:
        server.server_close()


def test_server_close_stops_idle_threads(impl: Impl) -> None:
    ss = impl.ss
    workers: List[threading.Thread] = []

    class Record(ss.BaseRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            workers.append(threading.current_thread())

    server = ss.ThreadingTCPServer((HOST, 0), Record)
    server.thread_idle_timeout = 60
    with socket.create_connection(server.server_address):
        server.handle_request()
    assert server._threads.wait_idle(10)
    assert workers and workers[0].is_alive()  # idle, waiting for more
    start = time.monotonic()
    server.server_close()
    assert time.monotonic() - start < 5
    assert not workers[0].is_alive()
    assert len(server._threads) == 0


def test_system_exit_in_handler_reaches_excepthook(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    seen: List[type] = []
    closed = threading.Event()

    class Exit(ss.BaseRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            raise SystemExit(3)

    class Server(ss.ThreadingTCPServer):  # type: ignore[name-defined,misc]
        def handle_error(self, request: Any, client_address: Any) -> None:
            seen.append(RuntimeError)  # must not be called for SystemExit

        def shutdown_request(self, request: Any) -> None:
            super().shutdown_request(request)
            closed.set()

    old_hook = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_type)
    try:
        server = Server((HOST, 0), Exit)
        with socket.create_connection(server.server_address):
            server.handle_request()
            assert closed.wait(5)
        server.server_close()
    finally:
        threading.excepthook = old_hook
    assert seen == [SystemExit]


def test_a_thread_that_cannot_start_fails_only_its_request(
        ref_impl: Impl, monkeypatch: pytest.MonkeyPatch) -> None:
    # Out of threads: process_request raises, the request goes through
    # handle_error and is closed, and the server goes on serving.
    ss = ref_impl.ss
    errors: List[Any] = []
    real_start = threading.Thread.start
    failures = [RuntimeError("can't start new thread")]

    def start(thread: threading.Thread) -> None:
        if failures:
            raise failures.pop()
        real_start(thread)

    class Echo(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    class Server(ss.ThreadingTCPServer):  # type: ignore[name-defined,misc]
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append(sys.exc_info()[1])

    server = Server((HOST, 0), Echo)
    monkeypatch.setattr(threading.Thread, "start", start)
    try:
        with connect(server) as refused:
            server.handle_request()
            assert refused.recv(10) == b""  # closed without a reply
        with connect(server) as served:
            served.sendall(b"again\n")
            server.handle_request()
            assert recv_until(served) == b"again\n"
    finally:
        monkeypatch.undo()
        server.server_close()
    assert [str(e) for e in errors] == ["can't start new thread"]
