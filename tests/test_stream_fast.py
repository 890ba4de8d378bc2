"""Large reads and writes of the stream core against the stdlib's files.

A read larger than the rfile's buffer goes straight into its result or the
caller's buffer, and a result longer than what arrived is shrunk in place
(fastserver/_cy/fresh_bytes.pxi); a large write is sent from the caller's
memory. These tests drive those paths at the sizes where they switch (the
buffer size and either side of it, whole blocks plus a tail, 64 KiB and
more), on each core's rfile and wfile, against io.BufferedReader over
sock.makefile('rb') and socketserver's unbuffered writer.

The chunking is deterministic: the whole payload is queued in the socket
before the first read (and EOF after it, unless the ending is a stall), so
every recv(n) returns min(n, what is queued) to both readers, and peek() and
read1() results can be compared exactly.
"""

from __future__ import annotations

import io
import random
import socket
import socketserver
import threading
from typing import Any, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Impl
from test_core_reader_differential import READERS
from test_core_writer_differential import as_kind as writer_kind

BUF = io.DEFAULT_BUFFER_SIZE
STALL_TIMEOUT = 0.02   # the reader's socket timeout when no EOF follows
MAX_PAYLOAD = 200_000  # queued whole in an AF_UNIX socket pair

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

sizes = st.one_of(
    st.sampled_from([BUF - 1, BUF, BUF + 1, 2 * BUF, 3 * BUF + 7,
                     65535, 65536, 65537, 100_000]),
    st.integers(0, 150_000),
    st.integers(0, 300))
ops = st.one_of(
    st.tuples(st.just("read"), sizes),
    st.tuples(st.just("read"), st.sampled_from([-1, None])),
    st.tuples(st.just("read1"), st.one_of(sizes, st.just(-1))),
    st.tuples(st.just("readinto"), sizes),
    st.tuples(st.just("readinto1"), sizes),
    st.tuples(st.just("readinto_view"), sizes),
    st.tuples(st.just("readline"), st.one_of(sizes, st.just(-1))),
    st.tuples(st.just("peek"), st.just(0)),
)


def make_payload(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    for _ in range(size // 5000):   # lines of a few KiB, for readline()
        data[rng.randrange(size)] = 0x0A
    return bytes(data)


def apply(rfile: Any, op: Tuple[str, Any]) -> Any:
    name, arg = op
    if name == "readinto_view":
        # The caller's buffer is a window into a larger one: only the
        # window may be written.
        backing = bytearray(b"\xee" * (arg + 16))
        n = rfile.readinto(memoryview(backing)[8:8 + arg])
        return n, bytes(backing)
    if name in ("readinto", "readinto1"):
        buf = bytearray(b"\xee" * arg)
        n = getattr(rfile, name)(buf)
        return n, bytes(buf)
    result = getattr(rfile, name)(arg)
    assert result is None or type(result) is bytes
    return result


def run(open_rfile: Any, payload: bytes, eof: bool,
        calls: List[Tuple[str, Any]]) -> List[Any]:
    a, b = socket.socketpair()
    log: List[Any] = []
    with a, b:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        b.setblocking(False)
        b.sendall(payload)   # all of it queued, or BlockingIOError
        if eof:
            b.shutdown(socket.SHUT_WR)
        a.settimeout(None if eof else STALL_TIMEOUT)
        rfile = open_rfile(a)
        try:
            for op in calls:
                try:
                    log.append(("ok", op, apply(rfile, op)))
                except Exception as exc:  # noqa: BLE001 - compared below
                    log.append(("raised", op, type(exc), str(exc)))
        finally:
            rfile.close()
    return log


# Each core's own reader (see test_core_reader_differential).


@pytest.mark.parametrize("core,coalesce_limit", READERS)
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1),
       size=st.one_of(st.integers(0, MAX_PAYLOAD), st.sampled_from([BUF, 65536, 2 * 65536])),
       rbufsize=st.sampled_from([-1, 1000, BUF, 65536, 100_000]),
       eof=st.booleans(),
       calls=st.lists(ops, min_size=1, max_size=12))
