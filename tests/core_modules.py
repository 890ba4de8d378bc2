"""The core modules themselves, for tests that drive the core interface
directly rather than through a server: ``core`` is fastserver._core (when
built) and fastserver._pure, both imported in this one process."""

from __future__ import annotations

import os
import socket
import threading
from types import ModuleType
from typing import Any, List, Optional

import pytest

import fastserver._pure as pure


def _cython_core() -> Optional[ModuleType]:
    try:
        import fastserver._core as cython_core
    except ImportError:
        if os.environ.get("FASTSERVER_REQUIRE_CYTHON"):
            raise
        return None
    return cython_core


cython = _cython_core()

CORES: List[Any] = [pytest.param(pure, id="python")]
if cython is not None:
    CORES.insert(0, pytest.param(cython, id="cython", marks=pytest.mark.cython))


@pytest.fixture(params=CORES)
def core(request: pytest.FixtureRequest) -> ModuleType:
    return request.param  # type: ignore[no-any-return]


class LoopServer:
    """What a ServeLoop calls on its server (_contract.Server), over a real
    listening socket: each request is accepted and closed."""

    _fs_buffered = None

    def _fs_open_lobby(self) -> None:
        return None

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.handled = threading.Event()
        self.actions = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def _handle_request_noblock(self) -> None:
        conn, _ = self.sock.accept()
        conn.close()
        self.handled.set()

    def service_actions(self) -> None:
        self.actions += 1
