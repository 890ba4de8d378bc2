"""Both core modules against fastserver._contract: every Protocol member is
present, and each behaves as the contract says, driven directly with real
sockets. Where the cores differ on purpose, see test_core_discrepancies."""

from __future__ import annotations

import errno
import socket
import threading
import time
import typing
from types import ModuleType
from typing import Any, List

import pytest

from conftest import HOST
from core_modules import LoopServer, core  # noqa: F401 - core: the fixture

from fastserver import _contract


def members(protocol: type) -> List[str]:
    """The members a Protocol declares (its own and its bases')."""
    names = set()
    for cls in protocol.__mro__:
        if cls in (object, typing.Protocol, typing.Generic):
            continue
        names.update(getattr(cls, "__annotations__", {}))
        names.update(name for name in vars(cls)
                     if not name.startswith("_") or name == "__iter__")
    return sorted(names)


def test_module_exports_the_interface(core: ModuleType) -> None:
    assert sorted(core.__all__) == sorted(_contract.INTERFACE)
    for name in members(_contract.Core):
        assert hasattr(core, name), name
    assert core.BACKEND in ("cython", "python")
    assert core.RESOURCE_ERRNOS is _contract.RESOURCE_ERRNOS
    assert (core.BACKOFF_FIRST, core.BACKOFF_MAX) == \
        (_contract.BACKOFF_FIRST, _contract.BACKOFF_MAX)


def test_objects_satisfy_their_protocols(core: ModuleType) -> None:
    a, b = socket.socketpair()
    d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a, b, d:
        assert isinstance(core.ServeLoop(), _contract.ServeLoop)
        assert isinstance(core.DatagramReceiver(d), _contract.DatagramReceiver)
        assert isinstance(core.SocketWriter(a), _contract.SocketWriter)
        assert isinstance(core.CoalescingWriter(a, 10), _contract.CoalescingWriter)
        for rbufsize, limit in ((-1, 0), (0, 0), (16, 100), (0, 100)):
            rfile, wfile = core.open_stream(a, rbufsize, 0, limit)
            if rbufsize:
                assert isinstance(rfile, _contract.StreamReader)
            for name in members(_contract.StreamReader) if rbufsize else ():
                assert hasattr(rfile, name), name
            expected = _contract.CoalescingWriter if limit else _contract.SocketWriter
            assert isinstance(wfile, expected)
            wfile.close()
            rfile.close()


def test_serve_loop(core: ModuleType) -> None:
    server = LoopServer()
    loop = core.ServeLoop()
    with server.sock:
        assert loop.wait_for_request(server, 0.01) is False
        thread = threading.Thread(target=loop.serve_forever, args=(server, 30.0))
        thread.start()
        socket.create_connection(server.sock.getsockname()).close()
        assert server.handled.wait(10)
        loop.shutdown()            # returns once serve_forever has
        assert server.actions >= 1
        thread.join(10)
        assert not thread.is_alive()
        client = socket.create_connection(server.sock.getsockname())
        assert loop.wait_for_request(server, None) is True
        loop.accept_failed(OSError(errno.EBADF, "not a resource error"))
        loop.accept_failed(OSError(errno.EMFILE, "out of descriptors"))
        start = time.monotonic()
        assert loop.wait_for_request(server, 10) is True
        assert time.monotonic() - start >= _contract.BACKOFF_FIRST * 0.8
        client.close()
    with pytest.raises(ValueError):
        loop.wait_for_request(server, 0)
    with pytest.raises(ValueError):
        loop.serve_forever(server, 0.01)


def test_accept(core: ModuleType) -> None:
    with socket.create_server((HOST, 0)) as lsock:
        client = socket.create_connection(lsock.getsockname())
        conn, address = core.accept(lsock)
        with conn, client:
            assert address == client.getsockname()
            conn.sendall(b"x")
            assert client.recv(1) == b"x"


def test_datagrams(core: ModuleType) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        server.bind((HOST, 0))
        client.bind((HOST, 0))
        server.settimeout(10)
        receiver = core.DatagramReceiver(server)
        assert receiver.sock is server
        client.sendto(b"hello", server.getsockname())
        assert receiver.recv(3) == (b"hel", client.getsockname())
        assert receiver.pending == 0
        assert core.sendto(server, b"reply", client.getsockname()) == 5
        assert client.recv(10) == b"reply"


def test_stream_pair(core: ModuleType) -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(10)
        rfile, wfile = core.open_stream(a, -1, 0, 0)
        assert wfile.write(b"out") == 3
        assert b.recv(10) == b"out"
        b.sendall(b"one\ntwo\nthree")
        b.shutdown(socket.SHUT_WR)
        assert rfile.readline() == b"one\n"
        assert rfile.peek(1)[:1] == b"t"
        assert list(rfile) == [b"two\n", b"three"]
        rfile.close()
        wfile.close()
        assert rfile.closed and wfile.closed
    a, b = socket.socketpair()
    with a, b:
        # The coalescing pair: held until the reader must wait, or close().
        b.settimeout(10)
        rfile, wfile = core.open_stream(a, -1, 0, 100)
        assert wfile.write(b"held") == 4
        assert wfile.pending == 4
        b.sendall(b"q\n")
        assert rfile.readline() == b"q\n"     # flushed before the recv
        assert wfile.pending == 0
        assert b.recv(10) == b"held"
        wfile.write(b"tail")
        wfile.close()
        assert b.recv(10) == b"tail"
        rfile.close()


def test_policies() -> None:
    assert [_contract.poll_ms(s) for s in (None, -1, 0, 0.0001, 0.001, 0.0015, 1e12)] == \
        [-1, 0, 0, 1, 1, 2, 0x7FFFFFFF]
    backoff = _contract.AcceptBackoff()
    delays = []
    for _ in range(8):
        backoff.failed(OSError(errno.ENFILE, "x"))
        delays.append(round(backoff.until - time.monotonic(), 3))
    assert delays[0] <= _contract.BACKOFF_FIRST
    assert max(delays) <= _contract.BACKOFF_MAX
    assert delays[-1] > _contract.BACKOFF_MAX / 2     # doubled up to the cap
    assert _contract.datagram_slots(100) == (65536, 64)
    assert _contract.datagram_slots(1 << 20) == (1 << 20, 4)
    assert _contract.datagram_slots(1 << 30)[1] == 1
