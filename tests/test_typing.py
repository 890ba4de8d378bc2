"""The public API's annotations hold up under mypy --strict, and the sample
that exercises them also runs: its stream and datagram handlers both serve a
request, and an assertion that fails in a handler thread fails the test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import Impl, backend_env

SAMPLE = Path(__file__).parent / "scripts" / "typed_server.py"


def test_sample_server_is_clean_under_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(SAMPLE)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_sample_server_runs(impl: Impl) -> None:
    result = subprocess.run([sys.executable, str(SAMPLE)], env=backend_env(impl.name),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
