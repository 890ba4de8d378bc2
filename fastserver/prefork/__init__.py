"""Pre-forked worker processes for any fastserver server.

A :class:`Supervisor` takes a server that is already bound and listening,
forks N worker processes that all run its ``serve_forever()`` on the one
listening socket, restarts workers that die, and turns signals into a
graceful drain or a fast stop::

    server = fastserver.ThreadingTCPServer(("0.0.0.0", 8000), Handler)
    status = fastserver.prefork.Supervisor(server, workers=4).run()

Design (the README's "Running in production" is the user-facing version):

- **One shared listening socket**, bound by the supervisor before the first
  fork, rather than one SO_REUSEPORT socket per worker. With a single
  accept queue, a worker that crashes or is restarted loses only the
  requests it had accepted: connections still queued wait for a sibling or
  for the replacement, because the supervisor keeps the socket open. With
  per-worker sockets each worker owns part of the queue, and closing its
  socket resets every connection queued in that part. A single socket also
  lets one action close the server to new clients during a drain, works
  the same for TCP, Unix and datagram sockets and on every POSIX system,
  and binds privileged ports once. The cost: workers share one queue, so
  every idle worker wakes for each connection and all but one find nothing
  to accept (the socket is non-blocking, so they go back to waiting).
- **Drain without resets.** Closing a listening socket resets the
  connections queued in it, and clients whose connect() already succeeded
  see ECONNRESET. So SIGTERM first closes the socket *to new clients only*
  while it stays open: on Linux TCP a classic BPF socket filter that drops
  TCP segments carrying SYN without ACK, so no new handshake starts (the
  clients' SYNs go unanswered; they retry and are refused once the socket
  is closed), while handshakes already under way complete. On a Unix
  stream socket the supervisor unlinks the socket's path, so new connects
  fail with ENOENT. The workers then keep accepting until no handshake is
  in progress (``/proc/net/tcp*`` lists none in SYN_RECV for the port) and
  the queue stays empty, serve what they accepted within the graceful
  timeout, and exit; only then does the last descriptor close.
  A filter that drops every segment would also drop the final ACK of
  handshakes already answered with SYN-ACK: those clients believe they are
  connected, and would be reset at close.

The package, by concern:

- ``drain``: the BPF filter that drops new SYNs (through ctypes), and the
  sock_diag and /proc probes for handshakes in progress
- ``listener``: :class:`Listener`, the shared socket during a drain
- ``signals``: the self-pipe that carries signals to each process's loop
- ``supervisor``: :class:`Supervisor`, forking, restarts and signals
- ``worker``: a worker's serve loop, its drain, and the count of its
  requests in flight
"""

from .drain import SO_ATTACH_FILTER, SO_GET_FILTER, attach_filter
from .listener import Listener
from .supervisor import Supervisor
from .worker import EXIT_BOOT_FAILED, EXIT_GRACEFUL_TIMEOUT

__all__ = ["Supervisor", "Listener", "EXIT_GRACEFUL_TIMEOUT", "EXIT_BOOT_FAILED",
           "attach_filter", "SO_ATTACH_FILTER", "SO_GET_FILTER"]
