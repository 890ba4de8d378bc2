"""Objects for the command-line tests: things ``fastserver run`` must
refuse, and --signal-handler functions."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

log = logging.getLogger("cli_app")


class NotAHandler:
    """A class, but not a request handler."""

    def __init__(self, *args: Any) -> None:
        pass


def not_a_class(*args: Any) -> None:
    """A function where a handler class belongs."""


NOT_CALLABLE = 42


def report_signal(signum: int, server: Any) -> None:
    """--signal-handler: one log line per signal, from the worker."""
    log.warning("%s in pid %d, server %s", signal.Signals(signum).name,
                os.getpid(), type(server).__name__)


def failing_signal(signum: int, server: Any) -> None:
    raise RuntimeError("this --signal-handler fails")
