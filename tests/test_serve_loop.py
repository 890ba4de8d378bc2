"""serve_forever(), shutdown() and handle_request(): socketserver's semantics,
plus fastserver's prompt shutdown."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import threading
import time
from typing import Any, List

from conftest import HOST, Impl, backend_env, connect, recv_until, serving


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


def test_shutdown_wakes_udp_server(impl: Impl) -> None:
    # The TCP case, against socketserver, is in test_discrepancies.
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


# --- a closed server socket (issue 17) ------------------------------------------

def test_closed_socket_raises_value_error(ref_impl: Impl) -> None:
    """serve_forever() and handle_request() on a server whose socket is
    already closed raise ValueError at once, as socketserver's selector does;
    the loop is then shut down, so shutdown() does not wait."""
    ss = ref_impl.ss
    for timeout in (None, 30.0):
        server = ss.TCPServer((HOST, 0), ss.BaseRequestHandler)
        server.timeout = timeout
        server.server_close()
        outcomes = []
        for call in (server.handle_request,
                     lambda: server.serve_forever(poll_interval=30)):
            done = threading.Event()

            def run() -> None:
                try:
                    call()
                    outcomes.append("returned")
                except ValueError:
                    outcomes.append("ValueError")
                finally:
                    done.set()

            threading.Thread(target=run, daemon=True).start()
            assert done.wait(10), "blocked on a closed socket"
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive()
        assert outcomes == ["ValueError", "ValueError"]


def test_server_close_racing_serve_forever(impl: Impl) -> None:
    """Start serve_forever() in a thread, then at once server_close() and
    shutdown(), as many servers' own test suites do: no exception escapes
    the serving thread, and the loop has stopped when shutdown() returns.

    A close that wins the race before serve_forever() is even called is the
    closed-socket case, which raises ValueError (as in socketserver); an
    override of serve_forever() tells those rounds apart."""
    ss = impl.ss

    class Server(ss.ThreadingMixIn, ss.TCPServer):  # type: ignore[name-defined,misc]
        stopped = False
        late_actions = 0
        closed_at_start = False

        def serve_forever(self, poll_interval: float = 0.5) -> None:
            self.closed_at_start = self.socket.fileno() < 0
            super().serve_forever(poll_interval)

        def service_actions(self) -> None:
            if self.stopped:
                self.late_actions += 1
            super().service_actions()

    def serve(server: Any, escaped: List[BaseException], returned: threading.Event) -> None:
        try:
            server.serve_forever(poll_interval=0.01)
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            escaped.append(exc)
        finally:
            returned.set()

    deadline = time.monotonic() + 120   # a generous bound for the whole run
    bad: List[Any] = []
    for round_ in range(300):
        server = Server((HOST, 0), ss.BaseRequestHandler)
        escaped: List[BaseException] = []
        returned = threading.Event()
        thread = threading.Thread(target=serve, args=(server, escaped, returned))
        thread.start()
        server.server_close()
        server.shutdown()
        server.stopped = True
        # shutdown() returned: the loop has left, so nothing but the return
        # from serve_forever() is left for the thread to do.
        assert returned.wait(10)
        thread.join(10)
        assert not thread.is_alive()
        expected = [ValueError] if server.closed_at_start else []
        if [type(exc) for exc in escaped] != expected or server.late_actions:
            bad.append((round_, escaped, server.late_actions))
        assert time.monotonic() < deadline, "300 rounds took over two minutes"
    assert bad == []


WAKER_SCRIPT = r"""
import os, resource, threading
import fastserver as ss
server = ss.TCPServer(("127.0.0.1", 0), ss.BaseRequestHandler)
resource.setrlimit(resource.RLIMIT_NOFILE,
                   (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
filler = []
try:
    while True:
        filler.append(os.dup(0))
except OSError:
    pass
try:
    server.serve_forever(poll_interval=30)
    print("serve_forever returned")
except OSError as exc:
    print("serve_forever raised", exc.errno)
stopper = threading.Thread(target=server.shutdown, daemon=True)
stopper.start()
stopper.join(10)
print("shutdown", "hung" if stopper.is_alive() else "returned")
"""


def test_waker_that_cannot_open_leaves_the_loop_shut_down(impl: Impl) -> None:
    """Out of descriptors, serve_forever() cannot open its waker: it raises
    EMFILE, and the loop counts as shut down, so shutdown() returns."""
    out = subprocess.run([sys.executable, "-c", WAKER_SCRIPT], capture_output=True,
                         text=True, timeout=60, env=backend_env(impl.name))
    assert out.stdout.splitlines() == [
        "serve_forever raised %d" % errno.EMFILE, "shutdown returned"], out.stderr
