"""The ``fastserver run`` TLS options: ``--certfile``, ``--keyfile``,
``--cafile``, ``--verify-client`` and ``--tls-handshake-timeout``.

They become two class attributes of the server class (``ssl_context``,
built by fastserver.tls_files, and ``tls_handshake_timeout``); on SIGHUP
the supervisor's ``before_reload`` hook (:func:`tls_reloader`) builds the
context again from the same files before it forks the new workers.
"""

from __future__ import annotations

import argparse
import logging
import socket
from typing import Any, Callable, Dict, Optional

from . import tls_files
from ._cli_loading import SetupError, UsageError, positive_float

__all__ = ["add_tls_arguments", "tls_attributes", "tls_context", "tls_reloader"]

tls_log = logging.getLogger("fastserver.tls")


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group(
        "TLS",
        "serve TLS on a stream server (the handshake runs in each "
        "connection's preamble, off the accept loop); SIGHUP re-reads the "
        "files")
    tls.add_argument(
        "--certfile", metavar="PEM", default=None,
        help="the server's certificate, then any intermediates (PEM); it "
             "may hold the private key too")
    tls.add_argument(
        "--keyfile", metavar="PEM", default=None,
        help="the certificate's private key (PEM, unencrypted: a server "
             "cannot ask for a passphrase)")
    tls.add_argument(
        "--cafile", metavar="PEM", default=None,
        help="the CA certificates that client certificates must chain to "
             "(with --verify-client)")
    tls.add_argument(
        "--verify-client", choices=tuple(tls_files.VERIFY_CLIENT_MODES),
        default=None,
        help="ask clients for a certificate: none (default), optional "
             "(checked when sent) or required (no certificate, no "
             "connection); optional and required need --cafile")
    tls.add_argument(
        "--tls-handshake-timeout", metavar="S", type=_timeout_or_none,
        default=argparse.SUPPRESS,
        help="seconds the whole handshake may take, however slowly the "
             "bytes arrive (default 10; 'none' for no deadline)")


def _timeout_or_none(text: str) -> Optional[float]:
    if text.strip().lower() == "none":
        return None
    return positive_float(text)


_NOT_GIVEN: Any = object()


def tls_attributes(args: argparse.Namespace, base: type) -> Dict[str, Any]:
    """ssl_context and tls_handshake_timeout for the TLS options; checks
    the options first (usage errors), then reads the files (setup errors)."""
    certfile = getattr(args, "certfile", None)
    verify = getattr(args, "verify_client", None)
    timeout = vars(args).get("tls_handshake_timeout", _NOT_GIVEN)
    if certfile is None:
        for option, value in (("--keyfile", getattr(args, "keyfile", None)),
                              ("--cafile", getattr(args, "cafile", None)),
                              ("--verify-client", verify)):
            if value is not None:
                raise UsageError("%s needs --certfile" % option)
        if timeout is _NOT_GIVEN:
            return {}
        if getattr(base, "ssl_context", None) is None:
            # Meaningful only for a --server class that brings its own.
            raise UsageError("--tls-handshake-timeout needs --certfile")
        return {"tls_handshake_timeout": timeout}
    if getattr(base, "socket_type", socket.SOCK_STREAM) != socket.SOCK_STREAM:
        raise UsageError("--certfile needs a stream server, not %s (Python's "
                         "ssl module has no DTLS)" % base.__name__)
    if verify not in (None, "none") and args.cafile is None:
        raise UsageError("--verify-client %s needs --cafile (the CAs that "
                         "client certificates must chain to)" % verify)
    if args.cafile is not None and verify in (None, "none"):
        raise UsageError("--cafile is only used to check client certificates: "
                         "add --verify-client optional or required")
    attrs: Dict[str, Any] = {"ssl_context": tls_context(args)}
    if timeout is not _NOT_GIVEN:
        attrs["tls_handshake_timeout"] = timeout
    return attrs


def tls_context(args: argparse.Namespace) -> Any:
    """The ssl.SSLContext that --certfile and its companions describe; a
    SetupError naming the file at fault."""
    try:
        return tls_files.server_context(args.certfile, args.keyfile,
                                        args.cafile, args.verify_client or "none")
    except tls_files.TLSFileError as exc:
        raise SetupError("--%s %s: %s" % (exc.role, exc.path, exc.problem)) from None


def tls_reloader(args: argparse.Namespace) -> Callable[[Any], None]:
    """The Supervisor's before_reload for --certfile: on SIGHUP, read the
    files again and give the server the new context, which the new workers
    are forked with. A file that cannot be used (half-written by a renewal
    in progress, a key that no longer matches) is logged in one line, and
    the server keeps the context it has."""

    def reload(server: Any) -> None:
        try:
            context = tls_context(args)
        except SetupError as exc:
            tls_log.error("SIGHUP: %s; still serving the certificate loaded "
                          "before", exc)
            return
        server.ssl_context = context
        tls_log.info("SIGHUP: reloaded %s",
                     tls_files.describe_paths(args.certfile, args.keyfile))

    return reload
