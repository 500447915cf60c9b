"""What waits for its row, and the order rows are written in: each step one row, lowest first.

A step is written when it is complete: its scope closed, a call closed it (``commit=True``),
it sat idle below the open step for a tick of the idle timer, the buffer overflowed, or on
``flush()``. Values that come after their step's row follow the late policy (``_late``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from stepsync import _wandb
from stepsync._config import Options
from stepsync._flusher import IdleFlusher
from stepsync._late import LateData
from stepsync._merge import Entry, merge
from stepsync._pending import Pending
from stepsync._rows import RowWriter
from stepsync._stats import Stats


class Ledger:
    """The pending steps of one run and their ordered commit. Called with the manager's lock."""

    def __init__(  # noqa: PLR0917  (the run's parts, and two facts about it)
        self,
        run: Any,
        options: Options,
        stats: Stats,
        flusher: IdleFlusher,
        shared: bool,
        next_step: int,
    ) -> None:
        self._rows = RowWriter(run, options.axis_key, stats, shared=shared, next_step=next_step)
        self._late = LateData(options.late, stats)
        self._flusher = flusher
        self._stats = stats
        self._limit = options.buffer_size  # the most entries that wait before closed steps commit
        self._pending = Pending()

    @property
    def committed_through(self) -> int:
        """The highest logical step written: a value for a step up to it is late."""
        return self._rows.committed_through

    def counts(self) -> tuple[int, int]:
        """How many steps and entries wait (``late="next"`` entries as one more step)."""
        waiting = self._late.waiting
        return len(self._pending) + (1 if waiting else 0), self._pending.entries + waiting

    def add(  # noqa: PLR0917  (one call's outcome; positional, as it runs per call)
        self,
        step: int,
        entry: Entry,
        source: str,
        closed: bool,
        close: bool,
        frontier: int,
        nested: bool,
    ) -> None:
        """Add one call's entry to ``step``, unless the late policy keeps it from there.

        ``closed``: plain wandb would have written the step's row already. ``close``: the
        call completes the step (``commit=True``), which is written now. ``frontier``: the
        highest step seen; the steps below it are closed. ``nested``: the entry holds nested
        dicts (its row is walked leaf by leaf).
        """
        through = self._rows.committed_through
        if step <= through and not self._late.accept(step, entry, source, through):
            return
        if self._pending.add(step, entry, closed, nested) and not close:
            self._flusher.start()  # a step is left pending: the timer watches it
        if close:
            self.commit_through(step)
        elif self._pending.entries > self._limit:
            self._commit_overflow(frontier)

    def commit_through(self, through: int) -> None:
        """Write every pending step <= ``through``, lowest first."""
        while popped := self._pending.pop_through(through):
            step, rows, nested = popped
            if self._late.waiting:
                rows[0] = self._late.take_next() + rows[0]
                nested = True  # not known for the late entries: walked, to be sure
            for entries in rows:
                self._write(step, entries, nested)

    def commit_closed(self, frontier: int, open_steps: Collection[int]) -> None:
        """Write the steps plain wandb would already have written: below ``frontier``, in no
        open scope. The summary late rows overwrote is put back too."""
        through = self._pending.closed_through(frontier, open_steps)
        if through is not None:
            self.commit_through(through)
        self._rows.restore_summary()

    def commit_idle(self, frontier: int, open_steps: Collection[int]) -> None:
        """The idle timer's tick: like ``commit_closed``, for the steps idle since the last tick."""
        through = self._pending.idle_through(frontier, open_steps)
        if through is not None:
            self.commit_through(through)
        self._rows.restore_summary()

    def flush(self) -> None:
        """Write every pending step, open ones included."""
        highest = self._pending.highest()
        if highest is not None:
            self.commit_through(highest)
        if self._late.waiting:
            # late="next" data with no later row to join: a row of its own at the last step
            self._write(self.committed_through, self._late.take_next(), True)
        self._rows.restore_summary()

    def take(self, step: int) -> dict[str, Any]:
        """Remove the entries of ``step``, merged into one dict, without writing them."""
        entries = self._pending.take(step)
        if not entries:
            return {}
        row, collisions = merge(entries, _wandb.MERGES_NESTED_DICTS)
        self._stats.key_conflicts += collisions
        self._stats.calls_saved += len(entries)  # what is done with the row is one more call
        return row

    def user_defined_metric(self, name: str, options: dict[str, Any]) -> None:
        """The user called ``define_metric``: keep stepsync's declarations from overriding it."""
        self._rows.user_defined_metric(name, options)

    def at_finish(self) -> None:
        """The run is finishing: the last summary fixes."""
        self._rows.at_finish()

    def report_drops(self) -> None:
        """Warn about what ``late="drop"`` dropped since the last report."""
        self._late.report_drops()

    def hand_over(self) -> dict[str, Any]:
        """Write every step below the highest; return the highest step's entries, merged and
        removed (wandb takes over the numbering of rows: TensorBoard sync began)."""
        highest = self._pending.highest()
        if highest is None:
            return {}
        self.commit_through(highest - 1)
        return self.take(highest)

    def after_fork(self) -> None:
        """In a forked child: nothing waits (the parent writes what it holds)."""
        self._pending = Pending()
        self._late.reset()

    def _commit_overflow(self, frontier: int) -> None:
        """Too many entries wait: write the lowest closed steps until under the limit."""
        pending = self._pending
        while pending.entries > self._limit:
            lowest = pending.lowest()
            if lowest is None or lowest >= frontier:
                return
            self.commit_through(lowest)

    def _write(self, step: int, entries: list[Entry], nested: bool) -> None:
        if self._rows.write(step, entries, nested):
            self._flusher.start()  # a late row: the tick writes back the summary it overwrote
