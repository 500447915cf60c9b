"""Keep each key's summary at its newest logical step, whatever late rows do.

wandb-core's summary is the last value written per key, in record order, so a late row would
become the run's result. After a late row, stepsync writes back what it overwrote, leaf by leaf
(nested keys by their dotted names, as wandb's definitions see them). Keys with a user
``summary=`` are aggregated by wandb-core over every row (the late value rightly takes part in
min, max, mean), but wandb-core stops aggregating a key once its summary is written (measured,
wandb 0.31): so a ``last`` among those options is put right only at ``finish()``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stepsync import _wandb
from stepsync._metrics import MetricDefinitions, flat_items

logger = logging.getLogger("stepsync")

#: A summary entry by its path: ``("train", "loss")`` is the nested key ``train.loss``.
Path = tuple[str, ...]


@dataclass
class Overwritten:
    """What a late row is about to overwrite: the summary values that must stay."""

    now: dict[Path, Any] = field(default_factory=dict)  # default summary: written back at once
    at_finish: dict[Path, Any] = field(default_factory=dict)  # a user `last`: fixed at finish


class SummaryKeeper:
    """The newest logical step of every key of one run, and the summary fixes late rows need."""

    def __init__(self, run: Any, metrics: MetricDefinitions) -> None:
        self._run = run
        self._metrics = metrics
        self._newest: dict[str, int] = {}  # dotted key -> newest logical step committed
        self._last_fixes: dict[Path, Any] = {}

    def before_late_row(self, step: int, row: Mapping[str, Any]) -> Overwritten | None:
        """Read the summary a late row of ``step`` will overwrite (one round trip), if needed."""
        newest = self._newest
        stale = [
            key
            for key, _ in flat_items(row)
            if newest.get(key, -1) > step and not key.startswith("_")
        ]
        if not stale:
            return None
        try:
            summary = _wandb.read_summary(self._run)
        except Exception:
            logger.exception("stepsync: could not read the summary before a late row")
            return None
        overwritten = Overwritten()
        for key in stale:
            path = tuple(key.split("."))
            found, value = _lookup(summary, path)
            if not found:
                continue
            options = self._metrics.summary_of(key)
            if not options:
                overwritten.now[path] = value
            elif "last" in options and isinstance(value, Mapping):
                overwritten.at_finish[path] = value.get("last")
        return overwritten

    def after_row(
        self, step: int, row: Mapping[str, Any], late: bool, overwritten: Overwritten | None
    ) -> None:
        """Note the row's keys at ``step``; write back what a late row overwrote."""
        newest = self._newest
        if dict in map(type, row.values()):
            keys: Iterable[str] = [key for key, _ in flat_items(row)]
        else:
            keys = row  # flat: the keys are the leaves (the common case, once per step)
        if late:
            keys = [key for key in keys if newest.get(key, -1) <= step]
        newest.update(dict.fromkeys(keys, step))
        if self._last_fixes:
            for key in keys:  # this row is the key's newest: its `last` is right
                self._last_fixes.pop(tuple(key.split(".")), None)
        if overwritten is None:
            return
        for path, value in overwritten.at_finish.items():
            self._last_fixes.setdefault(path, value)
        self._write(overwritten.now)

    def at_finish(self) -> None:
        """Put the user's ``summary="...,last"`` keys back at their newest logical step."""
        if not self._last_fixes:
            return
        fixes, self._last_fixes = self._last_fixes, {}
        try:
            summary = _wandb.read_summary(self._run)
        except Exception:
            logger.exception("stepsync: could not read the summary at finish")
            return
        values = {}
        for path, last in fixes.items():
            found, aggregate = _lookup(summary, path)
            if found and isinstance(aggregate, Mapping):
                # the whole aggregate: writing only its `last` would drop the others (measured)
                values[path] = {**aggregate, "last": last}
        self._write(values)

    def _write(self, values: dict[Path, Any]) -> None:
        if not values:
            return
        try:
            _wandb.write_summary(self._run, values)
        except Exception:
            logger.exception("stepsync: could not restore the summary of %s", list(values))


def _lookup(summary: Mapping[str, Any], path: Path) -> tuple[bool, Any]:
    node: Any = summary
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node
