"""What the bench runs on, and where its servers may listen."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

SERVER_CPU = 0
LOADGEN_CPU = 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def pinning_enabled() -> bool:
    if not hasattr(os, "sched_setaffinity") or usable_cpus() < 2:
        return False
    cpus = os.sched_getaffinity(0)
    return SERVER_CPU in cpus and LOADGEN_CPU in cpus


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def python_version(executable: str) -> str:
    if os.path.realpath(executable) == os.path.realpath(sys.executable):
        return f"{platform.python_implementation()} {platform.python_version()}"
    code = "import platform; print(platform.python_implementation(), platform.python_version())"
    try:
        out = subprocess.run([executable, "-c", code], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return out.stdout.strip() or f"unknown ({out.stderr.strip()[-200:]})"


def describe(server_python: str = sys.executable) -> dict:
    return {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": python_version(server_python),
        "python_executable": server_python,
        "load_average_at_start": load_average(),
        "pinning": (
            f"server on CPU {SERVER_CPU}, load generator on CPU {LOADGEN_CPU}"
            if pinning_enabled()
            else "none (fewer than 2 usable CPUs)"
        ),
    }


def server_port_range() -> tuple[int, int]:
    """Ports just below the ephemeral range.

    A server on an ephemeral port can collide with a client's source port,
    and a loopback connect to an idle ephemeral port can connect to itself.
    """
    lo, hi = 32768, 60999
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        pass
    if lo - 1 - 2000 >= 1024:
        return max(1024, lo - 12000), lo - 1
    if hi + 2000 <= 65535:
        return hi + 1, 65535
    raise RuntimeError(f"no room outside the ephemeral port range {lo}-{hi} for bench servers")
