"""The cores' memory bounds, concurrency and socket-class checks, on both
cores (issue 13's review): what a buffer may keep, what two threads sharing
one object may see, and that a socket class patched after first use is
honoured."""

from __future__ import annotations

import os
import socket
import sys
import threading
from types import ModuleType
from typing import Any, List, Tuple

import pytest

from conftest import unix_path
from core_modules import core  # noqa: F401 - the fixture

from fastserver import _contract

MiB = 1 << 20


class Drain(threading.Thread):
    """Reads a socket to EOF into one reused buffer, counting the bytes."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock, self.count = sock, 0

    def run(self) -> None:
        buf = bytearray(1 << 16)
        while True:
            n = self.sock.recv_into(buf)
            if not n:
                return
            self.count += n


def test_large_write_is_not_copied(core: ModuleType) -> None:
    """A coalescing write of limit bytes or more goes straight out from the
    caller's buffer, never through the coalescing buffer: the caller's
    bytearray stays exported (cannot be resized) for as long as the send
    takes, where a copy would have released it before sending."""
    payload = bytearray(os.urandom(16 * MiB))   # far beyond the socket buffers
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(10)
        wfile = core.CoalescingWriter(a, 4096)
        wfile.write(b"head")
        results: List[Any] = []
        writer = threading.Thread(target=lambda: results.append(wfile.write(payload)))
        writer.start()
        first = b.recv(1 << 16)          # the send has begun, and blocks
        try:
            payload.extend(b"!")
            resized = True
        except BufferError:
            resized = False
        drain = Drain(b)
        drain.start()
        writer.join(30)
        wfile.close()
        a.shutdown(socket.SHUT_WR)
        drain.join(30)
        assert first.startswith(b"head")
        assert results == [16 * MiB]
        assert len(first) + drain.count == 4 + 16 * MiB
    assert not resized


def test_coalescing_buffer_is_released_past_its_bound(core: ModuleType) -> None:
    """A coalescing buffer that grew past COALESCE_KEEP is released once
    sent: one large reply does not pin its size for the connection's life.
    (sys.getsizeof counts the buffer, as it does a bytearray's.)"""
    a, b = socket.socketpair()
    with a, b:
        drain = Drain(b)
        drain.start()
        wfile = core.CoalescingWriter(a, 1 << 30)
        chunk = b"x" * 65000
        for _ in range(64):
            wfile.write(chunk)
        assert wfile.pending == 64 * len(chunk)
        assert sys.getsizeof(wfile) >= 64 * len(chunk)
        wfile.flush()
        kept = sys.getsizeof(wfile)
        wfile.write(b"small")                  # a small buffer again
        wfile.close()
        a.shutdown(socket.SHUT_WR)
        drain.join(30)
        assert drain.count == 64 * len(chunk) + 5
    assert kept < _contract.COALESCE_KEEP, kept


def _close_unix(*socks: socket.socket) -> None:
    for sock in socks:
        name = sock.getsockname()
        sock.close()
        if name:
            os.unlink(name)


def test_datagram_slots_are_bounded(core: ModuleType) -> None:
    """A receiver with a large max_packet_size keeps fewer slots: the slots
    together stay within DATAGRAM_SLOTS_BYTES (they were 64 slots of
    max(max_packet_size, 64 KiB) for good: 64 MiB at 1 MiB). sys.getsizeof
    counts the slots."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(unix_path())
    server.settimeout(10)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.bind(unix_path())
    try:
        receiver = core.DatagramReceiver(server)
        big = os.urandom(MiB - 64)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * MiB)
        for max_packet_size in (MiB, 100):
            client.sendto(big, server.getsockname())
            data, address = receiver.recv(max_packet_size)
            assert (data, address) == (big[:max_packet_size], client.getsockname())
            assert sys.getsizeof(receiver) <= _contract.DATAGRAM_SLOTS_BYTES + 64 * 1024
    finally:
        _close_unix(server, client)


def test_concurrent_datagram_receives_keep_pairs(core: ModuleType) -> None:
    """Two threads receiving on one receiver: every datagram arrives once,
    with its own sender's address (a slot copied after it was given up
    could pair one datagram's payload with another's address). A thread
    blocked in the socket may miss datagrams the other holds in its batch,
    so each waits in short timeouts until all have arrived."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(unix_path())
    server.settimeout(0.05)
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(3)]
    for client in clients:
        client.bind(unix_path())
    receiver = core.DatagramReceiver(server)
    got: List[Tuple[bytes, Any]] = []
    total = 600
    deadline = threading.Event()

    def receive() -> None:
        while len(got) < total and not deadline.is_set():
            try:
                got.append(receiver.recv(200))
            except socket.timeout:
                pass

    threads = [threading.Thread(target=receive) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        sent = []
        for i in range(total):
            client = clients[i % 3]
            data = b"%s|%d" % (client.getsockname().encode(), i)
            client.sendto(data, server.getsockname())
            sent.append((data, client.getsockname()))
        for t in threads:
            t.join(30)
        deadline.set()
        assert not any(t.is_alive() for t in threads)
    finally:
        deadline.set()
        _close_unix(server, *clients)
    assert sorted(got) == sorted(sent)
    assert all(data.split(b"|")[0].decode() == address for data, address in got)


def test_socket_class_patched_after_first_use(core: ModuleType,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A socket class whose methods are replaced after the core first drove
    one of its sockets: the next objects the core makes call the new
    methods (the Cython core cached its per-class check for good)."""
    class Conn(socket.socket):
        pass

    calls: List[str] = []

    def counting(name: str) -> Any:
        original = getattr(socket.socket, name)

        def method(self: Any, *args: Any) -> Any:
            calls.append(name)
            return original(self, *args)
        return method

    for cls in (Conn, socket.socket):
        a, b = socket.socketpair()
        sock = cls(a.family, a.type, fileno=a.detach())
        with sock, b:
            b.settimeout(10)
            for patched in (False, True):
                if patched:
                    monkeypatch.setattr(cls, "sendall", counting("sendall"))
                    monkeypatch.setattr(cls, "recv_into", counting("recv_into"))
                    monkeypatch.setattr(cls, "recv", counting("recv"))
                rfile, wfile = core.open_stream(sock, -1, 0, 0)
                wfile.write(b"w")
                assert b.recv(1) == b"w"
                b.sendall(b"r\n")
                assert rfile.readline() == b"r\n"
                rfile.close()
                wfile.close()
                if not patched:
                    assert calls == []
            monkeypatch.undo()
        assert "sendall" in calls and ("recv_into" in calls or "recv" in calls), (cls, calls)
        calls.clear()
