"""Closing a TCP listening socket to new clients, and seeing the handshakes
still on their way into its queue (Linux).

- :func:`attach_filter` attaches a classic BPF socket filter, through
  ctypes, that drops TCP segments carrying SYN without ACK: no new
  handshake starts, while handshakes already answered with SYN-ACK can
  complete (a filter that dropped every segment would drop their final ACK,
  and those clients, who believe they are connected, would be reset at
  close).
- :func:`tcp_handshakes_in_progress` asks the kernel, through sock_diag
  (or /proc/net/tcp* where that is unavailable), whether any connection to
  a local port is still in SYN_RECV.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from typing import Any, Set

__all__ = ["attach_filter", "attached_filter", "program_bytes",
           "tcp_handshakes_in_progress", "NO_NEW_HANDSHAKES",
           "SO_ATTACH_FILTER", "SO_GET_FILTER"]

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_GET_FILTER = SO_ATTACH_FILTER  # same number for getsockopt on Linux


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort),
                ("filter", ctypes.POINTER(_SockFilter))]


# Classic BPF opcodes (linux/bpf_common.h).
_BPF_LD_B_ABS = 0x00 | 0x10 | 0x20
_BPF_ALU_AND_K = 0x04 | 0x50 | 0x00
_BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00
_BPF_RET_K = 0x06 | 0x00
_TCP_FLAGS_OFFSET = 13  # a socket filter sees the segment from the TCP header
_SYN, _ACK = 0x02, 0x10

#: Drop segments with SYN set and ACK clear (new connection attempts); keep
#: everything else, so handshakes already answered can complete.
NO_NEW_HANDSHAKES = (
    (_BPF_LD_B_ABS, 0, 0, _TCP_FLAGS_OFFSET),
    (_BPF_ALU_AND_K, 0, 0, _SYN | _ACK),
    (_BPF_JMP_JEQ_K, 0, 1, _SYN),
    (_BPF_RET_K, 0, 0, 0),
    (_BPF_RET_K, 0, 0, 0xFFFFFFFF),
)


def program_bytes(program: Any) -> bytes:
    """A BPF program as the kernel stores it (what SO_GET_FILTER returns)."""
    return b"".join(bytes(_SockFilter(*ins)) for ins in program)


def attach_filter(sock: socket.socket, program: Any = NO_NEW_HANDSHAKES) -> None:
    """Attach a classic BPF program (a sequence of (code, jt, jf, k)) to sock.

    The kernel copies the program, so the buffers need only outlive the call.
    """
    array = (_SockFilter * len(program))(*(_SockFilter(*ins) for ins in program))
    fprog = _SockFprog(len(program), ctypes.cast(array, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


def attached_filter(sock: socket.socket) -> bytes:
    """The classic BPF program attached to sock (b"" when none).

    SO_GET_FILTER measures its buffer in instructions, not bytes, so
    socket.getsockopt() cannot ask for it safely: ask for the count first.
    """
    c = libc()
    count = ctypes.c_uint(0)
    if c.getsockopt(sock.fileno(), socket.SOL_SOCKET, SO_GET_FILTER,
                    None, ctypes.byref(count)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    if not count.value:
        return b""
    program = (_SockFilter * count.value)()
    if c.getsockopt(sock.fileno(), socket.SOL_SOCKET, SO_GET_FILTER,
                    program, ctypes.byref(count)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return bytes(program)[:8 * count.value]


_libc_handle: Any = None


def libc() -> Any:
    """The C library through ctypes, with errno kept (loaded once)."""
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


# sock_diag (linux/sock_diag.h, linux/inet_diag.h)
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_SYN_RECV = 3
_NLMSG_HEADER = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed
# inet_diag_sockid (48 bytes): every socket in the requested states.
_INET_DIAG_REQ = struct.Struct("=BBBBI48x")


def _syn_recv_ports(family: int) -> Set[int]:
    """Local ports of the TCP connections of ``family`` in SYN_RECV, asked
    of the kernel through sock_diag, which filters by state itself."""
    request = _INET_DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0,
                                  1 << _TCP_SYN_RECV)
    header = _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(request),
                                _SOCK_DIAG_BY_FAMILY,
                                _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
    ports: Set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM,
                       _NETLINK_SOCK_DIAG) as diag:
        diag.settimeout(5.0)
        diag.sendall(header + request)
        while True:
            data = diag.recv(65536)
            offset = 0
            while offset + _NLMSG_HEADER.size <= len(data):
                length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
                if kind == _NLMSG_DONE:
                    return ports
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + 16)[0]
                    raise OSError(code, os.strerror(code))
                # inet_diag_msg: family, state, timer, retrans, then the
                # sockid, whose first field is the source port (big endian).
                ports.add(struct.unpack_from("!H", data, offset + 20)[0])
                if length < _NLMSG_HEADER.size:
                    raise OSError("malformed sock_diag reply")
                offset += (length + 3) & ~3


def _syn_recv_ports_proc() -> Set[int]:
    """The same from /proc/net/tcp*; slow when there are many sockets."""
    ports: Set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as table:
                next(table, None)
                for line in table:
                    fields = line.split(None, 4)
                    if len(fields) > 3 and fields[3] == "03":
                        ports.add(int(fields[1].rpartition(":")[2], 16))
        except (OSError, ValueError):
            continue
    return ports


def tcp_handshakes_in_progress(port: int) -> bool:
    """Whether any connection to local ``port`` is in SYN_RECV (Linux)."""
    try:
        return port in _syn_recv_ports(socket.AF_INET) or \
            port in _syn_recv_ports(socket.AF_INET6)
    except (OSError, AttributeError):
        return port in _syn_recv_ports_proc()
