"""The PROXY protocol (versions 1 and 2) for stream servers behind a proxy.

A load balancer such as HAProxy that forwards TCP connections can announce
the original client at the start of each connection, in a header the
backend reads before the application's own bytes. This module parses and
writes those headers, and :class:`ProxyProtocolMixIn` makes any stream
server accept them::

    class Server(fastserver.ProxyProtocolMixIn, fastserver.ThreadingTCPServer):
        proxy_protocol = "v2"                  # or "v1", "auto"; None: off
        trusted_proxies = ["10.0.0.0/24"]      # who may send a header
        proxy_untrusted = "close"              # or "serve"
        proxy_timeout = 3.0

Design:

- **Trust is decided before a byte is read**, from the connection's real
  peer address (the accepted client_address). A peer inside
  ``trusted_proxies`` must start with a header; any other peer is never
  believed: its connection is closed in verify_request() (the default) or,
  with ``proxy_untrusted = "serve"``, served with its real address and
  every byte it sends, a would-be header included, left to the handler.
- **The header is read through the handler's rfile**: the C reader on the
  cython backend, the io.BufferedReader on the pure one. It is read in
  StreamRequestHandler.setup(), right after rfile is created (before a
  setup() override goes on), with peek() and exact read(n) calls, so that
  the bytes that follow the header stay buffered for handle(). A handler
  with no rfile (a BaseRequestHandler, or rbufsize = 0) has the header
  read from the socket with MSG_PEEK and exact recv() calls instead; the
  stream then starts right after the header there too.
- **One deadline** (``proxy_timeout``, 3 s by default) covers the whole
  header, however slowly it trickles in; every receive waits at most what
  is left of it. A malformed, oversized (v1 over 107 bytes), truncated or
  late header closes the connection, logs one warning on the
  ``fastserver.proxy`` logger, and the server serves on; handle() does not
  run and handle_error() is not called.
- The handler then sees the original client as ``client_address``, the
  proxy's own address as ``proxy_address``, and the header (with its TLVs:
  ALPN, authority, unique id, SSL information, ...) as ``proxy_header``
  and ``proxy_tlvs``. A v2 LOCAL command (the proxy's own health checks)
  and v1 ``UNKNOWN`` keep the real endpoints.
- **Datagram servers are not supported.** PROXY v2 can prefix each
  datagram with a header, but a reply must then go back to the proxy, not
  to the client the header names, and DatagramRequestHandler answers
  client_address; rather than half-work, ProxyProtocolMixIn refuses a
  datagram server at construction. :func:`parse` can still decode a
  datagram's header for code that routes the reply itself.

The handler class is served through a subclass made once per handler class
(with the same name, qualified name and module), which adds the reading to
setup(); ``isinstance`` checks and every override keep working.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import threading
import weakref
from time import monotonic
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

__all__ = [
    "ProxyProtocolMixIn", "ProxyHeader", "ProxyProtocolError",
    "IncompleteHeader", "TLV", "SSLInfo", "parse", "read_header",
    "V2_SIGNATURE", "V1_MAX_LENGTH",
]

log = logging.getLogger("fastserver.proxy")

#: The 12 bytes that open every version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest version 1 header, CRLF included.
V1_MAX_LENGTH = 107
_V1_PREFIX = b"PROXY "
_V2_FIXED = 16

# Version 2 TLV types.
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30
# PP2_TYPE_SSL's client field.
PP2_CLIENT_SSL = 0x01
PP2_CLIENT_CERT_CONN = 0x02
PP2_CLIENT_CERT_SESS = 0x04

_UNIQUE_ID_MAX = 128
_UNIX_ADDRESS = 108
AF_UNSPEC = socket.AF_UNSPEC

# family/transport byte -> (family, protocol, size of the address block)
_V2_FAMILIES = {
    0x00: (AF_UNSPEC, None, 0),
    0x11: (socket.AF_INET, socket.SOCK_STREAM, 12),
    0x12: (socket.AF_INET, socket.SOCK_DGRAM, 12),
    0x21: (socket.AF_INET6, socket.SOCK_STREAM, 36),
    0x22: (socket.AF_INET6, socket.SOCK_DGRAM, 36),
    0x31: (socket.AF_UNIX, socket.SOCK_STREAM, 2 * _UNIX_ADDRESS),
    0x32: (socket.AF_UNIX, socket.SOCK_DGRAM, 2 * _UNIX_ADDRESS),
}
_V2_FAMILY_BYTES: Dict[Tuple[int, Optional[int]], int] = {
    (f, p): b for b, (f, p, _) in _V2_FAMILIES.items()}
_V1_FAMILIES = {b"TCP4": socket.AF_INET, b"TCP6": socket.AF_INET6}


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


class IncompleteHeader(ProxyProtocolError):
    """The bytes are a valid start of a header that goes on.

    ``needed`` is the total length the header is now known to have at
    least; None while a version 1 line has not ended (read up to LF).
    """

    def __init__(self, message: str, needed: Optional[int]) -> None:
        super().__init__(message)
        self.needed = needed


class TLV(NamedTuple):
    """One version 2 type-length-value field."""

    type: int
    value: bytes


class SSLInfo(NamedTuple):
    """The PP2_TYPE_SSL field: how the client reached the proxy over TLS."""

    client: int      # PP2_CLIENT_* bits
    verify: int      # 0 when the client certificate was verified
    version: Optional[str]
    cn: Optional[str]
    cipher: Optional[str]
    sig_alg: Optional[str]
    key_alg: Optional[str]
    tlvs: Tuple[TLV, ...]  # every sub-TLV, in order


class ProxyHeader(NamedTuple):
    """A parsed PROXY protocol header.

    - version: 1 or 2
    - command: "PROXY", or "LOCAL" (v2: a connection the proxy made on its
      own behalf, such as a health check; the addresses are not given)
    - family: socket.AF_INET, AF_INET6, AF_UNIX, or AF_UNSPEC (v1
      UNKNOWN, v2 UNSPEC and LOCAL: use the real endpoints)
    - protocol: socket.SOCK_STREAM, SOCK_DGRAM, or None when unspecified
    - source, destination: (host, port) for IP families; the raw address
      bytes (trailing NULs removed) for AF_UNIX; None otherwise
    - tlvs: the version 2 TLVs, in order
    """

    version: int
    command: str
    family: int
    protocol: Optional[int]
    source: Any = None
    destination: Any = None
    tlvs: Tuple[TLV, ...] = ()

    # -- the original client, as socketserver shows addresses --

    @property
    def client_address(self) -> Any:
        """The source as a socket address (an IPv6 one is a 4-tuple, as
        accept() returns), or None when the header names no client."""
        if self.command != "PROXY" or self.source is None:
            return None
        if self.family == socket.AF_INET6:
            return (self.source[0], self.source[1], 0, 0)
        if self.family == socket.AF_UNIX:
            return _unix_name(self.source)
        return self.source

    # -- TLVs --

    def get(self, tlv_type: int) -> Optional[bytes]:
        """The value of the first TLV of that type, or None."""
        for tlv in self.tlvs:
            if tlv.type == tlv_type:
                return tlv.value
        return None

    @property
    def alpn(self) -> Optional[bytes]:
        return self.get(PP2_TYPE_ALPN)

    @property
    def authority(self) -> Optional[str]:
        value = self.get(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8")

    @property
    def unique_id(self) -> Optional[bytes]:
        return self.get(PP2_TYPE_UNIQUE_ID)

    @property
    def netns(self) -> Optional[str]:
        value = self.get(PP2_TYPE_NETNS)
        return None if value is None else value.decode("ascii")

    @property
    def ssl(self) -> Optional[SSLInfo]:
        value = self.get(PP2_TYPE_SSL)
        if value is None:
            return None
        client, verify = struct.unpack_from("!BI", value)
        subs = _parse_tlvs(value[5:], "SSL sub-TLV")
        texts: Dict[int, str] = {}
        for sub in subs:
            texts.setdefault(sub.type, sub.value.decode("utf-8", "replace"))
        return SSLInfo(client, verify, texts.get(PP2_SUBTYPE_SSL_VERSION),
                       texts.get(PP2_SUBTYPE_SSL_CN),
                       texts.get(PP2_SUBTYPE_SSL_CIPHER),
                       texts.get(PP2_SUBTYPE_SSL_SIG_ALG),
                       texts.get(PP2_SUBTYPE_SSL_KEY_ALG), subs)

    # -- writing --

    def to_bytes(self) -> bytes:
        """The header on the wire; parse(h.to_bytes()) gives h back."""
        if self.version == 1:
            return _v1_bytes(self)
        if self.version == 2:
            return _v2_bytes(self)
        raise ProxyProtocolError("unknown version %r" % (self.version,))


def _unix_name(raw: bytes) -> Any:
    if raw[:1] == b"\0":
        return raw  # abstract namespace: bytes, as the socket module gives
    import os
    return os.fsdecode(raw.split(b"\0", 1)[0])


# --- parsing ----------------------------------------------------------------


def parse(data: bytes, version: str = "auto") -> Tuple[ProxyHeader, int]:
    """Parse the header at the start of data: (header, its length in bytes).

    version is "v1", "v2" or "auto". Raises IncompleteHeader when data is
    a valid beginning that stops short, ProxyProtocolError when it is not
    a valid header.
    """
    data = bytes(data)
    if version not in ("v1", "v2", "auto"):
        raise ValueError("version must be 'v1', 'v2' or 'auto', got %r"
                         % (version,))
    if version != "v1" and _starts(data, V2_SIGNATURE):
        return _parse_v2(data)
    if version != "v2" and _starts(data, _V1_PREFIX):
        return _parse_v1(data)
    if not data:
        raise IncompleteHeader("no data", 1)
    wanted = {"v1": "a version 1", "v2": "a version 2",
              "auto": "a"}[version]
    raise ProxyProtocolError("not %s PROXY protocol header (starts %r)"
                             % (wanted, data[:16]))


def _starts(data: bytes, prefix: bytes) -> bool:
    """Whether data starts with prefix, or is a (shorter) start of it."""
    n = min(len(data), len(prefix))
    return data[:n] == prefix[:n] and n > 0


def _parse_v1(data: bytes) -> Tuple[ProxyHeader, int]:
    end = data.find(b"\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError("version 1 header longer than %d bytes"
                                     % V1_MAX_LENGTH)
        raise IncompleteHeader("version 1 line not ended", None)
    if data[end - 1:end] != b"\r":
        raise ProxyProtocolError("version 1 line must end with CRLF")
    line = data[:end - 1]
    length = end + 1
    if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
        # The rest of an UNKNOWN line is to be ignored.
        return ProxyHeader(1, "PROXY", AF_UNSPEC, None), length
    fields = line.split(b" ")
    if len(fields) != 6:
        raise ProxyProtocolError("version 1 header needs 6 fields, got %d"
                                 % len(fields))
    family = _V1_FAMILIES.get(fields[1])
    if family is None:
        raise ProxyProtocolError("unknown version 1 protocol %r" % (fields[1],))
    source = (_v1_host(fields[2], family), _v1_port(fields[4]))
    destination = (_v1_host(fields[3], family), _v1_port(fields[5]))
    return ProxyHeader(1, "PROXY", family, socket.SOCK_STREAM,
                       source, destination), length


def _v1_host(field: bytes, family: int) -> str:
    try:
        text = field.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("address is not ASCII: %r" % (field,))
    if family == socket.AF_INET:
        parts = text.split(".")
        if len(parts) != 4 or not all(
                p.isdigit() and len(p) <= 3 and (p == "0" or p[0] != "0")
                and int(p) <= 255 for p in parts):
            raise ProxyProtocolError("not an IPv4 address: %r" % (text,))
        return text
    if not text or not all(c in "0123456789abcdefABCDEF:." for c in text):
        raise ProxyProtocolError("not an IPv6 address: %r" % (text,))
    try:
        return socket.inet_ntop(socket.AF_INET6,
                                socket.inet_pton(socket.AF_INET6, text))
    except OSError:
        raise ProxyProtocolError("not an IPv6 address: %r" % (text,))


def _v1_port(field: bytes) -> int:
    if not (field.isdigit() and 1 <= len(field) <= 5
            and (field == b"0" or field[:1] != b"0")):
        raise ProxyProtocolError("not a port number: %r" % (field,))
    port = int(field)
    if port > 65535:
        raise ProxyProtocolError("port out of range: %d" % port)
    return port


def _parse_v2(data: bytes) -> Tuple[ProxyHeader, int]:
    if len(data) < _V2_FIXED:
        raise IncompleteHeader("version 2 header shorter than 16 bytes",
                               _V2_FIXED)
    version_command, family_byte, block_length = struct.unpack_from(
        "!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyProtocolError("unsupported version %d in a version 2 "
                                 "signature" % (version_command >> 4))
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyProtocolError("unknown version 2 command %d" % command)
    length = _V2_FIXED + block_length
    if len(data) < length:
        raise IncompleteHeader("version 2 header announces %d bytes"
                               % length, length)
    if command == 0:
        # LOCAL: use the real endpoints; the block is to be ignored.
        family, protocol, _ = _V2_FAMILIES.get(family_byte, (AF_UNSPEC, None, 0))
        return ProxyHeader(2, "LOCAL", family, protocol), length
    try:
        family, protocol, size = _V2_FAMILIES[family_byte]
    except KeyError:
        raise ProxyProtocolError("unknown version 2 family/transport 0x%02x"
                                 % family_byte)
    if block_length < size:
        raise ProxyProtocolError("version 2 block of %d bytes is too short "
                                 "for its %d bytes of addresses"
                                 % (block_length, size))
    block = data[_V2_FIXED:length]
    source: Any = None
    destination: Any = None
    if family == socket.AF_INET:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", block)
        source = (socket.inet_ntop(family, src), sport)
        destination = (socket.inet_ntop(family, dst), dport)
    elif family == socket.AF_INET6:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", block)
        source = (socket.inet_ntop(family, src), sport)
        destination = (socket.inet_ntop(family, dst), dport)
    elif family == socket.AF_UNIX:
        source = block[:_UNIX_ADDRESS].rstrip(b"\0")
        destination = block[_UNIX_ADDRESS:size].rstrip(b"\0")
    tlvs = _parse_tlvs(block[size:], "TLV")
    _check_tlvs(tlvs, data[:length], _V2_FIXED + size)
    return ProxyHeader(2, "PROXY", family, protocol, source, destination,
                       tlvs), length


def _parse_tlvs(data: bytes, what: str) -> Tuple[TLV, ...]:
    tlvs: List[TLV] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyProtocolError("truncated %s header" % what)
        kind, size = struct.unpack_from("!BH", data, offset)
        offset += 3
        if size > len(data) - offset:
            raise ProxyProtocolError("%s 0x%02x of %d bytes overruns the "
                                     "header" % (what, kind, size))
        tlvs.append(TLV(kind, data[offset:offset + size]))
        offset += size
    return tuple(tlvs)


def _check_tlvs(tlvs: Sequence[TLV], header: bytes, offset: int) -> None:
    """Validate the TLVs whose format the specification fixes."""
    crc_at = -1
    for tlv in tlvs:
        value = tlv.value
        if tlv.type == PP2_TYPE_CRC32C:
            if len(value) != 4:
                raise ProxyProtocolError("CRC32C TLV must hold 4 bytes")
            if crc_at >= 0:
                raise ProxyProtocolError("more than one CRC32C TLV")
            crc_at = offset + 3
        elif tlv.type == PP2_TYPE_AUTHORITY:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise ProxyProtocolError("authority TLV is not UTF-8")
        elif tlv.type == PP2_TYPE_UNIQUE_ID and len(value) > _UNIQUE_ID_MAX:
            raise ProxyProtocolError("unique ID TLV longer than %d bytes"
                                     % _UNIQUE_ID_MAX)
        elif tlv.type == PP2_TYPE_NETNS:
            try:
                value.decode("ascii")
            except UnicodeDecodeError:
                raise ProxyProtocolError("netns TLV is not ASCII")
        elif tlv.type == PP2_TYPE_SSL:
            if len(value) < 5:
                raise ProxyProtocolError("SSL TLV shorter than 5 bytes")
            _parse_tlvs(value[5:], "SSL sub-TLV")
        offset += 3 + len(value)
    if crc_at >= 0:
        expected = struct.unpack_from("!I", header, crc_at)[0]
        zeroed = header[:crc_at] + b"\0\0\0\0" + header[crc_at + 4:]
        if crc32c(zeroed) != expected:
            raise ProxyProtocolError("CRC32C mismatch")


# CRC-32C (Castagnoli), reflected polynomial 0x82F63B78.
def _crc32c_table() -> Tuple[int, ...]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of data, as the PP2_TYPE_CRC32C TLV carries it."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- writing ----------------------------------------------------------------


def _v1_bytes(header: ProxyHeader) -> bytes:
    if header.command != "PROXY":
        raise ProxyProtocolError("version 1 has no %s command" % header.command)
    if header.family == AF_UNSPEC:
        return b"PROXY UNKNOWN\r\n"
    names: Dict[int, str] = {socket.AF_INET: "TCP4", socket.AF_INET6: "TCP6"}
    name = names.get(header.family)
    if name is None or header.protocol not in (None, socket.SOCK_STREAM):
        raise ProxyProtocolError("version 1 carries TCP over IPv4 or IPv6 only")
    (src, sport), (dst, dport) = header.source, header.destination
    line = ("PROXY %s %s %s %d %d\r\n" % (name, src, dst, sport, dport)).encode("ascii")
    if len(line) > V1_MAX_LENGTH:
        raise ProxyProtocolError("version 1 header longer than %d bytes"
                                 % V1_MAX_LENGTH)
    return line


def _v2_bytes(header: ProxyHeader) -> bytes:
    try:
        family_byte = _V2_FAMILY_BYTES[(header.family, header.protocol)]
    except KeyError:
        raise ProxyProtocolError("no version 2 family for %r/%r"
                                 % (header.family, header.protocol))
    if header.command == "LOCAL":
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, family_byte, 0)
    if header.command != "PROXY":
        raise ProxyProtocolError("unknown command %r" % (header.command,))
    if header.family in (socket.AF_INET, socket.AF_INET6):
        (src, sport), (dst, dport) = header.source, header.destination
        addresses = (socket.inet_pton(header.family, src)
                     + socket.inet_pton(header.family, dst)
                     + struct.pack("!HH", sport, dport))
    elif header.family == socket.AF_UNIX:
        if len(header.source) > _UNIX_ADDRESS or \
                len(header.destination) > _UNIX_ADDRESS:
            raise ProxyProtocolError("Unix address longer than %d bytes"
                                     % _UNIX_ADDRESS)
        addresses = (header.source.ljust(_UNIX_ADDRESS, b"\0")
                     + header.destination.ljust(_UNIX_ADDRESS, b"\0"))
    else:
        addresses = b""
    pieces = [addresses]
    crc_at = -1
    offset = _V2_FIXED + len(addresses)
    for kind, value in header.tlvs:
        if kind == PP2_TYPE_CRC32C:
            crc_at = offset + 3
            value = b"\0\0\0\0"
        pieces.append(struct.pack("!BH", kind, len(value)) + value)
        offset += 3 + len(value)
    block = b"".join(pieces)
    if len(block) > 0xFFFF:
        raise ProxyProtocolError("version 2 block longer than 65535 bytes")
    data = V2_SIGNATURE + struct.pack("!BBH", 0x21, family_byte, len(block)) + block
    if crc_at >= 0:
        data = data[:crc_at] + struct.pack("!I", crc32c(data)) + data[crc_at + 4:]
    return data


# --- reading from a connection ----------------------------------------------


class _Timeout(ProxyProtocolError):
    pass


class _Source:
    """Where the header's bytes come from: peek() returns bytes available
    now (waiting for at least one, until the deadline), consume(n) takes n
    of them."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def _arm(self) -> None:
        remaining = self.deadline - monotonic()
        if remaining <= 0:
            raise _Timeout("timed out")
        self.sock.settimeout(remaining)

    def peek(self) -> bytes:
        raise NotImplementedError

    def consume(self, n: int) -> bytes:
        raise NotImplementedError


