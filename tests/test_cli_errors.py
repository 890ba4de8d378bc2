"""``fastserver run`` with input it cannot serve: each case gets one error
line naming what is wrong, exit status 2 with run's usage line for the
command line, 1 for the environment, and never a traceback of our own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List, Optional, Sequence

import pytest

from conftest import Impl, backend_env
from externals import require_program

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
PROG = "python -m fastserver run"
USAGE = "usage: %s MODULE:HANDLER [options]" % PROG
TCP = ["--bind", "127.0.0.1:0"]


def fastserver_run(impl: Impl, args: Sequence[str], extra_path: Optional[Path] = None,
                   prefix: Sequence[str] = ()) -> "subprocess.CompletedProcess[str]":
    env = backend_env(impl.name)
    paths = [SCRIPTS] + ([str(extra_path)] if extra_path else []) + [env["PYTHONPATH"]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run(list(prefix) + [sys.executable, "-m", "fastserver", "run"] + list(args),
                          env=env, cwd=SCRIPTS, capture_output=True, text=True, timeout=30)


def error_line(result: "subprocess.CompletedProcess[str]", status: int) -> str:
    """The one error line, after checking the status and the lines around it."""
    assert result.returncode == status, result.stderr
    lines = result.stderr.splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert errors[0].startswith(PROG + ": error: "), result.stderr
    if status == 2:
        assert lines == [USAGE, errors[0]], result.stderr
    assert "fastserver/cli.py" not in result.stderr, result.stderr
    assert "importlib" not in result.stderr, result.stderr
    return errors[0][len(PROG + ": error: "):]


# --- the command line: exit status 2 -----------------------------------------


@pytest.mark.parametrize("args,expected", [
    (["cli_app:NotAHandler"] + TCP,
     "cli_app:NotAHandler is not a request handler class: NotAHandler does not derive from BaseRequestHandler"),
    (["cli_app:not_a_class"] + TCP, "cli_app:not_a_class is a function, not a request handler class"),
    (["cli_app:NOT_CALLABLE"] + TCP, "cli_app:NOT_CALLABLE is a int instance, not a request handler class"),
    (["cli_app:Nope"] + TCP, "cli_app:Nope: 'cli_app' has no attribute 'Nope'"),
    (["no_such_module:Echo"] + TCP, "no_such_module:Echo: no module named 'no_such_module'"),
    (["cli_app"] + TCP, "expected MODULE:NAME, got 'cli_app'"),
], ids=["class", "function", "instance", "attribute", "module", "no-colon"])
def test_target_that_is_not_a_handler(impl: Impl, args: List[str], expected: str) -> None:
    assert error_line(fastserver_run(impl, args), 2).startswith(expected)


@pytest.mark.parametrize("bind,expected", [
    ("tcp://127.0.0.1:9000", "--bind 'tcp://127.0.0.1:9000': no URL scheme; write 127.0.0.1:9000"),
    ("udp://127.0.0.1:9000", "no URL scheme; write 127.0.0.1:9000 and add --udp"),
    ("unix:///run/app.sock", "no URL scheme; write unix:/run/app.sock"),
    ("0.0.0.0", "--bind '0.0.0.0' has no port; write 0.0.0.0:PORT"),
    ("localhost", "--bind 'localhost' has no port; write localhost:PORT"),
    ("::1", "--bind '::1' has no port; write [::1]:PORT"),
    ("::1:9000", "put IPv6 addresses in brackets: [::1]:9000"),
    ("[::1]", "--bind '[::1]': expected [IPV6]:PORT"),
    ("127.0.0.1:http", "not a port number: 'http'"),
    ("127.0.0.1:70000", "port out of range: 70000"),
    ("unix:", "unix: needs a path"),
], ids=["tcp-url", "udp-url", "unix-url", "host-only", "name-only", "ipv6-only",
        "ipv6-unbracketed", "ipv6-no-port", "port-name", "port-range", "unix-empty"])
def test_bad_bind(impl: Impl, bind: str, expected: str) -> None:
    message = error_line(fastserver_run(impl, ["prefork_app:Echo", "--bind", bind]), 2)
    assert expected in message
    if "://" in bind:
        assert "brackets" not in message


@pytest.mark.parametrize("args,expected", [
    (["prefork_app:Echo", "--server", "UDPServer"],
     "prefork_app:Echo is a stream handler (StreamRequestHandler) but UDPServer is a datagram "
     "server: choose a stream --server"),
    (["prefork_app:Echo", "--udp"],
     "prefork_app:Echo is a stream handler (StreamRequestHandler) but ThreadingUDPServer is a "
     "datagram server: drop --udp"),
    (["prefork_app:UDPEcho"],
     "prefork_app:UDPEcho is a datagram handler (DatagramRequestHandler) but "
     "ThreadingTCPServer is a stream server: add --udp"),
    (["prefork_app:UDPEcho", "--server", "ForkingTCPServer"],
     "but ForkingTCPServer is a stream server: choose a datagram --server"),
], ids=["stream-on-udp-server", "stream-with-udp", "datagram-on-tcp", "datagram-on-named-tcp"])
def test_handler_and_server_kinds_must_match(impl: Impl, args: List[str], expected: str) -> None:
    assert expected in error_line(fastserver_run(impl, args + TCP), 2)


def test_signal_handler_must_be_callable(impl: Impl) -> None:
    result = fastserver_run(impl, ["prefork_app:Echo", "--signal-handler", "cli_app:NOT_CALLABLE"] + TCP)
    assert error_line(result, 2) == "--signal-handler cli_app:NOT_CALLABLE is a int, not a function"


# --- the environment: exit status 1 ------------------------------------------


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / (name + ".py")).write_text(textwrap.dedent(source))


def test_exception_while_importing_shows_only_the_modules_frames(impl: Impl, tmp_path: Path) -> None:
    write_module(tmp_path, "broken_app", """\
        def settings():
            return {}["port"]

        PORT = settings()
        """)
    result = fastserver_run(impl, ["broken_app:Handler"] + TCP, tmp_path)
    message = error_line(result, 1)
    assert message == "module 'broken_app' raised KeyError while it was imported (traceback above)"
    frames = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("File ")]
    assert [frame.split(", ")[2] for frame in frames] == ["in <module>", "in settings"], result.stderr
    assert all(str(tmp_path / "broken_app.py") in frame for frame in frames)
    assert "KeyError: 'port'" in result.stderr


def test_missing_dependency_names_both_modules(impl: Impl, tmp_path: Path) -> None:
    write_module(tmp_path, "needs_dep", """\
        import json
        import fastserver_absent_dependency
        """)
    result = fastserver_run(impl, ["needs_dep:Handler"] + TCP, tmp_path)
    assert error_line(result, 1) == ("module 'needs_dep' could not be imported: it imports "
                                     "'fastserver_absent_dependency', which is not installed")
    assert "needs_dep.py\", line 2, in <module>" in result.stderr


def test_address_in_use(impl: Impl) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = fastserver_run(impl, ["prefork_app:Echo", "--bind", "127.0.0.1:%d" % port])
    message = error_line(result, 1)
    assert message.startswith("cannot listen on 127.0.0.1:%d: " % port)
    assert "Address already in use" in message
    assert result.stderr.count("\n") == 1


def test_path_that_is_not_a_socket(impl: Impl, tmp_path: Path) -> None:
    path = tmp_path / "regular-file"
    path.write_text("")
    result = fastserver_run(impl, ["prefork_app:Echo", "--bind", "unix:%s" % path])
    assert error_line(result, 1) == "--bind unix:%s: the path exists and is not a socket" % path
    assert path.exists()


def without_file_permission_override() -> List[str]:
    """A command prefix under which this user's own file permissions hold
    (root's CAP_DAC_OVERRIDE and CAP_FOWNER would bypass them)."""
    if os.geteuid() != 0:
        return []
    return [require_program("setpriv", "util-linux"),
            "--bounding-set=-dac_override,-fowner,-dac_read_search"]


def stale_socket(path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))


