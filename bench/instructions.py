"""``python -m bench --instructions``: instructions per request, a measure the
shared VM's load does not move (valgrind's turn-taking still moves a threaded
server's count by up to 10%; a single-threaded one's by about 1%).

Each workload and impl runs twice more, with the server under an instruction
counter and the load generator stopping after a fixed number of answered
requests: ``n`` and then ``3 n``.  The server's start-up, its shutdown and
the requests still in flight when the load generator stops are the same in
both runs, so the difference in instructions over the difference in requests
is the cost of one request in steady state.

The counter is ``perf stat -e instructions:u`` where the kernel exposes the
hardware counter, and ``valgrind --tool=callgrind`` where it does not (as in
most VMs).  Both count the server process's user-space instructions, every
thread included; a forked child (ForkingMixIn) is not followed.  Under
valgrind the threads take turns, so context switches are not measured there.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from typing import Any

from .runner import RunConfig, requests_in, run_once
from .workloads import Workload

# Requests answered in the shorter of the two counted runs (bulk: 64 KiB
# writes), sized so that a run under valgrind takes seconds, not minutes.
BASE_REQUESTS = {"pingpong": 1500, "pipelined": 3200, "perconn": 300, "udp": 3000, "unix": 1500, "bulk": 150, "http": 400}
TLS_PERCONN_REQUESTS = 60  # a full handshake per request
# The connections' handshakes go on while the first ones to finish already
# ping-pong: with 1,500 requests the shorter run ended before all 100 had
# shaken hands, the longer one did more of them, and their cost (about a
# million instructions each) was counted per request, 5-10k of it.
TLS_PINGPONG_REQUESTS = 15000
LONGER = 3  # the second run answers this many times more
# valgrind runs a Python server 30-100x slower: generous bounds for every step.
READY_TIMEOUT = 180.0
STOP_TIMEOUT = 120.0
RUN_CAP_SECONDS = 900.0
UDP_TIMEOUT_MS = 5000  # a datagram is only lost if the slowed-down server drops it


@dataclass(frozen=True)
class Counter:
    name: str
    prefix: tuple[str, ...]
    pattern: str  # finds the count in the server's stderr

    def read(self, stderr: str) -> int | None:
        found = re.findall(self.pattern, stderr, re.MULTILINE)
        return int(found[-1].replace(",", "")) if found else None


CALLGRIND = Counter(
    "callgrind",
    ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", "--trace-children=no"),
    r"(?:Collected :|I\s+refs:)\s+([0-9,]+)",
)
PERF = Counter("perf", ("perf", "stat", "-e", "instructions:u", "-x", ",", "--"), r"^([0-9]+),[^,]*,instructions")


class NoCounter(Exception):
    pass


def perf_counts() -> bool:
    """Whether perf can read the instructions counter here (a VM usually cannot)."""
    if not shutil.which("perf"):
        return False
    try:
        out = subprocess.run([*PERF.prefix, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and PERF.read(out.stderr) is not None


def choose_counter() -> Counter:
    if perf_counts():
        return PERF
    if shutil.which("valgrind"):
        return CALLGRIND
    raise NoCounter(
        "--instructions needs perf with hardware counters (not available here) or valgrind (install valgrind)"
    )


def base_requests(w: Workload) -> int:
    if w.tls and w.mode == "perconn":
        return TLS_PERCONN_REQUESTS
    if w.tls:
        return TLS_PINGPONG_REQUESTS
    return BASE_REQUESTS[w.mode]


def counted_config(cfg: RunConfig, counter: Counter, requests: int) -> RunConfig:
    return replace(
        cfg,
        server_prefix=list(counter.prefix),
        requests=requests,
        duration=RUN_CAP_SECONDS,
        warmup=0.0,
        ready_timeout=READY_TIMEOUT,
        stop_timeout=STOP_TIMEOUT,
        udp_timeout_ms=UDP_TIMEOUT_MS,
    )


def count(w: Workload, impl: str, cfg: RunConfig, counter: Counter, n: int | None = None) -> dict[str, Any]:
    """Instructions per request for one workload and impl: a dict with
    ``instructions_per_request`` and the two runs behind it, or with
    ``instructions_error`` saying why there is no figure.  ``n``: requests in
    the shorter run (default: sized for the workload)."""
    n = n or base_requests(w)
    runs = []
    for requests in (n, LONGER * n):
        outcome = run_once(w, impl, counted_config(cfg, counter, requests))
        if outcome.status != "ok":
            return {"instructions_error": f"{requests} requests: {outcome.status}: {outcome.reason}"}
        result = outcome.result
        if not result.get("valid", True) or result.get("mismatches"):
            return {"instructions_error": f"{requests} requests: {result.get('invalid_reason') or 'mismatched replies'}"}
        instructions = counter.read(result.get("server_stderr_tail", ""))
        if instructions is None:
            return {"instructions_error": f"{requests} requests: no count from {counter.name} in the server's stderr"}
        runs.append({"requests": requests_in(w, result["count"]), "instructions": instructions})
    (short, long) = runs
    extra = long["requests"] - short["requests"]
    if extra <= 0:
        return {"instructions_error": f"the longer run answered no more requests ({runs})"}
    return {
        "instructions_per_request": round((long["instructions"] - short["instructions"]) / extra),
        "instructions_counter": counter.name,
        "instructions_runs": runs,
    }
