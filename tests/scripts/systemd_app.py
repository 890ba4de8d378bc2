"""Serve on the socket systemd passed, through the Python API
(fastserver.activation.server_from_systemd), for tests/test_systemd.py.

    systemd_app.py SERVER_CLASS [NAME]

Prints one JSON line describing what it adopted, then serves one request
with handle_request() and exits. The handler is proxy_app.Whoami.
"""

from __future__ import annotations

import json
import os
import sys

import fastserver
from fastserver import activation
from proxy_app import Whoami


def main() -> int:
    server_class = getattr(fastserver, sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else None
    try:
        server = activation.server_from_systemd(server_class, Whoami, name=name)
    except activation.ActivationError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 3
    with server:
        fd = server.socket.fileno()
        print(json.dumps({
            "fd": fd,
            "inheritable": os.get_inheritable(fd),
            "inherited": server.socket_inherited,
            "address": server.server_address,
            "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
            "backend": fastserver.backend,
        }), flush=True)
        server.handle_request()
    return 0


if __name__ == "__main__":
    sys.exit(main())
