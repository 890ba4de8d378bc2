"""systemd socket activation: fastserver.activation and ``run --systemd``,
with systemd's own ``systemd-socket-activate`` and with a launcher that,
like systemd, keeps a copy of the socket; on each backend."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List

import pytest

from conftest import HOST, Impl, backend_env, recv_until, unix_path
from externals import require_socket_activate

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
sys.path.insert(0, SCRIPTS)

from supervised import Supervised  # noqa: E402

from fastserver import activation  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="systemd is Linux only")

V1_LINE = b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 8080\r\n"


def passed_env(env: Dict[str, str]) -> List[str]:
    """systemd-socket-activate gives the service a clean environment: the
    options that pass on what selects the checkout and the backend, and the
    sanitizer runtime of an ASan build (.ci/sanitize)."""
    names = [n for n in ("PYTHONPATH", "FASTSERVER_NO_EXTENSIONS", "LD_PRELOAD",
                         "ASAN_OPTIONS", "LSAN_OPTIONS", "PYTHONMALLOC") if n in env]
    return [arg for n in names for arg in ("-E", n)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]  # type: ignore[no-any-return]


def env_for(impl: Impl) -> Dict[str, str]:
    env = backend_env(impl.name)
    env["PYTHONPATH"] = SCRIPTS + os.pathsep + env["PYTHONPATH"]
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)
    return env


def ask(address: Any, line: bytes = b"hello\n", family: int = socket.AF_INET,
        timeout: float = 10.0) -> Dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        with sock:
            sock.sendall(line)
            return json.loads(recv_until(sock))  # type: ignore[no-any-return]


# --- the Python API -------------------------------------------------------------


def test_server_from_systemd(impl: Impl) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [require_socket_activate(), "-l", "%s:%d" % (HOST, port)] + passed_env(env_for(impl))
        + [sys.executable,
         os.path.join(SCRIPTS, "systemd_app.py"), "ThreadingTCPServer"],
        env=env_for(impl), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # systemd-socket-activate starts the service on the first connection.
        got = ask((HOST, port))
        adopted = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert proc.wait(10) == 0, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert adopted == {"fd": 3, "inheritable": False, "inherited": True,
                       "address": [HOST, port], "env": [], "backend": impl.name}
    assert got["line"] == "hello\n" and got["listen_env"] == []
    assert got["nodelay"] == 1  # a socket systemd passed gets it too


def launch(impl: Impl, socks: List[socket.socket], args: List[str],
           names: str = "") -> "subprocess.CompletedProcess[str]":
    fds = ",".join(str(s.fileno()) for s in socks)
    command = [sys.executable, os.path.join(SCRIPTS, "listen_fds_exec.py"), fds]
    if names:
        command += ["--names", names]
    return subprocess.run(command + ["--"] + args, env=env_for(impl),
                          pass_fds=[s.fileno() for s in socks],
                          capture_output=True, text=True, timeout=30)


def test_socket_must_match_the_server_class(impl: Impl) -> None:
    app = os.path.join(SCRIPTS, "systemd_app.py")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((HOST, 0))
        result = launch(impl, [udp], [app, "ThreadingTCPServer"])
    assert result.returncode == 3
    assert "datagram" in json.loads(result.stdout)["error"]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as idle:
        idle.bind((HOST, 0))  # bound, not listening
        result = launch(impl, [idle], [app, "ThreadingTCPServer"])
        assert "not listening" in json.loads(result.stdout)["error"]
        idle.listen()
        result = launch(impl, [idle], [app, "ThreadingUnixStreamServer"])
        assert "Unix" in json.loads(result.stdout)["error"]
    with socket.socket() as one, socket.socket() as two:
        for sock in (one, two):
            sock.bind((HOST, 0))
            sock.listen()
        result = launch(impl, [one, two], [app, "ThreadingTCPServer"], "a:b")
        assert "2 sockets" in json.loads(result.stdout)["error"]
        result = launch(impl, [one, two], [app, "ThreadingTCPServer", "c"], "a:b")
        assert "no socket named 'c'" in json.loads(result.stdout)["error"]


def test_listen_pid_must_be_ours(monkeypatch: Any) -> None:
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 100000))
    monkeypatch.setenv("LISTEN_FDNAMES", "web")
    with pytest.raises(activation.ActivationError, match="not this process"):
        activation.listen_sockets()
    assert not any(k.startswith("LISTEN_") for k in os.environ)
    with pytest.raises(activation.ActivationError, match="not socket-activated"):
        activation.listen_sockets()


def test_server_from_socket_in_process(impl: Impl) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
        sock.listen()
        with pytest.raises(activation.ActivationError, match="IPv6"):
            activation.server_from_socket(impl.ss.TCPServer,
                                          impl.ss.StreamRequestHandler, sock)
        cls = type("S6", (impl.ss.TCPServer,), {"address_family": socket.AF_INET6})
        server = activation.server_from_socket(cls, impl.ss.StreamRequestHandler, sock)
        assert server.socket is sock and server.server_address == sock.getsockname()
        assert server.socket_inherited is True


# --- python -m fastserver run --systemd ----------------------------------------


def activated(impl: Impl, listen: List[str], options: List[str]) -> Supervised:
    """``systemd-socket-activate LISTEN python -m fastserver run OPTIONS``,
    followed by Supervised (exec_argv keeps one pid throughout)."""
    env = env_for(impl)
    return Supervised([os.path.join(SCRIPTS, "exec_argv.py"), require_socket_activate()]
                      + passed_env(env) + listen
                      + [sys.executable, "-m", "fastserver", "run"]
                      + options, env)


def test_run_systemd_with_workers(impl: Impl) -> None:
    port = free_port()
    options = ["proxy_app:Whoami", "--systemd", "--workers", "2",
               "--proxy-protocol", "v1", "--trusted-proxy", "127.0.0.1/32"]
    with activated(impl, ["-l", "%s:%d" % (HOST, port)], options) as sup:
        # The first connection starts the service.
        got = ask((HOST, port), V1_LINE + b"hi\n")
        assert got["client"] == ["192.0.2.7", 51000]
        assert got["listen_env"] == [] and got["backend"] == impl.name
        # Prefork workers behind PROXY, on systemd's socket: no Nagle.
        assert got["nodelay"] == 1
        sup.wait_for("serving on the socket systemd passed")
        pids = set(sup.wait_workers(2))
        assert len(pids) == 2
        seen = {ask((HOST, port), V1_LINE + b"hi\n")["pid"] for _ in range(10)}
        assert seen <= pids
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0, sup.log


def test_run_systemd_unix_socket(impl: Impl) -> None:
    path = unix_path()
    try:
        with activated(impl, ["-l", path], ["proxy_app:Whoami", "--systemd",
                                            "--workers", "1"]) as sup:
            got = ask(path, family=socket.AF_UNIX)
            assert got["server"] == "ThreadingUnixStreamServer"
            assert got["nodelay"] is None
            sup.send_signal(signal.SIGTERM)
            assert sup.wait(15) == 0, sup.log
        # The socket file is systemd's: the drain leaves it in place.
        assert os.path.exists(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_run_systemd_datagram(impl: Impl) -> None:
    port = free_port()
    with activated(impl, ["-d", "-l", "%s:%d" % (HOST, port)],
                   ["prefork_app:UDPEcho", "--systemd", "--udp",
                    "--workers", "1"]) as sup:
        sup.wait_for("Listening on")  # systemd-socket-activate's own log
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10)
            udp.sendto(b"ping", (HOST, port))
            data, _ = udp.recvfrom(100)
        assert data.startswith(b"ping ")
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(15) == 0, sup.log


def test_drain_leaves_the_socket_open_to_new_clients(impl: Impl) -> None:
    """Like systemd, the launcher's caller keeps a copy of the socket. After
    a drain, that socket still takes connections (no filter was left on
    it), and the next start serves them."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen(16)
        address = sock.getsockname()
        fds = str(sock.fileno())
        args = [sys.executable, os.path.join(SCRIPTS, "listen_fds_exec.py"), fds,
                "--", "-m", "fastserver", "run", "proxy_app:Whoami",
                "--systemd", "--workers", "2"]
        first = subprocess.Popen(args, env=env_for(impl), cwd=SCRIPTS,
                                 pass_fds=[sock.fileno()],
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert ask(address)["line"] == "hello\n"
            first.send_signal(signal.SIGTERM)
            assert first.wait(15) == 0
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
            log = first.stderr.read()  # type: ignore[union-attr]
            first.stderr.close()  # type: ignore[union-attr]
        assert "draining" in log, log
        # Nobody serves now, but the kernel still completes handshakes.
        waiting = socket.create_connection(address, timeout=2)
        waiting.sendall(b"queued\n")
        second = subprocess.Popen(args, env=env_for(impl), cwd=SCRIPTS,
                                  pass_fds=[sock.fileno()],
                                  stderr=subprocess.DEVNULL)
        try:
            waiting.settimeout(10)
            assert json.loads(recv_until(waiting))["line"] == "queued\n"
            waiting.close()
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0
        finally:
            if second.poll() is None:
                second.kill()
                second.wait()


def run_cli(impl: Impl, *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "fastserver", "run"] + list(args),
                          env=env_for(impl), cwd=SCRIPTS, capture_output=True,
                          text=True, timeout=30)


def test_run_systemd_errors(impl: Impl) -> None:
    result = run_cli(impl, "proxy_app:Whoami", "--systemd")
    assert result.returncode == 1 and "not socket-activated" in result.stderr
    result = run_cli(impl, "proxy_app:Whoami", "--systemd", "--bind", "127.0.0.1:1")
    assert result.returncode == 2 and "--bind" in result.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((HOST, 0))
        result = launch(impl, [udp], ["-m", "fastserver", "run",
                                      "proxy_app:Whoami", "--systemd"])
    assert result.returncode == 1 and "add --udp" in result.stderr
