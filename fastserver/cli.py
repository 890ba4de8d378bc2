"""The ``python -m fastserver`` command.

``python -m fastserver run MODULE:HANDLER [options]`` serves a request
handler class with a fastserver server class in pre-forked workers (see
fastserver.prefork).

The parser is built from small functions so that options can be added
without touching the others: ``add_run_arguments()`` adds each group, and
``server_class_for()`` turns the parsed options into the server class, one
class attribute per option.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import socket
import stat
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

from . import activation, servers
from .pool import ThreadPoolMixIn
from .proxy import ProxyProtocolMixIn, _networks
from .prefork import Supervisor

__all__ = ["main", "build_parser", "add_run_arguments", "parse_bind",
           "load_object", "server_class_for", "make_server"]

log = logging.getLogger("fastserver.cli")

DEFAULT_BIND = "127.0.0.1:8000"
DEFAULT_BACKLOG = 1024
DEFAULT_GRACEFUL_TIMEOUT = 30.0
DEFAULT_PROXY_TIMEOUT = 3.0
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastserver",
        description="Serve socketserver request handlers with fastserver.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser(
        "run", help="serve a request handler in pre-forked worker processes",
        description="Serve MODULE:HANDLER (a request handler class) with a "
                    "fastserver server class in pre-forked worker processes. "
                    "SIGTERM drains (no accepted connection is lost), SIGINT "
                    "stops fast, SIGHUP replaces the workers.")
    add_run_arguments(run)
    run.set_defaults(func=run_command)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", metavar="MODULE:HANDLER",
        help="the request handler class, e.g. myapp.handlers:Echo")
    server = parser.add_argument_group("server")
    server.add_argument(
        "--server", metavar="CLASS", default=None,
        help="a fastserver server class name (e.g. TCPServer, "
             "ThreadingTCPServer, ForkingUDPServer) or MODULE:CLASS; "
             "default ThreadingTCPServer, ThreadingUDPServer with --udp, "
             "their Unix variants with --bind unix:PATH")
    server.add_argument(
        "--udp", action="store_true",
        help="serve datagrams (the default server becomes ThreadingUDPServer)")
    server.add_argument(
        "--bind", metavar="ADDRESS", default=DEFAULT_BIND,
        help="HOST:PORT, [IPV6]:PORT, PORT or unix:PATH (default %s)"
             % DEFAULT_BIND)
    server.add_argument(
        "--threads", metavar="N", type=_positive_int, default=None,
        help="handle requests in a bounded pool of N threads per worker "
             "(the ThreadPool variant of the server class)")
    server.add_argument(
        "--backlog", metavar="N", type=_positive_int, default=DEFAULT_BACKLOG,
        help="the listen() backlog of stream servers (default %d)"
             % DEFAULT_BACKLOG)
    processes = parser.add_argument_group("processes")
    processes.add_argument(
        "--workers", metavar="N", type=_positive_int, default=None,
        help="worker processes (default: the number of CPUs, %d here)"
             % (os.cpu_count() or 1))
    processes.add_argument(
        "--graceful-timeout", metavar="S", type=_non_negative_float,
        default=DEFAULT_GRACEFUL_TIMEOUT,
        help="seconds in-flight requests get to finish after SIGTERM "
             "(default %g)" % DEFAULT_GRACEFUL_TIMEOUT)
    proxy = parser.add_argument_group(
        "PROXY protocol",
        "accept the original client's address from a load balancer "
        "(HAProxy send-proxy / send-proxy-v2); stream servers only")
    proxy.add_argument(
        "--proxy-protocol", choices=("v1", "v2", "auto"), default=None,
        help="connections from trusted proxies must start with a PROXY "
             "header of this version (auto: either); off by default")
    proxy.add_argument(
        "--trusted-proxy", metavar="CIDR", action="append", type=_cidr,
        default=None,
        help="a network allowed to send the header, e.g. 10.0.0.0/24 or "
             "127.0.0.1 ('unix' for Unix socket peers); repeat for several; "
             "required with --proxy-protocol")
    proxy.add_argument(
        "--proxy-untrusted", choices=("close", "serve"), default="close",
        help="what to do with connections from other peers: close them "
             "(default) or serve them with their real address, never "
             "reading a header")
    proxy.add_argument(
        "--proxy-timeout", metavar="S", type=_positive_float,
        default=DEFAULT_PROXY_TIMEOUT,
        help="seconds the whole header may take to arrive (default %g)"
             % DEFAULT_PROXY_TIMEOUT)
    systemd = parser.add_argument_group("systemd")
    systemd.add_argument(
        "--systemd", action="store_true",
        help="serve on the socket systemd passed (socket activation: "
             "LISTEN_FDS/LISTEN_PID) instead of binding --bind; its type "
             "and family choose the server class as --bind would")
    logs = parser.add_argument_group("logging")
    logs.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info",
        help="the logging level (default info)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % (text,))
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, got %d" % value)
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be positive, got %r" % (text,))
    return value


def _cidr(text: str) -> str:
    try:
        _networks([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % (text,))
    if not value >= 0:
        raise argparse.ArgumentTypeError("must not be negative, got %r" % (text,))
    return value


# --- turning options into a server -----------------------------------------


def parse_bind(text: str) -> Tuple[int, Any]:
    """(address_family, server_address) for a --bind value."""
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise ValueError("unix: needs a path")
        return socket.AF_UNIX, path
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [IPV6]:PORT, got %r" % (text,))
        return socket.AF_INET6, (host, _port(port))
    if ":" not in text:
        return socket.AF_INET, ("127.0.0.1", _port(text))
    host, _, port = text.rpartition(":")
    if ":" in host:
        raise ValueError("put IPv6 addresses in brackets: [%s]:%s" % (host, port))
    return socket.AF_INET, (host or "0.0.0.0", _port(port))


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError("not a port number: %r" % (text,))
    if not 0 <= port <= 65535:
        raise ValueError("port out of range: %d" % port)
    return port


def load_object(spec: str) -> Any:
    """Import MODULE:ATTR (ATTR may be dotted) and return the attribute."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError("expected MODULE:NAME, got %r" % (spec,))
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _named_server_class(name: str) -> type:
    if ":" in name:
        cls = load_object(name)
    else:
        import fastserver
        cls = getattr(fastserver, name, None)
    if not (isinstance(cls, type) and issubclass(cls, servers.BaseServer)):
        raise ValueError("not a fastserver server class: %r" % (name,))
    return cls


