"""The names of ``wandb_step_fix``, the tool stepsync replaces: change only the import line.

``from wandb_step_fix import safe_wandb_log`` becomes
``from stepsync.compat import safe_wandb_log``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stepsync._errors import NoActiveRunError
from stepsync._manager import StepManager
from stepsync._patch import patch, unpatch
from stepsync._registry import get_manager

logger = logging.getLogger("stepsync")

__all__ = [
    "WandBStepManager",
    "finalize_wandb_logging",
    "get_step_manager",
    "patch_wandb_log",
    "safe_wandb_log",
    "unpatch_wandb_log",
    "update_training_step",
]


class WandBStepManager(StepManager):
    """``wandb_step_fix.WandBStepManager``: a ``StepManager`` with the old constructor."""

    def __init__(
        self, buffer_size: int = 100, flush_interval: float = 2.0, run: Any = None
    ) -> None:
        super().__init__(run, buffer_size=buffer_size, flush_interval=flush_interval)


def get_step_manager() -> StepManager:
    """The manager of ``wandb.run`` (``stepsync.get_manager()``)."""
    return get_manager()


def safe_wandb_log(
    data: Mapping[str, Any],
    step: int | None = None,
    source: str = "default",
    priority: int = 5,
) -> None:
    """Log through the manager of ``wandb.run``; with no run, warn once instead of raising."""
    try:
        manager = get_manager()
    except NoActiveRunError:
        _warn_no_run()
        return
    manager.log(data, step, source=source, priority=priority)


def update_training_step(step: int, source: str = "default") -> None:
    """Set the current training step of ``wandb.run``'s manager."""
    try:
        manager = get_manager()
    except NoActiveRunError:
        _warn_no_run()
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

_warned = False


def _warn_no_run() -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning("stepsync: no active wandb run; metrics are not logged (shown once)")
