"""Run one repetition: start a server process, drive it with loadgen, stop it."""
from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import machine
from .workloads import C_IMPLS, Workload

REPO_ROOT = Path(__file__).resolve().parent.parent
# Above this many CPUs' worth of work by other processes during a run, say so:
# below it is mostly /proc/stat's 10 ms granularity.
BUSY_CPUS = 0.3
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
STDERR_TAIL = 2000
BULK_REQUEST_BYTES = 65536  # loadgen's default --chunk


@dataclass
class RunConfig:
    duration: float
    warmup: float
    loadgen: Path
    echo_ref: Path
    python: str = sys.executable
    pin: bool = field(default_factory=machine.pinning_enabled)
    port_range: tuple[int, int] = field(default_factory=machine.server_port_range)
    udp_timeout_ms: int = 250
    # (certfile, keyfile) for the TLS workloads (bench.tls.make_certificate).
    tls_files: tuple[Path, Path] | None = None
    # Counted runs (bench.instructions): the server's argv goes after this
    # prefix (valgrind, perf stat), and the load generator stops once this
    # many requests are answered, with no warm-up and duration as a cap.
    server_prefix: list[str] = field(default_factory=list)
    requests: int = 0
    ready_timeout: float = READY_TIMEOUT
    stop_timeout: float = STOP_TIMEOUT


@dataclass
class Outcome:
    status: str  # "ok", "unavailable" or "failed"
    reason: str = ""  # one line, for the table
    result: dict[str, Any] = field(default_factory=dict)
    detail: str = ""  # e.g. the server's stderr, for the JSON