class _BufferedSource(_Source):
    """An rfile with peek(): the core's C reader, or io.BufferedReader. A
    peek() returns what is buffered, or receives once when nothing is."""

    def __init__(self, sock: socket.socket, rfile: Any, deadline: float) -> None:
        super().__init__(sock, deadline)
        self.rfile = rfile

    def peek(self) -> bytes:
        self._arm()
        return bytes(self.rfile.peek(1))

    def consume(self, n: int) -> bytes:
        return bytes(self.rfile.read(n))


class _SocketSource(_Source):
    """The socket itself, for handlers that read it without a buffer."""

    def peek(self) -> bytes:
        self._arm()
        return self.sock.recv(16384, socket.MSG_PEEK)

    def consume(self, n: int) -> bytes:
        data = b""
        while len(data) < n:  # the bytes were peeked: at most a few rounds
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data


def read_header(sock: socket.socket, rfile: Any = None, version: str = "auto",
                timeout: float = 3.0) -> ProxyHeader:
    """Read one header from a connection, leaving what follows unread.

    With an rfile that has peek() (StreamRequestHandler's), the header is
    read through it and the bytes after it stay in its buffer; without one,
    from the socket, with MSG_PEEK. The whole header must arrive within
    timeout seconds. The socket's timeout is restored afterwards. Raises
    ProxyProtocolError (a malformed header, the connection closed early,
    or the timeout) or OSError.
    """
    deadline = monotonic() + timeout
    if rfile is not None and hasattr(rfile, "peek"):
        source: _Source = _BufferedSource(sock, rfile, deadline)
    else:
        source = _SocketSource(sock, deadline)
    saved = sock.gettimeout()
    data = b""
    try:
        while True:
            try:
                header, length = parse(data, version)
            except IncompleteHeader as exc:
                needed = exc.needed
            else:
                if length != len(data):  # pragma: no cover - never over-read
                    raise ProxyProtocolError("read past the header")
                return header
            try:
                chunk = source.peek()
            except socket.timeout:
                raise _Timeout("timed out")
            if not chunk:
                raise ProxyProtocolError("connection closed after %d bytes of "
                                         "the header" % len(data))
            if needed is not None:
                take = min(len(chunk), needed - len(data))
            else:
                room = V1_MAX_LENGTH - len(data)
                end = chunk.find(b"\n", 0, room)
                take = end + 1 if end >= 0 else min(len(chunk), room)
            data += source.consume(take)
    except _Timeout:
        raise _Timeout("no complete header within %g s (%d bytes received)"
                       % (timeout, len(data)))
    finally:
        try:
            sock.settimeout(saved)
        except OSError:
            pass


