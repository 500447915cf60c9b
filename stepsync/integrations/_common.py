"""What every framework integration shares: whether integrations act, and the step they follow."""

from __future__ import annotations

import logging
import sys
from typing import Any

from stepsync._warn import warn_once as _warn_once

logger = logging.getLogger("stepsync.integrations")

#: What an integration's ``install(module)`` put in place: ``(owner, attribute, wrapt handle)``.
Installed = list[tuple[Any, str, Any]]

_patched = False


def set_patched(patched: bool) -> None:
    """``stepsync.patch()`` and ``unpatch()`` say so: integrations act only in between."""
    global _patched
    _patched = patched


def enabled() -> bool:
    """True when wandb is imported and stepsync is patched: only then do integrations act."""
    return _patched and "wandb" in sys.modules


def active_run() -> Any:
    """``wandb.run`` (the run ``wandb.log`` writes to) when integrations act, else None."""
    if not enabled():
        return None
    return getattr(sys.modules["wandb"], "run", None)


def follow(run: Any, step: int, source: str) -> None:
    """Make ``step`` the current step of ``run``'s manager, never raising into training."""
    try:
        from stepsync._manager import get_manager  # wandb is imported: the run exists

        get_manager(run).update_step(step, source=source)
    except Exception as exc:
        warn_once(f"update_step:{source}", exc)


def warn_once(key: str, exc: BaseException) -> None:
    """Log a failed integration step once per ``key``; training goes on without the integration."""
    _warn_once(
        f"integration:{key}",
        "stepsync: framework integration step %r failed (%s: %s); training continues, "
        "values from this framework follow plain wandb step rules",
        key,
        type(exc).__name__,
        exc,
        log=logger,
    )
