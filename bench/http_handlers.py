"""HTTP handlers for the http-keepalive workloads.

Apart from bench/handlers.py because http.server (with the email package it
imports) adds about 6 MiB to a server process: the other workloads' peak RSS
must not carry it.  Like handlers.py, this imports the stdlib's http.server,
which binds whichever ``socketserver`` the server runner installed first.
"""
from __future__ import annotations

import http.server

# Byte for byte the body that bench/loadgen.c (and echo_ref.c --http) expect.
HTTP_BODY = b"fastserver http-keepalive bench reply: 64 bytes of body, done!!\n"


class KeepAliveGet(http.server.BaseHTTPRequestHandler):
    """Answers every GET with HTTP_BODY and keeps the connection open.

    Written as users write handlers: status and headers, then the body, two
    writes on an unbuffered wfile, and Nagle's algorithm left as the server
    has it (no disable_nagle_algorithm here).
    """

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(HTTP_BODY)))
        self.end_headers()
        self.wfile.write(HTTP_BODY)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # A line on stderr per request would cost more than the request
        # itself; errors still go through log_error.
        pass


class NoDelayKeepAliveGet(KeepAliveGet):
    """The same with TCP_NODELAY: what the stall-free default should match."""

    disable_nagle_algorithm = True
