"""werkzeug's threaded dev server on the stdlib and on fastserver, measured like http-keepalive.

werkzeug is not a dependency of fastserver: run this from a scratch venv
outside the checkout, with fastserver installed editable into it::

    python3 -m venv /tmp/wz-venv
    /tmp/wz-venv/bin/pip install werkzeug
    /tmp/wz-venv/bin/pip install -e /path/to/fastserver    # builds the Cython extension in place
    cd /path/to/fastserver && /tmp/wz-venv/bin/python -m bench.werkzeug_keepalive

Each row's server process serves a tiny WSGI app with
``werkzeug.serving.make_server(host, port, app, threaded=True)``: on the
stdlib's socketserver, and on fastserver installed as ``socketserver``
before werkzeug is imported (cython, and pure through
FASTSERVER_NO_EXTENSIONS=1).  As in every bench run, the server is pinned to
CPU 0 and the C load generator to CPU 1, which sends one GET at a time on
each of 10 connections (workload werkzeug-threaded), then on one
(werkzeug-threaded-1), and checks status line and body of every response.

Only werkzeug 2.1.0 and 2.1.1 keep the connection alive: from 2.1.2 on, the
dev server answers ``Connection: close`` to every request (werkzeug issue
2397), so the load generator reconnects after each response, the
``closed_by_server`` note counts those responses, and a request's latency
includes its connect.  ``pip install 'werkzeug==2.1.1'`` measures the
keep-alive case.  The other options are ``python -m bench``'s (``--reps``,
``--duration``, ``--quick``, ``--impl``, ``--json``...).
"""
from __future__ import annotations

import errno
import importlib.metadata
import importlib.util
import logging
import socket
import sys
from typing import Any, Callable, Iterable

from .http_handlers import HTTP_BODY

WORKLOADS = "werkzeug-threaded,werkzeug-threaded-1"
PYTHON_IMPLS = "cython,pure,stdlib"
OWN_OPTIONS = ("--workload", "--handler", "--server", "--verify-echo")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(HTTP_BODY)))])
    return [HTTP_BODY]


def make_threaded_server(server_address: tuple[str, int], wsgi_app: Any) -> Any:
    """The bench's server factory: werkzeug's threaded server on ``server_address``.

    Called by bench.server_runner after it installed the socketserver under
    test, so werkzeug is imported here, not at the top of this module.
    """
    from werkzeug.serving import make_server

    # werkzeug logs every request at INFO on stderr, which would cost more
    # than the request; warnings and errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    host, port = server_address
    # werkzeug answers a failed bind with sys.exit(1); the runner tries the
    # next port only on an OSError, so find out first.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    try:
        return make_server(host, port, wsgi_app, threaded=True)
    except SystemExit:
        raise OSError(errno.EADDRINUSE, f"werkzeug could not bind port {port} (taken since the probe?)") from None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if importlib.util.find_spec("werkzeug") is None:
        print(
            f"bench.werkzeug_keepalive: werkzeug is not installed for {sys.executable}.\n"
            "fastserver does not depend on it; make a scratch venv outside the checkout:\n"
            "    python3 -m venv /tmp/wz-venv\n"
            "    /tmp/wz-venv/bin/pip install werkzeug\n"
            "    /tmp/wz-venv/bin/pip install -e .\n"
            "    /tmp/wz-venv/bin/python -m bench.werkzeug_keepalive",
            file=sys.stderr,
        )
        return 2
    taken = [a for a in args if a.split("=", 1)[0] in OWN_OPTIONS]
    if taken:
        print(f"bench.werkzeug_keepalive: {', '.join(taken)}: chosen by this script", file=sys.stderr)
        return 2
    if not any(a.split("=", 1)[0] == "--impl" for a in args):
        args += ["--impl", PYTHON_IMPLS]
    from .__main__ import main as bench_main

    try:
        version = importlib.metadata.version("werkzeug")
    except importlib.metadata.PackageNotFoundError:  # importable, but installed without metadata
        version = "(version unknown)"
    print(f"werkzeug {version} (from {sys.executable}); from 2.1.2 on it closes the connection after each response")
    return bench_main(["--workload", WORKLOADS, *args])


if __name__ == "__main__":
    sys.exit(main())
