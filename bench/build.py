"""Compile the C helpers on first use, cached by a hash of source and flags."""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
BUILD_DIR = BENCH_DIR / "_build"
CFLAGS = ["-O2", "-Wall"]
# Sources after the first are compiled into the same program; headers only
# count towards the cache key.
SOURCES = {"loadgen": ["loadgen.c", "loadgen_tls.c"], "echo_ref": ["echo_ref.c"]}
HEADERS = {"loadgen": ["loadgen_tls.h"], "echo_ref": []}
LIBS = {"loadgen": ["-lssl", "-lcrypto", "-lm"], "echo_ref": ["-pthread"]}  # echo_ref --threaded
# The load generator's TLS client (the tls-* workloads) is OpenSSL's.
OPENSSL_PACKAGE = "libssl-dev"


class BuildError(RuntimeError):
    pass


def compiler() -> list[str]:
    cc = shlex.split(os.environ.get("CC", "cc"))
    if not cc or shutil.which(cc[0]) is None:
        raise BuildError(
            f"C compiler {cc[0] if cc else '(empty $CC)'!r} not found: the bench builds its load "
            "generator and reference server with it (install gcc, or set CC)"
        )
    return cc


def require_openssl_headers(cc: list[str]) -> None:
    """Fail, naming the package, when OpenSSL's headers are missing: the
    build would otherwise end in a compiler error about ssl.h."""
    probe = subprocess.run(
        cc + ["-E", "-x", "c", "-o", os.devnull, "-"],
        input="#include <openssl/ssl.h>\n",
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        raise BuildError(
            "the load generator links OpenSSL for the TLS workloads (tls-pingpong, tls-perconn), and "
            f"<openssl/ssl.h> is missing: install the Debian package {OPENSSL_PACKAGE} "
            f"(apt-get install {OPENSSL_PACKAGE})"
        )


def binary(name: str) -> Path:
    """Path to the compiled helper ``name`` (loadgen or echo_ref), building it if needed."""
    sources = [BENCH_DIR / s for s in SOURCES[name]]
    cc = compiler()
    command_tail = CFLAGS + [str(s) for s in sources] + LIBS[name]
    digest = hashlib.sha1()
    for path in sources + [BENCH_DIR / h for h in HEADERS[name]]:
        digest.update(path.read_bytes())
    digest.update(" ".join(cc + command_tail).encode())
    target = BUILD_DIR / f"{name}-{digest.hexdigest()[:12]}"
    if target.exists():
        return target
    if "-lssl" in LIBS[name]:
        require_openssl_headers(cc)
    BUILD_DIR.mkdir(exist_ok=True)
    # Build beside the target and rename, so concurrent runs never see half a binary.
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    command = cc + ["-o", str(tmp)] + command_tail
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"building {name} failed:\n$ {shlex.join(command)}\n{proc.stdout}{proc.stderr}")
    os.replace(tmp, target)
    for stale in BUILD_DIR.glob(f"{name}-*"):
        if stale != target and not stale.name.endswith(".tmp"):
            stale.unlink(missing_ok=True)
    return target
