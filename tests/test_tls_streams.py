"""rfile and wfile over TLS, served: what SSLSocket's own methods decide.

Both cores read and write an ssl.SSLSocket through its _ssl object
(fastserver/_cy/tls_io.pxi; TLSSocketIO and tls_sendall() in
fastserver/_sockfile.py) instead of socket.SocketIO and sendall(). These
tests hold it to what socketserver does with the same connection: a class
or an instance that overrides a method the stdlib path calls gets that
method called; a ragged EOF is an EOF or an error as suppress_ragged_eofs
says; a connection unwrapped mid-stream carries on in the clear. Each runs
on every backend and on the stdlib, and compares with the stdlib's outcome.
The byte-level behaviour (every read and write call, chunkings, timeouts) is
in test_core_reader_differential.py and test_core_writer_differential.py.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any, Dict, Tuple

import pytest

from conftest import FASTSERVER_IMPLS, STDLIB_IMPL, Impl, Pair, recv_until, serving, server_address

STDLIB: Impl = STDLIB_IMPL.values[0]
from tlscerts import CertFiles, client_context, make_ca, make_cert, server_context

WAIT = 10.0   # a generous bound on a handler finishing: not a speed


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Tuple[CertFiles, CertFiles]:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory)
    return ca, make_cert(directory, ca, "server")


def serve_one(impl: Impl, pki: Tuple[CertFiles, CertFiles], handle: Any,
              client: Any, sslsocket_class: Any = None,
              suppress_ragged_eofs: bool = True) -> Dict[str, Any]:
    """Serve one TLS connection on impl (wrapped listener) with a handler
    whose handle() is handle(handler, record); client(sock) talks to it.
    What handle() recorded, once it has returned."""
    ca, cert = pki
    record: Dict[str, Any] = {}
    done = threading.Event()

    class Handler(impl.ss.StreamRequestHandler):
        def handle(self) -> None:
            try:
                handle(self, record)
            finally:
                done.set()

    context = server_context(cert)
    if sslsocket_class is not None:
        context.sslsocket_class = sslsocket_class
    server = impl.ss.ThreadingTCPServer(server_address(socket.AF_INET), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True,
                                        suppress_ragged_eofs=suppress_ragged_eofs)
    with serving(server):
        raw = socket.create_connection(server.server_address, timeout=WAIT)
        conn = client_context(ca.cert).wrap_socket(raw, server_hostname="localhost")
        try:
            client(conn)
            assert done.wait(WAIT), "the handler did not finish"
        finally:
            conn.close()
    return record


def echo_lines(handler: Any, record: Dict[str, Any]) -> None:
    lines = record["lines"] = []
    for _ in range(2):
        lines.append(handler.rfile.readline())
        handler.wfile.write(lines[-1].upper())


class Counter:
    """Calls of one method, noted only while the handler reads and writes
    (SSLSocket calls _checkClosed from elsewhere too)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.armed = False

    def wrap(self, function: Any) -> Any:
        def method(*args: Any, **kwargs: Any) -> Any:
            if self.armed:
                self.calls += 1
            return function(*args, **kwargs)
        return method

    def echo_lines(self, handler: Any, record: Dict[str, Any]) -> None:
        self.armed = True
        try:
            echo_lines(handler, record)
        finally:
            self.armed = False


def send_two_lines(conn: ssl.SSLSocket) -> None:
    for line in (b"one\n", b"two\n"):
        conn.sendall(line)
        assert recv_until(conn) == line.upper()


# The methods that SocketIO.readinto() and socketserver's writer reach on an
# SSLSocket: recv_into -> read, sendall -> send, and _checkClosed in each.
STDLIB_PATH_METHODS = ["recv_into", "read", "sendall", "send", "_checkClosed"]


@pytest.mark.parametrize("name", STDLIB_PATH_METHODS)
def test_a_class_override_is_called(ref_impl: Impl, pki: Any, name: str) -> None:
    counter = Counter(name)
    counting = type("Counting", (ssl.SSLSocket,),
                    {name: counter.wrap(getattr(ssl.SSLSocket, name))})
    record = serve_one(ref_impl, pki, counter.echo_lines, send_two_lines,
                       sslsocket_class=counting)
    assert record["lines"] == [b"one\n", b"two\n"]
    assert counter.calls, "%s was never called" % name


