"""The connection preamble (fastserver/preamble.py): per-connection work that
runs in finish_request(), in the request's own thread or process, before the
handler is made. Every test runs on both backends; the PROXY header is the
first step, and a test step (a "HELLO name" line read with the preamble's
deadline) stands for the TLS handshake that will follow it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
import time
from typing import Any, Iterator, List, Optional

import pytest

from conftest import HOST, Impl, recv_until, serving

V1_LINE = b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 8080\r\n"
KINDS = ["sync", "threading", "pool", "forking"]
STEP_LOGGER = "tests.preamble.greeting"


def greeting_step(impl: Impl, timeout: Optional[float]) -> Any:
    """A step that reads "HELLO name\\n" byte by byte off the socket,
    waiting at most until the preamble's deadline."""
    pre = impl.ss.preamble

    class Greeting(pre.PreambleStep):  # type: ignore[name-defined, misc]
        logger = logging.getLogger(STEP_LOGGER)
        started: List[Any] = []

        def __init__(self) -> None:
            self.timeout = timeout

        def __call__(self, state: Any) -> Any:
            type(self).started.append((state.budget, state.remaining()))
            data = b""
            while not data.endswith(b"\n"):
                pre.wait_readable(state.request, state.deadline)
                chunk = state.request.recv(1)
                if not chunk:
                    raise pre.PreambleFailed("closed before the greeting")
                data += chunk
            if data == b"BUG\n":
                raise RuntimeError("a bug in the step")
            if not data.startswith(b"HELLO "):
                raise pre.PreambleFailed("no greeting: %r" % (data,))
            state.attributes["greeting"] = data[6:-1].decode()
            state.attributes["step_context"] = [os.getpid(), threading.get_ident()]
            state.attributes["budget"] = state.budget
            return state

    Greeting.started = []
    return Greeting


def report_handler(impl: Impl) -> Any:
    class Report(impl.ss.StreamRequestHandler):  # type: ignore[name-defined, misc]
        def handle(self) -> None:
            line = self.rfile.readline()
            info = {
                "own_class": type(self) is Report,
                "client": list(self.client_address),
                "proxy": list(self.proxy_address),
                "greeting": self.greeting,
                "step_context": self.step_context,
                "budget": self.budget,
                "handler_context": [os.getpid(), threading.get_ident()],
                "line": line.decode("latin-1"),
            }
            self.wfile.write(json.dumps(info).encode() + b"\n")

    return Report


def server_class(impl: Impl, kind: str, step: Any, errors_path: str) -> Any:
    base = {"sync": impl.ss.TCPServer, "threading": impl.ss.ThreadingTCPServer,
            "pool": impl.ss.ThreadPoolTCPServer,
            "forking": impl.ss.ForkingTCPServer}[kind]

    class Server(impl.ss.ProxyProtocolMixIn, base):  # type: ignore[name-defined, misc]
        trusted_proxies = ["127.0.0.1/32"]
        daemon_threads = True
        loop_thread = 0

        def preamble_steps(self) -> Any:
            return tuple(super().preamble_steps()) + (step(),)

        def serve_forever(self, poll_interval: float = 0.5) -> None:
            self.loop_thread = threading.get_ident()
            super().serve_forever(poll_interval)

        def handle_error(self, request: Any, client_address: Any) -> None:
            # A file, so that a forked child's call is seen too.
            with open(errors_path, "a") as errors:
                errors.write("handle_error %s\n" % (client_address,))

    return Server


