"""The mix-ins that run each request in its own process or thread:
ForkingMixIn and ThreadingMixIn (ThreadPoolMixIn, their bounded sibling, is
in fastserver.pool)."""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Optional, Set

from ._executor import HandlerThreads, NoThreads

_Address = Any


class ForkingMixIn:
    """Mix-in class to handle each request in a new process."""

    timeout: Optional[float] = 300
    active_children: Optional[Set[int]] = None
    max_children: int = 40
    # If true, server_close() waits until all child processes complete.
    block_on_close: bool = True

    def collect_children(self, *, blocking: bool = False) -> None:
        """Internal routine to wait for children that have exited."""
        children = self.active_children
        if children is None:
            return
        # Over the limit, reap any child at all (waitpid(-1)) until back
        # under it: one syscall per exited child rather than per child.
        while len(children) >= self.max_children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                children.clear()  # no children left at all
            except OSError:
                break
            else:
                children.discard(pid)
        flags = 0 if blocking else os.WNOHANG
        for pid in tuple(children):
            try:
                reaped, _ = os.waitpid(pid, flags)
            except ChildProcessError:
                children.discard(pid)  # reaped by someone else
            except OSError:
                pass
            else:
                if reaped:
                    children.discard(reaped)

    def handle_timeout(self) -> None:
        """Wait for zombies after self.timeout seconds of inactivity.

        May be extended, do not override.
        """
        self.collect_children()

    def service_actions(self) -> None:
        """Collect the zombie child processes regularly in the ForkingMixIn.

        service_actions is called in the BaseServer's serve_forever loop.
        """
        self.collect_children()

    def process_request(self, request: Any, client_address: _Address) -> None:
        """Fork a new subprocess to process the request."""
        pid = os.fork()
        if pid:
            if self.active_children is None:
                self.active_children = set()
            self.active_children.add(pid)
            # close, not shutdown: the child still talks on this connection.
            self._fs_close_request(request)  # type: ignore[attr-defined]
            return
        # In the child, which must never return into the serve loop.
        status = 1
        try:
            self.finish_request(request, client_address)  # type: ignore[attr-defined]
            status = 0
        except Exception:
            self.handle_error(request, client_address)  # type: ignore[attr-defined]
        finally:
            try:
                self.shutdown_request(request)  # type: ignore[attr-defined]
            finally:
                os._exit(status)

    def server_close(self) -> None:
        super().server_close()  # type: ignore[misc]
        self.collect_children(blocking=self.block_on_close)


class ThreadingMixIn:
    """Mix-in class to handle each request in a new thread.

    A thread that finished a request waits up to ``thread_idle_timeout``
    seconds for the next one, so that busy servers do not pay for a new
    thread per request; set it to 0 for a fresh thread every time.
    """

    # Whether handler threads are daemons (do not keep the process alive).
    daemon_threads: bool = False
    # If true, server_close() waits until all non-daemonic threads terminate.
    block_on_close: bool = True
    # Seconds an idle handler thread waits for another request.
    thread_idle_timeout: float = 2.0
    # The handler threads; the instance gets its own on the first request.
    _threads: Any = NoThreads()

    def process_request_thread(self, request: Any,
                               client_address: _Address) -> None:
        """Same as in BaseServer but as a thread.

        In addition, exception handling is done here.
        """
        try:
            self.finish_request(request, client_address)  # type: ignore[attr-defined]
        except Exception:
            self.handle_error(request, client_address)  # type: ignore[attr-defined]
        finally:
            if self.request_observer is None:  # type: ignore[attr-defined]
                self.shutdown_request(request)  # type: ignore[attr-defined]
            else:
                self._fs_end_request(request)  # type: ignore[attr-defined]

    def process_request(self, request: Any, client_address: _Address) -> None:
        """Run process_request_thread in an idle or a new thread."""
        threads = self.__dict__.get("_threads")
        if threads is None:
            threads = self._threads = HandlerThreads()
        threads.idle_timeout = self.thread_idle_timeout
        threads.submit(self.process_request_thread, (request, client_address),
                       bool(self.daemon_threads))

    def server_close(self) -> None:
        close_with_handlers(self, super().server_close,  # type: ignore[misc]
                            lambda: self._threads.close(join=bool(self.block_on_close)))


def close_with_handlers(server: Any, close_socket: Callable[[], None],
                        close_handlers: Callable[[], None]) -> None:
    """server_close() of a server whose handlers run in threads.

    A datagram handler replies through the server's own socket, so its
    threads are waited for (or released) before that socket closes;
    socketserver closes it first and an in-flight reply fails with EBADF.
    A stream server closes its listening socket first, as socketserver does.
    """
    if getattr(server, "socket_type", None) == socket.SOCK_DGRAM:
        close_handlers()
        close_socket()
    else:
        close_socket()
        close_handlers()
