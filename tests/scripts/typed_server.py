"""A sample server that uses fastserver's public API; tests/test_typing.py
checks it with mypy --strict, so the annotations users get are exercised."""

from __future__ import annotations

import socket
import threading
from typing import Optional, Tuple

import fastserver


class Echo(fastserver.StreamRequestHandler):
    timeout: Optional[float] = 5.0
    coalesce_writes = True

    def handle(self) -> None:
        for line in self.rfile:
            written: int = self.wfile.write(line.upper())
            assert written == len(line)
        peer: Tuple[str, int] = self.client_address
        self.server.last_peer = peer


class Datagrams(fastserver.DatagramRequestHandler):
    def handle(self) -> None:
        data: bytes = self.rfile.read()
        self.wfile.write(data)
        assert isinstance(self.socket, socket.socket)


class Server(fastserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    thread_idle_timeout = 1.0

    def verify_request(self, request: socket.socket, client_address: Tuple[str, int]) -> bool:
        return client_address[0] == "127.0.0.1"


def run() -> None:
    with Server(("127.0.0.1", 0), Echo) as server:
        port: int = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
        thread.start()
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(b"typed\n")
            assert client.recv(100) == b"TYPED\n"
        server.shutdown()
        thread.join()
    with fastserver.ThreadPoolUDPServer(("127.0.0.1", 0), Datagrams) as udp:
        udp.max_packet_size = 1024
        udp.timeout = 0.01
        udp.handle_request()
    assert fastserver.backend in ("cython", "python")


if __name__ == "__main__":
    run()
