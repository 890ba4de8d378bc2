"""systemd socket activation: serve on sockets that systemd opened.

With a ``.socket`` unit, systemd binds and listens itself, starts the
service on the first connection (or at boot) and passes the listening
sockets as descriptors 3, 4, ... with ``LISTEN_FDS`` (how many),
``LISTEN_PID`` (the process they are meant for) and, optionally,
``LISTEN_FDNAMES`` (colon-separated names, from ``FileDescriptorName=``)::

    server = fastserver.activation.server_from_systemd(
        fastserver.ThreadingTCPServer, Handler)
    server.serve_forever()

``python -m fastserver run ... --systemd`` does the same, with the pre-fork
workers of fastserver.prefork sharing the socket.

The rules are sd_listen_fds(3)'s: the descriptors are taken only when
``LISTEN_PID`` is this process, they are marked close-on-exec, and the
three variables are removed from the environment (so that child processes
do not take them for theirs). Each socket must match the server class: its
type (stream or datagram), its family (IPv4, IPv6, Unix) and, for stream
sockets, it must be listening (``Accept=no``, the default, in the unit).

The socket stays systemd's: the server never binds, listens or unlinks it,
and a drain leaves connections still queued in the kernel for the next
start of the service instead of closing the socket to new clients.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, List, Optional, Tuple

__all__ = ["ActivationError", "SD_LISTEN_FDS_START", "listen_sockets",
           "server_from_socket", "server_from_systemd"]

#: The first descriptor systemd passes.
SD_LISTEN_FDS_START = 3

_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

_FAMILY_NAMES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6",
                 getattr(socket, "AF_UNIX", -1): "Unix"}
_TYPE_NAMES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "datagram"}


class ActivationError(RuntimeError):
    """No usable socket was passed by systemd."""


def listen_sockets(unset_environment: bool = True) -> List[Tuple[str, socket.socket]]:
    """The sockets systemd passed to this process, as (name, socket) pairs.

    The name is the matching entry of LISTEN_FDNAMES ("" when there is
    none). Raises ActivationError when the process was not socket-activated
    (LISTEN_FDS unset) or the descriptors are meant for another process
    (LISTEN_PID). With unset_environment (the default) the variables are
    removed from os.environ either way.
    """
    try:
        pid_text = os.environ.get("LISTEN_PID")
        fds_text = os.environ.get("LISTEN_FDS")
        names_text = os.environ.get("LISTEN_FDNAMES")
    finally:
        if unset_environment:
            for name in _ENV:
                os.environ.pop(name, None)
    if fds_text is None or pid_text is None:
        raise ActivationError("not socket-activated: LISTEN_FDS and "
                              "LISTEN_PID are not set")
    try:
        pid = int(pid_text)
        count = int(fds_text)
    except ValueError:
        raise ActivationError("malformed LISTEN_PID=%r / LISTEN_FDS=%r"
                              % (pid_text, fds_text))
    if pid != os.getpid():
        raise ActivationError("LISTEN_PID is %d, not this process (%d): the "
                              "sockets are not ours" % (pid, os.getpid()))
    if count < 1:
        raise ActivationError("LISTEN_FDS=%d: no socket was passed" % count)
    names = names_text.split(":") if names_text else []
    result: List[Tuple[str, socket.socket]] = []
    try:
        for index in range(count):
            fd = SD_LISTEN_FDS_START + index
            try:
                os.set_inheritable(fd, False)
                sock = socket.socket(fileno=fd)
            except OSError as exc:
                raise ActivationError("descriptor %d is not a usable socket: "
                                      "%s" % (fd, exc))
            result.append((names[index] if index < len(names) else "", sock))
    except BaseException:
        for _, sock in result:
            sock.detach()
        raise
    return result


def server_from_socket(ServerClass: Callable[..., Any], RequestHandlerClass: Any,
                       sock: socket.socket) -> Any:
    """A ServerClass instance serving on sock, already bound (and, for a
    stream socket, listening) by someone else.

    The server is built with bind_and_activate=False, so server_bind() and
    server_activate() do not run; its ``socket_inherited`` is True, which
    tells fastserver.prefork to leave the socket open to new clients
    during a drain. Raises ActivationError when the socket's type or family
    does not match the class, or a stream socket is not listening.
    """
    want_type = getattr(ServerClass, "socket_type", socket.SOCK_STREAM)
    want_family = getattr(ServerClass, "address_family", socket.AF_INET)
    if sock.type != want_type:
        raise ActivationError(
            "%s serves %s sockets; the inherited socket is a %s socket"
            % (_name(ServerClass), _TYPE_NAMES.get(want_type, want_type),
               _TYPE_NAMES.get(sock.type, sock.type)))
    if sock.family != want_family:
        raise ActivationError(
            "%s serves %s addresses; the inherited socket is %s"
            % (_name(ServerClass), _FAMILY_NAMES.get(want_family, want_family),
               _FAMILY_NAMES.get(sock.family, sock.family)))
    if sock.type == socket.SOCK_STREAM and \
            not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ActivationError("the inherited stream socket is not listening "
                              "(use Accept=no in the .socket unit)")
    address = sock.getsockname()
    server = ServerClass(address, RequestHandlerClass, bind_and_activate=False)
    server.socket.close()
    sock.settimeout(None)
    server.socket = sock
    server.server_address = address
    server.socket_inherited = True
    return server


def server_from_systemd(ServerClass: Callable[..., Any], RequestHandlerClass: Any,
                        name: Optional[str] = None) -> Any:
    """A ServerClass instance serving on the socket systemd passed.

    With several sockets, name picks one by its FileDescriptorName=;
    without a name exactly one socket must have been passed. The sockets
    not used are closed. Raises ActivationError (see listen_sockets() and
    server_from_socket()).
    """
    passed = listen_sockets()
    try:
        if name is not None:
            chosen = [s for n, s in passed if n == name]
            if not chosen:
                raise ActivationError(
                    "no socket named %r among %s" % (
                        name, ", ".join(repr(n) for n, _ in passed)))
        elif len(passed) != 1:
            raise ActivationError(
                "systemd passed %d sockets (%s): pick one by name"
                % (len(passed), ", ".join(repr(n) for n, _ in passed)))
        else:
            chosen = [passed[0][1]]
        server = server_from_socket(ServerClass, RequestHandlerClass, chosen[0])
    except BaseException:
        for _, sock in passed:
            sock.close()
        raise
    for _, sock in passed:
        if sock is not chosen[0]:
            sock.close()
    return server


def _name(cls: Any) -> str:
    return getattr(cls, "__name__", repr(cls))