# --- servers and handlers ---------------------------------------------------


class _Rejected(Exception):
    """A connection the server drops: raised through the handler's
    constructor and caught in finish_request()."""


_MODES = (None, "v1", "v2", "auto")
_UNTRUSTED = ("close", "serve")


def _networks(entries: Any) -> Tuple[Tuple[Any, ...], bool]:
    """(IP networks, whether Unix-socket peers are trusted)."""
    if isinstance(entries, str):
        entries = [entries]
    networks = []
    unix = False
    for entry in entries or ():
        if entry == "unix":
            unix = True
            continue
        try:
            networks.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError as exc:
            raise ValueError("trusted_proxies: %s" % (exc,))
    return tuple(networks), unix


def _peer_ip(address: Any) -> Any:
    if not isinstance(address, tuple) or not address:
        return None
    host = str(address[0]).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped if mapped is not None else ip


class ProxyProtocolMixIn:
    """Mix-in for stream servers behind a proxy that speaks the PROXY
    protocol: ``class S(ProxyProtocolMixIn, ThreadingTCPServer)``.

    Class variables that may be overridden by derived classes or instances:

    - proxy_protocol: "v1", "v2", "auto" (either; the default) or None (off)
    - trusted_proxies: networks ("10.0.0.0/8", "::1", ...; "unix" for any
      peer of a Unix socket) whose connections must start with a header.
      Empty by default: then no peer is trusted.
    - proxy_untrusted: "close" (default): connections from other peers are
      closed unread; "serve": they are served with their real address and
      any header they send is left to the handler as data
    - proxy_timeout: seconds the whole header may take (default 3.0)

    Methods that may be overridden:

    - proxy_trusted(client_address) -> bool: whether this peer may send a
      header
    - proxy_header_received(handler, header): called in the handler's
      setup() once a header is accepted; the default sets client_address,
      proxy_address, proxy_header and proxy_tlvs on the handler

    The handler sees ``proxy_address`` (the proxy's address, None when no
    header was read), ``proxy_header`` (a ProxyHeader, or None) and
    ``proxy_tlvs`` (its TLVs) and, when the header names the client, the
    client as ``client_address``. Stream servers only.
    """

    proxy_protocol: Optional[str] = "auto"
    trusted_proxies: Sequence[str] = ()
    proxy_untrusted: str = "close"
    proxy_timeout: float = 3.0

    _fs_proxy_cache: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "socket_type", socket.SOCK_STREAM) != socket.SOCK_STREAM:
            raise TypeError("the PROXY protocol is supported on stream "
                            "servers only, not on %s" % type(self).__name__)
        self._proxy_settings()  # fail here on a bad setting, not per request
        super().__init__(*args, **kwargs)

    def _proxy_settings(self) -> Tuple[Optional[str], Tuple[Any, ...], bool]:
        mode = self.proxy_protocol
        if mode not in _MODES:
            raise ValueError("proxy_protocol must be one of %r, got %r"
                             % (_MODES, mode))
        if self.proxy_untrusted not in _UNTRUSTED:
            raise ValueError("proxy_untrusted must be 'close' or 'serve', "
                             "got %r" % (self.proxy_untrusted,))
        if not self.proxy_timeout > 0:
            raise ValueError("proxy_timeout must be positive")
        key = self.trusted_proxies
        key = tuple(key) if not isinstance(key, str) else (key,)
        cache = self._fs_proxy_cache
        if cache is None or cache[0] != key:
            cache = self._fs_proxy_cache = (key,) + _networks(key)
        return mode, cache[1], cache[2]

    def proxy_trusted(self, client_address: Any) -> bool:
        """Whether the peer at client_address may send a PROXY header."""
        _, networks, unix = self._proxy_settings()
        ip = _peer_ip(client_address)
        if ip is None:
            return unix and getattr(self, "address_family", None) == \
                getattr(socket, "AF_UNIX", None)
        return any(ip in net for net in networks)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.proxy_protocol is not None and \
                self.proxy_untrusted == "close" and \
                not self.proxy_trusted(client_address):
            log.warning("closed connection from %s: not a trusted proxy",
                        _describe(client_address))
            return False
        return super().verify_request(request, client_address)  # type: ignore[misc, no-any-return]

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.proxy_protocol is not None and \
                self.proxy_untrusted == "close" and \
                not self.proxy_trusted(client_address):
            # verify_request() was overridden without calling ours.
            log.warning("closed connection from %s: not a trusted proxy",
                        _describe(client_address))
            return None
        handler_class = _proxied_handler(self.RequestHandlerClass)  # type: ignore[attr-defined]
        try:
            handler_class(request, client_address, self)
        except _Rejected as exc:
            log.warning("dropped connection from %s: %s",
                        _describe(client_address), exc)
        return None

    def proxy_header_received(self, handler: Any, header: ProxyHeader) -> None:
        """Apply an accepted header to the handler."""
        handler.proxy_address = handler.client_address
        handler.proxy_header = header
        handler.proxy_tlvs = header.tlvs
        client = header.client_address
        if client is not None:
            handler.client_address = client

    def _fs_read_proxy_header(self, handler: Any, rfile: Any) -> None:
        """Read and apply the header for handler (trusted peer), through
        rfile when there is one; raise _Rejected to drop the connection."""
        sock = handler.request
        try:
            header = read_header(sock, rfile, self.proxy_protocol or "auto",
                                 float(self.proxy_timeout))
        except ProxyProtocolError as exc:
            raise _Rejected(str(exc)) from None
        except OSError as exc:
            raise _Rejected("error reading the PROXY header: %s" % (exc,)) from None
        self.proxy_header_received(handler, header)


