"""A server's SSLContext, built from PEM files, with errors that name the file.

``ssl.SSLContext.load_cert_chain()`` reports most problems as
``[SSL] PEM lib``, without saying which file is at fault, and asks for a
passphrase on the terminal when the key is encrypted. A server started by
systemd or a supervisor has no terminal, and a renewal hook needs to know
which file is wrong. :func:`server_context` checks each file on its own
before handing the set to OpenSSL, so that every failure is one
:class:`TLSFileError` naming one file and what is wrong with it:

- a file that is missing, unreadable or a directory;
- a certificate file holding no PEM certificate, or one cut short (a
  half-written renewal);
- a key file holding no private key, or a damaged one;
- an encrypted (passphrase-protected) key: never a prompt;
- a key that does not belong to the certificate;
- a CA file holding no certificate.

The command line (``fastserver run --certfile``) builds its context here,
at start-up and again on each SIGHUP.
"""

from __future__ import annotations

import ssl
from typing import Optional

__all__ = ["TLSFileError", "VERIFY_CLIENT_MODES", "server_context",
           "describe_paths"]

#: ``--verify-client`` values and the verify_mode each sets.
VERIFY_CLIENT_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}

_CERT_MARK = "-----BEGIN CERTIFICATE-----"
# PKCS#8 ("PRIVATE KEY", "ENCRYPTED PRIVATE KEY") and the traditional
# forms ("RSA PRIVATE KEY", "EC PRIVATE KEY") all end their marker so.
_KEY_MARK = "PRIVATE KEY-----"
# How OpenSSL says that a key and a certificate do not belong together:
# KEY_VALUES_MISMATCH, or (OpenSSL 3, where the failed check drops the
# certificate) NO_CERTIFICATE_ASSIGNED.
_MISMATCH_REASONS = ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED")


class TLSFileError(ValueError):
    """One file of a TLS configuration is unusable.

    ``role`` is the parameter that named it (``certfile``, ``keyfile`` or
    ``cafile``), ``path`` the file, ``problem`` what is wrong, in a few
    words. ``str()`` is one line: ``"certfile PATH: PROBLEM"``.
    """

    def __init__(self, role: str, path: str, problem: str) -> None:
        super().__init__("%s %s: %s" % (role, path, problem))
        self.role = role
        self.path = path
        self.problem = problem


class _EncryptedKey(Exception):
    """Raised by the password callback: the key wants a passphrase."""


def _no_passphrase() -> str:
    # OpenSSL calls this only for an encrypted key; raising makes
    # load_cert_chain() fail instead of prompting on the terminal.
    raise _EncryptedKey()


def _read(role: str, path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise TLSFileError(role, path, "cannot read it: %s"
                           % (exc.strerror or exc)) from None
    return data.decode("latin-1")


def _check_certificates(role: str, path: str, text: str) -> None:
    """Every certificate in text parses (OpenSSL's own parser, through a
    scratch context's trust store)."""
    if _CERT_MARK not in text:
        raise TLSFileError(role, path, "no PEM certificate in it (expected "
                           "a %s block)" % _CERT_MARK.strip("-"))
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        scratch.load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError):
        raise TLSFileError(role, path, "a certificate in it is damaged or "
                           "cut short (half-written?)") from None


def server_context(certfile: str, keyfile: Optional[str] = None,
                   cafile: Optional[str] = None,
                   verify_client: str = "none") -> ssl.SSLContext:
    """A TLS server context (PROTOCOL_TLS_SERVER) for certfile and keyfile.

    certfile holds the certificate, then any intermediates; keyfile its
    private key, unencrypted (None: the key is in certfile too). With
    cafile, client certificates are checked against it: ``verify_client``
    is ``"optional"`` (asked for, checked if sent) or ``"required"``;
    ``"none"`` asks for none. Raises :class:`TLSFileError` naming the
    file at fault.
    """
    if verify_client not in VERIFY_CLIENT_MODES:
        raise ValueError("verify_client must be one of %s, not %r"
                         % (", ".join(VERIFY_CLIENT_MODES), verify_client))
    if verify_client != "none" and cafile is None:
        raise ValueError("verify_client=%r needs a cafile" % (verify_client,))
    cert_text = _read("certfile", certfile)
    _check_certificates("certfile", certfile, cert_text)
    key_role, key_path = ("keyfile", keyfile) if keyfile is not None \
        else ("certfile", certfile)
    key_text = _read(key_role, key_path) if keyfile is not None else cert_text
    if _KEY_MARK not in key_text:
        if keyfile is None:
            raise TLSFileError("certfile", certfile, "no private key in it, and no "
                               "keyfile was given")
        raise TLSFileError(key_role, key_path, "no PEM private key in it")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except _EncryptedKey:
        raise TLSFileError(key_role, key_path, "the private key is encrypted "
                           "(passphrase-protected) and a server cannot ask for "
                           "the passphrase: store it decrypted (openssl pkey "
                           "-in KEY -out NEWKEY), readable only by the server's "
                           "user") from None
    except ssl.SSLError as exc:
        if exc.reason in _MISMATCH_REASONS or "mismatch" in str(exc).lower():
            problem = "the private key does not match the certificate in %s" \
                % certfile if keyfile is not None else \
                "the private key in it does not match its certificate"
            raise TLSFileError(key_role, key_path, problem) from None
        raise TLSFileError(key_role, key_path, "the private key in it is "
                           "damaged or cut short (half-written?)") from None
    except OSError as exc:
        # The file changed between the checks above and OpenSSL's reading.
        raise TLSFileError(key_role, key_path, "cannot read it: %s"
                           % (exc.strerror or exc)) from None
    if cafile is not None:
        ca_text = _read("cafile", cafile)
        _check_certificates("cafile", cafile, ca_text)
        try:
            context.load_verify_locations(cafile=cafile)
        except (ssl.SSLError, OSError):
            raise TLSFileError("cafile", cafile, "OpenSSL cannot load the "
                               "certificates in it") from None
        context.verify_mode = VERIFY_CLIENT_MODES[verify_client]
    return context


def describe_paths(certfile: str, keyfile: Optional[str]) -> str:
    """The files a context came from, for a log line."""
    return certfile if keyfile is None else "%s and %s" % (certfile, keyfile)
