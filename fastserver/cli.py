"""The ``fastserver`` command (also ``python -m fastserver``).

``fastserver run MODULE:HANDLER [options]`` serves a request handler class
with a fastserver server class in pre-forked workers (see
fastserver.prefork). Every problem is reported as one line naming what is
wrong: exit status 2 (with run's usage) for the command line, 1 for the
environment (see fastserver._cli_loading).

The parser is built from small functions so that options can be added
without touching the others: ``add_run_arguments()`` adds each group, and
``server_class_for()`` turns the parsed options into the server class, one
class attribute per option (``--certfile`` and its companions become one
``ssl_context``, built by fastserver.tls_files; SIGHUP builds it again, see
``tls_reloader()``).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import platform
import signal
import socket
import stat
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from . import activation, servers, tls_files
from ._cli_loading import (ImportFailed, SetupError, UsageError, handler_kind,
                           load_handler, load_object, non_negative_float,
                           positive_float)
from ._cli_tls import add_tls_arguments, tls_attributes, tls_context, tls_reloader
from .pool import ThreadPoolMixIn
from .proxy import ProxyProtocolMixIn, _networks
from .prefork import Supervisor

__all__ = ["main", "build_parser", "add_run_arguments", "parse_bind",
           "load_object", "server_class_for", "make_server", "tls_context",
           "tls_reloader", "UsageError", "SetupError"]

log = logging.getLogger("fastserver.cli")

DEFAULT_BIND = "127.0.0.1:8000"
DEFAULT_BACKLOG = 1024
DEFAULT_GRACEFUL_TIMEOUT = 30.0
DEFAULT_PROXY_TIMEOUT = 3.0
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def version_line() -> str:
    import fastserver

    return "fastserver %s (%s backend, %s %s)" % (
        fastserver.__version__, fastserver.backend,
        platform.python_implementation(), platform.python_version())


def build_parser(prog: str = "fastserver") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve socketserver request handlers with fastserver.")
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    run = commands.add_parser(
        "run", help="serve a request handler in pre-forked worker processes",
        # One line, so that an error shows it above itself; --help lists
        # the options.
        usage="%(prog)s MODULE:HANDLER [options]",
        description="Serve MODULE:HANDLER (a request handler class) with a "
                    "fastserver server class in pre-forked worker processes. "
                    "SIGTERM drains (no accepted connection is lost), SIGINT "
                    "stops fast, SIGHUP replaces the workers.")
    add_run_arguments(run)
    run.set_defaults(func=run_command, command_parser=run)
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
        "--graceful-timeout", metavar="S", type=non_negative_float,
        default=DEFAULT_GRACEFUL_TIMEOUT,
        help="seconds in-flight requests get to finish after SIGTERM "
             "(default %g)" % DEFAULT_GRACEFUL_TIMEOUT)
    processes.add_argument(
        "--signal-handler", metavar="MODULE:FUNC", default=None,
        help="call FUNC(signum, server) in each worker when the supervisor "
             "receives SIGUSR1 or SIGUSR2 (it forwards them to the workers)")
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
        "--proxy-timeout", metavar="S", type=positive_float,
        default=DEFAULT_PROXY_TIMEOUT,
        help="seconds the whole header may take to arrive (default %g)"
             % DEFAULT_PROXY_TIMEOUT)
    add_tls_arguments(parser)
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


def _cidr(text: str) -> str:
    try:
        _networks([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text


# --- turning options into a server -----------------------------------------


def parse_bind(text: str) -> Tuple[int, Any]:
    """(address_family, server_address) for a --bind value."""
    what = "--bind %r" % (text,)
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if path.startswith("//"):
            raise UsageError("%s: no URL scheme; write unix:%s" % (what, path[2:]))
        if not path:
            raise UsageError("%s: unix: needs a path" % what)
        return socket.AF_UNIX, path
    scheme, sep, rest = text.partition("://")
    if sep:
        hint = " and add --udp" if scheme.lower() == "udp" else ""
        raise UsageError("%s: no URL scheme; write %s%s"
                         % (what, rest.rstrip("/") or "HOST:PORT", hint))
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise UsageError("%s: expected [IPV6]:PORT" % what)
        return socket.AF_INET6, (host, _port(port, what))
    if _is_ip(text, 6):
        host, _, last = text.rpartition(":")
        if last.isdigit() and _is_ip(host, 6):
            # Ambiguous (::1:9000 is an address too): the likelier reading first.
            raise UsageError("%s: put IPv6 addresses in brackets: [%s]:%s "
                             "(or [%s]:PORT)" % (what, host, last, text))
        raise UsageError("%s has no port; write [%s]:PORT" % (what, text))
    if ":" not in text:
        if text.isdigit():
            return socket.AF_INET, ("127.0.0.1", _port(text, what))
        raise UsageError("%s has no port; write %s:PORT (or PORT alone for "
                         "127.0.0.1)" % (what, text))
    host, _, port = text.rpartition(":")
    if ":" in host:
        if _is_ip(host, 6):
            raise UsageError("%s: put IPv6 addresses in brackets: [%s]:%s"
                             % (what, host, port))
        raise UsageError("%s: expected HOST:PORT, [IPV6]:PORT, PORT or "
                         "unix:PATH" % what)
    return socket.AF_INET, (host or "0.0.0.0", _port(port, what))


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _port(text: str, what: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise UsageError("%s: not a port number: %r" % (what, text)) from None
    if not 0 <= port <= 65535:
        raise UsageError("%s: port out of range: %d" % (what, port))
    return port


def _named_server_class(name: str) -> type:
    if ":" in name:
        cls = load_object(name)
    else:
        import fastserver
        cls = getattr(fastserver, name, None)
    if not (isinstance(cls, type) and issubclass(cls, servers.BaseServer)):
        raise UsageError("--server %s: not a fastserver server class" % (name,))
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
        raise UsageError("--udp needs a datagram server class, not %s"
                         % base.__name__)
    base_family = getattr(base, "address_family", socket.AF_INET)
    if unix != (base_family == socket.AF_UNIX):
        raise UsageError("%s serves %s addresses; --bind %s needs a %s class"
                         % (base.__name__, "Unix" if base_family == socket.AF_UNIX
                            else "IP", "unix:PATH" if unix else "HOST:PORT",
                            "Unix" if unix else "TCP/UDP"))
    attrs: Dict[str, Any] = {"__module__": base.__module__}
    bases: Tuple[type, ...] = (base,)
    name = base.__name__
    if args.threads is not None:
        if issubclass(base, servers.ForkingMixIn):
            raise UsageError("--threads cannot be combined with %s" % name)
        if not issubclass(base, ThreadPoolMixIn):
            if issubclass(base, servers.ThreadingMixIn) and \
                    vars(servers).get(base.__name__) is base:
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
            raise UsageError("--proxy-protocol needs a stream server, not %s"
                             % base.__name__)
        if not args.trusted_proxy:
            raise UsageError("--proxy-protocol needs at least one "
                             "--trusted-proxy")
        if not issubclass(base, ProxyProtocolMixIn):
            bases = (ProxyProtocolMixIn,) + bases
        attrs["proxy_protocol"] = args.proxy_protocol
        attrs["trusted_proxies"] = tuple(args.trusted_proxy)
        attrs["proxy_untrusted"] = args.proxy_untrusted
        attrs["proxy_timeout"] = args.proxy_timeout
    elif getattr(args, "trusted_proxy", None):
        raise UsageError("--trusted-proxy needs --proxy-protocol")
    attrs.update(tls_attributes(args, base))
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


def check_handler_fits(handler: type, cls: type, args: argparse.Namespace) -> None:
    """Refuse a stream handler on a datagram server, and the other way round."""
    kind = handler_kind(handler)
    served = "datagram" if getattr(cls, "socket_type", None) == socket.SOCK_DGRAM \
        else "stream"
    if kind is None or kind == served:
        return
    if kind == "stream":
        fix = ("drop --udp" if args.udp else
               "choose a stream --server such as ThreadingTCPServer")
    else:
        fix = "add --udp" if args.server is None else \
            "choose a datagram --server such as ThreadingUDPServer"
    raise UsageError("%s is a %s handler (%s) but %s is a %s server: %s"
                     % (args.target, kind, _handler_base_name(handler),
                        cls.__name__, served, fix))


def _handler_base_name(handler: type) -> str:
    for base in handler.__mro__:
        if base.__name__ in ("StreamRequestHandler", "DatagramRequestHandler"):
            return base.__name__
    return handler.__name__


def _remove_stale_unix_socket(path: str) -> None:
    """Unlink path if it is a Unix socket nobody listens on; a SetupError
    when something is in the way that this user cannot check or remove."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISSOCK(mode):
        raise SetupError("--bind unix:%s: the path exists and is not a socket"
                         % path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        try:
            os.unlink(path)
        except OSError as exc:
            raise SetupError(
                "--bind unix:%s: a stale socket (nobody listens on it) is in "
                "the way and this user may not remove it: %s"
                % (path, exc.strerror)) from None
        log.info("removed stale socket %s", path)
    except PermissionError as exc:
        raise SetupError(
            "--bind unix:%s: a socket file is in the way and this user may "
            "not connect to it to see whether it is stale: %s"
            % (path, exc.strerror)) from None
    except OSError:
        pass  # a datagram socket: leave it to bind()
    finally:
        probe.close()


def make_server(args: argparse.Namespace) -> Any:
    """Build the bound, listening server the options describe."""
    if getattr(args, "systemd", False):
        return _systemd_server(args)
    family, address = parse_bind(args.bind)
    handler = load_handler(args.target)
    cls = server_class_for(args, family)
    check_handler_fits(handler, cls, args)
    if family == socket.AF_UNIX:
        _remove_stale_unix_socket(address)
    log.debug("server class %s (%s), handler %s.%s",
              cls.__name__, " < ".join(c.__name__ for c in cls.__mro__[1:-1]),
              handler.__module__, handler.__qualname__)
    try:
        return cls(address, handler)
    except OSError as exc:
        where = "unix:" + address if family == socket.AF_UNIX else args.bind
        raise SetupError("cannot listen on %s: %s" % (where, exc)) from None


def _systemd_server(args: argparse.Namespace) -> Any:
    """The server on the socket systemd passed (--systemd)."""
    if args.bind != DEFAULT_BIND:
        raise UsageError("--bind and --systemd exclude each other: the "
                         ".socket unit sets the address")
    handler = load_handler(args.target)
    try:
        passed = activation.listen_sockets()
        if len(passed) != 1:
            for _, sock in passed:
                sock.close()
            raise activation.ActivationError(
                "--systemd serves one socket; systemd passed %d" % len(passed))
    except activation.ActivationError as exc:
        raise SetupError("--systemd: %s" % exc) from None
    sock = passed[0][1]
    try:
        if sock.type == socket.SOCK_DGRAM and not args.udp:
            raise SetupError("--systemd: the socket systemd passed is a "
                             "datagram socket: add --udp")
        cls = server_class_for(args, sock.family)
        check_handler_fits(handler, cls, args)
        server = activation.server_from_socket(cls, handler, sock)
    except activation.ActivationError as exc:
        sock.close()
        raise SetupError("--systemd: %s" % exc) from None
    except BaseException:
        sock.close()
        raise
    log.info("serving on the socket systemd passed (%s)",
             sock.getsockname() if sock.family == socket.AF_UNIX
             else "%s:%s" % sock.getsockname()[:2])
    return server


def signal_post_fork(spec: str) -> Callable[[Any, int], None]:
    """The Supervisor's post_fork for --signal-handler MODULE:FUNC: each
    worker calls FUNC(signum, server) on SIGUSR1 and SIGUSR2."""
    func = load_object(spec)
    if not callable(func):
        raise UsageError("--signal-handler %s is a %s, not a function"
                         % (spec, type(func).__name__))

    def install(server: Any, worker_index: int) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            try:
                func(signum, server)
            except Exception:
                # A failing handler must not take the worker's serving down.
                log.exception("worker %d: --signal-handler %s failed on %s",
                              worker_index, spec, signal.Signals(signum).name)

        for signum in (signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, on_signal)

    return install


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format=LOG_FORMAT, stream=sys.stderr)


