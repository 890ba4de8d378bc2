"""Request handlers for the prefork and command-line tests, and a small
program that serves one of them with fastserver.prefork.Supervisor.

As a program::

    prefork_app.py HANDLER SERVER_CLASS[+overrides] WORKERS GRACEFUL_TIMEOUT [ADDRESS]

ADDRESS is ``unix:PATH`` or omitted (127.0.0.1, any port). ``+overrides``
mixes UserOverrides into the server class. The supervisor logs to stderr at
INFO level, including the "listening on" line the tests wait for.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import Any, Dict, Tuple

import fastserver
from fastserver.prefork import Supervisor

log = logging.getLogger("prefork_app")


class Echo(fastserver.StreamRequestHandler):
    """Echo every line."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class SlowEcho(fastserver.StreamRequestHandler):
    """Echo one line, 10 ms later (so that requests are in flight)."""

    def handle(self) -> None:
        line = self.rfile.readline()
        time.sleep(0.01)
        self.wfile.write(line)


class Crash(fastserver.StreamRequestHandler):
    """Echo lines; "crash" kills the worker process on the spot."""

    def handle(self) -> None:
        for line in self.rfile:
            if line.strip() == b"crash":
                os._exit(7)
            self.wfile.write(line)


class Sleep(fastserver.StreamRequestHandler):
    """Read a number of seconds, sleep that long, answer "done"."""

    def handle(self) -> None:
        seconds = float(self.rfile.readline())
        self.wfile.write(b"started\n")
        time.sleep(seconds)
        self.wfile.write(b"done\n")


class Info(fastserver.StreamRequestHandler):
    """Describe the process and the server, as one JSON line."""

    def handle(self) -> None:
        server = self.server
        info = {
            "pid": os.getpid(),
            "server": type(server).__name__,
            "mro": [c.__name__ for c in type(server).__mro__],
            "max_workers": getattr(server, "max_workers", None),
            "backend": fastserver.backend,
            "thread": threading.current_thread().name,
        }
        self.wfile.write(json.dumps(info).encode() + b"\n")


class UserOverrides:
    """A user's server overrides: process_request() extends the base, while
    shutdown_request() and close_request() replace it without super(). Each
    logs that it ran. block_on_close is off, so that server_close() does not
    wait for handler threads and only the worker's in-flight count holds
    its drain."""

    block_on_close = False

    def process_request(self, request: Any, client_address: Any) -> None:
        log.info("process_request override ran")
        super().process_request(request, client_address)  # type: ignore[misc]

    def shutdown_request(self, request: Any) -> None:
        log.info("shutdown_request override ran")
        self.close_request(request)  # type: ignore[attr-defined]

    def close_request(self, request: Any) -> None:
        log.info("close_request override ran")
        request.close()


class UDPEcho(fastserver.DatagramRequestHandler):
    """Answer each datagram with its own bytes and the worker's pid."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read() + b" %d" % os.getpid())


def main() -> int:
    handler_name, server_name, workers, graceful = sys.argv[1:5]
    address = sys.argv[5] if len(sys.argv) > 5 else ""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(process)d %(levelname)s %(name)s: %(message)s")
    server_name, _, options = server_name.partition("+")
    bases: Tuple[type, ...] = (getattr(fastserver, server_name),)
    if options == "overrides":
        bases = (UserOverrides,) + bases
    attrs: Dict[str, Any] = {"request_queue_size": 1024}
    if not address.startswith("unix:"):
        attrs["allow_reuse_address"] = True
    server_class = type(server_name, bases, attrs)
    handler = globals()[handler_name]
    server = server_class(address[5:] if address.startswith("unix:")
                          else ("127.0.0.1", 0), handler)
    return Supervisor(server, workers=int(workers),
                      graceful_timeout=float(graceful)).run()


if __name__ == "__main__":
    sys.exit(main())
