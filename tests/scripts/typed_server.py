"""A sample server that uses fastserver's public API; tests/test_typing.py
checks it with mypy --strict, so the annotations users get are exercised,
and runs it: a failed assertion anywhere, handler threads included, makes
it exit non-zero."""

from __future__ import annotations

import socket
import sys
import threading
from typing import List, Optional, Tuple

import fastserver

# Exceptions raised in handler threads: handle_error() would only print
# them, and run() re-raises the first.
errors: List[BaseException] = []


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
    handled = threading.Event()

    def handle(self) -> None:
        data: bytes = self.rfile.read()
        assert isinstance(self.socket, socket.socket)
        self.wfile.write(data.upper())
        self.handled.set()


class ReportErrors:
    def handle_error(self, request: object, client_address: object) -> None:
        error = sys.exc_info()[1]
        if error is not None:
            errors.append(error)


class Server(ReportErrors, fastserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    thread_idle_timeout = 1.0
    last_peer: Optional[Tuple[str, int]] = None
    # server_close() does not wait for daemon threads: run() waits for this.
    request_done = threading.Event()

    def verify_request(self, request: socket.socket, client_address: Tuple[str, int]) -> bool:
        return client_address[0] == "127.0.0.1"

    def shutdown_request(self, request: socket.socket) -> None:
        super().shutdown_request(request)
        self.request_done.set()


class DatagramServer(ReportErrors, fastserver.ThreadPoolUDPServer):
    max_packet_size = 1024


def raise_handler_errors() -> None:
    if errors:
        raise errors[0]


def run() -> None:
    with Server(("127.0.0.1", 0), Echo) as server:
        port: int = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
        thread.start()
        try:
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(b"typed\n")
                assert client.recv(100) == b"TYPED\n"
                peer = client.getsockname()
            assert server.request_done.wait(10)
        finally:
            server.shutdown()
            thread.join()
        raise_handler_errors()
        assert server.last_peer == peer
    with DatagramServer(("127.0.0.1", 0), Datagrams) as udp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"datagram", udp.server_address)
        udp.handle_request()
        try:
            reply = client.recv(100)
        except socket.timeout:
            raise_handler_errors()  # no reply: the handler's error first
            raise
        assert reply == b"DATAGRAM"
    # server_close() waited for the handler thread (block_on_close).
    raise_handler_errors()
    assert Datagrams.handled.is_set()
    assert fastserver.backend in ("cython", "python")


if __name__ == "__main__":
    run()
