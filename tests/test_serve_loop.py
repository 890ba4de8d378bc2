"""serve_forever(), shutdown() and handle_request(): socketserver's semantics,
plus fastserver's prompt shutdown."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, List

from conftest import HOST, Impl, connect, recv_until, serving


def echo_handler(ss: Any) -> type:
    class Echo(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(line)

    return Echo


def test_serves_many_clients(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    for cls in (ss.TCPServer, ss.ThreadingTCPServer):
        with serving(cls((HOST, 0), echo_handler(ss))) as server:
            for i in range(20):
                with connect(server) as client:
                    client.sendall(b"line %d\n" % i)
                    assert recv_until(client) == b"line %d\n" % i


def test_shutdown_does_not_wait_for_poll_interval(impl: Impl) -> None:
    server = impl.ss.TCPServer((HOST, 0), echo_handler(impl.ss))
    with serving(server, poll_interval=5):
        time.sleep(0.1)  # let the loop block in its wait
        start = time.monotonic()
        server.shutdown()
        elapsed = time.monotonic() - start
    assert elapsed < 0.5


def test_shutdown_wakes_udp_server(impl: Impl) -> None:
    server = impl.ss.UDPServer((HOST, 0), impl.ss.DatagramRequestHandler)
    with serving(server, poll_interval=5):
        time.sleep(0.1)
        start = time.monotonic()
        server.shutdown()
        assert time.monotonic() - start < 0.5


def test_shutdown_before_serve_forever_is_honoured(ref_impl: Impl) -> None:
    with ref_impl.ss.TCPServer((HOST, 0), echo_handler(ref_impl.ss)) as server:
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        time.sleep(0.05)  # shutdown() is now waiting for the loop
        returned = threading.Event()

        def serve() -> None:
            server.serve_forever(poll_interval=0.05)
            returned.set()

        threading.Thread(target=serve, daemon=True).start()
        assert returned.wait(5)
        stopper.join(5)
        assert not stopper.is_alive()


def test_serve_forever_restarts_after_shutdown(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    server = ss.TCPServer((HOST, 0), echo_handler(ss))
    try:
        for round_ in range(3):
            thread = threading.Thread(target=server.serve_forever,
                                      kwargs={"poll_interval": 0.05})
            thread.start()
            with connect(server) as client:
                client.sendall(b"round %d\n" % round_)
                assert recv_until(client) == b"round %d\n" % round_
            server.shutdown()
            thread.join(5)
            assert not thread.is_alive()
    finally:
        server.server_close()


def test_service_actions_runs_every_poll_interval(ref_impl: Impl) -> None:
    calls: List[float] = []

    class Server(ref_impl.ss.TCPServer):  # type: ignore[name-defined,misc]
        def service_actions(self) -> None:
            calls.append(time.monotonic())

    with serving(Server((HOST, 0), echo_handler(ref_impl.ss)), poll_interval=0.05):
        time.sleep(0.6)
    # 12 intervals elapsed; allow for a slow machine.
    assert len(calls) >= 4


def test_service_actions_runs_after_each_request(impl: Impl) -> None:
    # socketserver behaves the same, but its shutdown() would then wait for
    # the long poll_interval; that is what this test leans on.
    ref_impl = impl
    calls: List[str] = []
    serviced = threading.Event()

    class Server(ref_impl.ss.TCPServer):  # type: ignore[name-defined,misc]
        def service_actions(self) -> None:
            calls.append("service")
            serviced.set()

        def process_request(self, request: Any, client_address: Any) -> None:
            calls.append("request")
            super().process_request(request, client_address)

    # poll_interval is long: only the request itself can trigger the call.
    with serving(Server((HOST, 0), echo_handler(ref_impl.ss)),
                 poll_interval=30) as server:
        with connect(server) as client:
            client.sendall(b"x\n")
            client.shutdown(socket.SHUT_WR)
            assert recv_until(client) == b"x\n"
        assert serviced.wait(5)
        assert calls[:2] == ["request", "service"]


def test_shutdown_waits_for_the_request_in_progress(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    entered = threading.Event()
    release = threading.Event()
    finished: List[bool] = []

    class Slow(ss.BaseRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            entered.set()
            release.wait(5)
            finished.append(True)

    server = ss.TCPServer((HOST, 0), Slow)
    thread = threading.Thread(target=server.serve_forever,
                              kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with connect(server):
            assert entered.wait(5)
            stopper = threading.Thread(target=server.shutdown)
            stopper.start()
            time.sleep(0.1)
            assert stopper.is_alive()  # blocked behind the request
            release.set()
            stopper.join(5)
            assert finished == [True]
    finally:
        release.set()
        thread.join(5)
        server.server_close()


def test_handle_request_serves_one_request(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    with ss.TCPServer((HOST, 0), echo_handler(ss)) as server:
        server.timeout = 5
        for i in range(3):
            with connect(server) as client:
                client.sendall(b"req %d\n" % i)
                client.shutdown(socket.SHUT_WR)
                server.handle_request()
                assert recv_until(client) == b"req %d\n" % i


def test_handle_request_without_timeout_waits(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    with ss.TCPServer((HOST, 0), echo_handler(ss)) as server:
        done = threading.Event()

        def handle() -> None:
            server.handle_request()
            done.set()

        threading.Thread(target=handle, daemon=True).start()
        assert not done.wait(0.3)
        with connect(server) as client:
            client.sendall(b"late\n")
            client.shutdown(socket.SHUT_WR)
            assert recv_until(client) == b"late\n"
        assert done.wait(5)