def test_large_reads_match_buffered_reader(core: Any, coalesce_limit: int, seed: int,
                                           size: int, rbufsize: int, eof: bool,
                                           calls: List[Tuple[str, Any]]) -> None:
    payload = make_payload(seed, size)

    def ours(sock: socket.socket) -> Any:
        rfile, wfile = core.open_stream(sock, rbufsize, 0, coalesce_limit)
        return rfile

    expected = run(lambda sock: sock.makefile("rb", rbufsize), payload, eof, calls)
    assert run(ours, payload, eof, calls) == expected


@pytest.mark.parametrize("core,coalesce_limit", READERS)
@pytest.mark.parametrize("call", ["read1", "read", "readinto", "read_all"])
def test_large_read_of_a_trickle(core: Any, coalesce_limit: int, call: str) -> None:
    """64 KiB reads while the data arrives in 1000-byte pieces: read1()
    returns what one recv() brought, its 64 KiB result shrunk in place;
    read(), readinto() and read() to EOF keep receiving until they have it
    all. The same bytes in the end, whatever the chunking."""
    payload = make_payload(7, 300_000)
    a, b = socket.socketpair()
    with a, b:
        rfile, wfile = core.open_stream(a, -1, 0, coalesce_limit)

        def feed() -> None:
            for start in range(0, len(payload), 1000):
                b.sendall(payload[start:start + 1000])
            b.shutdown(socket.SHUT_WR)

        feeder = threading.Thread(target=feed)
        feeder.start()
        got = []
        try:
            while True:
                if call == "read_all":
                    chunk = rfile.read()
                elif call == "readinto":
                    buf = bytearray(65536)
                    chunk = bytes(buf[:rfile.readinto(buf)])
                else:
                    chunk = getattr(rfile, call)(65536)
                    assert type(chunk) is bytes and len(chunk) <= 65536
                got.append(chunk)
                if not chunk:
                    break
        finally:
            feeder.join(10)
            rfile.close()
            wfile.close()
    assert b"".join(got) == payload


# --- large writes ----------------------------------------------------------------

write_sizes = st.one_of(st.integers(0, 300_000), st.sampled_from([65535, 65536, 65537]))
kinds = st.sampled_from(["bytes", "bytearray", "memoryview", "array", "slice"])


def as_kind(data: bytes, kind: str) -> Any:
    if kind in ("bytearray", "memoryview", "array"):
        return writer_kind(data, kind)
    if kind == "slice":   # a window into a larger object
        return memoryview(b"<" + data + b">")[1:-1]
    return data


def write_all(make_writer: Any, writes: List[Tuple[int, str]], timeout: Any) -> Tuple[List[Any], bytes]:
    a, b = socket.socketpair()
    received: List[bytes] = []
    log: List[Any] = []
    with a, b:
        a.settimeout(timeout)
        reader = threading.Thread(target=lambda: received.append(
            b"".join(iter(lambda: b.recv(1 << 16), b""))))
        reader.start()
        wfile = make_writer(a)
        try:
            for i, (size, kind) in enumerate(writes):
                log.append(wfile.write(as_kind(make_payload(i, size), kind)))
            wfile.close()
        finally:
            a.shutdown(socket.SHUT_WR)
            reader.join(30)
    return log, received[0]


@SETTINGS
@given(writes=st.lists(st.tuples(write_sizes, kinds), min_size=1, max_size=6),
       timeout=st.sampled_from([None, 10.0]),
       limit=st.sampled_from([0, 1, 65536]))
def test_large_writes_match_stdlib(impl: Impl, writes: List[Tuple[int, str]],
                                   timeout: Any, limit: int) -> None:
    """Writes far larger than the socket buffer, sent in several partial
    sends straight from the caller's memory: the peer gets the same bytes
    and write() the same return values as with socketserver's writer."""
    core = impl.core
    ours = write_all(lambda s: core.open_stream(s, -1, 0, limit)[1], writes, timeout)
    theirs = write_all(socketserver._SocketWriter, writes, timeout)  # type: ignore[attr-defined]
    assert ours == theirs


def test_large_write_times_out_like_sendall(impl: Impl) -> None:
    """One deadline for the whole write, as socket.sendall() has: a peer
    that reads too slowly times the write out."""
    core = impl.core
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(0.05)
        wfile = core.open_stream(a, -1, 0, 0)[1]
        with pytest.raises(socket.timeout):
            wfile.write(b"x" * (16 << 20))