@pytest.mark.parametrize("case", ["directory-read-only", "socket-not-writable"])
def test_stale_socket_this_user_may_not_replace(impl: Impl, tmp_path: Path, case: str) -> None:
    directory = tmp_path / "run"
    directory.mkdir()
    path = directory / "app.sock"
    stale_socket(path)
    if case == "directory-read-only":
        os.chmod(str(path), 0o777)
        os.chmod(str(directory), 0o555)
        expected = "a stale socket (nobody listens on it) is in the way and this user may not remove it"
    else:
        os.chmod(str(path), 0o500)
        expected = ("a socket file is in the way and this user may not connect to it to see "
                    "whether it is stale")
    try:
        result = fastserver_run(impl, ["prefork_app:Echo", "--bind", "unix:%s" % path],
                                prefix=without_file_permission_override())
    finally:
        os.chmod(str(directory), 0o755)
    message = error_line(result, 1)
    assert message == "--bind unix:%s: %s: Permission denied" % (path, expected)
    assert "Address already in use" not in result.stderr
    assert path.exists()


# --- --version and the console script ----------------------------------------


def test_version(impl: Impl) -> None:
    import fastserver

    result = subprocess.run([sys.executable, "-m", "fastserver", "--version"], env=backend_env(impl.name),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("fastserver %s (%s backend, " % (fastserver.__version__, impl.name))


def test_console_script(impl: Impl) -> None:
    script = os.path.join(os.path.dirname(sys.executable), "fastserver")
    assert os.access(script, os.X_OK), "no fastserver script beside %s: pip install -e ." % sys.executable
    env = backend_env(impl.name)
    version = subprocess.run([script, "--version"], env=env, capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("fastserver "), version.stderr
    error = subprocess.run([script, "run", "prefork_app:Echo", "--bind", "0.0.0.0"], env=env, cwd=SCRIPTS,
                           capture_output=True, text=True, timeout=30)
    assert error.returncode == 2
    assert error.stderr.splitlines() == [
        "usage: fastserver run MODULE:HANDLER [options]",
        "fastserver run: error: --bind '0.0.0.0' has no port; write 0.0.0.0:PORT (or PORT alone for 127.0.0.1)"]
