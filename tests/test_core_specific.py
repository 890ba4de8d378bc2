"""The core interface (fastserver._pure / fastserver._core) tested directly.

Most tests run on both backends through the ``impl`` fixture; the few that
look at how the C core chooses its path run on the cython backend only.
"""

from __future__ import annotations

import array
import errno
import io
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import pytest

from conftest import FASTSERVER_IMPLS, HOST, unix_path


def core_of(impl: Any) -> Any:
    return impl.core


# Tests of the C path itself run on the cython backend only (and are not
# generated at all where it is not built).
on_cython = pytest.mark.parametrize(
    "impl", [p for p in FASTSERVER_IMPLS if p.id == "cython"])


# --- the interface -------------------------------------------------------------

def test_stream_objects_are_buffered_io(impl: Any) -> None:
    core = core_of(impl)
    a, b = socket.socketpair()
    with a, b:
        for limit in (0, 100):
            rfile, wfile = core.open_stream(a, -1, 0, limit)
            assert isinstance(rfile, io.BufferedIOBase)
            assert isinstance(wfile, io.BufferedIOBase)
            assert rfile.readable() and not rfile.writable() and not rfile.seekable()
            assert wfile.writable() and not wfile.readable()
            assert rfile.fileno() == wfile.fileno() == a.fileno()
            wfile.close()
            rfile.close()
            assert rfile.closed and wfile.closed
            with pytest.raises(ValueError):
                rfile.readline()
            if limit:
                with pytest.raises(ValueError):
                    wfile.write(b"x")


# --- accept ------------------------------------------------------------------

def _listener(family: int) -> Any:
    sock = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_UNIX:
        sock.bind(unix_path())
    else:
        sock.bind(("::1" if family == socket.AF_INET6 else HOST, 0))
    sock.listen(8)
    return sock


# AF_UNIX abstract names are a Linux kernel feature.
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="abstract AF_UNIX names are Linux-only")


@pytest.mark.parametrize("family,client_name", [
    (socket.AF_INET, None), (socket.AF_INET6, None), (socket.AF_UNIX, None),
    pytest.param(socket.AF_UNIX, "abstract", marks=linux_only)],
    ids=["inet", "inet6", "unix", "unix-abstract"])
def test_accept_matches_socket_accept(impl: Any, family: int, client_name: Any) -> None:
    core = core_of(impl)
    lsock = _listener(family)
    try:
        results = []
        for accept in (core.accept, socket.socket.accept):
            client = socket.socket(family, socket.SOCK_STREAM)
            if client_name:
                client.bind(b"\0fs-test-%d-%d" % (os.getpid(), len(results)))
            client.connect(lsock.getsockname())
            conn, addr = accept(lsock)
            with conn, client:
                expected = client.getsockname()
                if family == socket.AF_UNIX and not client_name:
                    expected = ""
                assert addr == expected
                assert type(conn) is socket.socket
                assert (conn.family, conn.type, conn.proto) == \
                    (lsock.family, lsock.type, lsock.proto)
                assert conn.get_inheritable() is False
                assert conn.gettimeout() is None
                conn.sendall(b"ping")
                assert client.recv(4) == b"ping"
                results.append(type(addr))
        assert results[0] is results[1]
    finally:
        name = lsock.getsockname()
        lsock.close()
        if isinstance(name, str) and name:
            os.unlink(name)


def test_accept_timeouts(impl: Any) -> None:
    core = core_of(impl)
    with _listener(socket.AF_INET) as lsock:
        lsock.settimeout(0.0)
        with pytest.raises(BlockingIOError):
            core.accept(lsock)
        lsock.settimeout(0.05)
        start = time.monotonic()
        with pytest.raises(socket.timeout):
            core.accept(lsock)
        assert time.monotonic() - start >= 0.04
        client = socket.create_connection(lsock.getsockname())
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(2.5)
        try:
            conn, _ = core.accept(lsock)
        finally:
            socket.setdefaulttimeout(previous)
        with conn, client:
            assert conn.gettimeout() == 2.5
        client = socket.create_connection(lsock.getsockname())
        conn, _ = core.accept(lsock)   # listening timeout, default None
        with conn, client:
            assert conn.gettimeout() is None and conn.getblocking()


def test_accept_falls_back_for_overriding_subclass(impl: Any) -> None:
    core = core_of(impl)
    calls = []

    class Tracking(socket.socket):
        def accept(self):  # type: ignore[override]
            calls.append(1)
            return super().accept()

    lsock = Tracking(socket.AF_INET, socket.SOCK_STREAM)
    with lsock:
        lsock.bind((HOST, 0))
        lsock.listen()
        client = socket.create_connection(lsock.getsockname())
        conn, _ = core.accept(lsock)
        conn.close()
        client.close()
    assert calls == [1]