_DEFAULT_SERVERS = {
    (False, False): "ThreadingTCPServer",
    (True, False): "ThreadingUDPServer",
    (False, True): "ThreadingUnixStreamServer",
    (True, True): "ThreadingUnixDatagramServer",
}


def server_class_for(args: argparse.Namespace, family: int) -> type:
    """The server class the options ask for, as a subclass carrying the
    options as class attributes."""
    unix = family == socket.AF_UNIX
    if args.server is None:
        base = _named_server_class(_DEFAULT_SERVERS[(bool(args.udp), unix)])
    else:
        base = _named_server_class(args.server)
    base_socket_type = getattr(base, "socket_type", socket.SOCK_STREAM)
    if args.udp and base_socket_type != socket.SOCK_DGRAM:
        raise ValueError("--udp needs a datagram server class, not %s"
                         % base.__name__)
    base_family = getattr(base, "address_family", socket.AF_INET)
    if unix != (base_family == socket.AF_UNIX):
        raise ValueError("%s serves %s addresses; --bind %s needs a %s class"
                         % (base.__name__, "Unix" if base_family == socket.AF_UNIX
                            else "IP", "unix:PATH" if unix else "HOST:PORT",
                            "Unix" if unix else "TCP/UDP"))
    attrs: Dict[str, Any] = {"__module__": base.__module__}
    bases: Tuple[type, ...] = (base,)
    name = base.__name__
    if args.threads is not None:
        if issubclass(base, servers.ForkingMixIn):
            raise ValueError("--threads cannot be combined with %s" % name)
        if not issubclass(base, ThreadPoolMixIn):
            if issubclass(base, servers.ThreadingMixIn) and \
                    base.__module__ == servers.ThreadingMixIn.__module__:
                # One of ours: its pool twin drops ThreadingMixIn.
                base = next(c for c in base.__mro__
                            if issubclass(c, servers.BaseServer)
                            and not issubclass(c, servers.ThreadingMixIn))
            bases = (ThreadPoolMixIn, base)
            name = _thread_pool_name(base)
            ready = _ready_made_pool_class(base)
            if ready is not None:
                bases, name = (ready,), ready.__name__
            # A subclass's own process_request_thread keeps running.
            entry = getattr(base, "process_request_thread", None)
            if entry is not None and entry is not getattr(
                    servers.ThreadingMixIn, "process_request_thread"):
                attrs["process_request_thread"] = entry
        attrs["max_workers"] = args.threads
    if family == socket.AF_INET6:
        attrs["address_family"] = socket.AF_INET6
    if base_socket_type == socket.SOCK_STREAM:
        attrs["request_queue_size"] = args.backlog
    if not unix:
        attrs["allow_reuse_address"] = True
    if getattr(args, "proxy_protocol", None) is not None:
        if base_socket_type != socket.SOCK_STREAM:
            raise ValueError("--proxy-protocol needs a stream server, not %s"
                             % base.__name__)
        if not args.trusted_proxy:
            raise ValueError("--proxy-protocol needs at least one "
                             "--trusted-proxy")
        if not issubclass(base, ProxyProtocolMixIn):
            bases = (ProxyProtocolMixIn,) + bases
        attrs["proxy_protocol"] = args.proxy_protocol
        attrs["trusted_proxies"] = tuple(args.trusted_proxy)
        attrs["proxy_untrusted"] = args.proxy_untrusted
        attrs["proxy_timeout"] = args.proxy_timeout
    elif getattr(args, "trusted_proxy", None):
        raise ValueError("--trusted-proxy needs --proxy-protocol")
    return type(name, bases, attrs)


