"""The core is chosen per server: the ``backend`` class attribute pins it,
None takes the process default, and servers on different cores run side by
side in one process."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from typing import Any, List

import pytest

import fastserver
from conftest import FASTSERVER_IMPLS, HOST, backend_env, connect, recv_until, serving

BACKENDS = [param.values[0].name for param in FASTSERVER_IMPLS]


class ReportReader(fastserver.StreamRequestHandler):
    """Answers each line with the module of its rfile's type."""

    def handle(self) -> None:
        for _ in self.rfile:
            self.wfile.write(type(self.rfile).__module__.encode() + b"\n")


def _pinned(name: Any) -> Any:
    class Server(fastserver.ThreadingTCPServer):
        backend = name
        daemon_threads = True
    return Server


def test_default_is_the_process_default() -> None:
    with _pinned(None)((HOST, 0), ReportReader) as server:
        assert server.backend == fastserver.backend
        assert type(server).backend is None


@pytest.mark.skipif("cython" not in BACKENDS, reason="needs both backends: the "
                    "cython extension is not the default here")
def test_two_cores_side_by_side_in_one_process() -> None:
    servers = [_pinned("cython")((HOST, 0), ReportReader),
               _pinned("python")((HOST, 0), ReportReader)]
    assert [s.backend for s in servers] == ["cython", "python"]
    with serving(servers[0]), serving(servers[1]):
        clients = [connect(s) for s in servers]
        try:
            # Interleaved on live connections: each server keeps its own core.
            answers: List[bytes] = []
            for _ in range(3):
                for client in clients:
                    client.sendall(b"which?\n")
                    answers.append(recv_until(client))
        finally:
            for client in clients:
                client.close()
    assert answers == [b"fastserver._core\n", io.BufferedReader.__module__.encode()
                       + b"\n"] * 3


@pytest.mark.skipif("cython" not in BACKENDS, reason="needs the cython extension")
def test_threads_of_both_cores_at_once() -> None:
    """Handlers of the two cores run concurrently, each blocked in its own
    core's reader until the other has answered."""
    gate = threading.Barrier(2, timeout=10)

    class Meet(fastserver.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            gate.wait()
            self.wfile.write(line)

    servers = [_pinned(name)((HOST, 0), Meet) for name in ("cython", "python")]
    with serving(servers[0]), serving(servers[1]):
        clients = [connect(s) for s in servers]
        try:
            for i, client in enumerate(clients):
                client.sendall(b"%d\n" % i)
            assert [recv_until(c) for c in clients] == [b"0\n", b"1\n"]
        finally:
            for client in clients:
                client.close()


def test_an_unknown_backend_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="backend must be one of 'cython', "
                       "'python' or None, not 'rust'"):
        _pinned("rust")((HOST, 0), ReportReader)


def test_datagram_servers_take_the_pin_too() -> None:
    for name in BACKENDS:
        class Server(fastserver.UDPServer):
            backend = name
        with Server((HOST, 0), fastserver.DatagramRequestHandler) as server:
            assert server.backend == name
            assert type(server._fs_loop).__module__ == \
                fastserver._compat.load_core(name).__name__


@pytest.mark.skipif("cython" not in BACKENDS, reason="needs the cython extension")
def test_a_pin_wins_over_the_process_default() -> None:
    """FASTSERVER_NO_EXTENSIONS chooses the default only: a server pinned to
    the cython core still gets it."""
    code = ("import fastserver\n"
            "class S(fastserver.TCPServer):\n"
            "    backend = 'cython'\n"
            "with S(('127.0.0.1', 0), fastserver.BaseRequestHandler) as s:\n"
            "    print(fastserver.backend, s.backend)\n")
    out = subprocess.run([sys.executable, "-c", code], env=backend_env("python"),
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["python", "cython"]
