"""The public surface matches socketserver's: names, hierarchy, class
variables, signatures; plus fastserver's backend selection."""

from __future__ import annotations

import inspect
import os
import socketserver
import subprocess
import sys

import pytest

from conftest import Impl

# CPython 3.13's socketserver.__all__; older interpreters lack the last two.
STDLIB_313_ALL = [
    "BaseServer", "TCPServer", "UDPServer", "ThreadingUDPServer",
    "ThreadingTCPServer", "BaseRequestHandler", "StreamRequestHandler",
    "DatagramRequestHandler", "ThreadingMixIn", "ForkingUDPServer",
    "ForkingTCPServer", "ForkingMixIn", "UnixStreamServer",
    "UnixDatagramServer", "ThreadingUnixStreamServer",
    "ThreadingUnixDatagramServer", "ForkingUnixStreamServer",
    "ForkingUnixDatagramServer",
]

CLASS_VARIABLES = {
    "BaseServer": ["timeout"],
    "TCPServer": ["address_family", "socket_type", "request_queue_size",
                  "allow_reuse_address", "allow_reuse_port", "timeout"],
    "UDPServer": ["address_family", "socket_type", "allow_reuse_address",
                  "allow_reuse_port", "max_packet_size"],
    "UnixStreamServer": ["address_family", "socket_type"],
    "UnixDatagramServer": ["address_family", "socket_type", "max_packet_size"],
    "ThreadingMixIn": ["daemon_threads", "block_on_close"],
    "ForkingMixIn": ["timeout", "max_children", "block_on_close",
                     "active_children"],
    "StreamRequestHandler": ["rbufsize", "wbufsize", "timeout",
                             "disable_nagle_algorithm"],
}


# fastserver's additions to socketserver's names.
FASTSERVER_ADDITIONS = [
    "ThreadPoolMixIn", "ThreadPoolTCPServer", "ThreadPoolUDPServer",
    "ThreadPoolUnixStreamServer", "ProxyProtocolMixIn",
]


def test_all_names(impl: Impl) -> None:
    assert sorted(impl.ss.__all__) == sorted(STDLIB_313_ALL + FASTSERVER_ADDITIONS)
    for name in impl.ss.__all__:
        obj = getattr(impl.ss, name)
        assert obj.__module__ == impl.ss.__name__, name


def test_every_stdlib_name_exists(impl: Impl) -> None:
    assert set(socketserver.__all__) <= set(impl.ss.__all__)


@pytest.mark.parametrize("name", [n for n in STDLIB_313_ALL
                                  if hasattr(socketserver, n)])
def test_hierarchy_matches_stdlib(impl: Impl, name: str) -> None:
    ours = [c.__name__ for c in getattr(impl.ss, name).__mro__]
    theirs = [c.__name__ for c in getattr(socketserver, name).__mro__]
    assert ours == theirs


@pytest.mark.parametrize("name", sorted(CLASS_VARIABLES))
def test_class_variables_match_stdlib(impl: Impl, name: str) -> None:
    ours, theirs = getattr(impl.ss, name), getattr(socketserver, name)
    for var in CLASS_VARIABLES[name]:
        if not hasattr(theirs, var):
            # allow_reuse_port is 3.11+; we offer 3.13's API everywhere.
            assert var == "allow_reuse_port" and getattr(ours, var) is False
            continue
        if (name, var) == ("StreamRequestHandler", "disable_nagle_algorithm"):
            # A deliberate difference (tests/test_discrepancies.py): None,
            # TCP_NODELAY by default; as falsy as socketserver's False.
            assert getattr(ours, var) is None and getattr(theirs, var) is False
            continue
        assert getattr(ours, var) == getattr(theirs, var), (name, var)


@pytest.mark.parametrize("name", ["BaseServer", "TCPServer", "UDPServer",
                                  "ThreadingTCPServer", "UnixStreamServer",
                                  "BaseRequestHandler", "StreamRequestHandler",
                                  "DatagramRequestHandler"])
def test_constructor_signatures_match_stdlib(impl: Impl, name: str) -> None:
    def params(cls: type) -> list:
        sig = inspect.signature(cls.__init__)
        return [(p.name, p.kind, p.default) for p in sig.parameters.values()]

    assert params(getattr(impl.ss, name)) == params(getattr(socketserver, name))


@pytest.mark.parametrize("method", [
    "serve_forever", "shutdown", "handle_request", "server_bind",
    "server_activate", "get_request", "verify_request", "process_request",
    "finish_request", "handle_error", "handle_timeout", "service_actions",
    "shutdown_request", "close_request", "server_close", "fileno"])
def test_method_signatures_match_stdlib(impl: Impl, method: str) -> None:
    ours = inspect.signature(getattr(impl.ss.TCPServer, method))
    theirs = inspect.signature(getattr(socketserver.TCPServer, method))
    assert [p.name for p in ours.parameters.values()] == \
        [p.name for p in theirs.parameters.values()]


def test_mixins_compose_like_stdlib(impl: Impl) -> None:
    class Server(impl.ss.ThreadingMixIn, impl.ss.TCPServer):  # type: ignore[name-defined,misc]
        pass

    with Server(("127.0.0.1", 0), impl.ss.StreamRequestHandler) as server:
        assert isinstance(server, impl.ss.ThreadingMixIn)
        assert isinstance(server, impl.ss.TCPServer)
        assert isinstance(server, impl.ss.BaseServer)
        assert server.fileno() == server.socket.fileno()
    assert server.socket.fileno() == -1


def test_backend_names_the_core(impl: Impl) -> None:
    with impl.ss.TCPServer(("127.0.0.1", 0), impl.ss.StreamRequestHandler) as server:
        assert server.backend == impl.name


def _backend_in_subprocess(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("FASTSERVER_NO_EXTENSIONS", None)
    if env_value is not None:
        env["FASTSERVER_NO_EXTENSIONS"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", "import fastserver; print(fastserver.backend)"],
        env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_env_var_forces_pure() -> None:
    assert _backend_in_subprocess("1") == "python"


def test_env_var_zero_or_unset_keeps_default() -> None:
    import fastserver
    default = _backend_in_subprocess(None)
    assert _backend_in_subprocess("0") == default
    if os.environ.get("FASTSERVER_NO_EXTENSIONS", "") in ("", "0"):
        assert default == fastserver.backend