def _ready_made_pool_class(base: type) -> Optional[type]:
    """ThreadPoolTCPServer for TCPServer, and so on, if there is one."""
    from . import pool

    for name in pool.__all__:
        cls = getattr(pool, name)
        if isinstance(cls, type) and cls.__mro__[1:3] == (ThreadPoolMixIn, base):
            return cls
    return None


def _thread_pool_name(base: type) -> str:
    name = base.__name__
    if name.startswith("Threading"):
        return "ThreadPool" + name[len("Threading"):]
    return "ThreadPool" + name


def _remove_stale_unix_socket(path: str) -> None:
    """Unlink path if it is a Unix socket nobody listens on."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(OSError):
            os.unlink(path)
            log.info("removed stale socket %s", path)
    except OSError:
        pass  # a datagram socket, or no permission: leave it to bind()
    finally:
        probe.close()


def make_server(args: argparse.Namespace) -> Any:
    """Build the bound, listening server the options describe."""
    if getattr(args, "systemd", False):
        return _systemd_server(args)
    family, address = parse_bind(args.bind)
    handler = load_object(args.target)
    if not isinstance(handler, type):
        raise ValueError("%s is not a request handler class" % (args.target,))
    cls = server_class_for(args, family)
    if family == socket.AF_UNIX:
        _remove_stale_unix_socket(address)
    log.debug("server class %s (%s), handler %s.%s",
              cls.__name__, " < ".join(c.__name__ for c in cls.__mro__[1:-1]),
              handler.__module__, handler.__qualname__)
    return cls(address, handler)


def _systemd_server(args: argparse.Namespace) -> Any:
    """The server on the socket systemd passed (--systemd)."""
    if args.bind != DEFAULT_BIND:
        raise ValueError("--bind and --systemd exclude each other: the "
                         ".socket unit sets the address")
    handler = load_object(args.target)
    if not isinstance(handler, type):
        raise ValueError("%s is not a request handler class" % (args.target,))
    passed = activation.listen_sockets()
    if len(passed) != 1:
        for _, sock in passed:
            sock.close()
        raise activation.ActivationError(
            "--systemd serves one socket; systemd passed %d" % len(passed))
    sock = passed[0][1]
    try:
        if sock.type == socket.SOCK_DGRAM and not args.udp:
            raise activation.ActivationError(
                "the socket systemd passed is a datagram socket: add --udp")
        cls = server_class_for(args, sock.family)
        server = activation.server_from_socket(cls, handler, sock)
    except BaseException:
        sock.close()
        raise
    log.info("serving on the socket systemd passed (%s)",
             sock.getsockname() if sock.family == socket.AF_UNIX
             else "%s:%s" % sock.getsockname()[:2])
    return server


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format=LOG_FORMAT, stream=sys.stderr)


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    setup_logging(args.log_level)
    try:
        server = make_server(args)
    except activation.ActivationError as exc:
        log.error("--systemd: %s", exc)
        return 1
    except (ValueError, ImportError, AttributeError) as exc:
        parser.error(str(exc))
    except OSError as exc:
        log.error("cannot listen on %s: %s", args.bind, exc)
        return 1
    supervisor = Supervisor(server, workers=args.workers,
                            graceful_timeout=args.graceful_timeout)
    return supervisor.run()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    return int(args.func(args, parser))
