"""One benchmark server process: ``python -m bench.server_runner --impl pure ...``.

Protocol with the parent (bench.runner): a first line on stdout, either
``READY <backend> <family> <address...>`` once the socket is listening, or
``UNAVAILABLE <reason>`` (exit status 3).  With ``--tls wrap`` the server
wraps its listening socket, the stdlib's idiom, on every impl; with ``--tls
context`` fastserver's server class gets ``ssl_context`` (the stdlib, which
has no such attribute, wraps).  SIGTERM shuts the server down
through ``server.shutdown()``, prints ``SHUTDOWN <ms>`` (how long that call
took to return), writes the profile if one was asked for and exits 0.
SIGUSR1 prints ``USAGE <voluntary> <involuntary>``: the context switches of
the whole process so far, every thread that ever ran included (getrusage).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import random
import resource
import signal
import ssl
import sys
import threading
import time
import types
from typing import Any, Callable, NoReturn

UNAVAILABLE_EXIT = 3
CLOSE_TIMEOUT = 3.0  # the parent waits 10 s for the whole exit before SIGKILL


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def unavailable(reason: str) -> NoReturn:
    say(f"UNAVAILABLE {reason}")
    sys.exit(UNAVAILABLE_EXIT)


def load_socketserver(impl: str) -> tuple[types.ModuleType, str]:
    """The module that will serve as ``socketserver`` for this impl, and its backend name."""
    if impl == "stdlib":
        import socketserver

        return socketserver, "stdlib"
    try:
        import fastserver
    except Exception as exc:  # an ImportError, or a broken extension failing at import time
        unavailable(f"cannot import fastserver: {type(exc).__name__}: {exc}")
    backend = getattr(fastserver, "backend", None)
    wanted = {"cython": "cython", "pure": "python"}[impl]
    if backend != wanted:
        if impl == "cython":
            unavailable(f"fastserver.backend is {backend!r}, not 'cython' ({why_no_extension()})")
        # FASTSERVER_NO_EXTENSIONS=1 was set by the parent: anything else is a fastserver bug.
        print(f"server_runner: FASTSERVER_NO_EXTENSIONS=1 but fastserver.backend is {backend!r}", file=sys.stderr)
        sys.exit(1)
    # fastserver is fully imported (with whatever stdlib pieces it uses) before the swap.
    sys.modules["socketserver"] = fastserver
    return fastserver, backend


def why_no_extension() -> str:
    try:
        importlib.import_module("fastserver._core")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "the extension imports, but fastserver chose the pure backend"


def import_object(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"server_runner: handler must look like module:Class, got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def bench_server_class(base: type, family: str, ssl_context: ssl.SSLContext | None = None) -> type:
    attrs: dict[str, Any] = {
        # The stdlib's backlog of 5 would make 100 simultaneous connects wait
        # for SYN retransmits; every impl gets the same larger backlog.
        "request_queue_size": 128,
    }
    if family == "tcp":
        # Not for UDP: there SO_REUSEADDR lets two processes share a port.
        attrs["allow_reuse_address"] = True
    if ssl_context is not None:
        attrs["ssl_context"] = ssl_context
    return type(f"Bench{base.__name__}", (base,), attrs)


def server_factory(
    module: types.ModuleType, spec: str, family: str, ssl_context: ssl.SSLContext | None = None
) -> Callable[..., Any]:
    """What builds the server: a class of ``module`` by name, or ``module:name``.

    A ``module:name`` is imported only now, after the socketserver swap, so
    e.g. http.server's classes are built on the socketserver under test.  A
    class gets the bench's attributes; anything else is a factory called as
    ``factory(server_address, handler)``, left as it is.
    """
    obj = import_object(spec) if ":" in spec else getattr(module, spec, None)
    if obj is None:
        raise SystemExit(f"server_runner: {module.__name__} has no class {spec!r}")
    if isinstance(obj, type):
        return bench_server_class(obj, family, ssl_context)
    if ssl_context is not None:
        raise SystemExit(f"server_runner: --tls context needs a server class, and {spec!r} is a factory")
    return obj


def tls_server_context(args: argparse.Namespace) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.certfile, args.keyfile)
    return context


def has_ssl_context(module: types.ModuleType) -> bool:
    """Whether this fastserver's stream servers take ``ssl_context`` (before
    its TLS core, the attribute would be ignored and the server speak plain
    TCP to TLS clients)."""
    return hasattr(module.TCPServer, "ssl_context")


def make_server(cls: Callable[..., Any], handler: Any, args: argparse.Namespace) -> tuple[Any, str]:
    if args.family == "unix":
        try:
            os.unlink(args.path)
        except FileNotFoundError:
            pass
        return cls(args.path, handler), f"unix {args.path}"
    ports = list(range(args.port_lo, args.port_hi + 1))
    # Start at a random port so parallel bench runs rarely race for the same one.
    start = random.randrange(len(ports))
    for port in ports[start:] + ports[:start]:
        try:
            server = cls((args.host, port), handler)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        return server, f"{args.family} {args.host} {server.server_address[1]}"
    raise SystemExit(f"server_runner: no free port in {args.port_lo}-{args.port_hi}")


class ThreadProfiles:
    """cProfile for every thread of the server, merged into one stats file.

    Before 3.12 a cProfile.Profile only sees the thread that enabled it, so
    each new thread gets its own, timed in that thread's CPU time: wall time
    would credit every handler thread's idle wait in recv() as cost.  From
    3.12 one profiler (sys.monitoring) sees every thread, so it has to use
    wall time and blocking calls look expensive.
    """

    def __init__(self) -> None:
        import cProfile

        self._per_thread = sys.version_info < (3, 12)
        self.clock = "thread CPU time" if self._per_thread else "wall time"
        self._factory: Callable[[], Any] = (
            (lambda: cProfile.Profile(time.thread_time)) if self._per_thread else cProfile.Profile
        )
        self.main = self._factory()
        self.others: list[Any] = []

    def _start_in_thread(self, frame: Any, event: str, arg: Any) -> None:
        profiler = self._factory()
        self.others.append((threading.current_thread(), profiler))
        profiler.enable()

    def start(self) -> None:
        if self._per_thread:
            threading.setprofile(self._start_in_thread)
        self.main.enable()

    def dump(self, path: str, join_timeout: float) -> None:
        import pstats

        self.main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        # A call still running in another thread would be closed off with this
        # thread's clock, a meaningless figure: give the threads time to end.
        deadline = time.monotonic() + join_timeout
        for thread, _ in list(self.others):
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        stats = pstats.Stats(self.main)
        for _, profiler in list(self.others):
            try:
                stats.add(profiler)
            except TypeError:  # a thread that never made a call has no stats
                pass
        stats.dump_stats(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.server_runner")
    p.add_argument("--impl", required=True, choices=("cython", "pure", "stdlib"))
    p.add_argument(
        "--server",
        required=True,
        help="socketserver class name (ThreadingTCPServer), or module:name of a class or factory(address, handler)",
    )
    p.add_argument("--handler", required=True, help="module:Class")
    p.add_argument("--family", required=True, choices=("tcp", "udp", "unix"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port-lo", type=int, default=20000)
    p.add_argument("--port-hi", type=int, default=30000)
    p.add_argument("--path", help="AF_UNIX socket path")
    p.add_argument("--cpu", type=int, help="pin the whole process (all its threads) to this CPU")
    p.add_argument("--profile", help="write cProfile stats here on shutdown")
    p.add_argument("--poll-interval", type=float, default=0.1)
    p.add_argument("--tls", choices=("wrap", "context"), help="serve TLS: wrap the listening socket, or ssl_context")
    p.add_argument("--certfile", help="with --tls: the server certificate (PEM)")
    p.add_argument("--keyfile", help="with --tls: its private key (PEM)")
    args = p.parse_args(argv)
    if args.tls and not (args.certfile and args.keyfile):
        p.error("--tls needs --certfile and --keyfile")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cpu is not None:
        # Before any thread exists, so every handler thread inherits it.
        os.sched_setaffinity(0, {args.cpu})
    module, backend = load_socketserver(args.impl)
    handler = import_object(args.handler)
    context = tls_server_context(args) if args.tls else None
    wrap = args.tls == "wrap" or (args.tls == "context" and args.impl == "stdlib")
    if args.tls == "context" and not wrap and not has_ssl_context(module):
        raise SystemExit(f"server_runner: this fastserver ({module.__file__}) has no ssl_context: no TLS core yet")
    factory = server_factory(module, args.server, args.family, None if wrap else context)
    server, where = make_server(factory, handler, args)
    if wrap:
        assert context is not None
        # The stdlib's TLS idiom, as http.server's and werkzeug's HTTPS do it.
        server.socket = context.wrap_socket(server.socket, server_side=True)
    if not isinstance(server, module.BaseServer):
        # A module that imported socketserver before the swap would measure the stdlib under our name.
        raise SystemExit(
            f"server_runner: {type(server).__module__}.{type(server).__qualname__} is not built on "
            f"{module.__name__}.BaseServer (was its module imported before the swap?)"
        )

    stoppers: list[threading.Thread] = []

    def timed_shutdown() -> None:
        start = time.perf_counter()
        server.shutdown()
        say(f"SHUTDOWN {(time.perf_counter() - start) * 1000:.3f}")

    def request_shutdown(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever() to return, and serve_forever
        # runs in this (the main) thread, so it must be called from another.
        stopper = threading.Thread(target=timed_shutdown, daemon=True)
        stoppers.append(stopper)
        stopper.start()

    def report_usage(signum: int, frame: Any) -> None:
        # getrusage, not /proc/PID/task: ThreadingMixIn's threads are gone by
        # the time anyone reads /proc, and their switches with them.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        say(f"USAGE {usage.ru_nvcsw} {usage.ru_nivcsw}")

    signal.signal(signal.SIGUSR1, report_usage)
    signal.signal(signal.SIGTERM, request_shutdown)
    signal.signal(signal.SIGINT, request_shutdown)
    profiles = ThreadProfiles() if args.profile else None
    say(f"READY {backend} {where}")
    if profiles:
        profiles.start()
    try:
        server.serve_forever(poll_interval=args.poll_interval)
        for stopper in stoppers:
            stopper.join(CLOSE_TIMEOUT)  # its SHUTDOWN line must precede the exit
    finally:
        # server_close() may join handler threads; one stuck on a client must
        # not cost us the profile, so it gets a bounded wait in a thread.
        closer = threading.Thread(target=server.server_close, daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT)
        if profiles:
            profiles.dump(args.profile, join_timeout=CLOSE_TIMEOUT)
    sys.stdout.flush()
    sys.stderr.flush()
    # Handler threads still blocked on a client must not hold the exit hostage.
    os._exit(0)


if __name__ == "__main__":
    main()
