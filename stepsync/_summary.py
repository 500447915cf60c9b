"""Keep each key's summary at its newest logical step, whatever late rows do.

wandb-core's summary is the last value written per key, in record order, so a late row would
become the run's result. After a late row, stepsync writes back what it overwrote. Keys with a
user ``summary=`` are aggregated by wandb-core over every row (the late value rightly takes part
in min, max, mean), but wandb-core stops aggregating a key once its summary is written (measured,
wandb 0.31): so a ``last`` among those options is put right only at ``finish()``, after the last
row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stepsync import _wandb
from stepsync._metrics import MetricDefinitions

logger = logging.getLogger("stepsync")


@dataclass
class Overwritten:
    """What a late row is about to overwrite: the summary values that must stay."""

    now: dict[str, Any] = field(default_factory=dict)  # default summary: written back at once
    at_finish: dict[str, Any] = field(default_factory=dict)  # a user `last`: fixed at finish


class SummaryKeeper:
    """The newest logical step of every key of one run, and the summary fixes late rows need."""

    def __init__(self, run: Any, metrics: MetricDefinitions) -> None:
        self._run = run
        self._metrics = metrics
        self._newest: dict[str, int] = {}
        self._last_fixes: dict[str, Any] = {}

    def before_late_row(self, step: int, row: Mapping[str, Any]) -> Overwritten | None:
        """Read the summary a late row of ``step`` will overwrite (one round trip), if needed."""
        newest = self._newest
        stale = [k for k in row if newest.get(k, -1) > step and not k.startswith("_")]
        if not stale:
            return None
        try:
            summary = _wandb.read_summary(self._run)
        except Exception:
            logger.exception("stepsync: could not read the summary before a late row")
            return None
        overwritten = Overwritten()
        for key in stale:
            if key not in summary:
                continue
            options = self._metrics.summary_of(key)
            if not options:
                overwritten.now[key] = summary[key]
            elif "last" in options and isinstance(summary[key], Mapping):
                overwritten.at_finish[key] = summary[key].get("last")
        return overwritten

    def after_row(
        self, step: int, row: Mapping[str, Any], late: bool, overwritten: Overwritten | None
    ) -> None:
        """Note the row's keys at ``step``; write back what a late row overwrote."""
        newest = self._newest
        if not late:
            newest.update(dict.fromkeys(row, step))
        else:
            newer = [key for key in row if newest.get(key, -1) <= step]
            newest.update(dict.fromkeys(newer, step))
        if self._last_fixes:
            for key in row:
                if newest[key] == step:  # this row is the key's newest: its `last` is right
                    self._last_fixes.pop(key, None)
        if overwritten is None:
            return
        for key, value in overwritten.at_finish.items():
            self._last_fixes.setdefault(key, value)
        if overwritten.now:
            keys = overwritten.now.keys()
            try:
                _wandb.write_summary(self._run, overwritten.now)
            except Exception:
                logger.exception("stepsync: could not restore the summary of %s", list(keys))

    def at_finish(self) -> None:
        """Put the user's ``summary="...,last"`` keys back at their newest logical step."""
        if not self._last_fixes:
            return
        fixes, self._last_fixes = self._last_fixes, {}
        try:
            summary = _wandb.read_summary(self._run)
            values = {
                key: {**summary[key], "last": last}
                for key, last in fixes.items()
                if isinstance(summary.get(key), Mapping)
            }
            _wandb.write_summary(self._run, values)
        except Exception:
            logger.exception("stepsync: could not restore the summary of %s", sorted(fixes))
