"""The PROXY protocol against a real HAProxy (Debian's ``haproxy``
package), on each backend; all traffic on loopback.

Without haproxy these tests skip, naming the package to install; CI sets
FASTSERVER_REQUIRE_EXTERNALS=1, which makes them fail instead (see
tests/externals.py), so a missing haproxy cannot go unnoticed there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Set

import pytest

from conftest import HOST, Impl, backend_env, recv_until, serving
from externals import require_haproxy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))

from proxy_app import describe  # noqa: E402
from supervised import Supervised  # noqa: E402

DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "deploy")
CLIENT_SOURCE = "127.0.0.5"  # a client on another loopback address
FORGER = "127.0.0.6"          # neither the client nor the proxy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]  # type: ignore[no-any-return]


def wait_listening(port: int, proc: subprocess.Popen, log_path: str,
                   timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    with open(log_path) as log:
        pytest.fail("haproxy is not listening on %d:\n%s" % (port, log.read()))


@contextlib.contextmanager
def running_haproxy(config: str, tmp_path: Any, port: int,
                    env: Optional[Dict[str, str]] = None) -> Iterator[str]:
    """haproxy in the foreground on config (a path); yields its log path."""
    binary = require_haproxy()
    log_path = str(tmp_path / "haproxy.log")
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(log_path, "w") as log:
        proc = subprocess.Popen([binary, "-db", "-f", config], env=full_env,
                                stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        wait_listening(port, proc, log_path)
        yield log_path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait(10)


def client_exchange(port: int, line: bytes, source: str = CLIENT_SOURCE,
                    timeout: float = 10.0) -> "tuple[bytes, int]":
    with socket.socket() as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect((HOST, port))
        sock.sendall(line)
        return recv_until(sock), sock.getsockname()[1]


# --- HAProxy send-proxy / send-proxy-v2 to an in-process server ---------------


HAPROXY_TO_SERVER = """
global
    maxconn 256
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend via_v1
    bind 127.0.0.1:{v1}
    default_backend app_v1
frontend via_v2
    bind 127.0.0.1:{v2}
    unique-id-format fastserver-%ci-%cp
    default_backend app_v2
backend app_v1
    server app 127.0.0.1:{app} send-proxy
backend app_v2
    server app 127.0.0.1:{app} send-proxy-v2 proxy-v2-options unique-id,crc32c check inter 200ms
