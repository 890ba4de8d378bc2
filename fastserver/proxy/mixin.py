"""ProxyProtocolMixIn: stream servers that take the client's address from a
PROXY header, read in the connection preamble (:mod:`fastserver.preamble`)."""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any, Optional, Sequence, Tuple

from ..preamble import ConnectionState, PreambleFailed, PreambleStep, describe
from .codec import ProxyHeader, ProxyProtocolError
from .reader import read_header_until

__all__ = ["ProxyProtocolMixIn", "ProxyHeaderStep"]

log = logging.getLogger("fastserver.proxy")

_MODES = (None, "v1", "v2", "auto")
_UNTRUSTED = ("close", "serve")


def _networks(entries: Any) -> Tuple[Tuple[Any, ...], bool]:
    """(IP networks, whether Unix-socket peers are trusted)."""
    if isinstance(entries, str):
        entries = [entries]
    networks = []
    unix = False
    for entry in entries or ():
        if entry == "unix":
            unix = True
            continue
        try:
            networks.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError as exc:
            raise ValueError("trusted_proxies: %s" % (exc,))
    return tuple(networks), unix


def _peer_ip(address: Any) -> Any:
    if not isinstance(address, tuple) or not address:
        return None
    host = str(address[0]).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped if mapped is not None else ip


class ProxyHeaderStep(PreambleStep):
    """The preamble step that reads the PROXY header of a trusted peer.

    Every connection of the server gets ``proxy_address``, ``proxy_header``
    and ``proxy_tlvs`` (None, None, () when no header is read); with a
    header, the proxy's address, the header and its TLVs, and the client
    it names as the connection's client_address.
    """

    logger = log

    def __init__(self, server: Any) -> None:
        self.server = server
        self.timeout = float(server.proxy_timeout)

    def __call__(self, state: ConnectionState) -> ConnectionState:
        server = self.server
        attributes = state.attributes
        attributes["proxy_address"] = None
        attributes["proxy_header"] = None
        attributes["proxy_tlvs"] = ()
        mode = server.proxy_protocol
        if mode is None:
            return state
        if not server.proxy_trusted(state.client_address):
            if server.proxy_untrusted == "close":
                # verify_request() was overridden without calling ours.
                raise PreambleFailed("not a trusted proxy")
            # "serve": the real address, the bytes untouched.
            return state
        try:
            header = read_header_until(state.request, mode, state.deadline,
                                       state.budget)
        except ProxyProtocolError as exc:
            raise PreambleFailed(str(exc)) from None
        except OSError as exc:
            raise PreambleFailed("error reading the PROXY header: %s"
                                 % (exc,)) from None
        attributes["proxy_address"] = state.client_address
        attributes["proxy_header"] = header
        attributes["proxy_tlvs"] = header.tlvs
        client = header.client_address
        if client is not None:
            state.client_address = client
        state.handler_hooks.append(
            lambda handler: server.proxy_header_received(handler, header))
        return state


class ProxyProtocolMixIn:
    """Mix-in for stream servers behind a proxy that speaks the PROXY
    protocol: ``class S(ProxyProtocolMixIn, ThreadingTCPServer)``.

    Class variables that may be overridden by derived classes or instances:

    - proxy_protocol: "v1", "v2", "auto" (either; the default) or None (off)
    - trusted_proxies: networks ("10.0.0.0/8", "::1", ...; "unix" for any
      peer of a Unix socket) whose connections must start with a header.
      Empty by default: then no peer is trusted.
    - proxy_untrusted: "close" (default): connections from other peers are
      closed unread; "serve": they are served with their real address and
      any header they send is left to the handler as data
    - proxy_timeout: seconds the whole header may take (default 3.0); the
      header's share of the connection preamble's one deadline

    Methods that may be overridden:

    - proxy_trusted(client_address) -> bool: whether this peer may send a
      header
    - proxy_header_received(handler, header): called before the handler's
      setup() once a header is accepted, when client_address,
      proxy_address, proxy_header and proxy_tlvs are already set on the
      handler; the default does nothing more

    Methods that may be extended:

    - preamble_steps(): the PROXY header step comes first

    The handler sees ``proxy_address`` (the proxy's address, None when no
    header was read), ``proxy_header`` (a ProxyHeader, or None) and
    ``proxy_tlvs`` (its TLVs) and, when the header names the client, the
    client as ``client_address``. Stream servers only.
    """

    proxy_protocol: Optional[str] = "auto"
    trusted_proxies: Sequence[str] = ()
    proxy_untrusted: str = "close"
    proxy_timeout: float = 3.0

    _fs_proxy_cache: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if getattr(self, "socket_type", socket.SOCK_STREAM) != socket.SOCK_STREAM:
            raise TypeError("the PROXY protocol is supported on stream "
                            "servers only, not on %s" % type(self).__name__)
        if not hasattr(super(), "preamble_steps"):
            # A base without the preamble stage (the stdlib's socketserver)
            # would hand the header to the handler as data.
            raise TypeError("ProxyProtocolMixIn needs a fastserver server "
                            "class, not %s" % type(self).__name__)
        self._proxy_settings()  # fail here on a bad setting, not per request
        super().__init__(*args, **kwargs)

    def _proxy_settings(self) -> Tuple[Optional[str], Tuple[Any, ...], bool]:
        mode = self.proxy_protocol
        if mode not in _MODES:
            raise ValueError("proxy_protocol must be one of %r, got %r"
                             % (_MODES, mode))
        if self.proxy_untrusted not in _UNTRUSTED:
            raise ValueError("proxy_untrusted must be 'close' or 'serve', "
                             "got %r" % (self.proxy_untrusted,))
        if not self.proxy_timeout > 0:
            raise ValueError("proxy_timeout must be positive")
        key = self.trusted_proxies
        key = tuple(key) if not isinstance(key, str) else (key,)
        cache = self._fs_proxy_cache
        if cache is None or cache[0] != key:
            cache = self._fs_proxy_cache = (key,) + _networks(key)
        return mode, cache[1], cache[2]

    def proxy_trusted(self, client_address: Any) -> bool:
        """Whether the peer at client_address may send a PROXY header."""
        _, networks, unix = self._proxy_settings()
        ip = _peer_ip(client_address)
        if ip is None:
            return unix and getattr(self, "address_family", None) == \
                getattr(socket, "AF_UNIX", None)
        return any(ip in net for net in networks)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.proxy_protocol is not None and \
                self.proxy_untrusted == "close" and \
                not self.proxy_trusted(client_address):
            log.warning("closed connection from %s: not a trusted proxy",
                        describe(client_address))
            return False
        return super().verify_request(request, client_address)  # type: ignore[misc, no-any-return]

    def preamble_steps(self) -> Sequence[PreambleStep]:
        """The connection preamble: the PROXY header first (the first bytes
        on the wire), then the steps of the classes after this one."""
        return (ProxyHeaderStep(self),) + tuple(super().preamble_steps())  # type: ignore[misc]

    def proxy_header_received(self, handler: Any, header: ProxyHeader) -> None:
        """Called before handler.setup() once a header is accepted; the
        handler's client_address, proxy_address, proxy_header and
        proxy_tlvs are set already."""
