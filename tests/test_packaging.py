"""The checkout's packaging: a license that ships, a description that
reads on PyPI, Cython asked for only when the extension is compiled, one
version."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

import fastserver

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not (ROOT / "pyproject.toml").exists(),
    reason="run away from the checkout (an installed wheel): no packaging files here")


def build_backend() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fastserver_build", ROOT / "build_backend" / "fastserver_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_license_is_mit_and_shipped() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
    assert re.search(r"^include .*\bLICENSE\b", (ROOT / "MANIFEST.in").read_text(), re.M)


def test_readme_links_are_absolute() -> None:
    """The README is the PyPI description, where relative links break."""
    links = re.findall(r"\]\(([^)]+)\)", (ROOT / "README.md").read_text())
    assert links
    assert [link for link in links if not link.startswith(("https://", "http://", "#"))] == []


def test_cython_only_when_the_extension_is_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = build_backend()
    monkeypatch.setenv("FASTSERVER_NO_EXTENSIONS", "1")
    assert backend.cython_requirements() == []
    monkeypatch.setenv("FASTSERVER_NO_EXTENSIONS", "0")
    assert backend.cython_requirements() == [backend.CYTHON]
    monkeypatch.delenv("FASTSERVER_NO_EXTENSIONS")
    # A checkout has no PKG-INFO: its .pyx must be compiled by Cython.
    assert not (ROOT / "PKG-INFO").exists()
    assert backend.cython_requirements() == [backend.CYTHON]
    pyproject = (ROOT / "pyproject.toml").read_text()
    requires = re.search(r"^requires = (.*)$", pyproject, re.M)
    assert requires is not None and "Cython" not in requires.group(1)
    assert backend.CYTHON.split(">")[0] == "Cython"


def test_version_comes_from_one_place() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "fastserver.__version__" }' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+", fastserver.__version__)
    assert "fastserver.__version__" in (ROOT / "docs" / "conf.py").read_text()
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert "## [%s]" % fastserver.__version__ in changelog


def test_classifiers_name_the_tested_pythons() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    classified = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    built = re.findall(r"cp3(\d+)-\*", re.search(r'^build = "(.*)"', pyproject, re.M).group(1))  # type: ignore[union-attr]
    assert classified == ["3.%s" % minor for minor in built]
