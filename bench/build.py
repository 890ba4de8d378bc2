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
LIBS = {"loadgen": ["-lm"], "echo_ref": []}


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


def binary(name: str) -> Path:
    """Path to the compiled helper ``name`` (loadgen or echo_ref), building it if needed."""
    source = BENCH_DIR / f"{name}.c"
    cc = compiler()
    command_tail = CFLAGS + [str(source)] + LIBS[name]
    digest = hashlib.sha1()
    digest.update(source.read_bytes())
    digest.update(" ".join(cc + command_tail).encode())
    target = BUILD_DIR / f"{name}-{digest.hexdigest()[:12]}"
    if target.exists():
        return target
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
