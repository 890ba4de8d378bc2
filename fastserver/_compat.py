"""The one place that chooses fastserver's core implementation.

The Cython extension ``fastserver._core`` is used unless:

- ``FASTSERVER_NO_EXTENSIONS`` is set to a non-empty value other than ``0``;
- the interpreter is not CPython;
- the extension cannot be imported (for example a source checkout that was
  never built).

In each of those cases the pure-Python ``fastserver._pure`` is used. Both
implement the same interface; see ``fastserver/_pure.py``.
"""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING


def _pure_requested() -> bool:
    flag = os.environ.get("FASTSERVER_NO_EXTENSIONS", "")
    return flag not in ("", "0") or platform.python_implementation() != "CPython"


if TYPE_CHECKING:
    from . import _pure as core

    backend: str
elif _pure_requested():
    from . import _pure as core

    backend = "python"
else:
    try:
        from . import _core as core
    except ImportError:
        from . import _pure as core

        backend = "python"
    else:
        backend = "cython"

__all__ = ["core", "backend"]