@contextlib.contextmanager
def step_log(path: str) -> Iterator[None]:
    """The test step's log lines, in a file (forked children write it too)."""
    logger = logging.getLogger(STEP_LOGGER)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def lines(path: str) -> List[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def talk(server: Any, data: bytes, shut: bool = False) -> bytes:
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        try:
            return recv_until(sock)
        except ConnectionResetError:
            return b""  # closed with bytes unread


@pytest.mark.parametrize("kind", KINDS)
def test_preamble_on_every_server_class(impl: Impl, kind: str, tmp_path: Any) -> None:
    """The header and the next step are read for every server class, in
    the request's own thread (or forked child), before the handler, which
    is the user's class and sees the result before setup()."""
    step = greeting_step(impl, 5.0)
    server = server_class(impl, kind, step, str(tmp_path / "errors"))(
        (HOST, 0), report_handler(impl))
    with serving(server):
        got = json.loads(talk(server, V1_LINE + b"HELLO bob\ndata\n"))
    assert got["own_class"] and got["greeting"] == "bob" and got["line"] == "data\n"
    assert got["client"] == ["192.0.2.7", 51000] and got["proxy"][0] == "127.0.0.1"
    # The step ran where the handler ran.
    assert got["step_context"] == got["handler_context"]
    pid, thread = got["handler_context"]
    if kind == "forking":
        assert pid != os.getpid()
    else:
        assert pid == os.getpid()
        # A synchronous server serves in its loop; the others never do.
        assert (thread == server.loop_thread) == (kind == "sync")
    assert got["budget"] == 8.0  # 3 s for the header + 5 s: one budget
    assert lines(str(tmp_path / "errors")) == []


@pytest.mark.parametrize("kind", KINDS)
def test_failure_closes_logs_once_and_serves_on(impl: Impl, kind: str,
                                                tmp_path: Any) -> None:
    log_path, errors_path = str(tmp_path / "log"), str(tmp_path / "errors")
    step = greeting_step(impl, 5.0)
    server = server_class(impl, kind, step, errors_path)((HOST, 0), report_handler(impl))
    with step_log(log_path):
        with serving(server):
            assert talk(server, V1_LINE + b"BYE\n", shut=True) == b""
            got = json.loads(talk(server, V1_LINE + b"HELLO ann\nnext\n"))
            assert got["greeting"] == "ann" and got["line"] == "next\n"
    assert lines(log_path) == [
        "WARNING dropped connection from 192.0.2.7:51000: no greeting: b'BYE\\n'"]
    assert lines(errors_path) == []


def test_a_bug_in_a_step_reaches_handle_error(impl: Impl, tmp_path: Any) -> None:
    """Only PreambleFailed and OSError are a client's failure; anything else
    is the server's bug and reported as a handler's would be."""
    log_path, errors_path = str(tmp_path / "log"), str(tmp_path / "errors")
    server = server_class(impl, "threading", greeting_step(impl, 5.0), errors_path)(
        (HOST, 0), report_handler(impl))
    with step_log(log_path):
        with serving(server):
            assert talk(server, V1_LINE + b"BUG\n", shut=True) == b""
            assert json.loads(talk(server, V1_LINE + b"HELLO x\ny\n"))["line"] == "y\n"
    # handle_error() is given what process_request() was: the real peer.
    [error] = lines(errors_path)
    assert error.startswith("handle_error ('127.0.0.1', ")
    assert lines(log_path) == []


def test_one_deadline_for_the_whole_preamble(impl: Impl, tmp_path: Any) -> None:
    """The budget is the steps' timeouts together (0.5 s + 1.5 s) and the
    deadline is one: the header may take longer than its own 0.5 s, and
    the next step gets only what is left, not a fresh 1.5 s."""
    log_path = str(tmp_path / "log")
    step = greeting_step(impl, 1.5)
    cls = server_class(impl, "threading", step, str(tmp_path / "errors"))
    cls.proxy_timeout = 0.5
    server = cls((HOST, 0), report_handler(impl))
    with step_log(log_path):
        with serving(server):
            with socket.create_connection(server.server_address, timeout=10) as sock:
                start = time.monotonic()
                time.sleep(1.0)  # the header arrives after its own share
                sock.sendall(V1_LINE)  # and the greeting never does
                try:
                    assert recv_until(sock) == b""
                except ConnectionResetError:
                    pass
                elapsed = time.monotonic() - start
    [(budget, remaining)] = step.started
    assert budget == 2.0 and remaining < 1.5
    # The deadline, counted from the preamble's start (after the connect),
    # is what closed it: never before 2 s.
    assert 2.0 <= elapsed < 6.0, elapsed
    assert lines(log_path) == [
        "WARNING dropped connection from 192.0.2.7:51000: deadline passed"]


def test_process_request_overrides_keep_the_preamble(impl: Impl, tmp_path: Any) -> None:
    """An override of process_request_thread / process_request that still
    calls finish_request() keeps the preamble: it lives in finish_request."""
    step = greeting_step(impl, 5.0)
    calls: List[str] = []

    threaded = server_class(impl, "threading", step, str(tmp_path / "e1"))

    class OwnThread(threaded):  # type: ignore[misc, valid-type]
        def process_request_thread(self, request: Any, client_address: Any) -> None:
            calls.append("thread")
            try:
                self.finish_request(request, client_address)
            finally:
                self.shutdown_request(request)

    synchronous = server_class(impl, "sync", step, str(tmp_path / "e2"))

    class OwnProcess(synchronous):  # type: ignore[misc, valid-type]
        def process_request(self, request: Any, client_address: Any) -> None:
            calls.append("process")
            self.finish_request(request, client_address)
            self.shutdown_request(request)

    for cls in (OwnThread, OwnProcess):
        server = cls((HOST, 0), report_handler(impl))
        with serving(server):
            got = json.loads(talk(server, V1_LINE + b"HELLO o\nz\n"))
        assert got["client"][0] == "192.0.2.7" and got["greeting"] == "o"
    assert calls == ["thread", "process"]


def test_a_step_may_replace_the_request_socket(impl: Impl) -> None:
    """As a TLS step will: the handler gets the replacement, and the stage
    closes it after the handler (the original was detached)."""
    pre = impl.ss.preamble
    seen: List[Any] = []

    class Rewrap(pre.PreambleStep):  # type: ignore[name-defined, misc]
        timeout = 5.0

        def __call__(self, state: Any) -> Any:
            original = state.request
            fd = original.detach()
            state.request = socket.socket(original.family, original.type, fileno=fd)
            seen.append(state.request)
            return state

    class Echo(impl.ss.StreamRequestHandler):  # type: ignore[name-defined, misc]
        def handle(self) -> None:
            seen.append(self.request)
            self.wfile.write(self.rfile.readline())

    class Server(impl.ss.ThreadingTCPServer):  # type: ignore[name-defined, misc]
        daemon_threads = True

        def preamble_steps(self) -> Any:
            return (Rewrap(),)

    with serving(Server((HOST, 0), Echo)) as server:
        with socket.create_connection(server.server_address, timeout=10) as sock:
            sock.sendall(b"echo\n")
            assert recv_until(sock) == b"echo\n"
            # EOF: only the stage could close it, the original fd is gone.
            assert sock.recv(1) == b""
    replacement, handled = seen
    assert handled is replacement and replacement.fileno() == -1


def test_handler_from_outside_fastserver(impl: Impl) -> None:
    """A stdlib socketserver handler gets the header's client as its
    client_address, and the rest through preamble.current()."""
    pre = impl.ss.preamble

    class Stdlib(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            state = pre.current()
            header = state.attributes["proxy_header"]
            self.wfile.write(b"%s %d %s" % (self.client_address[0].encode(),
                                            header.version, self.rfile.readline()))

    cls = type("S", (impl.ss.ProxyProtocolMixIn, impl.ss.ThreadingTCPServer),
               {"trusted_proxies": ["127.0.0.1"], "daemon_threads": True})
    with serving(cls((HOST, 0), Stdlib)) as server:
        assert talk(server, V1_LINE + b"hi\n") == b"192.0.2.7 1 hi\n"
    assert pre.current() is None


def test_no_steps_by_default(impl: Impl) -> None:
    for name in ("TCPServer", "ThreadingTCPServer", "ThreadPoolTCPServer",
                 "ForkingTCPServer", "UDPServer", "UnixStreamServer"):
        assert getattr(impl.ss, name).preamble_steps(None) == ()