def test_accept_eintr_retries_and_handler_exception_propagates(impl: Any) -> None:
    core = core_of(impl)
    # Python runs signal handlers in the main thread only.
    assert threading.current_thread() is threading.main_thread()
    hits = []

    def handler(signum: int, frame: Any) -> None:
        hits.append(signum)
        if len(hits) == 3:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with _listener(socket.AF_INET) as lsock:
            signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
            with pytest.raises(KeyboardInterrupt):
                core.accept(lsock)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(hits) >= 3


# --- the stream reader ---------------------------------------------------------

def test_rfile_keeps_socket_open_like_makefile(impl: Any) -> None:
    core = core_of(impl)
    a, b = socket.socketpair()
    rfile, wfile = core.open_stream(a, -1, 0, 0)
    wfile.close()
    fd = a.fileno()
    a.close()                      # the rfile still holds the descriptor
    b.sendall(b"line\n")
    assert rfile.readline() == b"line\n"
    os.fstat(fd)
    rfile.close()                  # the last file: the descriptor closes
    with pytest.raises(OSError):
        os.fstat(fd)
    b.close()


def test_rfile_eintr_loses_nothing(impl: Any) -> None:
    core = core_of(impl)
    # Python runs signal handlers in the main thread only.
    assert threading.current_thread() is threading.main_thread()
    hits = []
    old = signal.signal(signal.SIGALRM, lambda *args: hits.append(1))
    a, b = socket.socketpair()
    payload = b"".join(b"%d\n" % i for i in range(2000))

    def feed() -> None:
        for i in range(0, len(payload), 97):
            b.sendall(payload[i:i + 97])
            time.sleep(0.0005)
        b.shutdown(socket.SHUT_WR)

    rfile, wfile = core.open_stream(a, 64, 0, 0)
    thread = threading.Thread(target=feed)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
        thread.start()
        got = b"".join(iter(rfile.readline, b""))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        thread.join()
        rfile.close()
        wfile.close()
        a.close()
        b.close()
    assert got == payload
    assert hits


def test_rfile_honours_settimeout_after_open(impl: Any) -> None:
    core = core_of(impl)
    a, b = socket.socketpair()
    with a, b:
        rfile, wfile = core.open_stream(a, -1, 0, 0)
        a.settimeout(0.05)
        with pytest.raises(socket.timeout):
            rfile.readline()
        with pytest.raises(OSError, match="timed out object"):
            rfile.read(1)
        rfile.close()
        wfile.close()


@on_cython
@pytest.mark.parametrize("rbufsize", [0, -1])
def test_open_stream_paths(impl: Any, rbufsize: int) -> None:
    core = core_of(impl)
    a, b = socket.socketpair()
    with a, b:
        rfile, wfile = core.open_stream(a, rbufsize, 0, 0)
        c_path = rbufsize != 0
        assert (type(rfile).__module__ == "fastserver._core") is c_path
        rfile.close()
        wfile.close()
        a.settimeout(0.0)
        rfile, wfile = core.open_stream(a, -1, 0, 0)
        assert isinstance(rfile, io.BufferedReader)   # non-blocking: pure
        rfile.close()


def test_open_stream_falls_back_for_overriding_socket(impl: Any) -> None:
    core = core_of(impl)
    seen = []

    class Wrapped(socket.socket):
        def recv_into(self, *args: Any) -> int:  # type: ignore[override]
            seen.append("recv_into")
            return super().recv_into(*args)

        def sendall(self, *args: Any) -> None:  # type: ignore[override]
            seen.append("sendall")
            return super().sendall(*args)

    a, b = socket.socketpair()
    w = Wrapped(a.family, a.type, a.proto, fileno=a.detach())
    with w, b:
        rfile, wfile = core.open_stream(w, -1, 0, 0)
        wfile.write(b"x")
        b.sendall(b"y\n")
        assert rfile.readline() == b"y\n"
        assert b.recv(1) == b"x"
        rfile.close()
        wfile.close()
    assert "recv_into" in seen and "sendall" in seen


# --- the writers ---------------------------------------------------------------

