"""fastserver.prefork: workers, restarts, signals, and drains that lose
nothing. Each test runs a supervisor process (tests/scripts/prefork_app.py)
on the backend under test."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import pytest

from conftest import Impl, backend_env, unix_path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))

from prefork_app import UserOverrides  # noqa: E402
from prefork_app import log as overrides_log  # noqa: E402
from supervised import (DrainLoad, Supervised, connect, recv_line,  # noqa: E402
                        roundtrip)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process inspection through /proc")

DRAIN_REPETITIONS = 5


def alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_workers_share_the_socket(impl: Impl) -> None:
    with Supervised.app("Echo", "ThreadingTCPServer", 3, 5,
                        backend_env(impl.name)) as sup:
        family, address = sup.address()
        assert "%s backend" % impl.name in sup.log
        pids = sup.wait_workers(3)
        assert len(pids) == 3
        for i in range(10):
            assert roundtrip(family, address, b"%d\n" % i) == b"%d\n" % i
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0
    assert wait_gone(pids)


@pytest.mark.parametrize("how", ["os._exit", "SIGKILL"])
def test_dead_worker_is_restarted(impl: Impl, how: str) -> None:
    with Supervised.app("Crash", "ThreadingTCPServer", 2, 5,
                        backend_env(impl.name)) as sup:
        family, address = sup.address()
        before = sup.wait_workers(2)
        if how == "os._exit":
            with connect(family, address) as client:
                client.sendall(b"crash\n")
                assert client.recv(10) == b""
            sup.wait_for(r"exited with status 7; restarting")
        else:
            os.kill(before[0], signal.SIGKILL)
            sup.wait_for(r"killed by SIGKILL; restarting")
        sup.wait_for(r"started \(pid", count=3)
        after = sup.wait_workers(2)
        assert len(after) == 2 and after != before
        assert roundtrip(family, address) == b"hello\n"
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0


def test_restart_back_off(impl: Impl) -> None:
    """A worker that keeps dying young is restarted later and later; the
    connections that arrive meanwhile wait in the shared queue."""
    with Supervised.app("Crash", "ThreadingTCPServer", 1, 5,
                        backend_env(impl.name)) as sup:
        family, address = sup.address()
        for _ in range(3):
            with connect(family, address) as client:
                client.sendall(b"crash\n")
                assert client.recv(10) == b""
        delays = [float(sup.wait_for(r"restarting in ([\d.]+) s", count=n).group(1))
                  for n in (1, 2, 3)]
        assert delays == [0.0, 0.1, 0.2]
        assert roundtrip(family, address) == b"hello\n"
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0


def drain_under_load(impl: Impl, family_name: str = "tcp",
                     group: bool = False) -> "dict[str, int]":
    address = "unix:" + unix_path() if family_name == "unix" else ""
    sup = Supervised.app("SlowEcho", "ThreadingTCPServer" if not address
                         else "ThreadingUnixStreamServer", 2, 10,
                         backend_env(impl.name), address=address)
    with sup:
        family, addr = sup.address()
        assert roundtrip(family, addr) == b"hello\n"
        workers = sup.wait_workers(2)
        load = DrainLoad(family, addr).start()
        time.sleep(0.4)
        if group:
            # As systemd does: every process of the service at once.
            for pid in [sup.proc.pid] + workers:
                os.kill(pid, signal.SIGTERM)
        else:
            sup.send_signal(signal.SIGTERM)
        status = sup.wait(30)
        counts = load.join(15)
        assert counts["lost"] == 0, (counts, load.errors[:5], sup.log)
        assert status == 0, sup.log
        assert counts["ok"] > 0
        assert "draining" in sup.log
    if address:
        assert not os.path.exists(address[5:])
    return counts


def test_sigterm_drains_under_load(impl: Impl) -> None:
    """16 clients loop connect / one line / echo / close; SIGTERM mid-way.
    No client whose connect succeeded sees a reset or a short answer."""
    for _ in range(DRAIN_REPETITIONS):
        drain_under_load(impl)


def test_sigterm_drains_unix_socket(impl: Impl) -> None:
    drain_under_load(impl, "unix")


def test_group_sigterm_drains(impl: Impl) -> None:
    """SIGTERM reaching the workers together with the supervisor (a
    process-group or cgroup kill) loses nothing either."""
    drain_under_load(impl, group=True)


@pytest.mark.parametrize("server", [
    "ThreadingTCPServer", "ThreadPoolTCPServer", "ForkingTCPServer",
    "ThreadingTCPServer+overrides", "ThreadPoolTCPServer+overrides"])
def test_in_flight_request_finishes(impl: Impl, server: str) -> None:
    """SIGTERM while a request runs: the drain waits for it, then the worker
    exits 0 well before the graceful timeout. With +overrides, the user's
    process_request, shutdown_request and close_request run (the last two
    skip super()) and the count of requests in flight alone holds the drain."""
    with Supervised.app("Sleep", server, 1, 10,
                        backend_env(impl.name)) as sup:
        family, address = sup.address()
        with connect(family, address) as client:
            client.sendall(b"0.7\n")
            assert recv_line(client) == b"started\n"
            started = time.monotonic()
            sup.send_signal(signal.SIGTERM)
            assert recv_line(client) == b"done\n"
            assert sup.wait(15) == 0
            assert time.monotonic() - started >= 0.6
        with pytest.raises(ConnectionRefusedError):
            connect(family, address, timeout=5)
    assert sup.wait_for(r"worker 0 \(pid \d+\) (.*)").group(1) == \
        "exited with status 0", sup.log
    if server.endswith("+overrides"):
        for hook in ("process_request", "shutdown_request", "close_request"):
            assert "%s override ran" % hook in sup.log


def test_sigint_stops_fast(impl: Impl) -> None:
    with Supervised.app("Sleep", "ThreadingTCPServer", 2, 30,
                        backend_env(impl.name)) as sup:
        family, address = sup.address()
        workers = sup.wait_workers(2)
        with connect(family, address) as client:
            client.sendall(b"30\n")
            assert recv_line(client) == b"started\n"
            started = time.monotonic()
            sup.send_signal(signal.SIGINT)
            assert sup.wait(10) == 0
            assert time.monotonic() - started < 2.0
            assert recv_line(client) == b""  # cut, as asked
        assert wait_gone(workers, 2)


def test_sighup_replaces_workers(impl: Impl) -> None:
    with Supervised.app("Echo", "ThreadingTCPServer", 2, 5,
                        backend_env(impl.name)) as sup:
        family, address = sup.address()
        before = sup.wait_workers(2)
        sup.send_signal(signal.SIGHUP)
        sup.wait_for(r"replaced", count=2)
        after = sup.wait_workers(2)
        assert len(after) == 2 and not set(after) & set(before)
        assert roundtrip(family, address) == b"hello\n"
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0


def test_worker_sigterm_alone_is_replaced(impl: Impl) -> None:
    """SIGTERM to one worker stops that worker only: the socket stays open
    to new clients and the supervisor starts a replacement."""
    with Supervised.app("Echo", "ThreadingTCPServer", 1, 5,
                        backend_env(impl.name)) as sup:
        family, address = sup.address()
        (worker,) = sup.wait_workers(1)
        os.kill(worker, signal.SIGTERM)
        sup.wait_for(r"exited with status 0; restarting")
        # Served by the replacement, whether it connected before or after.
        assert roundtrip(family, address) == b"hello\n"
        assert sup.wait_workers(1) != [worker]
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0


def test_udp_workers(impl: Impl) -> None:
    with Supervised.app("UDPEcho", "ThreadingUDPServer", 2, 5,
                        backend_env(impl.name)) as sup:
        family, address = sup.address()
        sup.wait_workers(2)
        with socket.socket(family, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            for i in range(5):
                client.sendto(b"d%d" % i, address)
                data, _ = client.recvfrom(100)
                assert data.startswith(b"d%d " % i)
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0


def test_listener_closes_to_new_clients_only() -> None:
    """The drain technique itself: after close_to_new(), a connection that
    was queued is still served, a new connect gets no answer, and after
    close() new connects are refused."""
    from fastserver.prefork import Listener

    if not sys.platform.startswith("linux"):
        pytest.skip("BPF socket filters are Linux-only")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        listener = Listener(sock)
        assert listener.kind == "tcp" and not listener.closed_to_new()
        queued = socket.create_connection(sock.getsockname(), timeout=5)
        queued.sendall(b"queued\n")
        assert listener.close_to_new() and listener.closed_to_new()
        late = socket.socket()
        late.settimeout(0.3)
        with pytest.raises(socket.timeout):
            late.connect(sock.getsockname())
        late.close()
        conn, _ = sock.accept()
        with conn:
            assert conn.recv(100) == b"queued\n"
            conn.sendall(b"served\n")
        assert queued.recv(100) == b"served\n"
        queued.close()
        assert listener.wait_drained(time.monotonic() + 5)


# --- the worker's count of requests in flight, in process -------------------


def held_handler(impl: Impl) -> type:
    class Held(impl.ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        """Answer "started", then "done" once the client sends a line."""

        def handle(self) -> None:
            self.wfile.write(b"started\n")
            self.rfile.readline()
            self.wfile.write(b"done\n")
    return Held


class OwnThreads:
    """process_request() runs the request in a thread of its own, without
    super(), and ends it with the base shutdown_request(); close_request()
    skips super(). Each logs that it ran, as UserOverrides does."""

    def process_request(self, request: Any, client_address: Any) -> None:
        overrides_log.info("process_request override ran")

        def run() -> None:
            try:
                self.finish_request(request, client_address)  # type: ignore[attr-defined]
            finally:
                self.shutdown_request(request)  # type: ignore[attr-defined]
        threading.Thread(target=run, daemon=True).start()

    def close_request(self, request: Any) -> None:
        overrides_log.info("close_request override ran")
        request.close()


@pytest.mark.parametrize("server,overrides", [
    ("ThreadingTCPServer", None), ("ThreadPoolTCPServer", None),
    ("ForkingTCPServer", None), ("ThreadingTCPServer", UserOverrides),
    ("ThreadPoolTCPServer", UserOverrides), ("ForkingTCPServer", UserOverrides),
    ("TCPServer", OwnThreads)], ids=lambda v: getattr(v, "__name__", str(v)))
def test_drain_waits_for_requests_in_flight(impl: Impl, server: str,
                                            overrides: Any,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A worker's drain (shutdown, server_close, then the wait for requests
    in flight) returns only once the request in flight is done, whatever the
    user's overrides skip. Thread servers do not block in server_close()
    here, so the count alone holds the drain; a forking parent lets go of
    the request at the fork, and server_close() waits for the child."""
    from fastserver.prefork.worker import InFlight

    caplog.set_level(logging.INFO, logger=overrides_log.name)
    bases: "tuple[type, ...]" = (getattr(impl.ss, server),)
    if overrides is not None:
        bases = (overrides,) + bases
    forking = server.startswith("Forking")
    cls = type("Server", bases, {"block_on_close": forking})
    inflight = InFlight()
    srv = cls(("127.0.0.1", 0), held_handler(impl))
    srv.request_observer = inflight
    serving = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    serving.start()
    drained = threading.Event()
    outcome: "list[bool]" = []

    def drain() -> None:
        srv.shutdown()
        srv.server_close()
        outcome.append(inflight.wait(time.monotonic() + 10))
        drained.set()

    try:
        with connect(socket.AF_INET, srv.server_address) as client:
            assert recv_line(client) == b"started\n"
            if forking:
                assert inflight.wait(time.monotonic() + 10)
            else:
                assert len(inflight) == 1
            threading.Thread(target=drain, daemon=True).start()
            # Nothing can end the drain while the handler waits for us.
            assert not drained.wait(0.3)
            client.sendall(b"go\n")
            assert recv_line(client) == b"done\n"
            assert drained.wait(15)
    finally:
        if not drained.is_set():
            # A forked child holds our end of the connection too: it would
            # wait for our line forever.
            for pid in getattr(srv, "active_children", None) or ():
                os.kill(pid, signal.SIGKILL)
            srv.shutdown()
            srv.server_close()
        serving.join(10)
    assert outcome == [True] and len(inflight) == 0
    calls = [r.getMessage().split()[0] for r in caplog.records
             if r.name == overrides_log.name]
    if overrides is UserOverrides:
        # A forking server's child runs shutdown_request() in its own process.
        expected = ["process_request", "close_request"] if forking else \
            ["process_request", "shutdown_request", "close_request"]
        assert calls == expected
    elif overrides is OwnThreads:
        assert calls == ["process_request", "close_request"]


def test_in_flight_counts_a_request_once() -> None:
    """The server may end one request more than once (around and inside
    shutdown_request()); only the first call counts."""
    from fastserver.prefork.worker import InFlight

    inflight = InFlight()
    first, second = object(), object()
    inflight.request_started(first, None)
    inflight.request_started(second, None)
    inflight.request_finished(first)
    inflight.request_finished(first)
    assert len(inflight) == 1 and not inflight.wait(time.monotonic())
    inflight.request_finished(second)
    assert len(inflight) == 0 and inflight.wait(time.monotonic())
