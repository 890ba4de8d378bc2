"""The core's rfile against io.BufferedReader(sock.makefile('rb')).

Both readers get the same payload over their own socketpair, cut into the
same random chunks by a feeder thread, and the same random sequence of calls;
every result and every exception must be identical, including what a timeout
discards and the "cannot read from timed out object" that follows it. Each
test runs over a plain socketpair and over one with TLS in it (both cores'
readers then read through the SSLSocket's _ssl object).

The feeder sends the next chunk only once the previous one has left the
receive queue (FIONREAD == 0), so every recv() returns at most the rest of one
chunk: the chunking seen by the reader is the generated one, not whatever the
scheduler made of it, and peek()/read1() results are deterministic.
"""

from __future__ import annotations

import array
import contextlib
import os
import fcntl
import socket
import struct
import termios
import threading
import time
from typing import Any, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Pair
from core_modules import core, cython, pure  # noqa: F401 - core: the fixture

TIMEOUT = 0.1   # the reader's socket timeout in the "stall" ending


def _queued(sock: socket.socket) -> int:
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, struct.pack("i", 0))
    return struct.unpack("i", raw)[0]


class Feeder(threading.Thread):
    def __init__(self, wsock: socket.socket, rsock: socket.socket,
                 chunks: List[bytes], eof: bool) -> None:
        super().__init__(daemon=True)
        self.wsock, self.rsock, self.chunks, self.eof = wsock, rsock, chunks, eof
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for chunk in self.chunks:
                while _queued(self.rsock) and not self.stop.is_set():
                    time.sleep(0.0002)
                if self.stop.is_set():
                    return
                # Let a recv() that just emptied the queue return first.
                time.sleep(0.001)
                self.wsock.sendall(chunk)
            if self.eof:
                self.wsock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            pass  # the test is over and closed the sockets


ops = st.one_of(
    st.tuples(st.just("read"), st.one_of(st.none(), st.just(-1), st.integers(0, 300))),
    st.tuples(st.just("read1"), st.one_of(st.just(-1), st.integers(0, 300))),
    st.tuples(st.just("readline"), st.one_of(st.none(), st.just(-1), st.integers(0, 80))),
    st.tuples(st.just("readinto"), st.integers(0, 300)),
    st.tuples(st.just("readinto1"), st.integers(0, 300)),
    st.tuples(st.just("readlines"), st.one_of(st.none(), st.just(-1), st.integers(0, 200))),
    st.tuples(st.just("peek"), st.integers(-1, 10)),
    st.tuples(st.just("iter"), st.integers(1, 5)),
    st.tuples(st.just("readinto_array"), st.integers(0, 20)),
)

payloads = st.lists(
    st.one_of(st.just(b"\n"), st.binary(max_size=40), st.binary(min_size=100, max_size=600)),
    max_size=25).map(b"".join)


def _apply(rfile: Any, op: Tuple[str, Any]) -> Any:
    name, arg = op
    if name in ("read", "read1", "readline", "readlines", "peek"):
        return getattr(rfile, name)(arg)
    if name in ("readinto", "readinto1"):
        buf = bytearray(b"\xee" * arg)
        n = getattr(rfile, name)(buf)
        return n, bytes(buf)
    if name == "readinto_array":
        buf = array.array("i", [7] * arg)
        n = rfile.readinto(buf)
        return n, buf.tobytes()
    if name == "iter":
        lines = []
        it = iter(rfile)
        for _ in range(arg):
            try:
                lines.append(next(it))
            except StopIteration:
                lines.append("StopIteration")
                break
        return lines
    raise AssertionError(name)


