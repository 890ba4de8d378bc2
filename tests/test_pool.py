"""ThreadPoolMixIn: a bounded pool of handler threads with back-pressure."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from typing import Any, List

import pytest

from conftest import (HOST, Impl, backend_env, close_dgram_client, connect,
                      dgram_client, recv_until, serving, server_address)


class Gauge:
    """Counts handlers running at once and their peak, under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.started = 0
        self.release = threading.Event()

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.started += 1
            self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1


def gated_server(ss: Any, base: Any, gauge: Gauge, **attrs: Any) -> Any:
    """A server whose handlers block until gauge.release, counting what was
    accepted (get_request returned) and what started running."""

    class Gated(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            gauge.enter()
            try:
                line = self.rfile.readline()
                gauge.release.wait(10)
                self.wfile.write(line)
            finally:
                gauge.leave()

    class Counting(base):  # type: ignore[misc,valid-type]
        accepted = 0

        def get_request(self) -> Any:
            result = super().get_request()
            with gauge.lock:
                type(self).accepted += 1
            return result

    for name, value in attrs.items():
        setattr(Counting, name, value)
    return Counting(server_address(Counting.address_family), Gated)


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_names_and_defaults(impl: Impl) -> None:
    ss = impl.ss
    assert issubclass(ss.ThreadPoolTCPServer, ss.TCPServer)
    assert issubclass(ss.ThreadPoolUDPServer, ss.UDPServer)
    assert issubclass(ss.ThreadPoolUnixStreamServer, ss.UnixStreamServer)
    for cls in (ss.ThreadPoolTCPServer, ss.ThreadPoolUDPServer,
                ss.ThreadPoolUnixStreamServer):
        assert issubclass(cls, ss.ThreadPoolMixIn)
        assert cls.__mro__[1] is ss.ThreadPoolMixIn
    mixin = ss.ThreadPoolMixIn
    assert 1 <= mixin.max_workers <= 32
    assert mixin.max_queued == 0
    assert mixin.daemon_threads is False and mixin.block_on_close is True


@pytest.mark.parametrize("family", ["tcp", "unix"])
@pytest.mark.parametrize("workers,queued", [(2, 1), (3, 0)])
def test_back_pressure(impl: Impl, family: str, workers: int,
                       queued: int) -> None:
    """With every thread blocked and the queue full, no more clients are
    accepted (they wait in the backlog); releasing serves them all."""
    ss = impl.ss
    base = ss.ThreadPoolTCPServer if family == "tcp" else ss.ThreadPoolUnixStreamServer
    gauge = Gauge()
    extra = 3
    server = gated_server(ss, base, gauge, max_workers=workers,
                          max_queued=queued, request_queue_size=16)
    clients: List[socket.socket] = []
    with serving(server):
        try:
            for i in range(workers + queued + extra):
                client = connect(server)
                client.sendall(b"line %d\n" % i)
                clients.append(client)
            assert wait_until(lambda: gauge.running == workers)
            assert wait_until(lambda: type(server).accepted == workers + queued)
            time.sleep(0.3)  # give the server every chance to overrun
            with gauge.lock:
                assert gauge.running == workers
                assert type(server).accepted == workers + queued
                assert type(server).accepted - gauge.started <= queued
            gauge.release.set()
            for i, client in enumerate(clients):
                assert recv_until(client) == b"line %d\n" % i
            assert gauge.peak == workers
            assert type(server).accepted == len(clients)
        finally:
            gauge.release.set()
            for client in clients:
                client.close()


def test_threads_reused_and_bounded(impl: Impl) -> None:
    ss = impl.ss
    names: List[str] = []

    class Echo(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            names.append(threading.current_thread().name)
            self.wfile.write(self.rfile.readline())

    server = ss.ThreadPoolTCPServer((HOST, 0), Echo)
    server.max_workers = 2
    with serving(server):
        for i in range(20):
            with connect(server) as client:
                client.sendall(b"%d\n" % i)
                assert recv_until(client) == b"%d\n" % i
        assert len(server._fs_pool()) <= 2
    assert len(names) == 20
    assert len(set(names)) <= 2


def test_udp_pool(impl: Impl) -> None:
    ss = impl.ss
    gauge = Gauge()

    class Echo(ss.DatagramRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            gauge.enter()
            try:
                time.sleep(0.02)
                self.wfile.write(self.rfile.read())
            finally:
                gauge.leave()

    server = ss.ThreadPoolUDPServer((HOST, 0), Echo)
    server.max_workers = 2
    with serving(server):
        client = dgram_client(server)
        try:
            for i in range(8):
                client.sendto(b"d%d" % i, server.server_address)
            got = sorted(client.recvfrom(100)[0] for _ in range(8))
        finally:
            close_dgram_client(client)
    assert got == sorted(b"d%d" % i for i in range(8))
    assert gauge.peak <= 2


def test_shutdown_while_waiting_for_room(impl: Impl) -> None:
    """shutdown() returns at once while the serve loop waits for a thread."""
    ss = impl.ss
    gauge = Gauge()
    server = gated_server(ss, ss.ThreadPoolTCPServer, gauge, max_workers=1)
    thread = threading.Thread(target=server.serve_forever,
                              kwargs={"poll_interval": 5.0}, daemon=True)
    thread.start()
    first = connect(server)
    second = connect(server)
    try:
        first.sendall(b"first\n")
        second.sendall(b"second\n")
        assert wait_until(lambda: gauge.running == 1)
        time.sleep(0.1)  # the loop is now waiting for room
        assert type(server).accepted == 1
        started = time.monotonic()
        server.shutdown()
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, elapsed
        thread.join(5)
        assert not thread.is_alive()
        gauge.release.set()
        assert recv_until(first) == b"first\n"
    finally:
        gauge.release.set()
        server.server_close()
        first.close()
        second.close()


def test_shutdown_while_process_request_blocks(impl: Impl) -> None:
    """A get_request() override that skips the pool's wait leaves the wait
    to process_request(); shutdown() still returns at once, and the request
    that was accepted is served, not dropped."""
    ss = impl.ss
    gauge = Gauge()

    class NoWait(ss.ThreadPoolTCPServer):  # type: ignore[name-defined,misc]
        def get_request(self) -> Any:
            return ss.TCPServer.get_request(self)

    server = gated_server(ss, NoWait, gauge, max_workers=1)
    thread = threading.Thread(target=server.serve_forever,
                              kwargs={"poll_interval": 5.0}, daemon=True)
    thread.start()
    first, second = connect(server), connect(server)
    try:
        first.sendall(b"first\n")
        second.sendall(b"second\n")
        assert wait_until(lambda: type(server).accepted == 2)
        time.sleep(0.1)  # process_request is now blocked on the full pool
        assert gauge.started == 1
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < 1.0
        thread.join(5)
        gauge.release.set()
        assert recv_until(first) == b"first\n"
        assert recv_until(second) == b"second\n"
        assert gauge.peak == 1
    finally:
        gauge.release.set()
        server.server_close()
        first.close()
        second.close()


@pytest.mark.parametrize("block_on_close", [True, False])
def test_server_close_block_on_close(impl: Impl, block_on_close: bool) -> None:
    ss = impl.ss
    gauge = Gauge()
    server = gated_server(ss, ss.ThreadPoolTCPServer, gauge, max_workers=2,
                          block_on_close=block_on_close)
    with serving(server) as srv:
        client = connect(srv)
        client.sendall(b"x\n")
        assert wait_until(lambda: gauge.running == 1)
        pool = srv._fs_pool()
        srv.shutdown()
        threading.Timer(0.3, gauge.release.set).start()
        started = time.monotonic()
        srv.server_close()
        elapsed = time.monotonic() - started
        if block_on_close:
            assert elapsed >= 0.25 and gauge.running == 0
        else:
            assert elapsed < 0.25
        assert recv_until(client) == b"x\n"
        client.close()
    assert wait_until(lambda: len(pool) == 0)


@pytest.mark.parametrize("daemon", [True, False])
def test_daemon_threads(impl: Impl, daemon: bool) -> None:
    ss = impl.ss
    seen: List[bool] = []

    class Record(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            seen.append(threading.current_thread().daemon)
            self.wfile.write(self.rfile.readline())

    server = ss.ThreadPoolTCPServer((HOST, 0), Record)
    server.daemon_threads = daemon
    with serving(server):
        with connect(server) as client:
            client.sendall(b"x\n")
            assert recv_until(client) == b"x\n"
    assert seen == [daemon]


def test_idle_threads_exit_at_server_close(impl: Impl) -> None:
    ss = impl.ss

    class Echo(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    before = threading.active_count()
    server = ss.ThreadPoolTCPServer((HOST, 0), Echo)
    server.max_workers = 4
    with serving(server):
        clients = [connect(server) for _ in range(4)]
        for c in clients:
            c.sendall(b"x\n")
        for c in clients:
            assert recv_until(c) == b"x\n"
            c.close()
        pool = server._fs_pool()
        assert wait_until(lambda: pool.running == 0)
        assert len(pool) >= 1
    # serving() called server_close(): the idle threads are gone.
    assert len(pool) == 0
    assert wait_until(lambda: threading.active_count() <= before)


def test_process_request_thread_is_the_entry_point(impl: Impl) -> None:
    ss = impl.ss
    calls: List[str] = []

    class Echo(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    class Server(ss.ThreadPoolTCPServer):  # type: ignore[name-defined,misc]
        def process_request_thread(self, request: Any, address: Any) -> None:
            calls.append(threading.current_thread().name)
            super().process_request_thread(request, address)

    server = Server((HOST, 0), Echo)
    with serving(server):
        with connect(server) as client:
            client.sendall(b"x\n")
            assert recv_until(client) == b"x\n"
    assert len(calls) == 1 and calls[0] != threading.current_thread().name


def test_handler_error_is_reported_and_request_closed(impl: Impl) -> None:
    ss = impl.ss
    errors: List[Any] = []

    class Boom(ss.BaseRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            raise RuntimeError("boom")

    class Server(ss.ThreadPoolTCPServer):  # type: ignore[name-defined,misc]
        def handle_error(self, request: Any, address: Any) -> None:
            errors.append(sys.exc_info()[0])

    server = Server((HOST, 0), Boom)
    with serving(server):
        with connect(server) as client:
            assert client.recv(10) == b""
    assert errors == [RuntimeError]


EXIT_SCRIPT = r"""
import socket, threading, fastserver as ss

class Echo(ss.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())

server = ss.ThreadPoolTCPServer(("127.0.0.1", 0), Echo)
t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
t.start()
with socket.create_connection(server.server_address) as c:
    c.sendall(b"x\n")
    assert c.recv(10) == b"x\n"
server.shutdown()
t.join()
# No server_close(): the idle pool thread must not keep the process alive.
print("bye", flush=True)
"""


def test_idle_threads_do_not_hold_up_exit(impl: Impl) -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", EXIT_SCRIPT],
                            env=backend_env(impl.name), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "bye"
    assert time.monotonic() - started < 10
