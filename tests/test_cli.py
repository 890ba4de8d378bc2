"""``python -m fastserver run``: every option has an observable effect."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict

import pytest

from conftest import Impl, backend_env, unix_path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))

from supervised import SCRIPTS, Supervised, connect, recv_line, roundtrip  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process inspection through /proc")

TCP = ["--bind", "127.0.0.1:0"]


def info(family: int, address: Any) -> Dict[str, Any]:
    return json.loads(roundtrip(family, address, b"?\n"))  # type: ignore[no-any-return]


def stop(sup: Supervised) -> None:
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(15) == 0, sup.log


def run_command(args: Any, impl: Impl) -> "subprocess.CompletedProcess[str]":
    env = backend_env(impl.name)
    env["PYTHONPATH"] = SCRIPTS + os.pathsep + env["PYTHONPATH"]
    return subprocess.run([sys.executable, "-m", "fastserver"] + list(args),
                          env=env, cwd=SCRIPTS, capture_output=True,
                          text=True, timeout=30)


def test_help(impl: Impl) -> None:
    top = run_command(["--help"], impl)
    assert top.returncode == 0 and "run" in top.stdout
    run = run_command(["run", "--help"], impl)
    assert run.returncode == 0
    for option in ("--server", "--udp", "--bind", "--workers", "--threads",
                   "--graceful-timeout", "--log-level", "MODULE:HANDLER"):
        assert option in run.stdout


@pytest.mark.parametrize("args,message", [
    (["run", "prefork_app:Nope"] + TCP, "Nope"),
    (["run", "no_such_module:Echo"] + TCP, "no_such_module"),
    (["run", "prefork_app:Echo", "--server", "NotAServer"] + TCP, "NotAServer"),
    (["run", "prefork_app:Echo", "--udp", "--server", "ThreadingTCPServer"] + TCP,
     "--udp"),
    (["run", "prefork_app:Echo", "--threads", "2", "--server",
      "ForkingTCPServer"] + TCP, "--threads"),
    (["run", "prefork_app:Echo", "--workers", "0"] + TCP, "--workers"),
    (["run", "prefork_app:Echo", "--bind", "nowhere"], "port"),
])
def test_bad_arguments(impl: Impl, args: Any, message: str) -> None:
    result = run_command(args, impl)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_defaults_and_workers(impl: Impl) -> None:
    with Supervised.command(["prefork_app:Info", "--workers", "3"] + TCP,
                            backend_env(impl.name)) as sup:
        family, address = sup.address()
        assert len(sup.wait_workers(3)) == 3
        described = info(family, address)
        assert described["server"] == "ThreadingTCPServer"
        assert described["pid"] in sup.children()
        assert described["backend"] == impl.name
        stop(sup)


def test_threads_uses_the_thread_pool(impl: Impl) -> None:
    with Supervised.command(["prefork_app:Info", "--workers", "1",
                             "--threads", "4"] + TCP,
                            backend_env(impl.name)) as sup:
        family, address = sup.address()
        described = info(family, address)
        assert described["server"] == "ThreadPoolTCPServer"
        assert "ThreadPoolMixIn" in described["mro"]
        assert "ThreadingMixIn" not in described["mro"]
        assert described["max_workers"] == 4
        assert described["thread"] == "fastserver-pool"
        stop(sup)


def test_server_option(impl: Impl) -> None:
    with Supervised.command(["prefork_app:Info", "--workers", "1",
                             "--server", "TCPServer"] + TCP,
                            backend_env(impl.name)) as sup:
        family, address = sup.address()
        described = info(family, address)
        assert described["server"] == "TCPServer"
        assert described["thread"] == "fastserver-serve"  # served inline
        stop(sup)


def test_bind_unix_path(impl: Impl) -> None:
    path = unix_path()
    with Supervised.command(["prefork_app:Echo", "--workers", "2",
                             "--bind", "unix:" + path],
                            backend_env(impl.name)) as sup:
        family, address = sup.address()
        assert (family, address) == (socket.AF_UNIX, path)
        assert os.path.exists(path)
        assert roundtrip(family, address) == b"hello\n"
        assert "ThreadingUnixStreamServer" in sup.log
        stop(sup)
    assert not os.path.exists(path)


def test_udp(impl: Impl) -> None:
    with Supervised.command(["prefork_app:UDPEcho", "--workers", "2", "--udp"]
                            + TCP, backend_env(impl.name)) as sup:
        family, address = sup.address()
        assert "ThreadingUDPServer" in sup.log
        with socket.socket(family, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"ping", address)
            data, _ = client.recvfrom(100)
        pid = int(data.split()[1])
        assert data.startswith(b"ping ") and pid in sup.children()
        stop(sup)


@pytest.mark.parametrize("graceful", [0.5, 10.0])
def test_graceful_timeout_bounds_the_drain(impl: Impl, graceful: float) -> None:
    with Supervised.command(["prefork_app:Sleep", "--workers", "1",
                             "--graceful-timeout", str(graceful)] + TCP,
                            backend_env(impl.name)) as sup:
        family, address = sup.address()
        with connect(family, address) as client:
            client.sendall(b"1.5\n")
            assert recv_line(client) == b"started\n"
            started = time.monotonic()
            sup.send_signal(signal.SIGTERM)
            assert sup.wait(20) == 0
            elapsed = time.monotonic() - started
            if graceful < 1.5:
                # Cut at the deadline, well before the handler's 1.5 s.
                assert elapsed < 1.4, elapsed
                assert "graceful timeout" in sup.log
            else:
                assert recv_line(client) == b"done\n"
                assert elapsed >= 1.3
                assert "graceful timeout" not in sup.log


@pytest.mark.parametrize("level", ["warning", "debug"])
def test_log_level(impl: Impl, level: str) -> None:
    with Supervised.command(["prefork_app:Echo", "--workers", "1",
                             "--log-level", level] + TCP,
                            backend_env(impl.name)) as sup:
        if level == "debug":
            family, address = sup.address()
            sup.wait_for(r"DEBUG fastserver\.cli: server class ThreadingTCPServer")
        else:
            # The address is not logged at warning level: find the socket.
            pid = sup.wait_workers(1)[0]
            family, address = socket.AF_INET, ("127.0.0.1", listening_port(pid))
        assert roundtrip(family, address) == b"hello\n"
        stop(sup)
        log = sup.log
    if level == "warning":
        assert " INFO " not in log and " DEBUG " not in log
    else:
        assert " INFO " in log and " DEBUG " in log


def listening_port(pid: int, timeout: float = 10.0) -> int:
    """The port of the listening TCP socket that process pid holds."""
    deadline = time.monotonic() + timeout
    while True:
        inodes = set()
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        with open("/proc/%d/net/tcp" % pid) as table:
            for line in table:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                    return int(fields[1].rpartition(":")[2], 16)
        if time.monotonic() > deadline:
            raise AssertionError("no listening socket in process %d" % pid)
        time.sleep(0.05)


@pytest.mark.parametrize("handler", ["report_signal", "failing_signal"])
def test_signal_handler_runs_in_the_worker(impl: Impl, handler: str) -> None:
    """--signal-handler: SIGUSR1/SIGUSR2 to the supervisor reach the
    function in the worker; one that raises is logged, and the worker
    keeps serving."""
    with Supervised.command(["prefork_app:Echo", "--workers", "1",
                             "--signal-handler", "cli_app:" + handler] + TCP,
                            backend_env(impl.name)) as sup:
        family, address = sup.address()
        # Served once: the worker has run post_fork, so the handler is in.
        assert roundtrip(family, address) == b"hello\n"
        worker = sup.wait_workers(1)[0]
        for count, signum in enumerate((signal.SIGUSR1, signal.SIGUSR2, signal.SIGUSR1), 1):
            sup.send_signal(signum)
            name = signal.Signals(signum).name
            if handler == "report_signal":
                sup.wait_for(r"cli_app: %s in pid %d, server ThreadingTCPServer" % (name, worker))
                sup.wait_for(r"cli_app: SIGUSR\d in pid", count=count)
            else:
                sup.wait_for(r"signal-handler cli_app:failing_signal failed on %s" % name)
                sup.wait_for(r"failed on SIGUSR\d", count=count)
        assert roundtrip(family, address) == b"hello\n"
        assert sup.children() == [worker]
        stop(sup)
    if handler == "failing_signal":
        assert "RuntimeError: this --signal-handler fails" in sup.log
