"""The one place that chooses fastserver's core implementation.

There are two cores with one interface (``fastserver/_contract.py``): the
Cython extension ``fastserver._core`` (backend ``"cython"``) and the
pure-Python ``fastserver._pure`` (backend ``"python"``).

Each server picks its core when it is constructed, from its ``backend``
class attribute: ``"cython"`` or ``"python"`` pins that core, ``None`` (the
default) takes the process default. The process default, ``backend``
here and ``fastserver.backend``, is the Cython core unless:

- ``FASTSERVER_NO_EXTENSIONS`` is set to a non-empty value other than ``0``;
- the interpreter is not CPython;
- the interpreter runs without the GIL (free-threaded CPython): importing
  the extension would turn the GIL back on for the whole process, and the
  C core relies on it (see ``_core.pxd``);
- the extension cannot be imported (for example a source checkout that was
  never built).

Two servers pinned to different cores run side by side in one process.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Optional

#: The backend names, each with the module that implements it.
_MODULES = {"cython": "fastserver._core", "python": "fastserver._pure"}
BACKENDS = tuple(_MODULES)


def _gil_disabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_enabled is not None and not is_enabled()


def _pure_by_default() -> bool:
    flag = os.environ.get("FASTSERVER_NO_EXTENSIONS", "")
    return (flag not in ("", "0")
            or platform.python_implementation() != "CPython"
            or _gil_disabled())


def load_core(name: Optional[str]) -> ModuleType:
    """The core module for a backend name; None gives the process default.

    Raises ValueError for a name that is not a backend, and ImportError when
    the Cython core is asked for by name but cannot be imported.
    """
    if name is None:
        return default_core
    if name not in _MODULES:
        raise ValueError("backend must be one of %s or None, not %r"
                         % (", ".join(repr(n) for n in BACKENDS), name))
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as exc:
        raise ImportError(
            "the %r backend is not available: %s (build the extension with "
            "'pip install -e .', or use backend = 'python')" % (name, exc)) from exc


if TYPE_CHECKING:
    from . import _pure as default_core

    backend: str
else:
    if not _pure_by_default():
        try:
            default_core = load_core("cython")
        except ImportError:
            default_core = load_core("python")
    else:
        default_core = load_core("python")
    #: The process default backend's name.
    backend = default_core.BACKEND

__all__ = ["BACKENDS", "backend", "default_core", "load_core"]
