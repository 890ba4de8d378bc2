"""The PROXY protocol (versions 1 and 2) for stream servers behind a proxy.

A load balancer such as HAProxy that forwards TCP connections can announce
the original client at the start of each connection, in a header the
backend reads before the application's own bytes. This package parses and
writes those headers, and :class:`ProxyProtocolMixIn` makes any stream
server accept them::

    class Server(fastserver.ProxyProtocolMixIn, fastserver.ThreadingTCPServer):
        proxy_protocol = "v2"                  # or "v1", "auto"; None: off
        trusted_proxies = ["10.0.0.0/24"]      # who may send a header
        proxy_untrusted = "close"              # or "serve"
        proxy_timeout = 3.0

Layout: :mod:`.codec` parses and writes headers (ProxyHeader, parse(),
crc32c, the TLVs), :mod:`.reader` reads one off a connection with a
deadline, :mod:`.mixin` holds ProxyProtocolMixIn and its preamble step.

Design:

- **Trust is decided before a byte is read**, from the connection's real
  peer address (the accepted client_address). A peer inside
  ``trusted_proxies`` must start with a header; any other peer is never
  believed: its connection is closed in verify_request() (the default) or,
  with ``proxy_untrusted = "serve"``, served with its real address and
  every byte it sends, a would-be header included, left to the handler.
- **The header is read in the connection preamble**
  (:mod:`fastserver.preamble`): in finish_request(), in the request's own
  thread or child, before the handler is made. It is read from the socket
  with MSG_PEEK and then an exact receive, so the stream starts right after
  the header for every handler: buffered or unbuffered rfile, a plain
  BaseRequestHandler, either backend.
- **One deadline** (``proxy_timeout``, 3 s by default: the header's share
  of the preamble's one deadline) covers the whole header, however slowly
  it trickles in; every receive waits at most what is left of it. A
  malformed, oversized (v1 over 107 bytes), truncated or late header closes
  the connection, logs one warning on the ``fastserver.proxy`` logger, and
  the server serves on; the handler is not made and handle_error() is not
  called.
- The handler (an instance of the handler class itself) then sees the
  original client as ``client_address``, the proxy's own address as
  ``proxy_address``, and the header (with its TLVs: ALPN, authority,
  unique id, SSL information, ...) as ``proxy_header`` and
  ``proxy_tlvs``, all before its setup() runs. A v2 LOCAL command (the
  proxy's own health checks) and v1 ``UNKNOWN`` keep the real endpoints.
- **Datagram servers are not supported.** PROXY v2 can prefix each
  datagram with a header, but a reply must then go back to the proxy, not
  to the client the header names, and DatagramRequestHandler answers
  client_address; rather than half-work, ProxyProtocolMixIn refuses a
  datagram server at construction. :func:`parse` can still decode a
  datagram's header for code that routes the reply itself.
"""

# Everything the single proxy.py module offered stays importable from here.
from .codec import (  # noqa: F401
                    AF_UNSPEC, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS,
                    PP2_CLIENT_SSL, PP2_SUBTYPE_SSL_CIPHER, PP2_SUBTYPE_SSL_CN,
                    PP2_SUBTYPE_SSL_KEY_ALG, PP2_SUBTYPE_SSL_SIG_ALG,
                    PP2_SUBTYPE_SSL_VERSION, PP2_TYPE_ALPN,
                    PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_NETNS,
                    PP2_TYPE_NOOP, PP2_TYPE_SSL, PP2_TYPE_UNIQUE_ID,
                    TLV, V1_MAX_LENGTH, V2_SIGNATURE, IncompleteHeader,
                    ProxyHeader, ProxyProtocolError, SSLInfo, crc32c, parse)
from .mixin import ProxyHeaderStep, ProxyProtocolMixIn, _networks, log  # noqa: F401
from .reader import HeaderTimeout, read_header, read_header_until  # noqa: F401

__all__ = [
    "ProxyProtocolMixIn", "ProxyHeader", "ProxyProtocolError",
    "IncompleteHeader", "TLV", "SSLInfo", "parse", "read_header",
    "V2_SIGNATURE", "V1_MAX_LENGTH",
]