def _run(make_pair: Pair, open_rfile: Any, payload: bytes, cuts: List[int], eof: bool,
         blocking: bool, calls: List[Tuple[str, Any]], close_at: int) -> List[Any]:
    rsock, wsock = make_pair()
    rsock.settimeout(None if blocking else (10.0 if eof else TIMEOUT))
    points = sorted({c % (len(payload) + 1) for c in cuts} | {0, len(payload)})
    chunks = [payload[a:b] for a, b in zip(points, points[1:]) if b > a]
    feeder = Feeder(wsock, rsock, chunks, eof)
    rfile = open_rfile(rsock)
    feeder.start()
    log: List[Any] = []
    try:
        for i, op in enumerate(calls):
            if i == close_at:
                rfile.close()
                log.append(("closed", rfile.closed))
            try:
                log.append(("ok", op, _apply(rfile, op)))
            except Exception as exc:  # noqa: BLE001 - compared below
                log.append(("raised", op, type(exc), str(exc)))
    finally:
        feeder.stop.set()
        rfile.close()
        rsock.close()
        wsock.close()
        feeder.join(5)
    return log


# Each core's own reader: the Cython StreamReader, plain and paired with a
# coalescing writer, and the pure core's BufferedReader over its flushing
# SocketIO, or over TLSSocketIO on TLS. (Over a plain socket the pure core's
# plain rfile is sock.makefile('rb') itself, the reference.)
READERS = [pytest.param(pure, 0, id="python"), pytest.param(pure, 64, id="python-coalescing")]
if cython is not None:
    READERS[:0] = [pytest.param(cython, 0, id="cython"),
                   pytest.param(cython, 64, id="cython-coalescing")]


@pytest.mark.parametrize("core,coalesce_limit", READERS)
@settings(max_examples=int(os.environ.get("FS_DIFF_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(payload=payloads,
       cuts=st.lists(st.integers(0, 10_000), max_size=20),
       rbufsize=st.sampled_from([-1, 1, 5, 16, 64, 100, 8192]),
       ending=st.sampled_from(["eof", "eof-blocking", "stall"]),
       calls=st.lists(ops, min_size=1, max_size=25),
       close_at=st.integers(0, 60))
def test_rfile_matches_buffered_reader(make_pair: Pair, core: Any, coalesce_limit: int,
                                       payload: bytes,
                                       cuts: List[int], rbufsize: int, ending: str,
                                       calls: List[Tuple[str, Any]],
                                       close_at: int) -> None:
    eof = ending != "stall"
    blocking = ending == "eof-blocking"

    writers: List[Any] = []

    def ours(sock: socket.socket) -> Any:
        rfile, wfile = core.open_stream(sock, rbufsize, 0, coalesce_limit)
        writers.append(wfile)
        if coalesce_limit:
            wfile.write(b"!")   # pending: the first receive sends it first
        return rfile

    def reference(sock: socket.socket) -> Any:
        return sock.makefile("rb", rbufsize)

    expected = _run(make_pair, reference, payload, cuts, eof, blocking, calls, close_at)
    got = _run(make_pair, ours, payload, cuts, eof, blocking, calls, close_at)
    with contextlib.suppress(OSError):   # "!" unsent when nothing was read
        writers[0].close()
    assert got == expected


@pytest.mark.parametrize("rbufsize", [-1, 3])
def test_rfile_timeout_then_timed_out_object(make_pair: Pair, core: Any,
                                             rbufsize: int) -> None:
    """A timeout discards what the call had gathered; the raw stream then
    refuses to read, but buffered bytes are still returned."""
    results = []
    for opener in (lambda s: s.makefile("rb", rbufsize),
                   lambda s: core.open_stream(s, rbufsize, 0, 10)[0]):
        a, b = make_pair()
        a.settimeout(0.05)
        rfile = opener(a)
        b.sendall(b"abc\ndefgh")
        log = [rfile.readline(), rfile.peek()[:2]]
        for call in (lambda: rfile.readline(), lambda: rfile.read(2),
                     lambda: rfile.read(100), lambda: rfile.readline()):
            try:
                log.append(call())
            except OSError as exc:
                log.append((type(exc), str(exc)))
        results.append(log)
        rfile.close()
        a.close()
        b.close()
    assert results[0] == results[1]
    # socket.timeout is TimeoutError from 3.10 on, its own class on 3.9.
    assert socket.timeout in \
        [entry[0] for entry in results[0] if isinstance(entry, tuple)]