"""


def test_haproxy_send_proxy(impl: Impl, tmp_path: Any) -> None:
    runs: List[Dict[str, Any]] = []

    class Whoami(impl.ss.StreamRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            try:
                line = self.rfile.readline()
            except ConnectionResetError:  # health checks may end so
                line = b""
            info = describe(self, line)
            runs.append(info)
            if line:
                self.wfile.write(json.dumps(info).encode() + b"\n")

    cls = type("Server", (impl.ss.ProxyProtocolMixIn, impl.ss.ThreadingTCPServer),
               {"trusted_proxies": ["127.0.0.1/32"], "daemon_threads": True,
                "proxy_timeout": 2.0})
    server = cls((HOST, 0), Whoami)
    v1, v2 = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_TO_SERVER.format(v1=v1, v2=v2, app=server.server_address[1]))
    with serving(server), running_haproxy(str(config), tmp_path, v2):
        for port, version in ((v1, 1), (v2, 2)):
            raw, client_port = client_exchange(port, b"hello %d\n" % version)
            got = json.loads(raw)
            # The client appears as itself, not as HAProxy.
            assert got["client"] == [CLIENT_SOURCE, client_port], got
            assert got["proxy"][0] == "127.0.0.1" and got["version"] == version
            assert got["command"] == "PROXY" and got["line"] == "hello %d\n" % version
        # v2 carried the unique ID and a CRC32C that checked out.
        assert got["unique_id"] == "fastserver-%s-%d" % (CLIENT_SOURCE, client_port)
        assert 0x03 in got["tlv_types"] and 0x05 in got["tlv_types"]
        # HAProxy's own health checks (PROXY from HAProxy's address in 2.6,
        # LOCAL in other versions) are accepted.
        deadline = time.monotonic() + 5
        while not any(r["client"][0] == "127.0.0.1" for r in runs):
            assert time.monotonic() < deadline, runs
            time.sleep(0.05)
        check = next(r for r in runs if r["client"][0] == "127.0.0.1")
        assert check["version"] == 2 and check["command"] in ("PROXY", "LOCAL")
        # A forged header straight from another address is refused: the
        # connection is closed unread and no handler runs for it.
        before = len(runs)
        forged = b"PROXY TCP4 203.0.113.9 127.0.0.1 4444 80\r\nhello\n"
        try:
            answer = client_exchange(server.server_address[1], forged, source=FORGER)[0]
        except (ConnectionResetError, BrokenPipeError):
            answer = b""  # closed with the forged bytes unread
        assert answer == b""
        time.sleep(0.2)
        assert all(r["client"][0] != "203.0.113.9" for r in runs)
        assert all(r["client"][0] != FORGER for r in runs[before:])
        # ... and HAProxy's clients are still served.
        raw, client_port = client_exchange(v2, b"again\n")
        assert json.loads(raw)["client"] == [CLIENT_SOURCE, client_port]


# --- two instances behind HAProxy, one drained ------------------------------------


class Load:
    """Client threads that each loop: connect to HAProxy from
    CLIENT_SOURCE, send a line, check the whole answer, close."""

    def __init__(self, port: int, clients: int = 8) -> None:
        self.port = port
        self.ok = 0
        self.lost: List[str] = []
        self.pids: Dict[int, int] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(clients)]

    def start(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def run(self, index: int) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            line = b"client %d request %d %s\n" % (index, n, b"x" * 64)
            try:
                raw, client_port = client_exchange(self.port, line)
                got = json.loads(raw)
                if got["line"] != line.decode() or \
                        got["client"] != [CLIENT_SOURCE, client_port]:
                    raise AssertionError("wrong answer %r" % (got,))
            except Exception as exc:
                with self.lock:
                    self.lost.append("%s: %r" % (line[:24], exc))
                continue
            with self.lock:
                self.ok += 1
                self.pids[got["pid"]] = self.pids.get(got["pid"], 0) + 1

    def snapshot(self) -> "tuple[int, Set[int]]":
        with self.lock:
            return self.ok, set(self.pids)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(20)


def instance(impl: Impl) -> Supervised:
    return Supervised.command(
        ["proxy_app:SlowWhoami", "--bind", "127.0.0.1:0", "--workers", "2",
         "--proxy-protocol", "v2", "--trusted-proxy", "127.0.0.1/32",
         "--graceful-timeout", "10"], backend_env(impl.name))


def test_deploy_config_drains_without_loss(impl: Impl, tmp_path: Any) -> None:
    """deploy/haproxy.cfg balancing two instances; one is stopped
    gracefully under load and no client request is lost."""
    with instance(impl) as first, instance(impl) as second:
        app1 = first.address()[1]
        app2 = second.address()[1]
        front = free_port()
        env = {"FASTSERVER_FRONTEND": "127.0.0.1:%d" % front,
               "FASTSERVER_APP1": "%s:%d" % app1, "FASTSERVER_APP2": "%s:%d" % app2}
        with running_haproxy(os.path.join(DEPLOY, "haproxy.cfg"), tmp_path,
                             front, env) as log_path:
            first_pids = set(first.wait_workers(2))
            second_pids = set(second.wait_workers(2))
            load = Load(front).start()
            try:
                # Both instances serve.
                deadline = time.monotonic() + 10
                while True:
                    ok, pids = load.snapshot()
                    if pids & first_pids and pids & second_pids and ok >= 40:
                        break
                    assert time.monotonic() < deadline, (ok, pids, load.lost)
                    time.sleep(0.05)
                first.send_signal(signal.SIGTERM)
                assert first.wait(15) == 0, first.log
                ok_at_exit, _ = load.snapshot()
                time.sleep(1.5)  # more traffic, all on the second instance
            finally:
                load.stop()
            with open(log_path) as log:
                haproxy_log = log.read()
        assert not load.lost, (load.lost[:5], haproxy_log[-3000:])
        assert load.ok > ok_at_exit + 10
        assert set(load.pids) <= first_pids | second_pids
        # The second instance kept serving throughout.
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0, second.log
