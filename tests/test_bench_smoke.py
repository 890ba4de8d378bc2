"""Smoke tests for bench/: every workload runs briefly against every impl and
every reply checks out.  They never assert anything about speed.

They need a C compiler and OpenSSL's headers (the bench builds its load
generator, which links OpenSSL), and the openssl command (the TLS workloads'
certificate): without them they skip, naming the package, or fail under
FASTSERVER_REQUIRE_EXTERNALS=1 (see tests/externals.py).
"""
from __future__ import annotations

import json
import os
import pstats
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from externals import missing, require_c_compiler, require_openssl, require_program

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = (
    "pingpong",
    "pipelined",
    "pipelined-coalesce",
    "perconn",
    "udp",
    "udp-threading",
    "unix",
    "bulk",
    "http-keepalive",
    "http-keepalive-1",
    "tls-pingpong",
    "tls-perconn",
)
LATENCY_WORKLOADS = {
    "pingpong",
    "perconn",
    "udp",
    "udp-threading",
    "unix",
    "http-keepalive",
    "http-keepalive-1",
    "tls-pingpong",
    "tls-perconn",
    "tls-pingpong-ctx",
    "tls-perconn-ctx",
}
TLS_WORKLOADS = {"tls-pingpong", "tls-perconn", "tls-pingpong-ctx", "tls-perconn-ctx"}
# Workloads with 40 silent clients, where the stdlib (its accept() stuck in
# a silent client's handshake) serves nobody: a measured 0, not INVALID.
STDLIB_STARVES = {"tls-perconn", "tls-perconn-ctx"}
SILENT_CLIENTS = 40
IMPLS = ("cython", "pure", "stdlib", "c-reference", "c-threaded")
C_IMPLS = ("c-reference", "c-threaded")
# echo_ref.c --threaded (c-threaded) serves stream echo only.
NOT_THREADED = {"udp", "udp-threading", "http-keepalive", "http-keepalive-1"} | TLS_WORKLOADS
TIMEOUT = 600


def require_bench_toolchain() -> None:
    """What building and running the bench needs: a C compiler, OpenSSL's
    headers (the load generator links OpenSSL) and the openssl command."""
    require_c_compiler()
    cc = shlex.split(os.environ.get("CC", "cc")) or ["cc"]
    probe = subprocess.run(
        cc + ["-E", "-x", "c", "-o", os.devnull, "-"], input="#include <openssl/ssl.h>\n", capture_output=True, text=True
    )
    if probe.returncode != 0:
        missing("OpenSSL's headers (<openssl/ssl.h>)", "libssl-dev")
    require_openssl()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FASTSERVER_NO_EXTENSIONS"}
    env.update(extra)
    return env