def _error_line(parser: argparse.ArgumentParser, message: str) -> str:
    # One line, whatever the message carries (an OSError may hold several).
    return "%s: error: %s\n" % (parser.prog, " ".join(message.split()))


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    setup_logging(args.log_level)
    try:
        post_fork = None
        if args.signal_handler is not None:
            post_fork = signal_post_fork(args.signal_handler)
        server = make_server(args)
        before_reload = None
        if getattr(args, "certfile", None) is not None:
            before_reload = tls_reloader(args)
            logging.getLogger("fastserver.tls").info("TLS with %s%s",
                         tls_files.describe_paths(args.certfile, args.keyfile),
                         "; client certificates %s (CAs in %s)"
                         % (args.verify_client, args.cafile)
                         if args.cafile is not None else "")
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        sys.stderr.write(_error_line(parser, str(exc)))
        return exc.exit_status
    except ImportFailed as exc:
        sys.stderr.write(exc.details)
        sys.stderr.write(_error_line(parser, str(exc)))
        return exc.exit_status
    except SetupError as exc:
        sys.stderr.write(_error_line(parser, str(exc)))
        return exc.exit_status
    supervisor = Supervisor(server, workers=args.workers,
                            graceful_timeout=args.graceful_timeout,
                            post_fork=post_fork, before_reload=before_reload)
    return supervisor.run()


def main(argv: Optional[Sequence[str]] = None, prog: str = "fastserver") -> int:
    """The ``fastserver`` console script (``python -m fastserver`` passes
    its own prog)."""
    parser = build_parser(prog)
    args = parser.parse_args(None if argv is None else list(argv))
    return int(args.func(args, args.command_parser))