def test_socket_writer(impl: Any) -> None:
    core = core_of(impl)
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(5)
        w = core.SocketWriter(a)
        assert w.write(b"ab") == 2
        assert w.write(bytearray(b"cd")) == 2
        assert w.write(memoryview(b"xxef")[2:]) == 2
        assert w.write(array.array("i", [1])) == 4
        assert b.recv(100) == b"abcdef" + array.array("i", [1]).tobytes()
        big = os.urandom(4 << 20)   # far beyond the socket buffer: partial sends
        received = []
        t = threading.Thread(target=lambda: received.append(
            b"".join(iter(lambda: b.recv(1 << 16), b""))))
        t.start()
        assert w.write(big) == len(big)
        a.shutdown(socket.SHUT_WR)
        t.join(10)
        assert received == [big]
        with pytest.raises(TypeError):
            w.write("text")
        w.close()
        assert w.closed
        with pytest.raises(OSError):   # no closed check: the socket decides
            w.write(b"x")


def test_socket_writer_timeout(impl: Any) -> None:
    core = core_of(impl)
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(0.05)
        w = core.SocketWriter(a)
        with pytest.raises(socket.timeout):
            w.write(b"x" * (16 << 20))


def test_coalescing_writer_flushes_before_reading(impl: Any) -> None:
    core = core_of(impl)
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(5)
        rfile, wfile = core.open_stream(a, -1, 0, 1000)
        assert wfile.write(b"hello ") == 6
        assert wfile.write(memoryview(b"world")) == 5
        assert wfile.pending == 11
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(100)
        b.settimeout(5)
        b.sendall(b"req\n")
        assert rfile.readline() == b"req\n"   # had to recv: flushed first
        assert b.recv(100) == b"hello world"
        assert wfile.pending == 0
        wfile.write(b"x" * 999)
        assert wfile.pending == 999
        wfile.write(b"y")                     # reaches the limit
        assert wfile.pending == 0
        received = b""
        while len(received) < 1000:
            received += b.recv(10000)
        assert received == b"x" * 999 + b"y"
        wfile.write(b"tail")
        wfile.close()                         # close sends
        rfile.close()
        a.close()
        data = b"".join(iter(lambda: b.recv(10000), b""))
        assert data.endswith(b"tail")
        with pytest.raises(ValueError, match="flush of closed file"):
            wfile.flush()


# --- datagrams -----------------------------------------------------------------

def _dgram_pair(family: int) -> Any:
    server = socket.socket(family, socket.SOCK_DGRAM)
    client = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_UNIX:
        server.bind(unix_path())
        client.bind(unix_path())
    else:
        host = "::1" if family == socket.AF_INET6 else HOST
        server.bind((host, 0))
        client.bind((host, 0))
    return server, client


def _close_dgram(*socks: socket.socket) -> None:
    for s in socks:
        name = s.getsockname()
        s.close()
        if isinstance(name, str) and name:
            os.unlink(name)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6, socket.AF_UNIX],
                         ids=["inet", "inet6", "unix"])
def test_datagram_receiver_batches_and_formats(impl: Any, family: int) -> None:
    core = core_of(impl)
    server, client = _dgram_pair(family)
    try:
        server.settimeout(5)
        receiver = core.DatagramReceiver(server)
        assert receiver.sock is server
        for i in range(10):
            client.sendto(b"%d" % i + b"x" * (i * 3), server.getsockname())
        time.sleep(0.05)
        got = [receiver.recv(8) for _ in range(10)]
        assert [data for data, _ in got] == \
            [(b"%d" % i + b"x" * (i * 3))[:8] for i in range(10)]
        assert {addr for _, addr in got} == {client.getsockname()}
        if impl.name == "cython":
            client.sendto(b"a", server.getsockname())
            client.sendto(b"b", server.getsockname())
            time.sleep(0.05)
            assert receiver.recv(100)[0] == b"a"
            assert receiver.pending == 1
            assert receiver.recv(100)[0] == b"b"
        assert receiver.pending == 0
        server.settimeout(0.05)
        with pytest.raises(socket.timeout):
            receiver.recv(100)
        server.settimeout(0.0)
        with pytest.raises(BlockingIOError):
            receiver.recv(100)
    finally:
        _close_dgram(server, client)


@linux_only
def test_datagram_receiver_unix_unbound_and_abstract(impl: Any) -> None:
    core = core_of(impl)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(unix_path())
    server.settimeout(5)
    receiver = core.DatagramReceiver(server)
    unbound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(b"\0fs-dgram-%d" % os.getpid())
    try:
        unbound.sendto(b"1", server.getsockname())
        abstract.sendto(b"2", server.getsockname())
        assert receiver.recv(10) == (b"1", None)
        assert receiver.recv(10) == (b"2", abstract.getsockname())
    finally:
        unbound.close()
        abstract.close()
        _close_dgram(server)
