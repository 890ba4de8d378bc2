"""TLS on stream servers (fastserver.tls): ``ssl_context`` and socketserver's
wrapped-listener idiom, with the handshake off the accept loop.

Certificates are made per test with the openssl command (tests/tlscerts.py).
Every test runs on both backends; the stdlib's side of each difference is in
tests/test_discrepancies.py.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from contextlib import ExitStack
from typing import Any, Iterator, List, Tuple

import pytest

from conftest import HOST, Impl, recv_until, serving, server_address
from tlscerts import CertFiles, client_context, make_ca, make_cert, server_context

SILENT_CLIENTS = 40
# A generous bound on serving one real client while others sit silent: the
# behaviour under test is "served at all, promptly", not a speed.
SERVE_WITHIN = 2.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Tuple[CertFiles, CertFiles, CertFiles]:
    """(ca, server certificate, client certificate)."""
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory)
    return ca, make_cert(directory, ca, "server"), make_cert(directory, ca, "client")


def echo_handler(ss: Any) -> Any:
    class Echo(ss.StreamRequestHandler):
        """Replies with what the handler sees of its connection, then echoes
        one line."""

        def handle(self) -> None:
            request = self.request
            line = self.rfile.readline()
            alpn = request.selected_alpn_protocol() or "-"
            peer = request.getpeercert()
            subject = dict(x[0] for x in peer["subject"])["commonName"] if peer else "-"
            self.wfile.write(("%s %s %s %s " % (type(request).__name__, request.version(),
                                                alpn, subject)).encode() + line)
    return Echo


def make_server(impl: Impl, class_name: str, cert: CertFiles, how: str,
                family: int = socket.AF_INET, context: Any = None, **attrs: Any) -> Any:
    """A server of class_name with TLS, given either way: ``how`` is
    "ssl_context" or "wrapped" (socketserver's idiom)."""
    cls = getattr(impl.ss, class_name)
    # A backlog for the silent crowds: socketserver's 5 drops SYNs when
    # clients connect faster than one loop turn (a 1 s retransmit each).
    # Handler threads are joined by server_close(), so that no connection
    # of this test is still being dropped (and logged) in the next one.
    attrs = {"request_queue_size": 1024, **attrs}
    server = type("Server", (cls,), attrs)(
        server_address(family), echo_handler(impl.ss))
    context = context or server_context(cert)
    if how == "ssl_context":
        server.ssl_context = context
    else:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def tls_request(server: Any, ca: CertFiles, line: bytes = b"hello\n",
                client_cert: Any = None, alpn: Any = None,
                timeout: float = SERVE_WITHIN) -> bytes:
    context = client_context(ca.cert, client_cert)
    if alpn:
        context.set_alpn_protocols(alpn)
    raw = socket.socket(server.address_family, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    raw.connect(server.server_address)
    with context.wrap_socket(raw, server_hostname="localhost") as conn:
        conn.sendall(line)
        return recv_until(conn)


def silent_clients(server: Any, stack: ExitStack, count: int = SILENT_CLIENTS) -> List[socket.socket]:
    """count connections that connect and never send a byte."""
    clients = []
    for _ in range(count):
        sock = socket.socket(server.address_family, socket.SOCK_STREAM)
        stack.callback(sock.close)
        sock.connect(server.server_address)
        clients.append(sock)
    return clients


class Recorder(logging.Handler):
    """Collects fastserver.tls records; ``seen`` is set on each."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: List[logging.LogRecord] = []
        self.seen = threading.Event()
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.records.append(record)
            self.seen.set()
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 10.0) -> bool:
        """Whether a record containing text arrives within timeout (records
        of connections from earlier tests, still being dropped by their
        servers' daemon threads, may come first)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: any(text in r.getMessage() for r in self.records), timeout)


@pytest.fixture
def tls_log() -> Iterator[Recorder]:
    logger = logging.getLogger("fastserver.tls")
    recorder = Recorder()
    saved = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(recorder)
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(saved)


CLASSES = ["ThreadingTCPServer", "ThreadPoolTCPServer", "TCPServer", "ForkingTCPServer"]


@pytest.mark.parametrize("how", ["ssl_context", "wrapped"])
@pytest.mark.parametrize("class_name", CLASSES)
def test_a_real_client_is_served_while_silent_clients_wait(
        impl: Impl, pki: Any, class_name: str, how: str) -> None:
    """The issue's bar: with 40 connections that never send a byte, a real
    client is still served within 2 s, on the threading, the bounded pool
    (default size), the synchronous and the forking server."""
    ca, cert, _ = pki
    server = make_server(impl, class_name, cert, how)
    with serving(server), ExitStack() as stack:
        silent_clients(server, stack)
        assert tls_request(server, ca) == b"SSLSocket TLSv1.3 - - hello\n"
        # And again: the silent ones still hold nothing.
        assert tls_request(server, ca, b"again\n").endswith(b" again\n")


@pytest.mark.parametrize("class_name", ["UnixStreamServer", "ThreadingUnixStreamServer"])
def test_unix_stream_servers_take_ssl_context(impl: Impl, pki: Any, class_name: str) -> None:
    ca, cert, _ = pki
    server = make_server(impl, class_name, cert, "ssl_context", socket.AF_UNIX)
    with serving(server), ExitStack() as stack:
        silent_clients(server, stack, 5)
        assert tls_request(server, ca) == b"SSLSocket TLSv1.3 - - hello\n"


def test_the_handler_sees_the_finished_handshake(impl: Impl, pki: Any) -> None:
    """getpeercert() (a verified client certificate), selected_alpn_protocol()
    and version() work in the handler, as after socketserver's accept."""
    ca, cert, client = pki
    context = server_context(cert, ca.cert, ssl.CERT_REQUIRED)
    context.set_alpn_protocols(["h2", "http/1.1"])
    server = make_server(impl, "ThreadingTCPServer", cert, "ssl_context", context=context)
    with serving(server):
        reply = tls_request(server, ca, client_cert=client, alpn=["http/1.1"])
    assert reply == b"SSLSocket TLSv1.3 http/1.1 client hello\n"


def test_the_wrapped_listeners_options_carry_over(impl: Impl, pki: Any) -> None:
    """The connection is wrapped with the listening socket's context,
    do_handshake_on_connect and suppress_ragged_eofs."""
    ca, cert, _ = pki
    seen: List[Any] = []

    class Server(impl.ss.ThreadingTCPServer):
        daemon_threads = True

        def verify_request(self, request: Any, client_address: Any) -> bool:
            seen.append(request)
            return True

    server = Server((HOST, 0), echo_handler(impl.ss))
    context = server_context(cert)
    server.socket = context.wrap_socket(server.socket, server_side=True,
                                        suppress_ragged_eofs=False)
    with serving(server):
        tls_request(server, ca)
    request = seen[0]
    assert isinstance(request, ssl.SSLSocket)
    assert request.context is context
    assert request.server_side
    assert request.suppress_ragged_eofs is False
    assert request.do_handshake_on_connect is True


def test_a_failed_client_certificate_never_reaches_the_handler(
        impl: Impl, pki: Any, tmp_path: Any, tls_log: Recorder) -> None:
    """verify-client required: a client with a certificate from another CA
    is closed before the handler runs; one DEBUG line, no handle_error()."""
    ca, cert, _ = pki
    other_ca = make_ca(tmp_path, "other")
    stranger = make_cert(tmp_path, other_ca, "stranger")
    handled: List[Any] = []
    errors: List[Any] = []

    class Handler(impl.ss.StreamRequestHandler):
        def handle(self) -> None:
            handled.append(self.client_address)

    class Server(impl.ss.ThreadingTCPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            errors.append(client_address)

    server = Server((HOST, 0), Handler)
    server.ssl_context = server_context(cert, ca.cert, ssl.CERT_REQUIRED)
    with serving(server):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            tls_request(server, ca, client_cert=stranger)
        assert tls_log.seen.wait(10)
    assert handled == [] and errors == []
    assert [r.levelno for r in tls_log.records] == [logging.DEBUG]
    assert "dropped connection from 127.0.0.1:" in tls_log.records[0].getMessage()


def test_datagram_servers_refuse_ssl_context(impl: Impl, pki: Any) -> None:
    """Python's ssl has no DTLS: a class attribute fails at construction,
    an instance attribute when serve_forever() starts."""
    _, cert, _ = pki
    context = server_context(cert)
    with pytest.raises(ValueError, match="no DTLS"):
        type("S", (impl.ss.UDPServer,), {"ssl_context": context})(
            (HOST, 0), impl.ss.DatagramRequestHandler)
    server = impl.ss.ThreadingUDPServer((HOST, 0), impl.ss.DatagramRequestHandler)
    try:
        server.ssl_context = context
        with pytest.raises(ValueError, match="datagram servers cannot use TLS"):
            server.serve_forever()
    finally:
        server.server_close()


def test_ssl_context_must_be_a_context(impl: Impl) -> None:
    server = impl.ss.TCPServer((HOST, 0), impl.ss.StreamRequestHandler)
    try:
        server.ssl_context = "cert.pem"
        with pytest.raises(TypeError, match="ssl_context must be an ssl.SSLContext"):
            server.serve_forever()
    finally:
        server.server_close()


def test_handle_request_handshakes_in_line(impl: Impl, pki: Any) -> None:
    """Without serve_forever() there is no lobby: handle_request() accepts,
    handshakes within the deadline and handles, one request per call."""
    ca, cert, _ = pki
    server = make_server(impl, "TCPServer", cert, "ssl_context")
    replies: List[bytes] = []
    client = threading.Thread(target=lambda: replies.append(tls_request(server, ca)))
    try:
        client.start()
        server.handle_request()
        client.join(10)
    finally:
        server.server_close()
    assert replies == [b"SSLSocket TLSv1.3 - - hello\n"]


def test_a_proxy_header_is_read_before_the_handshake(impl: Impl, pki: Any) -> None:
    """PROXY then TLS (HAProxy's mode tcp with send-proxy-v2 in front of TLS
    it does not terminate): the header is read from the raw socket, then
    the handshake runs on the bytes after it; the handler sees the client
    the header names. tests/test_tls_haproxy.py runs it behind HAProxy."""
    ca, cert, _ = pki

    class Handler(impl.ss.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            self.wfile.write(("%s %s:%d\n" % (self.request.version(),
                                              *self.client_address)).encode())

    class Server(impl.ss.ProxyProtocolMixIn, impl.ss.ThreadingTCPServer):
        daemon_threads = True
        trusted_proxies = ("127.0.0.1",)

    server = Server((HOST, 0), Handler)
    server.ssl_context = server_context(cert)
    with serving(server):
        raw = socket.create_connection(server.server_address, timeout=SERVE_WITHIN)
        raw.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n")
        with client_context(ca.cert).wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(b"hi\n")
            reply = conn.recv(100)
    assert reply == b"TLSv1.3 203.0.113.7:40000\n"
