"""Datagram servers: UDPServer, ThreadingUDPServer, UnixDatagramServer and
ThreadingUnixDatagramServer with DatagramRequestHandler, against the stdlib.

Every test runs on each fastserver backend and on socketserver itself
(``ref_impl``), over real loopback UDP and AF_UNIX datagram sockets.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Tuple

import pytest

from conftest import (Impl, close_dgram_client, closing_server, dgram_client,
                      server_address, serving)

SYNC_KINDS = ["UDPServer", "UnixDatagramServer"]
THREADING_KINDS = ["ThreadingUDPServer", "ThreadingUnixDatagramServer"]
ALL_KINDS = SYNC_KINDS + THREADING_KINDS


def make_server(impl: Impl, kind: str, handler: Any, **attrs: Any) -> Any:
    base = getattr(impl.ss, kind)
    cls = type(kind, (base,), attrs) if attrs else base
    return cls(server_address(base.address_family), handler)


def upper_handler(impl: Impl) -> Any:
    class Upper(impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            self.wfile.write(self.rfile.read().upper())
    return Upper


def recording_handler(impl: Impl, reply: bytes = b"ok") -> Any:
    """Records (request, client_address, packet, thread) on server.seen and
    answers ``reply``."""
    class Recording(impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            self.server.seen.append((self.request, self.client_address,
                                     self.packet, self.rfile.read()))
            self.wfile.write(reply)
    return Recording


class Client:
    """A datagram client of one server (bound, for AF_UNIX, so that the
    server can answer)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.sock = dgram_client(server)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server.server_address)

    def recv(self) -> bytes:
        data, source = self.sock.recvfrom(65536)
        assert source == self.server.server_address
        return data

    def roundtrip(self, data: bytes) -> bytes:
        self.send(data)
        return self.recv()

    @property
    def address(self) -> Any:
        return self.sock.getsockname()

    def close(self) -> None:
        close_dgram_client(self.sock)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- echo and the request --------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_echo(ref_impl: Impl, kind: str) -> None:
    server = make_server(ref_impl, kind, upper_handler(ref_impl))
    with serving(server, poll_interval=0.02), Client(server) as client:
        assert client.roundtrip(b"hello") == b"HELLO"
        assert client.roundtrip(b"x" * 4000) == b"X" * 4000


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_request_is_data_and_server_socket(ref_impl: Impl, kind: str) -> None:
    server = make_server(ref_impl, kind, recording_handler(ref_impl))
    server.seen = []
    with serving(server, poll_interval=0.02), \
            Client(server) as one, Client(server) as two:
        assert one.roundtrip(b"from one") == b"ok"
        assert two.roundtrip(b"from two") == b"ok"
        assert len(server.seen) == 2
        for (request, client_address, packet, read), client, sent in zip(
                server.seen, (one, two), (b"from one", b"from two")):
            assert type(request) is tuple and len(request) == 2
            assert request[0] == sent and type(request[0]) is bytes
            assert request[1] is server.socket
            assert packet == sent and read == sent
            assert client_address == client.address


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_several_writes_make_one_reply(ref_impl: Impl, kind: str) -> None:
    class Pieces(ref_impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            for byte in self.rfile.read():
                self.wfile.write(b"<%c>" % byte)

    server = make_server(ref_impl, kind, Pieces)
    with serving(server, poll_interval=0.02), Client(server) as client:
        assert client.roundtrip(b"abc") == b"<a><b><c>"
        assert client.roundtrip(b"d") == b"<d>"


# --- sizes -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_long_datagram_is_truncated_to_max_packet_size(ref_impl: Impl,
                                                       kind: str) -> None:
    server = make_server(ref_impl, kind, recording_handler(ref_impl),
                         max_packet_size=16)
    server.seen = []
    payload = bytes(range(100))
    with serving(server, poll_interval=0.02), Client(server) as client:
        assert client.roundtrip(payload) == b"ok"
        # the rest of the datagram is discarded, not served as another one
        assert client.roundtrip(b"next") == b"ok"
        assert client.roundtrip(payload[:16]) == b"ok"
    assert [packet for _, _, packet, _ in server.seen] == \
        [payload[:16], b"next", payload[:16]]


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_max_packet_size_is_read_at_each_request(ref_impl: Impl,
                                                 kind: str) -> None:
    server = make_server(ref_impl, kind, recording_handler(ref_impl))
    server.seen = []
    payload = bytes(range(100))
    with closing_server(server), Client(server) as client:
        # both datagrams are queued before the server receives either
        client.send(payload)
        client.send(payload)
        server.max_packet_size = 16
        server.handle_request()
        server.max_packet_size = 64
        server.handle_request()
        assert client.recv() == b"ok"
        assert client.recv() == b"ok"
    assert [len(packet) for _, _, packet, _ in server.seen] == [16, 64]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_zero_length_datagram(ref_impl: Impl, kind: str) -> None:
    server = make_server(ref_impl, kind, recording_handler(ref_impl, b"empty"))
    server.seen = []
    with serving(server, poll_interval=0.02), Client(server) as client:
        assert client.roundtrip(b"") == b"empty"
        assert client.roundtrip(b"after") == b"empty"
    assert [(packet, read) for _, _, packet, read in server.seen] == \
        [(b"", b""), (b"after", b"after")]
    request = server.seen[0][0]
    assert request[0] == b"" and request[1] is server.socket


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_empty_wfile_still_sends_an_empty_datagram(ref_impl: Impl,
                                                   kind: str) -> None:
    calls: List[bytes] = []

    class Silent(ref_impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            calls.append(self.packet)

    server = make_server(ref_impl, kind, Silent)
    with serving(server, poll_interval=0.02), Client(server) as client:
        assert client.roundtrip(b"anything") == b""
        assert client.roundtrip(b"") == b""
    assert calls == [b"anything", b""]


# --- many datagrams --------------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_many_datagrams_in_a_row(ref_impl: Impl, kind: str) -> None:
    server = make_server(ref_impl, kind, upper_handler(ref_impl))
    with serving(server, poll_interval=0.02), Client(server) as client:
        for i in range(200):
            assert client.roundtrip(b"msg %d" % i) == b"MSG %d" % i


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_sync_server_keeps_the_order(ref_impl: Impl, kind: str) -> None:
    server = make_server(ref_impl, kind, upper_handler(ref_impl))
    with serving(server, poll_interval=0.02), Client(server) as client:
        for burst in range(10):
            sent = [b"b%d-%d" % (burst, i) for i in range(20)]
            for data in sent:
                client.send(data)
            assert [client.recv() for _ in sent] == [d.upper() for d in sent]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_many_clients_concurrently(ref_impl: Impl, kind: str) -> None:
    nthreads, per_thread = 8, 50
    server = make_server(ref_impl, kind, upper_handler(ref_impl))
    results: Dict[int, List[Tuple[bytes, bytes]]] = {}
    errors: List[BaseException] = []
    barrier = threading.Barrier(nthreads)

    def run(tid: int) -> None:
        got = results.setdefault(tid, [])
        try:
            with Client(server) as client:
                barrier.wait(10)
                for i in range(per_thread):
                    data = b"t%d-m%d" % (tid, i)
                    got.append((data, client.roundtrip(data)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    with serving(server, poll_interval=0.02):
        threads = [threading.Thread(target=run, args=(tid,))
                   for tid in range(nthreads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
    assert errors == []
    for tid in range(nthreads):
        assert len(results[tid]) == per_thread
        for data, reply in results[tid]:
            assert reply == data.upper()


# --- timeouts --------------------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_handle_request_timeout_calls_handle_timeout(ref_impl: Impl,
                                                     kind: str) -> None:
    timeouts: List[str] = []

    def handle_timeout(self: Any) -> None:
        timeouts.append("timeout")

    server = make_server(ref_impl, kind, recording_handler(ref_impl),
                         timeout=0.05, handle_timeout=handle_timeout)
    server.seen = []
    with closing_server(server), Client(server) as client:
        server.handle_request()
        assert timeouts == ["timeout"]
        assert server.seen == []
        client.send(b"now")
        server.handle_request()
        assert client.recv() == b"ok"
        assert timeouts == ["timeout"]
        assert [packet for _, _, packet, _ in server.seen] == [b"now"]
        server.handle_request()
        assert timeouts == ["timeout", "timeout"]


# --- the server socket belongs to the server -------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_requests_do_not_close_the_server_socket(ref_impl: Impl,
                                                 kind: str) -> None:
    server = make_server(ref_impl, kind, recording_handler(ref_impl))
    server.seen = []
    fileno = server.socket.fileno()
    with serving(server, poll_interval=0.02), Client(server) as client:
        for i in range(5):
            assert client.roundtrip(b"%d" % i) == b"ok"
            assert server.socket.fileno() == fileno
        request = server.seen[0][0]
        # the hooks a request ends with leave the shared socket alone
        server.shutdown_request(request)
        server.close_request(request)
        assert server.socket.fileno() == fileno
        assert client.roundtrip(b"still served") == b"ok"
    assert server.socket.fileno() == -1  # server_close() does close it
