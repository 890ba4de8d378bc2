"""Certificates for the TLS tests, made with the ``openssl`` command.

Everything is generated into a directory the test owns (``tmp_path``);
nothing is downloaded. Without ``openssl`` the test is skipped naming the
Debian package (or fails under FASTSERVER_REQUIRE_EXTERNALS=1), through
tests/externals.py.

The API, all returning file paths (str, ready for ``ssl``)::

    ca = make_ca(tmp_path)                           # a CA: ca.cert, ca.key
    server = make_cert(tmp_path, ca, "server")       # a leaf signed by ca
    client = make_cert(tmp_path, ca, "client")       # usable as a client cert
    alone = make_self_signed(tmp_path, "alone")      # its own trust anchor
    locked = encrypt_key(tmp_path, server.key, "pw") # a passphrase-protected copy

    client_context(ca.cert)      # a verifying client SSLContext trusting ca
    server_context(server)       # a plain server SSLContext for that leaf
    der(server.cert)             # the DER bytes, as getpeercert(True) gives them
    TLSPairs(tmp_path)()         # (server side, client side): a socketpair, TLS

Leaves name ``IP:127.0.0.1`` and ``DNS:localhost`` unless told otherwise,
carry serverAuth and clientAuth, and have explicit key identifiers, so they
verify under the strict X.509 checks of newer Pythons too. Each call writes
its own config file, so the system's openssl.cnf plays no part.
"""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

from externals import require_openssl

PathLike = Union[str, "os.PathLike[str]"]

#: What a leaf certificate names unless told otherwise.
DEFAULT_HOSTS = ("127.0.0.1", "localhost")

