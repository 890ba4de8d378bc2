"""Every test runs on each fastserver backend; comparisons add the stdlib.

Fixtures:

- ``impl``: the fastserver backends available here, ``cython`` (when the
  extension is built) and ``python``. Tests of fastserver-only behaviour use it.
- ``ref_impl``: the same plus ``stdlib`` (socketserver itself). Tests of
  behaviour that socketserver defines use it, so the reference is checked by
  the very same assertions.

Each Impl carries ``ss``, a socketserver-compatible module, and for the
fastserver backends ``core``, the core module. Both backends are the one
``fastserver`` package: for the duration of a test the ``impl`` fixture pins
``fastserver.BaseServer.backend`` to the backend's name, so every server the
test builds (and every handler it serves) runs on that core, side by side in
one process. When the process default is pure (FASTSERVER_NO_EXTENSIONS=1,
or no extension built) only ``python`` runs; set FASTSERVER_REQUIRE_CYTHON=1
(CI does) to fail instead of quietly running without the cython backend.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import tempfile
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

import fastserver
from fastserver import _compat


@dataclass(frozen=True)
class Impl:
    name: str
    ss: ModuleType

    def __str__(self) -> str:
        return self.name

    @property
    def is_stdlib(self) -> bool:
        return self.name == "stdlib"

    @property
    def core(self) -> ModuleType:
        """The core module of a fastserver backend."""
        return _compat.load_core(self.name)


def _fastserver_impls() -> List[Any]:
    impls: List[Any] = []
    if fastserver.backend == "cython":
        impls.append(pytest.param(Impl("cython", fastserver), id="cython",
                                  marks=pytest.mark.cython))
    elif os.environ.get("FASTSERVER_REQUIRE_CYTHON") and \
            not os.environ.get("FASTSERVER_NO_EXTENSIONS"):
        raise RuntimeError("FASTSERVER_REQUIRE_CYTHON is set but the "
                           "cython backend is not importable")
    impls.append(pytest.param(Impl("python", fastserver), id="python"))
    return impls


FASTSERVER_IMPLS = _fastserver_impls()
STDLIB_IMPL = pytest.param(Impl("stdlib", socketserver), id="stdlib")


@contextlib.contextmanager
def pinned_backend(name: Optional[str]) -> Iterator[None]:
    """Every fastserver server built in the block runs on the named core.

    The process default is left unpinned (None), so that tests on it also
    go through the default choice.
    """
    saved = fastserver.BaseServer.backend
    fastserver.BaseServer.backend = None if name == fastserver.backend else name
    try:
        yield
    finally:
        fastserver.BaseServer.backend = saved


@pytest.fixture(params=FASTSERVER_IMPLS)
def impl(request: pytest.FixtureRequest) -> Iterator[Impl]:
    with pinned_backend(request.param.name):
        yield request.param


@pytest.fixture(params=FASTSERVER_IMPLS + [STDLIB_IMPL])
def ref_impl(request: pytest.FixtureRequest) -> Iterator[Impl]:
    name = None if request.param.is_stdlib else request.param.name
    with pinned_backend(name):
        yield request.param


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cython: runs on the cython backend")


# --- helpers shared by the tests -------------------------------------------

HOST = "127.0.0.1"


def unix_path() -> str:
    """A fresh path for an AF_UNIX socket (short: sun_path is small)."""
    fd, path = tempfile.mkstemp(prefix="fs.", suffix=".sock", dir="/tmp")
    os.close(fd)
    os.unlink(path)
    return path


def server_address(family: int) -> Any:
    return unix_path() if family == socket.AF_UNIX else (HOST, 0)


@contextlib.contextmanager
def serving(server: Any, poll_interval: float = 0.05) -> Iterator[Any]:
    """Run server.serve_forever() in a thread for the duration of the block,
    then shut it down and close it."""
    thread = threading.Thread(target=server.serve_forever,
                              kwargs={"poll_interval": poll_interval},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
        if isinstance(server.server_address, str):
            with contextlib.suppress(OSError):
                os.unlink(server.server_address)
    assert not thread.is_alive(), "serve_forever did not return"


def connect(server: Any, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(server.address_family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(server.server_address)
    return sock


def recv_until(sock: socket.socket, terminator: bytes = b"\n",
               limit: int = 1 << 24) -> bytes:
    data = b""
    while not data.endswith(terminator) and len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def dgram_client(server: Any, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(server.address_family, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    # Bound up front so that getsockname() is the address the server sees
    # (and, for AF_UNIX, so that the server can reply at all).
    sock.bind(unix_path() if server.address_family == socket.AF_UNIX else (HOST, 0))
    return sock


def close_dgram_client(sock: socket.socket) -> None:
    name = sock.getsockname() if sock.family == socket.AF_UNIX else None
    sock.close()
    if name:
        with contextlib.suppress(OSError):
            os.unlink(name)


# --- helpers appended for the subprocess, forking and datagram tests --------

#: The checkout root: the directory that holds the ``fastserver`` package.
CHECKOUT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastserver.__file__)))


def backend_env(backend: str) -> "dict[str, str]":
    """The environment for a subprocess that must import fastserver from
    this checkout with the named backend ("cython" or "python")."""
    if backend not in ("cython", "python"):
        raise ValueError("not a fastserver backend: %r" % (backend,))
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = CHECKOUT_ROOT + (os.pathsep + path if path else "")
    if backend == "python":
        env["FASTSERVER_NO_EXTENSIONS"] = "1"
    else:
        env.pop("FASTSERVER_NO_EXTENSIONS", None)
    return env


@contextlib.contextmanager
def closing_server(server: Any) -> Iterator[Any]:
    """server_close() the server at the end of the block (and unlink its
    AF_UNIX path), for tests that drive handle_request() themselves."""
    try:
        yield server
    finally:
        server.server_close()
        if isinstance(server.server_address, str):
            with contextlib.suppress(OSError):
                os.unlink(server.server_address)


#: A connected pair of stream sockets, (server side, client side).
Pair = Callable[[], Tuple[socket.socket, socket.socket]]


@pytest.fixture(scope="module")
def tls_pairs(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    from tlscerts import TLSPairs   # needs the openssl command: only when used
    return TLSPairs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["socketpair", "tls"])
def make_pair(request: pytest.FixtureRequest) -> Pair:
    """Makes (server side, client side) pairs: socket.socketpair(), or an
    SSLSocket over each end of one, handshake done."""
    if request.param == "tls":
        return request.getfixturevalue("tls_pairs")  # type: ignore[no-any-return]
    return socket.socketpair