def with_last_line(message: str, text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return f"{message}: {lines[-1]}" if lines else message


class ServerFailed(Exception):
    pass


class Unavailable(Exception):
    pass


def server_env(impl: str) -> dict[str, str]:
    env = dict(os.environ)
    # The checkout first (for fastserver and bench), then the caller's directory
    # (for a user's --handler module), then whatever was there already.
    paths = [str(REPO_ROOT), os.getcwd()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.pop("FASTSERVER_NO_EXTENSIONS", None)
    if impl == "pure":
        env["FASTSERVER_NO_EXTENSIONS"] = "1"
    return env


def peak_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class Server:
    """A server child process; always reaped, by SIGKILL if it will not stop."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        stderr_path: Path,
        ready_timeout: float = READY_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
        signal_group: bool = False,
    ) -> None:
        self.argv = argv
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        # Under a wrapper that stays the parent (perf stat), SIGTERM must reach
        # the server itself, which is in the wrapper's process group.
        self.signal_group = signal_group
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=os.getcwd(),
            # Its own session: a Ctrl-C aimed at the bench reaches us, and we stop it in order.
            start_new_session=True,
        )
        self.exit_note = ""
        self.shutdown_ms: float | None = None
        self.usage: list[tuple[int, int]] = []  # its USAGE lines: (voluntary, involuntary) switches

    def wait_ready(self) -> str:
        """Returns the READY line's payload; raises Unavailable or ServerFailed."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.ready_timeout
        buf = b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerFailed(f"no READY line within {self.ready_timeout:.0f}s")
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait(timeout=self.stop_timeout)
                raise ServerFailed(f"server exited with status {self.proc.returncode} before it was ready")
            buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
        if line.startswith("UNAVAILABLE "):
            raise Unavailable(line[len("UNAVAILABLE ") :])
        if not line.startswith("READY "):
            raise ServerFailed(f"unexpected first line from server: {line!r}")
        return line[len("READY ") :]

    def stop(self) -> None:
        if self.proc.poll() is None:
            if self.signal_group:
                os.killpg(self.proc.pid, signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.exit_note = f"did not exit within {self.stop_timeout:.0f}s of SIGTERM; killed"
        if not self.exit_note and self.proc.returncode != 0:
            self.exit_note = f"exit status {self.proc.returncode}"
        # Anything the server forked (ForkingMixIn) is in its session's process
        # group, which is ours to clean up: nothing may outlive the run.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.stdout and not self.proc.stdout.closed:  # stop() may run twice
            rest = self.proc.stdout.read().decode(errors="replace")
            self.shutdown_ms = shutdown_ms(rest)
            self.usage = usage_lines(rest)
            self.proc.stdout.close()
        self._stderr.close()

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""


def shutdown_ms(stdout_rest: str) -> float | None:
    """The server's ``SHUTDOWN <ms>`` line: how long shutdown() took to return."""
    for line in stdout_rest.splitlines():
        if line.startswith("SHUTDOWN "):
            return float(line.split()[1])
    return None


def usage_lines(stdout_rest: str) -> list[tuple[int, int]]:
    """The server's ``USAGE <voluntary> <involuntary>`` lines, in order."""
    return [(int(f[1]), int(f[2])) for f in (line.split() for line in stdout_rest.splitlines()) if f[:1] == ["USAGE"]]


def task_switches(pid: int) -> tuple[int, int] | None:
    """Context switches of a process's live threads, from /proc: the whole
    count for a server that never ends a thread (echo_ref.c)."""
    totals = [0, 0]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    for i, key in enumerate(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        if line.startswith(key):
                            totals[i] += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return totals[0], totals[1]


class SwitchSampler:
    """The server's context switches over the measured window.

    A Python server reports getrusage() on SIGUSR1 (it counts threads that
    have ended, as ThreadingMixIn's do), and so does echo_ref.c --threaded
    (c-threaded), whose threads end with their connections, some before the
    second sample; c-reference, single-threaded and without that handler,
    is read from /proc.  ``result()`` pairs the two samples once the server
    has stopped and printed its lines."""

    def __init__(self, impl: str, server: Server) -> None:
        self.by_signal = impl != "c-reference"
        self.server = server
        self.proc_samples: list[tuple[int, int] | None] = []

    def sample(self) -> None:
        if self.by_signal:
            try:
                self.server.proc.send_signal(signal.SIGUSR1)
            except ProcessLookupError:
                pass
        else:
            self.proc_samples.append(task_switches(self.server.proc.pid))

    def result(self, requests: float) -> dict[str, Any]:
        samples = self.server.usage if self.by_signal else self.proc_samples
        if len(samples) < 2 or samples[0] is None or samples[-1] is None or requests <= 0:
            return {}
        voluntary = samples[-1][0] - samples[0][0]
        involuntary = samples[-1][1] - samples[0][1]
        return {
            "switches_voluntary": voluntary,
            "switches_involuntary": involuntary,
            "switches_per_request": round((voluntary + involuntary) / requests, 3),
        }


def requests_in(w: Workload, count: float) -> float:
    """Requests a loadgen count stands for: bulk counts bytes, and a request
    there is one 64 KiB write."""
    return count / BULK_REQUEST_BYTES if w.mode == "bulk" else count


def server_argv(w: Workload, impl: str, cfg: RunConfig, unix_path: str, profile: Path | None) -> list[str]:
    lo, hi = cfg.port_range
    cpu = [str(machine.SERVER_CPU)] if cfg.pin else []
    if impl in C_IMPLS:
        where = {"tcp": ["--tcp", "127.0.0.1"], "udp": ["--udp", "127.0.0.1"], "unix": ["--unix", unix_path]}
        argv = [str(cfg.echo_ref), *where[w.family], "--port-lo", str(lo), "--port-hi", str(hi)]
        argv += ["--http"] if w.mode == "http" else []
        argv += ["--threaded", w.threaded_sends] if impl == "c-threaded" else []
        return argv + (["--cpu", *cpu] if cpu else [])
    argv = [cfg.python, "-m", "bench.server_runner", "--impl", impl, "--server", w.server_class]
    argv += ["--handler", w.handler, "--family", w.family, "--port-lo", str(lo), "--port-hi", str(hi)]
    if w.family == "unix":
        argv += ["--path", unix_path]
    if cpu:
        argv += ["--cpu", *cpu]
    if profile is not None:
        argv += ["--profile", str(profile)]
    if w.tls:
        if cfg.tls_files is None:
            raise ValueError(f"workload {w.name} needs a certificate (RunConfig.tls_files)")
        argv += ["--tls", w.tls, "--certfile", str(cfg.tls_files[0]), "--keyfile", str(cfg.tls_files[1])]
    return argv


def loadgen_argv(w: Workload, cfg: RunConfig, address: list[str]) -> list[str]:
    if cfg.requests:
        requests = int(cfg.requests * (BULK_REQUEST_BYTES if w.mode == "bulk" else 1))
        timing = ["--requests", str(requests), "--duration", str(cfg.duration), "--warmup", "0"]
    else:
        timing = ["--duration", str(cfg.duration), "--warmup", str(cfg.warmup)]
    argv = [str(cfg.loadgen), *w.loadgen_args(), *timing]
    if w.family == "unix":
        argv += ["--path", address[1]]
    else:
        argv += ["--host", address[1], "--port", address[2]]
    if w.family == "udp":
        argv += ["--udp-timeout-ms", str(cfg.udp_timeout_ms)]
    if cfg.pin:
        argv += ["--cpu", str(machine.LOADGEN_CPU)]
    return argv


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float:
    """CPU seconds spent by everything on the machine (all CPUs), per /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def process_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    except (OSError, ValueError, IndexError):
        return 0.0


class ForeignLoad:
    """How many CPUs' worth of work processes other than ours did during a run."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = os.times()
        return (
            time.monotonic(),
            machine_busy_seconds(),
            process_cpu_seconds(self.server_pid),
            children.ru_utime + children.ru_stime + own.user + own.system,
        )

    def cpus(self) -> float:
        end = self._sample()
        wall = end[0] - self.start[0]
        if wall <= 0:
            return 0.0
        foreign = (end[1] - self.start[1]) - (end[2] - self.start[2]) - (end[3] - self.start[3])
        return max(0.0, foreign / wall)


def count_server_errors(stderr: str) -> int:
    # socketserver.BaseServer.handle_error prints this banner once per failed request.
    return stderr.count("Exception occurred during processing") or stderr.count("Traceback")


def no_replies_reason(result: dict[str, Any], server_stderr: str) -> str:
    """Why a run counts as INVALID for having no replies (or no bytes), or
    "" when it had some. A silent run measures nothing: its rate of 0 would
    otherwise pull a median down as if it were a result."""
    if result.get("count") and result.get("bytes"):
        return ""
    facts = [f"no replies in the {result.get('duration', 0):.1f} s measured window"]
    facts.append(f"{result.get('connects', 0):,} connects")
    for counter in ("errors", "lost", "late"):
        if result.get(counter):
            facts.append(f"{counter}={result[counter]:,}")
    if result.get("first_error"):
        facts.append(f"first error: {result['first_error']}")
    foreign = result.get("foreign_cpus") or 0.0
    if foreign > BUSY_CPUS:
        facts.append(f"the machine was busy: other processes used {foreign:.1f} CPU")
    reason = "; ".join(facts)
    return with_last_line(reason + "; server stderr", server_stderr) if server_stderr.strip() else reason


def run_loadgen(argv: list[str], cfg: RunConfig, switches: SwitchSampler | None) -> subprocess.CompletedProcess[str]:
    """Runs the load generator to its end; samples the server's switches as
    its measured window opens and once it has closed."""
    timeout = cfg.warmup + cfg.duration + 30
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            if switches is not None:
                try:
                    proc.wait(timeout=cfg.warmup)
                except subprocess.TimeoutExpired:
                    switches.sample()
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        if switches is not None:
            switches.sample()
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def run_once(w: Workload, impl: str, cfg: RunConfig, profile: Path | None = None) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="fsbench-") as tmp:
        unix_path = os.path.join(tmp, "echo.sock")
        env = server_env(impl)
        server = Server(
            cfg.server_prefix + server_argv(w, impl, cfg, unix_path, profile),
            env,
            Path(tmp) / "server.stderr",
            ready_timeout=cfg.ready_timeout,
            stop_timeout=cfg.stop_timeout,
            signal_group=bool(cfg.server_prefix),
        )
        # Under valgrind the threads take turns: their switches say nothing.
        switches = None if cfg.server_prefix else SwitchSampler(impl, server)
        rss = None
        try:
            try:
                ready = server.wait_ready().split()
            except Unavailable as exc:
                return Outcome("unavailable", str(exc))
            except ServerFailed as exc:
                server.stop()  # so its stderr is complete
                stderr = server.stderr_text()
                return Outcome("failed", with_last_line(str(exc), stderr), detail=stderr[-STDERR_TAIL:])
            backend, address = ready[0], ready[1:]
            argv = loadgen_argv(w, cfg, address)
            foreign = ForeignLoad(server.proc.pid)
            try:
                proc = run_loadgen(argv, cfg, switches)
            except subprocess.TimeoutExpired:
                return Outcome("failed", "load generator did not finish in time")
            foreign_cpus = foreign.cpus()
            rss = peak_rss_kb(server.proc.pid) if server.proc.poll() is None else None
            server_died = server.proc.poll() is not None
        finally:
            server.stop()
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            return Outcome(
                "failed", with_last_line(f"loadgen exit {proc.returncode}", proc.stderr), detail=proc.stderr[-STDERR_TAIL:]
            )
        stderr = server.stderr_text()
        if server_died:
            return Outcome(
                "failed",
                with_last_line(f"server died during the run (exit status {server.proc.returncode})", stderr),
                detail=stderr[-STDERR_TAIL:],
            )
        result: dict[str, Any] = json.loads(lines[-1])
        if switches is not None:
            result.update(switches.result(requests_in(w, result.get("count", 0))))
        result.update(
            backend=backend,
            rss_kb=rss,
            shutdown_ms=server.shutdown_ms,
            foreign_cpus=round(foreign_cpus, 2),
            server_exit=server.exit_note or "clean",
            server_errors=count_server_errors(stderr),
            server_stderr_tail=stderr[-STDERR_TAIL:],
            loadgen_stderr=proc.stderr[-STDERR_TAIL:],
        )
        silent = no_replies_reason(result, stderr)
        if silent and impl in w.zero_ok:
            # A measured 0, not a void run: this impl is expected to serve nobody here.
            result.update(expected_zero=w.zero_why)
        elif silent:
            result.update(valid=False, invalid_reason=silent)
        return Outcome("ok", result=result)