def fastserver_backend() -> str:
    proc = subprocess.run(
        [sys.executable, "-c", "import fastserver; print(fastserver.backend)"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"fastserver does not import:\n{proc.stderr}"
    return proc.stdout.strip()


def run_bench(args: list[str], json_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json", str(json_path)],
        cwd=REPO,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert json_path.exists(), f"no JSON written (exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}"
    return proc, json.loads(json_path.read_text())


def check_run(workload: str, impl: str, run: dict[str, Any]) -> None:
    where = f"{workload}/{impl}"
    # The bench's own reason (the measured window, connects, errors, how busy
    # the machine was, the server's last stderr line) says why a run is void.
    assert run["count"] > 0 and run["bytes"] > 0, f"{where}: {run.get('invalid_reason')}"
    assert run["valid"] is True and run["mismatches"] == 0, f"{where}: {run['first_mismatch']}"
    assert run["verified"] is True, where
    assert run["errors"] == 0, f"{where}: {run['errors']} errors, first: {run['first_error']}"
    assert run["server_errors"] == 0, f"{where}: server stderr:\n{run['server_stderr_tail']}"
    assert run["server_exit"] == "clean", f"{where}: {run['server_exit']}"
    assert isinstance(run["rss_kb"], int) and run["rss_kb"] > 0, where
    # Sampled by SIGUSR1 (getrusage) in a Python server and c-threaded, from /proc for c-reference.
    assert run["switches_per_request"] >= 0, where
    assert run["switches_voluntary"] >= 0 and run["switches_involuntary"] >= 0, where
    if workload == "pingpong" and impl != "c-reference":
        # 100 handler threads (Python's, or c-threaded's) on one CPU: one blocks in recv() while another runs.
        assert run["switches_voluntary"] > 0, where
    if workload in LATENCY_WORKLOADS:
        assert 0 <= run["p50_us"] <= run["p99_us"], where
    else:
        assert run["p50_us"] is None and run["p99_us"] is None, where
    check_tls(workload, run)


def check_tls(workload: str, run: dict[str, Any]) -> None:
    tls = workload in TLS_WORKLOADS
    assert run["tls"] is tls, workload
    if tls and run["count"]:
        assert run["tls_version"].startswith("TLSv1."), run["tls_version"]
    if workload in STDLIB_STARVES:
        assert run["silent"] == SILENT_CLIENTS == run["silent_open_at_start"], workload
        # fastserver must not close a silent client within a short run (its
        # handshake deadline is 10 s); the stdlib never even accepts them all.
        assert run["silent_closed"] == 0, workload


def check_starved_stdlib(workload: str, row: dict[str, Any]) -> None:
    """The stdlib with silent TLS clients: a rate of 0, reported as such."""
    run = row["runs"][0]
    assert row["status"] == "ok" and run["count"] == 0 and run["valid"] is True, row
    assert "invalid_reason" not in run and "stdlib's accept() blocks" in run["expected_zero"], run
    assert run["errors"] == 0 and run["server_errors"] == 0, run
    assert run["server_exit"] == "clean", f"{workload}: {run['server_exit']}"
    assert row["summary"]["rate"]["median"] == 0
    check_tls(workload, run)


def check_tls_rows(name: str, workload: dict[str, Any], stdout: str) -> None:
    """What the TLS workloads add to a row's checks: no C server, and
    where the stdlib serves nobody, fastserver's ratio says so."""
    for impl in C_IMPLS:
        c_row = workload["rows"].get(impl)
        if c_row is not None:
            assert c_row["status"] == "unavailable" and "speaks no TLS" in c_row["reason"], c_row
    if name in STDLIB_STARVES:
        for impl in ("cython", "pure"):
            row = workload["rows"].get(impl)
            if row and row["status"] == "ok":
                assert row["vs_stdlib"] is None and row["vs_stdlib_base_zero"] == "stdlib", row
        assert "inf (stdlib 0)" in stdout


def test_quick_bench_every_workload_and_impl(tmp_path: Path) -> None:
    require_bench_toolchain()
    cython = fastserver_backend() == "cython"
    proc, doc = run_bench(
        ["--quick", "--duration", "1", "--reps", "1", "--impl", ",".join(IMPLS)], tmp_path / "bench.json"
    )
    for key in ("cpu_model", "cpus", "kernel", "python", "pinning"):
        assert doc["machine"][key], key
    assert list(doc["workloads"]) == list(WORKLOADS)
    for name, workload in doc["workloads"].items():
        assert name in proc.stdout
        assert list(workload["rows"]) == list(IMPLS), name
        if name in TLS_WORKLOADS:
            check_tls_rows(name, workload, proc.stdout)
        for impl, row in workload["rows"].items():
            if impl == "cython" and not cython:
                assert row["status"] == "unavailable" and row["reason"], row
                continue
            if impl == "c-reference" and name in TLS_WORKLOADS:
                continue
            if impl == "c-threaded" and name in NOT_THREADED:
                assert row["status"] == "unavailable" and "echo_ref.c" in row["reason"], row
                continue
            if impl == "stdlib" and name in STDLIB_STARVES:
                check_starved_stdlib(name, row)
                continue
            assert row["status"] == "ok", f"{name}/{impl}: {row.get('failures') or row.get('reason')}"
            assert row["failures"] == [] and len(row["runs"]) == 1, f"{name}/{impl}: {row['failures']}"
            check_run(name, impl, row["runs"][0])
            assert "median" in row["summary"]["rate"]
            assert "vs_stdlib" in row and "vs_c_reference" in row
    stdout_rows = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert set(IMPLS) <= stdout_rows
    # Checked after the rows, whose messages say what went wrong.
    assert doc["mismatches"] == 0 and doc["failed"] == [] and doc["invalid"] == []
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_c_threaded_rows(tmp_path: Path) -> None:
    """c-threaded, the thread-per-connection C server, on the workloads
    whose handlers send per line (pingpong, pipelined) and per read
    (pipelined-coalesce): every reply checks out; it has no row where it
    has no mode (UDP, HTTP, TLS)."""
    require_bench_toolchain()
    served = ("pingpong", "pipelined", "pipelined-coalesce")
    left_out = {"udp": "UDP", "http-keepalive-1": "HTTP", "tls-pingpong": "TLS"}
    proc, doc = run_bench(
        ["--quick", "--reps", "1", "--impl", "c-threaded", "--workload", ",".join([*served, *left_out])],
        tmp_path / "bench.json",
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    for name in served:
        row = doc["workloads"][name]["rows"]["c-threaded"]
        assert row["status"] == "ok" and row["failures"] == [], f"{name}: {row['failures']}"
        run = row["runs"][0]
        check_run(name, "c-threaded", run)
        assert run["backend"] == "c-threaded", run["backend"]
        assert row["summary"]["rate"]["median"] > 0, name
        # The ratio to c-reference needs c-reference's row, which this run leaves out.
        assert row["vs_c_reference"] is None and row["vs_stdlib"] is None, row
    for name, what in left_out.items():
        row = doc["workloads"][name]["rows"]["c-threaded"]
        assert row["status"] == "unavailable" and what in row["reason"], row
        assert row["runs"] == [], row
        assert f"c-threaded  unavailable: {row['reason']}" in proc.stdout


def test_echo_ref_refuses_threaded_without_a_stream(tmp_path: Path) -> None:
    """--threaded serves stream echo only: with --udp or --http echo_ref.c
    stops at once, saying so, rather than serve something else."""
    require_c_compiler()
    built = subprocess.run(
        [sys.executable, "-c", "from bench import build; print(build.binary('echo_ref'))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert built.returncode == 0, built.stderr
    echo_ref = built.stdout.strip()
    for args in (
        ["--udp", "127.0.0.1", "--threaded", "chunks"],
        ["--tcp", "127.0.0.1", "--http", "--threaded", "lines"],
        ["--tcp", "127.0.0.1", "--threaded", "words"],  # neither lines nor chunks
    ):
        argv = [echo_ref, *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and proc.stdout == "", (argv, proc.stdout, proc.stderr)
        assert "--threaded" in proc.stderr, proc.stderr


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def test_user_handler_is_profiled_per_impl(tmp_path: Path) -> None:
    require_bench_toolchain()
    write_module(
        tmp_path,
        "smoke_user_handlers",
        """
        import socketserver

        class ReadlineEcho(socketserver.StreamRequestHandler):
            def handle(self):
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    self.wfile.write(line)
        """,
    )
    prof_dir = tmp_path / "prof"
    proc, doc = run_bench(
        ["--handler", "smoke_user_handlers:ReadlineEcho", "--server", "ThreadingTCPServer", "--verify-echo"]
        + ["--workload", "pingpong", "--impl", "pure", "--impl", "stdlib"]
        + ["--duration", "0.5", "--warmup", "0.2", "--reps", "1", "--profile", f"{prof_dir}/"],
        tmp_path / "bench.json",
        PYTHONPATH=str(tmp_path),
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    rows = doc["workloads"]["pingpong"]["rows"]
    assert list(rows) == ["pure", "stdlib"]
    for impl, row in rows.items():
        assert row["status"] == "ok", row
        check_run("pingpong", impl, row["runs"][0])
        stats = pstats.Stats(str(prof_dir / f"pingpong-{impl}.prof"))
        functions = {(Path(file).name, func) for file, _, func in stats.stats}  # type: ignore[attr-defined]
        # The handler runs in worker threads, so this also proves they were profiled.
        assert ("smoke_user_handlers.py", "handle") in functions, impl
    assert not list(prof_dir.glob("*.rep*.prof")), "per-repetition profiles were not merged"
    assert f"profiles in {prof_dir}/  (compare: python -m pstats {prof_dir}/<workload>-pure.prof)" in proc.stdout


CORRUPTING_HANDLERS = {
    "pingpong": """
        import socketserver

        class Corrupting(socketserver.StreamRequestHandler):
            def handle(self):
                for line in self.rfile:
                    self.wfile.write(b"#" + line[1:])
        """,
    # Right status line and Content-Length, one wrong byte of body.
    "http-keepalive-1": """
        import http.server
        from bench.http_handlers import HTTP_BODY

        class Corrupting(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(HTTP_BODY)))
                self.end_headers()
                self.wfile.write(b"#" + HTTP_BODY[1:])
        """,
}


@pytest.mark.parametrize("workload", sorted(CORRUPTING_HANDLERS))
def test_corrupted_reply_marks_the_run_invalid(tmp_path: Path, workload: str) -> None:
    require_bench_toolchain()
    write_module(tmp_path, "smoke_bad_handlers", CORRUPTING_HANDLERS[workload])
    proc, doc = run_bench(
        ["--handler", "smoke_bad_handlers:Corrupting", "--verify-echo", "--workload", workload, "--impl", "stdlib"]
        + ["--duration", "0.3", "--warmup", "0", "--reps", "1"],
        tmp_path / "bench.json",
        PYTHONPATH=str(tmp_path),
    )
    assert proc.returncode != 0
    assert doc["mismatches"] > 0
    assert doc["workloads"][workload]["rows"]["stdlib"]["runs"][0]["valid"] is False
    assert "INVALID" in proc.stdout


def test_run_without_replies_is_invalid(tmp_path: Path) -> None:
    """A handler that reads but never answers: the run has a rate of 0,
    which must void it (and the command), not count as a slow result."""
    require_bench_toolchain()
    write_module(
        tmp_path,
        "smoke_silent_handlers",
        """
        import socketserver

        class Silent(socketserver.StreamRequestHandler):
            def handle(self):
                for _ in self.rfile:
                    pass
        """,
    )
    proc, doc = run_bench(
        ["--handler", "smoke_silent_handlers:Silent", "--workload", "pingpong", "--impl", "stdlib"]
        + ["--duration", "0.3", "--warmup", "0", "--reps", "1"],
        tmp_path / "bench.json",
        PYTHONPATH=str(tmp_path),
    )
    assert proc.returncode == 1, f"{proc.stdout}\n{proc.stderr}"
    run = doc["workloads"]["pingpong"]["rows"]["stdlib"]["runs"][0]
    assert run["count"] == 0 and run["valid"] is False
    assert run["invalid_reason"].startswith("no replies in the 0.3 s measured window")
    assert doc["invalid"] == ["pingpong/stdlib"] and doc["mismatches"] == 0
    assert "INVALID (no replies in the 0.3 s" in proc.stdout
    assert "pingpong/stdlib" in proc.stderr


def test_tls_workloads_with_ssl_context(tmp_path: Path, impl: Any) -> None:
    """fastserver's ssl_context variants, beside the stdlib's wrapped
    listener, on each backend (the conftest's ``impl``; the bench calls the
    python backend ``pure``): every TLS reply checks out, and with silent
    clients the stdlib serves nobody while fastserver serves."""
    require_bench_toolchain()
    backend = {"cython": "cython", "python": "pure"}[impl.name]
    workloads = ("tls-pingpong-ctx", "tls-perconn-ctx")
    proc, doc = run_bench(
        ["--workload", ",".join(workloads), "--impl", f"{backend},stdlib"]
        + ["--duration", "0.5", "--warmup", "0.3", "--reps", "1"],
        tmp_path / "bench.json",
    )
    assert list(doc["workloads"]) == list(workloads)
    for name, workload in doc["workloads"].items():
        assert name in proc.stdout
        check_tls_rows(name, workload, proc.stdout)
        row = workload["rows"][backend]
        assert row["status"] == "ok" and row["failures"] == [], f"{name}/{backend}: {row['failures']}"
        check_run(name, backend, row["runs"][0])
        if name in STDLIB_STARVES:
            check_starved_stdlib(name, workload["rows"]["stdlib"])
        else:
            check_run(name, "stdlib", workload["rows"]["stdlib"]["runs"][0])
    assert doc["mismatches"] == 0 and doc["failed"] == [] and doc["invalid"] == []
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_instructions_per_request(tmp_path: Path) -> None:
    """--instructions: two counted runs per row (valgrind here: this VM's
    perf has no hardware counter), each stopping after a fixed number of
    answered requests, give the server's instructions per request."""
    require_bench_toolchain()
    require_program("valgrind", "valgrind")
    proc, doc = run_bench(
        ["--instructions", "--instructions-requests", "200", "--workload", "udp", "--impl", "cython,stdlib"]
        + ["--duration", "0.3", "--warmup", "0.1", "--reps", "1"],
        tmp_path / "bench.json",
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    counter = doc["config"]["instructions_counter"]
    assert counter in ("perf", "callgrind")
    assert "instr/req" in proc.stdout and f"counted by {counter}" in proc.stdout
    for impl, row in doc["workloads"]["udp"]["rows"].items():
        if impl == "cython" and fastserver_backend() != "cython":
            assert row["status"] == "unavailable", row
            continue
        assert "instructions_error" not in row, row.get("instructions_error")
        short, long = row["instructions_runs"]
        # The load generator stops once its count is reached, never before.
        assert 200 <= short["requests"] < 600 <= long["requests"], row["instructions_runs"]
        assert long["instructions"] > short["instructions"] > 0, row["instructions_runs"]
        per_request = row["instructions_per_request"]
        # Receiving, dispatching and answering a datagram in CPython takes
        # some 10-40 thousand instructions; the interpreter's start-up, which
        # the difference must cancel, takes hundreds of millions.
        assert 1_000 < per_request < 200_000 < short["instructions"] / 1_000, (impl, per_request)
        assert row["instructions_counter"] == counter


def test_missing_openssl_headers_name_the_package(tmp_path: Path) -> None:
    """A compiler that cannot find <openssl/ssl.h> (here: one pointed at an
    empty system root) stops the bench before any run, naming libssl-dev."""
    require_c_compiler()
    cc = os.environ.get("CC", "cc")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--workload", "tls-pingpong", "--reps", "1", "--duration", "0.2"],
        cwd=REPO,
        env=clean_env(CC=f"{cc} --sysroot={tmp_path}"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 2, f"{proc.stdout}\n{proc.stderr}"
    assert "libssl-dev" in proc.stderr and "tls-pingpong" in proc.stderr, proc.stderr
    assert "== tls-pingpong" not in proc.stdout
