"""The late policy: what happens to a value for a step whose row is already written."""

from __future__ import annotations

import logging

from stepsync._config import LatePolicy
from stepsync._errors import LateStepError
from stepsync._merge import Entry
from stepsync._stats import Stats

logger = logging.getLogger("stepsync")


class LateData:
    """Applies one run's late policy. Called with the manager's lock held.

    ``axis``: the value still goes to its step (a late row, README "The rules"). ``next``: it
    joins the next row written. ``drop``: it is counted and reported at ``finalize()``.
    ``raise``: the call raises ``LateStepError``.
    """

    def __init__(self, policy: LatePolicy, stats: Stats) -> None:
        self._policy = policy
        self._stats = stats
        self.reset()

    def reset(self) -> None:
        """Forget the entries held for the next row and the drops not yet reported."""
        self._next: list[Entry] = []
        self._dropped_steps: tuple[int, int] | None = None
        self._reported = 0

    def accept(self, step: int, entry: Entry, source: str, committed_through: int) -> bool:
        """A value for ``step`` came after its row was written: True when it still goes there."""
        stats = self._stats
        stats.late_logs += 1
        if self._policy == "axis":
            return True
        if self._policy == "next":
            stats.step_conflicts += 1
            self._next.append(entry)
        elif self._policy == "drop":
            stats.dropped_logs += 1
            stats.dropped_values += len(entry[1])
            low, high = self._dropped_steps or (step, step)
            self._dropped_steps = (min(low, step), max(high, step))
            logger.debug("stepsync: dropped late data from %s for step %d", source, step)
        else:
            stats.refused_logs += 1
            raise LateStepError(step, committed_through)
        return False

    def take_next(self) -> list[Entry]:
        """The entries held for the next row (``late="next"``), removed."""
        entries, self._next = self._next, []
        return entries

    @property
    def waiting(self) -> int:
        """How many entries wait for the next row."""
        return len(self._next)

    def report_drops(self) -> None:
        """Warn about the calls ``late="drop"`` dropped since the last report."""
        dropped = self._stats.dropped_logs
        if dropped <= self._reported or self._dropped_steps is None:
            return
        self._reported = dropped
        low, high = self._dropped_steps
        logger.warning(
            "stepsync: late='drop' dropped %d late log calls (%d values) for steps %d..%d",
            dropped,
            self._stats.dropped_values,
            low,
            high,
        )
