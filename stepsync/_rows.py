"""Writing a logical step's row: one merged ``Run.log`` call, and what it leaves behind.

Each row carries its logical step under the axis key and goes to native step
``max(logical, last native + 1)``. After it, the declarations it calls for are made
(``_metrics``) and the summary it overwrote is noted (``_summary``); the axis itself is declared
just before the first row whose native step differs from its logical step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from stepsync import _wandb
from stepsync._merge import Entry, merge
from stepsync._metrics import Declaration, MetricDefinitions
from stepsync._stats import Stats
from stepsync._summary import SummaryKeeper

logger = logging.getLogger("stepsync")


class RowWriter:
    """Writes the rows of one run, in the order given. Called with the manager's lock held."""

    def __init__(
        self, run: Any, axis_key: str, stats: Stats, *, shared: bool, next_step: int
    ) -> None:
        self._run = run
        self._axis_key = axis_key
        self._stats = stats
        self._shared = shared
        #: The highest logical step written: a value for a step up to it is late.
        self.committed_through = next_step - 1
        self._last_native = next_step - 1
        self._metrics = MetricDefinitions(axis_key)
        self._summary = SummaryKeeper(run, self._metrics)

    def write(self, step: int, entries: list[Entry], nested: bool = True) -> bool:
        """Write ``entries`` as one row of logical ``step``; return True for a late row.

        ``nested``: some entry holds nested dicts (False lets the bookkeeping skip the walk).
        """
        row, collisions = merge(entries, _wandb.MERGES_NESTED_DICTS)
        stats = self._stats
        stats.key_conflicts += collisions
        stats.calls_saved += len(entries) - 1
        row[self._axis_key] = step
        late = step <= self.committed_through
        if not late:
            self.committed_through = step
        # wandb may raise the native step further (something else moved the run on)
        native = max(step, self._last_native + 1)
        if native != step and not self._metrics.switched:
            # the first row off its logical step: declared before it, so wandb writes it as a
            # defined row (wandb < 0.18 would otherwise let its nested dicts replace the summary's)
            self._metrics.committed(row)
            self._declare(self._metrics.switch())
        try:
            native = self._log(step, row, native)
        except Exception:
            stats.failed_flushes += 1
            logger.exception(
                "stepsync: wandb refused the row of step %d (native step %d, keys %s)",
                step,
                native,
                sorted(row),
            )
            return late
        self._last_native = native
        stats.wandb_calls += 1
        self._declare(self._metrics.committed(row))
        if native != step:
            stats.step_jumps += 1
            if not self._metrics.switched:
                self._declare(self._metrics.switch())
        self._summary.after_row(step, row, late, nested)
        return late

    def user_defined_metric(self, name: str, options: Mapping[str, Any]) -> None:
        """The user called ``define_metric``: keep stepsync's declarations from overriding it."""
        self._declare(self._metrics.user_defined(name, **options))

    def restore_summary(self) -> None:
        """Write back the summaries that late rows overwrote."""
        self._summary.restore()

    def at_finish(self) -> None:
        """The run is finishing: the last summary fixes."""
        self._summary.at_finish()

    def _log(self, step: int, row: dict[str, Any], native: int) -> int:
        """Commit ``row``; a value wandb refuses costs only its own key (reported at ERROR)."""
        try:
            return _wandb.native_log(self._run, row, native, self._shared)
        except Exception:
            bad = _wandb.unserializable_keys(self._run, row, native)
            if not bad or len(bad) >= len(row) - 1:  # nothing but the axis key would be left
                raise
        logger.error(
            "stepsync: wandb cannot serialize %s at step %d; the rest of the row is kept",
            ", ".join(repr(key) for key in bad),
            step,
        )
        self._stats.failed_values += len(bad)
        kept = {key: value for key, value in row.items() if key not in bad}
        return _wandb.native_log(self._run, kept, native, self._shared)

    def _declare(self, declarations: list[Declaration]) -> None:
        for name, options in declarations:
            try:
                _wandb.native_define_metric(self._run, name, **options)
            except Exception:
                logger.exception("stepsync: could not declare %r on the logical-step axis", name)
