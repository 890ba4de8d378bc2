"""Every overridable hook runs exactly where and when socketserver runs it.

Each scenario subclasses a server and a handler so that every hook records
its name, runs the same steps on fastserver and on the stdlib, and compares
the two logs.
"""

from __future__ import annotations

import errno
import socket
import socketserver
import threading
from types import ModuleType
from typing import Any, Callable, List

import pytest

from conftest import (HOST, Impl, close_dgram_client, closing_server, connect,
                      dgram_client, recv_until, server_address)

SERVER_HOOKS = [
    "server_bind", "server_activate", "get_request", "verify_request",
    "process_request", "finish_request", "handle_error", "handle_timeout",
    "shutdown_request", "close_request", "server_close",
    "process_request_thread",
]
HANDLER_HOOKS = ["setup", "handle", "finish"]


def traced(base: type, log: List[str], hooks: List[str],
           overrides: dict | None = None) -> type:
    """A subclass of base whose hooks append their names to log."""
    namespace: dict = {}

    def make(name: str) -> Callable[..., Any]:
        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            log.append(name)
            if overrides and name in overrides:
                return overrides[name](self, *args, **kwargs)
            return getattr(super(cls, self), name)(*args, **kwargs)
        return hook

    for name in hooks:
        if hasattr(base, name):
            namespace[name] = make(name)
    cls = type("Traced" + base.__name__, (base,), namespace)
    return cls


