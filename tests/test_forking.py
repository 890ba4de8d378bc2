"""ForkingMixIn and the four forking servers, against the stdlib's behaviour.

Every test runs on each fastserver backend and on socketserver itself
(``ref_impl``). Children are observed from the parent with waitpid/waitid and
through pipes they inherit, never through shared memory.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Iterator, List, Set, Tuple

import pytest

from conftest import (Impl, close_dgram_client, closing_server, connect,
                      dgram_client, recv_all, recv_until, server_address,
                      serving)

STREAM_KINDS = ["ForkingTCPServer", "ForkingUnixStreamServer"]
DGRAM_KINDS = ["ForkingUDPServer", "ForkingUnixDatagramServer"]
ALL_KINDS = STREAM_KINDS + DGRAM_KINDS


# socketserver gained the two Unix forking servers in Python 3.12; on older
# interpreters the reference is the same composition 3.12 defines.
_COMPOSED = {"ForkingUnixStreamServer": "UnixStreamServer",
             "ForkingUnixDatagramServer": "UnixDatagramServer"}


def server_class(impl: Impl, kind: str) -> Any:
    cls = getattr(impl.ss, kind, None)
    if cls is None and impl.is_stdlib and kind in _COMPOSED:
        cls = type(kind, (impl.ss.ForkingMixIn, getattr(impl.ss, _COMPOSED[kind])),
                   {})
    assert cls is not None, "%s has no %s" % (impl, kind)
    return cls


def is_reaped(pid: int) -> bool:
    """True once pid is no child of ours any more (reaped by someone)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def wait_exited(pid: int, timeout: float = 10.0) -> None:
    """Wait until child pid has exited, without reaping it."""
    deadline = time.monotonic() + timeout
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        assert time.monotonic() < deadline, "child %d did not exit" % pid
        time.sleep(0.005)


