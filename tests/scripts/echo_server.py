"""A line-echo server for tests that watch a server process from outside.

    python echo_server.py CLASS [thread_idle_timeout]

Prints "PORT BACKEND" once listening; SIGTERM shuts it down cleanly.
"""

import signal
import socket
import sys
import threading

import fastserver


class Echo(fastserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class DatagramEcho(fastserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def main() -> None:
    base = getattr(fastserver, sys.argv[1])
    handler = Echo if base.socket_type == socket.SOCK_STREAM else DatagramEcho

    class Server(base):  # type: ignore[misc,valid-type]
        request_queue_size = 128
        allow_reuse_address = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # resets are expected here

    if len(sys.argv) > 2:
        Server.thread_idle_timeout = float(sys.argv[2])
    server = Server(("127.0.0.1", 0), handler)
    signal.signal(signal.SIGTERM,
                  lambda *_: threading.Thread(target=server.shutdown).start())
    print(server.server_address[1], fastserver.backend, flush=True)
    server.serve_forever(poll_interval=0.5)
    server.server_close()


if __name__ == "__main__":
    main()
