"""The workloads: which server class and handler, and what load to throw at it."""
from __future__ import annotations

from dataclasses import dataclass, replace

IMPLS = ("cython", "pure", "stdlib", "c-reference", "c-threaded")
PYTHON_IMPLS = ("cython", "pure", "stdlib")
C_IMPLS = ("c-reference", "c-threaded")  # bench/echo_ref.c, without and with --threaded

# How a TLS workload's server gets TLS (bench.server_runner --tls).
TLS_WRAP = "wrap"  # server.socket = ctx.wrap_socket(server.socket, server_side=True), on every impl
TLS_CONTEXT = "context"  # fastserver: the server class's ssl_context; the stdlib (which has none): wrap
TLS_HOW = {
    TLS_WRAP: "listening socket wrapped (ctx.wrap_socket(server.socket, server_side=True)) on every impl",
    TLS_CONTEXT: "fastserver: ssl_context = ctx on the server class; stdlib: listening socket wrapped",
}


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
    tls: str = ""  # "" (plain), TLS_WRAP or TLS_CONTEXT
    silent: int = 0  # plain TCP connections that never send, held open for the whole run
    # Impls for which a run with no replies is the expected result (a rate of
    # 0 with a note), not an INVALID run; and why.
    zero_ok: tuple[str, ...] = ()
    zero_why: str = ""

    @property
    def family(self) -> str:
        return family_of_mode(self.mode)

    @property
    def unit(self) -> str:
        return "bytes/s" if self.mode == "bulk" else "req/s"

    @property
    def has_latency(self) -> bool:
        return self.mode in ("pingpong", "perconn", "udp", "unix", "http")

    def unsupported(self, impl: str) -> str:
        """Why ``impl`` has no row in this workload, or ""."""
        if self.tls and impl in C_IMPLS:
            return "left out of the TLS workloads: echo_ref.c speaks no TLS"
        if impl != "c-threaded":
            return ""
        if self.family == "udp":
            return "left out of the UDP workloads: echo_ref.c --threaded serves stream sockets only"
        if self.mode == "http":
            return "left out of the HTTP workloads: echo_ref.c --threaded only echoes"
        if self.handler not in THREADED_SENDS:
            return f"echo_ref.c --threaded has no C twin of {self.handler}"
        return ""

    @property
    def threaded_sends(self) -> str:
        """echo_ref.c's --threaded argument: how this workload's handler sends."""
        return THREADED_SENDS[self.handler]

    def describe(self) -> str:
        load = {
            "pingpong": f"{self.conns} {'TLS ' * bool(self.tls)}connections, one 64-byte line in flight each",
            "pipelined": f"{self.conns} connections, {self.depth} lines per write",
            "perconn": (
                f"connect/TLS handshake (full, no resumption)/line/close, {self.conns} concurrent"
                if self.tls
                else f"connect/line/close, {self.conns} concurrent"
            ),
            "udp": f"{self.depth} datagrams of 64 bytes in flight",
            "unix": f"{self.conns} AF_UNIX connections, one line in flight each",
            "bulk": f"{self.conns} connections, 64 KiB writes",
            "http": f"{self.conns} HTTP/1.1 connection{'s' * (self.conns > 1)} kept alive (unless the server"
            " closes), one GET in flight each",
        }[self.mode]
        if self.silent:
            load += f"; {self.silent} silent TCP clients (connected first, never send) throughout"
        if self.tls:
            load += f"; TLS: {TLS_HOW[self.tls]}"
        return f"{self.server_class.replace(':', '.')} + {self.handler.rsplit(':', 1)[-1]}; {load}"

    def loadgen_args(self) -> list[str]:
        args = ["--mode", self.mode, "--conns", str(self.conns)]
        if self.mode in ("pipelined", "udp"):
            args += ["--depth", str(self.depth)]
        if self.any_reply:
            args.append("--any-reply")
        if self.tls:
            args.append("--tls")
        if self.silent:
            args += ["--silent", str(self.silent)]
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
# How each echo handler's wfile.write() calls map onto send(), for
# c-threaded: "lines" is one send() per line read (LineEcho iterates rfile),
# "chunks" one send() per recv() (BulkEcho writes what read1() returned;
# fastserver's coalesce_writes batches the lines a read brought in).
THREADED_SENDS = {
    f"{H}:LineEcho": "lines",
    f"{H}:NoDelayLineEcho": "lines",
    f"{H}:CoalescingLineEcho": "chunks",
    f"{H}:BulkEcho": "chunks",
}
HTTP_SERVER = "http.server:ThreadingHTTPServer"
HTTP_HANDLER = "bench.http_handlers:KeepAliveGet"
WERKZEUG = "bench.werkzeug_keepalive"
SILENT_CLIENTS = 40
# The stdlib's accept() runs the handshake, blocking and with no deadline, on
# the serve_forever thread: the first silent client stops it for good.
STDLIB_STALLS = (
    "expected: with silent clients connected first, the stdlib's accept() blocks in the TLS handshake of"
    " one of them and never serves again"
)


def tls_workloads(how: str, suffix: str) -> tuple[Workload, ...]:
    return (
        Workload(f"tls-pingpong{suffix}", "pingpong", "ThreadingTCPServer", f"{H}:LineEcho", conns=100, tls=how),
        Workload(
            f"tls-perconn{suffix}",
            "perconn",
            "ThreadingTCPServer",
            f"{H}:LineEcho",
            conns=16,
            tls=how,
            silent=SILENT_CLIENTS,
            zero_ok=("stdlib",),
            zero_why=STDLIB_STALLS,
        ),
    )


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
        *tls_workloads(TLS_WRAP, ""),
    )
}

# Run only when named, never by default: the werkzeug ones need werkzeug,
# which fastserver does not depend on (python -m bench.werkzeug_keepalive
# names them); the -ctx ones are a second look at fastserver's TLS rows
# (their stdlib row repeats the plain TLS workload's).
OPTIONAL_WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("werkzeug-threaded", "http", f"{WERKZEUG}:make_threaded_server", f"{WERKZEUG}:app", conns=10),
        Workload("werkzeug-threaded-1", "http", f"{WERKZEUG}:make_threaded_server", f"{WERKZEUG}:app", conns=1),
        # fastserver's own way to TLS, beside the wrapped listener of the rows above.
        *tls_workloads(TLS_CONTEXT, "-ctx"),
    )
}


def customized(w: Workload, handler: str | None, server_class: str | None, verify: bool) -> Workload:
    """The workload's load, driven against another handler and/or server class."""
    cls = server_class or w.server_class
    if family_of_server_class(cls) != w.family:
        raise ValueError(f"--server {cls} cannot serve workload {w.name!r} ({w.family} traffic)")
    return replace(w, handler=handler or w.handler, server_class=cls, any_reply=not verify)
