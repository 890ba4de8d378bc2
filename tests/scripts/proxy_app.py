"""Request handlers for the PROXY protocol and systemd tests
(tests/test_proxy*.py, tests/test_systemd.py), served with
``python -m fastserver run proxy_app:HANDLER ...``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Dict

import fastserver


def describe(handler: Any, line: bytes) -> Dict[str, Any]:
    header = getattr(handler, "proxy_header", None)
    proxy = getattr(handler, "proxy_address", None)
    return {
        "client": list(handler.client_address[:2])
        if isinstance(handler.client_address, tuple) else handler.client_address,
        "proxy": list(proxy[:2]) if isinstance(proxy, tuple) else proxy,
        "version": header.version if header else None,
        "command": header.command if header else None,
        "unique_id": header.unique_id.decode("latin-1")
        if header is not None and header.unique_id is not None else None,
        "tlv_types": [t.type for t in header.tlvs] if header else [],
        "line": line.decode("latin-1"),
        "pid": os.getpid(),
        "backend": fastserver.backend,
        "server": type(handler.server).__name__,
        "listen_env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
        "nodelay": None if handler.request.family == socket.AF_UNIX else
        handler.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
    }


class Whoami(fastserver.StreamRequestHandler):
    """Answer every line with one JSON line: who the client is (as the
    server sees it), the proxy, the header, and the line itself."""

    def handle(self) -> None:
        try:
            for line in self.rfile:
                self.wfile.write(json.dumps(describe(self, line)).encode() + b"\n")
        except ConnectionResetError:
            pass  # HAProxy's health checks may end with a reset


class SlowWhoami(Whoami):
    """Whoami, 20 ms later per line (so that requests are in flight)."""

    def handle(self) -> None:
        try:
            for line in self.rfile:
                time.sleep(0.02)
                self.wfile.write(json.dumps(describe(self, line)).encode() + b"\n")
        except ConnectionResetError:
            pass
