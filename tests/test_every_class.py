"""Each concrete server class serves a request over its own socket family and
type, calling the same hooks in the same order as socketserver's class of
the same name (built from the stdlib mixins where this interpreter's
socketserver lacks the class)."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
from typing import Any, List

import pytest

from conftest import (Impl, close_dgram_client, connect, dgram_client,
                      recv_until, server_address)
from test_hooks import HANDLER_HOOKS, SERVER_HOOKS, traced

CLASSES = [
    "TCPServer", "UDPServer", "UnixStreamServer", "UnixDatagramServer",
    "ThreadingTCPServer", "ThreadingUDPServer", "ThreadingUnixStreamServer",
    "ThreadingUnixDatagramServer", "ForkingTCPServer", "ForkingUDPServer",
    "ForkingUnixStreamServer", "ForkingUnixDatagramServer",
]


def stdlib_class(name: str) -> type:
    if hasattr(socketserver, name):
        return getattr(socketserver, name)  # type: ignore[no-any-return]
    base = "UnixStreamServer" if "Stream" in name else "UnixDatagramServer"
    return type(name, (socketserver.ForkingMixIn, getattr(socketserver, base)), {})


def serve_one(ss: Any, server_cls: type) -> List[str]:
    log: List[str] = []
    done = threading.Event()
    stream = server_cls.socket_type == socket.SOCK_STREAM  # type: ignore[attr-defined]
    forking = issubclass(server_cls, ss.ForkingMixIn)

    if stream:
        class Echo(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
            def handle(self) -> None:
                self.wfile.write(self.rfile.readline())
    else:
        class Echo(ss.DatagramRequestHandler):  # type: ignore[name-defined,misc,no-redef]
            def handle(self) -> None:
                self.wfile.write(self.rfile.read())

    def shutdown_request(self: Any, request: Any) -> None:
        super(cls, self).shutdown_request(request)
        done.set()

    # In a forking server the handler hooks run in the child: only the
    # parent's hooks are logged, and the parent's last one is close_request.
    cls = traced(server_cls, log, SERVER_HOOKS + ["collect_children"],
                 None if forking else {"shutdown_request": shutdown_request})
    handler = Echo if forking else traced(Echo, log, HANDLER_HOOKS)
    family = server_cls.address_family  # type: ignore[attr-defined]
    server = cls(server_address(family), handler)
    try:
        if stream:
            with connect(server) as client:
                client.sendall(b"hello\n")
                server.handle_request()
                assert recv_until(client) == b"hello\n"
        else:
            client = dgram_client(server)
            try:
                client.sendto(b"hello\n", server.server_address)
                server.handle_request()
                assert client.recv(100) == b"hello\n"
            finally:
                close_dgram_client(client)
        if not forking:
            assert done.wait(5)
    finally:
        server.server_close()
        if family == socket.AF_UNIX:
            os.unlink(server.server_address)
    return log


@pytest.mark.parametrize("name", CLASSES)
def test_class_serves_like_stdlib(impl: Impl, name: str) -> None:
    ours = serve_one(impl.ss, getattr(impl.ss, name))
    theirs = serve_one(socketserver, stdlib_class(name))
    assert ours == theirs
    assert ours[:2] == ["server_bind", "server_activate"]
    assert ours[-1] in ("server_close", "collect_children")
