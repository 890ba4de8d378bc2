"""tests/externals.py: a missing external program skips a test with the
package to install, or fails it under FASTSERVER_REQUIRE_EXTERNALS=1."""

from __future__ import annotations

import pytest

import externals


def test_missing_program_skips_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(externals.REQUIRE_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        externals.require_program("fastserver-no-such-program", "no-such-package")
    assert "apt-get install no-such-package" in str(skipped.value)


def test_missing_program_fails_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(externals.REQUIRE_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        externals.require_program("fastserver-no-such-program", "no-such-package")
    assert "no-such-package" in str(failed.value)
    assert externals.REQUIRE_VARIABLE in str(failed.value)


def test_missing_compiler_names_gcc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(externals.REQUIRE_VARIABLE, raising=False)
    monkeypatch.setenv("CC", "fastserver-no-such-cc -O2")
    with pytest.raises(pytest.skip.Exception) as skipped:
        externals.require_c_compiler()
    assert "fastserver-no-such-cc" in str(skipped.value)
    assert "apt-get install gcc" in str(skipped.value)


def test_present_program_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(externals.REQUIRE_VARIABLE, "1")
    assert externals.require_program("sh", "dash").endswith("/sh")
