"""Exceptions stepsync raises at the call site."""

from __future__ import annotations


class LateStepError(ValueError):
    """A value arrived for a step that is already committed, under ``late="raise"``."""

    def __init__(self, step: int, committed_through: int) -> None:
        self.step = step
        self.committed_through = committed_through
        super().__init__(
            f"stepsync: step {step} is already committed (committed through step "
            f"{committed_through}); late='raise' refuses late data"
        )


class NoActiveRunError(RuntimeError):
    """There is no wandb run to log to: call ``wandb.init()`` first or pass ``run=``."""