def read_pipe_line(fd: int, timeout: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        assert remaining > 0, "nothing on the pipe: %r" % data
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, "pipe closed early: %r" % data
            data += chunk
    return data


def kill_children(pids: Any) -> None:
    for pid in list(pids or ()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


@contextlib.contextmanager
def pipe() -> Iterator[Tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


def echo_handler(impl: Impl, kind: str) -> Any:
    """A handler that answers "<pid of the handling process> <request>"."""
    ss = impl.ss
    if kind in STREAM_KINDS:
        class StreamEcho(ss.StreamRequestHandler):  # type: ignore[name-defined]
            def handle(self) -> None:
                line = self.rfile.readline()
                self.wfile.write(b"%d %s" % (os.getpid(), line))
        return StreamEcho

    class DgramEcho(ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            self.wfile.write(b"%d %s" % (os.getpid(), self.rfile.read()))
    return DgramEcho


def make_echo_server(impl: Impl, kind: str) -> Any:
    cls = server_class(impl, kind)
    return cls(server_address(cls.address_family), echo_handler(impl, kind))


def echo_once(server: Any, kind: str, payload: bytes) -> Tuple[int, bytes]:
    """One request through server; returns (pid of the handler, echo)."""
    if kind in STREAM_KINDS:
        with connect(server) as sock:
            sock.sendall(payload + b"\n")
            reply = recv_until(sock)
        pid, _, echo = reply.partition(b" ")
        assert echo.endswith(b"\n"), reply
        return int(pid), echo[:-1]
    client = dgram_client(server)
    try:
        client.sendto(payload, server.server_address)
        reply, source = client.recvfrom(65536)
    finally:
        close_dgram_client(client)
    assert source == server.server_address
    pid, _, echo = reply.partition(b" ")
    return int(pid), echo


# --- class attributes ------------------------------------------------------


def serve_one_client(stack: contextlib.ExitStack, server: Any, kind: str) -> None:
    """Serve server in a thread and start one request on it, both undone
    when stack closes."""
    stack.enter_context(serving(server, poll_interval=0.02))
    if kind in STREAM_KINDS:
        stack.enter_context(connect(server))
    else:
        client = dgram_client(server)
        stack.callback(close_dgram_client, client)
        client.sendto(b"go", server.server_address)

def test_forking_mixin_defaults(ref_impl: Impl) -> None:
    mixin = ref_impl.ss.ForkingMixIn
    assert mixin.timeout == 300
    assert mixin.max_children == 40
    assert mixin.block_on_close is True
    assert mixin.active_children is None
    for kind in ALL_KINDS:
        cls = server_class(ref_impl, kind)
        assert issubclass(cls, mixin)
        assert cls.__mro__.index(mixin) < cls.__mro__.index(ref_impl.ss.TCPServer)
    assert ref_impl.ss.ForkingUDPServer.socket_type == socket.SOCK_DGRAM
    assert server_class(ref_impl, "ForkingUnixDatagramServer").address_family == socket.AF_UNIX


# --- echo ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_echo_in_a_child(ref_impl: Impl, kind: str) -> None:
    server = make_echo_server(ref_impl, kind)
    try:
        with serving(server, poll_interval=0.02):
            pids = set()
            for i in range(5):
                pid, echo = echo_once(server, kind, b"hello %d" % i)
                assert echo == b"hello %d" % i
                assert pid != os.getpid()
                pids.add(pid)
            assert len(pids) == 5  # a fresh process per request
    finally:
        kill_children(server.active_children)


# --- reaping ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_children_are_reaped(ref_impl: Impl, kind: str) -> None:
    server = make_echo_server(ref_impl, kind)
    try:
        with serving(server, poll_interval=0.02):
            pids = [echo_once(server, kind, b"x%d" % i)[0] for i in range(6)]
        # service_actions() in serve_forever, then server_close() (which
        # blocks on close) reaped every child: no zombie is left
        assert server.active_children == set()
        for pid in pids:
            assert is_reaped(pid), "pid %d left unreaped (zombie)" % pid
    finally:
        kill_children(server.active_children)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_active_children_tracks_the_forked_pids(ref_impl: Impl, kind: str) -> None:
    recorded: List[Set[int]] = []
    base = server_class(ref_impl, kind)

    class Recording(base):  # type: ignore[misc, valid-type]
        def process_request(self, request: Any, client_address: Any) -> None:
            super().process_request(request, client_address)
            recorded.append(set(self.active_children))

    server = Recording(server_address(base.address_family),
                       echo_handler(ref_impl, kind))
    assert server.active_children is None  # nothing forked yet
    try:
        with closing_server(server):
            served = []
            for i in range(3):
                t = threading.Thread(target=server.handle_request)
                t.start()
                pid, echo = echo_once(server, kind, b"r%d" % i)
                t.join(10)
                assert echo == b"r%d" % i
                served.append(pid)
                # handle_request() alone does not reap: the child stays
                assert pid in recorded[-1]
                assert server.active_children == set(served)
            assert not any(is_reaped(pid) for pid in served)
        # server_close() waited for and reaped them all
        assert server.active_children == set()
        assert all(is_reaped(pid) for pid in served)
    finally:
        kill_children(server.active_children)


# --- max_children ----------------------------------------------------------

@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_max_children_is_respected(ref_impl: Impl, kind: str) -> None:
    ss = ref_impl.ss
    base = server_class(ref_impl, kind)
    sizes: List[int] = []
    nclients = 5

    class Blocking(ss.StreamRequestHandler):  # type: ignore[name-defined]
        timeout = 10  # a child never outlives a failed test by long

        def handle(self) -> None:
            self.wfile.write(b"start %d\n" % os.getpid())
            self.rfile.readline()  # until the test releases this client
            self.wfile.write(b"done\n")

    class Limited(base):  # type: ignore[misc, valid-type]
        max_children = 2
        request_queue_size = 16

        def process_request(self, request: Any, client_address: Any) -> None:
            super().process_request(request, client_address)
            sizes.append(len(self.active_children))

    server = Limited(server_address(base.address_family), Blocking)
    clients: List[socket.socket] = []
    started: Dict[socket.socket, int] = {}  # client -> pid of its child

    def wait_started(count: int, timeout: float) -> int:
        """Collect "start" lines until count clients have one, or timeout."""
        deadline = time.monotonic() + timeout
        while len(started) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waiting = [c for c in clients if c not in started]
            ready, _, _ = select.select(waiting, [], [], remaining)
            for c in ready:
                line = recv_until(c)
                assert line.startswith(b"start "), line
                started[c] = int(line.split()[1])
        return len(started)

    try:
        with serving(server, poll_interval=0.02):
            try:
                clients = [connect(server) for _ in range(nclients)]
                assert wait_started(2, 10) == 2
                # the parent now blocks in collect_children(): no third child
                assert wait_started(3, 0.3) == 2, "a third child ran beside two"
                for finished in range(1, nclients + 1):
                    running = [c for c in started if c.fileno() != -1]
                    assert 1 <= len(running) <= 2, len(running)
                    c = running[0]
                    c.sendall(b"bye\n")
                    assert recv_until(c) == b"done\n"
                    assert c.recv(1) == b""  # the child shut down the connection
                    c.close()
                    # one child is gone: exactly one more may start
                    expected = min(nclients, finished + 2)
                    assert wait_started(expected, 10) == expected
                    assert wait_started(expected + 1, 0.05) == expected
            except BaseException:
                # unblock serve_forever and server_close(): the children
                # hold copies of each other's client sockets
                for c in clients:
                    c.close()
                kill_children(set(started.values()) |
                              set(server.active_children or ()))
                raise
        assert len(sizes) == nclients, sizes
        assert max(sizes) == 2, sizes
        assert len(set(started.values())) == nclients
    finally:
        for c in clients:
            c.close()
        kill_children(server.active_children)


# --- the parent's copy of the connection -----------------------------------

@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_parent_close_does_not_end_the_connection(ref_impl: Impl, kind: str) -> None:
    ss = ref_impl.ss
    base = server_class(ref_impl, kind)
    payload = os.urandom(200_000)
    parent = os.getpid()

    with pipe() as (r, w):
        class Late(ss.StreamRequestHandler):  # type: ignore[name-defined]
            def handle(self) -> None:
                # wait until the parent has closed its copy of the socket
                if read_pipe_line(r) != b"closed\n":
                    raise AssertionError("no word from the parent")
                time.sleep(0.05)
                self.wfile.write(payload)

        class Signalling(base):  # type: ignore[misc, valid-type]
            def close_request(self, request: Any) -> None:
                super().close_request(request)
                if os.getpid() == parent:
                    assert request.fileno() == -1
                    os.write(w, b"closed\n")

        server = Signalling(server_address(base.address_family), Late)
        try:
            with serving(server, poll_interval=0.02):
                with connect(server) as sock:
                    assert recv_all(sock) == payload
        finally:
            kill_children(server.active_children)


# --- server_close and block_on_close ---------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_server_close_waits_for_children(ref_impl: Impl, kind: str) -> None:
    ss = ref_impl.ss
    base = server_class(ref_impl, kind)
    marker = tempfile.mktemp(prefix="fs-fork-", dir="/tmp")

    # report: child -> test; release: test -> child
    with pipe() as (r, w), pipe() as (release_r, release_w):
        class Slow(ss.BaseRequestHandler):  # type: ignore[name-defined]
            def handle(self) -> None:
                os.write(w, b"%d\n" % os.getpid())
                select.select([release_r], [], [], 10)  # until the test writes
                time.sleep(0.2)
                with open(marker, "w") as f:
                    f.write("done")

        server = base(server_address(base.address_family), Slow)
        assert server.block_on_close is True
        pid = None
        try:
            with contextlib.ExitStack() as stack:
                serve_one_client(stack, server, kind)
                pid = int(read_pipe_line(r))
                assert not os.path.exists(marker)
                os.write(release_w, b"x")  # the child finishes 0.2 s from now
            # serving() ended with server_close(): the child had finished
            # and was reaped by then
            assert os.path.exists(marker)
            assert is_reaped(pid)
            assert server.active_children == set()
        finally:
            if pid is not None:
                kill_children([pid])
            with contextlib.suppress(OSError):
                os.unlink(marker)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_server_close_without_block_on_close(ref_impl: Impl, kind: str) -> None:
    ss = ref_impl.ss
    base = server_class(ref_impl, kind)

    # report: child -> test; release: test -> child
    with pipe() as (r, w), pipe() as (release_r, release_w):
        class Stuck(ss.BaseRequestHandler):  # type: ignore[name-defined]
            def handle(self) -> None:
                os.write(w, b"%d\n" % os.getpid())
                select.select([release_r], [], [], 10)  # until the test writes

        class NonBlocking(base):  # type: ignore[misc, valid-type]
            block_on_close = False

        server = NonBlocking(server_address(base.address_family), Stuck)
        pid = None
        try:
            with contextlib.ExitStack() as stack:
                serve_one_client(stack, server, kind)
                pid = int(read_pipe_line(r))
            # serving() returned: server_close() did not wait for the child
            assert server.socket.fileno() == -1
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), "child not running"
            assert server.active_children == {pid}
            os.write(release_w, b"x")  # let the child finish
            reaped, status = os.waitpid(pid, 0)
            assert reaped == pid
            assert os.waitstatus_to_exitcode(status) == 0
        finally:
            if pid is not None:
                kill_children([pid])


# --- errors and exit status in the child -----------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("outcome", ["ok", "exception", "system-exit"])
def test_child_exit_status_and_handle_error(ref_impl: Impl, kind: str,
                                            outcome: str) -> None:
    ss = ref_impl.ss
    base = server_class(ref_impl, kind)
    stream = kind in STREAM_KINDS
    parent = os.getpid()

    with pipe() as (r, w):
        class Handler(ss.BaseRequestHandler):  # type: ignore[name-defined]
            def handle(self) -> None:
                os.write(w, b"handle %d\n" % os.getpid())
                if outcome == "exception":
                    raise ValueError("boom")
                if outcome == "system-exit":
                    raise SystemExit(7)

        class Reporting(base):  # type: ignore[misc, valid-type]
            def handle_error(self, request: Any, client_address: Any) -> None:
                exc = sys.exc_info()[1]
                os.write(w, b"error %d %s\n" % (os.getpid(),
                                                type(exc).__name__.encode()))

        server = Reporting(server_address(base.address_family), Handler)
        try:
            with closing_server(server):
                if stream:
                    client = connect(server)
                else:
                    client = dgram_client(server)
                    client.sendto(b"go", server.server_address)
                try:
                    server.handle_request()
                    assert server.active_children is not None
                    assert len(server.active_children) == 1
                    pid = next(iter(server.active_children))
                    assert pid != parent
                    reaped, status = os.waitpid(pid, 0)
                    assert reaped == pid
                    code = os.waitstatus_to_exitcode(status)
                    if stream:
                        # the child's shutdown_request() ended the connection
                        assert client.recv(1) == b""
                finally:
                    if stream:
                        client.close()
                    else:
                        close_dgram_client(client)
            # the child has exited: all it wrote is in the pipe
            os.set_blocking(r, False)
            written = b""
            with contextlib.suppress(BlockingIOError):
                while True:
                    written += os.read(r, 4096)
        finally:
            kill_children(server.active_children)

    lines = written.splitlines()
    assert lines[:1] == [b"handle %d" % pid]
    if outcome == "ok":
        assert code == 0
        assert lines[1:] == []
    elif outcome == "exception":
        assert code == 1
        # handle_error() ran in the child, on the handler's exception
        assert lines[1:] == [b"error %d ValueError" % pid]
    else:
        # SystemExit is no Exception: no handle_error(), and status 1
        assert code == 1
        assert lines[1:] == []


# --- handle_timeout --------------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_handle_timeout_collects_children(ref_impl: Impl, kind: str) -> None:
    base = server_class(ref_impl, kind)
    timeouts: List[int] = []

    class Timing(base):  # type: ignore[misc, valid-type]
        def handle_timeout(self) -> None:
            timeouts.append(len(self.active_children or ()))
            super().handle_timeout()

    server = Timing(server_address(base.address_family),
                    echo_handler(ref_impl, kind))
    try:
        with closing_server(server):
            t = threading.Thread(target=server.handle_request)
            t.start()
            pid, echo = echo_once(server, kind, b"ping")
            t.join(10)
            assert echo == b"ping"
            assert timeouts == []
            assert server.active_children == {pid}
            wait_exited(pid)  # a zombie now, not reaped yet
            assert not is_reaped(pid)
            server.timeout = 0.05
            server.handle_request()  # nothing comes: handle_timeout()
            assert timeouts == [1]
            assert server.active_children == set()
            assert is_reaped(pid)
    finally:
        kill_children(server.active_children)
