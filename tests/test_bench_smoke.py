"""Smoke tests for bench/: every workload runs briefly against every impl and
every reply checks out.  They never assert anything about speed.

They need a C compiler (the bench builds its load generator): without one
they skip, naming the package, or fail under FASTSERVER_REQUIRE_EXTERNALS=1
(see tests/externals.py).
"""
from __future__ import annotations

import json
import os
import pstats
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from externals import require_c_compiler

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
)
LATENCY_WORKLOADS = {"pingpong", "perconn", "udp", "udp-threading", "unix", "http-keepalive", "http-keepalive-1"}
IMPLS = ("cython", "pure", "stdlib", "c-reference")
TIMEOUT = 600


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
    if workload in LATENCY_WORKLOADS:
        assert 0 <= run["p50_us"] <= run["p99_us"], where
    else:
        assert run["p50_us"] is None and run["p99_us"] is None, where


def test_quick_bench_every_workload_and_impl(tmp_path: Path) -> None:
    require_c_compiler()
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
        for impl, row in workload["rows"].items():
            if impl == "cython" and not cython:
                assert row["status"] == "unavailable" and row["reason"], row
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


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def test_user_handler_is_profiled_per_impl(tmp_path: Path) -> None:
    require_c_compiler()
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
    require_c_compiler()
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
    require_c_compiler()
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
