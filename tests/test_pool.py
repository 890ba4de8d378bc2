"""ThreadPoolMixIn: a bounded pool of handler threads with back-pressure."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, List

import pytest

from conftest import (HOST, Impl, backend_env, close_dgram_client, connect,
                      dgram_client, recv_until, serving, server_address)


class Gauge:
    """Counts handlers running at once and their peak, and the server's
    get_request() calls and accepted requests, under one condition that
    wait_for() waits on."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.running = 0
        self.peak = 0
        self.started = 0
        self.asked = 0
        self.accepted = 0
        self.release = threading.Event()

    def count(self, **increments: int) -> None:
        with self.lock:
            for name, value in increments.items():
                setattr(self, name, getattr(self, name) + value)
            self.peak = max(self.peak, self.running)
            self.lock.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        with self.lock:
            return self.lock.wait_for(predicate, timeout)


def gated_server(ss: Any, base: Any, gauge: Gauge, **attrs: Any) -> Any:
    """A server whose handlers block until gauge.release, counting what was
    accepted (get_request returned) and what started running."""

    class Gated(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            gauge.count(running=1, started=1)
            try:
                line = self.rfile.readline()
                gauge.release.wait(10)
                self.wfile.write(line)
            finally:
                gauge.count(running=-1)

    class Counting(base):  # type: ignore[misc,valid-type]
        def get_request(self) -> Any:
            gauge.count(asked=1)
            result = super().get_request()
            gauge.count(accepted=1)
            return result

    for name, value in attrs.items():
        setattr(Counting, name, value)
    return Counting(server_address(Counting.address_family), Gated)


@contextlib.contextmanager
def two_one_at_a_time(server: Any, gauge: Gauge) -> Iterator[None]:
    """Two clients send a line each; after the block the handlers are
    released, and both lines come back, served one at a time."""
    first, second = connect(server), connect(server)
    try:
        first.sendall(b"first\n")
        second.sendall(b"second\n")
        yield
        gauge.release.set()
        assert recv_until(first) == b"first\n"
        assert recv_until(second) == b"second\n"
        assert gauge.peak == 1
    finally:
        gauge.release.set()
        first.close()
        second.close()


class Ticks:
    """Counts service_actions() calls."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.calls = 0

    def tick(self) -> None:
        with self.cond:
            self.calls += 1
            self.cond.notify_all()

    def wait_for_more(self, more: int, timeout: float = 10.0) -> bool:
        with self.cond:
            target = self.calls + more
            return self.cond.wait_for(lambda: self.calls >= target, timeout)


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
            assert gauge.wait_for(lambda: gauge.running == workers)
            assert gauge.wait_for(lambda: gauge.accepted == workers + queued)
            # Give the server every chance to overrun: the loop asks twice
            # more, each time waiting poll_interval for room in vain.
            assert gauge.wait_for(
                lambda: gauge.asked >= workers + queued + 3)
            with gauge.lock:
                assert gauge.running == workers
                assert gauge.accepted == workers + queued
                assert gauge.accepted - gauge.started <= queued
            gauge.release.set()
            for i, client in enumerate(clients):
                assert recv_until(client) == b"line %d\n" % i
            assert gauge.peak == workers
            assert gauge.accepted == len(clients)
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
            gauge.count(running=1)
            try:
                time.sleep(0.02)  # some work, so that requests overlap
                self.wfile.write(self.rfile.read())
            finally:
                gauge.count(running=-1)

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
        # The loop has asked for the second request: it waits for room.
        assert gauge.wait_for(lambda: gauge.running == 1 and gauge.asked == 2)
        assert gauge.accepted == 1
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

    entered = threading.Event()

    class NoWait(ss.ThreadPoolTCPServer):  # type: ignore[name-defined,misc]
        def get_request(self) -> Any:
            return ss.TCPServer.get_request(self)

        def process_request(self, request: Any, client_address: Any) -> None:
            if gauge.accepted == 2:
                entered.set()
            super().process_request(request, client_address)

    server = gated_server(ss, NoWait, gauge, max_workers=1)
    thread = threading.Thread(target=server.serve_forever,
                              kwargs={"poll_interval": 5.0}, daemon=True)
    thread.start()
    try:
        with two_one_at_a_time(server, gauge):
            assert gauge.wait_for(lambda: gauge.accepted == 2
                                  and gauge.running == 1)
            assert entered.wait(10)  # process_request now waits for the pool
            assert gauge.started == 1
            started = time.monotonic()
            server.shutdown()
            assert time.monotonic() - started < 1.0
            thread.join(5)
    finally:
        server.server_close()


@pytest.mark.parametrize("waits_in", ["get_request", "process_request"])
def test_service_actions_run_while_the_pool_is_full(impl: Impl,
                                                    waits_in: str) -> None:
    """serve_forever() promises service_actions() at least once every
    poll_interval; a full pool must not stop it, whether the wait for room
    is get_request()'s own or, when an override skips that one,
    process_request()'s."""
    ss = impl.ss
    gauge, ticks = Gauge(), Ticks()

    class Base(ss.ThreadPoolTCPServer):  # type: ignore[name-defined,misc]
        def service_actions(self) -> None:
            super().service_actions()
            ticks.tick()

    class NoWait(Base):
        def get_request(self) -> Any:
            return ss.TCPServer.get_request(self)

    server = gated_server(ss, Base if waits_in == "get_request" else NoWait,
                          gauge, max_workers=1)
    accepted = 1 if waits_in == "get_request" else 2
    with serving(server, poll_interval=0.05), two_one_at_a_time(server, gauge):
        assert gauge.wait_for(lambda: gauge.running == 1
                              and gauge.accepted == accepted)
        # Full: one thread, busy, and no queue. Before the fix the loop sat
        # in the wait for room and service_actions() stopped.
        assert ticks.wait_for_more(5)
        with gauge.lock:
            assert gauge.started == 1 and gauge.accepted == accepted


@pytest.mark.parametrize("block_on_close", [True, False])
def test_server_close_block_on_close(impl: Impl, block_on_close: bool) -> None:
    ss = impl.ss
    gauge = Gauge()
    server = gated_server(ss, ss.ThreadPoolTCPServer, gauge, max_workers=2,
                          block_on_close=block_on_close)
    with serving(server) as srv:
        client = connect(srv)
        client.sendall(b"x\n")
        assert gauge.wait_for(lambda: gauge.running == 1)
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
    assert pool.wait_idle(10) and len(pool) == 0


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
        assert pool.wait_idle(10)
        assert pool.running == 0 and 1 <= len(pool) <= 4
    # serving() called server_close(): the idle threads are gone.
    assert len(pool) == 0
    assert threading.active_count() <= before


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


def test_a_thread_that_cannot_start_fails_only_its_request(
        impl: Impl, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of threads, the request goes through handle_error and is closed;
    it does not stay queued for a thread that may come later."""
    ss = impl.ss
    errors: List[str] = []
    real_start = threading.Thread.start

    def start_once_failing(thread: threading.Thread) -> None:
        monkeypatch.setattr(threading.Thread, "start", real_start)
        raise RuntimeError("can't start new thread")

    class Echo(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    class Server(ss.ThreadPoolTCPServer):  # type: ignore[name-defined,misc]
        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append(str(sys.exc_info()[1]))

    with Server((HOST, 0), Echo) as server:
        monkeypatch.setattr(threading.Thread, "start", start_once_failing)
        with connect(server) as refused:
            server.handle_request()
            assert refused.recv(10) == b""  # closed without a reply
        assert server._fs_pool().queued == 0 and len(server._fs_pool()) == 0
        with connect(server) as served:
            served.sendall(b"again\n")
            server.handle_request()
            assert recv_until(served) == b"again\n"
    assert errors == ["can't start new thread"]
