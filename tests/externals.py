"""Programs from outside Python that some tests need, and what to do when
one is missing.

A test that needs one calls ``require_program()`` (or one of the named
helpers below) and gets its path. When the program is missing, the test is
skipped with a message naming the Debian package that provides it, so that
a contributor's ``pytest`` explains itself instead of failing. With
``FASTSERVER_REQUIRE_EXTERNALS=1`` (set by ``.ci/run``) a missing program
fails the test instead: CI must not go green by skipping.
"""

from __future__ import annotations

import os
import shlex
import shutil
from typing import Sequence

import pytest

#: The environment variable that turns "skip" into "fail".
REQUIRE_VARIABLE = "FASTSERVER_REQUIRE_EXTERNALS"

# Daemons live in sbin, which a normal user's PATH may leave out.
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def externals_required() -> bool:
    return os.environ.get(REQUIRE_VARIABLE, "") not in ("", "0")


def missing(what: str, package: str) -> None:
    """Skip (or, under FASTSERVER_REQUIRE_EXTERNALS=1, fail) the test:
    what is not available; package provides it."""
    message = ("%s is not installed: install the Debian package %r "
               "(apt-get install %s)" % (what, package, package))
    if externals_required():
        pytest.fail(message + "; %s=1 requires it" % REQUIRE_VARIABLE,
                    pytrace=False)
    pytest.skip(message)


def find_program(name: str, extra_dirs: Sequence[str] = _SBIN) -> "str | None":
    found = shutil.which(name)
    if found:
        return found
    for directory in extra_dirs:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def require_program(name: str, package: str) -> str:
    """The path of program name; skips or fails the test without it."""
    found = find_program(name)
    if found is None:
        missing(name, package)
    assert found is not None
    return found


def require_haproxy() -> str:
    return require_program("haproxy", "haproxy")


def require_socket_activate() -> str:
    return require_program("systemd-socket-activate", "systemd")


def require_openssl() -> str:
    return require_program("openssl", "openssl")


def require_c_compiler() -> str:
    """$CC (default cc), as bench/ builds its load generator with it."""
    command = shlex.split(os.environ.get("CC", "cc")) or ["cc"]
    found = find_program(command[0], ())
    if found is None:
        missing("a C compiler (%s)" % command[0], "gcc")
    assert found is not None
    return found
