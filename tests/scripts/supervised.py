"""A supervisor process under test: started with a backend's environment,
its stderr log followed line by line.

Used by tests/test_prefork.py and tests/test_cli.py (both put this
directory on sys.path).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

SCRIPTS = os.path.dirname(os.path.abspath(__file__))

_LISTENING = re.compile(r"listening on (unix:(?P<path>\S+)|\[?(?P<host>[^\s\]]+)\]?:(?P<port>\d+)) ")


class Supervised:
    """One supervisor process (``python -m fastserver run ...`` or
    prefork_app.py) and its log."""

    def __init__(self, args: Sequence[str], env: Dict[str, str],
                 cwd: Optional[str] = None) -> None:
        env = dict(env)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = SCRIPTS + (os.pathsep + path if path else "")
        self.lines: List[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable] + list(args), env=env, cwd=cwd or SCRIPTS,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def command(cls, options: Sequence[str], env: Dict[str, str]) -> "Supervised":
        return cls(["-m", "fastserver", "run"] + list(options), env)

    @classmethod
    def app(cls, handler: str, server: str, workers: int, graceful: float,
            env: Dict[str, str], address: str = "") -> "Supervised":
        args = [os.path.join(SCRIPTS, "prefork_app.py"), handler, server,
                str(workers), str(graceful)]
        if address:
            args.append(address)
        return cls(args, env)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 15.0,
                 count: int = 1) -> "re.Match[str]":
        """The count-th log line matching pattern, waiting up to timeout."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                matches = [m for m in map(regex.search, self.lines) if m]
                if len(matches) >= count:
                    return matches[count - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.lines and self.lines[-1] == "<EOF>"):
                    raise AssertionError("no %r (x%d) in the log:\n%s"
                                         % (pattern, count, "\n".join(self.lines)))
                self._cond.wait(remaining)

    def address(self, timeout: float = 15.0) -> Tuple[int, Any]:
        """(family, address) from the "listening on" line."""
        match = self.wait_for(_LISTENING.pattern, timeout)
        if match.group("path"):
            return socket.AF_UNIX, match.group("path")
        host = match.group("host")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return family, (host, int(match.group("port")))

    def wait_workers(self, count: int, timeout: float = 15.0) -> List[int]:
        """Wait until the process has count children; their pids."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.children()
            if len(pids) == count or time.monotonic() > deadline:
                return pids
            time.sleep(0.02)

    def children(self) -> List[int]:
        pid = self.proc.pid
        try:
            with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
                return sorted(int(p) for p in f.read().split())
        except OSError:
            return []

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Make sure the supervisor and its workers are gone."""
        if self.proc.poll() is None:
            workers = self.children()
            self.proc.send_signal(signal.SIGKILL)
            for pid in workers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> "Supervised":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(family: int, address: Any, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def recv_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def roundtrip(family: int, address: Any, line: bytes = b"hello\n",
              timeout: float = 10.0) -> bytes:
    with connect(family, address, timeout) as sock:
        sock.sendall(line)
        return recv_line(sock)


class DrainLoad:
    """``clients`` threads that connect, send one line, read the echo and
    close, over and over, until ``stop()`` or until refused.

    Every outcome is counted: ``ok``; ``refused`` (connect failed: the
    allowed way to turn a client away); ``lost`` (connect succeeded, then a
    reset or a short or wrong answer).
    """

    def __init__(self, family: int, address: Any, clients: int = 16,
                 connect_timeout: float = 10.0) -> None:
        self.family, self.address = family, address
        self.connect_timeout = connect_timeout
        self.counts = {"ok": 0, "refused": 0, "lost": 0}
        self.errors: List[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(clients)]

    def start(self) -> "DrainLoad":
        for thread in self._threads:
            thread.start()
        return self

    def _count(self, what: str, error: str = "") -> None:
        with self._lock:
            self.counts[what] += 1
            if error:
                self.errors.append(error)

    def _run(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            line = b"client %d request %d %s\n" % (index, n, b"x" * 32)
            sock = socket.socket(self.family, socket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            try:
                try:
                    sock.connect(self.address)
                except (ConnectionRefusedError, FileNotFoundError, socket.timeout):
                    self._count("refused")
                    return
                try:
                    sock.sendall(line)
                    answer = recv_line(sock)
                except OSError as exc:
                    self._count("lost", "%s after connect" % (exc,))
                    continue
                if answer == line:
                    self._count("ok")
                else:
                    self._count("lost", "answer %r for %r" % (answer, line))
            finally:
                sock.close()

    def stop(self, timeout: float = 15.0) -> Dict[str, int]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        return dict(self.counts)

    def join(self, timeout: float) -> Dict[str, int]:
        """Wait for every client to end by itself (refused), at most timeout."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.stop()
