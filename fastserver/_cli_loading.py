"""The command line's errors, its number types, and how it imports the
user's objects.

``python -m fastserver run`` reports every problem as one line naming what
is wrong, with exit status 2 for a usage error (the command line asks for
something impossible) and 1 for the environment (the user's module fails
to import, the address cannot be bound). This module holds the two error
classes and the import of ``MODULE:NAME`` targets, which turns a failure
inside the user's module into that module's own traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socketserver
import sys
import traceback
from typing import Any, Optional

from . import handlers

__all__ = ["UsageError", "SetupError", "ImportFailed", "load_object",
           "positive_float", "non_negative_float",
           "load_handler", "handler_kind"]


class UsageError(ValueError):
    """The command line is wrong: exit status 2, with run's usage."""

    exit_status = 2


class SetupError(Exception):
    """The command line is fine but the environment is not: exit status 1."""

    exit_status = 1


class ImportFailed(SetupError):
    """The user's module raised while it was imported.

    ``details`` is its traceback, cut down to the frames of the user's
    code (the import machinery and the command line's own frames left
    out), ready to print above the one-line error.
    """

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details


# Frames from these files are the machinery between the command line and
# the user's module: they say nothing about what is wrong in it.
_OWN_FILES = {os.path.abspath(__file__),
              os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli.py")}
_IMPORTLIB_DIR = os.path.dirname(os.path.abspath(importlib.__file__))


def _is_machinery(filename: str) -> bool:
    if filename.startswith("<frozen importlib"):
        return True
    path = os.path.abspath(filename)
    return path in _OWN_FILES or os.path.dirname(path) == _IMPORTLIB_DIR


def user_traceback(exc: BaseException) -> str:
    """exc's traceback with only the user's frames."""
    shown = traceback.TracebackException.from_exception(exc)
    shown.stack = traceback.StackSummary.from_list(
        [frame for frame in shown.stack if not _is_machinery(frame.filename)])
    return "".join(shown.format())


def _is_module_or_parent(missing: Optional[str], module_name: str) -> bool:
    if not missing:
        return False
    return missing == module_name or module_name.startswith(missing + ".")


def import_module(module_name: str, spec: str) -> Any:
    """Import module_name (named on the command line in spec), turning
    every failure into a UsageError or an ImportFailed."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        # As ``python -m`` does: the user's modules sit where they run it.
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _is_module_or_parent(exc.name, module_name):
            raise UsageError(
                "%s: no module named %r (the current directory is on "
                "sys.path; set PYTHONPATH for others)" % (spec, exc.name)) from None
        raise ImportFailed(
            "module %r could not be imported: it imports %r, which is not "
            "installed" % (module_name, exc.name), user_traceback(exc)) from None
    except Exception as exc:
        raise ImportFailed(
            "module %r raised %s while it was imported (traceback above)"
            % (module_name, type(exc).__name__), user_traceback(exc)) from None


def load_object(spec: str) -> Any:
    """Import MODULE:ATTR (ATTR may be dotted) and return the attribute."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError("expected MODULE:NAME, got %r" % (spec,))
    obj: Any = import_module(module_name, spec)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError("%s: %r has no attribute %r"
                             % (spec, getattr(obj, "__name__", obj), part)) from None
    return obj


_HANDLER_BASES = (handlers.BaseRequestHandler, socketserver.BaseRequestHandler)
_STREAM_HANDLERS = (handlers.StreamRequestHandler, socketserver.StreamRequestHandler)
_DATAGRAM_HANDLERS = (handlers.DatagramRequestHandler,
                      socketserver.DatagramRequestHandler)


def load_handler(spec: str) -> type:
    """The request handler class that spec names; a UsageError for
    anything else (a function, an instance, an unrelated class)."""
    handler = load_object(spec)
    if not isinstance(handler, type):
        raise UsageError("%s is %s, not a request handler class"
                         % (spec, _describe(handler)))
    if not issubclass(handler, _HANDLER_BASES):
        raise UsageError(
            "%s is not a request handler class: %s does not derive from "
            "BaseRequestHandler (or StreamRequestHandler, "
            "DatagramRequestHandler)" % (spec, handler.__name__))
    return handler


def _describe(obj: Any) -> str:
    if callable(obj):
        return "a %s" % type(obj).__name__
    return "a %s instance" % type(obj).__name__


def handler_kind(handler: type) -> Optional[str]:
    """"stream", "datagram", or None for a handler that takes either
    (a BaseRequestHandler that uses self.request itself)."""
    if issubclass(handler, _STREAM_HANDLERS):
        return "stream"
    if issubclass(handler, _DATAGRAM_HANDLERS):
        return "datagram"
    return None


# --- argument types -------------------------------------------------------

def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % (text,))
    if not value >= 0:
        raise argparse.ArgumentTypeError("must not be negative, got %r" % (text,))
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be positive, got %r" % (text,))
    return value
