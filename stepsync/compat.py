"""The names of ``wandb_step_fix``, the tool stepsync replaces: change only the import line.

``from wandb_step_fix import safe_wandb_log`` becomes
``from stepsync.compat import safe_wandb_log``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stepsync._config import DEFAULT_PRIORITY, DEFAULT_SOURCE, DEFAULTS
from stepsync._errors import NoActiveRunError
from stepsync._manager import StepManager, get_manager
from stepsync._patch import patch, unpatch
from stepsync._stats import add_alias
from stepsync._warn import warn_no_run

__all__ = [
    "WandBStepManager",
    "finalize_wandb_logging",
    "get_step_manager",
    "patch_wandb_log",
    "safe_wandb_log",
    "unpatch_wandb_log",
    "update_training_step",
]

# The old tool's name of ``wandb_calls``, in every manager's ``get_stats()`` once compat is used.
add_alias("successful_flushes", "wandb_calls")


class WandBStepManager(StepManager):
    """``wandb_step_fix.WandBStepManager``: a ``StepManager`` with the old constructor."""

    def __init__(
        self,
        buffer_size: int = DEFAULTS.buffer_size,
        flush_interval: float = DEFAULTS.flush_interval,
        run: Any = None,
    ) -> None:
        super().__init__(run, buffer_size=buffer_size, flush_interval=flush_interval)


def get_step_manager() -> StepManager:
    """The manager of ``wandb.run`` (``stepsync.get_manager()``)."""
    return get_manager()


def safe_wandb_log(
    data: Mapping[str, Any],
    step: int | None = None,
    source: str = DEFAULT_SOURCE,
    priority: int = DEFAULT_PRIORITY,
) -> None:
    """Log through the manager of ``wandb.run``; with no run, warn once instead of raising."""
    try:
        manager = get_manager()
    except NoActiveRunError:
        warn_no_run("metrics are")
        return
    manager.log(data, step, source=source, priority=priority)


def update_training_step(step: int, source: str = "default") -> None:
    """Set the current training step of ``wandb.run``'s manager."""
    try:
        manager = get_manager()
    except NoActiveRunError:
        warn_no_run("metrics are")
        return
    manager.update_step(step, source=source)


def finalize_wandb_logging() -> None:
    """Commit everything pending for ``wandb.run`` (call before ``wandb.finish()``)."""
    try:
        manager = get_manager()
    except NoActiveRunError:
        return
    manager.finalize()


patch_wandb_log = patch
unpatch_wandb_log = unpatch
