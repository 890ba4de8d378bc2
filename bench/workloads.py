"""The workloads: which server class and handler, and what load to throw at it."""
from __future__ import annotations

from dataclasses import dataclass, replace

IMPLS = ("cython", "pure", "stdlib", "c-reference")
PYTHON_IMPLS = ("cython", "pure", "stdlib")


@dataclass(frozen=True)
class Workload:
    name: str
    mode: str  # loadgen --mode
    # An attribute of the socketserver module, or "module:name" imported after
    # the socketserver swap: a server class, or a factory(address, handler).
    server_class: str
    handler: str  # "module:Class"
    conns: int
    depth: int = 1  # lines per write (pipelined) or datagrams in flight (udp)
    any_reply: bool = False  # user handlers need not echo: count replies, skip the byte check

    @property
    def family(self) -> str:
        return family_of_mode(self.mode)

    @property
    def unit(self) -> str:
        return "bytes/s" if self.mode == "bulk" else "req/s"

    @property
    def has_latency(self) -> bool:
        return self.mode in ("pingpong", "perconn", "udp", "unix", "http")

    def describe(self) -> str:
        load = {
            "pingpong": f"{self.conns} connections, one 64-byte line in flight each",
            "pipelined": f"{self.conns} connections, {self.depth} lines per write",
            "perconn": f"connect/line/close, {self.conns} concurrent",
            "udp": f"{self.depth} datagrams of 64 bytes in flight",
            "unix": f"{self.conns} AF_UNIX connections, one line in flight each",
            "bulk": f"{self.conns} connections, 64 KiB writes",
            "http": f"{self.conns} HTTP/1.1 connection{'s' * (self.conns > 1)} kept alive (unless the server"
            " closes), one GET in flight each",
        }[self.mode]
        return f"{self.server_class.replace(':', '.')} + {self.handler.rsplit(':', 1)[-1]}; {load}"

    def loadgen_args(self) -> list[str]:
        args = ["--mode", self.mode, "--conns", str(self.conns)]
        if self.mode in ("pipelined", "udp"):
            args += ["--depth", str(self.depth)]
        if self.any_reply:
            args.append("--any-reply")
        return args


def family_of_mode(mode: str) -> str:
    return {"udp": "udp", "unix": "unix"}.get(mode, "tcp")


def family_of_server_class(name: str) -> str:
    if "UnixDatagram" in name:
        raise ValueError(f"{name}: AF_UNIX datagram servers are not supported by the load generator")
    if "Unix" in name:
        return "unix"
    if "UDP" in name:
        return "udp"
    return "tcp"


H = "bench.handlers"
HTTP_SERVER = "http.server:ThreadingHTTPServer"
HTTP_HANDLER = "bench.http_handlers:KeepAliveGet"
WERKZEUG = "bench.werkzeug_keepalive"
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("pingpong", "pingpong", "ThreadingTCPServer", f"{H}:LineEcho", conns=100),
        Workload("pipelined", "pipelined", "ThreadingTCPServer", f"{H}:NoDelayLineEcho", conns=32, depth=16),
        Workload(
            "pipelined-coalesce", "pipelined", "ThreadingTCPServer", f"{H}:CoalescingLineEcho", conns=32, depth=16
        ),
        Workload("perconn", "perconn", "ThreadingTCPServer", f"{H}:LineEcho", conns=16),
        Workload("udp", "udp", "UDPServer", f"{H}:DatagramEcho", conns=1, depth=64),
        Workload("udp-threading", "udp", "ThreadingUDPServer", f"{H}:DatagramEcho", conns=1, depth=64),
        Workload("unix", "unix", "ThreadingUnixStreamServer", f"{H}:LineEcho", conns=100),
        Workload("bulk", "bulk", "ThreadingTCPServer", f"{H}:BulkEcho", conns=4),
        Workload("http-keepalive", "http", HTTP_SERVER, HTTP_HANDLER, conns=10),
        Workload("http-keepalive-1", "http", HTTP_SERVER, HTTP_HANDLER, conns=1),
    )
}

# Need werkzeug, which fastserver does not depend on: run only when named
# (python -m bench.werkzeug_keepalive names them), never by default.
OPTIONAL_WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("werkzeug-threaded", "http", f"{WERKZEUG}:make_threaded_server", f"{WERKZEUG}:app", conns=10),
        Workload("werkzeug-threaded-1", "http", f"{WERKZEUG}:make_threaded_server", f"{WERKZEUG}:app", conns=1),
    )
}


def customized(w: Workload, handler: str | None, server_class: str | None, verify: bool) -> Workload:
    """The workload's load, driven against another handler and/or server class."""
    cls = server_class or w.server_class
    if family_of_server_class(cls) != w.family:
        raise ValueError(f"--server {cls} cannot serve workload {w.name!r} ({w.family} traffic)")
    return replace(w, handler=handler or w.handler, server_class=cls, any_reply=not verify)
