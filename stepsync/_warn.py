"""stepsync's logger, and warnings shown once per process (a training loop repeats them)."""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger("stepsync")

_lock = threading.Lock()
_shown: set[str] = set()


def warn_once(
    key: str,
    message: str,
    *args: Any,
    exc_info: bool = False,
    log: logging.Logger = logger,
) -> None:
    """Log ``message`` at WARNING the first time ``key`` is seen (ERROR with ``exc_info``)."""
    with _lock:
        if key in _shown:
            return
        _shown.add(key)
    if exc_info:
        log.exception(message, *args)
    else:
        log.warning(message, *args)


def warn_no_run(what: str) -> None:
    """There is no wandb run to log to: say so once, and what is not logged."""
    warn_once(
        f"no-run:{what}", "stepsync: no wandb run to log to; %s not logged (shown once)", what
    )


def reset() -> None:
    """Show every warning again (for tests)."""
    with _lock:
        _shown.clear()
