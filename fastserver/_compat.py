"""The one place that chooses fastserver's core implementation.

There are two cores with one interface (``fastserver/_contract.py``): the Cython extension ``fastserver._core`` (backend ``"cython"``) and
the pure-Python ``fastserver._pure`` (backend ``"python"``).

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
from typing import TYPE_CHECKING, Dict, Optional

#: The backend names, each with the module that implements it.
_MODULES = {"cython": "fastserver._core", "python": "fastserver._pure"}
BACKENDS = tuple(_MODULES)

_loaded: Dict[str, ModuleType] = {}


def _gil_disabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return is_enabled is not None and not is_enabled()


def _pure_reason() -> Optional[str]:
    """Why the process default must be the pure core, or None."""
    flag = os.environ.get("FASTSERVER_NO_EXTENSIONS", "")
    if flag not in ("", "0"):
        return "FASTSERVER_NO_EXTENSIONS=%s" % flag
    if platform.python_implementation() != "CPython":
        return "%s is not CPython" % platform.python_implementation()
    if _gil_disabled():
        return "the interpreter runs without the GIL"
    return None


def load_core(name: Optional[str]) -> ModuleType:
    """The core module for a backend name; None gives the process default.

    Raises ValueError for a name that is not a backend, and ImportError when
    the Cython core is asked for by name but cannot be imported.
    """
    if name is None:
        return default_core
    module = _loaded.get(name)
    if module is not None:
        return module
    if name not in _MODULES:
        raise ValueError("backend must be one of %s or None, not %r"
                         % (", ".join(repr(n) for n in BACKENDS), name))
    try:
        module = importlib.import_module(_MODULES[name])
    except ImportError as exc:
        raise ImportError(
            "the %r backend is not available: %s (build the extension with "
            "'pip install -e .', or use backend = 'python')" % (name, exc)) from exc
    _loaded[name] = module
    return module


if TYPE_CHECKING:
    from . import _pure as default_core

    backend: str
else:
    if _pure_reason() is None:
        try:
            default_core = load_core("cython")
        except ImportError:
            default_core = load_core("python")
    else:
        default_core = load_core("python")
    #: The process default backend's name.
    backend = default_core.BACKEND

__all__ = ["BACKENDS", "backend", "default_core", "load_core"]
