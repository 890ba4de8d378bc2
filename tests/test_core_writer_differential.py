"""The core's wfile against the stdlib's, for random call sequences.

Each example runs the same sequence of write()/writelines()/flush() calls
with random payloads and bytes-like types on fastserver's wfile and on
socketserver's unbuffered writer, each over its own socketpair. The return values,
the exceptions, the bytes the peer has received after every call (for the
unbuffered writer, where that is part of the contract) and the bytes it has
received in the end must be identical. The buffered wfile is the socket's
own makefile('wb') on both cores, and coalesce_writes has no stdlib twin:
both are checked against the unbuffered writer's bytes and return values,
and against a model of when bytes may reach the peer. Each test runs over
a plain socketpair and over one with TLS in it (the cores' writers then send
through the SSLSocket's _ssl object).
"""

from __future__ import annotations

import array
import socket
import socketserver
import ssl
from typing import Any, List, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Impl, Pair

payloads = st.binary(min_size=0, max_size=3000)
kinds = st.sampled_from(["bytes", "bytearray", "memoryview", "array"])
calls = st.lists(
    st.one_of(
        st.tuples(st.just("write"), payloads, kinds),
        st.tuples(st.just("writelines"), st.lists(payloads, max_size=4), kinds),
        st.tuples(st.just("flush"), st.just(b""), st.just("bytes")),
    ),
    min_size=1, max_size=12)


def as_kind(data: bytes, kind: str) -> Any:
    if kind == "bytearray":
        return bytearray(data)
    if kind == "memoryview":
        return memoryview(data)
    if kind == "array":
        return array.array("B", data)
    return data


def drain(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    chunks = []
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except (BlockingIOError, ssl.SSLWantReadError):
        pass
    return b"".join(chunks)


def run(make_pair: Pair, make_writer: Any, sequence: List[Tuple[str, Any, str]],
        observe_each: bool) -> Tuple[List[Any], bytes]:
    a, b = make_pair()
    # Room for everything, so that no write blocks on a peer that reads later.
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    log: List[Any] = []
    received = b""
    with a, b:
        wfile = make_writer(a)
        for op, data, kind in sequence:
            try:
                if op == "write":
                    log.append(("write", wfile.write(as_kind(data, kind))))
                elif op == "writelines":
                    log.append(("writelines", wfile.writelines(
                        [as_kind(d, kind) for d in data])))
                else:
                    log.append(("flush", wfile.flush()))
            except Exception as exc:  # noqa: BLE001 - compared below
                log.append((op, type(exc), str(exc)))
            if observe_each:
                received += drain(b)
                log.append(("peer has", len(received)))
        wfile.close()
        received += drain(b)
    return log, received


SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(sequence=calls)
def test_unbuffered_wfile_matches_stdlib(make_pair: Pair, impl: Impl, sequence: Any) -> None:
    core = impl.core
    ours = run(make_pair, lambda s: core.open_stream(s, -1, 0, 0)[1], sequence, True)
    theirs = run(make_pair, socketserver._SocketWriter, sequence, True)  # type: ignore[attr-defined]
    assert ours == theirs


def _peer_counts_model(sequence: List[Tuple[str, Any, str]], bound: int,
                       sends_at_bound: bool) -> List[Any]:
    """What the peer must have after each call of a buffering writer of
    this bound: nothing new while every write since the last flush fits
    (None where the model cannot say: a bound was crossed)."""
    expected: List[Any] = []
    total = pending = 0
    known: Any = 0
    for op, data, _ in sequence:
        pieces = [data] if op == "write" else data if op == "writelines" else []
        for piece in pieces:  # writelines() writes each line in turn
            total += len(piece)
            pending += len(piece)
            if sends_at_bound and pending >= bound:
                known, pending = total, 0
            elif not sends_at_bound and pending >= bound:
                # A write that fills the buffer exactly is held on 3.11 and
                # sent on 3.13 (BufferedWriter changed): either is right.
                known = None
        if op == "flush":
            known, pending = total, 0
        expected.append(known)
    return expected


@SETTINGS
@given(sequence=calls, wbufsize=st.sampled_from([1, 100, 8192]))
def test_buffered_wfile_matches_stdlib(make_pair: Pair, impl: Impl, sequence: Any,
                                       wbufsize: int) -> None:
    """wfile for a wbufsize other than 0. Both cores hand out the socket's
    own makefile('wb', wbufsize), so this is checked against independent
    references: the stdlib's unbuffered writer for the bytes and return
    values, and a model of the buffer for what reaches the peer when."""
    core = impl.core
    log, received = run(make_pair, lambda s: core.open_stream(s, -1, wbufsize, 0)[1],
                        sequence, True)
    plain_log, plain_received = run(make_pair, socketserver._SocketWriter,  # type: ignore[attr-defined]
                                    sequence, False)
    assert received == plain_received
    assert [entry for entry in log if entry[0] != "peer has"] == plain_log
    seen = [entry[1] for entry in log if entry[0] == "peer has"]
    model = _peer_counts_model(sequence, wbufsize, False)
    assert [s if m is not None else None for s, m in zip(seen, model)] == model


@SETTINGS
@given(sequence=calls, limit=st.sampled_from([1, 500, 65536]))
def test_coalescing_wfile_sends_the_same_bytes(make_pair: Pair, impl: Impl, sequence: Any,
                                               limit: int) -> None:
    core = impl.core
    log, received = run(make_pair, lambda s: core.open_stream(s, -1, 0, limit)[1],
                        sequence, True)
    plain_log, plain_received = run(make_pair, socketserver._SocketWriter,  # type: ignore[attr-defined]
                                    sequence, False)
    assert received == plain_received
    # Same return values as the unbuffered writer, call for call.
    assert [entry for entry in log if entry[0] != "peer has"] == plain_log
    # Nothing reaches the peer between flushes until the bound is reached.
    assert [entry[1] for entry in log if entry[0] == "peer has"] == \
        _peer_counts_model(sequence, limit, True)
