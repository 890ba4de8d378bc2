"""An echo server that runs out of descriptors after a few connections.

Serves with RLIMIT_NOFILE lowered so that exactly ``sys.argv[1]``
connections can be open at once, then prints its port and backend.
"""

import os
import resource
import socket
import sys
import threading

import fastserver


class Echo(fastserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class Server(fastserver.ThreadingTCPServer):
    request_queue_size = 64
    daemon_threads = True
    request_closed = threading.Event()

    def shutdown_request(self, request: socket.socket) -> None:
        super().shutdown_request(request)
        self.request_closed.set()


def main() -> None:
    slots = int(sys.argv[1])
    server = Server(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                     daemon=True).start()
    # One request first: the serve loop then holds what it needs while it
    # serves (its waker takes one descriptor or two, by backend), so the
    # count below is of everything but the connections.
    with socket.create_connection(server.server_address) as probe:
        probe.sendall(b"probe\n")
        assert probe.recv(100) == b"probe\n"
    assert Server.request_closed.wait(10)
    # Descriptors are numbered from 0 with no gap; listdir's own is counted
    # but closed again, and is the first of the slots.
    in_use = len(os.listdir("/proc/self/fd")) - 1
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + slots, hard))
    print(server.server_address[1], fastserver.backend, flush=True)
    threading.Event().wait()  # until terminated


if __name__ == "__main__":
    main()
