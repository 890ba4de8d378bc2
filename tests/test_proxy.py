"""The PROXY protocol: the parser (hand-built headers, fuzzing) and the
server integration (trust, the header read through rfile, timeouts), on
each backend.

Headers are built here with struct, independently of the module's own
writer, so that the parser is checked against the specification's layout
rather than against itself.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import HOST, Impl, backend_env, recv_until, serving, unix_path

from fastserver import proxy
from fastserver.proxy import IncompleteHeader, ProxyHeader, ProxyProtocolError, parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))

from supervised import SCRIPTS, Supervised  # noqa: E402

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
INET, INET6, UNIX = socket.AF_INET, socket.AF_INET6, socket.AF_UNIX
STREAM, DGRAM = socket.SOCK_STREAM, socket.SOCK_DGRAM


# --- hand-built headers -------------------------------------------------------


def v2(body: bytes = b"", command: int = 0x21, family: int = 0x11,
       length: Optional[int] = None) -> bytes:
    return SIG + bytes([command, family]) + struct.pack(
        "!H", len(body) if length is None else length) + body


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def inet4(src: str = "192.0.2.1", dst: str = "198.51.100.2",
          sport: int = 40000, dport: int = 443) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str = "2001:db8::1", dst: str = "2001:db8::2",
          sport: int = 40000, dport: int = 443) -> bytes:
    return (socket.inet_pton(INET6, src) + socket.inet_pton(INET6, dst)
            + struct.pack("!HH", sport, dport))


def unix_block(src: bytes = b"/run/client.sock", dst: bytes = b"/run/app.sock") -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


def crc32c_reference(data: bytes) -> int:
    # Bit by bit, independently of the module's table.
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def with_crc(body_without_crc: bytes, family: int = 0x11) -> bytes:
    body = body_without_crc + tlv(0x03, b"\0\0\0\0")
    header = v2(body, family=family)
    crc = crc32c_reference(header)
    return header[:-4] + struct.pack("!I", crc)


# --- version 1 ------------------------------------------------------------------


@pytest.mark.parametrize("line,family,source,destination", [
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n", INET,
     ("192.0.2.1", 56324), ("198.51.100.2", 443)),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", INET,
     ("0.0.0.0", 0), ("255.255.255.255", 65535)),
    (b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n", INET6,
     ("2001:db8::1", 1), ("::1", 2)),
    (b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::ffff:192.0.2.1 1 2\r\n", INET6,
     ("2001:db8::1", 1), ("::ffff:192.0.2.1", 2)),
])
def test_v1_families(line: bytes, family: int, source: Any, destination: Any) -> None:
    header, length = parse(line + b"GET / HTTP/1.0\r\n")
    assert length == len(line)
    assert header == ProxyHeader(1, "PROXY", family, STREAM, source, destination)
    assert parse(header.to_bytes(), "v1") == (header, len(header.to_bytes()))


@pytest.mark.parametrize("line", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n",  # exactly 107 bytes
])
def test_v1_unknown_keeps_real_endpoints(line: bytes) -> None:
    assert len(line) <= 107
    header, length = parse(line)
    assert length == len(line)
    assert header.family == socket.AF_UNSPEC and header.source is None
    assert header.client_address is None


def test_v1_longest_tcp6_line() -> None:
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = ("PROXY TCP6 %s %s 65535 65535\r\n" % (full, full)).encode()
    header, length = parse(line)
    assert length == len(line) == 104
    assert header.client_address == (full, 65535, 0, 0)


@pytest.mark.parametrize("data", [
    b"PROXY UNKNOWN " + b"x" * (108 - 16) + b"\r\n",         # 108 bytes
    b"PROXY TCP4 " + b"1" * 200,                             # no end in 107
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",              # LF without CR
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n",              # 5 fields
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",          # 7 fields
    b"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n",           # two spaces
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",           # trailing space
    b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY UNKNOWNX\r\n",
    b"PROXY\r\n",
    b"PROXY TCP4 256.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 01.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 1.2.3 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 1.2.3.4.5 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",          # IPv6 in TCP4
    b"PROXY TCP6 192.0.2.1 ::1 1 2\r\n",                     # IPv4 in TCP6
    b"PROXY TCP6 2001:db8::1%eth0 ::1 1 2\r\n",              # scope id
    b"PROXY TCP6 2001:db8:::1 ::1 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",        # bad ports
    b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 080 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1a 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 123456 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 \xd9\xa1 2\r\n",     # non-ASCII digit
    b"PROXY TCP4 192.0.2.\xff 198.51.100.2 1 2\r\n",
    b"GET / HTTP/1.1\r\n",
])
def test_v1_invalid(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError) as info:
        parse(data)
    assert not isinstance(info.value, IncompleteHeader)


@pytest.mark.parametrize("data", [b"", b"P", b"PROXY", b"PROXY TCP4 192.0.2.1",
                                  b"PROXY UNKNOWN\r"])
def test_v1_incomplete(data: bytes) -> None:
    with pytest.raises(IncompleteHeader) as info:
        parse(data)
    assert info.value.needed in (None, 1)


# --- version 2 ------------------------------------------------------------------


@pytest.mark.parametrize("family_byte,block,family,protocol,source,destination", [
    (0x11, inet4(), INET, STREAM, ("192.0.2.1", 40000), ("198.51.100.2", 443)),
    (0x12, inet4(), INET, DGRAM, ("192.0.2.1", 40000), ("198.51.100.2", 443)),
    (0x21, inet6(), INET6, STREAM, ("2001:db8::1", 40000), ("2001:db8::2", 443)),
    (0x22, inet6(), INET6, DGRAM, ("2001:db8::1", 40000), ("2001:db8::2", 443)),
    (0x31, unix_block(), UNIX, STREAM, b"/run/client.sock", b"/run/app.sock"),
    (0x32, unix_block(), UNIX, DGRAM, b"/run/client.sock", b"/run/app.sock"),
    (0x00, b"", socket.AF_UNSPEC, None, None, None),
])
def test_v2_families(family_byte: int, block: bytes, family: int,
                     protocol: Any, source: Any, destination: Any) -> None:
    data = v2(block, family=family_byte)
    header, length = parse(data + b"payload")
    assert length == len(data)
    assert header == ProxyHeader(2, "PROXY", family, protocol, source, destination)
    assert header.to_bytes() == data
    assert parse(data, "v2") == (header, length)


def test_v2_client_addresses() -> None:
    assert parse(v2(inet4()))[0].client_address == ("192.0.2.1", 40000)
    assert parse(v2(inet6(), family=0x21))[0].client_address == \
        ("2001:db8::1", 40000, 0, 0)
    assert parse(v2(unix_block(), family=0x31))[0].client_address == \
        "/run/client.sock"
    assert parse(v2(b"\0abstract".ljust(216, b"\0"), family=0x31))[0] \
        .client_address == b"\0abstract"
    assert parse(v2(b"", family=0x00))[0].client_address is None


@pytest.mark.parametrize("family_byte,block", [
    (0x00, b""), (0x11, inet4()), (0x21, inet6()), (0x31, unix_block()),
    (0x11, b""), (0x55, b"anything at all"),
])
def test_v2_local_keeps_real_endpoints(family_byte: int, block: bytes) -> None:
    data = v2(block, command=0x20, family=family_byte)
    header, length = parse(data)
    assert length == len(data)
    assert header.command == "LOCAL" and header.source is None
    assert header.client_address is None
    assert parse(header.to_bytes()) == (header, 16)


def test_v2_tlvs() -> None:
    ssl = (bytes([0x07]) + struct.pack("!I", 0)
           + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client.example")
           + tlv(0x23, b"TLS_AES_128_GCM_SHA256") + tlv(0x24, b"RSA-SHA256")
           + tlv(0x25, b"RSA2048"))
    body = (inet4() + tlv(0x01, b"h2") + tlv(0x02, "bücher.example".encode())
            + tlv(0x04, b"\0\0\0") + tlv(0x05, b"\x01" * 128) + tlv(0x20, ssl)
            + tlv(0x30, b"blue") + tlv(0xE0, b"custom") + tlv(0x04, b""))
    data = with_crc(body)
    header, length = parse(data)
    assert length == len(data)
    assert [t.type for t in header.tlvs] == [1, 2, 4, 5, 0x20, 0x30, 0xE0, 4, 3]
    assert header.alpn == b"h2"
    assert header.authority == "bücher.example"
    assert header.unique_id == b"\x01" * 128
    assert header.netns == "blue"
    assert header.get(0xE0) == b"custom" and header.get(0x99) is None
    info = header.ssl
    assert info is not None
    assert (info.client, info.verify) == (7, 0)
    assert (info.version, info.cn, info.cipher, info.sig_alg, info.key_alg) == (
        "TLSv1.3", "client.example", "TLS_AES_128_GCM_SHA256", "RSA-SHA256", "RSA2048")
    assert header.to_bytes() == data


def test_crc32c_known_value() -> None:
    assert proxy.crc32c(b"123456789") == 0xE3069283 == crc32c_reference(b"123456789")


def _bad_crc() -> bytes:
    data = with_crc(inet4())
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize("data,message", [
    (b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c" + inet4(), "not a"),
    (v2(inet4(), command=0x11), "version"),
    (v2(inet4(), command=0x31), "version"),
    (v2(inet4(), command=0x01), "version"),
    (v2(inet4(), command=0x22), "command"),
    (v2(inet4(), command=0x2F), "command"),
    (v2(inet4(), family=0x13), "family"),
    (v2(inet4(), family=0x10), "family"),
    (v2(inet4(), family=0x41), "family"),
    (v2(inet4()[:11], family=0x11), "too short"),
    (v2(inet6()[:35], family=0x21), "too short"),
    (v2(unix_block()[:200], family=0x31), "too short"),
    (v2(inet4() + b"\x01\x00"), "truncated"),
    (v2(inet4() + b"\x01\x00\x05ab"), "overruns"),
    (v2(inet4() + tlv(0x03, b"abc")), "CRC32C"),
    (v2(inet4() + tlv(0x03, b"\0\0\0\0")), "CRC32C mismatch"),
    (_bad_crc(), "CRC32C mismatch"),
    (v2(inet4() + tlv(0x02, b"\xff\xfe")), "UTF-8"),
    (v2(inet4() + tlv(0x05, b"x" * 129)), "unique ID"),
    (v2(inet4() + tlv(0x30, b"\xff")), "ASCII"),
    (v2(inet4() + tlv(0x20, b"\x01\0\0\0")), "SSL"),
    (v2(inet4() + tlv(0x20, b"\x01\0\0\0\0" + b"\x21\x00\x09TLS")), "SSL sub-TLV"),
])
def test_v2_invalid(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message) as info:
        parse(data)
    assert not isinstance(info.value, IncompleteHeader)


@pytest.mark.parametrize("data,needed", [
    (SIG[:1], 16), (SIG[:11], 16), (SIG, 16), (v2(inet4())[:15], 16),
    (v2(inet4())[:16], 28), (v2(inet4())[:27], 28),
    (v2(b"", length=0xFFFF), 0xFFFF + 16),  # length overflowing the data
])
def test_v2_incomplete(data: bytes, needed: int) -> None:
    with pytest.raises(IncompleteHeader) as info:
        parse(data)
    assert info.value.needed == needed


def test_version_selection() -> None:
    with pytest.raises(ProxyProtocolError, match="version 2"):
        parse(b"PROXY UNKNOWN\r\n", "v2")
    with pytest.raises(ProxyProtocolError, match="version 1"):
        parse(v2(inet4()), "v1")
    with pytest.raises(ValueError):
        parse(b"", "v3")


def test_writer_refuses_what_it_cannot_write() -> None:
    with pytest.raises(ProxyProtocolError):
        ProxyHeader(1, "PROXY", UNIX, STREAM, b"a", b"b").to_bytes()
    with pytest.raises(ProxyProtocolError):
        ProxyHeader(1, "LOCAL", socket.AF_UNSPEC, None).to_bytes()
    with pytest.raises(ProxyProtocolError):
        ProxyHeader(2, "PROXY", INET, STREAM, ("192.0.2.1", 1), ("192.0.2.2", 2),
                    (proxy.TLV(0xE0, b"x" * 0xFFFF),)).to_bytes()
    with pytest.raises(ProxyProtocolError):
        ProxyHeader(3, "PROXY", INET, STREAM).to_bytes()


# --- fuzzing ------------------------------------------------------------------


def check_parse(data: bytes, version: str = "auto") -> None:
    """parse() raises only its own error; what it accepts is a header that
    is written back equivalently, and every shorter prefix of it is
    reported incomplete (so that a reader never rejects a valid header it
    has only partly received)."""
    try:
        header, length = parse(data, version)
    except IncompleteHeader as exc:
        assert exc.needed is None or exc.needed > len(data)
        return
    except ProxyProtocolError:
        return
    assert 0 < length <= len(data)
    written = header.to_bytes()
    assert parse(written, version) == (header, len(written))
    if header.version == 2 and header.command == "PROXY":
        assert written == data[:length]  # every byte was understood
    if header.version == 1 and header.family == socket.AF_UNSPEC:
        assert written == b"PROXY UNKNOWN\r\n"
    for cut in sorted({0, 1, 6, 11, 12, 15, 16, length // 2, length - 1}):
        if cut < length:
            with pytest.raises(IncompleteHeader):
                parse(data[:cut], version)


FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "%d.%d.%d.%d" % t)
ipv6 = st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(INET6, b))
ports = st.integers(0, 65535)
tlv_values = st.lists(st.one_of(
    st.tuples(st.sampled_from([0x01, 0x04, 0x05, 0xE0, 0xF1]), st.binary(max_size=40)),
    st.tuples(st.just(0x02), st.text(max_size=20).map(lambda t: t.encode("utf-8"))),
    st.tuples(st.just(0x30), st.text(alphabet="abcxyz-0", max_size=10).map(str.encode)),
    st.tuples(st.just(0x20), st.builds(
        lambda flags, subs: bytes([flags]) + b"\0\0\0\0" + b"".join(
            tlv(k, v) for k, v in subs),
        st.integers(0, 7), st.lists(st.tuples(st.integers(0x21, 0x25),
                                              st.binary(max_size=12)), max_size=3))),
), max_size=4)


@st.composite
def v2_headers(draw: Any) -> bytes:
    family = draw(st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32]))
    if family >> 4 == 1:
        block = inet4(draw(ipv4), draw(ipv4), draw(ports), draw(ports))
    elif family >> 4 == 2:
        block = inet6(draw(ipv6), draw(ipv6), draw(ports), draw(ports))
    elif family >> 4 == 3:
        block = unix_block(draw(st.binary(max_size=108)), draw(st.binary(max_size=108)))
    else:
        block = b""
    body = block + b"".join(tlv(k, v) for k, v in draw(tlv_values))
    if draw(st.booleans()):
        return with_crc(body, family)
    command = draw(st.sampled_from([0x21, 0x20]))
    return v2(body, command=command, family=family)


@st.composite
def v1_headers(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]))
    if kind == "UNKNOWN":
        rest = draw(st.text(alphabet="0123456789abcdef:. ", max_size=60))
        return ("PROXY UNKNOWN" + (" " + rest if rest else "") + "\r\n").encode()
    host = ipv4 if kind == "TCP4" else ipv6
    return ("PROXY %s %s %s %d %d\r\n" % (kind, draw(host), draw(host),
                                          draw(ports), draw(ports))).encode()


@st.composite
def mutated(draw: Any, headers: Any) -> bytes:
    data = bytearray(draw(headers))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data) + draw(st.binary(max_size=8))


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["auto", "v1", "v2"]))
def test_fuzz_random_bytes(data: bytes, version: str) -> None:
    check_parse(data, version)
    check_parse(SIG + data, version)
    check_parse(b"PROXY " + data, version)


@FUZZ
@given(st.one_of(v1_headers(), v2_headers()))
def test_fuzz_valid_headers_accepted(data: bytes) -> None:
    header, length = parse(data + b"trailing")
    assert length == len(data)
    check_parse(data)


@FUZZ
@given(st.one_of(mutated(v1_headers()), mutated(v2_headers())))
def test_fuzz_mutated_headers(data: bytes) -> None:
    check_parse(data)


# --- the server side, on each backend ---------------------------------------


TRUSTED = "127.0.0.1"
OTHER = "127.0.0.2"


def make_handler(impl: Impl, base: Any = None) -> Any:
    base = base or impl.ss.StreamRequestHandler

    class Report(base):  # type: ignore[misc, valid-type]
        runs: List[Dict[str, Any]] = []

        def handle(self) -> None:
            line = self.rfile.readline()
            header = self.proxy_header
            info = {
                "client": list(self.client_address),
                "proxy": list(self.proxy_address) if self.proxy_address else None,
                "command": header.command if header else None,
                "tlvs": [[t.type, t.value.decode("latin-1")] for t in self.proxy_tlvs],
                "line": line.decode("latin-1"),
                "rfile": "%s.%s" % (type(self.rfile).__module__,
                                    type(self.rfile).__name__),
            }
            type(self).runs.append(info)
            self.wfile.write(json.dumps(info).encode() + b"\n")

    Report.runs = []
    return Report


def make_server(impl: Impl, handler: Any, **attrs: Any) -> Any:
    attrs.setdefault("trusted_proxies", ["127.0.0.1/32"])
    attrs.setdefault("daemon_threads", True)
    cls = type("ProxiedServer", (impl.ss.ProxyProtocolMixIn,
                                 impl.ss.ThreadingTCPServer), attrs)
    return cls((HOST, 0), handler)


@contextlib.contextmanager
def proxied(impl: Impl, handler: Any = None, **attrs: Any) -> Iterator[Any]:
    server = make_server(impl, handler or make_handler(impl), **attrs)
    with serving(server):
        yield server


def client(server: Any, source: str = TRUSTED, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(server.server_address)
    return sock


def exchange(server: Any, *pieces: bytes, source: str = TRUSTED,
             pause: float = 0.0) -> bytes:
    with client(server, source) as sock:
        for piece in pieces:
            sock.sendall(piece)
            if pause:
                time.sleep(pause)
        return recv_until(sock)


def refused(server: Any, data: bytes, source: str = TRUSTED) -> bool:
    """Whether the server closes the connection without answering: EOF, or
    a reset (closing with the client's bytes unread resets)."""
    try:
        return exchange(server, data, source=source) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def report(raw: bytes) -> Dict[str, Any]:
    assert raw.endswith(b"\n"), raw
    return json.loads(raw)  # type: ignore[no-any-return]


V1_LINE = b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 8080\r\n"


@pytest.mark.parametrize("mode", ["v1", "auto"])
def test_v1_through_rfile(impl: Impl, mode: str) -> None:
    with proxied(impl, proxy_protocol=mode) as server:
        got = report(exchange(server, V1_LINE + b"hello\nmore\n"))
    assert got["client"] == ["192.0.2.7", 51000]
    assert got["proxy"][0] == TRUSTED
    assert got["command"] == "PROXY" and got["line"] == "hello\n"
    # The handler reads the rest through the backend's own reader.
    expected = "fastserver._core.StreamReader" if impl.name == "cython" \
        else "_io.BufferedReader"
    assert got["rfile"] == expected


@pytest.mark.parametrize("mode", ["v2", "auto"])
def test_v2_with_tlvs(impl: Impl, mode: str) -> None:
    header = with_crc(inet6("2001:db8::7", "2001:db8::1", 51000, 443)
                      + tlv(0x05, b"req-42") + tlv(0x01, b"h2"), family=0x21)
    with proxied(impl, proxy_protocol=mode) as server:
        got = report(exchange(server, header + b"hello\n"))
    assert got["client"] == ["2001:db8::7", 51000, 0, 0]
    assert got["tlvs"] == [[5, "req-42"], [1, "h2"], [3, got["tlvs"][2][1]]]
    assert got["line"] == "hello\n"


def test_header_in_pieces(impl: Impl) -> None:
    """The header split over many segments (and the data after it in the
    same segment as its end) is reassembled, and nothing after it is lost."""
    data = v2(inet4("192.0.2.9") + tlv(0xE0, b"x" * 3000)) + b"after\n"
    pieces = [data[i:i + 7] for i in range(0, 70, 7)] + [data[70:]]
    with proxied(impl, proxy_protocol="v2") as server:
        got = report(exchange(server, *pieces, pause=0.005))
    assert got["client"][0] == "192.0.2.9" and got["line"] == "after\n"


def test_v2_local_keeps_real_address(impl: Impl) -> None:
    with proxied(impl, proxy_protocol="v2") as server:
        with client(server) as sock:
            sock.sendall(v2(b"", command=0x20, family=0x00) + b"ping\n")
            got = report(recv_until(sock))
            port = sock.getsockname()[1]
    assert got["client"] == [TRUSTED, port] and got["command"] == "LOCAL"
    assert got["proxy"] == [TRUSTED, port]


def test_unknown_keeps_real_address(impl: Impl) -> None:
    with proxied(impl, proxy_protocol="v1") as server:
        with client(server) as sock:
            sock.sendall(b"PROXY UNKNOWN\r\nping\n")
            got = report(recv_until(sock))
            assert got["client"] == [TRUSTED, sock.getsockname()[1]]


def test_untrusted_forged_header_closed(impl: Impl, caplog: Any) -> None:
    handler = make_handler(impl)
    with caplog.at_level(logging.WARNING, logger="fastserver.proxy"):
        with proxied(impl, handler, proxy_protocol="auto") as server:
            assert refused(server, V1_LINE + b"hello\n", source=OTHER)
            # The server keeps serving its proxy.
            assert report(exchange(server, V1_LINE + b"x\n"))["client"][0] == "192.0.2.7"
    assert len(handler.runs) == 1
    assert "not a trusted proxy" in caplog.text and OTHER in caplog.text


def test_untrusted_served_with_real_address(impl: Impl) -> None:
    with proxied(impl, proxy_protocol="auto", proxy_untrusted="serve") as server:
        with client(server, OTHER) as sock:
            sock.sendall(V1_LINE + b"hello\n")
            got = report(recv_until(sock))
            port = sock.getsockname()[1]
    # The header is not believed: it is the handler's first line of data.
    assert got["client"] == [OTHER, port] and got["proxy"] is None
    assert got["line"] == V1_LINE.decode()


def test_trust_checks(impl: Impl) -> None:
    server = make_server(impl, make_handler(impl),
                         trusted_proxies=["10.0.0.0/8", "::1", "127.0.0.1"])
    try:
        assert server.proxy_trusted(("10.1.2.3", 1))
        assert server.proxy_trusted(("::ffff:10.1.2.3", 1, 0, 0))
        assert server.proxy_trusted(("::1", 1, 0, 0))
        assert server.proxy_trusted(("127.0.0.1", 1))
        assert not server.proxy_trusted(("127.0.0.2", 1))
        assert not server.proxy_trusted(("11.0.0.1", 1))
        assert not server.proxy_trusted("")
        server.trusted_proxies = []
        assert not server.proxy_trusted(("127.0.0.1", 1))
    finally:
        server.server_close()


@pytest.mark.parametrize("data,reason", [
    (b"GET / HTTP/1.0\r\n\r\n", "not a"),
    (b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\nhello\n", "IPv4"),
    (b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n", "longer than 107"),
    (v2(inet4(), command=0x31) + b"hello\n", "version"),
    (v2(inet4() + b"\x01\x00\x09ab") + b"hello\n", "overruns"),
    (b"PROXY TCP4 192.0.2.1", "closed"),  # then the client shuts down
])
def test_bad_header_dropped_and_logged(impl: Impl, caplog: Any, data: bytes,
                                       reason: str) -> None:
    handler = make_handler(impl)
    with caplog.at_level(logging.WARNING, logger="fastserver.proxy"):
        with proxied(impl, handler, proxy_protocol="auto") as server:
            with client(server) as sock:
                try:
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                    assert recv_until(sock) == b""
                except (ConnectionError, socket.timeout) as exc:
                    # reset: closed with bytes unread (not a timeout)
                    assert not isinstance(exc, socket.timeout)
                except OSError as exc:
                    assert exc.errno == errno.ENOTCONN  # shutdown after a reset
            assert report(exchange(server, V1_LINE + b"x\n"))["line"] == "x\n"
    assert len(handler.runs) == 1
    assert "dropped connection" in caplog.text and reason in caplog.text


@pytest.mark.parametrize("trickle", [False, True])
def test_slow_header_dropped(impl: Impl, caplog: Any, trickle: bool) -> None:
    """One deadline covers the whole header, even one that trickles in a
    byte at a time."""
    handler = make_handler(impl)
    with caplog.at_level(logging.WARNING, logger="fastserver.proxy"):
        with proxied(impl, handler, proxy_protocol="v1", proxy_timeout=0.5) as server:
            with client(server) as sock:
                start = time.monotonic()
                sock.sendall(b"PROXY TCP4 ")
                closed = False
                for byte in b"192.0.2.1 127.0.0.1 1 2"[:30]:
                    if not trickle:
                        break
                    try:
                        sock.sendall(bytes([byte]))
                    except OSError:
                        closed = True
                        break
                    time.sleep(0.1)
                if not closed:
                    try:
                        assert recv_until(sock) == b""
                    except ConnectionResetError:
                        pass
                elapsed = time.monotonic() - start
            assert report(exchange(server, V1_LINE + b"x\n"))["line"] == "x\n"
    assert 0.4 <= elapsed < 2.5, elapsed
    assert handler.runs and len(handler.runs) == 1
    assert "no complete header within 0.5 s" in caplog.text


def test_default_timeout_is_three_seconds(impl: Impl) -> None:
    assert impl.ss.ProxyProtocolMixIn.proxy_timeout == 3.0
    assert impl.ss.ProxyProtocolMixIn.proxy_untrusted == "close"
    assert impl.ss.ProxyProtocolMixIn.trusted_proxies == ()


def test_off_means_untouched(impl: Impl) -> None:
    with proxied(impl, proxy_protocol=None) as server:
        got = report(exchange(server, V1_LINE))
    assert got["line"] == V1_LINE.decode() and got["client"][0] == TRUSTED


def test_setup_override_sees_real_client(impl: Impl) -> None:
    """The header is read as soon as StreamRequestHandler.setup() makes
    rfile, so a setup() override already sees the client and the data."""
    seen: List[Any] = []

    class Greeter(impl.ss.StreamRequestHandler):  # type: ignore[name-defined]
        def setup(self) -> None:
            super().setup()
            seen.append((self.client_address, self.rfile.readline()))

        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    with proxied(impl, Greeter, proxy_protocol="v1") as server:
        assert exchange(server, V1_LINE + b"first\nsecond\n") == b"second\n"
    assert seen == [(("192.0.2.7", 51000), b"first\n")]


def test_unbuffered_and_plain_handlers(impl: Impl) -> None:
    """rbufsize = 0 and BaseRequestHandler read the header from the socket
    itself: the stream starts right after it."""
    class Unbuffered(impl.ss.StreamRequestHandler):  # type: ignore[name-defined]
        rbufsize = 0

        def handle(self) -> None:
            self.wfile.write(b"%s %s" % (self.client_address[0].encode(),
                                         self.rfile.readline()))

    class Plain(impl.ss.BaseRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            data = recv_until(self.request)
            self.request.sendall(b"%s %s" % (self.client_address[0].encode(), data))

    for handler in (Unbuffered, Plain):
        with proxied(impl, handler, proxy_protocol="auto") as server:
            assert exchange(server, V1_LINE + b"one\n") == b"192.0.2.7 one\n"
            assert exchange(server, v2(inet4("192.0.2.8")) + b"two\n") == \
                b"192.0.2.8 two\n"


def test_handler_is_the_users_class(impl: Impl) -> None:
    """The handler is an instance of the handler class itself (no subclass
    is made), and its attributes are set before its setup() runs."""
    seen: List[Any] = []

    class Plain(impl.ss.StreamRequestHandler):  # type: ignore[name-defined]
        def setup(self) -> None:
            seen.append((type(self), self.client_address, self.proxy_address,
                         self.proxy_header.version, self.proxy_tlvs))
            super().setup()

        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    with proxied(impl, Plain, proxy_protocol="auto") as server:
        assert exchange(server, V1_LINE + b"ok\n") == b"ok\n"
    [(kind, client, proxy_address, version, tlvs)] = seen
    assert kind is Plain and client == ("192.0.2.7", 51000)
    assert proxy_address[0] == TRUSTED and version == 1 and tlvs == ()
    assert not hasattr(proxy, "_proxied_handler")


@pytest.mark.parametrize("kind", ["buffered", "unbuffered", "plain"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_no_byte_lost_after_the_header(impl: Impl, kind: str, version: str) -> None:
    """The header and 200 KB after it in one send: the handler's first byte
    is the first byte after the header, whatever reads it."""
    payload = bytes(range(256)) * 800
    header = V1_LINE if version == "v1" else v2(inet4("192.0.2.8"))

    class Stream(impl.ss.StreamRequestHandler):  # type: ignore[name-defined]
        rbufsize = 0 if kind == "unbuffered" else -1

        def handle(self) -> None:
            data = b""
            while len(data) < len(payload):  # unbuffered: short reads
                chunk = self.rfile.read(len(payload) - len(data))
                if not chunk:
                    break
                data += chunk
            self.wfile.write(b"%d %s\n" % (len(data), b"ok" if data == payload else b"bad"))

    class Plain(impl.ss.BaseRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            data = b""
            while len(data) < len(payload):
                chunk = self.request.recv(65536)
                if not chunk:
                    break
                data += chunk
            self.request.sendall(b"%d %s\n" % (len(data), b"ok" if data == payload else b"bad"))

    handler = Plain if kind == "plain" else Stream
    with proxied(impl, handler, proxy_protocol="auto") as server:
        assert exchange(server, header + payload) == b"%d ok\n" % len(payload)


def test_proxy_header_received_hook(impl: Impl) -> None:
    """proxy_header_received(handler, header) runs before setup(), once the
    attributes are set; an override may take more from the header."""
    calls: List[Any] = []

    class Server(impl.ss.ProxyProtocolMixIn, impl.ss.ThreadingTCPServer):  # type: ignore[name-defined]
        trusted_proxies = ["127.0.0.1"]
        daemon_threads = True

        def proxy_header_received(self, handler: Any, header: Any) -> None:
            super().proxy_header_received(handler, header)
            calls.append((handler.client_address, handler.proxy_header is header,
                          hasattr(handler, "rfile")))
            handler.request_id = header.unique_id

    class Handler(impl.ss.StreamRequestHandler):  # type: ignore[name-defined]
        def handle(self) -> None:
            self.wfile.write(self.request_id + b" " + self.rfile.readline())

    header = v2(inet4("192.0.2.9") + tlv(0x05, b"id-1"))
    with serving(Server((HOST, 0), Handler)) as server:
        assert exchange(server, header + b"x\n") == b"id-1 x\n"
    assert calls == [(("192.0.2.9", 40000), True, False)]


def test_configuration_errors(impl: Impl) -> None:
    with pytest.raises(TypeError, match="stream servers only"):
        type("U", (impl.ss.ProxyProtocolMixIn, impl.ss.UDPServer), {})(
            (HOST, 0), impl.ss.DatagramRequestHandler)
    with pytest.raises(ValueError, match="proxy_protocol"):
        make_server(impl, make_handler(impl), proxy_protocol="v3")
    with pytest.raises(ValueError, match="trusted_proxies"):
        make_server(impl, make_handler(impl), trusted_proxies=["not-a-network"])
    with pytest.raises(ValueError, match="proxy_untrusted"):
        make_server(impl, make_handler(impl), proxy_untrusted="maybe")
    with pytest.raises(TypeError, match="needs a fastserver server class"):
        type("Stdlib", (impl.ss.ProxyProtocolMixIn, socketserver.TCPServer),
             {"trusted_proxies": ["127.0.0.1"]})((HOST, 0), make_handler(impl))


def test_many_concurrent_connections(impl: Impl) -> None:
    with proxied(impl, proxy_protocol="auto") as server:
        errors: List[str] = []

        def one(i: int) -> None:
            try:
                line = ("PROXY TCP4 192.0.2.%d 127.0.0.1 %d 80\r\n" % (i, 1000 + i)).encode()
                got = report(exchange(server, line + b"n%d\n" % i))
                if got["client"] != ["192.0.2.%d" % i, 1000 + i] or got["line"] != "n%d\n" % i:
                    errors.append(repr(got))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(1, 41)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
    assert not errors


# --- the command line -----------------------------------------------------------


def run_cli(impl: Impl, *args: str) -> "subprocess.CompletedProcess[str]":
    env = backend_env(impl.name)
    return subprocess.run([sys.executable, "-m", "fastserver", "run"] + list(args),
                          env=env, cwd=SCRIPTS, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("args,message", [
    (["--proxy-protocol", "v2"], "--trusted-proxy"),
    (["--trusted-proxy", "127.0.0.1"], "--proxy-protocol"),
    (["--proxy-protocol", "v2", "--trusted-proxy", "nonsense"], "nonsense"),
    (["--proxy-protocol", "v9", "--trusted-proxy", "127.0.0.1"], "v9"),
    (["--proxy-protocol", "v2", "--trusted-proxy", "127.0.0.1", "--udp"], "stream"),
    (["--proxy-protocol", "v2", "--trusted-proxy", "127.0.0.1",
      "--proxy-timeout", "0"], "positive"),
])
def test_cli_errors(impl: Impl, args: List[str], message: str) -> None:
    result = run_cli(impl, "proxy_app:Whoami", "--bind", "127.0.0.1:0", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_cli_proxy_protocol(impl: Impl) -> None:
    options = ["proxy_app:Whoami", "--bind", "127.0.0.1:0", "--workers", "2",
               "--threads", "4", "--proxy-protocol", "v1",
               "--trusted-proxy", "127.0.0.1/32", "--proxy-timeout", "1"]
    with Supervised.command(options, backend_env(impl.name)) as sup:
        family, address = sup.address()
        server = type("S", (), {"server_address": address})
        got = json.loads(exchange(server, V1_LINE + b"hi\n"))
        assert got["client"] == ["192.0.2.7", 51000] and got["backend"] == impl.name
        assert got["server"] == "ThreadPoolTCPServer"
        assert refused(server, V1_LINE + b"hi\n", source=OTHER)
        sup.wait_for("closed connection from 127.0.0.2:")
        sup.send_signal(15)
        assert sup.wait(15) == 0, sup.log


def test_unix_socket_peers(impl: Impl) -> None:
    """A proxy on the same machine may connect over a Unix socket:
    "unix" in trusted_proxies trusts its peers."""
    handler = make_handler(impl)
    for trusted, expected in ((["unix"], "192.0.2.7"), (["127.0.0.1"], None)):
        cls = type("UnixProxied", (impl.ss.ProxyProtocolMixIn,
                                   impl.ss.ThreadingUnixStreamServer),
                   {"trusted_proxies": trusted, "daemon_threads": True})
        server = cls(unix_path(), handler)
        with serving(server):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(server.server_address)
                try:
                    sock.sendall(V1_LINE + b"hi\n")
                    raw = recv_until(sock)
                except (ConnectionResetError, BrokenPipeError):
                    raw = b""  # closed unread
        if expected is None:
            assert raw == b""
        else:
            assert report(raw)["client"] == [expected, 51000]
