"""The PROXY protocol header codec: parse and write version 1 and 2 headers.

:func:`parse` decodes the header at the start of some bytes, and
:meth:`ProxyHeader.to_bytes` writes one; the two round-trip. Version 2 TLVs
are validated where the specification fixes their format (CRC32C, authority,
unique ID, netns, SSL). Nothing here touches a socket: reading a header from
a connection is :mod:`fastserver.proxy.reader`'s job.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

__all__ = [
    "ProxyHeader", "ProxyProtocolError", "IncompleteHeader", "TLV", "SSLInfo",
    "parse", "crc32c", "V2_SIGNATURE", "V1_MAX_LENGTH",
]

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