_DAYS = "3"  # tests live for seconds; a short life keeps them honest


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its private key, as PEM files."""
    cert: str
    key: str
    serial: int

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.cert))[0]


#: A CA is a certificate and key like any other; the name says its use.
CA = CertFiles


def _newkey_args(key_type: str) -> "list[str]":
    if key_type == "ec":
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    if key_type == "rsa":
        return ["-newkey", "rsa:2048"]
    raise ValueError("key_type must be 'ec' or 'rsa', not %r" % (key_type,))


def _san(hosts: Sequence[str]) -> str:
    entries = []
    for host in hosts:
        is_ip = host.replace(".", "").isdigit() or ":" in host
        entries.append(("IP:" if is_ip else "DNS:") + host)
    return ",".join(entries)


def _config(path: str, common_name: str, hosts: Sequence[str]) -> str:
    san = "subjectAltName = %s\n" % _san(hosts) if hosts else ""
    text = (
        "[req]\n"
        "distinguished_name = dn\n"
        "prompt = no\n"
        "[dn]\n"
        "CN = %s\n"
        "[ca_ext]\n"
        "basicConstraints = critical,CA:TRUE\n"
        "keyUsage = critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier = hash\n"
        "[leaf_ext]\n"
        "basicConstraints = critical,CA:FALSE\n"
        "keyUsage = critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage = serverAuth,clientAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid,issuer\n"
        "%s"
        # A self-signed leaf is its own issuer, so it must be allowed to sign
        # (keyCertSign) to be accepted as a trust anchor.
        "[self_ext]\n"
        "basicConstraints = critical,CA:TRUE\n"
        "keyUsage = critical,digitalSignature,keyEncipherment,keyCertSign\n"
        "extendedKeyUsage = serverAuth,clientAuth\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
        "%s" % (common_name, san, san))
    with open(path, "w") as f:
        f.write(text)
    return path


def _openssl(*args: str) -> None:
    program = require_openssl()
    done = subprocess.run([program, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=60)
    if done.returncode != 0:
        raise RuntimeError("openssl %s failed:\n%s"
                           % (" ".join(args), done.stdout.decode(errors="replace")))


def _serial(serial: Optional[int]) -> int:
    return serial if serial is not None else secrets.randbits(63) | 1


def _self_signed(directory: PathLike, name: str, hosts: Sequence[str],
                 key_type: str, serial: Optional[int], section: str) -> CertFiles:
    directory = os.fspath(directory)
    cert = os.path.join(directory, name + ".pem")
    key = os.path.join(directory, name + ".key")
    config = _config(os.path.join(directory, name + ".cnf"), name, hosts)
    number = _serial(serial)
    _openssl("req", "-x509", "-config", config, "-extensions", section,
             *_newkey_args(key_type), "-nodes", "-keyout", key, "-out", cert,
             "-days", _DAYS, "-set_serial", str(number))
    return CertFiles(cert, key, number)


def make_ca(directory: PathLike, name: str = "ca", *,
            key_type: str = "ec") -> CertFiles:
    """A self-signed CA: ``name.pem`` and ``name.key`` in directory."""
    return _self_signed(directory, name, (), key_type, None, "ca_ext")


def make_self_signed(directory: PathLike, name: str = "self-signed", *,
                     hosts: Sequence[str] = DEFAULT_HOSTS, key_type: str = "ec",
                     serial: Optional[int] = None) -> CertFiles:
    """A leaf that is its own trust anchor (trust ``.cert`` to accept it)."""
    return _self_signed(directory, name, hosts, key_type, serial, "self_ext")


def make_cert(directory: PathLike, ca: CertFiles, name: str = "server", *,
              hosts: Sequence[str] = DEFAULT_HOSTS, key_type: str = "ec",
              serial: Optional[int] = None) -> CertFiles:
    """A leaf signed by ca: ``name.pem`` and ``name.key`` in directory.

    Usable as a server or a client certificate. Calling it again with the
    same name overwrites the files (a renewal, with a new key and serial).
    """
    directory = os.fspath(directory)
    cert = os.path.join(directory, name + ".pem")
    key = os.path.join(directory, name + ".key")
    csr = os.path.join(directory, name + ".csr")
    config = _config(os.path.join(directory, name + ".cnf"), name, hosts)
    number = _serial(serial)
    _openssl("req", "-new", "-config", config, *_newkey_args(key_type),
             "-nodes", "-keyout", key, "-out", csr)
    _openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
             "-set_serial", str(number), "-days", _DAYS,
             "-extfile", config, "-extensions", "leaf_ext", "-out", cert)
    os.unlink(csr)
    return CertFiles(cert, key, number)


def encrypt_key(directory: PathLike, key: str, password: str,
                name: str = "encrypted") -> str:
    """A passphrase-protected (AES-256) copy of key: ``name.key``."""
    out = os.path.join(os.fspath(directory), name + ".key")
    _openssl("pkey", "-in", key, "-out", out, "-aes256",
             "-passout", "pass:" + password)
    return out


def der(cert: str) -> bytes:
    """The DER form of the (first) certificate in a PEM file: what
    ``SSLSocket.getpeercert(binary_form=True)`` returns for it."""
    with open(cert) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def client_context(cafile: str, cert: Optional[CertFiles] = None) -> ssl.SSLContext:
    """A client context that verifies the server against cafile (hostname
    checks on), presenting cert when given."""
    context = ssl.create_default_context(cafile=cafile)
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context


def server_context(cert: CertFiles, cafile: Optional[str] = None,
                   verify_mode: ssl.VerifyMode = ssl.CERT_NONE) -> ssl.SSLContext:
    """A server context for cert; with cafile, client certificates are
    checked against it with verify_mode."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert.cert, cert.key)
    if cafile is not None:
        context.load_verify_locations(cafile)
        context.verify_mode = verify_mode
    return context


class TLSPairs:
    """Connected pairs of SSLSockets over socket.socketpair(), handshake
    done: the stream tests' transport with TLS in it. The certificate is
    made once, in directory."""

    def __init__(self, directory: PathLike) -> None:
        ca = make_ca(directory, "pairs-ca")
        self.server = server_context(make_cert(directory, ca, "pairs-server"))
        self.client = client_context(ca.cert)

    def __call__(self) -> Tuple[ssl.SSLSocket, ssl.SSLSocket]:
        a, b = socket.socketpair()
        client: "list[ssl.SSLSocket]" = []
        thread = threading.Thread(target=lambda: client.append(
            self.client.wrap_socket(b, server_hostname="localhost")))
        thread.start()
        try:
            server = self.server.wrap_socket(a, server_side=True)
        finally:
            thread.join()
        if not client:
            server.close()
            raise ConnectionError("the client side of the TLS pair failed its handshake")
        return server, client[0]
