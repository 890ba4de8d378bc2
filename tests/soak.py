"""Soak: a mixed load against one backend for a fixed time.

    python tests/soak.py --minutes 10 [--backend cython|python]

Runs a ThreadingTCPServer and a UDPServer (tests/scripts/echo_server.py)
in subprocesses and drives them from client threads: persistent pingpong
connections, one connection per request, datagrams, and connections reset
in mid-request. Every reply is checked; the bytes echoed must equal the
bytes sent. The servers' RSS and descriptor counts are sampled throughout
and must end where they were after the first minute (within a margin).
Prints a JSON summary and exits non-zero on any mismatch or growth.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).parent
HOST = "127.0.0.1"


class Totals:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Dict[str, int] = {}

    def add(self, **kw: int) -> None:
        with self.lock:
            for key, value in kw.items():
                self.counts[key] = self.counts.get(key, 0) + value


def start_server(cls: str, backend: str, *args: str,
                 env: Optional[Dict[str, str]] = None) -> Tuple[subprocess.Popen, int]:
    """Start tests/scripts/echo_server.py CLS ARGS on the named backend;
    return the process and its port (also used by tests/test_resources.py)."""
    if env is None:
        env = dict(os.environ)
        env.pop("FASTSERVER_NO_EXTENSIONS", None)
        if backend == "python":
            env["FASTSERVER_NO_EXTENSIONS"] = "1"
    proc = subprocess.Popen([sys.executable, str(HERE / "scripts" / "echo_server.py"), cls, *args],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    port, got = proc.stdout.readline().split()
    if got != backend:
        raise SystemExit(f"server backend is {got}, wanted {backend}")
    return proc, int(port)


def sample(pid: int) -> Dict[str, int]:
    """The process's RSS (kB), open descriptors and threads, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": int(fields["Threads"])}


def recv_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the reply")
        data += chunk
    return data


def pingpong(port: int, stop: threading.Event, totals: Totals, seed: int) -> None:
    rng = random.Random(seed)
    with socket.create_connection((HOST, port), timeout=30) as sock:
        while not stop.is_set():
            line = os.urandom(rng.randrange(1, 2000)).replace(b"\n", b"_") + b"\n"
            sock.sendall(line)
            reply = recv_line(sock)
            totals.add(pp_sent=len(line), pp_received=len(reply), pp_mismatch=int(reply != line))


def perconn(port: int, stop: threading.Event, totals: Totals, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        with socket.create_connection((HOST, port), timeout=30) as sock:
            line = b"%d\n" % rng.getrandbits(64)
            if rng.random() < 0.2:  # reset in mid-request
                sock.sendall(line[:2])
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                totals.add(resets=1)
                continue
            sock.sendall(line)
            reply = recv_line(sock)
            totals.add(pc_sent=len(line), pc_received=len(reply), pc_mismatch=int(reply != line))


def udp(port: int, stop: threading.Event, totals: Totals, seed: int) -> None:
    rng = random.Random(seed)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(2)
        while not stop.is_set():
            data = os.urandom(rng.randrange(0, 1400))
            sock.sendto(data, (HOST, port))
            try:
                reply = sock.recv(65536)
            except socket.timeout:
                totals.add(udp_lost=1)
                continue
            totals.add(udp_sent=len(data), udp_received=len(reply), udp_mismatch=int(reply != data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--backend", choices=["cython", "python"], default=None)
    args = parser.parse_args()
    import fastserver
    backend = args.backend or fastserver.backend
    duration = args.minutes * 60

    tcp, tcp_port = start_server("ThreadingTCPServer", backend, "1.0")
    dgram, udp_port = start_server("UDPServer", backend, "1.0")
    totals, stop, errors = Totals(), threading.Event(), []
    workers = [(pingpong, tcp_port, 8), (perconn, tcp_port, 4), (udp, udp_port, 2)]
    threads = []

    def guarded(fn, port, seed):  # type: ignore[no-untyped-def]
        try:
            fn(port, stop, totals, seed)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{fn.__name__}: {exc!r}")
            stop.set()

    for fn, port, count in workers:
        for i in range(count):
            threads.append(threading.Thread(target=guarded, args=(fn, port, len(threads) * 1000 + i)))
    for thread in threads:
        thread.start()
    samples: List[Dict[str, object]] = []
    start = time.monotonic()
    try:
        while not stop.wait(5):
            elapsed = time.monotonic() - start
            samples.append({"t": round(elapsed), "tcp": sample(tcp.pid), "udp": sample(dgram.pid)})
            print(f"\r{elapsed:6.0f}s {totals.counts}", end="", file=sys.stderr, flush=True)
            if elapsed >= duration:
                break
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    time.sleep(3)  # idle handler threads expire (idle timeout 1 s)
    final = {"tcp": sample(tcp.pid), "udp": sample(dgram.pid)}
    tcp.terminate()
    dgram.terminate()
    codes = [tcp.wait(30), dgram.wait(30)]
    print(file=sys.stderr)

    c = totals.counts
    first = next((s for s in samples if int(s["t"]) >= min(60, duration / 2)), samples[0] if samples else final)
    problems = list(errors)
    for kind in ("pp", "pc", "udp"):
        if c.get(f"{kind}_sent", 0) != c.get(f"{kind}_received", 0) or c.get(f"{kind}_mismatch", 0):
            problems.append(f"{kind}: sent {c.get(f'{kind}_sent')} received {c.get(f'{kind}_received')}")
    for name in ("tcp", "udp"):
        early, late = first[name], final[name]  # type: ignore[index]
        if late["fds"] > early["fds"]:
            problems.append(f"{name} server fds grew {early['fds']} -> {late['fds']}")
        if late["rss_kb"] - early["rss_kb"] > 16 * 1024:
            problems.append(f"{name} server RSS grew {early['rss_kb']} -> {late['rss_kb']} kB")
    if codes != [0, 0]:
        problems.append(f"server exit codes {codes}")
    summary = {"backend": backend, "minutes": args.minutes, "totals": c, "after_first_minute": first,
               "final": final, "problems": problems}
    print(json.dumps(summary, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