def run_tcp(ss: ModuleType, server_overrides: dict | None = None,
            handler_overrides: dict | None = None,
            server_base: str = "TCPServer",
            log: List[str] | None = None, reply: bool = True) -> List[str]:
    log = [] if log is None else log

    class Echo(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    handler = traced(Echo, log, HANDLER_HOOKS, handler_overrides)
    server_cls = traced(getattr(ss, server_base), log, SERVER_HOOKS,
                        server_overrides)
    server = server_cls((HOST, 0), handler)
    try:
        with connect(server) as client:
            client.sendall(b"ping\n")
            server.handle_request()
            if reply:  # the echo, or EOF/reset when the request failed
                try:
                    recv_until(client)
                except OSError:
                    pass
    finally:
        server.server_close()
    return log


def compare(impl: Impl, scenario: Callable[[ModuleType], List[str]]) -> List[str]:
    ours = scenario(impl.ss)
    theirs = scenario(socketserver)
    assert ours == theirs
    return ours


def test_plain_request(impl: Impl) -> None:
    log = compare(impl, run_tcp)
    assert log == ["server_bind", "server_activate", "get_request",
                   "verify_request", "process_request", "finish_request",
                   "setup", "handle", "finish", "shutdown_request",
                   "close_request", "server_close"]


def test_verify_request_false_shuts_request_down(impl: Impl) -> None:
    log = compare(impl, lambda ss: run_tcp(
        ss, server_overrides={"verify_request": lambda self, r, a: False}))
    assert log[2:] == ["get_request", "verify_request", "shutdown_request",
                       "close_request", "server_close"]


def test_handler_exception_goes_to_handle_error(impl: Impl) -> None:
    def boom(self: Any) -> None:
        raise ValueError("boom")

    log = compare(impl, lambda ss: run_tcp(
        ss, handler_overrides={"handle": boom},
        server_overrides={"handle_error": lambda self, r, a: None}))
    assert log[2:] == ["get_request", "verify_request", "process_request",
                       "finish_request", "setup", "handle", "finish",
                       "handle_error", "shutdown_request", "close_request",
                       "server_close"]


def test_setup_exception_skips_handle_and_finish(impl: Impl) -> None:
    def boom(self: Any) -> None:
        raise ValueError("boom")

    log = compare(impl, lambda ss: run_tcp(
        ss, handler_overrides={"setup": boom},
        server_overrides={"handle_error": lambda self, r, a: None}))
    assert "handle" not in log and "finish" not in log
    assert log[log.index("setup") + 1] == "handle_error"


def test_get_request_oserror_is_ignored(impl: Impl) -> None:
    def failing(self: Any) -> Any:
        raise OSError(errno.ECONNABORTED, "aborted")

    log = compare(impl, lambda ss: run_tcp(
        ss, server_overrides={"get_request": failing}, reply=False))
    assert log[2:] == ["get_request", "server_close"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_base_exception_propagates_after_shutdown_request(
        impl: Impl, exc: type) -> None:
    def raising(self: Any) -> None:
        raise exc()

    def scenario(ss: ModuleType) -> List[str]:
        log: List[str] = []
        with pytest.raises(exc):
            run_tcp(ss, handler_overrides={"handle": raising}, log=log)
        return log

    log = compare(impl, scenario)
    assert log[2:] == ["get_request", "verify_request", "process_request",
                       "finish_request", "setup", "handle", "finish",
                       "shutdown_request", "close_request", "server_close"]


def test_handle_request_timeout_calls_handle_timeout(impl: Impl) -> None:
    def scenario(ss: ModuleType) -> List[str]:
        log: List[str] = []
        cls = traced(ss.TCPServer, log, SERVER_HOOKS)
        with cls((HOST, 0), ss.StreamRequestHandler) as server:
            server.timeout = 0.05
            server.handle_request()
        return log

    log = compare(impl, scenario)
    assert log == ["server_bind", "server_activate", "handle_timeout",
                   "server_close"]


def test_socket_timeout_shorter_than_server_timeout_wins(impl: Impl) -> None:
    def scenario(ss: ModuleType) -> List[str]:
        log: List[str] = []
        cls = traced(ss.TCPServer, log, SERVER_HOOKS)
        with cls((HOST, 0), ss.StreamRequestHandler) as server:
            server.timeout = 30
            server.socket.settimeout(0.05)
            server.handle_request()
        return log

    assert compare(impl, scenario)[-2:] == ["handle_timeout", "server_close"]


def test_bind_failure_closes_socket(impl: Impl) -> None:
    def scenario(ss: ModuleType) -> List[str]:
        log: List[str] = []
        with socket.socket() as taken:
            taken.bind((HOST, 0))
            taken.listen()
            cls = traced(ss.TCPServer, log, SERVER_HOOKS)
            with pytest.raises(OSError):
                cls(taken.getsockname(), ss.StreamRequestHandler)
        return log

    assert compare(impl, scenario) == ["server_bind", "server_close"]


def test_activate_failure_closes_socket(impl: Impl) -> None:
    def failing(self: Any) -> None:
        raise RuntimeError("cannot listen")

    def scenario(ss: ModuleType) -> List[str]:
        log: List[str] = []
        cls = traced(ss.TCPServer, log, SERVER_HOOKS,
                     {"server_activate": failing})
        created: List[Any] = []
        orig_close = cls.server_close

        def close(self: Any) -> None:
            created.append(self.socket)
            orig_close(self)

        cls.server_close = close  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            cls((HOST, 0), ss.StreamRequestHandler)
        assert created and created[0].fileno() == -1
        return log

    assert compare(impl, scenario) == ["server_bind", "server_activate",
                                       "server_close"]


def test_bind_and_activate_false(impl: Impl) -> None:
    def scenario(ss: ModuleType) -> List[str]:
        log: List[str] = []
        cls = traced(ss.TCPServer, log, SERVER_HOOKS)
        server = cls((HOST, 0), ss.StreamRequestHandler,
                     bind_and_activate=False)
        assert server.server_address == (HOST, 0)
        server.server_bind()
        server.server_activate()
        assert server.server_address == server.socket.getsockname()
        server.server_close()
        return log

    assert compare(impl, scenario) == ["server_bind", "server_activate",
                                       "server_close"]


def test_udp_request(impl: Impl) -> None:
    def scenario(ss: ModuleType) -> List[str]:
        log: List[str] = []
        seen: List[Any] = []

        class Echo(ss.DatagramRequestHandler):  # type: ignore[name-defined,misc]
            def handle(self) -> None:
                seen.append((self.request[1] is self.server.socket,
                             self.client_address == client.getsockname()))
                self.wfile.write(self.rfile.read())

        handler = traced(Echo, log, HANDLER_HOOKS)
        cls = traced(ss.UDPServer, log, SERVER_HOOKS)
        with cls((HOST, 0), handler) as server:
            client = dgram_client(server)
            client.sendto(b"ping", server.server_address)
            server.handle_request()
            assert client.recv(100) == b"ping"
            close_dgram_client(client)
        assert seen == [(True, True)]
        return log

    assert compare(impl, scenario) == [
        "server_bind", "server_activate", "get_request", "verify_request",
        "process_request", "finish_request", "setup", "handle", "finish",
        "shutdown_request", "close_request", "server_close"]


def test_threading_request_hooks(impl: Impl) -> None:
    def scenario(ss: ModuleType) -> List[str]:
        log: List[str] = []
        done = threading.Event()

        class Echo(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
            def handle(self) -> None:
                self.wfile.write(self.rfile.readline())

        handler = traced(Echo, log, HANDLER_HOOKS)
        cls = traced(ss.ThreadingTCPServer, log, SERVER_HOOKS,
                     {"close_request": lambda self, r: (r.close(), done.set())})
        server = cls((HOST, 0), handler)
        with connect(server) as client:
            client.sendall(b"ping\n")
            server.handle_request()
            assert recv_until(client) == b"ping\n"
            assert done.wait(5)
        server.server_close()
        return log

    assert compare(impl, scenario) == [
        "server_bind", "server_activate", "get_request", "verify_request",
        "process_request", "process_request_thread", "finish_request",
        "setup", "handle", "finish", "shutdown_request", "close_request",
        "server_close"]


def test_attributes_seen_by_handler(ref_impl: Impl) -> None:
    ss = ref_impl.ss
    seen: dict = {}

    class Handler(ss.StreamRequestHandler):  # type: ignore[name-defined,misc]
        def handle(self) -> None:
            seen.update(
                request=self.request, client_address=self.client_address,
                server=self.server, connection=self.connection,
                rfile=self.rfile, wfile=self.wfile,
                rfile_fileno=self.rfile.fileno(),
                wfile_fileno=self.wfile.fileno(),
                request_fileno=self.request.fileno())
            self.wfile.write(self.rfile.readline())

    for family in (socket.AF_INET, socket.AF_UNIX):
        cls = ss.TCPServer if family == socket.AF_INET else ss.UnixStreamServer
        with closing_server(cls(server_address(family), Handler)) as server:
            assert server.RequestHandlerClass is Handler
            assert server.server_address == server.socket.getsockname()
            with connect(server) as client:
                client.sendall(b"x\n")
                server.handle_request()
                assert recv_until(client) == b"x\n"
                if family == socket.AF_INET:
                    assert seen["client_address"] == client.getsockname()
            assert type(seen["request"]) is socket.socket
            assert seen["server"] is server
            assert seen["connection"] is seen["request"]
            assert seen["rfile_fileno"] == seen["request_fileno"]
            assert seen["wfile_fileno"] == seen["request_fileno"]
            assert seen["rfile"].closed and seen["wfile"].closed
            assert seen["request"].fileno() == -1
