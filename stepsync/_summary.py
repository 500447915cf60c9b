"""Keep each key's summary at its newest logical step, whatever late rows do.

wandb-core's summary is the last value written per key, in record order, so a late row would
become the run's result. stepsync remembers each key's value at its newest logical step (nested
keys by their dotted names, as wandb's definitions see them) and writes back what late rows
overwrote: before user code reads ``run.summary``, at ``flush()``, on the idle timer's tick and at
``finish()``, one summary update each time, never a round trip per late row. Keys with a user
``summary=`` are aggregated by wandb-core over every row (the late value rightly takes part in
min, max, mean), but wandb-core stops aggregating a key once its summary is written (measured,
wandb 0.31): so a ``last`` among those options is put right only at ``finish()``. wandb < 0.18
stops writing nested keys into the summary once a metric is defined: when stepsync's axis
declarations are the run's only ones, the keeper writes those keys back too; and it skips a
row's value equal to the key's previous row, so a key written back once is written back again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from wandb.util import json_dumps_safer_history

from stepsync import _wandb
from stepsync._capture import is_wandb_object
from stepsync._metrics import Leaf, MetricDefinitions, dotted, leaves

logger = logging.getLogger("stepsync")

#: Values the summary holds as they are.
_SCALARS = (int, float, str, bool, type(None))


class SummaryKeeper:
    """The newest logical step and value of every key of one run, and the keys to put back."""

    def __init__(self, run: Any, metrics: MetricDefinitions) -> None:
        self._run = run
        self._metrics = metrics
        self._newest_step: dict[Leaf, int] = {}  # leaf -> newest logical step committed
        self._newest_value: dict[Leaf, Any] = {}  # leaf -> its value there
        # The leaves of the last row written in order, and its step. A training loop writes the
        # same leaves every step: then only their step changes, and it is written into
        # `_newest_step` once, when the leaves change or a late row needs the steps.
        self._group: frozenset[Leaf] = frozenset()
        self._group_step = -1
        self._stale: set[Leaf] = set()  # leaves a late row overwrote: written back at `restore()`
        self._last_fixes: set[Leaf] = set()  # leaves with a user `last`: written back at finish
        # wandb < 0.18: leaves written back once, whose later rows may not reach the summary
        self._written_back: set[Leaf] = set()

    def after_row(self, step: int, row: Mapping[str, Any], late: bool, nested: bool) -> None:
        """Note a committed row; a late one marks the keys whose summary it overwrote.

        ``nested``: the row may hold nested dicts; a flat row's keys are its leaves.
        """
        values: Mapping[Any, Any] = dict(leaves(row)) if nested else row
        if late:
            self._fold_group()
            newest = self._newest_step
            overwritten = [key for key in values if newest.get(key, -1) > step]
            if overwritten:
                self._mark_stale(overwritten)
                values = {key: value for key, value in values.items() if key not in overwritten}
            newest.update(dict.fromkeys(values, step))
        else:
            if self._stale or self._last_fixes:  # a newer row writes these summaries itself
                self._stale.difference_update(values)
                self._last_fixes.difference_update(values)
            if values.keys() != self._group:
                self._fold_group()
                self._group = frozenset(values)
            self._group_step = step
        if self._written_back:  # wandb < 0.18 may skip the row's value: written back again
            self._stale.update(self._written_back.intersection(values))
        self._newest_value.update(values)
        if (
            nested
            and _wandb.DEFINITIONS_HIDE_NESTED_SUMMARIES
            and self._metrics.only_stepsync_defines()
        ):
            # wandb < 0.18 no longer writes nested keys into the summary: it is written back
            self._mark_stale([key for key in values if isinstance(key, tuple)])

    def _fold_group(self) -> None:
        """Write the step of the last row's leaves into ``_newest_step``; start a new group."""
        self._newest_step.update(dict.fromkeys(self._group, self._group_step))
        self._group = frozenset()

    def restore(self) -> None:
        """Write back the summaries late rows overwrote: each key's value at its newest step."""
        if not self._stale:
            return
        keys, self._stale = self._stale, set()
        if _wandb.SUMMARY_SKIPS_REPEATED_VALUES:
            self._written_back.update(keys)
        self._write({key: _as_written(self._newest_value[key]) for key in keys})

    def at_finish(self) -> None:
        """The last restore, and the user's ``summary="...,last"`` keys put right."""
        self.restore()
        if not self._last_fixes:
            return
        keys, self._last_fixes = self._last_fixes, set()
        try:
            summary = _wandb.read_summary(self._run)
        except Exception:
            logger.exception("stepsync: could not read the summary at finish")
            return
        values: dict[Leaf, Any] = {}
        for key in keys:
            aggregate = _lookup(summary, key)
            if isinstance(aggregate, Mapping):
                # the whole aggregate: writing only its `last` would drop the others (measured)
                values[key] = {**aggregate, "last": _as_written(self._newest_value[key])}
        self._write(values)

    def _mark_stale(self, keys: list[Leaf]) -> None:
        # wandb < 0.18 leaves these out of the summary, natively too, once the user defines one
        nested_left_out = (
            _wandb.DEFINITIONS_HIDE_NESTED_SUMMARIES and not self._metrics.only_stepsync_defines()
        )
        for key in keys:
            name = dotted(key)
            if name.startswith("_") or is_wandb_object(self._newest_value.get(key)):
                continue
            options = self._metrics.summary_of(name)
            if not options:
                if not (nested_left_out and isinstance(key, tuple)):
                    self._stale.add(key)
            elif "last" in options:
                self._last_fixes.add(key)

    def _write(self, values: dict[Leaf, Any]) -> None:
        if not values:
            return
        try:
            paths = {(k,) if isinstance(k, str) else k: value for k, value in values.items()}
            _wandb.write_summary(self._run, paths)
        except Exception:
            logger.exception(
                "stepsync: could not restore the summary of %s", sorted(map(dotted, values))
            )


def _as_written(value: Any) -> Any:
    """A captured value as wandb wrote it into the row (arrays become lists or histograms)."""
    if isinstance(value, _SCALARS):
        return value
    return json.loads(json_dumps_safer_history(value))


def _lookup(summary: Mapping[str, Any], key: Leaf) -> Any:
    node: Any = summary
    for part in (key,) if isinstance(key, str) else key:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
