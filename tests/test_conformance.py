"""The interpreter's own test suites pass with fastserver as socketserver.

Each test runs ``tests/cpython_suite.py MODULE`` in a fresh interpreter with
one backend: the current interpreter for every backend of the ``impl``
fixture, and the other pyenv interpreters (3.9, 3.13) for test_socketserver
when they are installed. Those interpreters import fastserver from this
checkout; they run the python backend, and the cython one only when an
extension built for that version sits in the package.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import sys
from typing import Any, List, Optional

import pytest

from conftest import CHECKOUT_ROOT, Impl, backend_env

pytestmark = pytest.mark.conformance

SUITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpython_suite.py")

# module -> subprocess timeout in seconds: a guard against a hang only (these
# normally take ~1 s, except test_xmlrpc ~30 s and test_logging ~20 s).
MODULES = {
    "test_socketserver": 300,
    "test_httpservers": 300,
    "test_xmlrpc": 600,
    "test_wsgiref": 300,
    "test_logging": 600,
}

OTHER_VERSIONS = ("3.9", "3.13")


@functools.lru_cache(maxsize=None)
def ships_test_package(python: str) -> bool:
    """False only when ``import test.test_socketserver`` raises ImportError."""
    code = ("try:\n import test.test_socketserver\n"
            "except ImportError:\n raise SystemExit(3)\n")
    proc = subprocess.run([python, "-c", code], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode == 3:
        return False
    assert proc.returncode == 0, proc.stderr
    return True


def run_suite(python: str, backend: str, module: str) -> None:
    if not ships_test_package(python):
        pytest.skip("%s ships no test package" % (python,))
    proc = subprocess.run([python, SUITE, module], env=backend_env(backend),
                          cwd=CHECKOUT_ROOT, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=MODULES[module])
    out = proc.stdout
    tail = out[-6000:]
    first = out.splitlines()[0] if out else ""
    assert first.startswith("socketserver -> "), tail
    assert first.endswith("backend: " + backend), first
    assert proc.returncode == 0, tail
    ran = re.findall(r"^Ran (\d+) tests? in ", out, re.MULTILINE)
    assert ran and int(ran[-1]) > 0, tail
    assert re.search(r"^OK( \(.*\))?$", out, re.MULTILINE), tail


@pytest.mark.parametrize("module", list(MODULES))
def test_cpython_suite(impl: Impl, module: str) -> None:
    run_suite(sys.executable, impl.name, module)


def _pyenv_root() -> Optional[str]:
    pyenv = shutil.which("pyenv")
    if pyenv is not None:
        try:
            proc = subprocess.run([pyenv, "root"], capture_output=True,
                                  text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            proc = None
        if proc is not None and proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip()
    return os.environ.get("PYENV_ROOT")


def _other_interpreters() -> List[Any]:
    root = _pyenv_root()
    if not root:
        return []
    params: List[Any] = []
    package = os.path.join(CHECKOUT_ROOT, "fastserver")
    for version in OTHER_VERSIONS:
        found = sorted(glob.glob(os.path.join(root, "versions", version + ".*",
                                              "bin", "python3")))
        if not found:
            continue
        python = found[-1]
        tag = version.replace(".", "")
        backends = ["python"]
        if glob.glob(os.path.join(package, "_core.cpython-%s*" % tag)):
            backends.insert(0, "cython")
        for backend in backends:
            params.append(pytest.param(python, backend,
                                       id="py%s-%s" % (version, backend)))
    return params


@pytest.mark.parametrize("python,backend", _other_interpreters())
def test_socketserver_suite_other_interpreters(python: str, backend: str) -> None:
    run_suite(python, backend, "test_socketserver")
