"""An echo server that runs out of descriptors after a few connections.

Prints its port, then serves with RLIMIT_NOFILE lowered so that only
``sys.argv[1]`` connections can be accepted at once.
"""

import os
import resource
import sys

import fastserver


class Echo(fastserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class Server(fastserver.ThreadingTCPServer):
    request_queue_size = 64
    daemon_threads = True


def main() -> None:
    slots = int(sys.argv[1])
    server = Server(("127.0.0.1", 0), Echo)
    # listdir's own descriptor is counted but closed again: it is the spare
    # the serve loop's waker will need (plus one more for a pipe's second end).
    in_use = len(os.listdir("/proc/self/fd")) + 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + slots, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print(server.server_address[1], fastserver.backend, flush=True)
    server.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
