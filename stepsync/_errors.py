"""Exceptions stepsync raises at the call site."""

from __future__ import annotations

from collections.abc import Mapping


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


class RankMismatchError(RuntimeError):
    """The ranks of a group did not enter the same synced step (or one never arrived)."""

    def __init__(self, message: str, step: int, steps: Mapping[int, int] | None = None) -> None:
        super().__init__(message)
        #: The step this rank was exchanging.
        self.step = step
        #: Global rank -> the step it was exchanging; None when a rank never arrived.
        self.steps = dict(steps) if steps is not None else None
