"""The shared listening socket, as the supervisor and the workers see it
during a drain."""

from __future__ import annotations

import logging
import os
import select
import socket
import sys
from time import monotonic
from typing import Optional

from .drain import (NO_NEW_HANDSHAKES, attach_filter, attached_filter,
                    program_bytes, tcp_handshakes_in_progress)

__all__ = ["Listener"]

log = logging.getLogger("fastserver.prefork")


def _sleep(seconds: float) -> None:
    select.select([], [], [], seconds)


class Listener:
    """The shared listening socket, as the supervisor and workers see it.

    - ``close_to_new()`` (supervisor): stop new clients from connecting
      while queued ones stay; returns False where that is not possible.
    - ``closed_to_new()`` (worker): whether close_to_new() was done.
    - ``idle()``: no connection is queued or on its way into the queue.
    """

    def __init__(self, sock: socket.socket, inherited: bool = False) -> None:
        self.sock = sock
        self.kind = "other"
        self.port = 0
        self.path: Optional[str] = None
        self.inode = 0
        linux = sys.platform.startswith("linux")
        if inherited:
            # Another process (systemd) owns the socket and keeps it open:
            # connections still queued at the end wait for the next start,
            # so never filter or unlink it (a filter would outlive us).
            self.kind = "inherited"
        elif sock.type == socket.SOCK_DGRAM:
            self.kind = "datagram"
        elif sock.family in (socket.AF_INET, socket.AF_INET6) and linux:
            self.kind = "tcp"
            self.port = sock.getsockname()[1]
        elif sock.family == getattr(socket, "AF_UNIX", None):
            name = sock.getsockname()
            if isinstance(name, bytes):
                name = os.fsdecode(name)
            if name and not name.startswith("\0"):
                self.kind = "unix"
                self.path = name
                self.inode = os.stat(name).st_ino
        self._program = program_bytes(NO_NEW_HANDSHAKES)

    @property
    def can_close_to_new(self) -> bool:
        return self.kind in ("tcp", "unix")

    def close_to_new(self) -> bool:
        if self.kind == "tcp":
            try:
                attach_filter(self.sock)
                return True
            except OSError as exc:
                log.warning("cannot filter new connections (%s): queued "
                            "connections may be reset at close", exc)
                return False
        if self.kind == "unix":
            self.cleanup()
            return True
        return False

    def closed_to_new(self) -> bool:
        if self.kind == "tcp":
            try:
                attached = attached_filter(self.sock)
            except OSError:
                return False
            return attached == self._program
        if self.kind == "unix":
            return not self._path_is_ours()
        return False

    def _path_is_ours(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode  # type: ignore[arg-type]
        except OSError:
            return False

    def readable(self) -> bool:
        try:
            ready, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(ready)

    def idle(self) -> bool:
        # Handshakes first: once none is in progress (and no new one can
        # start), an empty queue stays empty.
        if self.kind == "tcp" and tcp_handshakes_in_progress(self.port):
            return False
        return not self.readable()

    def wait_drained(self, deadline: float, quiet: float = 0.05) -> bool:
        """Wait until idle() has held for ``quiet`` seconds; False at the
        deadline."""
        since: Optional[float] = None
        while True:
            now = monotonic()
            if self.idle():
                if since is None:
                    since = now
                elif now - since >= quiet:
                    return True
            else:
                since = None
            if now >= deadline:
                return False
            _sleep(min(0.01, max(0.0, deadline - now)))

    def cleanup(self) -> None:
        """Remove the Unix socket path if it is still this socket's."""
        if self.kind == "unix" and self._path_is_ours():
            try:
                os.unlink(self.path)  # type: ignore[arg-type]
            except OSError:
                pass
