"""When accept() runs out of descriptors the loop backs off instead of
spinning (socketserver burns a whole core), keeps serving the connections it
has, and accepts again once descriptors free up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

from conftest import HOST, Impl, backend_env, recv_until

SCRIPT = Path(__file__).parent / "scripts" / "emfile_server.py"
SLOTS = 6


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def echo_ok(sock: socket.socket, line: bytes, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        sock.sendall(line)
        return recv_until(sock) == line
    except socket.timeout:
        return False


def test_emfile_backs_off_and_recovers(impl: Impl) -> None:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(SLOTS)],
                            stdout=subprocess.PIPE, text=True, env=backend_env(impl.name))
    clients: List[socket.socket] = []
    try:
        assert proc.stdout is not None
        port_text, backend = proc.stdout.readline().split()
        assert backend == impl.name
        port = int(port_text)
        # Fill every descriptor slot, then queue three more clients that
        # the server cannot accept yet.
        served, waiting = [], []
        for i in range(SLOTS + 3):
            sock = socket.create_connection((HOST, port), timeout=5)
            clients.append(sock)
            line = b"client %d\n" % i
            if i < SLOTS:
                assert echo_ok(sock, line, 10.0), "client %d not served" % i
                served.append((sock, line))
            else:
                # The slots are full: this one waits in the backlog.
                assert not echo_ok(sock, line, 1.0), "client %d served" % i
                waiting.append((sock, line))

        before = cpu_seconds(proc.pid)
        time.sleep(1.0)
        busy = cpu_seconds(proc.pid) - before
        assert busy < 0.2, f"server used {busy:.2f}s of CPU in 1s while out of fds"

        for sock, line in served:  # open connections are still served
            assert echo_ok(sock, line, 5.0)
            sock.close()
        # The freed descriptors let the queued clients in.
        for sock, line in waiting:
            sock.settimeout(10)
            assert recv_until(sock) == line
    finally:
        for sock in clients:
            sock.close()
        proc.terminate()
        proc.wait(10)
