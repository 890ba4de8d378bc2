"""The TLS workloads' server certificate, made at run time with the openssl command.

Self-signed, for 127.0.0.1, with an ECDSA P-256 key: a server's handshake
then costs a P-256 signature rather than an RSA-2048 one (several times
dearer), so the rows show more of the server around the handshake and less
of one big-number operation that every impl pays alike. The load generator
does not verify it.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .build import BuildError

OPENSSL_PACKAGE = "openssl"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """(certfile, keyfile), written into ``directory``; raises BuildError,
    naming the package, when the openssl command is missing or fails."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BuildError(
            "the TLS workloads make their server certificate with the openssl command, which is not "
            f"installed: install the Debian package {OPENSSL_PACKAGE} (apt-get install {OPENSSL_PACKAGE})"
        )
    cert, key = directory / "bench-cert.pem", directory / "bench-key.pem"
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise BuildError(f"openssl could not make the bench certificate:\n{proc.stderr.strip()}")
    return cert, key
