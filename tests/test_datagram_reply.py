"""DatagramRequestHandler's reply: finish() sends self.wfile to
self.client_address through self.socket exactly as socket.sendto() would.

The Cython core sends numeric addresses itself (core.sendto); everything
else must reach socket.sendto() with its own behaviour and errors. Each test
runs on both backends and on socketserver itself, over real sockets.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap
from typing import Any, List, Optional, Tuple

import pytest

from conftest import HOST, Impl, serving


def reply_server(impl: Impl, family: int = socket.AF_INET,
                 address: Any = None) -> Any:
    """A UDPServer whose handler echoes, replying to ``address`` when given
    (else to the sender). Errors land in server.errors as (type, str)."""
    class Echo(impl.ss.DatagramRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            self.wfile.write(self.rfile.read())
            if address is not None:
                self.client_address = address(self.client_address) \
                    if callable(address) else address

    class Server(impl.ss.UDPServer):  # type: ignore[name-defined]
        address_family = family

        def handle_error(self, request: Any, client_address: Any) -> None:
            exc = sys.exc_info()[1]
            self.errors.append((type(exc), str(exc)))

    server = Server(("::1" if family == socket.AF_INET6 else HOST, 0), Echo)
    server.errors = []
    return server


def client_for(server: Any) -> socket.socket:
    sock = socket.socket(server.address_family, socket.SOCK_DGRAM)
    sock.settimeout(10)
    sock.bind((server.server_address[0], 0))
    return sock


@pytest.mark.parametrize("host", ["localhost", b"127.0.0.1"], ids=repr)
def test_reply_to_a_non_numeric_address(ref_impl: Impl, host: Any) -> None:
    # Neither is a numeric str: socket.sendto() resolves or decodes them.
    server = reply_server(ref_impl, address=lambda a: (host, a[1]))
    with serving(server, poll_interval=0.02), client_for(server) as client:
        client.sendto(b"by name", server.server_address)
        assert client.recvfrom(100) == (b"by name", server.server_address)
    assert server.errors == []


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
@pytest.mark.parametrize("shape", ["as received", "2-tuple", "3-tuple"])
def test_reply_over_ipv6(ref_impl: Impl, shape: str) -> None:
    trim = {"as received": None,
            "2-tuple": lambda a: a[:2],
            "3-tuple": lambda a: a[:3]}[shape]
    server = reply_server(ref_impl, socket.AF_INET6, address=trim)
    with serving(server, poll_interval=0.02), client_for(server) as client:
        client.sendto(b"six", server.server_address[:2])
        data, source = client.recvfrom(100)
        assert data == b"six" and source[:2] == server.server_address[:2]
    assert server.errors == []


def _sendto_error(sender: Any, data: Any, address: Any,
                  sock: Any = None) -> Optional[Tuple[type, str]]:
    """The error of sender.sendto(data, address), or of the core's
    sendto(sock, data, address) when sock is given."""
    try:
        if sock is None:
            sender.sendto(data, address)
        else:
            sender.sendto(sock, data, address)
    except Exception as exc:
        return type(exc), str(exc)
    return None


BAD_ADDRESSES: List[Any] = [
    ("127.0.0.1", 70000),          # port out of range
    ("127.0.0.1", -1),
    ("127.0.0.1", "80"),           # port of the wrong type
    ("127.0.0.1",),                # wrong length
    ("127.0.0.1", 80, 0),
    ("127.0.0.1\0junk", 80),       # embedded NUL
    ["127.0.0.1", 80],             # a list, not a tuple
    ("127.0.0.1", 2 ** 70),        # larger than any C integer
]


@pytest.mark.parametrize("address", BAD_ADDRESSES, ids=repr)
def test_bad_reply_address_fails_as_sendto_does(ref_impl: Impl,
                                                address: Any) -> None:
    server = reply_server(ref_impl, address=address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        expected = _sendto_error(probe, b"x", address)
    assert expected is not None
    with serving(server, poll_interval=0.02), client_for(server) as client:
        client.settimeout(0.3)
        client.sendto(b"x", server.server_address)
        with pytest.raises(socket.timeout):
            client.recvfrom(100)
    assert server.errors == [expected]


def test_reply_honours_a_socket_subclass_sendto(ref_impl: Impl) -> None:
    sent: List[Tuple[bytes, Any]] = []

    class Recording(socket.socket):
        def sendto(self, data: Any, *args: Any) -> int:  # type: ignore[override]
            sent.append((bytes(data), args[-1]))
            return super().sendto(data, *args)

    server = reply_server(ref_impl)
    plain = server.socket
    server.socket = Recording(plain.family, plain.type, fileno=plain.detach())
    with serving(server, poll_interval=0.02), client_for(server) as client:
        client.sendto(b"seen", server.server_address)
        assert client.recvfrom(100)[0] == b"seen"
        assert sent == [(b"seen", client.getsockname())]


@pytest.mark.parametrize("data", [b"", b"abc", bytearray(b"xyz"),
                                  memoryview(b"0123456789")[2:5]],
                         ids=["empty", "bytes", "bytearray", "memoryview"])
def test_core_sendto_sends_any_bytes_like(impl: Impl, data: Any) -> None:
    core = impl.core
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        b.bind((HOST, 0))
        b.settimeout(10)
        assert core.sendto(a, data, b.getsockname()) == len(bytes(data))
        assert b.recvfrom(100)[0] == bytes(data)


def test_core_sendto_errors_are_sendtos(impl: Impl) -> None:
    core = impl.core
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.close()
    with pytest.raises(OSError) as caught:
        core.sendto(sock, b"x", (HOST, 9))
    assert caught.value.errno == errno.EBADF
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as live:
        # Not a contiguous buffer: socket.sendto's own error.
        for data in (memoryview(b"abcdef")[::2], "text", None):
            expected = _sendto_error(live, data, (HOST, 9))
            assert expected is not None
            assert _sendto_error(core, data, (HOST, 9), live) == expected


AUDIT_SCRIPT = textwrap.dedent("""
    import socket, sys
    events = []
    sys.addaudithook(lambda name, args: name == "socket.sendto"
                     and events.append(args[1]))
    ss = __import__(sys.argv[1])

    class Echo(ss.DatagramRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.read())

    with ss.UDPServer(("127.0.0.1", 0), Echo) as server:
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        client.sendto(b"audit", server.server_address)
        events.clear()  # the client's own send is an event too
        server.handle_request()
        print(getattr(ss, "backend", "stdlib"), events == [client.getsockname()],
              len(events))
""")


def test_reply_raises_the_sendto_audit_event(ref_impl: Impl) -> None:
    env = dict(os.environ)
    env.pop("FASTSERVER_NO_EXTENSIONS", None)
    if ref_impl.name == "python":
        env["FASTSERVER_NO_EXTENSIONS"] = "1"
    module = "socketserver" if ref_impl.is_stdlib else "fastserver"
    out = subprocess.run([sys.executable, "-c", AUDIT_SCRIPT, module],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [ref_impl.name, "True", "1"]