@pytest.mark.parametrize("name", STDLIB_PATH_METHODS)
def test_an_instance_override_is_called(ref_impl: Impl, pki: Any, name: str) -> None:
    counter = Counter(name)

    def handle(handler: Any, record: Dict[str, Any]) -> None:
        # The streams were opened in setup(): open them again, as a
        # handler that sets the attribute before StreamRequestHandler's
        # setup() would have them.
        sock = handler.connection
        setattr(sock, name, counter.wrap(getattr(sock, name)))
        handler.rfile.close()
        handler.wfile.close()
        type(handler).setup(handler)
        counter.echo_lines(handler, record)

    record = serve_one(ref_impl, pki, handle, send_two_lines)
    assert record["lines"] == [b"one\n", b"two\n"]
    assert counter.calls, "%s was never called" % name


def read_to_eof(handler: Any, record: Dict[str, Any]) -> None:
    got = []
    try:
        for line in handler.rfile:
            got.append(line)
    except Exception as exc:  # noqa: BLE001 - the outcome under test
        got.append(type(exc).__name__)
    record["got"] = got


def ragged_close(conn: ssl.SSLSocket) -> None:
    """Some lines, then the TCP connection closed with no close_notify."""
    conn.sendall(b"a\nb\npartial")
    raw = socket.socket(fileno=conn.detach())
    raw.settimeout(WAIT)
    raw.shutdown(socket.SHUT_WR)
    # Everything the server sends (session tickets, its close), so that
    # closing sends no RST that could overtake the FIN.
    while raw.recv(65536):
        pass
    raw.close()


@pytest.mark.parametrize("suppress", [True, False])
def test_a_ragged_eof_is_what_the_stdlib_makes_of_it(impl: Impl, pki: Any,
                                                     suppress: bool) -> None:
    ours = serve_one(impl, pki, read_to_eof, ragged_close, suppress_ragged_eofs=suppress)
    theirs = serve_one(STDLIB, pki, read_to_eof, ragged_close,
                       suppress_ragged_eofs=suppress)
    assert ours == theirs
    assert ours["got"][:2] == [b"a\n", b"b\n"]
    if suppress:
        assert ours["got"] == [b"a\n", b"b\n", b"partial"]


def unwrap_midstream(handler: Any, record: Dict[str, Any]) -> None:
    record["tls"] = handler.rfile.readline()
    handler.wfile.write(b"going plain\n")
    handler.connection.unwrap()
    record["plain"] = handler.rfile.readline()
    handler.wfile.write(b"plain reply\n")


def client_unwraps(conn: ssl.SSLSocket) -> None:
    conn.sendall(b"over tls\n")
    assert recv_until(conn) == b"going plain\n"
    plain = conn.unwrap()
    plain.sendall(b"in the clear\n")
    assert recv_until(plain) == b"plain reply\n"


def test_a_connection_unwrapped_midstream_carries_on_in_the_clear(ref_impl: Impl,
                                                                  pki: Any) -> None:
    record = serve_one(ref_impl, pki, unwrap_midstream, client_unwraps)
    assert record == {"tls": b"over tls\n", "plain": b"in the clear\n"}


# How the Cython core chooses its path: generated only where it is built.
@pytest.mark.parametrize("impl", [p for p in FASTSERVER_IMPLS if p.id == "cython"])
def test_the_cython_core_drives_a_plain_sslsocket_itself(impl: Impl, tls_pairs: Pair) -> None:
    server, client = tls_pairs()
    with server, client:
        rfile, wfile = impl.core.open_stream(server, -1, 0, 0)
        assert (type(rfile).__name__, type(wfile).__name__) == ("StreamReader", "SocketWriter")
        client.sendall(b"ping\n")
        assert rfile.readline() == b"ping\n"
        wfile.write(b"pong\n")
        assert recv_until(client) == b"pong\n"
        rfile.close()
        # An override of a method the stdlib path calls: the socket module's file.
        server.recv_into = server.recv_into  # type: ignore[method-assign]
        rfile, _ = impl.core.open_stream(server, -1, 0, 0)
        assert type(rfile).__name__ == "BufferedReader"
        rfile.close()