def _describe(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return ("[%s]:%s" if ":" in host else "%s:%s") % (host, address[1])
    return repr(address)


# -- the handler side --

_proxied: "weakref.WeakKeyDictionary[type, type]" = weakref.WeakKeyDictionary()
_proxied_lock = threading.Lock()


class _RfileHook:
    """A data descriptor for ``rfile`` on the proxied handler class: the
    header is read the moment StreamRequestHandler.setup() stores rfile."""

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__["rfile"]
        except KeyError:
            raise AttributeError("rfile") from None

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["rfile"] = value
        if obj.__dict__.pop("_fs_proxy_pending", False):
            try:
                obj.server._fs_read_proxy_header(obj, value)
            except BaseException:
                _close_quietly(value)
                raise

    def __delete__(self, obj: Any) -> None:
        try:
            del obj.__dict__["rfile"]
        except KeyError:
            raise AttributeError("rfile") from None


def _close_quietly(stream: Any) -> None:
    try:
        stream.close()
    except Exception:
        pass


def _proxied_setup(self: Any) -> None:
    server = self.server
    if server.proxy_protocol is None or \
            not server.proxy_trusted(self.client_address):
        # Off, or proxy_untrusted = "serve": the real address, the bytes
        # untouched.
        super(type(self), self).setup()
        return
    if hasattr(type(self), "rbufsize"):
        # A stream handler: the rfile hook reads the header as soon as
        # StreamRequestHandler.setup() stores rfile.
        self.__dict__["_fs_proxy_pending"] = True
    else:
        server._fs_read_proxy_header(self, None)
    try:
        super(type(self), self).setup()
        if self.__dict__.pop("_fs_proxy_pending", False):
            # setup() made no rfile: read the header from the socket.
            server._fs_read_proxy_header(self, None)
    except _Rejected:
        for name in ("wfile", "rfile"):
            stream = self.__dict__.get(name)
            if stream is not None:
                _close_quietly(stream)
        raise
    return None


def _proxied_handler(handler_class: type) -> type:
    """The subclass of handler_class that reads the header in setup()."""
    try:
        return _proxied[handler_class]
    except KeyError:
        pass
    with _proxied_lock:
        made = _proxied.get(handler_class)
        if made is None:
            attrs: Dict[str, Any] = {
                "__module__": handler_class.__module__,
                "__qualname__": handler_class.__qualname__,
                "__doc__": handler_class.__doc__,
                "setup": _proxied_setup,
                "rfile": _RfileHook(),
                "proxy_address": None,
                "proxy_header": None,
                "proxy_tlvs": (),
            }
            made = type(handler_class.__name__, (handler_class,), attrs)
            _proxied[handler_class] = made
        return made
