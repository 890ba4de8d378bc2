"""TLS passthrough behind a real HAProxy (Debian's ``haproxy`` package):
HAProxy in ``mode tcp`` forwards the client's TLS untouched, after a PROXY
v2 header of its own, and ``fastserver run --proxy-protocol v2 --certfile``
reads the header from the raw socket, then runs the handshake. On each
backend; all traffic on loopback.

The configuration is deploy/haproxy-tls-passthrough.cfg itself. Without
haproxy or openssl these tests skip naming the package (they fail under
FASTSERVER_REQUIRE_EXTERNALS=1, see tests/externals.py).
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import List

import tlscerts
from conftest import HOST, Impl, recv_until
from test_cli_tls import Session, stop, tls_app_env, tls_exchange
from test_proxy_haproxy import CLIENT_SOURCE, DEPLOY, free_port, running_haproxy

from supervised import Supervised  # noqa: E402  (test_cli_tls put scripts/ on sys.path)

PASSTHROUGH = os.path.join(DEPLOY, "haproxy-tls-passthrough.cfg")


def wait_in_file(path: str, pattern: str, timeout: float = 15.0) -> str:
    """The first line of the file (a log another process writes) that
    matches pattern, waiting up to timeout."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        with open(path) as f:
            text = f.read()
        for line in text.splitlines():
            if regex.search(line):
                return line
        if time.monotonic() > deadline:
            raise AssertionError("no %r in %s:\n%s" % (pattern, path, text[-3000:]))
        time.sleep(0.05)


def test_proxy_header_then_tls_through_haproxy(impl: Impl, tmp_path: Path) -> None:
    """Clients reach the instance through HAProxy with their own address,
    in TLS that only the instance terminates; HAProxy's health checks
    (header, handshake, a line) pass, and plaintext is turned away."""
    ca = tlscerts.make_ca(tmp_path)
    cert = tlscerts.make_cert(tmp_path, ca, "server")
    context = tlscerts.client_context(ca.cert)
    with Supervised.command(
            ["tls_app:TLSInfo", "--bind", "127.0.0.1:0", "--workers", "2",
             "--proxy-protocol", "v2", "--trusted-proxy", "127.0.0.1/32",
             "--certfile", cert.cert, "--keyfile", cert.key, "--log-level", "debug"],
            tls_app_env(impl, tmp_path)) as instance:
        app = instance.address()[1]
        front = free_port()
        # The second instance is down: the checks must tell the two apart.
        env = {"FASTSERVER_FRONTEND": "%s:%d" % (HOST, front),
               "FASTSERVER_APP1": "%s:%d" % app, "FASTSERVER_APP2": "%s:%d" % (HOST, free_port())}
        with running_haproxy(PASSTHROUGH, tmp_path, front, env) as log_path:
            sessions: List[Session] = []
            for n in range(6):
                info, session = tls_exchange(socket.AF_INET, (HOST, front), context,
                                             b"request %d\n" % n, source=CLIENT_SOURCE)
                sessions.append(session)
                # The client as itself (from the header), HAProxy as the peer.
                assert info["client"] == [CLIENT_SOURCE, session.local_address[1]], info
                assert info["proxy"][0] == "127.0.0.1", info
                assert info["line"] == "request %d\n" % n
                # TLS end to end: the instance's certificate, the handler's session.
                assert info["tls"] == session.version and info["tls"] in ("TLSv1.2", "TLSv1.3")
                assert session.der == tlscerts.der(cert.cert)
                assert info["backend"] == impl.name
            # Every request was served (retried away from the dead app2 if
            # need be). HAProxy's checks reached the handler through the
            # header and the handshake, from HAProxy's own address, and got
            # their line back: app1 stays up while app2 is marked down.
            instance.wait_for(r"INFO tls_app: \['127\.0\.0\.1', \d+\] TLSv1\.[23] b'PING\\n'",
                              count=3)
            wait_in_file(log_path, r"app2 is DOWN")
            with open(log_path) as f:
                assert "app1 is DOWN" not in f.read()
            # Not TLS: HAProxy turns it away before any instance sees it.
            with socket.create_connection((HOST, front), timeout=10) as plain:
                plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
                try:
                    assert recv_until(plain) == b""
                except ConnectionResetError:
                    pass
            assert tls_exchange(socket.AF_INET, (HOST, front), context,
                                source=CLIENT_SOURCE)[0]["client"][0] == CLIENT_SOURCE
        # The health checks reached the handler through header and handshake.
        assert "dropped connection" not in instance.log, instance.log[-3000:]
        stop(instance)
