"""fastserver's PEP 517 build backend: setuptools, plus Cython only when needed.

pyproject.toml's static ``requires`` lists setuptools alone; this backend
adds Cython to the build requirements when the build will compile the
extension from its Cython sources. So ``FASTSERVER_NO_EXTENSIONS=1 pip
install .`` (the pure package) never downloads Cython, and neither does
building from an sdist, which carries the C that Cython generated
(``setup.py`` compiles that when Cython is absent).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (every other hook)

CYTHON = "Cython>=3.0.10,<3.4"

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pure_requested() -> bool:
    return os.environ.get("FASTSERVER_NO_EXTENSIONS", "") not in ("", "0")


def _from_sdist() -> bool:
    # Only an sdist has PKG-INFO at its root (a checkout never does), and
    # only an sdist's fastserver/_core.c is known to match its _core.pyx.
    return (os.path.exists(os.path.join(_HERE, "PKG-INFO"))
            and os.path.exists(os.path.join(_HERE, "fastserver", "_core.c")))


def cython_requirements() -> List[str]:
    """[CYTHON] when this build compiles the extension from .pyx sources."""
    if _pure_requested() or _from_sdist():
        return []
    return [CYTHON]


def get_requires_for_build_wheel(
        config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    requires: List[str] = _setuptools.get_requires_for_build_wheel(config_settings)
    return requires + cython_requirements()


def get_requires_for_build_editable(
        config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    requires: List[str] = _setuptools.get_requires_for_build_editable(config_settings)
    return requires + cython_requirements()


def get_requires_for_build_sdist(
        config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    # An sdist ships the generated C, so making one runs Cython.
    requires: List[str] = _setuptools.get_requires_for_build_sdist(config_settings)
    return requires + cython_requirements()
